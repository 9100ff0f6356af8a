//! The errors of the `/v1` routes in OpenAI's shape (`{"error": {"message", "type", "param",
//! "code"}}`): the service's own errors translated (status, `Retry-After`, rate-limit headers
//! kept), the door's own refusals, and `x-should-retry: false` on whatever a retry cannot fix.

use axum::Json;
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use uuid::Uuid;

use super::{Endpoint, SHOULD_RETRY_HEADER};
use crate::error::ApiError;

/// The error answers of the completion routes, for the OpenAPI document.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(super) enum CompletionErrors {
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
    /// over a rate limit or a per-user quota (see Retry-After)
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
    pub(super) fn new(error: OpenAiErrorDetail) -> Self {
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
    /// `rate_limit_exceeded`, `queue_quota_exceeded`, `too_many_streams`, `too_many_waits`,
    /// `generation_pending`, `generation_restarted`.
    pub code: Option<String>,
    /// The durable request concerned, when one was created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<Uuid>,
    /// Where to poll a generation still running (`generation_pending`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll_url: Option<String>,
}

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
    pub(super) fn from_native(error: ApiError, endpoint: Endpoint) -> Self {
        Self::Native {
            error,
            endpoint: Some(endpoint),
        }
    }

    pub(super) fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self::Custom {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: None,
            message: message.into(),
            param: param.map(str::to_owned),
        }
    }

    pub(super) fn model_not_found(model: &str) -> Self {
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
        // The per-user quotas keep their own codes, under OpenAI's type for 429s.
        code @ ("queue_quota_exceeded" | "too_many_streams" | "too_many_waits") => {
            ("requests", code)
        }
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
