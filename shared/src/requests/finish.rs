//! The other ends of a run and its provider calls: attempt rows opened and failed, a request
//! failed, handed back to the queue for a retry, or cancelled.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use super::claim::ClaimedRequest;
use super::reads::{RequestView, find_for_user};
use super::{Status, StillHeld, millis};
use crate::queue;

/// A failed provider call, as recorded in the attempt history.
#[derive(Debug)]
pub struct AttemptFailure<'a> {
    /// The error's kind (`timeout`, `rate_limited`, ...: the provider error's own word).
    pub kind: &'static str,
    /// The upstream's HTTP status, when it answered one.
    pub http_status: Option<u16>,
    /// What went wrong, already redacted of secrets.
    pub message: &'a str,
    pub latency: Duration,
    pub provider: Option<&'a str>,
    pub upstream_model: Option<&'a str>,
}

/// Opens the attempt row of another provider call of the current run; returns its number.
pub async fn start_attempt(
    pool: &PgPool,
    id: Uuid,
    run: i32,
    worker: &str,
) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO generation_attempts (request_id, attempt, run, worker)
         SELECT $1, COALESCE(MAX(attempt), 0) + 1, $2, $3 FROM generation_attempts WHERE request_id = $1
         RETURNING attempt",
    )
    .bind(id)
    .bind(run)
    .bind(worker)
    .fetch_one(pool)
    .await
}

/// Records the failure of one provider call.
pub async fn fail_attempt(
    pool: &PgPool,
    id: Uuid,
    attempt: i32,
    failure: &AttemptFailure<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE generation_attempts
         SET outcome = 'failed', finished_at = NOW(), latency_ms = $3, error_kind = $4,
             http_status = $5, error_message = $6, provider = $7, model = $8
         WHERE request_id = $1 AND attempt = $2 AND outcome = 'running'",
    )
    .bind(id)
    .bind(attempt)
    .bind(millis(failure.latency))
    .bind(failure.kind)
    .bind(failure.http_status.map(i32::from))
    .bind(failure.message)
    .bind(failure.provider)
    .bind(failure.upstream_model)
    .execute(pool)
    .await?;
    Ok(())
}

/// Ends the request `failed` (its attempts are already recorded).
pub async fn fail(
    pool: &PgPool,
    claimed: &ClaimedRequest,
    worker: &str,
    code: &str,
    message: &str,
) -> Result<StillHeld, sqlx::Error> {
    finish_failed(pool, claimed.id, worker, claimed.attempts, code, message).await
}

/// Hands the request back to the queue: `pending` again, its job rescheduled after `delay`,
/// resuming at `fallback_index` of its chain. One transaction.
///
/// A run that called no provider (every circuit of its chain was open) was no attempt: the
/// attempt row its claim opened goes, and the run is not counted against `max_attempts`,
/// which is the budget of runs that die with their worker. (Counted, a few waits for a
/// circuit failed the request as `attempts_exhausted` with a history of "lost" workers.)
pub async fn release_for_retry(
    pool: &PgPool,
    claimed: &ClaimedRequest,
    worker: &str,
    delay: Duration,
    fallback_index: i32,
    code: &str,
    message: &str,
) -> Result<StillHeld, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let released = sqlx::query(include_str!("sql/release_for_retry.sql"))
        .bind(claimed.id)
        .bind(worker)
        .bind(claimed.attempts)
        .bind(fallback_index)
        .bind(code)
        .bind(message)
        .execute(&mut *tx)
        .await?;
    if released.rows_affected() != 1 {
        tx.rollback().await?;
        return Ok(false);
    }
    queue::reschedule(&mut tx, claimed.id, delay).await?;
    tx.commit().await?;
    Ok(true)
}

/// Ends the request `failed` with its outbox event, if this worker's run `attempt` still holds
/// it.
pub(super) async fn finish_failed(
    pool: &PgPool,
    id: Uuid,
    worker: &str,
    attempt: i32,
    code: &str,
    message: &str,
) -> Result<StillHeld, sqlx::Error> {
    let done = sqlx::query(include_str!("sql/finish_failed.sql"))
        .bind(id)
        .bind(worker)
        .bind(attempt)
        .bind(code)
        .bind(message)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Outcome of a cancellation.
#[derive(Debug)]
pub enum Cancelled {
    Done(Box<RequestView>),
    AlreadyFinished(Status),
    NotFound,
}

/// Cancels a pending or running request of `user_id`. A pending one never runs (its claim will
/// find it final); a running one's worker is told through the completion notice and stops.
/// The hub hears of it by `generation.cancelled`, queued by the same statement.
/// `user_id` is the owner, or `None` for an admin (any owner).
pub async fn cancel(
    pool: &PgPool,
    id: Uuid,
    user_id: Option<Uuid>,
) -> Result<Cancelled, sqlx::Error> {
    let updated: Option<Uuid> = sqlx::query_scalar(include_str!("sql/cancel.sql"))
        .bind(id)
        .bind(user_id)
        .fetch_optional(pool)
        .await?;
    let owner: Option<Uuid> = match user_id {
        Some(user) => Some(user),
        None => {
            sqlx::query_scalar("SELECT user_id FROM generation_requests WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
        }
    };
    let view = match owner {
        Some(owner) => find_for_user(pool, id, owner).await?,
        None => None,
    };
    Ok(match view {
        None => Cancelled::NotFound,
        Some(view) if updated.is_some() => Cancelled::Done(Box::new(view)),
        Some(view) => Cancelled::AlreadyFinished(view.status),
    })
}

/// Closes the running attempt rows of a request that was cancelled under its worker.
pub async fn close_cancelled_attempts(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE generation_attempts
         SET outcome = 'failed', finished_at = NOW(), error_kind = 'cancelled',
             error_message = 'the request was cancelled while this call ran'
         WHERE request_id = $1 AND outcome = 'running'",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}
