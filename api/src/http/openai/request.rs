//! The OpenAI request bodies (`/v1/chat/completions`, `/v1/completions`) and their
//! translation into the service's own [`GenerateBody`]: messages become the system prompt, the
//! history and the prompt; OpenAI's parameters become [`GenerationParams`]; a parameter the
//! service cannot honour is refused by name unless it has its neutral value.

use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::Endpoint;
use super::error::OpenAiError;
use llm_shared::cache::CachePolicy;
use llm_shared::generation::{
    ChatTurn, GenerationParams, MockBehaviour, ResponseFormat as NativeFormat, ToolCall,
    ToolChoice, ToolDefinition, TurnRole,
};
use llm_shared::requests::GenerateBody;

/// The body of `POST /v1/chat/completions`: the parameters the service honours, our two
/// extensions (`mock`, `cache`), and everything else (refused unless neutral).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ChatCompletionRequest {
    model: String,
    messages: Vec<ChatMessageIn>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    response_format: Option<ResponseFormat>,
    /// Functions the model may call (`type: function`); the client runs them.
    #[serde(default)]
    tools: Option<Vec<ToolIn>>,
    /// `auto`, `none`, `required`, or `{"type": "function", "function": {"name"}}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    tool_choice: Option<Value>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    #[serde(default)]
    mock: Option<MockBehaviour>,
    #[serde(default)]
    cache: Option<CachePolicy>,
    /// Any other OpenAI parameter: refused unless it has its neutral value.
    #[serde(flatten)]
    #[schema(ignore)]
    other: Map<String, Value>,
}

