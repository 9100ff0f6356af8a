//! Rate limits over HTTP: enforcement at submit, the `X-RateLimit-*` headers on every
//! `/api/v1` answer, `GET /api/v1/rate_limits`, and the admin overrides.

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::extract::JsonBody;
use crate::auth::{AdminUser, AuthUser};
use crate::error::ApiError;
use crate::error::doc;
use crate::state::AppState;
use llm_shared::ratelimit::{Decision, Exceeded, RateState};

/// Counts a submit against the caller's limits; `Err` is the 429 (or 503 in closed mode).
pub(super) async fn enforce(
    state: &AppState,
    user: &AuthUser,
    tokens: i32,
) -> Result<Option<RateState>, ApiError> {
    let tokens = u32::try_from(tokens.max(0)).unwrap_or(u32::MAX);
    let decision = state.limiter.take(&state.pool, user.id, tokens).await?;
    admit(state, user, decision)
}

/// Counts a batch against the caller's limits: each of its `requests` items as a request,
/// and `tokens`, their estimated tokens in all; all or nothing. A batch larger than a whole
/// minute's limit can never fit: a 422 that says so, not a 429 to retry.
pub(super) async fn enforce_batch(
    state: &AppState,
    user: &AuthUser,
    requests: u32,
    tokens: u64,
) -> Result<Option<RateState>, ApiError> {
    let tokens = u32::try_from(tokens).unwrap_or(u32::MAX);
    let decision = state
        .limiter
        .take_many(&state.pool, user.id, requests, tokens)
        .await?;
    match decision {
        Decision::TooLarge { tokens, limit } => Err(ApiError::validation(
            "items",
            format!(
                "this batch may use about {tokens} tokens, more than your limit of {limit} tokens per minute; send fewer items or lower their max_tokens"
            ),
        )),
        Decision::TooManyRequests { requests, limit } => Err(ApiError::validation(
            "items",
            format!(
                "this batch holds {requests} requests, more than your limit of {limit} requests per minute; send fewer items per batch"
            ),
        )),
        other => admit(state, user, other),
    }
}

/// [`enforce`] for a request the response cache may answer: one Redis round trip reads the
/// cache's fast copy (`cache_key`) and counts the request, a hit without tokens. Answers the
/// state counted and what the fast copy held.
pub(super) async fn enforce_or_hit(
    state: &AppState,
    user: &AuthUser,
    tokens: i32,
    cache_key: String,
) -> Result<(Option<RateState>, Option<String>), ApiError> {
    let tokens = u32::try_from(tokens.max(0)).unwrap_or(u32::MAX);
    let (decision, cached) = state
        .limiter
        .take_or_hit(&state.pool, user.id, tokens, cache_key)
        .await?;
    Ok((admit(state, user, decision)?, cached))
}

/// The limiter's decision as an answer: the state counted, or the error to give.
fn admit(
    state: &AppState,
    user: &AuthUser,
    decision: Decision,
) -> Result<Option<RateState>, ApiError> {
    match decision {
        Decision::Allowed(rate) => Ok(Some(rate)),
        Decision::Unchecked => Ok(None),
        Decision::Unavailable => Err(ApiError::Unavailable(
            "rate limiting is unavailable right now; retry shortly",
        )),
        Decision::TooManyRequests { requests, limit } => Err(ApiError::validation(
            "items",
            format!("{requests} requests are more than your limit of {limit} requests per minute"),
        )),
        Decision::TooLarge { tokens, limit } => Err(ApiError::validation(
            "parameters.max_tokens",
            format!(
                "this request may use about {tokens} tokens, more than your limit of {limit} tokens per minute"
            ),
        )),
        Decision::Refused { by, state: rate } => {
            let (what, limit) = match by {
                Exceeded::Requests => (
                    format!("{} requests per minute", rate.requests.limit),
                    "requests",
                ),
                Exceeded::Tokens => (format!("{} tokens per minute", rate.tokens.limit), "tokens"),
            };
            state
                .metrics
                .rate_limit_rejections
                .with_label_values(&[limit])
                .inc();
            tracing::info!(user.id = %user.id, limit = %what, "rate limited");
            Err(ApiError::RateLimited {
                message: format!(
                    "rate limit exceeded: {what}; retry in {} s",
                    rate.requests.reset_secs
                ),
                retry_after_secs: rate.requests.reset_secs.max(1),
                state: Some(rate),
            })
        }
    }
}

/// Hands the state a submit counted to [`headers`], which then needs no second look at Redis.
pub(super) fn attach(response: &mut Response, rate: Option<RateState>) {
    if let Some(rate) = rate {
        response.extensions_mut().insert(rate);
    }
}

/// Adds the caller's rate-limit state to every answer: from the submit that counted it, or
/// read (without counting) for other routes.
pub async fn headers(State(state): State<AppState>, request: Request, next: Next) -> Response {
    // A reference-counted copy: read only for answers that do not carry their state.
    let authorization = request.headers().get(header::AUTHORIZATION).cloned();
    let mut response = next.run(request).await;
    let bearer = || {
        authorization
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
    };
    let rate = match response.extensions().get::<RateState>() {
        Some(rate) => Some(*rate),
        None => match bearer().and_then(|t| state.jwt.verify(t).ok()) {
            Some(claims) => match state.limiter.peek(&state.pool, claims.sub).await {
                Ok(Decision::Allowed(rate) | Decision::Refused { state: rate, .. }) => Some(rate),
                _ => None,
            },
            None => None,
        },
    };
    if let Some(rate) = rate {
        set_headers(response.headers_mut(), &rate);
    }
    response
}

