//! The body of `POST /v1/messages` and its translation into the service's own
//! [`GenerateBody`], the same representation the OpenAI door makes: `system` becomes the system
//! prompt, the last (user) message the prompt and the messages before it the history; text
//! content blocks are joined, any other block type is refused. A parameter the service cannot
//! honour is refused by name unless it has its neutral value.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::AnthropicError;
use llm_shared::cache::CachePolicy;
use llm_shared::generation::{
    ChatTurn, GenerationParams, MockBehaviour, ToolCall, ToolChoice, ToolDefinition, TurnRole,
};
use llm_shared::requests::GenerateBody;

/// The `api` metadata of the requests this door creates.
const API_NAME: &str = "anthropic.messages";
/// Longest `metadata.user_id` Anthropic accepts.
const MAX_USER_ID_CHARS: usize = 256;

/// The body of `POST /v1/messages`: the parameters the service honours, our two extensions
/// (`mock`, `cache`), and everything else (refused unless neutral).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct MessagesRequest {
    /// A model id of the registry (`GET /api/v1/models`).
    #[serde(default)]
    model: Option<String>,
    /// The conversation, `user` and `assistant` turns; each `content` a string or a list of
    /// `text` blocks; the last one the user's.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    messages: Option<Vec<Value>>,
    /// Required, as Anthropic requires it; at most the model's `max_output_tokens`.
    #[serde(default)]
    max_tokens: Option<u32>,
    /// A string or a list of `text` blocks.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    system: Option<Value>,
    #[serde(default)]
    stop_sequences: Option<Vec<String>>,
    /// Between 0 and 1, as Anthropic takes it.
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    /// `user_id` only (stored as the request's `anthropic_user_id` metadata).
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    #[serde(default)]
    stream: Option<bool>,
    /// Client tools (`{"name", "description", "input_schema"}`); the client runs them.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    tools: Option<Vec<Value>>,
    /// `{"type": "auto" | "any" | "none"}` or `{"type": "tool", "name"}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    tool_choice: Option<Value>,
    #[serde(default)]
    mock: Option<MockBehaviour>,
    #[serde(default)]
    cache: Option<CachePolicy>,
    /// Any other Anthropic parameter: refused unless it has its neutral value.
    #[serde(flatten)]
    #[schema(ignore)]
    other: Map<String, Value>,
}

/// A call translated into the service's own terms.
pub(super) struct Call {
    pub(super) model: String,
    pub(super) body: GenerateBody,
    pub(super) stream: bool,
}

impl MessagesRequest {
    pub(super) fn into_call(self) -> Result<Call, AnthropicError> {
        refuse_unsupported(&self.other)?;
        let model = self
            .model
            .ok_or_else(|| AnthropicError::invalid("model: Field required"))?;
        let max_tokens = self
            .max_tokens
            .ok_or_else(|| AnthropicError::invalid("max_tokens: Field required"))?;
        let messages = self
            .messages
            .ok_or_else(|| AnthropicError::invalid("messages: Field required"))?;
        if let Some(t) = self.temperature
            && !(0.0..=1.0).contains(&t)
        {
            return Err(AnthropicError::invalid(
                "temperature: must be between 0 and 1",
            ));
        }
        let system = match self.system {
            None | Some(Value::Null) => None,
            Some(system) => Some(text_of(system, "system")?),
        };
        let (history, prompt) = split_messages(messages)?;
        let tools = match self.tools {
            Some(tools) => tools_of(tools)?,
            None => Vec::new(),
        };
        let tool_choice = self.tool_choice.map(tool_choice_of).transpose()?;
        let params = GenerationParams {
            max_tokens: Some(max_tokens),
            temperature: self.temperature,
            top_p: self.top_p,
            stop: self.stop_sequences.filter(|s| !s.is_empty()),
            system,
            response_format: None,
            history: (!history.is_empty()).then_some(history),
            tools: (!tools.is_empty()).then_some(tools),
            tool_choice,
        };
        let mut metadata = Map::new();
        metadata.insert("api".into(), Value::from(API_NAME));
        if let Some(user_id) = user_id(self.metadata)? {
            metadata.insert("anthropic_user_id".into(), Value::from(user_id));
        }
        Ok(Call {
            body: GenerateBody {
                prompt: Some(prompt),
                template_id: None,
                params: None,
                model: Some(model.clone()),
                context: None,
                parameters: Some(params),
                metadata: Some(Value::Object(metadata)),
                mock: self.mock,
                cache: self.cache,
                rendered: None,
            },
            model,
            stream: self.stream.unwrap_or(false),
        })
    }
}

