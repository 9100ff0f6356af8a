//! `GET /api/v1/prompts`, `GET /api/v1/prompts/{template_id}`,
//! `POST /api/v1/prompts/{template_id}/render` and `POST /api/v1/prompts/validate`.

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::extract::JsonBody;
use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::error::doc;
use crate::state::AppState;
use llm_shared::generation::estimate_tokens;
use llm_shared::prompts::{RenderError, TemplateInfo};
use llm_shared::requests;

#[utoipa::path(
    get,
    path = "/api/v1/prompts",
    tag = "prompts",
    summary = "The prompt templates",
    responses(
        (status = 200, description = "every template with its parameters", body = serde_json::Value),
        doc::Unauthorized,
    ),
    security(("bearer" = [])),
)]
pub async fn list(State(state): State<AppState>, _user: AuthUser) -> Json<Value> {
    let templates: Vec<&TemplateInfo> = state.prompts.list().collect();
    Json(json!({ "templates": templates }))
}

#[utoipa::path(
    get,
    path = "/api/v1/prompts/{template_id}",
    tag = "prompts",
    summary = "One template",
    params(("template_id" = String, Path, description = "a template id, e.g. `character.backstory`", example = json!("character.backstory"))),
    responses(
        (status = 200, description = "the template and its parameters", body = serde_json::Value),
        doc::Unauthorized, doc::NotFound,
    ),
    security(("bearer" = [])),
)]
pub async fn show(
    State(state): State<AppState>,
    _user: AuthUser,
    Path(template_id): Path<String>,
) -> Result<Json<TemplateInfo>, ApiError> {
    state
        .prompts
        .get(&template_id)
        .cloned()
        .map(Json)
        .ok_or(ApiError::NotFound("no such template"))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenderBody {
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: Map<String, Value>,
    /// The request context the template sees as `context` (as a generate body's).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub context: Option<Value>,
}

#[utoipa::path(
    post,
    path = "/api/v1/prompts/{template_id}/render",
    tag = "prompts",
    summary = "Render a template",
    params(("template_id" = String, Path, description = "a template id, e.g. `character.backstory`", example = json!("character.backstory"))),
    request_body = RenderBody,
    responses(
        (status = 200, description = "the rendered prompt and its token estimate", body = serde_json::Value),
        doc::BadRequest, doc::Unauthorized, doc::TooLarge, doc::NotJson, doc::Invalid, doc::NotFound,
    ),
    security(("bearer" = [])),
)]
pub async fn render(
    State(state): State<AppState>,
    _user: AuthUser,
    Path(template_id): Path<String>,
    JsonBody(body): JsonBody<RenderBody>,
) -> Result<Json<Value>, ApiError> {
    let context = requests::validate_context(body.context)?;
    let rendered = state
        .prompts
        .render(&template_id, &body.params, &context)
        .map_err(|e| match e {
            RenderError::UnknownTemplate(_) => ApiError::NotFound("no such template"),
            other => ApiError::validation("params", other.to_string()),
        })?;
    let tokens = estimate_tokens(&rendered.prompt);
    Ok(Json(
        json!({ "rendered": rendered, "token_estimate": tokens }),
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateBody {
    #[serde(default)]
    pub template_id: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: Map<String, Value>,
    #[serde(default)]
    pub prompt: Option<String>,
    /// The model the prompt is for (default: the template's, else the service default).
    #[serde(default)]
    pub model: Option<String>,
    /// Output the caller will ask for, counted against the context window.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// The request context the template sees as `context`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub context: Option<Value>,
}

/// Checks a template's parameters (or a raw prompt) and whether the result fits the model's
/// context window; always 200 with `valid` and the problems found.
#[utoipa::path(
    post,
    path = "/api/v1/prompts/validate",
    tag = "prompts",
    summary = "Check a template's params or a prompt",
    request_body = ValidateBody,
    responses(
        (status = 200, description = "problems, token estimate, whether it fits", body = serde_json::Value),
        doc::BadRequest, doc::Unauthorized, doc::TooLarge, doc::NotJson, doc::Invalid,
    ),
    security(("bearer" = [])),
)]
pub async fn validate(
    State(state): State<AppState>,
    _user: AuthUser,
    JsonBody(body): JsonBody<ValidateBody>,
) -> Result<Json<Value>, ApiError> {
    let registry = state.models.current();
    let mut errors = Vec::new();
    let context = requests::validate_context(body.context)?;
    let (prompt, template_model) = match (&body.template_id, &body.prompt) {
        (Some(id), None) => match state.prompts.render(id, &body.params, &context) {
            Ok(rendered) => (Some(rendered.prompt), rendered.default_model),
            Err(err) => {
                errors.push(err.to_string());
                (
                    None,
                    state.prompts.get(id).and_then(|t| t.default_model.clone()),
                )
            }
        },
        (None, Some(prompt)) => (Some(prompt.clone()), None),
        _ => {
            return Err(ApiError::validation(
                "template_id",
                "give either template_id (with params) or prompt",
            ));
        }
    };
    let model_id = body
        .model
        .or(template_model)
        .unwrap_or_else(|| registry.default_model().to_owned());
    let model = registry.get(&model_id);
    if model.is_none() {
        errors.push(format!("unknown model `{model_id}`"));
    }
    let tokens = prompt.as_deref().map(estimate_tokens);
    let output = body.max_tokens.unwrap_or(0);
    let fits = match (model, tokens) {
        (Some(m), Some(t)) => {
            let fits = t.saturating_add(output) <= m.context_window;
            if !fits {
                errors.push(format!(
                    "about {} tokens of prompt and output exceed the {} tokens of {}'s context window",
                    t.saturating_add(output),
                    m.context_window,
                    m.id
                ));
            }
            if prompt.as_deref().is_some_and(|p| p.trim().is_empty()) {
                errors.push("the prompt is empty".into());
            }
            Some(fits)
        }
        _ => None,
    };
    Ok(Json(json!({
        "valid": errors.is_empty(),
        "errors": errors,
        "model": model_id,
        "context_window": model.map(|m| m.context_window),
        "token_estimate": tokens,
        "fits": fits,
        "prompt": prompt,
    })))
}
