//! Stream tokens for browsers: `POST /api/v1/generate/{request_id}/stream-token` gives the
//! request's owner a short-lived token (`STREAM_TOKEN_TTL_SECS`) that opens that one request's
//! stream from a URL (`GET …/stream?access_token=…`), since a browser's `EventSource` cannot
//! send `Authorization`. It is no bearer token: every other route refuses it, and the stream
//! route refuses a bearer token in the URL (`jwt::JwtKeys::verify_stream`).
//!
//! A token in a URL can end up in a proxy's or browser's history, which is why it is scoped
//! to one request and lives minutes. The api itself never logs a URL's query string (its
//! spans and metrics name the route template only, `telemetry`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::generate::parse_request_id;
use crate::auth::AuthUser;
use crate::error::{ApiError, doc};
use crate::state::AppState;

/// A stream token and where to use it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StreamToken {
    /// Opens `stream_url` until `expires_at`; nothing else.
    pub token: String,
    pub expires_at: DateTime<Utc>,
    /// The request's stream with the token in its query (`access_token`).
    pub stream_url: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/generate/{request_id}/stream-token",
    tag = "generate",
    summary = "A short-lived token to open one request's stream from a URL (EventSource)",
    params(("request_id" = uuid::Uuid, Path, description = "the request's id (a UUID)")),
    responses(
        (status = 200, description = "the token, valid for STREAM_TOKEN_TTL_SECS, for this request's stream only", body = StreamToken),
        doc::BadRequest, doc::Unauthorized, doc::NotFound, doc::Unavailable,
    ),
    security(("bearer" = [])),
)]
pub async fn issue(
    State(state): State<AppState>,
    user: AuthUser,
    Path(request_id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_request_id(&request_id)?;
    crate::telemetry::record_request_id(id);
    // The owner's only: another user's id is not found, as on every id-taking route.
    super::generate::find(&state, id, user.id).await?;
    let ttl = i64::try_from(state.limits.stream_token_ttl.as_secs()).unwrap_or(i64::MAX);
    let (token, exp) = state
        .jwt
        .issue_stream(user.id, id, ttl)
        .map_err(ApiError::internal)?;
    let expires_at = DateTime::from_timestamp(exp, 0).unwrap_or_default();
    let stream_url = format!("/api/v1/generate/{id}/stream?access_token={token}");
    let mut response = Json(StreamToken {
        token,
        expires_at,
        stream_url,
    })
    .into_response();
    // A credential: no cache keeps it.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The caller of a stream: the stream token of the URL (`access_token`) when there is one,
/// valid for request `id` only, else the bearer token of `Authorization`.
pub(super) fn stream_caller(
    state: &AppState,
    headers: &HeaderMap,
    access_token: Option<&str>,
    id: Uuid,
) -> Result<AuthUser, ApiError> {
    match access_token {
        Some(token) => Ok(AuthUser {
            id: state.jwt.verify_stream(token, id)?,
            role: None,
        }),
        None => AuthUser::from_headers(headers, state),
    }
}
