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
    ChatTurn, GenerationParams, MockBehaviour, ResponseFormat as NativeFormat, TurnRole,
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
struct ChatMessageIn {
    role: String,
    #[serde(default)]
    content: Option<Content>,
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
        let params = GenerationParams {
            max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            stop: self.stop.map(Stop::into_vec),
            system,
            response_format,
            history: (!history.is_empty()).then_some(history),
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
            "tools" | "functions" => value.as_array().is_some_and(Vec::is_empty),
            "tool_choice" | "function_call" => value == "none",
            // Meaningless without tools, which are refused.
            "parallel_tool_calls" => value.is_boolean(),
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

/// Leading system (or developer) messages → the system prompt; the last message (the user's)
/// → the prompt; the turns between → the history.
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
            "tool" | "function" => {
                return Err(OpenAiError::invalid(
                    format!("messages[{i}]: tool messages are not supported (no tool calling)"),
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
        let Some(content) = text else {
            return Err(OpenAiError::invalid(
                format!("messages[{i}]: content is required"),
                Some("messages"),
            ));
        };
        turns.push(ChatTurn { role, content });
    }
    let Some(last) = turns.pop() else {
        return Err(OpenAiError::invalid(
            "messages must contain at least one user message",
            Some("messages"),
        ));
    };
    if last.role != TurnRole::User {
        return Err(OpenAiError::invalid(
            "the last message must be the user's",
            Some("messages"),
        ));
    }
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    Ok((system, turns, last.content))
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