/// The rate-limit headers, named once: a name given as text is parsed and checked again for
/// every answer.
const LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
const REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
const RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");

fn set_headers(headers: &mut HeaderMap, rate: &RateState) {
    let (requests, tokens) = (&rate.requests, &rate.tokens);
    headers.reserve(9);
    for (name, value) in [
        (LIMIT, requests.limit),
        (REMAINING, requests.remaining),
        (RESET, requests.reset_secs),
        (LIMIT_REQUESTS, requests.limit),
        (REMAINING_REQUESTS, requests.remaining),
        (RESET_REQUESTS, requests.reset_secs),
        (LIMIT_TOKENS, tokens.limit),
        (REMAINING_TOKENS, tokens.remaining),
        (RESET_TOKENS, tokens.reset_secs),
    ] {
        headers.insert(name, HeaderValue::from(value));
    }
}

/// `GET /api/v1/rate_limits`: the caller's limits and what is left of them this minute.
#[utoipa::path(
    get,
    path = "/api/v1/rate_limits",
    tag = "rate limits",
    summary = "The caller's limits and what is left",
    responses(
        (status = 200, description = "requests and tokens per minute: limit, remaining, reset", body = serde_json::Value),
        doc::Unauthorized, doc::Unavailable,
    ),
    security(("bearer" = [])),
)]
pub async fn mine(State(state): State<AppState>, user: AuthUser) -> Result<Json<Value>, ApiError> {
    let limits = state.limiter.limits(&state.pool, user.id).await?;
    let body = match state.limiter.peek(&state.pool, user.id).await? {
        Decision::Allowed(rate) | Decision::Refused { state: rate, .. } => {
            json!({"requests": rate.requests, "tokens": rate.tokens})
        }
        _ => json!({
            "requests": {"limit": limits.requests_per_minute, "remaining": null, "reset_secs": null},
            "tokens": {"limit": limits.tokens_per_minute, "remaining": null, "reset_secs": null},
            "note": "the rate limiter is unavailable",
        }),
    };
    Ok(Json(body))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Override {
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u32>,
    /// The user's share of the workers against other users with work queued in the same class
    /// (1 to 100; absent = 1): a user of weight 2 is served about twice as often as one of 1.
    pub weight: Option<u32>,
}

/// `PUT /api/v1/admin/rate_limits/{user_id}`: sets a user's limits and fair-share weight
/// (absent = the default).
#[utoipa::path(
    put,
    path = "/api/v1/admin/rate_limits/{user_id}",
    tag = "admin",
    summary = "Override a user's limits",
    params(("user_id" = uuid::Uuid, Path, description = "the user's id (a UUID)")),
    request_body = Override,
    responses(
        (status = 200, description = "the user's limits now", body = serde_json::Value),
        doc::BadRequest, doc::Unauthorized, doc::TooLarge, doc::NotJson, doc::Invalid, doc::Forbidden, doc::Unavailable,
    ),
    security(("bearer" = [])),
)]
pub async fn set_override(
    State(state): State<AppState>,
    user: AdminUser,
    Path(target): Path<String>,
    JsonBody(body): JsonBody<Override>,
) -> Result<Json<Value>, ApiError> {
    let target = parse_user(&target)?;
    let as_i32 = |v: Option<u32>| v.map(|n| i32::try_from(n).unwrap_or(i32::MAX));
    if let Some(weight) = body.weight
        && !(1..=MAX_WEIGHT).contains(&weight)
    {
        return Err(ApiError::validation(
            "weight",
            format!("weight must be 1 to {MAX_WEIGHT}"),
        ));
    }
    let weight: i32 = sqlx::query_scalar(
        "INSERT INTO rate_limit_overrides (user_id, requests_per_minute, tokens_per_minute, weight)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (user_id) DO UPDATE
         SET requests_per_minute = $2, tokens_per_minute = $3, weight = $4, updated_at = NOW()
         RETURNING COALESCE(weight, 1)",
    )
    .bind(target)
    .bind(as_i32(body.requests_per_minute))
    .bind(as_i32(body.tokens_per_minute))
    .bind(as_i32(body.weight))
    .fetch_one(&state.pool)
    .await?;
    state.limiter.forget(target);
    let limits = state.limiter.limits(&state.pool, target).await?;
    tracing::info!(admin.id = %user.id, user.id = %target, "rate limits overridden");
    Ok(Json(
        json!({"user_id": target, "limits": limits, "weight": weight}),
    ))
}

/// `DELETE /api/v1/admin/rate_limits/{user_id}`: back to the defaults.
#[utoipa::path(
    delete,
    path = "/api/v1/admin/rate_limits/{user_id}",
    tag = "admin",
    summary = "Back to the default limits",
    params(("user_id" = uuid::Uuid, Path, description = "the user's id (a UUID)")),
    responses(
        (status = 200, description = "the user's limits now", body = serde_json::Value),
        doc::BadRequest, doc::Unauthorized, doc::Forbidden, doc::Unavailable,
    ),
    security(("bearer" = [])),
)]
pub async fn clear_override(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(target): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let target = parse_user(&target)?;
    sqlx::query("DELETE FROM rate_limit_overrides WHERE user_id = $1")
        .bind(target)
        .execute(&state.pool)
        .await?;
    state.limiter.forget(target);
    let limits = state.limiter.limits(&state.pool, target).await?;
    Ok(Json(json!({"user_id": target, "limits": limits})))
}

/// The largest fair-share weight (the schema's CHECK says the same).
const MAX_WEIGHT: u32 = 100;

fn parse_user(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::BadRequest("user_id must be a UUID".into()))
}
