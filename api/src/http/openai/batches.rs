//! OpenAI's Batch API: `POST /v1/batches`, `GET /v1/batches`, `GET /v1/batches/{batch_id}`
//! and `POST /v1/batches/{batch_id}/cancel`, on the service's own batches.
//!
//! A batch is made from an uploaded file (`files`): each line (`custom_id`, `method: POST`,
//! `url: /v1/chat/completions`, `body`: a chat completion request) is translated as the chat
//! door translates its body, and the lines become one of our batches (`llm_shared::batches`):
//! validated whole, stored in one transaction, each line one durable request with its job at
//! batch priority, charged to the user's quotas and rate limits all or nothing. Unlike
//! OpenAI, which accepts the batch and then reports it `failed`, an invalid file is refused at
//! once (400 naming its lines) and creates nothing. Status and counts are read from the
//! requests; once every request is final the batch names its output and error files.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::batch_output::has_file;
use super::error::{OpenAiError, OpenAiErrorBody};
use super::files::{FileRef, db_error, no_such_file};
use super::list::{self, OpenAiList};
use super::request::ChatCompletionRequest;
use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::http::extract::{JsonBody, QueryParams};
use crate::state::AppState;
use crate::telemetry::TraceContext;
use llm_shared::batches::{NewBatch, OpenAiInput, validate_items};
use llm_shared::error::DomainError;
use llm_shared::openai_batches::{
    self, BatchFile, BatchStatus, BatchSummary, CUSTOM_ID_KEY, MAX_CUSTOM_ID_CHARS, MAX_LIST,
};
use llm_shared::openai_files;
use llm_shared::requests::GenerateBody;

/// The one endpoint a batch's lines may call.
const CHAT_ENDPOINT: &str = "/v1/chat/completions";
/// Bad lines named in one refusal (all are checked).
const LINES_NAMED: usize = 10;
/// The error answers of the Files and Batch routes, for the OpenAPI document.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(super) enum BatchApiErrors {
    /// invalid request or file (naming its lines)
    #[response(status = 400)]
    BadRequest(OpenAiErrorBody),
    /// missing or invalid bearer token (API key)
    #[response(status = 401)]
    Unauthorized(OpenAiErrorBody),
    /// no such file or batch of the caller
    #[response(status = 404)]
    NotFound(OpenAiErrorBody),
    /// the batch is already completed
    #[response(status = 409)]
    Conflict(OpenAiErrorBody),
    /// file too large
    #[response(status = 413)]
    TooLarge(OpenAiErrorBody),
    /// over a rate limit or a per-user quota (see Retry-After)
    #[response(status = 429)]
    RateLimited(OpenAiErrorBody),
    /// a dependency is unavailable; retry
    #[response(status = 503)]
    Unavailable(OpenAiErrorBody),
}

/// The body of `POST /v1/batches`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateBatchRequest {
    /// An uploaded file of purpose `batch`.
    input_file_id: String,
    /// `/v1/chat/completions`
    endpoint: String,
    /// `24h`
    completion_window: String,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    /// Anything else (e.g. `output_expires_after`): refused unless null.
    #[serde(flatten)]
    #[schema(ignore)]
    other: Map<String, Value>,
}

/// One line of an input file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputLine {
    custom_id: String,
    method: String,
    url: String,
    body: Value,
}

/// An OpenAI batch object.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchObject {
    /// `batch_...`
    pub id: String,
    /// `batch`
    pub object: String,
    pub endpoint: String,
    /// Always null: an invalid file is refused at creation.
    pub errors: Option<Value>,
    pub input_file_id: String,
    pub completion_window: String,
    /// `in_progress`, `cancelling`, `cancelled`, `completed`, or `expired` (its window ended
    /// with requests unfinished).
    pub status: String,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub created_at: i64,
    pub in_progress_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub finalizing_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub expired_at: Option<i64>,
    pub cancelling_at: Option<i64>,
    pub cancelled_at: Option<i64>,
    pub request_counts: RequestCounts,
    pub metadata: Option<Value>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RequestCounts {
    pub total: i64,
    pub completed: i64,
    /// Failed or cancelled.
    pub failed: i64,
}

/// The query of `GET /v1/batches`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BatchListQuery {
    /// A batch id: the page starts after it.
    after: Option<String>,
    /// 1 to 100 (default 20).
    limit: Option<i64>,
}

fn batch_id(id: Uuid) -> String {
    format!("batch_{}", id.simple())
}

fn parse_batch_id(id: &str) -> Option<Uuid> {
    let hex = id.strip_prefix("batch_")?;
    (hex.len() == 32).then(|| Uuid::try_parse(hex).ok())?
}

