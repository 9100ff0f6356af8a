//! apalis' tables as the service's queue migrations (`migrations/queue/`) leave them.

use std::time::Duration;

use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// apalis acknowledges results by `lock_by = <worker>` with no status, so every job a worker
/// finished and still held would be read by each of its later acknowledgements. Finished jobs
/// let go of their worker: a worker holds only the jobs it runs.
#[tokio::test]
async fn finished_jobs_hold_no_worker_and_no_index_is_kept_twice() {
    let (app, worker) = llm_tests::app_with_worker(&[]).await;
    let bodies = (0..40)
        .map(|n| json!({"prompt": format!("job {n}"), "cache": {"no_cache": true}}))
        .collect();
    app.complete_and_acknowledge(bodies, WAIT).await;
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

/// apalis' acknowledgement of results (apalis-postgres 1.0, `queries/task/handle_result.sql`),
/// as it runs it.
const APALIS_ACK: &str = "WITH j AS (
    SELECT (value ->> 'task_id')::text AS task_id, (value ->> 'attempt')::integer AS attempt,
           value -> 'result' AS result, value ->> 'status' AS status
    FROM jsonb_array_elements($1::jsonb) AS value
),
locked AS (
    SELECT jobs.id FROM apalis.jobs AS jobs
    INNER JOIN j ON j.task_id = jobs.id
    WHERE jobs.lock_by = $2
    ORDER BY jobs.id
    FOR UPDATE
)
UPDATE apalis.jobs AS jobs
SET status = j.status, attempts = j.attempt, last_result = j.result, done_at = NOW()
FROM j
INNER JOIN locked ON locked.id = j.task_id
WHERE jobs.id = locked.id";

/// Every job a worker fetched leaves an entry for its worker in apalis' `lock_by` index until
/// a vacuum. The acknowledgement reads that index; through a bitmap it visited the heap for
/// each of those entries at every call. On the worker's queue connections (`db::queue_pool`)
/// it reads the index with a plain scan, which marks the entries of dead rows as it meets
/// them, so that later scans skip them.
#[tokio::test]
async fn apalis_acknowledges_through_a_plain_index_scan() {
    let app = llm_tests::spawn_app().await;
    let pool = &app.db.pool;
    // Two workers' history, as a busy queue has it between two vacuums: 20,000 jobs fetched by
    // them in turn, each leaving an entry for its worker in the lock_by index, all done but one
    // in 40.
    sqlx::query(
        "INSERT INTO apalis.workers (id, worker_type, storage_name, layers, last_seen)
         VALUES ('w', $1, 'PostgresStorage', '', NOW()), ('v', $1, 'PostgresStorage', '', NOW())",
    )
    .bind(llm_shared::queue::QUEUE)
    .execute(pool)
    .await
    .unwrap();
    sqlx::raw_sql("ALTER TABLE apalis.jobs SET (autovacuum_enabled = false)")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at,
                                  priority, lock_by)
         SELECT 'job-' || g, $1, '\\x00', 'Running', 1, 5, NOW(), 0,
                CASE WHEN g % 2 = 0 THEN 'w' ELSE 'v' END
         FROM generate_series(1, 20000) g",
    )
    .bind(llm_shared::queue::QUEUE)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("UPDATE apalis.jobs SET status = 'Done' WHERE substr(id, 5)::int % 40 <> 0")
        .execute(pool)
        .await
        .unwrap();
    sqlx::raw_sql("ANALYZE apalis.jobs")
        .execute(pool)
        .await
        .unwrap();

    // apalis' statements are prepared: after a few runs PostgreSQL keeps a generic plan. (In a
    // 10,000-job drain the planner chose a bitmap over that index; on a table this fresh it
    // may not, so the settings themselves are checked too.)
    let queue_pool = llm_shared::db::queue_pool(pool, 1);
    let mut conn = queue_pool.acquire().await.unwrap();
    let bitmaps: String = sqlx::query_scalar("SHOW enable_bitmapscan")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(
        bitmaps, "off",
        "the queue's connections may plan bitmap scans"
    );
    let plan = llm_tests::generic_plan(&mut conn, APALIS_ACK).await;
    assert!(
        !plan.contains("Bitmap") && !plan.contains("Seq Scan"),
        "on the queue's connections the acknowledgement reads apalis.jobs other than by plain \
         index scans:\n{plan}"
    );
}