/// `metadata.user_id`, the one key of Anthropic's metadata.
fn user_id(metadata: Option<Map<String, Value>>) -> Result<Option<String>, AnthropicError> {
    let mut user_id = None;
    for (key, value) in metadata.unwrap_or_default() {
        match (key.as_str(), value) {
            ("user_id", Value::Null) => {}
            ("user_id", Value::String(id)) if id.chars().count() <= MAX_USER_ID_CHARS => {
                user_id = Some(id);
            }
            ("user_id", _) => {
                return Err(AnthropicError::invalid(format!(
                    "metadata.user_id: must be a string of at most {MAX_USER_ID_CHARS} characters"
                )));
            }
            (other, _) => {
                return Err(AnthropicError::invalid(format!(
                    "metadata.{}: Extra inputs are not permitted (metadata takes user_id only)",
                    clip(other)
                )));
            }
        }
    }
    Ok(user_id)
}

/// The parameters the service cannot honour are accepted only with their neutral value: a
/// client that asks for more is told, not silently served less.
fn refuse_unsupported(other: &Map<String, Value>) -> Result<(), AnthropicError> {
    for (name, value) in other {
        let neutral = match name.as_str() {
            "mcp_servers" => value.as_array().is_some_and(Vec::is_empty),
            "thinking" => value["type"] == "disabled",
            // A routing preference: whichever tier, the answer is the same.
            "service_tier" => value.is_string(),
            _ => false,
        };
        if !(neutral || value.is_null()) {
            return Err(AnthropicError::invalid(format!(
                "{}: is not supported by this service (it would be ignored); remove it",
                clip(name)
            )));
        }
    }
    Ok(())
}

/// Client tools in the service's terms (`type` absent or `custom`; server tools are refused).
fn tools_of(tools: Vec<Value>) -> Result<Vec<ToolDefinition>, AnthropicError> {
    tools
        .into_iter()
        .enumerate()
        .map(|(i, tool)| {
            let Value::Object(mut tool) = tool else {
                return Err(AnthropicError::invalid(format!(
                    "tools.{i}: a tool must be an object"
                )));
            };
            match tool.remove("type") {
                None | Some(Value::Null) => {}
                Some(Value::String(kind)) if kind == "custom" => {}
                Some(other) => {
                    return Err(AnthropicError::invalid(format!(
                        "tools.{i}.type: `{}` tools are not supported (client tools only)",
                        clip(other.as_str().unwrap_or("?"))
                    )));
                }
            }
            tool.remove("cache_control");
            let name = match tool.remove("name") {
                Some(Value::String(name)) => name,
                _ => {
                    return Err(AnthropicError::invalid(format!(
                        "tools.{i}.name: Field required"
                    )));
                }
            };
            let description = match tool.remove("description") {
                None | Some(Value::Null) => None,
                Some(Value::String(d)) => Some(d),
                Some(_) => {
                    return Err(AnthropicError::invalid(format!(
                        "tools.{i}.description: must be a string"
                    )));
                }
            };
            let parameters = tool.remove("input_schema").ok_or_else(|| {
                AnthropicError::invalid(format!("tools.{i}.input_schema: Field required"))
            })?;
            if let Some((key, _)) = tool.iter().find(|(_, v)| !v.is_null()) {
                return Err(AnthropicError::invalid(format!(
                    "tools.{i}.{}: Extra inputs are not permitted",
                    clip(key)
                )));
            }
            Ok(ToolDefinition {
                name,
                description,
                parameters: Some(parameters),
                strict: None,
            })
        })
        .collect()
}

