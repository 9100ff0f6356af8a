//! How a scenario is judged from the database: whether every accepted request reached a final
//! state within the bound (the rest are lost), how many completed twice by any record, and
//! whether rows nobody got an answer for finished too.

use std::time::Duration;

use sqlx::PgPool;
use tokio::time::Instant;
use uuid::Uuid;

use super::report::{Tally, describe};

const FINAL: &str = "('completed', 'failed', 'cancelled')";

/// Waits (up to `bound`) for every accepted request to be final, then counts.
pub async fn tally(
    scenario: &'static str,
    pool: &PgPool,
    accepted: &[Uuid],
    bound: Duration,
) -> Tally {
    let deadline = Instant::now() + bound;
    let final_count = loop {
        let n: Result<i64, _> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM generation_requests WHERE id = ANY($1) AND status IN {FINAL}"
        )))
        .bind(accepted)
        .fetch_one(pool)
        .await;
        let n = n.map_or(0, |n| n as usize);
        if n >= accepted.len() || Instant::now() >= deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
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
            "lost: {} without a row, not final after {bound:?}: {unfinished}",
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
/// like the others. Returns (rows, not final after `bound`).
pub(crate) async fn unanswered_rows(
    pool: &PgPool,
    accepted: &[Uuid],
    bound: Duration,
) -> (i64, i64) {
    let deadline = Instant::now() + bound;
    loop {
        let (rows, open): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE status NOT IN {FINAL})
             FROM generation_requests WHERE NOT (id = ANY($1))"
        )))
        .bind(accepted)
        .fetch_one(pool)
        .await
        .unwrap();
        if open == 0 || Instant::now() >= deadline {
            return (rows, open);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
