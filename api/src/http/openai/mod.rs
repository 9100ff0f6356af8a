//! The OpenAI-compatible front door: `POST /v1/chat/completions`, `POST /v1/completions`,
//! `GET /v1/models` and `GET /v1/models/{model}`, so that existing OpenAI clients and SDKs work
//! unchanged (base URL = this service, API key = the same JWT).
//!
//! Each call is an ordinary durable generation request (row + job in one transaction, attempts,
//! cache, rate limits, per-user quotas, usage), so it can be polled, audited and replayed; its id is the
//! response's `id` and its `x-request-id` header. A call waits for its generation up to
//! `OPENAI_COMPAT_WAIT_SECS` (or streams it through the relay); past that it answers 504 with
//! the id to poll, and `x-should-retry: false` so that SDKs do not submit it again.
//!
//! Errors have OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`), invalid
//! requests are 400 (as OpenAI answers them) and a parameter the service cannot honour is
//! refused by name, unless it has its neutral value (`n: 1`, `presence_penalty: 0`, ...).
//!
//! This file holds the completion handlers and what they share; the request bodies and their
//! translation are in `request`, the JSON answers in `response`, the SSE chunks in `stream`,
//! the error shape in `error` and the `/v1/models` routes in `models`. The Responses API
//! (`/v1/responses`) is in `responses`; the Batch API (`/v1/files`, `/v1/batches`) in `files`,
//! `batches` and `batch_output`.

mod batch_output;
mod batches;
mod error;
mod files;
mod list;
mod metadata;
mod models;
mod request;
mod response;
pub mod responses;
mod stream;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::Response;
use uuid::Uuid;

use super::door::{self, Outcome};
use super::extract::JsonBody;
use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::state::AppState;
use crate::telemetry::TraceContext;

use error::{CompletionErrors, OpenAiError};
// The `__path_*` items are the handlers' OpenAPI descriptions (made by `utoipa::path`): they
// travel with the handlers so that `openapi.rs` can name them as `http::openai::list_models`.
pub use batches::{
    __path_cancel_batch, __path_create_batch, __path_list_batches, __path_retrieve_batch,
    cancel_batch, create_batch, list_batches, retrieve_batch,
};
pub use files::{
    __path_delete_file, __path_file_content, __path_list_files, __path_retrieve_file,
    __path_upload_file, delete_file, file_content, list_files, retrieve_file, upload_file,
};
pub use models::{__path_list_models, __path_show_model, list_models, show_model};
use request::{Call, ChatCompletionRequest, CompletionRequest};
use response::CompletionObject;
use stream::{ChunkWriter, sse};

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

/// Runs a translated call as a durable request ([`door::run`]), answered in OpenAI's format.
async fn run(
    state: AppState,
    user: AuthUser,
    trace: TraceContext,
    headers: &HeaderMap,
    call: Call,
) -> Result<Response, OpenAiError> {
    if state.models.current().get(&call.model).is_none() {
        return Err(OpenAiError::model_not_found(&call.model));
    }
    let (endpoint, wait) = (call.endpoint, state.limits.compat_wait);
    let run = door::run(state, &user, trace, headers, call.body, call.stream)
        .await
        .map_err(|e| OpenAiError::from_native(e, endpoint))?;
    let response = match run.outcome {
        Outcome::Streamed(events) => {
            let writer = ChunkWriter::new(run.id, call.model, endpoint, call.include_usage);
            sse(events, writer)
        }
        Outcome::Waited(row) => response::answer(&row, endpoint, wait),
    };
    let mut response = with_request_id(response, run.id);
    super::rate_limits::attach(&mut response, run.rate);
    Ok(response)
}

fn with_request_id(mut response: Response, id: Uuid) -> Response {
    if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}
