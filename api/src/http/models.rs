//! `GET /api/v1/models`, `GET /api/v1/models/{model_id}`, `POST /api/v1/models/select`, and
//! `POST /api/v1/admin/models/reload`.
//!
//! Health comes from the attempt history of the last five minutes (all workers' calls), at most
//! the latest [`HEALTH_MAX_CALLS`] per model, read through an index: error rate, median latency,
//! and a circuit state derived from the latest calls (open when the last `failure_threshold`
//! calls failed within the cool-down). Any authenticated caller may ask, so its cost must not
//! grow with the history or the traffic.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use serde_json::{Value, json};

use super::extract::JsonBody;
use crate::auth::{AdminUser, AuthUser};
use crate::error::ApiError;
use crate::error::doc;
use crate::state::AppState;
use llm_shared::models::{self, EndpointKind, ModelRegistry, ModelSpec, Requirements};
use llm_shared::registry_reloads;
use llm_shared::requests::{self, CallStats};

const HEALTH_WINDOW: Duration = Duration::from_secs(300);
/// Most calls per model the health reads: a busy model's health is its latest calls.
pub const HEALTH_MAX_CALLS: i64 = 1000;

#[derive(Debug, Serialize)]
pub struct ModelView {
    #[serde(flatten)]
    pub spec: ModelSpec,
    pub available: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable_reason: Option<String>,
    pub default: bool,
    /// Where its calls go, each with whether it can be called and why not.
    pub endpoints: Vec<EndpointView>,
    pub health: Value,
}

/// One endpoint of a model, as the listing shows it (never its key).
#[derive(Debug, Serialize)]
pub struct EndpointView {
    pub name: String,
    pub kind: EndpointKind,
    pub available: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable_reason: Option<String>,
}

fn view(registry: &ModelRegistry, spec: &ModelSpec, stats: &[CallStats]) -> ModelView {
    let mine = stats.iter().find(|s| {
        s.provider == spec.provider.as_str()
            && (s.model == spec.upstream || s.model.starts_with(&spec.upstream))
    });
    let circuit_cooldown = chrono::Duration::seconds(
        i64::try_from(registry.circuit.cooldown_secs).unwrap_or(i64::MAX),
    );
    let health = match mine {
        None => {
            json!({"recent_calls": 0, "error_rate": null, "p50_latency_ms": null, "circuit": "closed"})
        }
        Some(s) => {
            let open = s.latest_all_failed
                && s.last_call_at
                    .is_some_and(|at| chrono::Utc::now() - at < circuit_cooldown);
            json!({
                "recent_calls": s.calls,
                "error_rate": s.failures as f64 / s.calls.max(1) as f64,
                "p50_latency_ms": s.p50_latency_ms,
                "circuit": if open { "open" } else { "closed" },
            })
        }
    };
    let reason = registry.unavailable_reason(spec).map(str::to_owned);
    ModelView {
        spec: spec.clone(),
        available: reason.is_none(),
        unavailable_reason: reason,
        default: spec.id == registry.default_model(),
        endpoints: registry
            .endpoints_of(spec)
            .map(|e| EndpointView {
                name: e.name.clone(),
                kind: e.kind,
                available: e.available(),
                unavailable_reason: e.settings.unavailable.clone(),
            })
            .collect(),
        health,
    }
}

async fn stats(state: &AppState, registry: &ModelRegistry) -> Result<Vec<CallStats>, ApiError> {
    let streak = i64::from(registry.circuit.failure_threshold.max(1));
    Ok(requests::recent_call_stats(&state.pool, HEALTH_WINDOW, streak, HEALTH_MAX_CALLS).await?)
}

#[utoipa::path(
    get,
    path = "/api/v1/models",
    tag = "models",
    summary = "The model registry with health",
    responses(
        (status = 200, description = "every model", body = serde_json::Value),
        doc::Unauthorized, doc::Unavailable,
    ),
    security(("bearer" = [])),
)]
pub async fn list(State(state): State<AppState>, _user: AuthUser) -> Result<Json<Value>, ApiError> {
    let registry = state.models.current();
    let stats = stats(&state, &registry).await?;
    let models: Vec<ModelView> = registry
        .all()
        .iter()
        .map(|m| view(&registry, m, &stats))
        .collect();
    Ok(Json(
        json!({"default_model": registry.default_model(), "models": models}),
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/models/{model_id}",
    tag = "models",
    summary = "One model with its health",
    params(("model_id" = String, Path, description = "a model id of the registry", example = json!("mock"))),
    responses(
        (status = 200, description = "the model", body = serde_json::Value),
        doc::Unauthorized, doc::NotFound, doc::Unavailable,
    ),
    security(("bearer" = [])),
)]
pub async fn show(
    State(state): State<AppState>,
    _user: AuthUser,
    Path(model_id): Path<String>,
) -> Result<Json<ModelView>, ApiError> {
    let registry = state.models.current();
    let spec = registry
        .get(&model_id)
        .ok_or(ApiError::NotFound("no such model"))?;
    let stats = stats(&state, &registry).await?;
    Ok(Json(view(&registry, spec, &stats)))
}

#[utoipa::path(
    post,
    path = "/api/v1/models/select",
    tag = "models",
    summary = "Pick the best model for requirements",
    request_body = llm_shared::models::Requirements,
    responses(
        (status = 200, description = "the best model, why, and ranked alternatives", body = serde_json::Value),
        doc::BadRequest, doc::Unauthorized, doc::TooLarge, doc::NotJson, doc::Invalid,
    ),
    security(("bearer" = [])),
)]
pub async fn select(
    State(state): State<AppState>,
    _user: AuthUser,
    JsonBody(requirements): JsonBody<Requirements>,
) -> Result<Json<Value>, ApiError> {
    let registry = state.models.current();
    match models::select(&registry, &requirements) {
        Ok(ranked) => {
            let best = ranked[0].clone();
            Ok(Json(
                json!({"model": best.model, "reason": best.reason, "best": best, "alternatives": &ranked[1..]}),
            ))
        }
        Err(rejected) => {
            let reasons: Vec<String> = rejected
                .iter()
                .map(|r| format!("{}: {}", r.model, r.reason))
                .collect();
            Err(ApiError::validation(
                "requirements",
                format!("no model fits: {}", reasons.join("; ")),
            ))
        }
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/admin/models/reload",
    tag = "admin",
    summary = "Re-read the model registry",
    responses(
        (status = 200, description = "reloaded", body = serde_json::Value),
        doc::Unauthorized, doc::Forbidden, doc::Invalid, doc::Unavailable,
    ),
    security(("bearer" = [])),
)]
pub async fn reload(
    State(state): State<AppState>,
    user: AdminUser,
) -> Result<Json<Value>, ApiError> {
    let fresh = state.models.reload().map_err(|e| {
        ApiError::validation("registry", format!("the registry was not reloaded: {e}"))
    })?;
    // Every other api and worker reloads theirs when told.
    let mut conn = state.pool.acquire().await?;
    registry_reloads::announce(&mut conn).await?;
    tracing::info!(admin.id = %user.id, models = fresh.all().len(), "model registry reloaded");
    Ok(Json(
        json!({"reloaded": true, "models": fresh.all().len(), "default_model": fresh.default_model()}),
    ))
}