/// A statement that queues many jobs wakes the workers once: one notification in apalis'
/// payload format (its listener parses it), naming one of the jobs. apalis' own trigger sent
/// one per job, each read by every listening worker only to wake it.
#[tokio::test]
async fn a_statement_queueing_many_jobs_is_announced_once() {
    let app = llm_tests::spawn_app().await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&app.db.pool)
        .await
        .unwrap();
    listener.listen("apalis::job::insert").await.unwrap();
    let items: Vec<_> = (0..20)
        .map(|n| json!({"prompt": format!("announced {n}")}))
        .collect();
    let (_, accepted) = app
        .post_json("/api/v1/generate/batch", &json!({ "items": items }))
        .await;
    let jobs: Vec<String> = accepted["request_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| {
            let id = id.as_str().unwrap().parse().unwrap();
            llm_shared::queue::job_id_for(id).to_string()
        })
        .collect();
    assert_eq!(jobs.len(), 20, "{accepted}");

    let notice = tokio::time::timeout(WAIT, listener.recv())
        .await
        .expect("no notification")
        .unwrap();
    let payload: serde_json::Value = serde_json::from_str(notice.payload()).unwrap();
    assert_eq!(payload["job_type"], llm_shared::queue::QUEUE);
    assert!(
        jobs.iter().any(|job| payload["id"] == job.as_str()),
        "{payload}"
    );
    let another = tokio::time::timeout(Duration::from_millis(500), listener.recv()).await;
    assert!(another.is_err(), "a second notification: {another:?}");
}

/// A waker that counts its wake-ups, for driving a poll strategy by hand.
#[derive(Default)]
struct Count(std::sync::atomic::AtomicUsize);

