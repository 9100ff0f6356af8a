//! `GET /v1/models` and `GET /v1/models/{model}` for Anthropic's clients: the same routes as
//! the OpenAI door's (one path, two vendors), answered as Anthropic model objects when the call
//! carries `anthropic-version`, as Anthropic's SDKs always do.

use axum::Json;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::VERSION_HEADER;
use super::error::AnthropicError;
use llm_shared::models::{ModelRegistry, ModelSpec};

/// The registry keeps no creation dates: every model says the epoch.
const CREATED_AT: &str = "1970-01-01T00:00:00Z";

/// Whether a call came from an Anthropic client.
pub(crate) fn is_anthropic(headers: &HeaderMap) -> bool {
    headers.contains_key(VERSION_HEADER)
}

/// Every model in `ids` (those that can run here) as one page of Anthropic's list.
pub(crate) fn list(registry: &ModelRegistry, ids: &[&str]) -> Response {
    let data: Vec<ModelObject> = ids
        .iter()
        .filter_map(|id| registry.get(id))
        .map(ModelObject::new)
        .collect();
    Json(ModelList {
        first_id: data.first().map(|m| m.id.clone()),
        last_id: data.last().map(|m| m.id.clone()),
        has_more: false,
        data,
    })
    .into_response()
}

/// One model, or Anthropic's 404 for a model that is unknown or cannot run here.
pub(crate) fn show(model: Option<&ModelSpec>, asked: &str) -> Response {
    match model {
        Some(m) => Json(ModelObject::new(m)).into_response(),
        None => AnthropicError::model_not_found(asked).into_response(),
    }
}

/// A failure of the models routes (authentication) in Anthropic's shape.
pub(crate) fn error(error: crate::error::ApiError) -> Response {
    AnthropicError::from(error).into_response()
}

/// A model of the registry, as Anthropic describes one.
#[derive(Debug, Serialize)]
struct ModelObject {
    #[serde(rename = "type")]
    kind: &'static str,
    id: String,
    display_name: String,
    created_at: &'static str,
}

impl ModelObject {
    fn new(model: &ModelSpec) -> Self {
        Self {
            kind: "model",
            id: model.id.clone(),
            display_name: model.id.clone(),
            created_at: CREATED_AT,
        }
    }
}

#[derive(Debug, Serialize)]
struct ModelList {
    data: Vec<ModelObject>,
    has_more: bool,
    first_id: Option<String>,
    last_id: Option<String>,
}
