//! apalis' tables as the service's queue migrations (`migrations/queue/`) leave them.

use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

/// apalis acknowledges results by `lock_by = <worker>` with no status, so every job a worker
/// finished and still held would be read by each of its later acknowledgements. Finished jobs
/// let go of their worker: a worker holds only the jobs it runs.
#[tokio::test]
async fn finished_jobs_hold_no_worker_and_no_index_is_kept_twice() {
    let (app, worker) = llm_tests::app_with_worker(&[]).await;
    let ids: Vec<Uuid> = futures::future::join_all((0..40).map(|n| {
        app.submit_ok(json!({"prompt": format!("job {n}"), "cache": {"no_cache": true}}))
    }))
    .await;
    for id in &ids {
        let done = app.wait_final(*id, WAIT).await;
        assert_eq!(done["status"], "completed", "{done}");
    }
    // The acknowledgement follows the completing write: wait for every job to be Done.
    let deadline = tokio::time::Instant::now() + WAIT;
    while app
        .db
        .count("SELECT COUNT(*) FROM apalis.jobs WHERE status <> 'Done'")
        .await
        > 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "jobs not acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM apalis.jobs WHERE lock_by IS NOT NULL")
            .await,
        0,
        "finished jobs still name the worker that ran them"
    );
    // A job being run still names its worker (re-queueing a dead worker's jobs needs it).
    let running = app.submit_ok(json!({"prompt": "still running"})).await;
    worker.stop().await;
    let job = llm_shared::queue::job_id_for(running).to_string();
    let still_named: i64 = sqlx::query_scalar(
        "WITH w AS (SELECT id FROM apalis.workers LIMIT 1)
         UPDATE apalis.jobs SET lock_by = (SELECT id FROM w), status = 'Running'
         WHERE id = $1 RETURNING (lock_by IS NOT NULL)::int::int8",
    )
    .bind(&job)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(still_named, 1);

    let duplicates = app
        .db
        .count(
            "SELECT COUNT(*) FROM (
                 SELECT 1 FROM pg_index i
                 WHERE i.indrelid = 'apalis.jobs'::regclass
                 GROUP BY i.indkey::text, i.indisunique, COALESCE(pg_get_expr(i.indpred, i.indrelid), '')
                 HAVING COUNT(*) > 1
             ) d",
        )
        .await;
    assert_eq!(duplicates, 0, "apalis.jobs keeps an index twice");
}
