//! `GET /api/v1/usage` (the caller's), `GET /api/v1/usage/{user_id}` (an admin, or the user
//! themself) and `GET /api/v1/admin/usage` (every user's, for an admin).

use axum::Json;
use axum::extract::{Path, State};
use chrono::NaiveDate;
use serde::Deserialize;
use uuid::Uuid;

use super::extract::QueryParams;
use crate::auth::{AdminUser, AuthUser};
use crate::error::ApiError;
use crate::error::doc;
use crate::state::AppState;
use llm_shared::usage::{self, AllUsersPage, GroupBy, UsageCursor, UsageReport};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// First day (UTC, `YYYY-MM-DD`), default 30 days before `to`.
    pub from: Option<NaiveDate>,
    /// Last day, default today.
    pub to: Option<NaiveDate>,
    #[serde(default)]
    #[param(inline)]
    pub group_by: GroupBy,
}

#[utoipa::path(
    get,
    path = "/api/v1/usage",
    tag = "usage",
    summary = "The caller's usage and cost",
    params(UsageQuery),
    responses(
        (status = 200, description = "usage per day or model", body = serde_json::Value),
        doc::BadRequest, doc::Unauthorized, doc::Unavailable,
    ),
    security(("bearer" = [])),
)]
pub async fn mine(
    State(state): State<AppState>,
    user: AuthUser,
    QueryParams(query): QueryParams<UsageQuery>,
) -> Result<Json<UsageReport>, ApiError> {
    report(&state, user.id, query).await
}

#[utoipa::path(
    get,
    path = "/api/v1/usage/{user_id}",
    tag = "usage",
    summary = "A user's usage (admin, or the user)",
    params(("user_id" = uuid::Uuid, Path, description = "the user's id (a UUID)"), UsageQuery),
    responses(
        (status = 200, description = "usage per day or model", body = serde_json::Value),
        doc::BadRequest, doc::Unauthorized, doc::Forbidden, doc::Unavailable,
    ),
    security(("bearer" = [])),
)]
pub async fn of_user(
    State(state): State<AppState>,
    user: AuthUser,
    Path(user_id): Path<String>,
    QueryParams(query): QueryParams<UsageQuery>,
) -> Result<Json<UsageReport>, ApiError> {
    let target = Uuid::parse_str(&user_id)
        .map_err(|_| ApiError::BadRequest("user_id must be a UUID".into()))?;
    if target != user.id && !user.is_admin() {
        return Err(ApiError::Forbidden(
            "only an admin may read another user's usage",
        ));
    }
    report(&state, target, query).await
}

async fn report(
    state: &AppState,
    user: Uuid,
    query: UsageQuery,
) -> Result<Json<UsageReport>, ApiError> {
    let (from, to) =
        usage::range(query.from, query.to, usage::MAX_RANGE_DAYS).map_err(ApiError::BadRequest)?;
    Ok(Json(
        usage::report(&state.pool, user, from, to, query.group_by).await?,
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AllUsersQuery {
    /// First day (UTC, `YYYY-MM-DD`), default 30 days before `to`; at most 92 days before it.
    pub from: Option<NaiveDate>,
    /// Last day, default today.
    pub to: Option<NaiveDate>,
    /// Rows per page, 1 to 1,000 (default 100).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Every user's usage, one row per day, user and model (in that order), a page at a time.
#[utoipa::path(
    get,
    path = "/api/v1/admin/usage",
    tag = "admin",
    summary = "Every user's usage per day, user and model (admin)",
    params(AllUsersQuery),
    responses(
        (status = 200, description = "a page of rows and next_cursor", body = serde_json::Value),
        doc::BadRequest, doc::Unauthorized, doc::Forbidden, doc::Unavailable,
    ),
    security(("bearer" = [])),
)]
pub async fn all_users(
    State(state): State<AppState>,
    _admin: AdminUser,
    QueryParams(query): QueryParams<AllUsersQuery>,
) -> Result<Json<AllUsersPage>, ApiError> {
    let (from, to) = usage::range(query.from, query.to, usage::MAX_ALL_USERS_RANGE_DAYS)
        .map_err(ApiError::BadRequest)?;
    let limit = query.limit.unwrap_or(usage::DEFAULT_ALL_USERS_LIMIT);
    if !(1..=usage::MAX_ALL_USERS_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {}",
            usage::MAX_ALL_USERS_LIMIT
        )));
    }
    let cursor = query
        .cursor
        .as_deref()
        .map(|c| {
            UsageCursor::parse(c).ok_or_else(|| {
                ApiError::BadRequest("cursor must be the next_cursor of a previous page".into())
            })
        })
        .transpose()?;
    Ok(Json(
        usage::all_users(&state.pool, from, to, cursor.as_ref(), limit).await?,
    ))
}