/// `{"type": "auto" | "any" | "none"}` or `{"type": "tool", "name"}`; parallel calls cannot be
/// turned off (`disable_parallel_tool_use` only with `false`).
fn tool_choice_of(choice: Value) -> Result<ToolChoice, AnthropicError> {
    if choice.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
        return Err(AnthropicError::invalid(
            "tool_choice.disable_parallel_tool_use: is not supported by this service (it would be ignored); remove it",
        ));
    }
    match (
        choice.get("type").and_then(Value::as_str),
        choice.get("name").and_then(Value::as_str),
    ) {
        (Some("auto"), _) => Ok(ToolChoice::Auto),
        (Some("any"), _) => Ok(ToolChoice::Required),
        (Some("none"), _) => Ok(ToolChoice::None),
        (Some("tool"), Some(name)) => Ok(ToolChoice::Tool {
            name: name.to_owned(),
        }),
        _ => Err(AnthropicError::invalid(
            "tool_choice: must be {\"type\": \"auto\" | \"any\" | \"none\"} or {\"type\": \"tool\", \"name\": …}",
        )),
    }
}

/// The `tool_use` and `tool_result` blocks of a message's content taken out of it (the rest,
/// text, stays): the calls and the results, in order.
fn take_tool_blocks(
    content: &mut Value,
    at: &str,
) -> Result<(Vec<ToolCall>, Vec<ChatTurn>), AnthropicError> {
    let (mut calls, mut results) = (Vec::new(), Vec::new());
    let Value::Array(blocks) = content else {
        return Ok((calls, results));
    };
    let mut rest = Vec::with_capacity(blocks.len());
    for (j, block) in std::mem::take(blocks).into_iter().enumerate() {
        let field = |name: &str| block.get(name).filter(|v| !v.is_null());
        match block.get("type").and_then(Value::as_str) {
            Some("tool_use") => {
                let (Some(id), Some(name)) = (
                    field("id").and_then(Value::as_str),
                    field("name").and_then(Value::as_str),
                ) else {
                    return Err(AnthropicError::invalid(format!(
                        "{at}.{j}: a tool_use block needs its id and name"
                    )));
                };
                calls.push(ToolCall {
                    id: id.to_owned(),
                    name: name.to_owned(),
                    arguments: field("input").map_or_else(|| "{}".into(), Value::to_string),
                });
            }
            Some("tool_result") => {
                let Some(id) = field("tool_use_id").and_then(Value::as_str) else {
                    return Err(AnthropicError::invalid(format!(
                        "{at}.{j}.tool_use_id: Field required"
                    )));
                };
                let text = match field("content") {
                    None => String::new(),
                    Some(content) => text_of(content.clone(), &format!("{at}.{j}.content"))?,
                };
                // The error flag travels in the text: the neutral turn has no field for it.
                let text = if field("is_error") == Some(&Value::Bool(true)) {
                    format!("Error: {text}")
                } else {
                    text
                };
                results.push(ChatTurn {
                    tool_call_id: Some(id.to_owned()),
                    ..ChatTurn::text(TurnRole::Tool, text)
                });
            }
            _ => rest.push(block),
        }
    }
    *blocks = rest;
    Ok((calls, results))
}

