//! The body of `POST /v1/responses` and its translation into the service's own
//! [`GenerateBody`]: `instructions` and system/developer items become the system prompt, the
//! other items the history and the prompt; `text.format` becomes the native
//! [`NativeFormat`]; the Responses-only settings (`background`, `store`, `metadata`, ...) are
//! kept as [`Settings`] in the request's metadata. A parameter the service cannot honour is
//! refused by name unless it has its neutral value.

use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::super::error::OpenAiError;
use super::object::{API_NAME, Settings, TextConfig};
use llm_shared::cache::CachePolicy;
use llm_shared::generation::{
    ChatTurn, GenerationParams, MockBehaviour, ResponseFormat as NativeFormat, TurnRole,
};
use llm_shared::requests::GenerateBody;

/// The body of `POST /v1/responses`: the parameters the service honours, our two extensions
/// (`mock`, `cache`), and everything else (refused unless neutral).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateResponseRequest {
    model: String,
    /// A string (the user's message), or a list of message items.
    #[schema(value_type = Object)]
    input: InputIn,
    #[serde(default)]
    instructions: Option<String>,
    #[serde(default)]
    max_output_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    /// Answer at once (`queued`) and run in the background: retrieve, stream or cancel it later.
    #[serde(default)]
    background: Option<bool>,
    #[serde(default)]
    stream: Option<bool>,
    /// Accepted with `stream: true`; `include_obfuscation` is ignored (never added).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    stream_options: Option<Value>,
    /// Whether `GET /v1/responses/{id}` may read it back (default true).
    #[serde(default)]
    store: Option<bool>,
    /// At most 16 pairs of strings (keys ≤ 64, values ≤ 512 characters).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    text: Option<Value>,
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

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum InputIn {
    Text(String),
    Items(Vec<Map<String, Value>>),
}

/// A `POST /v1/responses` translated into the service's own terms.
pub(super) struct Create {
    pub(super) model: String,
    pub(super) body: GenerateBody,
    pub(super) settings: Settings,
    pub(super) stream: bool,
}

impl CreateResponseRequest {
    pub(super) fn into_create(self) -> Result<Create, OpenAiError> {
        refuse_unsupported(&self.other)?;
        let stream = self.stream.unwrap_or(false);
        let background = self.background.unwrap_or(false);
        let store = self.store.unwrap_or(true);
        if background && !store {
            return Err(OpenAiError::invalid(
                "background responses must be stored: background: true requires store: true",
                Some("background"),
            ));
        }
        if self.stream_options.as_ref().is_some_and(|o| !o.is_null()) && !stream {
            return Err(OpenAiError::invalid(
                "stream_options is only allowed with stream: true",
                Some("stream_options"),
            ));
        }
        let metadata = super::super::metadata::checked(self.metadata)?;
        let (text, response_format) = text_format(self.text)?;
        let (system, history, prompt) = split_input(self.input, self.instructions.as_deref())?;
        let params = GenerationParams {
            max_tokens: self.max_output_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            stop: None,
            system,
            response_format,
            history: (!history.is_empty()).then_some(history),
            ..GenerationParams::default()
        };
        let settings = Settings {
            background,
            store,
            instructions: self.instructions,
            metadata,
            text,
            user: self.user,
        };
        let mut row_metadata = Map::new();
        row_metadata.insert("api".into(), Value::from(API_NAME));
        row_metadata.insert(Settings::KEY.into(), settings.to_value());
        let body = GenerateBody {
            prompt: Some(prompt),
            template_id: None,
            params: None,
            model: Some(self.model.clone()),
            context: None,
            parameters: Some(params),
            metadata: Some(Value::Object(row_metadata)),
            mock: self.mock,
            cache: self.cache,
            rendered: None,
        };
        Ok(Create {
            model: self.model,
            body,
            settings,
            stream,
        })
    }
}

fn unsupported(param: String) -> OpenAiError {
    OpenAiError::Custom {
        status: StatusCode::BAD_REQUEST,
        kind: "invalid_request_error",
        code: Some("unsupported_parameter".into()),
        message: format!(
            "`{param}` is not supported by this service (it would be ignored); remove it"
        ),
        param: Some(param),
    }
}

