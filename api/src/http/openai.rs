//! The OpenAI-compatible front door: `POST /v1/chat/completions`, `POST /v1/completions`,
//! `GET /v1/models` and `GET /v1/models/{model}`, so that existing OpenAI clients and SDKs work
//! unchanged (base URL = this service, API key = the same JWT).
//!
//! Each call is an ordinary durable generation request (row + job in one transaction, attempts,
//! cache, rate limits, usage), so it can be polled, audited and replayed; its id is the
//! response's `id` and its `x-request-id` header. A call waits for its generation up to
//! `OPENAI_COMPAT_WAIT_SECS` (or streams it through the relay); past that it answers 504 with
//! the id to poll, and `x-should-retry: false` so that SDKs do not submit it again.
//!
//! Errors have OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`), invalid
//! requests are 400 (as OpenAI answers them) and a parameter the service cannot honour is
//! refused by name, unless it has its neutral value (`n: 1`, `presence_penalty: 0`, ...).

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::extract::JsonBody;
use super::generate::{Admitted, accept, idempotency_key, wait_until_final};
use super::stream::{FollowEvent, follow_events, submit_subscribed};
use crate::app::AppState;
use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::telemetry::TraceContext;
use llm_shared::cache::CachePolicy;
use llm_shared::generation::{
    ChatTurn, GenerationParams, MockBehaviour, ResponseFormat as NativeFormat, TurnRole,
};
use llm_shared::models::ModelRegistry;
use llm_shared::requests::{GenerateBody, NewRequest, RequestView, Status};

const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");
/// Honoured by the OpenAI SDKs: `false` stops their automatic retries.
const SHOULD_RETRY_HEADER: HeaderName = HeaderName::from_static("x-should-retry");

/// Which OpenAI API a call came through: it shapes the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Text,
}

impl Endpoint {
    fn object(self) -> &'static str {
        match self {
            Self::Chat => "chat.completion",
            Self::Text => "text_completion",
        }
    }

    fn chunk_object(self) -> &'static str {
        match self {
            Self::Chat => "chat.completion.chunk",
            Self::Text => "text_completion",
        }
    }

    fn api_name(self) -> &'static str {
        match self {
            Self::Chat => "openai.chat.completions",
            Self::Text => "openai.completions",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Request bodies

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
    #[allow(dead_code)]
    name: String,
    #[serde(default)]
    schema: Option<Value>,
    #[serde(default)]
    #[allow(dead_code)]
    strict: Option<bool>,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
}

/// A call translated into the service's own terms.
struct Call {
    endpoint: Endpoint,
    model: String,
    body: GenerateBody,
    stream: bool,
    include_usage: bool,
}

