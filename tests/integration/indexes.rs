//! What the indexes of the tables every job writes hold once the job is finished, and which
//! writes are HOT updates. An update that changes an indexed column (predicates count) is not
//! HOT, so each index whose predicate a row's new version matches gets an entry for it: an
//! index that holds finished jobs costs an entry per write, and finished jobs are nearly all
//! the rows.

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

/// An event waiting for the hub is held by its primary key alone: every row of the outbox is
/// an undelivered one (delivered events are deleted), and the relay reads them in `seq` order.
#[tokio::test]
async fn an_undelivered_event_is_held_by_its_primary_key_alone() {
    let db = llm_tests::TestDb::new().await;
    sqlx::query(
        "INSERT INTO outbox_events (id, type, payload)
         VALUES (gen_random_uuid(), 'usage.updated', '{}')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        indexes_holding(&db.pool, "outbox_events", "true").await,
        names(&["outbox_events_pkey"])
    );
}

/// A finished job is held only by the indexes that something reads it through: its request by
/// id and in its user's listing, its queue job by its key alone. Requests by status (kept for
/// the admin's replays), cache entries by model, and apalis' worker and idempotency-key columns
/// (NULL for a finished job) are indexed only where a query reads them: failed and cancelled
/// requests, non-NULL values. (Its delivered events are deleted: `hub::a_hub_that_is_down_then_up_receives_every_event_in_order`.)
#[tokio::test]
async fn finished_jobs_are_held_only_by_the_indexes_that_read_them() {
    let (app, worker) = llm_tests::app_with_worker(&[]).await;
    let bodies = (0..20)
        .map(|n| json!({"prompt": format!("indexed job {n}")}))
        .collect();
    let ids = app.complete_and_acknowledge(bodies, WAIT).await;
    worker.stop().await;

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
    // A stored result: read by its key, purged by its expiry.
    assert_eq!(
        indexes_holding(pool, "response_cache", "true").await,
        names(&["response_cache_pkey", "response_cache_expires_idx"])
    );

    // What the partial indexes are for still reads through them: the replays' failed and
    // cancelled requests, and the jobs a worker holds.
    sqlx::query(
        "UPDATE generation_requests SET status = 'failed', error_code = 'provider_error'
         WHERE id = $1",
    )
    .bind(ids[0])
    .execute(pool)
    .await
    .unwrap();
    assert!(
        indexes_holding(pool, "generation_requests", "status = 'failed'")
            .await
            .contains("generation_requests_errored_idx")
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

/// How many rows of `generation_requests` this transaction has updated, and how many of those
/// were HOT updates (read in the transaction itself, so no statistics flush is waited for).
async fn updates_so_far(tx: &mut sqlx::PgConnection) -> (i64, i64) {
    sqlx::query_as(
        "SELECT pg_stat_get_xact_tuples_updated('generation_requests'::regclass),
                pg_stat_get_xact_tuples_hot_updated('generation_requests'::regclass)",
    )
    .fetch_one(tx)
    .await
    .unwrap()
}

/// A claim and a lease renewal are HOT updates: no index of the table names a column they
/// write (unfinished is `completed_at IS NULL`, not a status or a lease), so they add no index
/// entry and the row's new version stays on its page. The completion is the one write per job
/// that moves a request out of the partial indexes. The worker's own statements are run here
/// in one transaction, whose counters say what each did.
#[tokio::test]
async fn claims_and_lease_renewals_are_hot_updates() {
    let app = llm_tests::spawn_app().await;
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(
            app.submit_ok(json!({"prompt": format!("hot claim {n}")}))
                .await,
        );
    }
    let statements: std::collections::HashMap<&str, String> =
        llm_shared::requests::by_id_statements()
            .into_iter()
            .collect();
    let mut tx = app.db.pool.begin().await.unwrap();

    let claimed = sqlx::query(sqlx::AssertSqlSafe(statements["claim_many"].clone()))
        .bind(&ids)
        .bind("hot-worker")
        .bind(60.0_f64)
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(claimed.len(), ids.len());
    assert_eq!(
        updates_so_far(&mut tx).await,
        (4, 4),
        "claims: (updated, HOT)"
    );

    let renewed = sqlx::query(sqlx::AssertSqlSafe(statements["renew_leases"].clone()))
        .bind(&ids)
        .bind("hot-worker")
        .bind(60.0_f64)
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(renewed.rows_affected(), 4);
    assert_eq!(
        updates_so_far(&mut tx).await,
        (8, 8),
        "and renewals: (updated, HOT)"
    );
    tx.rollback().await.unwrap();
}

/// The CHECKs that make the partial indexes' predicates name the statuses they stand for: a
/// write that would put a finished request among the unfinished ones (or a failure without an
/// error code outside the replays' index) is refused.
#[tokio::test]
async fn a_status_and_its_completion_time_cannot_disagree() {
    let app = llm_tests::spawn_app().await;
    let id = app.submit_ok(json!({"prompt": "consistent"})).await;
    for (write, constraint) in [
        (
            "UPDATE generation_requests SET status = 'completed' WHERE id = $1",
            "generation_requests_finished_when_completed_at",
        ),
        (
            "UPDATE generation_requests SET completed_at = NOW() WHERE id = $1",
            "generation_requests_finished_when_completed_at",
        ),
        (
            "UPDATE generation_requests SET status = 'failed', completed_at = NOW() WHERE id = $1",
            "generation_requests_failures_have_an_error_code",
        ),
    ] {
        let refused = sqlx::query(write).bind(id).execute(&app.db.pool).await;
        let constraint_named = match &refused {
            Err(sqlx::Error::Database(e)) => e.constraint().map(str::to_owned),
            _ => None,
        };
        assert_eq!(constraint_named.as_deref(), Some(constraint), "{write}");
    }
}