/// The Responses parameters the service cannot honour, accepted only with their neutral value.
fn refuse_unsupported(other: &Map<String, Value>) -> Result<(), OpenAiError> {
    for (name, value) in other {
        let neutral = match name.as_str() {
            "tools" | "include" => value.as_array().is_some_and(Vec::is_empty),
            "tool_choice" => value == "none" || value == "auto",
            // Meaningless without tools, which are refused.
            "parallel_tool_calls" => value.is_boolean(),
            "truncation" => value == "disabled",
            "service_tier" => value == "auto" || value == "default",
            "top_logprobs" => value.as_u64() == Some(0),
            "n" => value.as_u64() == Some(1),
            _ => false,
        };
        if !(neutral || value.is_null()) {
            return Err(unsupported(name.clone()));
        }
    }
    Ok(())
}

/// `text.format` → the native response format (and the config to show back).
fn text_format(text: Option<Value>) -> Result<(TextConfig, Option<NativeFormat>), OpenAiError> {
    let Some(Value::Object(mut text)) = text.filter(|t| !t.is_null()) else {
        return Ok((TextConfig::default(), None));
    };
    if let Some(verbosity) = text.remove("verbosity")
        && !(verbosity.is_null() || verbosity == "medium")
    {
        return Err(unsupported("text.verbosity".into()));
    }
    let format = text.remove("format");
    if let Some(name) = text.keys().next() {
        return Err(unsupported(format!("text.{name}")));
    }
    let Some(Value::Object(mut format)) = format.filter(|f| !f.is_null()) else {
        return Ok((TextConfig::default(), None));
    };
    let kind = format.remove("type");
    let native = match kind.as_ref().and_then(Value::as_str) {
        Some("text") => NativeFormat::Text,
        Some("json_object") => NativeFormat::JsonObject,
        Some("json_schema") => {
            let name = match format.remove("name") {
                Some(Value::String(name)) => name,
                _ => {
                    return Err(OpenAiError::invalid(
                        "text.format.name is required (a string) for json_schema",
                        Some("text.format.name"),
                    ));
                }
            };
            let Some(schema @ Value::Object(_)) = format.remove("schema") else {
                return Err(OpenAiError::invalid(
                    "text.format.schema is required (a JSON Schema object) for json_schema",
                    Some("text.format.schema"),
                ));
            };
            let strict = match format.remove("strict") {
                None | Some(Value::Null) => None,
                Some(Value::Bool(b)) => Some(b),
                Some(_) => {
                    return Err(OpenAiError::invalid(
                        "text.format.strict must be a boolean",
                        Some("text.format.strict"),
                    ));
                }
            };
            // A description only guides the model; it changes nothing we check.
            format.remove("description");
            NativeFormat::JsonSchema {
                schema,
                name: Some(name),
                strict,
            }
        }
        _ => {
            return Err(OpenAiError::invalid(
                "text.format.type must be text, json_object or json_schema",
                Some("text.format.type"),
            ));
        }
    };
    if let Some(name) = format.keys().next() {
        return Err(unsupported(format!("text.format.{name}")));
    }
    Ok((TextConfig::from_native(Some(&native)), Some(native)))
}