impl ChatCompletionRequest {
    fn into_call(self) -> Result<Call, OpenAiError> {
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
                Some(schema) => NativeFormat::JsonSchema { schema },
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
    fn into_call(self) -> Result<Call, OpenAiError> {
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

// ---------------------------------------------------------------------------------------------
// Handlers

#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "openai",
    summary = "OpenAI Chat Completions (a durable request; JSON or SSE chunks)",
    params(("Idempotency-Key" = Option<String>, Header, description = "a repeated key (same user, same body) returns the first request")),
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "the completion (`stream: true`: `chat.completion.chunk` events, then `data: [DONE]`)", body = CompletionObject),
        CompletionErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn chat_completions(
    State(state): State<AppState>,
    user: Result<AuthUser, ApiError>,
    trace: TraceContext,
    headers: HeaderMap,
    body: Result<JsonBody<ChatCompletionRequest>, ApiError>,
) -> Result<Response, OpenAiError> {
    let (user, JsonBody(body)) = (user?, body?);
    run(state, user, trace, &headers, body.into_call()?).await
}

#[utoipa::path(
    post,
    path = "/v1/completions",
    tag = "openai",
    summary = "OpenAI legacy text completions (a durable request; JSON or SSE)",
    params(("Idempotency-Key" = Option<String>, Header, description = "a repeated key (same user, same body) returns the first request")),
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "the completion (`stream: true`: `text_completion` events, then `data: [DONE]`)", body = CompletionObject),
        CompletionErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn completions(
    State(state): State<AppState>,
    user: Result<AuthUser, ApiError>,
    trace: TraceContext,
    headers: HeaderMap,
    body: Result<JsonBody<CompletionRequest>, ApiError>,
) -> Result<Response, OpenAiError> {
    let (user, JsonBody(body)) = (user?, body?);
    run(state, user, trace, &headers, body.into_call()?).await
}

#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "openai",
    summary = "The models that can run here, as OpenAI model objects",
    responses(
        (status = 200, description = "the models", body = ModelList),
        (status = 401, description = "missing or invalid bearer token (API key)", body = OpenAiErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn list_models(
    State(state): State<AppState>,
    user: Result<AuthUser, ApiError>,
) -> Result<Json<ModelList>, OpenAiError> {
    user?;
    let registry = state.models.current();
    let data = registry
        .all()
        .iter()
        .filter(|m| usable(&registry, &m.id))
        .map(|m| ModelObject::new(&m.id, m.provider.as_str()))
        .collect();
    Ok(Json(ModelList {
        object: "list".into(),
        data,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/models/{model}",
    tag = "openai",
    summary = "One model, as an OpenAI model object",
    params(("model" = String, Path, description = "a registry model id")),
    responses(
        (status = 200, description = "the model", body = ModelObject),
        (status = 401, description = "missing or invalid bearer token (API key)", body = OpenAiErrorBody),
        (status = 404, description = "unknown or unusable model (`model_not_found`)", body = OpenAiErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn show_model(
    State(state): State<AppState>,
    user: Result<AuthUser, ApiError>,
    Path(model): Path<String>,
) -> Result<Json<ModelObject>, OpenAiError> {
    user?;
    let registry = state.models.current();
    match registry.get(&model) {
        Some(m) if usable(&registry, &m.id) => {
            Ok(Json(ModelObject::new(&m.id, m.provider.as_str())))
        }
        _ => Err(OpenAiError::model_not_found(&model)),
    }
}

/// A model a call can use: it, or one of its fallbacks, has a configured provider.
fn usable(registry: &ModelRegistry, id: &str) -> bool {
    registry
        .chain(id)
        .iter()
        .any(|m| registry.unavailable_reason(m).is_none())
}

async fn run(
    state: AppState,
    user: AuthUser,
    trace: TraceContext,
    headers: &HeaderMap,
    call: Call,
) -> Result<Response, OpenAiError> {
    let registry = state.models.current();
    if registry.get(&call.model).is_none() {
        return Err(OpenAiError::model_not_found(&call.model));
    }
    let key = idempotency_key(headers)?;
    let mut new = NewRequest::validate(
        call.body,
        user.id,
        key,
        &registry,
        state.limits.job_max_attempts,
    )
    .map_err(|e| OpenAiError::from_native(e.into(), call.endpoint))?;
    new.trace_id = Some(trace.trace_id);
    if call.stream {
        let (id, subscription, rate) = submit_subscribed(&state, &user, new)
            .await
            .map_err(|e| OpenAiError::from_native(e, call.endpoint))?;
        let events = follow_events(state, id, user.id, subscription, 0);
        let writer = ChunkWriter::new(id, call.model, call.endpoint, call.include_usage);
        let mut response = with_request_id(sse(events, writer), id);
        super::rate_limits::attach(&mut response, rate);
        return Ok(response);
    }
    let Admitted { submitted, rate } = accept(&state, &user, new)
        .await
        .map_err(|e| OpenAiError::from_native(e, call.endpoint))?;
    let row = wait_until_final(&state, submitted.id, user.id, state.limits.compat_wait).await?;
    let response = match row.status {
        Status::Completed => Json(completion(&row, call.endpoint)).into_response(),
        Status::Failed => generation_failed(&row).into_response(),
        Status::Cancelled => OpenAiError::Custom {
            status: StatusCode::CONFLICT,
            kind: "invalid_request_error",
            code: Some("cancelled".into()),
            message: "the request was cancelled".into(),
            param: None,
        }
        .into_response(),
        Status::Pending | Status::Running => still_running(&row, state.limits.compat_wait),
    };
    let mut response = with_request_id(response, submitted.id);
    super::rate_limits::attach(&mut response, rate);
    Ok(response)
}

fn completion(row: &RequestView, endpoint: Endpoint) -> CompletionObject {
    let text = row.result.clone().unwrap_or_default();
    let (message, text) = match endpoint {
        Endpoint::Chat => (
            Some(AssistantMessage {
                role: "assistant".into(),
                content: text,
                refusal: None,
            }),
            None,
        ),
        Endpoint::Text => (None, Some(text)),
    };
    CompletionObject {
        id: row.id,
        object: endpoint.object().into(),
        created: row.created_at.timestamp(),
        model: row
            .served_model
            .clone()
            .unwrap_or_else(|| row.model.clone()),
        system_fingerprint: None,
        choices: vec![CompletionChoice {
            index: 0,
            message,
            text,
            logprobs: None,
            finish_reason: finish_reason(row.finish_reason.as_deref()).into(),
        }],
        usage: usage(row),
    }
}

fn usage(row: &RequestView) -> UsageObject {
    let prompt_tokens = row.prompt_tokens.unwrap_or(0);
    let completion_tokens = row.completion_tokens.unwrap_or(0);
    UsageObject {
        prompt_tokens,
        completion_tokens,
        total_tokens: row
            .tokens_used
            .unwrap_or(prompt_tokens.saturating_add(completion_tokens)),
    }
}

/// Our finish reasons in OpenAI's words.
fn finish_reason(reason: Option<&str>) -> &'static str {
    match reason {
        Some("length") => "length",
        Some("content_filter") => "content_filter",
        _ => "stop",
    }
}

/// A generation that failed after the service's own retries and fallbacks.
fn generation_failed(row: &RequestView) -> OpenAiError {
    let code = row.error_code.clone().unwrap_or_else(|| "failed".into());
    let message = row
        .error_message
        .clone()
        .unwrap_or_else(|| "the generation failed".into());
    // The provider refused the request itself: the caller must change it.
    let (status, kind) = if code == "rejected" {
        (StatusCode::BAD_REQUEST, "invalid_request_error")
    } else {
        (StatusCode::BAD_GATEWAY, "upstream_error")
    };
    OpenAiError::Custom {
        status,
        kind,
        code: Some(code),
        message,
        param: None,
    }
}

/// The wait is over but the generation goes on (it is durable): the id to poll.
fn still_running(row: &RequestView, waited: Duration) -> Response {
    let poll_url = format!("/api/v1/generate/{}", row.id);
    let body = OpenAiErrorBody::new(OpenAiErrorDetail {
        message: format!(
            "the generation is still {} after {} s; it carries on: poll GET {poll_url} for its result",
            row.status.as_str(),
            waited.as_secs()
        ),
        kind: "timeout".into(),
        param: None,
        code: Some("generation_pending".into()),
        request_id: Some(row.id),
        poll_url: Some(poll_url.clone()),
    });
    let mut response = (StatusCode::GATEWAY_TIMEOUT, Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(SHOULD_RETRY_HEADER, HeaderValue::from_static("false"));
    if let Ok(location) = HeaderValue::from_str(&poll_url) {
        headers.insert(header::LOCATION, location);
    }
    response
}

fn with_request_id(mut response: Response, id: Uuid) -> Response {
    if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

// ---------------------------------------------------------------------------------------------
// Streaming

/// The follower's events, mapped by the writer as they come (no task or channel of its own:
/// the follower's receiver is the only queue).
fn sse(events: mpsc::Receiver<FollowEvent>, writer: ChunkWriter) -> Response {
    let frames = futures::stream::unfold((events, writer), |(mut events, mut writer)| async move {
        if writer.finished {
            return None;
        }
        let frames = writer.on(events.recv().await);
        Some((futures::stream::iter(frames), (events, writer)))
    })
    .flatten()
    .map(Ok::<_, Infallible>);
    Sse::new(frames)
        .keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(15))
                .text("keep-alive"),
        )
        .into_response()
}

/// Turns a follower's events into OpenAI chunks. A `restart` cannot be shown to an OpenAI
/// client, so the writer sends only output that extends what the client already has: a retry
/// that regenerates the same text goes on seamlessly; one whose result no longer extends what
/// was sent ends the stream with an error naming the request id (the stored result is whole).
struct ChunkWriter {
    id: Uuid,
    created: i64,
    model: String,
    endpoint: Endpoint,
    include_usage: bool,
    /// The content the client has.
    sent: String,
    /// The output since the last restart.
    current: String,
    finished: bool,
}

impl ChunkWriter {
    fn new(id: Uuid, model: String, endpoint: Endpoint, include_usage: bool) -> Self {
        Self {
            id,
            created: Utc::now().timestamp(),
            model,
            endpoint,
            include_usage,
            sent: String::new(),
            current: String::new(),
            finished: false,
        }
    }

    fn on(&mut self, event: Option<FollowEvent>) -> Vec<Event> {
        match event {
            None => self.fail(
                "stream_interrupted",
                &format!(
                    "the stream was interrupted; the generation carries on: poll GET /api/v1/generate/{}",
                    self.id
                ),
            ),
            Some(FollowEvent::Start { .. }) => match self.endpoint {
                Endpoint::Chat => vec![self.chunk(json!({"role": "assistant", "content": ""}), None)],
                Endpoint::Text => Vec::new(),
            },
            Some(FollowEvent::Token { text, .. }) => {
                self.current.push_str(&text);
                self.flush()
            }
            Some(FollowEvent::Restart { .. }) => {
                self.current.clear();
                Vec::new()
            }
            Some(FollowEvent::Done { row, .. }) => {
                let mut frames = self.flush();
                if self.sent != self.current {
                    frames.extend(self.fail(
                        "generation_restarted",
                        &format!(
                            "the generation restarted after part of its output was sent; its whole result is stored: GET /api/v1/generate/{}",
                            self.id
                        ),
                    ));
                    return frames;
                }
                let reason = finish_reason(row.finish_reason.as_deref());
                frames.push(self.chunk(json!({}), Some(reason)));
                if self.include_usage {
                    let usage = serde_json::to_value(usage(&row)).unwrap_or_default();
                    frames.push(self.frame(json!([]), usage));
                }
                frames.push(Event::default().data("[DONE]"));
                self.finished = true;
                frames
            }
            Some(FollowEvent::Failed { code, message, .. }) => self.fail(&code, &message),
        }
    }

    /// Sends what extends the client's content, if the current output does.
    fn flush(&mut self) -> Vec<Event> {
        if self.current.len() <= self.sent.len() || !self.current.starts_with(&self.sent) {
            return Vec::new();
        }
        let delta = self.current[self.sent.len()..].to_owned();
        self.sent.push_str(&delta);
        vec![match self.endpoint {
            Endpoint::Chat => self.chunk(json!({"content": delta}), None),
            Endpoint::Text => self.chunk(Value::from(delta), None),
        }]
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Event {
        let choice = match self.endpoint {
            Endpoint::Chat => json!({
                "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason,
            }),
            Endpoint::Text => json!({
                "index": 0,
                "text": delta.as_str().unwrap_or_default(),
                "logprobs": null,
                "finish_reason": finish_reason,
            }),
        };
        self.frame(json!([choice]), Value::Null)
    }

    fn frame(&self, choices: Value, usage: Value) -> Event {
        let mut chunk = json!({
            "id": self.id,
            "object": self.endpoint.chunk_object(),
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
        });
        if self.include_usage
            && let Some(map) = chunk.as_object_mut()
        {
            map.insert("usage".into(), usage);
        }
        Event::default().data(chunk.to_string())
    }

    fn fail(&mut self, code: &str, message: &str) -> Vec<Event> {
        self.finished = true;
        let kind = if code == "cancelled" {
            "invalid_request_error"
        } else {
            "server_error"
        };
        let body = OpenAiErrorBody::new(OpenAiErrorDetail {
            message: message.to_owned(),
            kind: kind.into(),
            param: None,
            code: Some(code.to_owned()),
            request_id: Some(self.id),
            poll_url: None,
        });
        let data = serde_json::to_string(&body).unwrap_or_default();
        vec![Event::default().data(data)]
    }
}

// ---------------------------------------------------------------------------------------------
// Response bodies: typed, so that the OpenAPI document shows them as they are sent.

/// A `chat.completion` (or, from `/v1/completions`, a `text_completion`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CompletionObject {
    /// The durable request's id: poll it at `/api/v1/generate/{id}` (also `x-request-id`).
    pub id: Uuid,
    /// `chat.completion` or `text_completion`.
    pub object: String,
    pub created: i64,
    /// The registry model that answered (the requested one, or a fallback).
    pub model: String,
    pub system_fingerprint: Option<String>,
    /// Always one choice.
    pub choices: Vec<CompletionChoice>,
    pub usage: UsageObject,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CompletionChoice {
    pub index: u32,
    /// Chat completions: the assistant's message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<AssistantMessage>,
    /// Text completions: the text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Always null: log probabilities are not offered.
    pub logprobs: Option<Value>,
    /// `stop`, `length` or `content_filter`.
    pub finish_reason: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AssistantMessage {
    pub role: String,
    pub content: String,
    pub refusal: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UsageObject {
    pub prompt_tokens: i32,
    pub completion_tokens: i32,
    pub total_tokens: i32,
}

/// A model of the registry that can run here.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelObject {
    pub id: String,
    pub object: String,
    /// 0: the registry keeps no creation dates.
    pub created: i64,
    /// The model's provider.
    pub owned_by: String,
}

impl ModelObject {
    fn new(id: &str, owner: &str) -> Self {
        Self {
            id: id.to_owned(),
            object: "model".into(),
            created: 0,
            owned_by: owner.to_owned(),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelObject>,
}

/// The error answers of the completion routes, for the OpenAPI document.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum CompletionErrors {
    /// invalid request, or a parameter the service cannot honour
    #[response(status = 400)]
    BadRequest(OpenAiErrorBody),
    /// missing or invalid bearer token (API key)
    #[response(status = 401)]
    Unauthorized(OpenAiErrorBody),
    /// unknown model (`model_not_found`)
    #[response(status = 404)]
    NotFound(OpenAiErrorBody),
    /// cancelled, or an Idempotency-Key reused for another body
    #[response(status = 409)]
    Conflict(OpenAiErrorBody),
    /// body too large
    #[response(status = 413)]
    TooLarge(OpenAiErrorBody),
    /// over the rate limit (see Retry-After)
    #[response(status = 429)]
    RateLimited(OpenAiErrorBody),
    /// the generation failed after the service's retries and fallbacks
    #[response(status = 502)]
    Failed(OpenAiErrorBody),
    /// a dependency is unavailable; retry
    #[response(status = 503)]
    Unavailable(OpenAiErrorBody),
    /// still running after OPENAI_COMPAT_WAIT_SECS: poll `error.poll_url`
    #[response(status = 504)]
    Pending(OpenAiErrorBody),
}

/// The error body of the `/v1` routes (OpenAI's shape).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OpenAiErrorBody {
    pub error: OpenAiErrorDetail,
}

impl OpenAiErrorBody {
    fn new(error: OpenAiErrorDetail) -> Self {
        Self { error }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OpenAiErrorDetail {
    pub message: String,
    /// `invalid_request_error`, `requests` (rate limits), `server_error`, `upstream_error`,
    /// `timeout`, `permission_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The request parameter at fault, if one is.
    pub param: Option<String>,
    /// e.g. `model_not_found`, `unsupported_parameter`, `invalid_api_key`,
    /// `rate_limit_exceeded`, `generation_pending`, `generation_restarted`.
    pub code: Option<String>,
    /// The durable request concerned, when one was created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<Uuid>,
    /// Where to poll a generation still running (`generation_pending`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll_url: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Errors

/// An error of the `/v1` routes, answered in OpenAI's shape.
#[derive(Debug)]
pub enum OpenAiError {
    /// One of the service's own errors (authentication, rate limits, bodies, the database).
    Native {
        error: ApiError,
        endpoint: Option<Endpoint>,
    },
    Custom {
        status: StatusCode,
        kind: &'static str,
        code: Option<String>,
        message: String,
        param: Option<String>,
    },
}

impl From<ApiError> for OpenAiError {
    fn from(error: ApiError) -> Self {
        Self::Native {
            error,
            endpoint: None,
        }
    }
}

impl OpenAiError {
    fn from_native(error: ApiError, endpoint: Endpoint) -> Self {
        Self::Native {
            error,
            endpoint: Some(endpoint),
        }
    }

    fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self::Custom {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: None,
            message: message.into(),
            param: param.map(str::to_owned),
        }
    }

    fn model_not_found(model: &str) -> Self {
        Self::Custom {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            code: Some("model_not_found".into()),
            message: format!(
                "the model `{}` does not exist or cannot be used; GET /v1/models lists those that can",
                model.chars().take(60).collect::<String>()
            ),
            param: Some("model".into()),
        }
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        match self {
            Self::Custom {
                status,
                kind,
                code,
                message,
                param,
            } => {
                let body = OpenAiErrorBody::new(OpenAiErrorDetail {
                    message,
                    kind: kind.into(),
                    param,
                    code,
                    request_id: None,
                    poll_url: None,
                });
                let mut response = (status, Json(body)).into_response();
                if status != StatusCode::TOO_MANY_REQUESTS {
                    response
                        .headers_mut()
                        .insert(SHOULD_RETRY_HEADER, HeaderValue::from_static("false"));
                }
                response
            }
            Self::Native { error, endpoint } => native_response(error, endpoint),
        }
    }
}

/// The service's own error answer (status, headers such as `Retry-After`, the rate-limit
/// state), with OpenAI's body instead of ours.
fn native_response(error: ApiError, endpoint: Option<Endpoint>) -> Response {
    let status = match error.status() {
        // OpenAI answers invalid requests with 400, and its SDKs map 400 to BadRequestError.
        StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
        other => other,
    };
    let (kind, code) = match error.code() {
        "unauthorized" => ("invalid_request_error", "invalid_api_key"),
        "forbidden" => ("permission_error", "forbidden"),
        "rate_limited" => ("requests", "rate_limit_exceeded"),
        "service_unavailable" => ("server_error", "service_unavailable"),
        "internal_error" => ("server_error", "internal_error"),
        other => ("invalid_request_error", other),
    };
    let param = match &error {
        ApiError::Validation {
            field: Some(field), ..
        } => Some(openai_param(field, endpoint)),
        _ => None,
    };
    let message = error.to_string();
    let retryable = matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    );
    let response = error.into_response();
    let (mut parts, _) = response.into_parts();
    parts.status = status;
    if !retryable {
        parts
            .headers
            .insert(SHOULD_RETRY_HEADER, HeaderValue::from_static("false"));
    }
    let body = OpenAiErrorBody::new(OpenAiErrorDetail {
        message,
        kind: kind.into(),
        param,
        code: Some(code.into()),
        request_id: None,
        poll_url: None,
    });
    Response::from_parts(
        parts,
        Body::from(serde_json::to_vec(&body).unwrap_or_default()),
    )
}

/// The name of a native field in the OpenAI request that carried it.
fn openai_param(field: &str, endpoint: Option<Endpoint>) -> String {
    match field {
        "prompt" | "parameters.history" | "parameters.system" => match endpoint {
            Some(Endpoint::Text) => "prompt".into(),
            _ => "messages".into(),
        },
        f if f.starts_with("parameters.response_format") => "response_format".into(),
        f => f.strip_prefix("parameters.").unwrap_or(f).to_owned(),
    }
}
