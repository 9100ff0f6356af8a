//! Admin endpoints (`/api/v1/admin/...`): the caller's token must carry the `admin` role.
//! Requests (listing, replays), the response cache, and the outbox's dead letters.

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::extract::{JsonBody, QueryParams};
use crate::auth::AdminUser;
use crate::error::ApiError;
use crate::error::doc;
use crate::state::AppState;
use llm_shared::admin::{self, Page, Replay, RequestFilter};
use llm_shared::cache::InvalidateFilter;
use llm_shared::dead_letters::{self, Selection};

/// `POST /api/v1/admin/cache/invalidate` `{"model"?, "key_prefix"?, "template_id"?}`: deletes
/// the matching cache entries (table and Redis). At least one filter is required.
#[utoipa::path(
    post,
    path = "/api/v1/admin/cache/invalidate",
    tag = "admin",
    summary = "Delete matching cache entries",
    request_body = llm_shared::cache::InvalidateFilter,
    responses(
        (status = 200, description = "how many entries were deleted", body = serde_json::Value),
        doc::BadRequest, doc::Unauthorized, doc::TooLarge, doc::NotJson, doc::Invalid, doc::Forbidden, doc::Unavailable,
    ),
    security(("bearer" = [])),
)]
pub async fn invalidate_cache(
    State(state): State<AppState>,
    user: AdminUser,
    JsonBody(filter): JsonBody<InvalidateFilter>,
) -> Result<Json<Value>, ApiError> {
    let invalidated = state.cache.invalidate(&state.pool, &filter).await?;
    tracing::info!(user.id = %user.id, invalidated, "cache invalidated");
    Ok(Json(json!({ "invalidated": invalidated })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(flatten)]
    pub filter: RequestFilter,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<Uuid>,
    pub limit: Option<i64>,
}

/// `GET /api/v1/admin/requests`: every user's requests, filtered, newest first, with their
/// attempt history; keyset pagination through `cursor`.
#[utoipa::path(
    get,
    path = "/api/v1/admin/requests",
    tag = "admin",
    summary = "Every user's requests, newest first",
    params(("status" = Option<llm_shared::requests::Status>, Query), ("model" = Option<String>, Query), ("provider" = Option<String>, Query), ("user_id" = Option<uuid::Uuid>, Query), ("from" = Option<chrono::DateTime<chrono::Utc>>, Query, description = "created at or after"), ("to" = Option<chrono::DateTime<chrono::Utc>>, Query, description = "created before"), ("limit" = Option<i64>, Query), ("cursor" = Option<uuid::Uuid>, Query, description = "next_cursor of the previous page")),
    responses(
        (status = 200, description = "a page of requests and next_cursor", body = serde_json::Value),
        doc::BadRequest, doc::Unauthorized, doc::Forbidden, doc::Unavailable,
    ),
    security(("bearer" = [])),
)]
pub async fn list_requests(
    State(state): State<AppState>,
    _admin: AdminUser,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<Page>, ApiError> {
    let limit = query.limit.unwrap_or(50);
    Ok(Json(
        admin::list(&state.pool, &query.filter, query.cursor, limit).await?,
    ))
}

/// `POST /api/v1/admin/requests/{request_id}/replay`: a failed or cancelled request runs again.
#[utoipa::path(
    post,
    path = "/api/v1/admin/requests/{request_id}/replay",
    tag = "admin",
    summary = "Run a failed or cancelled request again",
    params(("request_id" = uuid::Uuid, Path, description = "the request's id (a UUID)")),
    responses(
        (status = 200, description = "replayed", body = serde_json::Value),
        doc::BadRequest, doc::Unauthorized, doc::Forbidden, doc::NotFound, doc::Conflict, doc::Unavailable,
    ),
    security(("bearer" = [])),
)]
pub async fn replay_one(
    State(state): State<AppState>,
    user: AdminUser,
    Path(request_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = Uuid::parse_str(&request_id)
        .map_err(|_| ApiError::BadRequest("request_id must be a UUID".into()))?;
    match admin::replay(&state.pool, id).await? {
        Replay::Replayed => {
            tracing::info!(admin.id = %user.id, request.id = %id, "request replayed");
            Ok(Json(json!({"replayed": true, "request_id": id})))
        }
        Replay::NotReplayable(status) => Err(ApiError::Conflict(format!(
            "only failed or cancelled requests can be replayed; this one is {}",
            status.as_str()
        ))),
        Replay::NotFound => Err(ApiError::NotFound("no such generation request")),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkReplay {
    #[serde(default)]
    pub filter: RequestFilter,
    /// Only say how many would be replayed.
    #[serde(default)]
    pub dry_run: bool,
}

/// `POST /api/v1/admin/requests/replay`: replays the failed requests matching the filter (the
/// cancelled ones when the filter says `status: cancelled`), up to 10,000, or with `dry_run`
/// says how many it would. A filter that names nothing is refused.
#[utoipa::path(
    post,
    path = "/api/v1/admin/requests/replay",
    tag = "admin",
    summary = "Replay (or count) requests by filter",
    request_body = BulkReplay,
    responses(
        (status = 200, description = "how many and which", body = serde_json::Value),
        doc::BadRequest, doc::Unauthorized, doc::TooLarge, doc::NotJson, doc::Invalid, doc::Forbidden, doc::Unavailable,
    ),
    security(("bearer" = [])),
)]
pub async fn replay_many(
    State(state): State<AppState>,
    user: AdminUser,
    JsonBody(body): JsonBody<BulkReplay>,
) -> Result<Json<Value>, ApiError> {
    let ids = admin::replay_matching(&state.pool, &body.filter, body.dry_run).await?;
    if !body.dry_run {
        tracing::info!(admin.id = %user.id, requests = ids.len(), "requests replayed by filter");
    }
    Ok(Json(
        json!({"dry_run": body.dry_run, "count": ids.len(), "request_ids": ids}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterQuery {
    /// The `next_cursor` of the previous page.
    pub cursor: Option<i64>,
    pub limit: Option<i64>,
}

/// `GET /api/v1/admin/outbox/dead`: the hub events given up after `OUTBOX_MAX_ATTEMPTS`
/// refusals, oldest first, in pages of at most 200.
#[utoipa::path(
    get,
    path = "/api/v1/admin/outbox/dead",
    tag = "admin",
    summary = "Hub events the hub kept refusing, oldest first",
    params(("limit" = Option<i64>, Query, description = "1 to 200 (default 50)"), ("cursor" = Option<i64>, Query, description = "next_cursor of the previous page")),
    responses(
        (status = 200, description = "a page of dead letters and next_cursor", body = llm_shared::dead_letters::DeadLetterPage),
        doc::BadRequest, doc::Unauthorized, doc::Forbidden, doc::Unavailable,
    ),
    security(("bearer" = [])),
)]
pub async fn list_dead_letters(
    State(state): State<AppState>,
    _admin: AdminUser,
    QueryParams(query): QueryParams<DeadLetterQuery>,
) -> Result<Json<dead_letters::DeadLetterPage>, ApiError> {
    let limit = query.limit.unwrap_or(50);
    Ok(Json(
        dead_letters::list(&state.pool, query.cursor, limit).await?,
    ))
}

/// What to replay: `ids` (at most 1,000) or `all: true`, not both.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterReplay {
    /// The dead letters' event ids.
    #[serde(default)]
    pub ids: Option<Vec<Uuid>>,
    /// Every dead letter, the oldest 1,000 per call (`remaining` says whether more are left).
    #[serde(default)]
    pub all: bool,
}

/// `POST /api/v1/admin/outbox/dead/replay`: moves dead letters back to the outbox, to be
/// delivered again (under their own ids).
#[utoipa::path(
    post,
    path = "/api/v1/admin/outbox/dead/replay",
    tag = "admin",
    summary = "Deliver dead letters again",
    request_body = DeadLetterReplay,
    responses(
        (status = 200, description = "the events replayed, and whether dead letters remain", body = llm_shared::dead_letters::Replayed),
        doc::BadRequest, doc::Unauthorized, doc::TooLarge, doc::NotJson, doc::Invalid, doc::Forbidden, doc::Unavailable,
    ),
    security(("bearer" = [])),
)]
pub async fn replay_dead_letters(
    State(state): State<AppState>,
    user: AdminUser,
    JsonBody(body): JsonBody<DeadLetterReplay>,
) -> Result<Json<dead_letters::Replayed>, ApiError> {
    let selection = match (body.ids, body.all) {
        (Some(_), true) => {
            return Err(ApiError::validation(
                "ids",
                "name the dead letters in `ids` or ask for `all`, not both",
            ));
        }
        (Some(ids), false) if ids.is_empty() => {
            return Err(ApiError::validation("ids", "`ids` names no dead letter"));
        }
        (Some(ids), false) if ids.len() > dead_letters::MAX_REPLAY => {
            return Err(ApiError::validation(
                "ids",
                format!(
                    "at most {} dead letters per replay",
                    dead_letters::MAX_REPLAY
                ),
            ));
        }
        (Some(ids), false) => Selection::Ids(ids),
        (None, true) => Selection::All,
        (None, false) => {
            return Err(ApiError::validation(
                "ids",
                "name the dead letters in `ids`, or ask for `all: true`",
            ));
        }
    };
    let replayed = dead_letters::replay(&state.pool, &selection).await?;
    tracing::info!(admin.id = %user.id, events = replayed.replayed.len(), "hub dead letters replayed");
    Ok(Json(replayed))
}
