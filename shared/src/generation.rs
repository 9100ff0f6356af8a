//! What a generation is made of, whichever process handles it: the parameters a client may
//! set ([`GenerationParams`]), the mock provider's per-request controls ([`MockBehaviour`]),
//! what a provider answered ([`GenerationOutput`]) and the token estimate used where a provider
//! reports none and for rate limits at submit ([`estimate_tokens`]). Tools are declared to the
//! model ([`ToolDefinition`], [`ToolChoice`]) and its calls come back ([`ToolCall`]); the service
//! never runs a tool: the client does, and sends the result in its next call's history.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Generation parameters a client may set; providers map them onto their wire formats.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerationParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Text (default), any JSON object, or JSON matching a schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    /// Earlier turns of a conversation, oldest first; the prompt is the user's next turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<ChatTurn>>,
    /// Tools the model may call (the client runs them; the service passes their calls back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<ToolDefinition>>,
    /// Whether the model may (`auto`, the default), may not (`none`) or must (`required`, or
    /// `tool` with a name) call a tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolDefinition {
    /// 1 to 64 letters, digits, `_` or `-`, unique among the request's tools.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The JSON Schema of the arguments (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Value>,
    /// Whether the provider is asked to follow the schema exactly (OpenAI's `strict`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    /// This tool, by name.
    Tool {
        name: String,
    },
}

/// A call of a tool by the model: `arguments` is the JSON text the model wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// A piece of a streamed tool call: the first piece of call `index` carries its id and name,
/// the following ones more of its arguments' text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallDelta {
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub arguments: String,
}

/// Streamed tool-call pieces put together, in the order of their indexes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ToolCallAssembler {
    calls: Vec<(u32, ToolCall)>,
}

impl ToolCallAssembler {
    pub fn push(&mut self, delta: &ToolCallDelta) {
        let at = match self.calls.iter().position(|(i, _)| *i == delta.index) {
            Some(at) => at,
            None => {
                self.calls.push((
                    delta.index,
                    ToolCall {
                        id: String::new(),
                        name: String::new(),
                        arguments: String::new(),
                    },
                ));
                self.calls.len() - 1
            }
        };
        let call = &mut self.calls[at].1;
        if let Some(id) = &delta.id {
            call.id.clone_from(id);
        }
        if let Some(name) = &delta.name {
            call.name.push_str(name);
        }
        call.arguments.push_str(&delta.arguments);
    }

    /// The calls, in index order; a call whose arguments never came has `{}` (no arguments).
    pub fn finish(mut self) -> Vec<ToolCall> {
        self.calls.sort_by_key(|(i, _)| *i);
        self.calls
            .into_iter()
            .map(|(_, mut c)| {
                if c.arguments.trim().is_empty() {
                    c.arguments = "{}".into();
                }
                c
            })
            .collect()
    }
}

/// One earlier turn of a conversation: a user's or an assistant's text, an assistant's tool
/// calls, or a tool's result (`role: tool`, the `tool_call_id` it answers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatTurn {
    pub role: TurnRole,
    #[serde(default)]
    pub content: String,
    /// An assistant turn's tool calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// A tool turn: the call it is the result of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatTurn {
    /// A turn of text.
    pub fn text(role: TurnRole, content: String) -> Self {
        Self {
            role,
            content,
            tool_calls: None,
            tool_call_id: None,
        }
    }

    /// The assistant's tool calls, if it made any.
    pub fn calls(&self) -> &[ToolCall] {
        self.tool_calls.as_deref().unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TurnRole {
    User,
    Assistant,
    Tool,
}

impl TurnRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Tool => "tool",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema {
        schema: Value,
        /// The schema's name, for providers that take one (OpenAI: 1–64 of `a-zA-Z0-9_-`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// Whether the provider is asked to follow the schema exactly (OpenAI's `strict`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        strict: Option<bool>,
    },
}

impl GenerationParams {
    /// The JSON Schema the output must match, `Some(None)` for "any JSON", `None` for text.
    pub fn json_output(&self) -> Option<Option<&Value>> {
        match &self.response_format {
            Some(ResponseFormat::JsonObject) => Some(None),
            Some(ResponseFormat::JsonSchema { schema, .. }) => Some(Some(schema)),
            Some(ResponseFormat::Text) | None => None,
        }
    }

