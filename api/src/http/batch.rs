//! `POST /api/v1/generate/batch` and `GET /api/v1/generate/batch/{batch_id}`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use uuid::Uuid;

use super::extract::JsonBody;
use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::error::doc;
use crate::state::AppState;
use llm_shared::batches::{self, BatchBody, BatchView, NewBatch};

/// A batch is charged as its items: each one a request, with its estimated tokens, against
/// the caller's rate limits, and each one an unfinished request against `USER_MAX_QUEUED`;
/// all or nothing (a refused batch stores and charges nothing). Its jobs run after
/// interactive requests.
#[utoipa::path(
    post,
    path = "/api/v1/generate/batch",
    tag = "batches",
    summary = "Submit a batch (up to 1,000 items)",
    request_body = llm_shared::batches::BatchBody,
    responses(
        (status = 202, description = "the batch id and its request ids", body = serde_json::Value),
        doc::BadRequest, doc::Unauthorized, doc::TooLarge, doc::NotJson, doc::Invalid, doc::RateLimited, doc::Unavailable,
    ),
    security(("bearer" = [])),
)]
pub async fn submit(
    State(state): State<AppState>,
    user: AuthUser,
    trace: crate::telemetry::TraceContext,
    JsonBody(body): JsonBody<BatchBody>,
) -> Result<Response, ApiError> {
    let models = state.models.current();
    let max_attempts = state.limits.job_max_attempts;
    let scope = state.cache.scope;
    let mut batch =
        NewBatch::validate(body, user.id, &models, &state.prompts, max_attempts, scope)?;
    batch.trace_id = Some(trace.trace_id);
    let batch_id = batch.id;
    let (request_ids, rate) = store(&state, &user, batch).await?;
    tracing::info!(batch.id = %batch_id, user.id = %user.id, items = request_ids.len(), "batch accepted");
    let body = json!({
        "batch_id": batch_id,
        "request_ids": request_ids,
        "poll_url": format!("/api/v1/generate/batch/{batch_id}"),
    });
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    super::rate_limits::attach(&mut response, rate);
    Ok(response)
}

#[utoipa::path(
    get,
    path = "/api/v1/generate/batch/{batch_id}",
    tag = "batches",
    summary = "Progress and items of a batch",
    params(("batch_id" = uuid::Uuid, Path, description = "the batch's id (a UUID)")),
    responses(
        (status = 200, description = "counts per status and every item", body = serde_json::Value),
        doc::BadRequest, doc::Unauthorized, doc::NotFound, doc::Unavailable,
    ),
    security(("bearer" = [])),
)]
pub async fn status(
    State(state): State<AppState>,
    user: AuthUser,
    Path(batch_id): Path<String>,
) -> Result<Json<BatchView>, ApiError> {
    let id = Uuid::parse_str(&batch_id)
        .map_err(|_| ApiError::BadRequest("batch_id must be a UUID".into()))?;
    batches::find_for_user(&state.pool, id, user.id)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("no such batch"))
}

/// Charges a validated batch to its user (its items against `USER_MAX_QUEUED` and the rate
/// limits, all or nothing) and stores it: its request ids, and the rate-limit state to attach
/// to the answer. Refused or failed, nothing is stored and nothing stays charged.
pub(crate) async fn store(
    state: &AppState,
    user: &AuthUser,
    batch: NewBatch,
) -> Result<(Vec<Uuid>, Option<llm_shared::ratelimit::RateState>), ApiError> {
    let items = u32::try_from(batch.items.len()).unwrap_or(u32::MAX);
    let tokens: u64 = batch
        .items
        .iter()
        .map(|item| u64::try_from(item.estimated_tokens).unwrap_or(0))
        .sum();
    // The queue first: refused there, nothing has been charged yet.
    super::quota::admit_queued(state, user, items).await?;
    let rate = super::rate_limits::enforce_batch(state, user, items, tokens).await?;
    match batches::create(&state.pool, batch).await {
        Ok(ids) => Ok((ids, rate)),
        Err(err) => {
            // Nothing was stored: nothing stays charged.
            if let Some(rate) = rate {
                let tokens = u32::try_from(tokens).unwrap_or(u32::MAX);
                state
                    .limiter
                    .give_back(user.id, rate.window, items, tokens)
                    .await;
            }
            Err(err.into())
        }
    }
}
