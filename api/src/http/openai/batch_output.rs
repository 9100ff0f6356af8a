//! A batch's output and error files in OpenAI's line format, read from its requests' rows a
//! page at a time as the body is sent (memory holds one page, whatever the batch's size):
//! - output: `{"id", "custom_id", "response": {"status_code": 200, "request_id", "body"}, "error": null}`,
//!   `body` exactly the chat door's `chat.completion`;
//! - errors: a failed request as its HTTP error (`response.status_code` and OpenAI's error
//!   body, as the chat door answers it), a cancelled one as `"response": null, "error":
//!   {"code": "batch_cancelled", "message"}`, one its batch's window expired as
//!   `{"code": "batch_expired", ...}`.

use axum::body::Body;
use bytes::Bytes;
use serde_json::{Value, json};
use uuid::Uuid;

use super::Endpoint;
use super::error::OpenAiError;
use super::files::db_error;
use super::response;
use crate::state::AppState;
use llm_shared::openai_batches::{self, BatchFile, BatchLine, BatchSummary};
use llm_shared::requests::Status;

/// Lines read per statement.
const PAGE: i64 = 100;

/// The user's batch if it is final and has the file: a file exists once its batch is final.
pub(super) async fn finished_batch(
    state: &AppState,
    batch_id: Uuid,
    file: BatchFile,
    user_id: Uuid,
) -> Result<Option<BatchSummary>, OpenAiError> {
    let batch = openai_batches::find(&state.pool, batch_id, user_id)
        .await
        .map_err(db_error)?;
    Ok(batch.filter(|b| has_file(b, file)))
}

/// Whether the batch's object names this file.
pub(super) fn has_file(batch: &BatchSummary, file: BatchFile) -> bool {
    batch.is_final()
        && match file {
            BatchFile::Output => batch.completed > 0,
            BatchFile::Errors => batch.not_completed() > 0,
        }
}

/// One line of the file, without its newline.
fn line(row: &BatchLine) -> Value {
    let request = &row.request;
    let id = format!("batch_req_{}", request.id.simple());
    let custom_id = row.custom_id.clone().unwrap_or_default();
    match request.status {
        Status::Completed => json!({
            "id": id,
            "custom_id": custom_id,
            "response": {
                "status_code": 200,
                "request_id": request.id,
                "body": response::completion(request, Endpoint::Chat),
            },
            "error": null,
        }),
        Status::Failed => {
            let (status, body) = match response::generation_failed(request) {
                OpenAiError::Custom {
                    status,
                    kind,
                    code,
                    message,
                    param,
                } => (
                    status.as_u16(),
                    json!({"error": {"message": message, "type": kind, "param": param, "code": code}}),
                ),
                OpenAiError::Native { .. } => (500, json!({"error": null})),
            };
            json!({
                "id": id,
                "custom_id": custom_id,
                "response": {"status_code": status, "request_id": request.id, "body": body},
                "error": null,
            })
        }
        _ => {
            let (code, message) =
                if request.error_code.as_deref() == Some(openai_batches::EXPIRED_CODE) {
                    (
                        openai_batches::EXPIRED_CODE,
                        "This request could not be executed before the completion window expired.",
                    )
                } else {
                    (
                        "batch_cancelled",
                        "the batch was cancelled before this request ran",
                    )
                };
            json!({
                "id": id,
                "custom_id": custom_id,
                "response": null,
                "error": {"code": code, "message": message},
            })
        }
    }
}

/// The next page of the file after the index `after`, as JSONL, and the index it ends at.
async fn page(
    pool: &sqlx::PgPool,
    batch_id: Uuid,
    file: BatchFile,
    after: i32,
) -> Result<Option<(Vec<u8>, i32, bool)>, sqlx::Error> {
    let rows = openai_batches::lines(pool, batch_id, file, after, PAGE).await?;
    let Some(last) = rows.last().map(|r| r.batch_index) else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for row in &rows {
        // A `Value` always serialises.
        out.extend_from_slice(line(row).to_string().as_bytes());
        out.push(b'\n');
    }
    Ok(Some((out, last, (rows.len() as i64) < PAGE)))
}

/// The file's body: a stream that reads one page per chunk it sends.
pub(super) fn body(state: &AppState, batch_id: Uuid, file: BatchFile) -> Body {
    let pool = state.pool.clone();
    let pages = futures::stream::try_unfold(Some(-1), move |after| {
        let pool = pool.clone();
        async move {
            let Some(after) = after else {
                return Ok(None);
            };
            match page(&pool, batch_id, file, after).await {
                Ok(Some((bytes, last, end))) => {
                    Ok(Some((Bytes::from(bytes), (!end).then_some(last))))
                }
                Ok(None) => Ok(None),
                Err(e) => {
                    tracing::warn!(batch.id = %batch_id, error = %e, "batch file read failed");
                    Err(std::io::Error::other("the file could not be read"))
                }
            }
        }
    });
    Body::from_stream(pages)
}

/// The file's size in bytes: its pages read and measured, never held together.
pub(super) async fn size(
    state: &AppState,
    batch_id: Uuid,
    file: BatchFile,
) -> Result<i64, OpenAiError> {
    let (mut total, mut after) = (0_i64, -1);
    while let Some((bytes, last, end)) = page(&state.pool, batch_id, file, after)
        .await
        .map_err(db_error)?
    {
        total += bytes.len() as i64;
        if end {
            break;
        }
        after = last;
    }
    Ok(total)
}
