//! `POST /api/v1/generate/batch` and `GET /api/v1/generate/batch/{batch_id}`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use super::extract::JsonBody;
use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::error::doc;
use crate::state::AppState;
use llm_shared::batches::{self, BatchBody, BatchView, NewBatch};

/// A batch counts as one request against the caller's rate limit; its tokens are not counted
/// (batches are background work, run after interactive requests).
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
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let models = state.models.current();
    let max_attempts = state.limits.job_max_attempts;
    let scope = state.cache.scope;
    let mut batch =
        NewBatch::validate(body, user.id, &models, &state.prompts, max_attempts, scope)?;
    batch.trace_id = Some(trace.trace_id);
    super::rate_limits::enforce(&state, &user, 0).await?;
    let batch_id = batch.id;
    let request_ids = batches::create(&state.pool, batch).await?;
    tracing::info!(batch.id = %batch_id, user.id = %user.id, items = request_ids.len(), "batch accepted");
    let body = json!({
        "batch_id": batch_id,
        "request_ids": request_ids,
        "poll_url": format!("/api/v1/generate/batch/{batch_id}"),
    });
    Ok((StatusCode::ACCEPTED, Json(body)))
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
