//! Thousands of calls in flight on one worker: claims, completions and lease renewals of
//! the same rows run concurrently, in batches, and must neither deadlock nor let a lease lapse.

use std::time::{Duration, Instant};

use llm_tests::{TestApp, spawn_app, spawn_worker_process};
use serde_json::{Value, json};

/// Deadlocks PostgreSQL has detected in this test's database so far.
async fn deadlocks(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

/// LOCK_ORDER (`claim_many.sql`) and the worker's bounded lease renewals: 2,000 slow calls at
/// once on one worker whose 3 s lease is renewed every second while claims and completions of
/// the same rows go on. Renewing in the order the running set happened to hold and completing
/// in the order calls ended locked shared rows in opposite orders: PostgreSQL aborted one of
/// each pair as a deadlock.
#[tokio::test]
async fn a_worker_runs_two_thousand_slow_calls_at_once_without_deadlock_or_lost_lease() {
    const CALLS: usize = 2_000;
    let app = spawn_app().await;
    let before = deadlocks(&app).await;
    for chunk in 0..CALLS / 400 {
        // Calls of 2.5 to 4.5 s: completions go on all the time, between and during renewals.
        let items: Vec<Value> = (0..400)
            .map(|i| {
                json!({"prompt": format!("slow call {chunk}/{i}"), "parameters": {"max_tokens": 4},
                       "mock": {"latency_ms": 2500 + (i % 50) * 40}})
            })
            .collect();
        let (status, body) = app
            .post_json("/api/v1/generate/batch", &json!({"items": items}))
            .await;
        assert_eq!(status, 202, "{body}");
    }
    let mut worker = spawn_worker_process(
        &app.db,
        &[("WORKER_CONCURRENCY", "2500"), ("WORKER_LEASE_SECS", "3")],
    );

    let started = Instant::now();
    let mut most_running = 0;
    loop {
        let running = app
            .db
            .count("SELECT COUNT(*) FROM generation_requests WHERE status = 'running'")
            .await;
        most_running = most_running.max(running);
        let left = app
            .db
            .count(
                "SELECT COUNT(*) FROM generation_requests WHERE status IN ('pending', 'running')",
            )
            .await;
        if left == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{left} requests still unfinished"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The worker's connections report their statistics as they close.
    let _ = worker.kill().await;
    let _ = worker.wait().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    assert!(
        most_running >= 1_000,
        "only {most_running} calls were in flight at once"
    );
    let completed = app
        .db
        .count("SELECT COUNT(*) FROM generation_requests WHERE status = 'completed'")
        .await;
    assert_eq!(completed, CALLS as i64);
    // Every lease held: no request was claimed twice, no attempt abandoned.
    let claimed_again = app
        .db
        .count("SELECT COUNT(*) FROM generation_requests WHERE attempts <> 1")
        .await;
    let abandoned = app
        .db
        .count("SELECT COUNT(*) FROM generation_attempts WHERE outcome <> 'succeeded'")
        .await;
    assert_eq!((claimed_again, abandoned), (0, 0), "leases lapsed");
    assert_eq!(
        deadlocks(&app).await - before,
        0,
        "PostgreSQL detected deadlocks"
    );
}
