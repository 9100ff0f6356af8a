//! `GET /api/v1/usage` (the caller's) and `GET /api/v1/usage/{user_id}` (an admin, or the user
//! themself).

use axum::Json;
use axum::extract::{Path, State};
use chrono::NaiveDate;
use serde::Deserialize;
use uuid::Uuid;

use super::extract::QueryParams;
use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::error::doc;
use crate::state::AppState;
use llm_shared::usage::{self, GroupBy, UsageReport};

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
    let (from, to) = usage::range(query.from, query.to).map_err(ApiError::BadRequest)?;
    Ok(Json(
        usage::report(&state.pool, user, from, to, query.group_by).await?,
    ))
}
