//! Generation requests: the `generation_requests` row is the durable record of a request from
//! submit to final state, and `generation_attempts` holds one row per provider call.
//!
//! This module owns both tables. The api creates rows (with their job, in one statement, group-
//! committed with concurrent submits: [`Submitter`], [`insert_many`]) and reads them; the worker
//! claims, completes and fails them through the functions here, each guarded so that a second
//! delivery of the same job can neither run nor finish it twice.
//!
//! The claim and the completing write take a batch ([`claim_many`], [`complete_many`]): a
//! worker group-commits its concurrent jobs' calls, one statement for many rows, each row with
//! its own guard and its own answer. [`claim`] and [`complete`] are the batch of one;
//! [`claim_each`] and [`complete_each`] answer every caller of a batch even when its statement
//! fails (see `batch::answer_each`).
//!
//! BY_ID_ONLY: a statement that takes a batch of requests by id tests their status with a
//! `CASE`, never `status = …`. An equality on `status` lets the planner read the rows through a
//! status index instead of the primary key, and it does whenever the statistics say few rows
//! are pending (a new table, a truncate, a sudden backlog): each statement then walked every
//! pending row and the dead index entries of every finished one, and a 20,000-job drain ran at
//! 416 jobs/s against 983 for 5,000 jobs. A `CASE` is no index condition, so the ids decide
//! (`group_commit::batched_statements_find_their_rows_by_id_whatever_the_statistics` reads
//! their plans).
//!
//! Files: `body` (the submitted body and its validation), `submit` (storing submits),
//! `hits` (cache hits answered before their rows are written), `columns` (the insert
//! statements' array parameters), `reads` (a request, its attempts, recent call statistics),
//! `claim` (claims and leases), `complete` (successful runs), `finish` (attempts, failures,
//! retries, cancellation), `batch` (answering each caller of a batched statement). The long
//! statements are in `sql/`.

mod batch;
mod body;
mod claim;
mod columns;
mod complete;
mod finish;
mod hits;
mod reads;
mod submit;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::Postgres;

pub use body::{
    GenerateBody, MAX_HISTORY_TURNS, MAX_IDEMPOTENCY_KEY_LEN, MAX_PROMPT_CHARS, NewRequest,
    RESERVED_METADATA, RenderedFrom, estimated_tokens, validate_context,
};
pub use claim::{Claim, ClaimedRequest, claim, claim_each, claim_many, renew_leases};
pub use complete::{Success, SuccessRow, complete, complete_each, complete_many};
pub use finish::{
    AttemptFailure, Cancelled, cancel, close_cancelled_attempts, fail, fail_attempt,
    release_for_retry, start_attempt,
};
pub use hits::HIT_ROWS_ON_STOP;
pub use reads::{
    AttemptView, CallStats, RECENT_CALL_STATS, RequestInput, RequestView, attempts_of,
    find_for_user, recent_call_stats,
};
pub use submit::{Durability, Insert, Notice, Submitted, Submitter, insert_many, insert_with_job};

/// Where a request stands, as its `status` column says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

// Stored in the `status VARCHAR(50)` column, so it decodes from any text type.
impl sqlx::Type<Postgres> for Status {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <String as sqlx::Type<Postgres>>::type_info()
    }
    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <String as sqlx::Type<Postgres>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, Postgres> for Status {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        match <&str as sqlx::Decode<Postgres>>::decode(value)? {
            "pending" => Ok(Self::Pending),
            "running" => Ok(Self::Running),
            "completed" => Ok(Self::Completed),
            "failed" => Ok(Self::Failed),
            "cancelled" => Ok(Self::Cancelled),
            other => Err(format!("unknown request status `{other}`").into()),
        }
    }
}

/// The statements that take a batch of requests by id (BY_ID_ONLY), by name: for the test
/// that reads their plans.
pub fn by_id_statements() -> Vec<(&'static str, String)> {
    vec![
        ("claim_many", claim::CLAIM_MANY.to_owned()),
        ("complete_many", complete::COMPLETE_MANY.to_owned()),
        ("renew_leases", claim::RENEW_LEASES.to_owned()),
    ]
}

/// Every statement a group-commit writer runs on its own connections ([`crate::db::writer_pool`]),
/// by name: the by-id ones, the submit's and the cache hits' rows'.
pub fn writer_statements() -> Vec<(&'static str, String)> {
    let mut statements = by_id_statements();
    statements.push(("insert_many", submit::INSERT_MANY.to_owned()));
    statements.push(("insert_hits", hits::INSERT_HITS.to_owned()));
    statements
}

/// Whether a finishing write still held the claim. `false` means the lease ran out and another
/// worker took the request: this worker's result is discarded.
pub type StillHeld = bool;

/// A count as the `int` columns store it (saturating).
fn to_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// A duration in whole milliseconds, as the `int` columns store it (saturating).
fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}
