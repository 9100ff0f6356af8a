//! What could make a worker pay a provider twice or stall: a database that refuses the write
//! recording an answer for a moment, and an answer whose check against its JSON Schema costs
//! minutes of CPU.

use std::time::{Duration, Instant};

use llm_tests::fake_upstream::{FakeUpstream, openai};
use llm_tests::{
    app_with_worker, free_port, openai_flags, spawn_app_with_providers, spawn_worker_process,
};
use serde_json::{Value, json};

/// Makes the first `times` completing writes of a request in the test's database fail, as a
/// database blip would (a sequence counts them: it is not rolled back with the write).
async fn refuse_completions(pool: &sqlx::PgPool, times: i64) {
    let sql = format!(
        "CREATE SEQUENCE refused_completions;
         CREATE FUNCTION refuse_completion() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF nextval('refused_completions') <= {times} THEN
                 RAISE EXCEPTION 'the database is not taking writes just now';
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_completion BEFORE UPDATE ON generation_requests FOR EACH ROW
             WHEN (OLD.status = 'running' AND NEW.status = 'completed')
             EXECUTE FUNCTION refuse_completion();"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(pool)
        .await
        .unwrap();
}

async fn refused_so_far(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT last_value FROM refused_completions")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_answer_is_stored_through_a_database_blip_and_the_provider_is_paid_once() {
    let upstream = FakeUpstream::start("/v1").await;
    upstream.always(openai::success(
        "The dragon sleeps beneath the mountain.",
        9,
        7,
    ));
    let (app, worker) = app_with_worker(&openai_flags(&upstream)).await;
    refuse_completions(&app.db.pool, 6).await;

    let id = app
        .submit_ok(json!({"prompt": "Where is the dragon?", "model": "gpt-4o-mini"}))
        .await;
    let done = app.wait_final(id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"], "The dragon sleeps beneath the mountain.");
    assert!(
        refused_so_far(&app.db.pool).await >= 6,
        "the blip never happened"
    );
    assert_eq!(
        upstream.received().len(),
        1,
        "the provider was called again"
    );
    let history = done["attempt_history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "{done}");
    assert_eq!(history[0]["outcome"], "succeeded", "{done}");
    worker.stop().await;
}

#[tokio::test]
async fn an_answer_that_cannot_be_stored_in_time_is_recorded_and_the_request_runs_again() {
    let upstream = FakeUpstream::start("/v1").await;
    upstream.always(openai::success("The dragon sleeps.", 9, 4));
    let app = spawn_app_with_providers(&openai_flags(&upstream)).await;
    let flags = openai_flags(&upstream);
    let mut worker_flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    worker_flags.extend(["--result-retry-secs", "1"]);
    let worker = llm_tests::start_worker(&app.db, &worker_flags);
    refuse_completions(&app.db.pool, i64::MAX).await;

    let id = app
        .submit_ok(json!({"prompt": "Where is the dragon?", "model": "gpt-4o-mini"}))
        .await;
    let recorded =
        "SELECT COUNT(*) FROM generation_attempts WHERE error_kind = 'result_not_stored'";
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.db.count(recorded).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the lost answer was never recorded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sqlx::raw_sql("DROP TRIGGER refuse_completion ON generation_requests")
        .execute(&app.db.pool)
        .await
        .unwrap();

    let done = app.wait_final(id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "completed", "{done}");
    let history = done["attempt_history"].as_array().unwrap();
    assert_eq!(history[0]["outcome"], "failed", "{done}");
    assert_eq!(history[0]["error_kind"], "result_not_stored", "{done}");
    assert_eq!(history.last().unwrap()["outcome"], "succeeded", "{done}");
    assert_eq!(upstream.received().len(), 2);
    worker.stop().await;
}

#[tokio::test]
async fn an_answer_slow_to_validate_holds_up_neither_other_jobs_nor_metrics() {
    // A large array, each item checked against every branch of a wide `oneOf`: minutes of CPU.
    let upstream = FakeUpstream::start("/v1").await;
    let answer = format!("[{}1]", "1,".repeat(300_000));
    upstream.always(openai::success(&answer, 9, 300_000));
    let flags = openai_flags(&upstream);
    let app = spawn_app_with_providers(&flags).await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let _worker = spawn_worker_process(
        &app.db,
        &[
            ("OPENAI_API_KEY", flags[3].as_str()),
            ("OPENAI_BASE_URL", upstream.base_url.as_str()),
            ("WORKER_METRICS_LISTEN", metrics.as_str()),
            ("VALIDATION_TIMEOUT_MS", "6000"),
        ],
    );
    let mut branches = vec![json!({"type": "integer"})];
    branches.extend((0..2000).map(|_| json!({"type": "null"})));
    let schema = json!({"type": "array", "items": {"oneOf": branches}});
    let heavy = app
        .submit_ok(json!({"prompt": "Count to a lot", "model": "gpt-4o-mini",
            "parameters": {"response_format": {"type": "json_schema", "schema": schema}}}))
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while upstream.received().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the worker never called the provider"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The answer is being checked now: the same worker answers its metrics and runs other jobs.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let scrape = app
        .http
        .get(format!("http://{metrics}/metrics"))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(
        scrape.is_ok_and(|r| r.status().is_success()),
        "/metrics did not answer"
    );
    let light = app
        .submit_ok(json!({"prompt": "A short one", "model": "mock"}))
        .await;
    let (_, view) = app.poll(light, 3).await;
    assert_eq!(view["status"], "completed", "{view}");
    let (_, view) = app.poll(heavy, 0).await;
    assert_eq!(view["status"], "running", "{view}");

    let done: Value = app.wait_final(heavy, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error_code"], "validation_timeout", "{done}");
    assert_eq!(upstream.received().len(), 1, "a slow check is not retried");
}
