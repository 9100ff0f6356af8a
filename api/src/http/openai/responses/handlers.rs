//! The handlers of `POST /v1/responses`, `GET /v1/responses/{response_id}` (JSON, or the
//! resumable stream) and `POST /v1/responses/{response_id}/cancel`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;
use uuid::Uuid;

use super::super::error::{CompletionErrors, OpenAiError, OpenAiErrorBody, OpenAiErrorDetail};
use super::super::{SHOULD_RETRY_HEADER, with_request_id};
use super::events::{EventWriter, sse};
use super::object::{self, ResponseObject, Settings};
use super::request::{Create, CreateResponseRequest};
use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::http::door::{self, Outcome};
use crate::http::extract::{JsonBody, QueryParams};
use crate::http::generate::{self, Admitted};
use crate::http::stream::{Subscribed, follow_events, submit_subscribed};
use crate::state::AppState;
use crate::telemetry::TraceContext;
use llm_shared::ratelimit::RateState;
use llm_shared::requests::{self, Durability, NewRequest, RequestView};

#[utoipa::path(
    post,
    path = "/v1/responses",
    tag = "openai",
    summary = "OpenAI Responses: create a response (a durable request; JSON, SSE events, or queued in the background)",
    params(("Idempotency-Key" = Option<String>, Header, description = "a repeated key (same user, same body) returns the first request")),
    request_body = CreateResponseRequest,
    responses(
        (status = 200, description = "the Response (`background: true`: at once, `queued`; `stream: true`: `response.*` SSE events, each with its `sequence_number`)", body = ResponseObject),
        CompletionErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn create(
    State(state): State<AppState>,
    user: Result<AuthUser, ApiError>,
    trace: TraceContext,
    headers: HeaderMap,
    body: Result<JsonBody<CreateResponseRequest>, ApiError>,
) -> Result<Response, OpenAiError> {
    let (user, JsonBody(body)) = (user?, body?);
    let Create {
        model,
        body,
        settings,
        stream,
    } = body.into_create()?;
    if state.models.current().get(&model).is_none() {
        return Err(OpenAiError::model_not_found(&model));
    }
    let params = body.parameters.clone().unwrap_or_default();
    let template = |id: Uuid, status| {
        let mut object = object::skeleton(id, Utc::now().timestamp(), &settings, &params, status);
        object.model.clone_from(&model);
        object
    };
    let (id, response, rate) = if settings.background {
        let new = generate::new_request(&state, &user, &headers, body, trace).map_err(native)?;
        background(&state, &user, new, &settings, stream, &template).await?
    } else {
        let wait = state.limits.compat_wait;
        let run = door::run(state.clone(), &user, trace, &headers, body, stream)
            .await
            .map_err(native)?;
        let response = match run.outcome {
            Outcome::Streamed(events) => {
                let writer = EventWriter::new(
                    run.id,
                    settings.clone(),
                    template(run.id, "in_progress"),
                    None,
                );
                sse(events, writer)
            }
            Outcome::Waited(row) => answer_waited(&row, wait),
        };
        (run.id, response, run.rate)
    };
    let mut response = with_request_id(response, id);
    crate::http::rate_limits::attach(&mut response, rate);
    Ok(response)
}

/// `background: true`: stored with its relay on (so that it can be streamed at any time), and
/// answered at once — or streamed from the start with `stream: true`.
async fn background(
    state: &AppState,
    user: &AuthUser,
    mut new: NewRequest,
    settings: &Settings,
    stream: bool,
    template: &impl Fn(Uuid, &'static str) -> ResponseObject,
) -> Result<(Uuid, Response, Option<RateState>), OpenAiError> {
    if stream {
        let Subscribed {
            id,
            subscription,
            rate,
            slot,
        } = submit_subscribed(state, user, new).await.map_err(native)?;
        let events = follow_events(state.clone(), id, user.id, subscription, 0, slot);
        let writer = EventWriter::new(id, settings.clone(), template(id, "queued"), None);
        return Ok((id, sse(events, writer), rate));
    }
    new.stream = true;
    let Admitted {
        submitted,
        rate,
        answered,
    } = generate::accept_answered(state, user, new, Durability::AtSubmit)
        .await
        .map_err(native)?;
    let id = submitted.id;
    let object = if submitted.replayed || submitted.status.is_final() {
        // A replay (its Idempotency-Key) or a cache hit: the row says where it is (a hit's
        // row may not be written yet, and needs not be read).
        let row = match answered {
            Some(row) => *row,
            None => generate::find(state, id, user.id).await.map_err(native)?,
        };
        let settings = Settings::of_row(&row).unwrap_or_else(|| settings.clone());
        object::from_row(&row, &settings)
    } else {
        template(id, "queued")
    };
    Ok((id, Json(object).into_response(), rate))
}

/// The answer to a waited-for call: the Response once final, else 504 with where to read it.
fn answer_waited(row: &RequestView, waited: std::time::Duration) -> Response {
    let settings = Settings::of_row(row).unwrap_or_default();
    if row.status.is_final() {
        return Json(object::from_row(row, &settings)).into_response();
    }
    let poll_url = if settings.store {
        format!("/v1/responses/{}", object::response_id(row.id))
    } else {
        format!("/api/v1/generate/{}", row.id)
    };
    let body = OpenAiErrorBody::new(OpenAiErrorDetail {
        message: format!(
            "the response is still {} after {} s; it carries on: GET {poll_url} for its result",
            object::status_of(row),
            waited.as_secs()
        ),
        kind: "timeout".into(),
        param: None,
        code: Some("generation_pending".into()),
        request_id: Some(row.id),
        poll_url: Some(poll_url),
    });
    let mut response = (StatusCode::GATEWAY_TIMEOUT, Json(body)).into_response();
    response
        .headers_mut()
        .insert(SHOULD_RETRY_HEADER, HeaderValue::from_static("false"));
    response
}

/// The query of `GET /v1/responses/{response_id}`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RetrieveQuery {
    /// `true`: the response's events over SSE (background responses only).
    #[serde(default)]
    #[param(value_type = Option<bool>)]
    stream: Option<String>,
    /// With `stream=true`: send only the events numbered after this `sequence_number`.
    #[serde(default)]
    #[param(value_type = Option<u64>)]
    starting_after: Option<String>,
    /// Accepted and ignored: no obfuscation is ever added.
    #[serde(default)]
    #[param(value_type = Option<bool>)]
    include_obfuscation: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/responses/{response_id}",
    tag = "openai",
    summary = "OpenAI Responses: retrieve a response, or stream its events (resumable with starting_after)",
    params(("response_id" = String, Path, description = "`resp_` + 32 hex digits"), RetrieveQuery),
    responses(
        (status = 200, description = "the Response, or with `stream=true` its `response.*` SSE events after `starting_after`", body = ResponseObject),
        CompletionErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn retrieve(
    State(state): State<AppState>,
    user: Result<AuthUser, ApiError>,
    Path(response_id): Path<String>,
    query: Result<QueryParams<RetrieveQuery>, ApiError>,
) -> Result<Response, OpenAiError> {
    let (user, QueryParams(query)) = (user?, query?);
    let stream = flag(query.stream.as_deref(), "stream")?;
    flag(query.include_obfuscation.as_deref(), "include_obfuscation")?;
    let after = match query.starting_after.as_deref() {
        None => None,
        Some(raw) => Some(
            raw.trim()
                .parse::<u64>()
                .ok()
                .filter(|&n| i64::try_from(n).is_ok())
                .ok_or_else(|| {
                    OpenAiError::invalid(
                        "starting_after must be a sequence number (an integer from 0)",
                        Some("starting_after"),
                    )
                })?,
        ),
    };
    if after.is_some() && !stream {
        return Err(OpenAiError::invalid(
            "starting_after is only allowed with stream=true",
            Some("starting_after"),
        ));
    }
    let (id, row, settings) = own_response(&state, &response_id, user.id).await?;
    if !stream {
        let response = Json(object::from_row(&row, &settings)).into_response();
        return Ok(with_request_id(response, id));
    }
    if !settings.background {
        return Err(OpenAiError::invalid(
            "only background responses (created with background: true) can be streamed again",
            Some("stream"),
        ));
    }
    let slot = crate::http::quota::stream_slot(&state, &user).map_err(native)?;
    let subscription = state.relay.subscribe(id).await.map_err(|_| {
        native(ApiError::Unavailable(
            "streaming is unavailable right now (the relay is down); retrieve the response instead",
        ))
    })?;
    let mut template = object::from_row(&row, &settings);
    template.status = "in_progress";
    template.output.clear();
    template.usage = None;
    template.error = None;
    template.incomplete_details = None;
    template.completed_at = None;
    let events = follow_events(state, id, user.id, subscription, 0, slot);
    let writer = EventWriter::new(id, settings, template, after);
    Ok(with_request_id(sse(events, writer), id))
}

#[utoipa::path(
    post,
    path = "/v1/responses/{response_id}/cancel",
    tag = "openai",
    summary = "OpenAI Responses: cancel a background response",
    params(("response_id" = String, Path, description = "`resp_` + 32 hex digits")),
    responses(
        (status = 200, description = "the Response: `cancelled`, or its final state if it had finished", body = ResponseObject),
        CompletionErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn cancel(
    State(state): State<AppState>,
    user: Result<AuthUser, ApiError>,
    Path(response_id): Path<String>,
) -> Result<Response, OpenAiError> {
    let user = user?;
    let (id, row, settings) = own_response(&state, &response_id, user.id).await?;
    if !settings.background {
        return Err(OpenAiError::invalid(
            "only background responses (created with background: true) can be cancelled",
            Some("response_id"),
        ));
    }
    let row = match requests::cancel(&state.pool, id, Some(user.id))
        .await
        .map_err(|e| native(e.into()))?
    {
        requests::Cancelled::Done(view) => {
            tracing::info!(request.id = %id, "response cancelled");
            *view
        }
        // Finished meanwhile: its final state.
        requests::Cancelled::AlreadyFinished(_) | requests::Cancelled::NotFound => {
            generate::find(&state, id, user.id).await.unwrap_or(row)
        }
    };
    let response = Json(object::from_row(&row, &settings)).into_response();
    Ok(with_request_id(response, id))
}

/// The caller's own stored response: a malformed id is a 400; someone else's, one made through
/// another API, or one created with `store: false` is not found.
async fn own_response(
    state: &AppState,
    raw: &str,
    user: Uuid,
) -> Result<(Uuid, RequestView, Settings), OpenAiError> {
    let Some(id) = object::parse_response_id(raw) else {
        return Err(OpenAiError::invalid(
            "invalid response id: expected `resp_` followed by 32 hex digits",
            Some("response_id"),
        ));
    };
    crate::telemetry::record_request_id(id);
    let not_found = || OpenAiError::Custom {
        status: StatusCode::NOT_FOUND,
        kind: "invalid_request_error",
        code: None,
        message: format!(
            "no response with id '{}' was found",
            object::response_id(id)
        ),
        param: None,
    };
    let row = match generate::find(state, id, user).await {
        Ok(row) => row,
        Err(ApiError::NotFound(_)) => return Err(not_found()),
        Err(other) => return Err(native(other)),
    };
    match Settings::of_row(&row) {
        Some(settings) if settings.store => Ok((id, row, settings)),
        _ => Err(not_found()),
    }
}

/// A boolean query flag (`true`/`false`); absent is false.
fn flag(raw: Option<&str>, name: &str) -> Result<bool, OpenAiError> {
    match raw {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(OpenAiError::invalid(
            format!("{name} must be true or false"),
            Some(name),
        )),
    }
}

/// The service's own error, with the native field names of a validation error in the
/// Responses API's words.
fn native(error: ApiError) -> OpenAiError {
    match error {
        ApiError::Validation {
            field: Some(field),
            message,
        } => {
            let field = match field {
                "prompt" | "parameters.history" | "parameters.system" => "input",
                "parameters.max_tokens" => "max_output_tokens",
                f if f.starts_with("parameters.response_format") => "text.format",
                f => f,
            };
            ApiError::Validation {
                field: Some(field),
                message,
            }
            .into()
        }
        other => other.into(),
    }
}
