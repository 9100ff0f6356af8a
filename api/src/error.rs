//! The api's errors and the one shape every error answer has.
//!
//! - [`ApiError`]: everything an HTTP handler can answer with. It has the one
//!   [`IntoResponse`] of the service, so every error answer has the same JSON shape:
//!   `{"error": {"code": "...", "message": "..."}}`. Internal failures are logged here, once,
//!   and answered with a generic message: their text never reaches a client.
//! - The domain's errors (`llm_shared::error::DomainError`, `sqlx::Error`) become an
//!   [`ApiError`] through `From`, so handlers convert them with `?`; this is the one place that
//!   maps them onto status codes.
//! - `anyhow` is used only by the binaries' `main`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use llm_shared::error::{DomainError, ItemError, is_unavailable};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body was not JSON, or not the JSON we accept.
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed input that breaks a rule (missing prompt, unknown model, ...).
    #[error("{message}")]
    Validation {
        field: Option<&'static str>,
        message: String,
    },
    /// Items of a batch that break the rules, each with its index.
    #[error("{} of the items are invalid", .0.len())]
    InvalidItems(Vec<ItemError>),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than the {0} bytes allowed")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    MethodNotAllowed(&'static str),
    /// Over a rate limit: retry after the given seconds.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_secs: u32,
        state: Option<llm_shared::ratelimit::RateState>,
    },
    /// Over a per-user quota (queued work, open streams, waits): `code` says which; retry
    /// after the given seconds.
    #[error("{message}")]
    QuotaExceeded {
        code: &'static str,
        message: String,
        retry_after_secs: u32,
    },
    /// A dependency (PostgreSQL, Redis) is unreachable: the client may retry.
    #[error("{0}")]
    Unavailable(&'static str),
    /// A bug or an unexpected failure: logged, never shown.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub fn validation(field: &'static str, message: impl Into<String>) -> Self {
        Self::Validation {
            field: Some(field),
            message: message.into(),
        }
    }

    pub fn internal(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Internal(Box::new(err))
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Validation { .. } | Self::InvalidItems(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::RateLimited { .. } | Self::QuotaExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Stable, machine-readable code of the error body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Validation { .. } | Self::InvalidItems(_) => "validation_failed",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::RateLimited { .. } => "rate_limited",
            Self::QuotaExceeded { code, .. } => code,
            Self::Unavailable(_) => "service_unavailable",
            Self::Internal(_) => "internal_error",
        }
    }
}

/// The one error body of the service.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
    /// For a batch: every invalid item.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<ItemError>>,
}

impl ApiError {
    /// The error's one JSON body (an internal error's is logged here, never shown): the
    /// answer's body, or a WebSocket's last message.
    pub fn body(&self) -> ErrorBody {
        if let Self::Internal(source) = self {
            tracing::error!(error = %source, "request failed with an internal error");
        }
        let field = match self {
            Self::Validation { field, .. } => *field,
            _ => None,
        };
        let items = match self {
            Self::InvalidItems(items) => Some(items.clone()),
            _ => None,
        };
        ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
                field,
                items,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = self.body();
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Self::RateLimited {
            retry_after_secs,
            state,
            ..
        } = &self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            if let Some(state) = state {
                response.extensions_mut().insert(*state);
            }
        }
        if let Self::QuotaExceeded {
            retry_after_secs, ..
        } = &self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        if is_unavailable(&err) {
            tracing::warn!(error = %err, "database unavailable");
            Self::Unavailable("the database is unavailable; retry shortly")
        } else {
            Self::internal(err)
        }
    }
}

impl From<DomainError> for ApiError {
    fn from(err: DomainError) -> Self {
        match err {
            DomainError::BadRequest(message) => Self::BadRequest(message),
            DomainError::Validation { field, message } => Self::Validation { field, message },
            DomainError::InvalidItems(items) => Self::InvalidItems(items),
            DomainError::Conflict(message) => Self::Conflict(message),
            DomainError::Database(err) => err.into(),
            DomainError::Internal(err) => Self::Internal(err),
        }
    }
}

/// The error answers of the native routes, as the OpenAPI document lists them: each one the
/// one error shape ([`ErrorBody`]) under its status. A handler's `responses(...)` names those it
/// can give.
pub mod doc {
    use super::ErrorBody;

    /// bad input (not JSON, bad id or query)
    #[derive(utoipa::IntoResponses)]
    #[response(status = 400)]
    pub struct BadRequest(#[allow(dead_code)] ErrorBody);

    /// missing or invalid bearer token
    #[derive(utoipa::IntoResponses)]
    #[response(status = 401)]
    pub struct Unauthorized(#[allow(dead_code)] ErrorBody);

    /// the token lacks the role this needs
    #[derive(utoipa::IntoResponses)]
    #[response(status = 403)]
    pub struct Forbidden(#[allow(dead_code)] ErrorBody);

    /// no such resource (or another user's)
    #[derive(utoipa::IntoResponses)]
    #[response(status = 404)]
    pub struct NotFound(#[allow(dead_code)] ErrorBody);

    /// conflict with the current state
    #[derive(utoipa::IntoResponses)]
    #[response(status = 409)]
    pub struct Conflict(#[allow(dead_code)] ErrorBody);

    /// body too large
    #[derive(utoipa::IntoResponses)]
    #[response(status = 413)]
    pub struct TooLarge(#[allow(dead_code)] ErrorBody);

    /// body is not application/json
    #[derive(utoipa::IntoResponses)]
    #[response(status = 415)]
    pub struct NotJson(#[allow(dead_code)] ErrorBody);

    /// well-formed input that breaks a rule
    #[derive(utoipa::IntoResponses)]
    #[response(status = 422)]
    pub struct Invalid(#[allow(dead_code)] ErrorBody);

    /// over a rate limit or a per-user quota (see Retry-After)
    #[derive(utoipa::IntoResponses)]
    #[response(status = 429)]
    pub struct RateLimited(#[allow(dead_code)] ErrorBody);

    /// a dependency is unavailable; retry
    #[derive(utoipa::IntoResponses)]
    #[response(status = 503)]
    pub struct Unavailable(#[allow(dead_code)] ErrorBody);
}
