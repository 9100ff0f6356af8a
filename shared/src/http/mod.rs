//! The HTTP API: router, shared state and extractors. Handlers live one file per area.
//!
//! **Invariant:** handlers never call a provider; they persist and enqueue, or read.

pub(crate) mod admin;
pub(crate) mod batch;
pub(crate) mod events;
pub(crate) mod generate;
pub(crate) mod health;
pub(crate) mod limits;
pub(crate) mod models;
pub(crate) mod openai;
pub(crate) mod prompts;
pub(crate) mod stream;
pub(crate) mod usage;

use std::time::Duration;

use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::{get, post};
use serde::de::DeserializeOwned;
use sqlx::PgPool;

use crate::auth::JwtKeys;
use crate::cache::ResponseCache;
use crate::error::ApiError;
use crate::models::Models;
use crate::notify::Completions;
use crate::prompts::PromptLibrary;
use crate::ratelimit::RateLimiter;
use crate::relay::RelayHub;

/// Everything handlers share. Cloned for every extractor and middleware that asks for it (several
/// times per request), so it is one `Arc`: a clone is a reference count, not a copy of every
/// client, string and map inside (that copying was a tenth of the api's CPU under load).
#[derive(Clone)]
pub struct AppState(std::sync::Arc<AppServices>);

impl std::ops::Deref for AppState {
    type Target = AppServices;

    fn deref(&self) -> &AppServices {
        &self.0
    }
}

impl From<AppServices> for AppState {
    fn from(services: AppServices) -> Self {
        Self(std::sync::Arc::new(services))
    }
}

/// What [`AppState`] shares: connections, clients, configuration.
pub struct AppServices {
    pub pool: PgPool,
    pub redis: redis::Client,
    pub hub: RelayHub,
    pub cache: ResponseCache,
    /// Stores submits, group-committed (reads `cache` first).
    pub submitter: crate::requests::Submitter,
    pub limiter: RateLimiter,
    pub jwt: JwtKeys,
    pub models: Models,
    pub prompts: std::sync::Arc<PromptLibrary>,
    pub completions: Completions,
    pub limits: Limits,
    /// This process's metrics, served on `/metrics`.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Cancelled when the process starts to stop: requests that wait on a generation (streams,
    /// long polls) end at once, so that the graceful stop does not wait for them (a stream's
    /// client resumes elsewhere with `Last-Event-ID`; a poll is asked again).
    pub shutdown: tokio_util::sync::CancellationToken,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_wait: Duration,
    pub job_max_attempts: u32,
    /// How long a `/v1/...` call waits for its generation (`OPENAI_COMPAT_WAIT_SECS`).
    pub compat_wait: Duration,
}

/// A batch body may be this many times the size of a single request's.
const BATCH_BODY_FACTOR: usize = 32;

