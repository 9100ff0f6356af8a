//! The errors of `/v1/messages` in Anthropic's shape (`{"type": "error", "error": {"type",
//! "message"}}`) under Anthropic's statuses: the service's own errors translated (status,
//! `Retry-After` and the rate-limit state kept; 422 becomes 400, 503 becomes 529
//! `overloaded_error`), the door's own refusals, and `x-should-retry: false` on whatever a
//! retry cannot fix (Anthropic's SDKs honour it as OpenAI's do).

use axum::Json;
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use uuid::Uuid;

use super::SHOULD_RETRY_HEADER;
use crate::error::ApiError;

/// Anthropic's status for "temporarily overloaded": our 503 (a dependency unavailable).
pub(super) fn overloaded_status() -> StatusCode {
    StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
}

/// The error answers of `/v1/messages`, for the OpenAPI document.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(super) enum MessageErrors {
    /// `invalid_request_error`: invalid request, a parameter or content block the service
    /// cannot honour, or a missing `anthropic-version`
    #[response(status = 400)]
    BadRequest(AnthropicErrorBody),
    /// `authentication_error`: missing or invalid key (the JWT)
    #[response(status = 401)]
    Unauthorized(AnthropicErrorBody),
    /// `not_found_error`: unknown model
    #[response(status = 404)]
    NotFound(AnthropicErrorBody),
    /// `invalid_request_error`: cancelled, or an Idempotency-Key reused for another body
    #[response(status = 409)]
    Conflict(AnthropicErrorBody),
    /// `request_too_large`: body too large
    #[response(status = 413)]
    TooLarge(AnthropicErrorBody),
    /// `rate_limit_error`: over a rate limit or a per-user quota (see Retry-After)
    #[response(status = 429)]
    RateLimited(AnthropicErrorBody),
    /// `api_error`: the generation failed after the service's retries and fallbacks
    #[response(status = 502)]
    Failed(AnthropicErrorBody),
    /// `timeout_error`: still running after OPENAI_COMPAT_WAIT_SECS: poll `error.poll_url`
    #[response(status = 504)]
    Pending(AnthropicErrorBody),
    /// `overloaded_error`: a dependency is unavailable; retry
    #[response(status = 529)]
    Overloaded(AnthropicErrorBody),
}

/// The error body of `/v1/messages` (Anthropic's shape).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AnthropicErrorBody {
    /// Always `error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub error: AnthropicErrorDetail,
    /// The durable request concerned, when one was created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<Uuid>,
}

impl AnthropicErrorBody {
    pub(super) fn new(error: AnthropicErrorDetail, request_id: Option<Uuid>) -> Self {
        Self {
            kind: "error",
            error,
            request_id,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AnthropicErrorDetail {
    /// `invalid_request_error`, `authentication_error`, `permission_error`, `not_found_error`,
    /// `request_too_large`, `rate_limit_error`, `api_error`, `timeout_error`,
    /// `overloaded_error`.
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
    /// Where to poll a generation still running (`timeout_error`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll_url: Option<String>,
}

impl AnthropicErrorDetail {
    pub(super) fn new(kind: &str, message: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            message: message.into(),
            poll_url: None,
        }
    }
}

/// An error of `/v1/messages`, answered in Anthropic's shape.
#[derive(Debug)]
pub enum AnthropicError {
    /// One of the service's own errors (authentication, rate limits, bodies, the database).
    Native(ApiError),
    Custom {
        status: StatusCode,
        kind: &'static str,
        message: String,
    },
}

impl From<ApiError> for AnthropicError {
    fn from(error: ApiError) -> Self {
        Self::Native(error)
    }
}

impl AnthropicError {
    /// A 400 `invalid_request_error`; Anthropic's messages start with the parameter's path.
    pub(super) fn invalid(message: impl Into<String>) -> Self {
        Self::Custom {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
        }
    }

    pub(super) fn model_not_found(model: &str) -> Self {
        Self::Custom {
            status: StatusCode::NOT_FOUND,
            kind: "not_found_error",
            message: format!(
                "model: `{}` does not exist or cannot be used; GET /api/v1/models lists those that can",
                model.chars().take(60).collect::<String>()
            ),
        }
    }
}

impl IntoResponse for AnthropicError {
    fn into_response(self) -> Response {
        match self {
            Self::Custom {
                status,
                kind,
                message,
            } => {
                let body = AnthropicErrorBody::new(AnthropicErrorDetail::new(kind, message), None);
                let mut response = (status, Json(body)).into_response();
                if status != StatusCode::TOO_MANY_REQUESTS {
                    response
                        .headers_mut()
                        .insert(SHOULD_RETRY_HEADER, HeaderValue::from_static("false"));
                }
                response
            }
            Self::Native(error) => native_response(error),
        }
    }
}

/// Anthropic's error type for an HTTP status.
pub(super) fn kind_of(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        503 | 529 => "overloaded_error",
        s if s >= 500 => "api_error",
        // Anthropic uses this type for every other 4xx too.
        _ => "invalid_request_error",
    }
}

/// The service's own error answer (status, headers such as `Retry-After`, the rate-limit
/// state), with Anthropic's status and body instead of ours.
fn native_response(error: ApiError) -> Response {
    let status = match error.status() {
        // Anthropic answers invalid requests with 400, and its SDKs map 400 to BadRequestError.
        StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
        StatusCode::SERVICE_UNAVAILABLE => overloaded_status(),
        other => other,
    };
    let message = match &error {
        ApiError::Validation {
            field: Some(field), ..
        } => with_param(anthropic_param(field), &error.to_string()),
        _ => error.to_string(),
    };
    let retryable = matches!(status.as_u16(), 429 | 529);
    let response = error.into_response();
    let (mut parts, _) = response.into_parts();
    parts.status = status;
    if !retryable {
        parts
            .headers
            .insert(SHOULD_RETRY_HEADER, HeaderValue::from_static("false"));
    }
    let body = AnthropicErrorBody::new(AnthropicErrorDetail::new(kind_of(status), message), None);
    Response::from_parts(
        parts,
        Body::from(serde_json::to_vec(&body).unwrap_or_default()),
    )
}

/// The name of a native field in the Anthropic request that carried it.
fn anthropic_param(field: &str) -> &str {
    match field {
        "prompt" | "parameters.history" => "messages",
        "parameters.stop" => "stop_sequences",
        f => f.strip_prefix("parameters.").unwrap_or(f),
    }
}

/// `param: message`, as Anthropic words its messages, unless the message names it already.
fn with_param(param: &str, message: &str) -> String {
    if message.starts_with(param) {
        message.to_owned()
    } else {
        format!("{param}: {message}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_onto_anthropics_error_types() {
        let cases = [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (409, "invalid_request_error"),
            (413, "request_too_large"),
            (415, "invalid_request_error"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (502, "api_error"),
            (504, "timeout_error"),
            (529, "overloaded_error"),
        ];
        for (status, kind) in cases {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(kind_of(status), kind, "{status}");
        }
        assert_eq!(overloaded_status().as_u16(), 529);
    }

    #[test]
    fn native_fields_are_named_as_the_anthropic_request_names_them() {
        assert_eq!(anthropic_param("parameters.stop"), "stop_sequences");
        assert_eq!(anthropic_param("parameters.max_tokens"), "max_tokens");
        assert_eq!(anthropic_param("parameters.history"), "messages");
        assert_eq!(anthropic_param("prompt"), "messages");
        assert_eq!(
            with_param("max_tokens", "max_tokens must be at most 8"),
            "max_tokens must be at most 8"
        );
        assert_eq!(with_param("system", "too long"), "system: too long");
    }
}