/// `instructions` and leading system/developer items → the system prompt; the last item (the
/// user's) → the prompt; the items between → the history.
fn split_input(
    input: InputIn,
    instructions: Option<&str>,
) -> Result<(Option<String>, Vec<ChatTurn>, String), OpenAiError> {
    let mut system: Vec<String> = instructions.map(str::to_owned).into_iter().collect();
    let items = match input {
        InputIn::Text(text) => {
            let system = (!system.is_empty()).then(|| system.join("\n\n"));
            return Ok((system, Vec::new(), text));
        }
        InputIn::Items(items) => items,
    };
    let mut turns: Vec<ChatTurn> = Vec::with_capacity(items.len().min(1024));
    for (i, mut item) in items.into_iter().enumerate() {
        let (role, text) = message_item(&mut item, i)?;
        match role {
            None => {
                if !turns.is_empty() {
                    return Err(OpenAiError::invalid(
                        format!(
                            "input[{i}]: system and developer messages are only supported before the conversation starts"
                        ),
                        Some("input"),
                    ));
                }
                system.push(text);
            }
            Some(role) => turns.push(ChatTurn::text(role, text)),
        }
    }
    let Some(last) = turns.pop() else {
        return Err(OpenAiError::invalid(
            "input must contain at least one user message",
            Some("input"),
        ));
    };
    if last.role != TurnRole::User {
        return Err(OpenAiError::invalid(
            "the last input message must be the user's",
            Some("input"),
        ));
    }
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    Ok((system, turns, last.content))
}

/// One input item: its role (`None` for system/developer) and its text.
fn message_item(
    item: &mut Map<String, Value>,
    i: usize,
) -> Result<(Option<TurnRole>, String), OpenAiError> {
    match item.remove("type") {
        None | Some(Value::Null) => {}
        Some(kind) if kind == "message" => {}
        Some(_) => {
            return Err(OpenAiError::invalid(
                format!(
                    "input[{i}]: only message items are supported (no tools, no item references)"
                ),
                Some(&format!("input[{i}].type")),
            ));
        }
    }
    // What an SDK echoes back with an earlier output message.
    item.remove("id");
    item.remove("status");
    let role = match item.remove("role").as_ref().and_then(Value::as_str) {
        Some("system" | "developer") => None,
        Some("user") => Some(TurnRole::User),
        Some("assistant") => Some(TurnRole::Assistant),
        _ => {
            return Err(OpenAiError::invalid(
                format!("input[{i}]: role must be user, assistant, system or developer"),
                Some(&format!("input[{i}].role")),
            ));
        }
    };
    let text = match item.remove("content") {
        Some(Value::String(text)) => text,
        Some(Value::Array(parts)) => parts_text(parts, i)?,
        _ => {
            return Err(OpenAiError::invalid(
                format!("input[{i}]: content is required (a string or a list of text parts)"),
                Some(&format!("input[{i}].content")),
            ));
        }
    };
    if let Some((name, _)) = item.iter().find(|(_, v)| !v.is_null()) {
        return Err(unsupported(format!("input[{i}].{name}")));
    }
    Ok((role, text))
}

fn parts_text(parts: Vec<Value>, i: usize) -> Result<String, OpenAiError> {
    let mut texts = Vec::with_capacity(parts.len().min(1024));
    for (j, part) in parts.into_iter().enumerate() {
        let Value::Object(mut part) = part else {
            return Err(OpenAiError::invalid(
                format!("input[{i}].content[{j}] must be a content part object"),
                Some(&format!("input[{i}].content")),
            ));
        };
        let kind = part.remove("type");
        match kind.as_ref().and_then(Value::as_str) {
            Some("input_text" | "output_text") => {}
            Some(other) => {
                return Err(OpenAiError::invalid(
                    format!(
                        "input[{i}].content[{j}]: `{}` parts are not supported (text only)",
                        other.chars().take(40).collect::<String>()
                    ),
                    Some(&format!("input[{i}].content[{j}].type")),
                ));
            }
            None => {
                return Err(OpenAiError::invalid(
                    format!("input[{i}].content[{j}]: a part needs its type"),
                    Some(&format!("input[{i}].content[{j}].type")),
                ));
            }
        }
        let Some(Value::String(text)) = part.remove("text") else {
            return Err(OpenAiError::invalid(
                format!("input[{i}].content[{j}]: a text part needs its text"),
                Some(&format!("input[{i}].content[{j}].text")),
            ));
        };
        // What an SDK echoes back with an earlier output text.
        part.remove("annotations");
        part.remove("logprobs");
        if let Some((name, _)) = part.iter().find(|(_, v)| !v.is_null()) {
            return Err(unsupported(format!("input[{i}].content[{j}].{name}")));
        }
        texts.push(text);
    }
    Ok(texts.join("\n"))
}
