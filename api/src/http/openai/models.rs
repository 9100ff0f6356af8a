//! `GET /v1/models` and `GET /v1/models/{model}`: the registry's models that can run here, as
//! OpenAI model objects.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;

use super::error::{OpenAiError, OpenAiErrorBody};
use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::state::AppState;
use llm_shared::models::{ModelRegistry, ModelSpec};

#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "openai",
    summary = "The models that can run here, as OpenAI model objects",
    responses(
        (status = 200, description = "the models", body = ModelList),
        (status = 401, description = "missing or invalid bearer token (API key)", body = OpenAiErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn list_models(
    State(state): State<AppState>,
    user: Result<AuthUser, ApiError>,
) -> Result<Json<ModelList>, OpenAiError> {
    user?;
    let registry = state.models.current();
    let data = registry
        .all()
        .iter()
        .filter(|m| usable(&registry, &m.id))
        .map(ModelObject::new)
        .collect();
    Ok(Json(ModelList {
        object: "list".into(),
        data,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/models/{model}",
    tag = "openai",
    summary = "One model, as an OpenAI model object",
    params(("model" = String, Path, description = "a registry model id")),
    responses(
        (status = 200, description = "the model", body = ModelObject),
        (status = 401, description = "missing or invalid bearer token (API key)", body = OpenAiErrorBody),
        (status = 404, description = "unknown or unusable model (`model_not_found`)", body = OpenAiErrorBody),
    ),
    security(("bearer" = [])),
)]
pub async fn show_model(
    State(state): State<AppState>,
    user: Result<AuthUser, ApiError>,
    Path(model): Path<String>,
) -> Result<Json<ModelObject>, OpenAiError> {
    user?;
    let registry = state.models.current();
    match registry.get(&model) {
        Some(m) if usable(&registry, &m.id) => Ok(Json(ModelObject::new(m))),
        _ => Err(OpenAiError::model_not_found(&model)),
    }
}

/// A model a call can use: it, or one of its fallbacks, has a configured provider.
fn usable(registry: &ModelRegistry, id: &str) -> bool {
    registry
        .chain(id)
        .iter()
        .any(|m| registry.unavailable_reason(m).is_none())
}

/// A model of the registry that can run here.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelObject {
    pub id: String,
    pub object: String,
    /// 0: the registry keeps no creation dates.
    pub created: i64,
    /// The model's provider.
    pub owned_by: String,
    /// The registry endpoints its calls go to (empty for mock models).
    pub endpoints: Vec<String>,
}

impl ModelObject {
    fn new(model: &ModelSpec) -> Self {
        Self {
            id: model.id.clone(),
            object: "model".into(),
            created: 0,
            owned_by: model.provider.as_str().to_owned(),
            endpoints: model.endpoints.clone(),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelObject>,
}
