//! The durable queue: apalis-postgres jobs in the `apalis` schema, one job per request.
//!
//! A job carries only the request id; the request row is the source of truth. Its id is a
//! ULID derived from the request's UUIDv7 (same 128 bits), so the job of any request can be
//! found without a lookup, and both sort by creation time.
//!
//! # Fair share
//!
//! Workers fetch `ORDER BY priority DESC, run_at ASC` (apalis' `get_jobs`). The priority is the
//! class: [`INTERACTIVE_PRIORITY`] before [`BATCH_PRIORITY`], each preceded by its
//! [`returning`] jobs. Within a class, a new job's `run_at` is not "now" but its *virtual
//! time*, given by the statement that inserts it (start-time fair queuing): each user has a
//! virtual finish time per class (`fair_share`), and a job takes `max(V, user's) + 1 ms /
//! weight`, where V, the class's virtual time, is the head of its queue (or, once the queue
//! has drained, the latest time any user reached: `fair_share_clock`). So a user's backlog
//! holds times far ahead of V while another user's new job lands next to the head: it waits
//! about one call, not for the backlog. Weights (1 to 100, default 1) give a user a larger
//! share. Virtual times are timestamps from 1970 (apalis decodes no earlier `run_at`) to 2000:
//! always due, and far from running out (a millisecond per job: ~10^12 jobs); jobs due at a real time
//! (rescheduled, rescued, replayed) sort after them within the same priority, which is why a
//! rescheduled or rescued job moves to its class's returning priority.

use std::time::Duration;

use apalis::prelude::{TaskBuilder, TaskId};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use ulid::Ulid;
use uuid::Uuid;

mod acks;
mod backend;
mod wakeups;
pub use backend::QueueBackend;
pub use wakeups::{CHANNEL, WakeStrategy, Wakeups};

/// The apalis queue (its `job_type`) of generation jobs.
pub const QUEUE: &str = "llm::generation";
/// apalis' own attempt budget: above ours, so our guard (which records why) always acts first;
/// the headroom covers database hiccups, which apalis retries.
const QUEUE_EXTRA_ATTEMPTS: i32 = 10;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerationJob {
    pub request_id: Uuid,
    /// The W3C `traceparent` of the submit, when spans are exported (jobs pushed by the
    /// service itself, e.g. rescued ones, have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

pub fn job_id_for(request_id: Uuid) -> Ulid {
    Ulid::from(request_id.as_u128())
}

/// Priority of interactive requests' jobs: workers take them before batch jobs.
pub const INTERACTIVE_PRIORITY: usize = 10;
/// Priority of batch items' jobs, so that a large batch never starves interactive users.
pub const BATCH_PRIORITY: usize = 0;

/// The priority of a class's jobs that have waited their turn already (a rescheduled or rescued
/// run, a follower whose leader ended): ahead of the class's new jobs, by due time. `priority |
/// 1` in SQL: the classes' priorities are even.
pub const fn returning(priority: usize) -> usize {
    priority | 1
}

/// Pushes the job of a request that has waited already (a follower whose leader ended without
/// answering it) on the caller's connection, ahead of the new interactive jobs.
pub async fn push_generation(
    conn: &mut PgConnection,
    request_id: Uuid,
    max_attempts: i32,
) -> Result<(), sqlx::Error> {
    push_generations(
        conn,
        &[(request_id, max_attempts)],
        returning(INTERACTIVE_PRIORITY),
    )
    .await
}

/// The values of a request's job row, for a statement that inserts the request and its job
/// together (one round trip, atomic without an explicit transaction). The row is the one
/// apalis-postgres' own sink writes (`queries/task/sink.sql`): job type [`QUEUE`], status
/// `Pending`, no attempts yet, `run_at` now, an empty `metadata` (`requests/sql/insert_many.sql`).
#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: String,
    /// The job's arguments, encoded as apalis' JSON codec decodes them.
    pub job: Vec<u8>,
    pub max_attempts: i32,
    pub priority: i32,
}

impl JobRow {
    pub fn new(
        request_id: Uuid,
        max_attempts: i32,
        priority: usize,
        traceparent: Option<&str>,
    ) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: job_id_for(request_id).to_string(),
            job: job_args(request_id, traceparent)?,
            max_attempts: max_attempts.saturating_add(QUEUE_EXTRA_ATTEMPTS),
            priority: i32::try_from(priority).unwrap_or(i32::MAX),
        })
    }
}