fn no_such_batch(id: &str) -> OpenAiError {
    OpenAiError::Custom {
        status: StatusCode::NOT_FOUND,
        kind: "invalid_request_error",
        code: None,
        message: format!(
            "No such Batch object: {}",
            id.chars().take(80).collect::<String>()
        ),
        param: Some("batch_id".into()),
    }
}

impl BatchObject {
    fn new(batch: &BatchSummary) -> Self {
        let status = batch.status();
        let at = |t: chrono::DateTime<chrono::Utc>| Some(t.timestamp());
        let finished = batch
            .is_final()
            .then(|| batch.finished_at.unwrap_or(batch.created_at));
        let file = |file| has_file(batch, file).then(|| FileRef::OfBatch(batch.id, file).id());
        Self {
            id: batch_id(batch.id),
            object: "batch".into(),
            endpoint: batch.endpoint.clone().unwrap_or_default(),
            errors: None,
            input_file_id: batch
                .input_file_id
                .map(|id| FileRef::Uploaded(id).id())
                .unwrap_or_default(),
            completion_window: batch.completion_window.clone().unwrap_or_default(),
            status: status.as_str().into(),
            output_file_id: file(BatchFile::Output),
            error_file_id: file(BatchFile::Errors),
            created_at: batch.created_at.timestamp(),
            in_progress_at: at(batch.created_at),
            expires_at: batch.expires_at().and_then(at),
            finalizing_at: finished.and_then(at),
            completed_at: finished
                .filter(|_| status == BatchStatus::Completed)
                .and_then(at),
            failed_at: None,
            expired_at: batch
                .expired_at
                .filter(|_| status == BatchStatus::Expired)
                .and_then(at),
            cancelling_at: batch.cancelled_at.and_then(at),
            cancelled_at: finished
                .filter(|_| status == BatchStatus::Cancelled)
                .and_then(at),
            request_counts: RequestCounts {
                total: i64::from(batch.item_count),
                completed: batch.completed,
                failed: batch.failed + batch.cancelled,
            },
            metadata: Some(batch.metadata.clone()),
        }
    }
}

