//! Submit → worker → poll through the real router, with in-process workers.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::future::join_all;
use llm_shared::cache::{CacheScope, CachedResponse};
use llm_shared::error::DomainError;
use llm_shared::generation::GenerationParams;
use llm_shared::requests::{self, Durability, GenerateBody, Insert, NewRequest};
use llm_tests::{registry, spawn_app, start_worker, worker_config, worker_models};
use llm_worker::WorkerState;
use llm_worker::job;
use llm_worker::providers::{GenerationInput, MockProvider, Provider};
use serde_json::json;
use uuid::Uuid;

#[tokio::test]
async fn submit_is_processed_by_a_worker_and_polled_back() {
    let app = spawn_app().await;
    let worker = start_worker(&app.db, &[]);

    let response = app
        .http
        .post(app.url("/api/v1/generate"))
        .bearer_auth(app.token())
        .json(&json!({"prompt": "Name a halfling bard", "parameters": {"max_tokens": 12}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: serde_json::Value = response.json().await.unwrap();
    let id: Uuid = body["request_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(body["status"], "pending");
    assert_eq!(location, format!("/api/v1/generate/{id}"));
    assert_eq!(body["poll_url"], location);

    let done = app.wait_final(id, Duration::from_secs(20)).await;
    let expected = MockProvider::default()
        .generate(&GenerationInput {
            prompt: "Name a halfling bard".into(),
            params: GenerationParams {
                max_tokens: Some(12),
                ..Default::default()
            },
            upstream_model: "mock-1".into(),
            attempt: 1,
            mock: None,
        })
        .await
        .unwrap();
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"], expected.text);
    assert_eq!(done["provider"], "mock");
    assert_eq!(done["model"], "mock");
    assert_eq!(done["provider_model"], "mock-1");
    assert_eq!(done["completion_tokens"], 12);
    assert_eq!(
        done["tokens_used"],
        done["prompt_tokens"].as_i64().unwrap() + 12
    );
    assert_eq!(done["attempts"], 1);
    assert!(done["completed_at"].is_string() && done["started_at"].is_string());
    let history = done["attempt_history"].as_array().unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["outcome"], "succeeded");
    assert_eq!(history[0]["provider"], "mock");
    worker.stop().await;
}

#[tokio::test]
async fn long_poll_returns_when_the_request_finishes_not_before() {
    let app = spawn_app().await;
    let id = app
        .submit_ok(json!({"prompt": "slow one", "mock": {"latency_ms": 800}}))
        .await;

    // No worker yet: a bounded wait returns the pending request when its time is up.
    let started = Instant::now();
    let (status, body) = app.poll(id, 1).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "pending");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "returned after {:?}",
        started.elapsed()
    );

    let worker = start_worker(&app.db, &[]);
    let started = Instant::now();
    let (_, body) = app.poll(id, 20).await;
    assert_eq!(body["status"], "completed", "{body}");
    // Woken by the completion notice: well before the 20 s wait is over.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    worker.stop().await;
}

#[tokio::test]
async fn idempotency_key_returns_the_same_request() {
    let app = spawn_app().await;
    let send = |key: &'static str, prompt: &'static str, user: Uuid| {
        let request = app
            .http
            .post(app.url("/api/v1/generate"))
            .bearer_auth(app.token_for(user))
            .header("Idempotency-Key", key)
            // The cache would answer the second user from the first: keep it out of this test.
            .json(&json!({"prompt": prompt, "cache": {"no_cache": true}}));
        async move {
            let r = request.send().await.unwrap();
            let replayed = r.headers().get("idempotent-replayed").is_some();
            (
                r.status().as_u16(),
                replayed,
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let (s1, replay1, first) = send("key-1", "a rogue", app.user).await;
    let (s2, replay2, second) = send("key-1", "a rogue", app.user).await;
    assert_eq!((s1, s2), (202, 202));
    assert!(!replay1 && replay2);
    assert_eq!(first["request_id"], second["request_id"]);
    assert_eq!(second["idempotent_replay"], true);

    // Same key, different request: a conflict, not a silent replay.
    let (s3, _, conflict) = send("key-1", "a paladin", app.user).await;
    assert_eq!(s3, 409);
    assert_eq!(conflict["error"]["code"], "conflict");

    // Keys are per user.
    let (s4, _, other) = send("key-1", "a rogue", Uuid::now_v7()).await;
    assert_eq!(s4, 202);
    assert_ne!(other["request_id"], first["request_id"]);

    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_requests")
            .await,
        2
    );
    assert_eq!(app.db.count("SELECT COUNT(*) FROM apalis.jobs").await, 2);
}

#[tokio::test]
async fn concurrent_idempotent_submits_create_one_request() {
    let app = spawn_app().await;
    let sends = (0..20).map(|_| {
        app.http
            .post(app.url("/api/v1/generate"))
            .bearer_auth(app.token())
            .header("Idempotency-Key", "same")
            .json(&json!({"prompt": "once"}))
            .send()
    });
    let mut ids = HashSet::new();
    for response in join_all(sends).await {
        let response = response.unwrap();
        assert_eq!(response.status(), 202);
        ids.insert(response.headers()["location"].to_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_requests")
            .await,
        1
    );
    assert_eq!(app.db.count("SELECT COUNT(*) FROM apalis.jobs").await, 1);
}

#[tokio::test]
async fn two_hundred_concurrent_submits_all_complete_exactly_once() {
    let app = spawn_app().await;
    let workers = [start_worker(&app.db, &[]), start_worker(&app.db, &[])];
    let submits = (0..200).map(|i| app.submit(json!({"prompt": format!("character #{i}")})));
    let ids: Vec<Uuid> = join_all(submits)
        .await
        .into_iter()
        .map(|(status, body)| {
            assert_eq!(status, 202, "{body}");
            body["request_id"].as_str().unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 200);

    let deadline = Instant::now() + Duration::from_secs(60);
    while app
        .db
        .count("SELECT COUNT(*) FROM generation_requests WHERE status = 'completed'")
        .await
        < 200
    {
        assert!(
            Instant::now() < deadline,
            "not all requests completed in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Exactly once: one provider call per request, each recorded as the one success.
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_attempts")
            .await,
        200
    );
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM (SELECT request_id FROM generation_attempts WHERE outcome = 'succeeded' GROUP BY request_id HAVING COUNT(*) = 1) s")
            .await,
        200
    );
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_requests WHERE attempts <> 1")
            .await,
        0
    );
    for w in workers {
        w.stop().await;
    }
}

fn new_request(user: Uuid, prompt: &str) -> NewRequest {
    let body: GenerateBody = serde_json::from_value(json!({"prompt": prompt})).unwrap();
    NewRequest::validate(body, user, None, &registry(&[]), 5, CacheScope::User).unwrap()
}

/// A request whose id ends in `last_byte` (the usage counters' shard is taken from it).
fn with_id_ending(mut new: NewRequest, last_byte: u8) -> NewRequest {
    let mut bytes = *Uuid::now_v7().as_bytes();
    bytes[15] = last_byte;
    new.id = Uuid::from_bytes(bytes);
    new
}

fn hit() -> CachedResponse {
    CachedResponse {
        response: "from the cache".into(),
        provider: Some("mock".into()),
        provider_model: Some("mock-1".into()),
        served_model: Some("mock".into()),
        prompt_tokens: Some(3),
        completion_tokens: Some(4),
        finish_reason: Some("stop".into()),
        tool_calls: None,
    }
}

/// A submit whose caller answers only with the request's outcome commits without waiting for
/// the disk, and says so (its caller makes it durable before naming it unfinished); any other
/// submit waits. Both store the request with its job.
#[tokio::test]
async fn a_submit_answered_with_its_outcome_commits_without_waiting_for_the_disk() {
    let app = spawn_app().await;
    let submitter = requests::Submitter::new(app.db.pool.clone(), None);
    for (durability, prompt, waits) in [
        (Durability::WithOutcome, "awaited", false),
        (Durability::AtSubmit, "named at once", true),
    ] {
        let submitted = submitter
            .store(new_request(app.user, prompt), Insert::Queued, durability)
            .await
            .unwrap();
        assert_eq!(submitted.durable, waits, "{durability:?}");
        let jobs: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM generation_requests r JOIN apalis.jobs j ON j.id = r.job_id
             WHERE r.id = $1 AND r.status = 'pending'",
        )
        .bind(submitted.id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        assert_eq!(
            jobs, 1,
            "the {durability:?} submit is not stored with its job"
        );
    }
}

/// Group commit stores many submits in one statement: each row gets its own fate (queued with
/// its job, replayed or refused by its idempotency key, a cache hit with its usage, a follower
/// without a job), and rows that share a usage counter or a key do not break the statement.
#[tokio::test]
async fn one_statement_stores_a_mixed_batch_each_row_with_its_own_answer() {
    let app = spawn_app().await;
    let mut conn = app.db.pool.acquire().await.unwrap();
    let mut leader = new_request(app.user, "shared prompt");
    leader.cache_key = Some("key-in-flight".into());
    let leader_id = requests::insert_with_job(&mut conn, &leader)
        .await
        .unwrap()
        .id;

    let queued = new_request(app.user, "plain");
    let mut keyed = new_request(app.user, "keyed");
    keyed.idempotency_key = Some("k-1".into());
    let mut same_again = new_request(app.user, "keyed");
    same_again.idempotency_key = Some("k-1".into());
    let mut other_body = new_request(app.user, "something else");
    other_body.idempotency_key = Some("k-1".into());
    let hit_a = with_id_ending(new_request(app.user, "cached"), 0x13);
    let hit_b = with_id_ending(new_request(app.user, "cached"), 0x23);
    let mut follower = new_request(app.user, "shared prompt");
    follower.cache_key = Some("key-in-flight".into());
    // Entries the fast copy lacks: one live in the table, one expired.
    sqlx::query(
        "INSERT INTO response_cache (cache_key, response, prompt, model, expires_at, metadata)
         VALUES ('key-in-table', 'stored answer', 'p', 'mock', NULL,
                 '{\"provider\": \"mock\", \"prompt_tokens\": 2, \"completion_tokens\": 5}'),
                ('key-expired', 'stale answer', 'p', 'mock', NOW() - interval '1 second', '{}')",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    let mut from_table = with_id_ending(new_request(app.user, "in the table"), 0x33);
    from_table.cache_key = Some("key-in-table".into());
    let mut expired = new_request(app.user, "expired");
    expired.cache_key = Some("key-expired".into());
    let (queued_how, hit_how) = (Insert::Queued, Insert::CacheHit(hit()));
    let rows = [
        (&queued, &queued_how),
        (&keyed, &queued_how),
        (&same_again, &queued_how),
        (&other_body, &queued_how),
        (&hit_a, &hit_how),
        (&hit_b, &hit_how),
        (&follower, &Insert::CachedOrQueued),
        (&from_table, &Insert::CachedOrQueued),
        (&expired, &Insert::CachedOrQueued),
    ];
    let answers = requests::insert_many(&mut conn, &rows, requests::Notice::Id)
        .await
        .unwrap();
    assert_eq!(answers.len(), rows.len());
    let ok = |i: usize| answers[i].as_ref().unwrap();
    assert!(!ok(0).replayed && ok(0).id == queued.id);
    assert!(!ok(1).replayed && ok(1).id == keyed.id);
    assert!(
        ok(2).replayed,
        "the same body under the same key is the first request"
    );
    assert_eq!(ok(2).id, keyed.id);
    assert!(
        matches!(answers[3], Err(DomainError::Conflict(_))),
        "{:?}",
        answers[3]
    );
    assert_eq!(ok(4).status, requests::Status::Completed);
    assert_eq!(ok(5).status, requests::Status::Completed);
    assert_eq!(ok(6).id, follower.id);
    assert_eq!(ok(6).cache_hit, Some(false));
    assert_eq!(ok(7).status, requests::Status::Completed);
    assert_eq!(ok(7).cache_hit, Some(true), "answered from the cache table");
    assert_eq!(
        ok(8).status,
        requests::Status::Pending,
        "an expired entry answers nothing"
    );
    let (result, tokens): (Option<String>, Option<i32>) =
        sqlx::query_as("SELECT result, tokens_used FROM generation_requests WHERE id = $1")
            .bind(from_table.id)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(
        (result.as_deref(), tokens),
        (Some("stored answer"), Some(7))
    );

    let coalesced: Option<Uuid> =
        sqlx::query_scalar("SELECT coalesced_into FROM generation_requests WHERE id = $1")
            .bind(follower.id)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(coalesced, Some(leader_id));
    // Jobs for the leader, `queued`, `keyed` and `expired`; none for the hits, the follower or
    // the refused.
    assert_eq!(app.db.count("SELECT COUNT(*) FROM apalis.jobs").await, 4);
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_requests")
            .await,
        8
    );
    // The three hits share one usage counter (same user, model, day and shard): all counted.
    let (requests_counted, cached): (i64, i64) = sqlx::query_as(
        "SELECT SUM(requests)::bigint, SUM(cached_requests)::bigint FROM usage_daily WHERE user_id = $1",
    )
    .bind(app.user)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!((requests_counted, cached), (3, 3));
    assert_eq!(app.db.count("SELECT COUNT(*) FROM usage_daily").await, 1);
}

#[tokio::test]
async fn a_rolled_back_submit_leaves_neither_row_nor_job() {
    let app = spawn_app().await;
    let mut tx = app.db.pool.begin().await.unwrap();
    requests::insert_with_job(&mut tx, &new_request(app.user, "never"))
        .await
        .unwrap();
    // Inside the transaction both exist ...
    let inside: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM generation_requests) + (SELECT COUNT(*) FROM apalis.jobs)",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(inside, 2);
    tx.rollback().await.unwrap();
    // ... and after the rollback neither does.
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_requests")
            .await,
        0
    );
    assert_eq!(app.db.count("SELECT COUNT(*) FROM apalis.jobs").await, 0);

    let mut tx = app.db.pool.begin().await.unwrap();
    let submitted = requests::insert_with_job(&mut tx, &new_request(app.user, "kept"))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let job_id: String = sqlx::query_scalar("SELECT job_id FROM generation_requests WHERE id = $1")
        .bind(submitted.id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(
        app.db
            .count(&format!(
                "SELECT COUNT(*) FROM apalis.jobs WHERE id = '{job_id}'"
            ))
            .await,
        1
    );
}

#[tokio::test]
async fn a_duplicate_delivery_does_not_run_the_request_twice() {
    let app = spawn_app().await;
    let id = app
        .submit_ok(json!({"prompt": "twice?", "mock": {"latency_ms": 500}}))
        .await;
    let config = worker_config(&app.db.url, &[]);
    let models = worker_models(&config);
    let a = WorkerState::new(
        app.db.pool.clone(),
        "worker-a".into(),
        &config,
        models.clone(),
        None,
        None,
        None,
    );
    let b = WorkerState::new(
        app.db.pool.clone(),
        "worker-b".into(),
        &config,
        models,
        None,
        None,
        None,
    );

    // The same job delivered to two workers at once, then once more after it finished.
    let (ra, rb) = tokio::join!(job::process(&a, id), job::process(&b, id));
    ra.unwrap();
    rb.unwrap();
    job::process(&a, id).await.unwrap();

    let done = app.wait_final(id, Duration::from_secs(5)).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["attempt_history"].as_array().unwrap().len(), 1);
    assert_eq!(
        app.db
            .count("SELECT SUM(requests)::bigint FROM usage_daily")
            .await,
        1
    );
}

#[tokio::test]
async fn transient_failures_are_retried_and_recorded() {
    let app = spawn_app().await;
    let worker = start_worker(&app.db, &[]);
    let id = app
        .submit_ok(json!({"prompt": "flaky", "mock": {"fail": "transient", "fail_attempts": 2}}))
        .await;
    let done = app.wait_final(id, Duration::from_secs(20)).await;
    assert_eq!(done["status"], "completed", "{done}");
    // Retried inside one run (one claim), each provider call recorded.
    assert_eq!(done["attempts"], 1);
    let outcomes: Vec<_> = done["attempt_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].clone())
        .collect();
    assert_eq!(
        outcomes,
        vec![json!("failed"), json!("failed"), json!("succeeded")]
    );
    assert_eq!(done["attempt_history"][0]["error_kind"], "transient");
    assert_eq!(done["attempt_history"][0]["http_status"], 503);
    worker.stop().await;
}

#[tokio::test]
async fn permanent_failures_fail_at_once_with_the_error() {
    let app = spawn_app().await;
    let worker = start_worker(&app.db, &[]);
    let id = app
        .submit_ok(json!({"prompt": "broken", "mock": {"fail": "permanent"}}))
        .await;
    let done = app.wait_final(id, Duration::from_secs(20)).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["error_code"], "rejected");
    assert_eq!(done["error_message"], "mock permanent failure");
    assert!(done["result"].is_null());

    // Transient failures that never stop end `failed` once the model's calls are used up
    // (three per model; the mock model has no fallback).
    let id = app
        .submit_ok(json!({"prompt": "always down", "mock": {"fail": "transient"}}))
        .await;
    let done = app.wait_final(id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["attempts"], 1);
    assert_eq!(done["attempt_history"].as_array().unwrap().len(), 3);
    assert_eq!(done["error_code"], "transient");
    worker.stop().await;
}

#[tokio::test]
async fn a_request_whose_workers_keep_dying_ends_failed() {
    let app = spawn_app().await;
    let id = app.submit_ok(json!({"prompt": "poison"})).await;
    // As if four workers had claimed it and died: attempts used up, lease expired.
    sqlx::query(
        "UPDATE generation_requests SET status = 'running', attempts = max_attempts,
             claimed_by = 'dead-worker', lease_expires_at = NOW() - INTERVAL '1 second'
         WHERE id = $1",
    )
    .bind(id)
    .execute(&app.db.pool)
    .await
    .unwrap();
    let config = worker_config(&app.db.url, &[]);
    let state = WorkerState::new(
        app.db.pool.clone(),
        "survivor".into(),
        &config,
        worker_models(&config),
        None,
        None,
        None,
    );
    job::process(&state, id).await.unwrap();

    let done = app.wait_final(id, Duration::from_secs(5)).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["error_code"], "attempts_exhausted");
}

#[tokio::test]
async fn provider_calls_time_out_inside_the_handler() {
    let app = spawn_app().await;
    let id = app
        .submit_ok(json!({"prompt": "too slow", "mock": {"latency_ms": 10000}}))
        .await;
    let worker = start_worker(&app.db, &["--provider-timeout-secs", "1"]);
    let done = app.wait_final(id, Duration::from_secs(20)).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error_code"], "timeout");
    let history = done["attempt_history"].as_array().unwrap();
    assert_eq!(
        history.len(),
        3,
        "three calls to the model, each cut at 1 s"
    );
    for attempt in history {
        assert_eq!(attempt["error_kind"], "timeout");
        let latency = attempt["latency_ms"].as_i64().unwrap();
        assert!((1000..3000).contains(&latency), "latency {latency} ms");
    }
    worker.stop().await;
}
