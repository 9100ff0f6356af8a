//! Batches of OpenAI's Batch API (`/v1/batches`): each is one of our batches (`batches`: its
//! lines are its requests, each with its own job at batch priority), made from an uploaded
//! file (`openai_files`), with the columns OpenAI's batch object shows beyond ours. Its status
//! and counts are read from its requests, its output and error files are its finished requests
//! read back a page at a time ([`lines`]): nothing is stored twice. A batch still unfinished
//! when its completion window ends expires ([`expire_due`]).

use std::time::Duration;

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

/// The completion windows a batch may ask for (OpenAI offers `24h`), and how long each lasts.
pub fn completion_window(text: &str) -> Option<Duration> {
    (text == "24h").then_some(SHORTEST_WINDOW)
}

/// The shortest of the [`completion_window`]s.
const SHORTEST_WINDOW: Duration = Duration::from_secs(24 * 3600);

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
    /// When its completion window ends, if stored (see [`BatchSummary::expires_at`]).
    pub expires_at: Option<DateTime<Utc>>,
    /// When the end of its window expired its unfinished requests.
    pub expired_at: Option<DateTime<Utc>>,
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
    Expired,
}

impl BatchStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Cancelling => "cancelling",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }
}

impl BatchSummary {
    /// A batch is validated as it is created (an invalid file creates nothing), so it starts
    /// in progress; it is final once every request is. A cancel ends it as cancelled, the end
    /// of its window with requests unfinished as expired.
    pub fn status(&self) -> BatchStatus {
        let unfinished = self.unfinished > 0;
        match (self.cancelled_at, self.expired_at) {
            (Some(_), _) if unfinished => BatchStatus::Cancelling,
            (Some(_), _) => BatchStatus::Cancelled,
            (None, Some(_)) => BatchStatus::Expired,
            (None, None) if unfinished => BatchStatus::InProgress,
            (None, None) => BatchStatus::Completed,
        }
    }

    /// When its completion window ends: as stored, or, for a batch stored without it, its
    /// window after its creation (as the expiry reads it).
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.expires_at.or_else(|| {
            let window = completion_window(self.completion_window.as_deref()?)?;
            Some(self.created_at + chrono::Duration::from_std(window).ok()?)
        })
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

/// The `error_code` of a request its batch's window expired (`sql/expire.sql` writes it).
pub const EXPIRED_CODE: &str = "batch_expired";

/// Batches expired per statement of [`expire_due`]: at most 10,000 requests (a batch holds
/// up to [`crate::batches::MAX_BATCH_ITEMS`]), so that no statement locks a whole backlog.
pub const EXPIRE_PER_STATEMENT: i64 = 10;
/// Statements per call of [`expire_due`]: what is left waits for the next call.
const EXPIRE_STATEMENTS: usize = 10;

/// Expires the batches whose completion window has ended with requests unfinished, up to
/// [`EXPIRE_PER_STATEMENT`] × [`EXPIRE_STATEMENTS`] of them: those requests end cancelled
/// (`batch_expired`), the batch `expired`. Returns how many requests it expired. Idempotent;
/// any worker may run it at any time.
pub async fn expire_due(pool: &PgPool) -> Result<i64, sqlx::Error> {
    let mut requests = 0;
    for _ in 0..EXPIRE_STATEMENTS {
        let (batches, expired): (i64, i64) =
            sqlx::query_as(include_str!("openai_batches/sql/expire.sql"))
                .bind(SHORTEST_WINDOW.as_secs_f64())
                .bind(EXPIRE_PER_STATEMENT)
                .fetch_one(pool)
                .await?;
        requests += expired;
        if batches < EXPIRE_PER_STATEMENT {
            break;
        }
    }
    Ok(requests)
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
