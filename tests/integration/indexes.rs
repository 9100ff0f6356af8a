//! What the indexes of the tables every job writes hold once the job is finished. A status
//! change is not a HOT update (the status is indexed), so each index whose predicate a row's new
//! version matches gets an entry for it: an index that holds finished jobs costs an entry per
//! submit, claim and completion, and finished jobs are nearly all the rows.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;

const WAIT: Duration = Duration::from_secs(30);

/// The indexes of `table` that hold at least one of its rows matching `rows` (an SQL
/// condition): an index holds the rows its predicate matches.
async fn indexes_holding(pool: &PgPool, table: &str, rows: &str) -> BTreeSet<String> {
    let indexes: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT c.relname::text, pg_get_expr(i.indpred, i.indrelid)
         FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         WHERE i.indrelid = $1::regclass",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(!indexes.is_empty(), "{table} has no index");
    let mut holding = BTreeSet::new();
    for (index, predicate) in indexes {
        let predicate = predicate.unwrap_or_else(|| "true".to_owned());
        let held: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM {table} WHERE ({rows}) AND ({predicate})"
        )))
        .fetch_one(pool)
        .await
        .unwrap();
        if held > 0 {
            holding.insert(index);
        }
    }
    holding
}

fn names(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// A finished job is held only by the indexes that something reads it through: its request by
/// id and in its user's listing, its queue job and its delivered events by their keys alone.
/// Requests by status (kept for the admin's replays), an outbox event's random id, cache
/// entries by model, and apalis' worker and idempotency-key columns (NULL for a finished job)
/// are indexed only where a query reads them: failed and cancelled requests, non-NULL values.
#[tokio::test]
async fn finished_jobs_are_held_only_by_the_indexes_that_read_them() {
    let (app, worker) = llm_tests::app_with_worker(&[]).await;
    let bodies = (0..20)
        .map(|n| json!({"prompt": format!("indexed job {n}")}))
        .collect();
    let ids = app.complete_and_acknowledge(bodies, WAIT).await;
    worker.stop().await;
    // No message hub here: the events are marked delivered as the relay would.
    sqlx::query("UPDATE outbox_events SET delivered_at = NOW(), attempts = attempts + 1")
        .execute(&app.db.pool)
        .await
        .unwrap();

    let pool = &app.db.pool;
    assert_eq!(
        indexes_holding(pool, "generation_requests", "status = 'completed'").await,
        names(&[
            "generation_requests_pkey",
            "generation_requests_user_created_idx"
        ])
    );
    assert_eq!(
        indexes_holding(pool, "apalis.jobs", "status = 'Done'").await,
        names(&["jobs_pkey"])
    );
    assert_eq!(
        indexes_holding(pool, "outbox_events", "delivered_at IS NOT NULL").await,
        names(&["outbox_events_pkey"])
    );
    // A stored result: read by its key, purged by its expiry.
    assert_eq!(
        indexes_holding(pool, "response_cache", "true").await,
        names(&["response_cache_pkey", "response_cache_expires_idx"])
    );

    // What the partial indexes are for still reads through them: the replays' failed and
    // cancelled requests, and the jobs a worker holds.
    sqlx::query("UPDATE generation_requests SET status = 'failed' WHERE id = $1")
        .bind(ids[0])
        .execute(pool)
        .await
        .unwrap();
    assert!(
        indexes_holding(pool, "generation_requests", "status = 'failed'")
            .await
            .contains("generation_requests_replayable_idx")
    );
    sqlx::query(
        "UPDATE apalis.jobs SET status = 'Running', lock_by = (SELECT id FROM apalis.workers LIMIT 1)
         WHERE id = $1",
    )
    .bind(llm_shared::queue::job_id_for(ids[1]).to_string())
    .execute(pool)
    .await
    .unwrap();
    assert!(
        indexes_holding(pool, "apalis.jobs", "status = 'Running'")
            .await
            .contains("idx_apalis_jobs_lock_by")
    );
    // apalis asks for `lock_by = $n`: a partial index over the non-NULL values still serves it
    // in a generic plan (the equality implies the predicate). On a table this small a scan would
    // be cheaper, so scans are ruled out: the question is whether the index can be used.
    let mut conn = pool.acquire().await.unwrap();
    sqlx::raw_sql("SET enable_seqscan = off")
        .execute(&mut *conn)
        .await
        .unwrap();
    let plan =
        llm_tests::generic_plan(&mut conn, "SELECT id FROM apalis.jobs WHERE lock_by = $1").await;
    assert!(plan.contains("idx_apalis_jobs_lock_by"), "{plan}");
}
