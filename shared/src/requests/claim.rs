//! Claims: a worker takes requests to run ([`claim_many`] and its batch of one, [`claim`]), and
//! keeps them while it runs them ([`renew_leases`]). Each claim is a run, with its own lease
//! and attempt rows; a request whose runs are used up by lost workers fails here.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

use super::Status;
use super::batch::{answer_each, only};
use super::finish::finish_failed;
use crate::cache::CachePolicy;
use crate::error;

/// A request claimed by a worker: what it needs to run it, and the claim's identity.
#[derive(Debug, Clone, FromRow)]
pub struct ClaimedRequest {
    pub id: Uuid,
    /// Claims so far, this one included (the run number).
    pub attempts: i32,
    pub max_attempts: i32,
    pub prompt: String,
    pub model: String,
    pub parameters: Value,
    /// The request's context: joins the system prompt of every call
    /// ([`crate::generation::GenerationParams::with_context`]).
    pub context: Value,
    pub metadata: Value,
    pub fallback_index: i32,
    pub stream: bool,
    pub cache_key: Option<String>,
    pub cache_policy: sqlx::types::Json<CachePolicy>,
    pub user_id: Uuid,
    pub estimated_tokens: Option<i32>,
    pub created_at: DateTime<Utc>,
    /// Trace id of the submitting api request, if it had one.
    pub trace_id: Option<String>,
    /// The attempt row the claim opened for this run's first provider call.
    pub first_attempt: i32,
    /// Times an admin sent it back to the queue.
    pub replays: i32,
    /// The batch it is an item of (its calls wait behind interactive requests' for budget).
    pub batch_id: Option<Uuid>,
}

/// What a claim found.
#[derive(Debug)]
pub enum Claim {
    /// This worker now holds the request: run it.
    Claimed(Box<ClaimedRequest>),
    /// Finished already (a duplicate delivery): nothing to do.
    Finished,
    /// Another live worker holds it until the given time.
    HeldElsewhere {
        until: DateTime<Utc>,
    },
    /// Every attempt was used up (earlier claims died with their workers): now `failed`.
    Exhausted,
    NotFound,
}

/// Takes the request for this worker: `pending` rows, and `running` rows whose holder's lease
/// ran out (its worker died). Each claim is a new attempt; earlier unfinished attempts are
/// marked `abandoned`. The batch of one of [`claim_many`].
pub async fn claim(
    pool: &PgPool,
    id: Uuid,
    worker: &str,
    lease: Duration,
) -> Result<Claim, sqlx::Error> {
    only(claim_many(pool, &[id], worker, lease).await?)?
}

/// [`claim_many`]'s statement.
pub(super) const CLAIM_MANY: &str = include_str!("sql/claim_many.sql");

/// Closes the attempts that lost workers left running, for the claimed requests that ran
/// before (a first claim has none; the claim statement leaves this out, for inside it the update
/// is planned as a walk over every attempt row, ~80 ms at 20,000 rows, even with nothing to
/// do). Their own new attempt is not touched. The claims stand whatever happens here (they
/// committed): a failure leaves those attempts shown as running, and is logged.
async fn abandon_earlier_runs(pool: &PgPool, claimed: &[ClaimedRequest]) {
    let (ids, opened): (Vec<Uuid>, Vec<i32>) = claimed
        .iter()
        .filter(|c| c.attempts > 1 || c.replays > 0)
        .map(|c| (c.id, c.first_attempt))
        .unzip();
    if ids.is_empty() {
        return;
    }
    let closed = sqlx::query(
        "UPDATE generation_attempts a
         SET outcome = 'abandoned', finished_at = NOW(), error_kind = 'worker_lost',
             error_message = 'the worker running this attempt stopped before finishing it'
         FROM unnest($1::uuid[], $2::int[]) AS c(id, opened)
         WHERE a.request_id = c.id AND a.outcome = 'running'
           AND (c.opened = 0 OR a.attempt < c.opened)",
    )
    .bind(&ids)
    .bind(&opened)
    .execute(pool)
    .await;
    if let Err(err) = closed {
        tracing::warn!(error = %err, requests = ids.len(), "could not mark the attempts of lost workers abandoned");
    }
}