fn job_args(request_id: Uuid, traceparent: Option<&str>) -> Result<Vec<u8>, sqlx::Error> {
    let job = GenerationJob {
        request_id,
        traceparent: traceparent.map(str::to_owned),
    };
    serde_json::to_vec(&job).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

/// Pushes the jobs of many requests in one statement.
pub async fn push_generations(
    conn: &mut PgConnection,
    requests: &[(Uuid, i32)],
    priority: usize,
) -> Result<(), sqlx::Error> {
    let mut tasks = Vec::with_capacity(requests.len());
    for &(request_id, max_attempts) in requests {
        let budget = usize::try_from(max_attempts.saturating_add(QUEUE_EXTRA_ATTEMPTS))
            .unwrap_or(usize::MAX);
        tasks.push(
            TaskBuilder::new(job_args(request_id, None)?)
                .task_id(TaskId::from(job_id_for(request_id)))
                .max_attempts(budget)
                .priority(priority)
                .build(),
        );
    }
    apalis_postgres::queries::push_tasks(conn, QUEUE, tasks)
        .await
        .map_err(|e| match e {
            apalis_postgres::Error::Database(db) => db,
            other => sqlx::Error::Protocol(other.to_string()),
        })
}

/// Puts a request's job back in the queue to run after `delay`, ahead of its class's new jobs
/// once due ([`returning`]: it had its turn). Clearing `lock_by` also makes the running
/// worker's pending acknowledgement of this run a no-op.
pub async fn reschedule(
    conn: &mut PgConnection,
    request_id: Uuid,
    delay: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE apalis.jobs
         SET status = 'Pending', run_at = NOW() + make_interval(secs => $2),
             priority = priority | 1, lock_by = NULL, lock_at = NULL, done_at = NULL
         WHERE id = $1",
    )
    .bind(job_id_for(request_id).to_string())
    .bind(delay.as_secs_f64())
    .execute(conn)
    .await?;
    Ok(())
}

/// Stops `worker` fetching jobs below priority `below` for `pause` (a longer pause already
/// running is kept): `apalis.get_jobs` skips them for that worker meanwhile.
pub async fn pause_fetch(
    pool: &PgPool,
    worker: &str,
    below: i32,
    pause: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(include_str!("queue/sql/pause_fetch.sql"))
        .bind(worker)
        .bind(below)
        .bind(pause.as_secs_f64())
        .execute(pool)
        .await?;
    Ok(())
}

/// Re-queues the jobs of unfinished requests that nothing will run any more: the request is
/// `pending`, or `running` with an expired lease, while its job is finished or out of
/// attempts (e.g. an acknowledgement raced a reschedule). Returns how many it re-queued.
/// Idempotent; any worker may run it at any time.
pub async fn rescue_stranded(pool: &PgPool, grace: Duration) -> Result<u64, sqlx::Error> {
    let rescued = sqlx::query(include_str!("queue/sql/rescue_stranded.sql"))
        .bind(grace.as_secs_f64())
        .execute(pool)
        .await?;
    Ok(rescued.rows_affected())
}

/// Gives a job of its own to every waiting request whose identical "leader" ended without
/// answering it (failed, cancelled, or finished just before it attached). Returns how many.
pub async fn rescue_orphaned_followers(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let orphans: Vec<(Uuid, i32)> = sqlx::query_as(
        "UPDATE generation_requests f SET coalesced_into = NULL, updated_at = NOW()
         FROM generation_requests l
         WHERE f.coalesced_into IS NOT NULL -- lets the planner use the small partial index
           AND f.coalesced_into = l.id AND f.status = 'pending'
           AND l.status IN ('completed', 'failed', 'cancelled')
         RETURNING f.id, f.max_attempts",
    )
    .fetch_all(&mut *tx)
    .await?;
    for (id, max_attempts) in &orphans {
        push_generation(&mut tx, *id, *max_attempts).await?;
    }
    tx.commit().await?;
    Ok(orphans.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returning_jobs_stay_in_their_class() {
        assert_eq!(returning(INTERACTIVE_PRIORITY), INTERACTIVE_PRIORITY + 1);
        assert_eq!(returning(BATCH_PRIORITY), BATCH_PRIORITY + 1);
        assert!(returning(BATCH_PRIORITY) < INTERACTIVE_PRIORITY);
    }

    #[test]
    fn job_id_keeps_the_request_ids_bits() {
        let id = Uuid::now_v7();
        let job = job_id_for(id);
        assert_eq!(job.0, id.as_u128());
        assert_eq!(job.to_string().len(), 26);
    }
}
