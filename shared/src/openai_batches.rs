//! Batches of OpenAI's Batch API (`/v1/batches`): each is one of our batches (`batches`: its
//! lines are its requests, each with its own job at batch priority), made from an uploaded
//! file (`openai_files`), with the columns OpenAI's batch object shows beyond ours. Its status
//! and counts are read from its requests, its output and error files are its finished requests
//! read back a page at a time ([`lines`]): nothing is stored twice.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

use crate::requests::RequestView;

/// Metadata key of a request that holds its line's `custom_id` (written by the service only:
/// `requests::RESERVED_METADATA`).
pub const CUSTOM_ID_KEY: &str = "batch_custom_id";
/// Longest `custom_id` accepted (OpenAI states none; ids are names, not payloads).
pub const MAX_CUSTOM_ID_CHARS: usize = 512;
/// Most batches one listing returns.
pub const MAX_LIST: i64 = 100;

/// An OpenAI batch with its requests counted by status.
#[derive(Debug, Clone, FromRow)]
pub struct BatchSummary {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub metadata: Value,
    pub item_count: i32,
    pub input_file_id: Option<Uuid>,
    pub endpoint: Option<String>,
    pub completion_window: Option<String>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub unfinished: i64,
    pub completed: i64,
    pub failed: i64,
    pub cancelled: i64,
    /// When the last of its requests finished.
    pub finished_at: Option<DateTime<Utc>>,
}

/// Where a batch stands, in OpenAI's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchStatus {
    InProgress,
    Completed,
    Cancelling,
    Cancelled,
}

impl BatchStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Cancelling => "cancelling",
            Self::Cancelled => "cancelled",
        }
    }
}

impl BatchSummary {
    /// A batch is validated as it is created (an invalid file creates nothing), so it starts
    /// in progress; it is final once every request is.
    pub fn status(&self) -> BatchStatus {
        match (self.cancelled_at.is_some(), self.unfinished > 0) {
            (true, true) => BatchStatus::Cancelling,
            (true, false) => BatchStatus::Cancelled,
            (false, true) => BatchStatus::InProgress,
            (false, false) => BatchStatus::Completed,
        }
    }

    pub fn is_final(&self) -> bool {
        self.unfinished == 0
    }

    /// Requests that did not complete (failed or cancelled): the error file's lines.
    pub fn not_completed(&self) -> i64 {
        self.failed + self.cancelled
    }
}

const SUMMARIES: &str = include_str!("openai_batches/sql/summaries.sql");

/// The batch if it exists, was made through the Batch API and belongs to `user_id`.
pub async fn find(
    pool: &PgPool,
    id: Uuid,
    user_id: Uuid,
) -> Result<Option<BatchSummary>, sqlx::Error> {
    sqlx::query_as(SUMMARIES)
        .bind(user_id)
        .bind(id)
        .bind(None::<Uuid>)
        .bind(1_i64)
        .fetch_optional(pool)
        .await
}

/// The user's batches, newest first, after the batch `after`; at most `limit` (≤ [`MAX_LIST`]).
pub async fn list(
    pool: &PgPool,
    user_id: Uuid,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<BatchSummary>, sqlx::Error> {
    sqlx::query_as(SUMMARIES)
        .bind(user_id)
        .bind(None::<Uuid>)
        .bind(after)
        .bind(limit.clamp(1, MAX_LIST))
        .fetch_all(pool)
        .await
}

/// Cancels the user's batch: its unfinished requests end cancelled, the batch keeps the time
/// of its first cancellation. Cancelling again changes nothing.
pub async fn cancel(pool: &PgPool, id: Uuid, user_id: Uuid) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(include_str!("openai_batches/sql/cancel.sql"))
        .bind(id)
        .bind(user_id)
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

/// One finished request of a batch, as its output or error file shows it.
#[derive(Debug, Clone, FromRow)]
pub struct BatchLine {
    #[sqlx(flatten)]
    pub request: RequestView,
    pub batch_index: i32,
    pub custom_id: Option<String>,
}

/// Which file of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchFile {
    /// The completed requests.
    Output,
    /// The failed and cancelled ones.
    Errors,
}

/// A page of the batch's lines for `file`, in the batch's order, after the index `after`
/// (-1 for the first page). The caller owns the batch (checked by [`find`]).
pub async fn lines(
    pool: &PgPool,
    batch_id: Uuid,
    file: BatchFile,
    after: i32,
    limit: i64,
) -> Result<Vec<BatchLine>, sqlx::Error> {
    sqlx::query_as(include_str!("openai_batches/sql/lines.sql"))
        .bind(batch_id)
        .bind(after)
        .bind(file == BatchFile::Output)
        .bind(limit)
        .fetch_all(pool)
        .await
}