#[utoipa::path(
    post,
    path = "/v1/batches",
    tag = "openai",
    summary = "Create a batch from an uploaded JSONL file (each line one durable request at batch priority)",
    request_body = CreateBatchRequest,
    responses(
        (status = 200, description = "the batch", body = BatchObject),
        BatchApiErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn create_batch(
    State(state): State<AppState>,
    user: Result<AuthUser, ApiError>,
    trace: TraceContext,
    body: Result<JsonBody<CreateBatchRequest>, ApiError>,
) -> Result<Response, OpenAiError> {
    let (user, JsonBody(body)) = (user?, body?);
    if let Some((name, _)) = body.other.iter().find(|(_, v)| !v.is_null()) {
        return Err(OpenAiError::Custom {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: Some("unsupported_parameter".into()),
            message: format!(
                "`{}` is not supported by this service; remove it",
                name.chars().take(64).collect::<String>()
            ),
            param: Some(name.chars().take(64).collect()),
        });
    }
    if body.endpoint != CHAT_ENDPOINT {
        return Err(OpenAiError::invalid(
            format!("endpoint must be {CHAT_ENDPOINT}: the only endpoint this service batches"),
            Some("endpoint"),
        ));
    }
    if openai_batches::completion_window(&body.completion_window).is_none() {
        return Err(OpenAiError::invalid(
            "completion_window must be 24h",
            Some("completion_window"),
        ));
    }
    let metadata = super::metadata::checked(body.metadata.map(Value::Object))?;
    let file_id = match FileRef::parse(&body.input_file_id) {
        Some(FileRef::Uploaded(id)) => id,
        _ => return Err(no_such_file(&body.input_file_id)),
    };
    let Some(meta) = openai_files::find(&state.pool, file_id, user.id)
        .await
        .map_err(db_error)?
    else {
        return Err(no_such_file(&body.input_file_id));
    };
    if meta.purpose != "batch" {
        return Err(OpenAiError::invalid(
            "the input file must have purpose `batch`",
            Some("input_file_id"),
        ));
    }
    let content = openai_files::content(&state.pool, file_id, user.id)
        .await
        .map_err(db_error)?
        .ok_or_else(|| no_such_file(&body.input_file_id))?;
    let (custom_ids, line_numbers, bodies) = read_lines(&state, &content)?;
    drop(content);
    let models = state.models.current();
    let mut items = validate_items(
        bodies.into_iter().map(Ok),
        user.id,
        &models,
        &state.prompts,
        state.limits.job_max_attempts,
        state.cache.scope,
    )
    .map_err(|e| match e {
        DomainError::InvalidItems(errors) => refuse_lines(
            errors
                .into_iter()
                .map(|e| (line_numbers.get(e.index).copied().unwrap_or(0), e.message))
                .collect(),
        ),
        other => OpenAiError::from(ApiError::from(other)),
    })?;
    for (item, custom_id) in items.iter_mut().zip(custom_ids) {
        if let Value::Object(map) = &mut item.metadata {
            map.insert(CUSTOM_ID_KEY.into(), Value::String(custom_id));
        }
    }
    let batch = NewBatch {
        id: Uuid::now_v7(),
        user_id: user.id,
        metadata: Value::Object(metadata),
        items,
        trace_id: Some(trace.trace_id),
        openai: Some(OpenAiInput {
            input_file_id: file_id,
            endpoint: body.endpoint,
            completion_window: body.completion_window,
        }),
    };
    let id = batch.id;
    let (request_ids, rate) = crate::http::batch::store(&state, &user, batch).await?;
    tracing::info!(batch.id = %id, user.id = %user.id, items = request_ids.len(), "openai batch accepted");
    let summary = openai_batches::find(&state.pool, id, user.id)
        .await
        .map_err(db_error)?
        .ok_or_else(|| no_such_batch(&batch_id(id)))?;
    let mut response = Json(BatchObject::new(&summary)).into_response();
    crate::http::rate_limits::attach(&mut response, rate);
    Ok(response)
}

/// The file's lines as chat bodies: their custom ids, their line numbers (1-based, in the
/// file) and their native bodies, or a refusal naming every bad line.
#[allow(clippy::type_complexity)]
fn read_lines(
    state: &AppState,
    content: &str,
) -> Result<(Vec<String>, Vec<usize>, Vec<GenerateBody>), OpenAiError> {
    let models = state.models.current();
    let (mut custom_ids, mut numbers, mut bodies) = (Vec::new(), Vec::new(), Vec::new());
    let mut first_line_of: HashMap<String, usize> = HashMap::new();
    let mut errors: Vec<(usize, String)> = Vec::new();
    for (index, text) in content.lines().enumerate() {
        if text.trim().is_empty() {
            continue;
        }
        let number = index + 1;
        match read_line(text, &models) {
            Ok((custom_id, body)) => {
                if let Some(first) = first_line_of.get(&custom_id) {
                    errors.push((
                        number,
                        format!(
                            "custom_id `{}` is also line {first}'s: each line needs its own",
                            short(&custom_id)
                        ),
                    ));
                    continue;
                }
                first_line_of.insert(custom_id.clone(), number);
                custom_ids.push(custom_id);
                numbers.push(number);
                bodies.push(body);
            }
            Err(message) => errors.push((number, message)),
        }
    }
    if !errors.is_empty() {
        return Err(refuse_lines(errors));
    }
    if bodies.is_empty() {
        return Err(OpenAiError::invalid(
            "the input file has no lines",
            Some("input_file_id"),
        ));
    }
    Ok((custom_ids, numbers, bodies))
}

fn short(text: &str) -> String {
    text.chars().take(64).collect()
}

/// One line: its custom id and its native body, or what is wrong with it.
fn read_line(
    text: &str,
    models: &llm_shared::models::ModelRegistry,
) -> Result<(String, GenerateBody), String> {
    let line: InputLine = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if line.custom_id.is_empty() || line.custom_id.chars().count() > MAX_CUSTOM_ID_CHARS {
        return Err(format!(
            "custom_id must have 1 to {MAX_CUSTOM_ID_CHARS} characters"
        ));
    }
    if line.method != "POST" {
        return Err("method must be POST".into());
    }
    if line.url != CHAT_ENDPOINT {
        return Err(format!(
            "url `{}` is not the batch's endpoint ({CHAT_ENDPOINT})",
            short(&line.url)
        ));
    }
    let request: ChatCompletionRequest =
        serde_json::from_value(line.body).map_err(|e| format!("body: {e}"))?;
    let call = request.into_call().map_err(|e| message_of(&e))?;
    if call.stream {
        return Err("body: stream is not supported in a batch".into());
    }
    if models.get(&call.model).is_none() {
        return Err(format!(
            "body: the model `{}` does not exist or cannot be used",
            short(&call.model)
        ));
    }
    Ok((line.custom_id, call.body))
}

fn message_of(error: &OpenAiError) -> String {
    match error {
        OpenAiError::Custom { message, .. } => format!("body: {message}"),
        OpenAiError::Native { error, .. } => format!("body: {error}"),
    }
}

/// A 400 naming the first bad lines (and how many there are).
fn refuse_lines(mut errors: Vec<(usize, String)>) -> OpenAiError {
    errors.sort_by_key(|(line, _)| *line);
    let count = errors.len();
    let mut message = errors
        .iter()
        .take(LINES_NAMED)
        .map(|(line, message)| format!("line {line}: {message}"))
        .collect::<Vec<_>>()
        .join("; ");
    if count > LINES_NAMED {
        message.push_str(&format!("; and {} more bad lines", count - LINES_NAMED));
    }
    OpenAiError::Custom {
        status: StatusCode::BAD_REQUEST,
        kind: "invalid_request_error",
        code: Some("invalid_batch_file".into()),
        message,
        param: Some("input_file_id".into()),
    }
}

#[utoipa::path(
    get,
    path = "/v1/batches/{batch_id}",
    tag = "openai",
    summary = "A batch: status, counts, output and error files",
    params(("batch_id" = String, Path, description = "`batch_...`")),
    responses(
        (status = 200, description = "the batch", body = BatchObject),
        BatchApiErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn retrieve_batch(
    State(state): State<AppState>,
    user: Result<AuthUser, ApiError>,
    Path(id): Path<String>,
) -> Result<Json<BatchObject>, OpenAiError> {
    let user = user?;
    let uuid = parse_batch_id(&id).ok_or_else(|| no_such_batch(&id))?;
    openai_batches::find(&state.pool, uuid, user.id)
        .await
        .map_err(db_error)?
        .map(|b| Json(BatchObject::new(&b)))
        .ok_or_else(|| no_such_batch(&id))
}

#[utoipa::path(
    get,
    path = "/v1/batches",
    tag = "openai",
    summary = "The caller's batches, newest first",
    params(BatchListQuery),
    responses(
        (status = 200, description = "a page of batches", body = OpenAiList<BatchObject>),
        BatchApiErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn list_batches(
    State(state): State<AppState>,
    user: Result<AuthUser, ApiError>,
    query: Result<QueryParams<BatchListQuery>, ApiError>,
) -> Result<Json<OpenAiList<BatchObject>>, OpenAiError> {
    let (user, QueryParams(query)) = (user?, query?);
    let limit = list::limit(query.limit, 20, MAX_LIST)?;
    let after = match query.after.as_deref() {
        None => None,
        Some(id) => Some(
            parse_batch_id(id)
                .ok_or_else(|| OpenAiError::invalid("after must be a batch id", Some("after")))?,
        ),
    };
    // One more than asked for tells whether there are more.
    let batches = openai_batches::list(&state.pool, user.id, after, limit + 1)
        .await
        .map_err(db_error)?;
    Ok(Json(OpenAiList::page(
        batches,
        limit,
        BatchObject::new,
        |b| b.id.as_str(),
    )))
}

#[utoipa::path(
    post,
    path = "/v1/batches/{batch_id}/cancel",
    tag = "openai",
    summary = "Cancel a batch: its unfinished requests are cancelled (again: the same batch)",
    params(("batch_id" = String, Path, description = "`batch_...`")),
    responses(
        (status = 200, description = "the batch", body = BatchObject),
        BatchApiErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn cancel_batch(
    State(state): State<AppState>,
    user: Result<AuthUser, ApiError>,
    Path(id): Path<String>,
) -> Result<Json<BatchObject>, OpenAiError> {
    let user = user?;
    let uuid = parse_batch_id(&id).ok_or_else(|| no_such_batch(&id))?;
    let batch = openai_batches::find(&state.pool, uuid, user.id)
        .await
        .map_err(db_error)?
        .ok_or_else(|| no_such_batch(&id))?;
    let ended = match batch.status() {
        BatchStatus::Completed => Some("completed"),
        BatchStatus::Expired => Some("expired"),
        _ => None,
    };
    if let Some(ended) = ended {
        return Err(OpenAiError::Custom {
            status: StatusCode::CONFLICT,
            kind: "invalid_request_error",
            code: None,
            message: format!("the batch has {ended} and cannot be cancelled"),
            param: None,
        });
    }
    let cancelled = openai_batches::cancel(&state.pool, uuid, user.id)
        .await
        .map_err(db_error)?;
    tracing::info!(batch.id = %uuid, requests = cancelled, "openai batch cancelled");
    openai_batches::find(&state.pool, uuid, user.id)
        .await
        .map_err(db_error)?
        .map(|b| Json(BatchObject::new(&b)))
        .ok_or_else(|| no_such_batch(&id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_ids_read_back_and_others_do_not() {
        let id = Uuid::now_v7();
        assert_eq!(parse_batch_id(&batch_id(id)), Some(id));
        for bad in [
            "batch_",
            "batch_zz",
            &format!("batch_{id}"),
            &format!("file-{}", id.simple()),
        ] {
            assert_eq!(parse_batch_id(bad), None, "{bad}");
        }
    }
}