/// The conversation: every message but the last → the history; the last, the user's → the
/// prompt. A user message's `tool_result` blocks become tool turns before its text; when the
/// last message holds only results, there is no prompt (the model answers them).
fn split_messages(messages: Vec<Value>) -> Result<(Vec<ChatTurn>, String), AnthropicError> {
    let mut turns = Vec::with_capacity(messages.len());
    for (i, message) in messages.into_iter().enumerate() {
        let Value::Object(mut message) = message else {
            return Err(AnthropicError::invalid(format!(
                "messages.{i}: a message must be an object with role and content"
            )));
        };
        let role = match message.remove("role") {
            Some(Value::String(role)) => match role.as_str() {
                "user" => TurnRole::User,
                "assistant" => TurnRole::Assistant,
                "system" => {
                    return Err(AnthropicError::invalid(format!(
                        "messages.{i}.role: unexpected role `system`; the system prompt is the top-level `system` parameter"
                    )));
                }
                other => {
                    return Err(AnthropicError::invalid(format!(
                        "messages.{i}.role: unexpected role `{}` (user or assistant)",
                        clip(other)
                    )));
                }
            },
            _ => {
                return Err(AnthropicError::invalid(format!(
                    "messages.{i}.role: Field required (user or assistant)"
                )));
            }
        };
        let at = format!("messages.{i}.content");
        let (calls, results, content) = match message.remove("content") {
            Some(mut content) if !content.is_null() => {
                let (calls, results) = take_tool_blocks(&mut content, &at)?;
                let only_tools = content.as_array().is_some_and(Vec::is_empty)
                    && !(calls.is_empty() && results.is_empty());
                let text = if only_tools {
                    String::new()
                } else {
                    text_of(content, &at)?
                };
                (calls, results, text)
            }
            _ => {
                return Err(AnthropicError::invalid(format!(
                    "messages.{i}.content: Field required"
                )));
            }
        };
        if let Some((key, _)) = message.iter().find(|(_, v)| !v.is_null()) {
            return Err(AnthropicError::invalid(format!(
                "messages.{i}.{}: Extra inputs are not permitted",
                clip(key)
            )));
        }
        match role {
            TurnRole::Assistant => {
                if !results.is_empty() {
                    return Err(AnthropicError::invalid(format!(
                        "{at}: tool_result blocks belong in a user message"
                    )));
                }
                turns.push(ChatTurn {
                    tool_calls: (!calls.is_empty()).then_some(calls),
                    ..ChatTurn::text(role, content)
                });
            }
            _ => {
                if !calls.is_empty() {
                    return Err(AnthropicError::invalid(format!(
                        "{at}: tool_use blocks belong in an assistant message"
                    )));
                }
                let had_results = !results.is_empty();
                turns.extend(results);
                if !(had_results && content.is_empty()) {
                    turns.push(ChatTurn::text(role, content));
                }
            }
        }
    }
    match turns.last().map(|t| t.role) {
        None => Err(AnthropicError::invalid(
            "messages: at least one message is required",
        )),
        // Tools' results last: the model answers them, no prompt of the user's.
        Some(TurnRole::Tool) => Ok((turns, String::new())),
        Some(TurnRole::User) => {
            let prompt = turns.pop().map(|t| t.content).unwrap_or_default();
            Ok((turns, prompt))
        }
        Some(TurnRole::Assistant) => Err(AnthropicError::invalid(
            "messages: the last message must be the user's (prefilling the assistant's answer is not supported)",
        )),
    }
}

/// The text of a `content` or `system` value: a string, or `text` blocks joined by newlines.
fn text_of(value: Value, at: &str) -> Result<String, AnthropicError> {
    let blocks = match value {
        Value::String(text) => return Ok(text),
        Value::Array(blocks) => blocks,
        _ => {
            return Err(AnthropicError::invalid(format!(
                "{at}: must be a string or a list of content blocks"
            )));
        }
    };
    let mut texts = Vec::with_capacity(blocks.len());
    for (j, block) in blocks.into_iter().enumerate() {
        let Value::Object(block) = block else {
            return Err(AnthropicError::invalid(format!(
                "{at}.{j}: a content block must be an object"
            )));
        };
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some(other) => {
                return Err(AnthropicError::invalid(format!(
                    "{at}.{j}.type: `{}` content blocks are not supported (text only)",
                    clip(other)
                )));
            }
            None => {
                return Err(AnthropicError::invalid(format!(
                    "{at}.{j}.type: Field required"
                )));
            }
        }
        for (key, value) in &block {
            let accepted = match key.as_str() {
                "type" | "text" => true,
                // A caching hint of Anthropic's: it changes no answer.
                "cache_control" => true,
                "citations" => value.as_array().is_some_and(Vec::is_empty),
                _ => false,
            };
            if !(accepted || value.is_null()) {
                return Err(AnthropicError::invalid(format!(
                    "{at}.{j}.{}: is not supported by this service; remove it",
                    clip(key)
                )));
            }
        }
        match block.get("text") {
            Some(Value::String(text)) => texts.push(text.clone()),
            _ => {
                return Err(AnthropicError::invalid(format!(
                    "{at}.{j}.text: a text block needs its text (a string)"
                )));
            }
        }
    }
    Ok(texts.join("\n"))
}

