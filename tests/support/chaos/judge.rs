//! How a scenario is judged from the database: whether every accepted request reached a final
//! state by the time the queue was idle again (the rest are lost), how many completed twice by
//! any record, and whether rows nobody got an answer for finished too.
//!
//! "Idle" is: no job queued, scheduled or running, and no request under a live lease, for
//! [`QUIET`] on end. A request not final then has nothing left that would run it: it is lost.
//! Waiting for idle rather than a fixed time judges loss, not speed: recovery after a kill
//! takes missed heartbeats and a lease, however long the machine needs for the rest.

use std::time::Duration;

use sqlx::PgPool;
use tokio::time::Instant;
use uuid::Uuid;

use super::report::{Tally, describe};

const FINAL: &str = "('completed', 'failed', 'cancelled')";

/// How long the queue must stay idle before what is not final counts as lost: longer than a
/// worker's lease at its production default (15 s) and the rescuer's period (one lease), so a
/// stranded request has had every chance to be run again.
const QUIET: Duration = Duration::from_secs(40);

/// Whether nothing is queued, scheduled or running, and no request is under a live lease.
async fn idle(pool: &PgPool) -> bool {
    let busy: Result<i64, _> = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM apalis.jobs
                 WHERE job_type = $1 AND status IN ('Pending', 'Queued', 'Running'))
              + (SELECT COUNT(*) FROM generation_requests
                 WHERE status = 'running' AND lease_expires_at > NOW())",
    )
    .bind(llm_shared::queue::QUEUE)
    .fetch_one(pool)
    .await;
    busy.is_ok_and(|n| n == 0)
}

/// Waits until `open()` answers 0, or the queue has been idle for [`QUIET`], or `bound` has
/// passed (a queue that never goes idle); answers `open()` then.
async fn settle<F, Fut>(pool: &PgPool, bound: Duration, open: F) -> i64
where
    F: Fn() -> Fut,
    Fut: Future<Output = i64>,
{
    let deadline = Instant::now() + bound;
    let mut idle_since: Option<Instant> = None;
    loop {
        let left = open().await;
        let now = Instant::now();
        if left == 0 || now >= deadline {
            return left;
        }
        if idle(pool).await {
            let since = *idle_since.get_or_insert(now);
            if now - since >= QUIET {
                return left;
            }
        } else {
            idle_since = None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits for every accepted request to be final, or for the queue to be idle again (up to
/// `bound`), then counts: what is not final by then is lost.
pub async fn tally(
    scenario: &'static str,
    pool: &PgPool,
    accepted: &[Uuid],
    bound: Duration,
) -> Tally {
    let open = settle(pool, bound, || async {
        let n: Result<i64, _> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM generation_requests WHERE id = ANY($1) AND status IN {FINAL}"
        )))
        .bind(accepted)
        .fetch_one(pool)
        .await;
        accepted.len() as i64 - n.unwrap_or(0)
    })
    .await;
    let final_count = accepted.len().saturating_sub(open.max(0) as usize);
    let by_status: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status::text, COUNT(*) FROM generation_requests WHERE id = ANY($1) GROUP BY 1",
    )
    .bind(accepted)
    .fetch_all(pool)
    .await
    .unwrap();
    let count = |names: &[&str]| -> usize {
        by_status
            .iter()
            .filter(|(s, _)| names.contains(&s.as_str()))
            .map(|(_, n)| *n as usize)
            .sum()
    };
    let mut t = Tally {
        scenario,
        accepted: accepted.len(),
        completed: count(&["completed"]),
        failed: count(&["failed", "cancelled"]),
        lost: accepted.len().saturating_sub(final_count),
        ..Tally::default()
    };
    t.completed_twice = completed_twice(pool).await;
    if t.failed > 0 {
        let codes: Vec<(Option<String>, i64)> = sqlx::query_as(
            "SELECT error_code, COUNT(*) FROM generation_requests
             WHERE id = ANY($1) AND status IN ('failed', 'cancelled') GROUP BY 1 ORDER BY 2 DESC",
        )
        .bind(accepted)
        .fetch_all(pool)
        .await
        .unwrap();
        let codes = codes
            .into_iter()
            .map(|(c, n)| (c.unwrap_or_else(|| "cancelled".into()), n as usize))
            .collect();
        t.note(format!("failed by error code: {}", describe(&codes)));
    }
    if t.lost > 0 {
        let unfinished = describe(
            &by_status
                .iter()
                .filter(|(s, _)| !["completed", "failed", "cancelled"].contains(&s.as_str()))
                .map(|(s, n)| (s.clone(), *n as usize))
                .collect(),
        );
        let rows: usize = by_status.iter().map(|(_, n)| *n as usize).sum();
        t.note(format!(
            "lost: {} without a row, not final once the queue was idle: {unfinished}",
            accepted.len().saturating_sub(rows)
        ));
    }
    t
}

/// Requests (of the whole database) that completed more than once, by any of three records:
/// succeeded provider calls, `generation.completed` events, usage counted.
async fn completed_twice(pool: &PgPool) -> usize {
    let scalar = |sql: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(pool)
            .await
            .unwrap()
    };
    let calls = scalar(
        "SELECT COUNT(*) FROM (SELECT request_id FROM generation_attempts
         WHERE outcome = 'succeeded' GROUP BY request_id HAVING COUNT(*) > 1) s",
    )
    .await;
    let events = scalar(
        "SELECT COUNT(*) FROM (SELECT request_id FROM outbox_events
         WHERE type = 'generation.completed' GROUP BY request_id HAVING COUNT(*) > 1) s",
    )
    .await;
    let usage_excess = scalar(
        "SELECT GREATEST(0, (SELECT COALESCE(SUM(requests), 0) FROM usage_daily)::bigint
                          - (SELECT COUNT(*) FROM generation_requests WHERE status = 'completed'))",
    )
    .await;
    calls.max(events).max(usage_excess) as usize
}

pub(crate) async fn scalar(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Rows nobody got an answer for (the api died between commit and answer): they must finish
/// like the others. Returns (rows, not final once the queue was idle).
pub(crate) async fn unanswered_rows(
    pool: &PgPool,
    accepted: &[Uuid],
    bound: Duration,
) -> (i64, i64) {
    let counts = || async {
        sqlx::query_as::<_, (i64, i64)>(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE status NOT IN {FINAL})
             FROM generation_requests WHERE NOT (id = ANY($1))"
        )))
        .bind(accepted)
        .fetch_one(pool)
        .await
        .unwrap()
    };
    let open = settle(pool, bound, || async { counts().await.1 }).await;
    (counts().await.0, open)
}
