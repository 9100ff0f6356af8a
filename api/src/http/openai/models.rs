//! `GET /v1/models` and `GET /v1/models/{model}`: the registry's models that can run here, as
//! OpenAI model objects, or as Anthropic's when the call carries `anthropic-version` (the two
//! doors share these paths; `http::anthropic::models` shapes Anthropic's answer).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::error::{OpenAiError, OpenAiErrorBody};
use crate::auth::ApiKeyUser;
use crate::error::ApiError;
use crate::http::anthropic::models as anthropic;
use crate::state::AppState;
use llm_shared::models::{ModelRegistry, ModelSpec};

#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "openai",
    summary = "The models that can run here, as OpenAI model objects (Anthropic's, for a call with `anthropic-version`)",
    responses(
        (status = 200, description = "the models", body = ModelList),
        (status = 401, description = "missing or invalid bearer token (API key)", body = OpenAiErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub async fn list_models(
    State(state): State<AppState>,
    user: Result<ApiKeyUser, ApiError>,
    headers: HeaderMap,
) -> Result<Response, OpenAiError> {
    let registry = state.models.current();
    let usable: Vec<&ModelSpec> = registry
        .all()
        .iter()
        .filter(|m| usable(&registry, &m.id))
        .collect();
    if anthropic::is_anthropic(&headers) {
        return Ok(match user {
            Ok(_) => {
                let ids: Vec<&str> = usable.iter().map(|m| m.id.as_str()).collect();
                anthropic::list(&registry, &ids)
            }
            Err(e) => anthropic::error(e),
        });
    }
    user?;
    // Each model, then an object per alias, so a client that looks for the name it uses finds it.
    let data = usable
        .into_iter()
        .flat_map(|m| {
            std::iter::once(ModelObject::new(m))
                .chain(m.aliases.iter().map(|alias| ModelObject::alias(m, alias)))
        })
        .collect();
    Ok(Json(ModelList {
        object: "list".into(),
        data,
    })
    .into_response())
}

#[utoipa::path(
    get,
    path = "/v1/models/{model}",
    tag = "openai",
    summary = "One model, as an OpenAI model object (Anthropic's, for a call with `anthropic-version`)",
    params(("model" = String, Path, description = "a registry model id")),
    responses(
        (status = 200, description = "the model", body = ModelObject),
        (status = 401, description = "missing or invalid bearer token (API key)", body = OpenAiErrorBody),
        (status = 404, description = "unknown or unusable model (`model_not_found`)", body = OpenAiErrorBody),
    ),
    security(("bearer" = []), ("api_key" = [])),
)]
pub async fn show_model(
    State(state): State<AppState>,
    user: Result<ApiKeyUser, ApiError>,
    headers: HeaderMap,
    Path(model): Path<String>,
) -> Result<Response, OpenAiError> {
    let registry = state.models.current();
    let found = registry.get(&model).filter(|m| usable(&registry, &m.id));
    if anthropic::is_anthropic(&headers) {
        return Ok(match user {
            Ok(_) => anthropic::show(found, &model),
            Err(e) => anthropic::error(e),
        });
    }
    user?;
    match found {
        Some(m) if m.id != model => Ok(Json(ModelObject::alias(m, &model)).into_response()),
        Some(m) => Ok(Json(ModelObject::new(m)).into_response()),
        None => Err(OpenAiError::model_not_found(&model)),
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
    /// Set when `id` is an alias: the model it names (requests are stored under that one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias_of: Option<String>,
}

impl ModelObject {
    fn new(model: &ModelSpec) -> Self {
        Self {
            id: model.id.clone(),
            object: "model".into(),
            created: 0,
            owned_by: model.provider.as_str().to_owned(),
            endpoints: model.endpoints.clone(),
            alias_of: None,
        }
    }

    /// The object of `alias`, another name of `model`.
    fn alias(model: &ModelSpec, alias: &str) -> Self {
        Self {
            id: alias.to_owned(),
            alias_of: Some(model.id.clone()),
            ..Self::new(model)
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelObject>,
}