/// A client's name, shortened for an error message.
fn clip(name: &str) -> String {
    name.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn call(body: Value) -> Result<Call, AnthropicError> {
        serde_json::from_value::<MessagesRequest>(body)
            .unwrap()
            .into_call()
    }

    fn refusal(body: Value) -> String {
        match call(body) {
            Err(AnthropicError::Custom {
                status, message, ..
            }) => {
                assert_eq!(status, 400);
                message
            }
            Err(other) => panic!("not the door's own refusal: {other:?}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn a_conversation_becomes_system_history_and_prompt() {
        let call = call(json!({
            "model": "mock",
            "max_tokens": 20,
            "system": [{"type": "text", "text": "Be terse."}, {"type": "text", "text": "Be kind.", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]},
                {"role": "user", "content": [{"type": "text", "text": "A name?"}, {"type": "text", "text": "Short."}]}
            ],
            "stop_sequences": ["\n\n"],
            "metadata": {"user_id": "player-3"},
            "tools": [],
            "thinking": {"type": "disabled"},
            "stream": true
        }))
        .unwrap();
        assert!(call.stream);
        assert_eq!(call.model, "mock");
        assert_eq!(call.body.prompt.as_deref(), Some("A name?\nShort."));
        let params = call.body.parameters.unwrap();
        assert_eq!(params.system.as_deref(), Some("Be terse.\nBe kind."));
        assert_eq!(params.max_tokens, Some(20));
        assert_eq!(params.stop, Some(vec!["\n\n".to_owned()]));
        let history = params.history.unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!(history[1].role, TurnRole::Assistant);
        assert_eq!(history[1].content, "Hello.");
        let metadata = call.body.metadata.unwrap();
        assert_eq!(metadata["api"], "anthropic.messages");
        assert_eq!(metadata["anthropic_user_id"], "player-3");
    }

    #[test]
    fn what_the_service_cannot_honour_is_refused_by_name() {
        let user = json!([{"role": "user", "content": "x"}]);
        let cases = [
            (json!({"model": "mock", "messages": user}), "max_tokens"),
            (json!({"max_tokens": 5, "messages": user}), "model"),
            (json!({"model": "mock", "max_tokens": 5}), "messages"),
            (
                json!({"model": "mock", "max_tokens": 5, "messages": []}),
                "messages",
            ),
            (
                json!({"model": "mock", "max_tokens": 5, "messages": user, "top_k": 5}),
                "top_k",
            ),
            (
                json!({"model": "mock", "max_tokens": 5, "messages": user, "temperature": 1.5}),
                "temperature",
            ),
            (
                json!({"model": "mock", "max_tokens": 5, "messages": user, "tools": [{"name": "x"}]}),
                "tools",
            ),
            (
                json!({"model": "mock", "max_tokens": 5, "messages": user, "metadata": {"tenant": "x"}}),
                "metadata.tenant",
            ),
            (
                json!({"model": "mock", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}),
                "messages.0.role",
            ),
            (
                json!({"model": "mock", "max_tokens": 5, "messages": [{"role": "tool", "content": "x"}]}),
                "messages.0.role",
            ),
            (
                json!({"model": "mock", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}),
                "messages",
            ),
            (
                json!({"model": "mock", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}),
                "messages.0.content.0.type",
            ),
            (
                json!({"model": "mock", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "text"}]}]}),
                "messages.0.content.0.text",
            ),
            (
                json!({"model": "mock", "max_tokens": 5, "messages": [{"role": "user", "content": 7}]}),
                "messages.0.content",
            ),
            (
                json!({"model": "mock", "max_tokens": 5, "messages": [{"role": "user", "content": "x", "name": "bob"}]}),
                "messages.0.name",
            ),
            (
                json!({"model": "mock", "max_tokens": 5, "messages": ["x"]}),
                "messages.0",
            ),
            (
                json!({"model": "mock", "max_tokens": 5, "messages": user, "system": [{"type": "document"}]}),
                "system.0.type",
            ),
        ];
        for (body, param) in cases {
            let message = refusal(body.clone());
            assert!(message.starts_with(param), "{body} → {message}");
        }
    }
}
