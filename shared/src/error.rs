//! Errors and where each one goes.
//!
//! - [`ApiError`]: everything an HTTP handler can answer with. It has the one
//!   [`IntoResponse`] of the service, so every error answer has the same JSON shape:
//!   `{"error": {"code": "...", "message": "..."}}`. Internal failures are logged here, once,
//!   and answered with a generic message: their text never reaches a client.
//! - Domain modules return their own `thiserror` enums (e.g. [`crate::providers::ProviderError`],
//!   which knows whether it is retryable) or `sqlx::Error`; handlers convert them with `?`.
//! - `anyhow` is used only by the binaries' `main`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
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
        state: Option<crate::ratelimit::RateState>,
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
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
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

/// One invalid item of a batch.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ItemError {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let Self::Internal(source) = &self {
            tracing::error!(error = %source, "request failed with an internal error");
        }
        let field = match &self {
            Self::Validation { field, .. } => *field,
            _ => None,
        };
        let items = match &self {
            Self::InvalidItems(items) => Some(items.clone()),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
                field,
                items,
            },
        };
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

/// Whether a database error means "cannot reach the database" rather than a bug.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
    ) || matches!(err, sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("57P") || (c.starts_with("08") && c != "08P01")))
}

/// A copy of `err` for one more of the callers that met it (`sqlx::Error` is not `Clone`): a
/// batch of the worker's calls run as one statement answers each caller on its own. The copy
/// keeps the message, the SQLSTATE code and kind of a database error, and the classification
/// of [`is_unavailable`] (so a caller decides "retry later" as it would for the original).
pub fn replicate(err: &sqlx::Error) -> sqlx::Error {
    use sqlx::Error as E;
    match err {
        E::PoolTimedOut => E::PoolTimedOut,
        E::PoolClosed => E::PoolClosed,
        E::WorkerCrashed => E::WorkerCrashed,
        E::RowNotFound => E::RowNotFound,
        E::Protocol(message) => E::Protocol(message.clone()),
        E::Io(io) => E::Io(std::io::Error::new(io.kind(), io.to_string())),
        E::Tls(tls) => E::Tls(tls.to_string().into()),
        E::Database(db) => E::Database(Box::new(ReplicatedDbError::of(db.as_ref()))),
        other => E::Protocol(other.to_string()),
    }
}

/// A database error as [`replicate`] copies it.
#[derive(Debug)]
struct ReplicatedDbError {
    message: String,
    code: Option<String>,
    constraint: Option<String>,
    table: Option<String>,
    kind: fn() -> sqlx::error::ErrorKind,
}

impl ReplicatedDbError {
    fn of(db: &dyn sqlx::error::DatabaseError) -> Self {
        use sqlx::error::ErrorKind as K;
        Self {
            message: db.message().to_owned(),
            code: db.code().map(std::borrow::Cow::into_owned),
            constraint: db.constraint().map(str::to_owned),
            table: db.table().map(str::to_owned),
            // `ErrorKind` is neither `Clone` nor exhaustive.
            kind: match db.kind() {
                K::UniqueViolation => || K::UniqueViolation,
                K::ForeignKeyViolation => || K::ForeignKeyViolation,
                K::NotNullViolation => || K::NotNullViolation,
                K::CheckViolation => || K::CheckViolation,
                K::ExclusionViolation => || K::ExclusionViolation,
                _ => || K::Other,
            },
        }
    }
}

impl std::fmt::Display for ReplicatedDbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ReplicatedDbError {}

impl sqlx::error::DatabaseError for ReplicatedDbError {
    fn message(&self) -> &str {
        &self.message
    }
    fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
        self.code.as_deref().map(std::borrow::Cow::Borrowed)
    }
    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }
    fn constraint(&self) -> Option<&str> {
        self.constraint.as_deref()
    }
    fn table(&self) -> Option<&str> {
        self.table.as_deref()
    }
    fn kind(&self) -> sqlx::error::ErrorKind {
        (self.kind)()
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

    /// over the rate limit (see Retry-After)
    #[derive(utoipa::IntoResponses)]
    #[response(status = 429)]
    pub struct RateLimited(#[allow(dead_code)] ErrorBody);

    /// a dependency is unavailable; retry
    #[derive(utoipa::IntoResponses)]
    #[response(status = 503)]
    pub struct Unavailable(#[allow(dead_code)] ErrorBody);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db_error(code: &str, kind: fn() -> sqlx::error::ErrorKind) -> sqlx::Error {
        sqlx::Error::Database(Box::new(ReplicatedDbError {
            message: format!("failed with {code}"),
            code: Some(code.to_owned()),
            constraint: Some("a_constraint".into()),
            table: None,
            kind,
        }))
    }

    #[test]
    fn a_replicated_error_keeps_message_code_and_classification() {
        let originals = [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "reset by peer",
            )),
            sqlx::Error::Tls("handshake".into()),
            db_error("57P01", || sqlx::error::ErrorKind::Other),
            db_error("08006", || sqlx::error::ErrorKind::Other),
            db_error("40P01", || sqlx::error::ErrorKind::Other),
            db_error("23505", || sqlx::error::ErrorKind::UniqueViolation),
            sqlx::Error::RowNotFound,
            sqlx::Error::Protocol("odd".into()),
        ];
        for original in &originals {
            let copy = replicate(original);
            assert_eq!(
                is_unavailable(&copy),
                is_unavailable(original),
                "{original}"
            );
            assert_eq!(copy.to_string(), original.to_string());
            if let (sqlx::Error::Database(a), sqlx::Error::Database(b)) = (original, &copy) {
                assert_eq!(a.code(), b.code());
                assert_eq!(a.kind(), b.kind());
                assert_eq!(a.constraint(), b.constraint());
            }
        }
        assert!(is_unavailable(&replicate(&originals[4])));
        assert!(!is_unavailable(&replicate(&originals[6])));
    }
}