    /// The request's tools (none when it declares none).
    pub fn tools(&self) -> &[ToolDefinition] {
        self.tools.as_deref().unwrap_or_default()
    }

    /// The tool the model must call, when the request names one or requires a call: the named
    /// tool, or the first (`required`).
    pub fn forced_tool(&self) -> Option<&ToolDefinition> {
        match &self.tool_choice {
            Some(ToolChoice::Tool { name }) => self.tools().iter().find(|t| &t.name == name),
            Some(ToolChoice::Required) => self.tools().first(),
            _ => None,
        }
    }

    /// Whether the conversation ends with a tool's result (the prompt may then be empty: the
    /// model answers the result).
    pub fn ends_with_tool_result(&self) -> bool {
        self.history
            .as_ref()
            .and_then(|h| h.last())
            .is_some_and(|t| t.role == TurnRole::Tool)
    }
}

/// Longest `context` accepted, in bytes of its JSON: it is sent with every call.
pub const MAX_CONTEXT_BYTES: usize = 16 * 1024;
/// Deepest nesting of `context` accepted (the object itself is depth 1).
pub const MAX_CONTEXT_DEPTH: usize = 8;

/// The block of the system prompt a request's `context` (a JSON object) becomes: `Context:`
/// on a line of its own, then the object as canonical JSON (keys sorted, no spaces). An empty
/// or absent context adds nothing, so such a request reads as it did before contexts counted.
pub fn context_block(context: &Value) -> Option<String> {
    match context {
        Value::Object(map) if !map.is_empty() => Some(format!("Context:\n{context}")),
        _ => None,
    }
}

/// How deeply `value` nests (a scalar is 0, `{}` or `[]` is 1); stops counting past `limit`,
/// so a hostile value costs no more than `limit` levels of walking per branch.
pub fn nesting_depth(value: &Value, limit: usize) -> usize {
    let children: Box<dyn Iterator<Item = &Value>> = match value {
        Value::Object(map) => Box::new(map.values()),
        Value::Array(items) => Box::new(items.iter()),
        _ => return 0,
    };
    if limit == 0 {
        return 1;
    }
    1 + children
        .map(|v| nesting_depth(v, limit - 1))
        .max()
        .unwrap_or(0)
}

impl GenerationParams {
    /// The parameters as every provider is called with them: the request's context block
    /// appended to its system prompt (after a blank line), or the system prompt when it has
    /// none. Applied where a worker reads a claimed request, so each provider gets it the same.
    pub fn with_context(mut self, context: &Value) -> Self {
        if let Some(block) = context_block(context) {
            self.system = Some(match self.system.take() {
                Some(system) if !system.is_empty() => format!("{system}\n\n{block}"),
                _ => block,
            });
        }
        self
    }
}

/// What a provider answered.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationOutput {
    pub text: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// `stop`, `length` (cut by the token limit), `content_filter`, `tool_calls`, or the
    /// provider's own.
    pub finish_reason: String,
    pub upstream_model: String,
    /// The tools the model called, in order (the text may then be empty).
    pub tool_calls: Vec<ToolCall>,
}

/// Rough token count for providers that report none (about four characters a token).
pub fn estimate_tokens(text: &str) -> u32 {
    u32::try_from(text.chars().count().div_ceil(4)).unwrap_or(u32::MAX)
}

/// Per-request controls (the request body's `mock` object).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MockBehaviour {
    /// Delay before answering, in milliseconds.
    #[serde(default)]
    pub latency_ms: u64,
    /// How attempts fail: `transient` (retryable), `permanent`, or `crash` (aborts the worker
    /// process; only honoured when the worker runs with `MOCK_ALLOW_CRASH`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail: Option<MockFailure>,
    /// When streaming, the pause between two tokens, in milliseconds.
    #[serde(default)]
    pub token_delay_ms: u64,
    /// Only the first N attempts fail; absent means every attempt fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_attempts: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MockFailure {
    Transient,
    Permanent,
    Crash,
    /// Answers text that is not JSON (to exercise response validation).
    InvalidJson,
}

/// Upper bound on mock latency, so a request cannot park a worker slot for long.
pub const MAX_MOCK_LATENCY_MS: u64 = 60_000;