/// The body of `POST /v1/completions` (the legacy text completions).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CompletionRequest {
    model: String,
    prompt: PromptIn,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    mock: Option<MockBehaviour>,
    #[serde(default)]
    cache: Option<CachePolicy>,
    /// Any other OpenAI parameter: refused unless it has its neutral value.
    #[serde(flatten)]
    #[schema(ignore)]
    other: Map<String, Value>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct ToolIn {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    function: Option<FunctionIn>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct FunctionIn {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    parameters: Option<Value>,
    #[serde(default)]
    strict: Option<bool>,
}

/// A tool call of an assistant message (`{"id", "type": "function", "function": {"name",
/// "arguments"}}`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct ToolCallIn {
    id: String,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    function: FunctionCallIn,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct FunctionCallIn {
    name: String,
    #[serde(default)]
    arguments: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct ChatMessageIn {
    role: String,
    #[serde(default)]
    content: Option<Content>,
    /// An assistant message's tool calls.
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallIn>>,
    /// A `tool` message: the call it is the result of.
    #[serde(default)]
    tool_call_id: Option<String>,
    /// Any other OpenAI parameter: refused unless it has its neutral value.
    #[serde(flatten)]
    #[schema(ignore)]
    other: Map<String, Value>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum PromptIn {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaSpec },
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct JsonSchemaSpec {
    name: String,
    #[serde(default)]
    schema: Option<Value>,
    #[serde(default)]
    strict: Option<bool>,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
}

/// A call translated into the service's own terms.
pub(super) struct Call {
    pub(super) endpoint: Endpoint,
    pub(super) model: String,
    pub(super) body: GenerateBody,
    pub(super) stream: bool,
    pub(super) include_usage: bool,
}

impl ChatCompletionRequest {
    pub(super) fn into_call(self) -> Result<Call, OpenAiError> {
        refuse_unsupported(&self.other, "")?;
        let (system, history, prompt) = split_messages(self.messages)?;
        let max_tokens = match (self.max_tokens, self.max_completion_tokens) {
            (Some(a), Some(b)) if a != b => {
                return Err(OpenAiError::invalid(
                    "give max_tokens or max_completion_tokens, not two different values",
                    Some("max_completion_tokens"),
                ));
            }
            (a, b) => b.or(a),
        };
        let response_format = self.response_format.map(|f| match f {
            ResponseFormat::Text => NativeFormat::Text,
            ResponseFormat::JsonObject => NativeFormat::JsonObject,
            ResponseFormat::JsonSchema { json_schema } => match json_schema.schema {
                Some(schema) => NativeFormat::JsonSchema {
                    schema,
                    name: Some(json_schema.name),
                    strict: json_schema.strict,
                },
                None => NativeFormat::JsonObject,
            },
        });
        let tools = self.tools.map(tools_of).transpose()?;
        let tool_choice = self.tool_choice.map(tool_choice_of).transpose()?;
        let params = GenerationParams {
            max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            stop: self.stop.map(Stop::into_vec),
            system,
            response_format,
            history: (!history.is_empty()).then_some(history),
            tools: tools.filter(|t| !t.is_empty()),
            tool_choice,
        };
        let stream = self.stream.unwrap_or(false);
        let include_usage = include_usage(stream, self.stream_options)?;
        Ok(Call {
            endpoint: Endpoint::Chat,
            body: native_body(
                Endpoint::Chat,
                &self.model,
                prompt,
                params,
                self.user,
                self.metadata,
                self.mock,
                self.cache,
            ),
            model: self.model,
            stream,
            include_usage,
        })
    }
}

impl CompletionRequest {
    pub(super) fn into_call(self) -> Result<Call, OpenAiError> {
        refuse_unsupported(&self.other, "")?;
        let prompt = match self.prompt {
            PromptIn::One(p) => p,
            PromptIn::Many(mut many) if many.len() == 1 => many.remove(0),
            PromptIn::Many(_) => {
                return Err(OpenAiError::invalid(
                    "prompt must be one string (a list of several prompts is not supported; send one call each)",
                    Some("prompt"),
                ));
            }
        };
        let params = GenerationParams {
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            stop: self.stop.map(Stop::into_vec),
            ..GenerationParams::default()
        };
        let stream = self.stream.unwrap_or(false);
        let include_usage = include_usage(stream, self.stream_options)?;
        Ok(Call {
            endpoint: Endpoint::Text,
            body: native_body(
                Endpoint::Text,
                &self.model,
                prompt,
                params,
                self.user,
                None,
                self.mock,
                self.cache,
            ),
            model: self.model,
            stream,
            include_usage,
        })
    }
}

impl Stop {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

fn include_usage(stream: bool, options: Option<StreamOptions>) -> Result<bool, OpenAiError> {
    match options {
        Some(_) if !stream => Err(OpenAiError::invalid(
            "stream_options is only allowed with stream: true",
            Some("stream_options"),
        )),
        Some(o) => Ok(o.include_usage.unwrap_or(false)),
        None => Ok(false),
    }
}

#[allow(clippy::too_many_arguments)]
fn native_body(
    endpoint: Endpoint,
    model: &str,
    prompt: String,
    params: GenerationParams,
    user: Option<String>,
    metadata: Option<Map<String, Value>>,
    mock: Option<MockBehaviour>,
    cache: Option<CachePolicy>,
) -> GenerateBody {
    let mut metadata = metadata.unwrap_or_default();
    metadata.insert("api".into(), Value::from(endpoint.api_name()));
    if let Some(user) = user {
        metadata.insert("openai_user".into(), Value::from(user));
    }
    GenerateBody {
        prompt: Some(prompt),
        template_id: None,
        params: None,
        model: Some(model.to_owned()),
        context: None,
        parameters: Some(params),
        metadata: Some(Value::Object(metadata)),
        mock,
        cache,
        rendered: None,
    }
}

/// The parameters the service cannot honour are accepted only with their neutral value: a
/// client that asks for more is told, not silently served less.
fn refuse_unsupported(other: &Map<String, Value>, prefix: &str) -> Result<(), OpenAiError> {
    for (name, value) in other {
        let neutral = match name.as_str() {
            "frequency_penalty" | "presence_penalty" => value.as_f64() == Some(0.0),
            "n" | "best_of" => value.as_u64() == Some(1),
            "logprobs" | "echo" | "store" => value == &Value::Bool(false),
            "top_logprobs" => value.as_u64() == Some(0),
            // The legacy functions: `tools` replaces them.
            "functions" => value.as_array().is_some_and(Vec::is_empty),
            "function_call" => value == "none",
            // The model may always answer several calls at once.
            "parallel_tool_calls" => value == &Value::Bool(true),
            "logit_bias" => value.as_object().is_some_and(Map::is_empty),
            _ => false,
        };
        if !(neutral || value.is_null()) {
            let param = format!("{prefix}{name}");
            return Err(OpenAiError::Custom {
                status: StatusCode::BAD_REQUEST,
                kind: "invalid_request_error",
                code: Some("unsupported_parameter".into()),
                message: format!(
                    "`{param}` is not supported by this service (it would be ignored); remove it"
                ),
                param: Some(param),
            });
        }
    }
    Ok(())
}

/// `tools` entries of type `function`, in the service's terms.
fn tools_of(tools: Vec<ToolIn>) -> Result<Vec<ToolDefinition>, OpenAiError> {
    tools
        .into_iter()
        .enumerate()
        .map(|(i, tool)| match (tool.kind.as_str(), tool.function) {
            ("function", Some(f)) => Ok(ToolDefinition {
                name: f.name,
                description: f.description,
                parameters: f.parameters,
                strict: f.strict,
            }),
            ("function", None) => Err(OpenAiError::invalid(
                format!("tools[{i}]: a function tool needs its `function`"),
                Some("tools"),
            )),
            (other, _) => Err(OpenAiError::invalid(
                format!(
                    "tools[{i}]: `{}` tools are not supported (function only)",
                    other.chars().take(40).collect::<String>()
                ),
                Some("tools"),
            )),
        })
        .collect()
}

/// `"auto"`, `"none"`, `"required"` or `{"type": "function", "function": {"name"}}`.
fn tool_choice_of(choice: Value) -> Result<ToolChoice, OpenAiError> {
    let named = |choice: &Value| {
        (choice.get("type")? == "function")
            .then(|| choice.get("function")?.get("name")?.as_str())
            .flatten()
            .map(str::to_owned)
    };
    match choice.as_str() {
        Some("auto") => Ok(ToolChoice::Auto),
        Some("none") => Ok(ToolChoice::None),
        Some("required") => Ok(ToolChoice::Required),
        _ => named(&choice)
            .map(|name| ToolChoice::Tool { name })
            .ok_or_else(|| {
                OpenAiError::invalid(
                    "tool_choice must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": …}}",
                    Some("tool_choice"),
                )
            }),
    }
}

/// Leading system (or developer) messages → the system prompt; the last message (the user's)
/// → the prompt, or, after tools' results (`tool` messages), no prompt; the turns between →
/// the history.
fn split_messages(
    messages: Vec<ChatMessageIn>,
) -> Result<(Option<String>, Vec<ChatTurn>, String), OpenAiError> {
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<ChatTurn> = Vec::new();
    for (i, message) in messages.into_iter().enumerate() {
        refuse_unsupported(&message.other, &format!("messages[{i}]."))?;
        let text = match message.content {
            Some(content) => Some(content_text(content, i)?),
            None => None,
        };
        let role = match message.role.as_str() {
            "system" | "developer" => {
                if !turns.is_empty() {
                    return Err(OpenAiError::invalid(
                        format!(
                            "messages[{i}]: system messages are only supported before the conversation starts"
                        ),
                        Some("messages"),
                    ));
                }
                system.push(text.unwrap_or_default());
                continue;
            }
            "user" => TurnRole::User,
            "assistant" => TurnRole::Assistant,
            "tool" => TurnRole::Tool,
            "function" => {
                return Err(OpenAiError::invalid(
                    format!(
                        "messages[{i}]: `function` messages are not supported (use tool_calls and `tool` messages)"
                    ),
                    Some("messages"),
                ));
            }
            other => {
                return Err(OpenAiError::invalid(
                    format!(
                        "messages[{i}]: unknown role `{}` (system, developer, user or assistant)",
                        other.chars().take(40).collect::<String>()
                    ),
                    Some("messages"),
                ));
            }
        };
        let tool_calls = match (role, message.tool_calls) {
            (_, None) => None,
            (TurnRole::Assistant, Some(calls)) => Some(calls_of(calls, i)?),
            (_, Some(_)) => {
                return Err(OpenAiError::invalid(
                    format!("messages[{i}]: only an assistant message carries tool_calls"),
                    Some("messages"),
                ));
            }
        };
        let tool_call_id = match (role, message.tool_call_id) {
            (TurnRole::Tool, Some(id)) => Some(id),
            (TurnRole::Tool, None) => {
                return Err(OpenAiError::invalid(
                    format!("messages[{i}]: a tool message needs its tool_call_id"),
                    Some("messages"),
                ));
            }
            (_, Some(_)) => {
                return Err(OpenAiError::invalid(
                    format!("messages[{i}]: only a tool message carries a tool_call_id"),
                    Some("messages"),
                ));
            }
            (_, None) => None,
        };
        let content = match text {
            Some(content) => content,
            // An assistant's message of tool calls has no content.
            None if tool_calls.is_some() => String::new(),
            None => {
                return Err(OpenAiError::invalid(
                    format!("messages[{i}]: content is required"),
                    Some("messages"),
                ));
            }
        };
        turns.push(ChatTurn {
            tool_calls,
            tool_call_id,
            ..ChatTurn::text(role, content)
        });
    }
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    match turns.last().map(|t| t.role) {
        // After tools' results the model answers them: no prompt of the user's.
        Some(TurnRole::Tool) => Ok((system, turns, String::new())),
        Some(TurnRole::User) => {
            let prompt = turns.pop().map(|t| t.content).unwrap_or_default();
            Ok((system, turns, prompt))
        }
        Some(TurnRole::Assistant) => Err(OpenAiError::invalid(
            "the last message must be the user's or a tool's",
            Some("messages"),
        )),
        None => Err(OpenAiError::invalid(
            "messages must contain at least one user message",
            Some("messages"),
        )),
    }
}

fn calls_of(calls: Vec<ToolCallIn>, index: usize) -> Result<Vec<ToolCall>, OpenAiError> {
    calls
        .into_iter()
        .map(|c| match c.kind.as_deref() {
            None | Some("function") => Ok(ToolCall {
                id: c.id,
                name: c.function.name,
                arguments: c.function.arguments,
            }),
            Some(_) => Err(OpenAiError::invalid(
                format!("messages[{index}]: only function tool calls are supported"),
                Some("messages"),
            )),
        })
        .collect()
}

fn content_text(content: Content, index: usize) -> Result<String, OpenAiError> {
    match content {
        Content::Text(text) => Ok(text),
        Content::Parts(parts) => {
            let mut texts = Vec::with_capacity(parts.len());
            for part in parts {
                match (part.kind.as_str(), part.text) {
                    ("text", Some(text)) => texts.push(text),
                    ("text", None) => {
                        return Err(OpenAiError::invalid(
                            format!("messages[{index}]: a text part needs its text"),
                            Some("messages"),
                        ));
                    }
                    (other, _) => {
                        return Err(OpenAiError::invalid(
                            format!(
                                "messages[{index}]: `{}` content is not supported (text only)",
                                other.chars().take(40).collect::<String>()
                            ),
                            Some("messages"),
                        ));
                    }
                }
            }
            Ok(texts.join("\n"))
        }
    }
}