pub fn router(state: AppState) -> Router {
    let max_body = state.limits.max_body_bytes;
    let api = Router::new()
        .route("/api/v1/generate", post(generate::submit))
        .route("/api/v1/generate/stream", post(stream::submit_stream))
        .route(
            "/api/v1/generate/batch",
            post(batch::submit).layer(DefaultBodyLimit::max(
                max_body.saturating_mul(BATCH_BODY_FACTOR),
            )),
        )
        .route("/api/v1/generate/batch/{batch_id}", get(batch::status))
        .route(
            "/api/v1/generate/{request_id}",
            get(generate::poll).delete(stream::cancel),
        )
        .route("/api/v1/generate/{request_id}/stream", get(stream::attach))
        .route("/api/v1/usage", get(usage::mine))
        .route("/api/v1/usage/{user_id}", get(usage::of_user))
        .route("/api/v1/rate_limits", get(limits::mine))
        .route("/api/v1/prompts", get(prompts::list))
        .route("/api/v1/prompts/validate", post(prompts::validate))
        .route("/api/v1/prompts/{template_id}", get(prompts::show))
        .route(
            "/api/v1/prompts/{template_id}/render",
            post(prompts::render),
        )
        .route("/api/v1/models", get(models::list))
        .route("/api/v1/models/select", post(models::select))
        .route("/api/v1/models/{model_id}", get(models::show))
        .route("/api/v1/admin/models/reload", post(models::reload))
        .route(
            "/api/v1/admin/cache/invalidate",
            post(admin::invalidate_cache),
        )
        .route("/api/v1/admin/requests", get(admin::list_requests))
        .route("/api/v1/events", post(events::receive))
        .route("/api/v1/admin/requests/replay", post(admin::replay_many))
        .route(
            "/api/v1/admin/requests/{request_id}/replay",
            post(admin::replay_one),
        )
        .route(
            "/api/v1/admin/rate_limits/{user_id}",
            axum::routing::put(limits::set_override).delete(limits::clear_override),
        )
        // The OpenAI-compatible front door (`http::openai`).
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/models", get(openai::list_models))
        .route("/v1/models/{model}", get(openai::show_model))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::headers,
        ));
    Router::new()
        .route("/health", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .merge(api)
        .merge(crate::openapi::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        // Layers run after routing (so both see the route template), outermost last.
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::metrics::track_http,
        ))
        .layer(axum::middleware::from_fn(crate::telemetry::trace_requests))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed("this method is not allowed on this route")
}

/// `axum::Json` whose rejections are answered in the service's error shape.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let max_body_bytes = state.limits.max_body_bytes;
        let (parts, body) = req.into_parts();
        // Read once (within the body limit) to refuse NUL characters, which PostgreSQL cannot
        // store in text or jsonb, before the JSON is parsed from the same bytes.
        let bytes = bytes::Bytes::from_request(Request::from_parts(parts.clone(), body), state)
            .await
            .map_err(|rejection| match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(max_body_bytes),
                _ => ApiError::BadRequest(rejection.body_text()),
            })?;
        if has_nul_escape(&bytes) {
            return Err(nul_refused());
        }
        let req = Request::from_parts(parts, axum::body::Body::from(bytes));
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection, max_body_bytes)),
        }
    }
}

fn nul_refused() -> ApiError {
    ApiError::BadRequest("text must not contain NUL characters (\\u0000)".into())
}

/// Whether JSON text contains the escape `\u0000` (a NUL character in a string or key); a
/// raw NUL byte is invalid JSON and refused by the parser anyway. `\\u0000` (an escaped
/// backslash, then `u0000`) is not one.
fn has_nul_escape(json: &[u8]) -> bool {
    json.windows(6).enumerate().any(|(at, w)| {
        w[0] == b'\\'
            && w[1] == b'u'
            && &w[2..] == b"0000"
            && json[..at].iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 0
    })
}

fn json_rejection(rejection: JsonRejection, max_body_bytes: usize) -> ApiError {
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(max_body_bytes),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(
            "expected a body with Content-Type: application/json".into(),
        ),
        StatusCode::UNPROCESSABLE_ENTITY => ApiError::Validation {
            field: None,
            message: rejection.body_text(),
        },
        _ => ApiError::BadRequest(rejection.body_text()),
    }
}

/// `axum::extract::Query` with rejections in the service's error shape.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        if query.contains("%00") || query.contains('\0') {
            return Err(nul_refused());
        }
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Self(value))
            .map_err(|rejection: QueryRejection| ApiError::BadRequest(rejection.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::has_nul_escape;

    #[test]
    fn nul_escapes_are_found_and_escaped_backslashes_are_not() {
        assert!(has_nul_escape(br#"{"prompt": "a\u0000b"}"#));
        assert!(has_nul_escape(br#"{"\u0000": 1}"#));
        assert!(has_nul_escape(br#"{"p": "\\\u0000"}"#));
        assert!(!has_nul_escape(br#"{"p": "\\u0000"}"#));
        assert!(has_nul_escape(br#"{"p": "\u00001"}"#));
        assert!(!has_nul_escape(br#"{"p": "\u0001"}"#));
        assert!(!has_nul_escape(b"{}"));
    }
}