impl std::task::Wake for Count {
    fn wake(self: std::sync::Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A run handed back to the queue for a provider's `Retry-After` (longer than the registry's
/// `reschedule_after_secs`, 5) runs again when it comes due, though nothing announces it and
/// the worker's fallback tick is minutes away.
#[tokio::test]
async fn a_run_put_back_for_a_retry_after_runs_again_when_due_without_waiting_for_the_tick() {
    use llm_tests::fake_upstream::{FakeUpstream, openai};
    let upstream = FakeUpstream::start("/v1").await;
    upstream.then(openai::error(429, "Slow down", Some("6")));
    upstream.always(openai::success("Again, in time.", 3, 4));
    let flags = llm_tests::openai_flags(&upstream);
    let app = llm_tests::spawn_app_with_providers(&flags).await;
    let _worker = llm_tests::spawn_worker_process(
        &app.db,
        &[
            ("OPENAI_API_KEY", flags[3].as_str()),
            ("OPENAI_BASE_URL", upstream.base_url.as_str()),
            ("WORKER_POLL_MS", "600000"),
        ],
    );
    let started = std::time::Instant::now();
    let id = app
        .submit_ok(json!({"prompt": "Retry me later", "model": "gpt-4o-mini"}))
        .await;
    let done: serde_json::Value = app.wait_final(id, WAIT).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(upstream.received().len(), 2);
    let took = started.elapsed();
    assert!(
        (Duration::from_secs(6)..Duration::from_secs(12)).contains(&took),
        "ran again after {took:?}"
    );
}

/// A job this worker put back (a rescheduled run, batch jobs held back by a fetch pause) is
/// announced to no one: the worker looks for it when it comes due, not at its next tick (an
/// hour here), and at each due time once.
#[tokio::test]
async fn a_job_put_back_wakes_the_worker_when_it_comes_due() {
    use apalis::prelude::{PollSnapshot, PollStrategy};
    use std::sync::atomic::Ordering;
    use std::task::{Context, Poll, Waker};

    let wakeups = llm_shared::queue::Wakeups::default();
    let mut strategy =
        llm_shared::queue::WakeStrategy::new(wakeups.clone(), Duration::from_secs(3600));
    let wakes = std::sync::Arc::new(Count::default());
    let waker = Waker::from(wakes.clone());
    let mut cx = Context::from_waker(&waker);
    let snapshot = PollSnapshot::default();
    assert_eq!(strategy.poll_drive(&mut cx, &snapshot), Poll::Pending);
    let started = tokio::time::Instant::now();
    wakeups.due_in(Duration::from_millis(600));
    wakeups.due_in(Duration::from_millis(300));
    for due in [300, 600] {
        // Woken (by the due time, or by its being recorded) until a poll reports it.
        loop {
            let woken = wakes.0.load(Ordering::SeqCst);
            if strategy.poll_drive(&mut cx, &snapshot) == Poll::Ready(Some(())) {
                break;
            }
            let waited = tokio::time::Instant::now();
            while wakes.0.load(Ordering::SeqCst) == woken {
                assert!(
                    waited.elapsed() < WAIT,
                    "not woken for the job due in {due} ms"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        assert!(
            started.elapsed() >= Duration::from_millis(due),
            "announced at {:?}, before the job due in {due} ms",
            started.elapsed()
        );
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(strategy.poll_drive(&mut cx, &snapshot), Poll::Pending);
}

/// A job's announcement wakes the worker's task once: the strategy reports it on the poll
/// after it, and the poll after that has nothing new (the fetch itself decides whether to go to
/// the database: `queue::backend`).
#[tokio::test]
async fn a_notification_wakes_the_worker_once() {
    use apalis::prelude::{PollSnapshot, PollStrategy};
    use std::sync::atomic::Ordering;
    use std::task::{Context, Poll, Waker};

    let test = llm_tests::TestDb::new().await;
    let wakeups = llm_shared::queue::Wakeups::default();
    let listener = llm_shared::listener::Listener::default()
        .on(llm_shared::queue::CHANNEL, wakeups.handler())
        .run(test.pool.clone());
    let listener = tokio::spawn(listener);
    let mut strategy = llm_shared::queue::WakeStrategy::new(wakeups, Duration::from_secs(3600));
    let wakes = std::sync::Arc::new(Count::default());
    let waker = Waker::from(wakes.clone());
    let mut cx = Context::from_waker(&waker);
    let snapshot = PollSnapshot::default();
    assert_eq!(strategy.poll_drive(&mut cx, &snapshot), Poll::Pending);
    let payload = json!({"job_type": llm_shared::queue::QUEUE, "id": llm_shared::queue::job_id_for(uuid::Uuid::now_v7()).to_string(),
                         "run_at": "2026-01-01T00:00:00Z"});
    // Notified again until the listener, connecting meanwhile, hears one.
    let deadline = tokio::time::Instant::now() + WAIT;
    while wakes.0.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no notification woke the task"
        );
        sqlx::query("SELECT pg_notify('apalis::job::insert', $1)")
            .bind(payload.to_string())
            .execute(&test.pool)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    listener.abort();
    let _ = listener.await;
    assert_eq!(
        strategy.poll_drive(&mut cx, &snapshot),
        Poll::Ready(Some(()))
    );
    let woken = wakes.0.load(Ordering::SeqCst);
    assert_eq!(strategy.poll_drive(&mut cx, &snapshot), Poll::Pending);
    assert_eq!(wakes.0.load(Ordering::SeqCst), woken, "no wake-up owed");
}

/// Jobs that finish one after another are acknowledged together, once the first has waited
/// `WORKER_ACK_DELAY_MS` (four seconds here): their requests are answered meanwhile, their jobs
/// left locked by the worker that ran them, and then all marked done by one write.
#[tokio::test]
async fn finished_jobs_are_acknowledged_together_after_the_delay() {
    let app = llm_tests::spawn_app().await;
    let _worker = llm_tests::spawn_worker_process(&app.db, &[("WORKER_ACK_DELAY_MS", "4000")]);
    let started = std::time::Instant::now();
    for n in 0..3 {
        let id = app
            .submit_ok(json!({"prompt": format!("ack me later {n}")}))
            .await;
        let done: serde_json::Value = app.wait_final(id, WAIT).await;
        assert_eq!(done["status"], "completed", "{done}");
    }
    if started.elapsed() < Duration::from_secs(3) {
        assert_eq!(
            app.db
                .count("SELECT COUNT(*) FROM apalis.jobs WHERE status = 'Done'")
                .await,
            0,
            "acknowledged before the delay"
        );
    }
    app.wait_acknowledged(WAIT).await;
    assert_eq!(
        app.db
            .count("SELECT COUNT(DISTINCT done_at) FROM apalis.jobs")
            .await,
        1,
        "one write for the three"
    );
}

/// A worker told to stop writes the acknowledgements still waiting before it exits, however
/// long they had left to wait.
#[tokio::test]
async fn a_stopping_worker_writes_the_acknowledgements_still_waiting() {
    let app = llm_tests::spawn_app().await;
    let mut worker = llm_tests::spawn_worker_process(&app.db, &[("WORKER_ACK_DELAY_MS", "600000")]);
    let id = app
        .submit_ok(json!({"prompt": "ack me on the way out"}))
        .await;
    let done: serde_json::Value = app.wait_final(id, WAIT).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM apalis.jobs WHERE status = 'Done'")
            .await,
        0,
        "acknowledged before the delay"
    );
    llm_tests::signal(&worker, libc::SIGTERM);
    let status = tokio::time::timeout(WAIT, worker.wait())
        .await
        .expect("the worker exits")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM apalis.jobs WHERE status = 'Done'")
            .await,
        1
    );
}
