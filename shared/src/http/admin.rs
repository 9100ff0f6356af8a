//! Admin endpoints (`/api/v1/admin/...`): the caller's token must carry the `admin` role.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::{AppState, JsonBody};
use crate::auth::AuthUser;
use crate::cache::InvalidateFilter;
use crate::error::ApiError;

pub(super) fn require_admin(user: &AuthUser) -> Result<(), ApiError> {
    if user.is_admin() {
        Ok(())
    } else {
        Err(ApiError::Forbidden("this endpoint needs the admin role"))
    }
}

/// `POST /api/v1/admin/cache/invalidate` `{"model"?, "key_prefix"?, "template_id"?}`: deletes
/// the matching cache entries (table and Redis). At least one filter is required.
pub async fn invalidate_cache(
    State(state): State<AppState>,
    user: AuthUser,
    JsonBody(filter): JsonBody<InvalidateFilter>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&user)?;
    if filter.model.is_none() && filter.key_prefix.is_none() && filter.template_id.is_none() {
        return Err(ApiError::validation(
            "model",
            "give at least one of model, key_prefix, template_id",
        ));
    }
    let invalidated = state.cache.invalidate(&state.pool, &filter).await?;
    tracing::info!(user.id = %user.id, invalidated, "cache invalidated");
    Ok(Json(json!({ "invalidated": invalidated })))
}
