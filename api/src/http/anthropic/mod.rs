//! The Anthropic-compatible front door: `POST /v1/messages`, so that Anthropic's clients and
//! SDKs work unchanged (base URL = this service, API key = the same JWT, sent as `x-api-key`
//! or as a bearer token).
//!
//! Each call is an ordinary durable generation request, as on the OpenAI door (row + job in
//! one transaction, attempts, cache, rate limits, per-user quotas, usage; metadata `api` =
//! `anthropic.messages`), so it can be polled, audited and replayed: its id is the message's
//! `id` after `msg_`, and its `request-id` / `x-request-id` header. A call waits for its
//! generation up to `OPENAI_COMPAT_WAIT_SECS` (or streams it through the relay); past that it
//! answers 504 `timeout_error` with the id to poll, and `x-should-retry: false` so that SDKs do
//! not submit it again.
//!
//! Anthropic requires an `anthropic-version` header: a call without one is refused as
//! Anthropic refuses it; any version is accepted (the answer has the one shape of
//! `2023-06-01`). Errors have Anthropic's shape and statuses (`error`).
//!
//! This file holds the handler; the request body and its translation are in `request`, the
//! JSON answer in `response`, the SSE events in `stream`, the error shape in `error`, and the
//! Anthropic answers of the shared `/v1/models` routes in `models`.

mod error;
pub(crate) mod models;
mod request;
mod response;
mod stream;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::Response;
use uuid::Uuid;

use super::door::{self, Outcome};
use super::extract::JsonBody;
use crate::auth::{ApiKeyUser, AuthUser};
use crate::error::ApiError;
use crate::state::AppState;
use crate::telemetry::TraceContext;

use error::{AnthropicError, MessageErrors};
use request::{Call, MessagesRequest};
use response::MessageObject;
use stream::{EventWriter, sse};

/// The request id headers: Anthropic's SDKs read `request-id`; ours is `x-request-id`.
const REQUEST_ID_HEADERS: [HeaderName; 2] = [
    HeaderName::from_static("request-id"),
    HeaderName::from_static("x-request-id"),
];
const VERSION_HEADER: HeaderName = HeaderName::from_static("anthropic-version");
/// Honoured by Anthropic's SDKs: `false` stops their automatic retries.
const SHOULD_RETRY_HEADER: HeaderName = HeaderName::from_static("x-should-retry");

#[utoipa::path(
    post,
    path = "/v1/messages",
    tag = "anthropic",
    summary = "Anthropic Messages (a durable request; JSON or SSE events)",
    description = "The key is the JWT, as `x-api-key` or `Authorization: Bearer`. Text content only; \
                   `stream: true` answers Anthropic's event sequence.",
    params(
        ("anthropic-version" = String, Header, description = "required, as Anthropic requires it; any version (e.g. `2023-06-01`)"),
        ("Idempotency-Key" = Option<String>, Header, description = "a repeated key (same user, same body) returns the first request"),
    ),
    request_body = MessagesRequest,
    responses(
        (status = 200, description = "the message (`stream: true`: `message_start` … `message_stop` events)", body = MessageObject),
        MessageErrors,
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub async fn messages(
    State(state): State<AppState>,
    user: Result<ApiKeyUser, ApiError>,
    trace: TraceContext,
    headers: HeaderMap,
    body: Result<JsonBody<MessagesRequest>, ApiError>,
) -> Result<Response, AnthropicError> {
    let ApiKeyUser(user) = user?;
    require_version(&headers)?;
    let JsonBody(body) = body?;
    run(state, user, trace, &headers, body.into_call()?).await
}

/// Anthropic refuses a call without `anthropic-version`; so does its door here.
fn require_version(headers: &HeaderMap) -> Result<(), AnthropicError> {
    let given = headers
        .get(VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !v.trim().is_empty());
    if given {
        Ok(())
    } else {
        Err(AnthropicError::invalid(
            "anthropic-version: header is required (e.g. anthropic-version: 2023-06-01)",
        ))
    }
}

/// Runs a translated call as a durable request ([`door::run`]), answered in Anthropic's
/// format.
async fn run(
    state: AppState,
    user: AuthUser,
    trace: TraceContext,
    headers: &HeaderMap,
    call: Call,
) -> Result<Response, AnthropicError> {
    if state.models.current().get(&call.model).is_none() {
        return Err(AnthropicError::model_not_found(&call.model));
    }
    let wait = state.limits.compat_wait;
    let run = door::run(state, &user, trace, headers, call.body, call.stream).await?;
    let response = match run.outcome {
        Outcome::Streamed(events) => sse(events, EventWriter::new(run.id, call.model)),
        Outcome::Waited(row) => response::answer(&row, wait),
    };
    let mut response = with_request_id(response, run.id);
    super::rate_limits::attach(&mut response, run.rate);
    Ok(response)
}

fn with_request_id(mut response: Response, id: Uuid) -> Response {
    if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
        for name in REQUEST_ID_HEADERS {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response
}