/// Claims the requests `ids` for this worker in one statement (one round trip, one commit),
/// as [`claim`] would claim each alone: the answers are in the order of `ids`.
///
/// An id given twice is claimed once, by its first occurrence; the later ones find it held,
/// as a second claim would. The outer `Err` is the claim statement's: it rolled back, nothing
/// was claimed, so each id may be tried again (see [`claim_each`]). An inner `Err` comes from
/// that id's follow-up after the claim committed (reading why it was not claimed, or failing
/// it when its attempts are used up), so it is that id's alone.
pub async fn claim_many(
    pool: &PgPool,
    ids: &[Uuid],
    worker: &str,
    lease: Duration,
) -> Result<Vec<Result<Claim, sqlx::Error>>, sqlx::Error> {
    let mut distinct = ids.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let claimed: Vec<ClaimedRequest> = sqlx::query_as(CLAIM_MANY)
        .bind(&distinct)
        .bind(worker)
        .bind(lease.as_secs_f64())
        .fetch_all(pool)
        .await?;

    abandon_earlier_runs(pool, &claimed).await;
    let mut claimed: HashMap<Uuid, ClaimedRequest> =
        claimed.into_iter().map(|c| (c.id, c)).collect();
    let mut answers: Vec<Option<Result<Claim, sqlx::Error>>> = Vec::with_capacity(ids.len());
    for &id in ids {
        answers.push(match claimed.remove(&id) {
            None => None,
            Some(claimed) if claimed.attempts > claimed.max_attempts => {
                let message = format!(
                    "gave up after {} attempts: the workers running it stopped before finishing",
                    claimed.max_attempts
                );
                let failed = finish_failed(
                    pool,
                    id,
                    worker,
                    claimed.attempts,
                    "attempts_exhausted",
                    &message,
                )
                .await;
                Some(failed.map(|_| Claim::Exhausted))
            }
            Some(claimed) => Some(Ok(Claim::Claimed(Box::new(claimed)))),
        });
    }
    if answers.iter().any(Option::is_none) {
        // Why the others were not claimed, read after the claim (rare: a duplicate delivery).
        let unclaimed: Vec<Uuid> = ids
            .iter()
            .zip(&answers)
            .filter(|(_, answer)| answer.is_none())
            .map(|(&id, _)| id)
            .collect();
        let rows: Result<Vec<RowState>, sqlx::Error> = sqlx::query_as(
            "SELECT id, status, lease_expires_at FROM generation_requests WHERE id = ANY($1)",
        )
        .bind(&unclaimed)
        .fetch_all(pool)
        .await;
        match rows {
            Ok(rows) => {
                let states: HashMap<Uuid, RowState> = rows.into_iter().map(|r| (r.id, r)).collect();
                for (id, answer) in ids.iter().zip(answers.iter_mut()) {
                    if answer.is_none() {
                        *answer = Some(Ok(match states.get(id) {
                            None => Claim::NotFound,
                            Some(row) if row.status.is_final() => Claim::Finished,
                            Some(row) => Claim::HeldElsewhere {
                                until: row.lease_expires_at.unwrap_or_else(Utc::now),
                            },
                        }));
                    }
                }
            }
            Err(err) => {
                for answer in answers.iter_mut().filter(|a| a.is_none()) {
                    *answer = Some(Err(error::replicate(&err)));
                }
            }
        }
    }
    Ok(answers
        .into_iter()
        .map(|answer| answer.unwrap_or(Err(sqlx::Error::RowNotFound)))
        .collect())
}

/// Where a request that was not claimed stands.
#[derive(FromRow)]
struct RowState {
    id: Uuid,
    status: Status,
    lease_expires_at: Option<DateTime<Utc>>,
}

/// [`claim_many`] with an answer for each id, whatever happened: what the worker's claim
/// batches run (see `answer_each` for the errors).
pub async fn claim_each(
    pool: &PgPool,
    ids: &[Uuid],
    worker: &str,
    lease: Duration,
) -> Vec<Result<Claim, sqlx::Error>> {
    let batch = claim_many(pool, ids, worker, lease).await;
    answer_each(ids, batch, |&id| claim(pool, id, worker, lease)).await
}

/// [`renew_leases`]'s statement.
pub(super) const RENEW_LEASES: &str = include_str!("sql/renew_leases.sql");

/// Extends the leases of the requests this worker is running (its liveness signal).
pub async fn renew_leases(
    pool: &PgPool,
    worker: &str,
    ids: &[Uuid],
    lease: Duration,
) -> Result<u64, sqlx::Error> {
    let renewed = sqlx::query(RENEW_LEASES)
        .bind(ids)
        .bind(worker)
        .bind(lease.as_secs_f64())
        .execute(pool)
        .await?;
    Ok(renewed.rows_affected())
}
