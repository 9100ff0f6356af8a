//! The response cache: hits without a provider call (from Redis or, when Redis lost them, from
//! the table), TTL, invalidation, per-request controls, and coalescing of identical requests.

use std::time::Duration;

use llm_tests::fake_upstream::{self, FakeUpstream, Reply};
use llm_tests::{
    TestApp, redis_url, spawn_app, spawn_app_with, spawn_app_with_providers, start_worker,
};
use serde_json::{Value, json};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

async fn openai_app() -> (FakeUpstream, TestApp, Vec<String>) {
    let openai = FakeUpstream::start("/v1").await;
    openai.always(fake_upstream::openai::success("A cached answer.", 12, 4));
    let flags = llm_tests::openai_flags(&openai);
    let app = spawn_app_with_providers(&flags).await;
    (openai, app, flags)
}

/// Submits and waits for the final state; returns the submit status and the final view.
async fn ask(app: &TestApp, body: Value) -> (u16, Value) {
    let (status, accepted) = app.submit(body).await;
    assert!(status == 200 || status == 202, "{accepted}");
    let id: Uuid = accepted["request_id"].as_str().unwrap().parse().unwrap();
    (status, app.wait_final(id, WAIT).await)
}

async fn flush_redis(app: &TestApp) {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", app.db.redis_prefix()))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn an_identical_request_is_answered_from_the_cache_without_a_provider_call() {
    let (openai, app, flags) = openai_app().await;
    let worker_flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let worker = start_worker(&app.db, &worker_flags);
    let body =
        json!({"prompt": "Name a bard", "model": "gpt-4o", "parameters": {"temperature": 0.2}});

    let (status, first) = ask(&app, body.clone()).await;
    assert_eq!(status, 202);
    assert_eq!(first["cached"], false);
    assert_eq!(openai.received().len(), 1);

    let (status, second) = ask(&app, body.clone()).await;
    assert_eq!(status, 200, "a hit is complete at once");
    assert_eq!(second["status"], "completed");
    assert_eq!(second["cached"], true);
    assert_eq!(second["result"], "A cached answer.");
    assert_eq!(second["cost_usd"], 0.0);
    assert_ne!(second["id"], first["id"], "a hit still gets its own row");
    assert_eq!(openai.received().len(), 1, "no provider call for a hit");

    // Redis loses everything: the table still answers, and refills Redis.
    flush_redis(&app).await;
    let (status, third) = ask(&app, body.clone()).await;
    assert_eq!((status, third["cached"].clone()), (200, json!(true)));
    assert_eq!(openai.received().len(), 1);

    // Different parameters are a different request.
    let (_, other) = ask(
        &app,
        json!({"prompt": "Name a bard", "model": "gpt-4o", "parameters": {"temperature": 0.9}}),
    )
    .await;
    assert_eq!(other["cached"], false);
    assert_eq!(openai.received().len(), 2);

    // Billed as cache hits.
    let (requests, cached): (i64, i64) = sqlx::query_as(
        "SELECT SUM(requests)::bigint, SUM(cached_requests)::bigint FROM usage_daily",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!((requests, cached), (4, 2));
    worker.stop().await;
}

#[tokio::test]
async fn entries_expire_and_can_be_invalidated() {
    let (openai, app, flags) = openai_app().await;
    let worker_flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let worker = start_worker(&app.db, &worker_flags);

    let short = json!({"prompt": "fleeting", "model": "gpt-4o", "cache": {"ttl_secs": 1}});
    ask(&app, short.clone()).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, again) = ask(&app, short).await;
    assert_eq!(again["cached"], false, "expired entries are not served");
    assert_eq!(openai.received().len(), 2);

    let body = json!({"prompt": "lasting", "model": "gpt-4o"});
    ask(&app, body.clone()).await;
    assert_eq!(ask(&app, body.clone()).await.1["cached"], true);

    let invalidate = |token: String, filter: Value| {
        app.http
            .post(app.url("/api/v1/admin/cache/invalidate"))
            .bearer_auth(token)
            .json(&filter)
            .send()
    };
    let denied = invalidate(app.token(), json!({"model": "gpt-4o"}))
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    let admin = app.jwt.issue(Uuid::now_v7(), 600, Some("admin")).unwrap();
    let empty = invalidate(admin.clone(), json!({})).await.unwrap();
    assert_eq!(empty.status(), 422);
    let done = invalidate(admin, json!({"model": "gpt-4o"})).await.unwrap();
    assert_eq!(done.status(), 200);
    assert!(
        done.json::<Value>().await.unwrap()["invalidated"]
            .as_u64()
            .unwrap()
            >= 1
    );

    let calls = openai.received().len();
    let (_, after) = ask(&app, body).await;
    assert_eq!(after["cached"], false, "invalidated entries are not served");
    assert_eq!(openai.received().len(), calls + 1);
    worker.stop().await;
}

#[tokio::test]
async fn no_cache_and_no_store_are_honoured() {
    let (openai, app, flags) = openai_app().await;
    let worker_flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let worker = start_worker(&app.db, &worker_flags);

    let not_stored = json!({"prompt": "secret", "model": "gpt-4o", "cache": {"no_store": true}});
    ask(&app, not_stored.clone()).await;
    assert_eq!(
        ask(&app, json!({"prompt": "secret", "model": "gpt-4o"}))
            .await
            .1["cached"],
        false
    );
    assert_eq!(openai.received().len(), 2);
    assert_eq!(
        app.db.count("SELECT COUNT(*) FROM response_cache").await,
        1,
        "only the second was stored"
    );

    let (_, fresh) = ask(
        &app,
        json!({"prompt": "secret", "model": "gpt-4o", "cache": {"no_cache": true}}),
    )
    .await;
    assert_eq!(fresh["cached"], false, "no_cache skips the read");
    assert_eq!(openai.received().len(), 3);
    worker.stop().await;
}

#[tokio::test]
async fn identical_requests_in_flight_share_one_provider_call() {
    let openai = FakeUpstream::start("/v1").await;
    openai.always(Reply::Delayed(
        Duration::from_millis(1500),
        Box::new(fake_upstream::openai::success("Shared.", 12, 4)),
    ));
    let flags = llm_tests::openai_flags(&openai);
    let (app, worker) = llm_tests::app_with_worker(&flags).await;

    let body = json!({"prompt": "at the same time", "model": "gpt-4o"});
    let leader = app.submit_ok(body.clone()).await;
    let followers: Vec<Uuid> =
        futures::future::join_all((0..3).map(|_| app.submit_ok(body.clone()))).await;
    for id in std::iter::once(&leader).chain(&followers) {
        let done = app.wait_final(*id, WAIT).await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["result"], "Shared.");
    }
    assert_eq!(
        openai.received().len(),
        1,
        "one provider call for four identical requests"
    );
    let (_, f) = app.poll(followers[0], 0).await;
    assert_eq!(f["cached"], true);
    assert_eq!(
        app.db
            .count("SELECT SUM(cached_requests)::bigint FROM usage_daily")
            .await,
        3
    );
    worker.stop().await;
}

#[tokio::test]
async fn with_redis_down_the_table_still_serves_hits() {
    let app = spawn_app_with("redis://127.0.0.1:1".into()).await;
    let worker = start_worker(&app.db, &["--redis-url", "redis://127.0.0.1:1"]);
    let body = json!({"prompt": "durable cache", "model": "mock"});
    let (status, first) = ask(&app, body.clone()).await;
    assert_eq!((status, first["cached"].clone()), (202, json!(false)));
    let (status, second) = ask(&app, body).await;
    assert_eq!(status, 200);
    assert_eq!(second["cached"], true);
    assert_eq!(second["result"], first["result"]);
    worker.stop().await;
}

#[tokio::test]
async fn a_hit_answered_before_its_row_is_written_is_readable_at_once_and_counted() {
    let app = spawn_app().await;
    let worker = start_worker(&app.db, &[]);
    let body = json!({"prompt": "a question asked by many"});
    let (_, first) = ask(&app, body.clone()).await;
    assert_eq!(first["cached"], false);
    worker.stop().await;

    // A burst of hits, answered at once; each id is read back without waiting.
    let hits: Vec<(u16, Value)> =
        futures::future::join_all((0..100).map(|_| app.submit(body.clone()))).await;
    let ids: Vec<Uuid> = hits
        .iter()
        .map(|(status, accepted)| {
            assert_eq!(*status, 200, "{accepted}");
            assert_eq!(accepted["status"], "completed");
            accepted["request_id"].as_str().unwrap().parse().unwrap()
        })
        .collect();
    let reads = futures::future::join_all(ids.iter().map(|id| app.poll(*id, 0))).await;
    for (status, view) in &reads {
        assert_eq!(*status, 200, "a hit's own api finds its row: {view}");
        assert_eq!(view["cached"], true);
        assert_eq!(view["status"], "completed");
    }
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_requests WHERE cached")
            .await,
        100
    );
    assert_eq!(
        app.db
            .count("SELECT SUM(cached_requests)::bigint FROM usage_daily")
            .await,
        100
    );

    // With an Idempotency-Key a hit is stored before it is answered: its replay is the same.
    let keyed = |key: &'static str| {
        app.http
            .post(app.url("/api/v1/generate"))
            .bearer_auth(app.token())
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let once: Value = keyed("hit-key").await.unwrap().json().await.unwrap();
    let again = keyed("hit-key").await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(once["request_id"], again["request_id"]);
}

/// A submit as `user`, with an `Idempotency-Key` if given: its id, after asserting a hit.
async fn hit_as(app: &TestApp, user: Uuid, body: &Value, key: Option<&str>) -> Uuid {
    let mut request = app
        .http
        .post(app.url("/api/v1/generate"))
        .bearer_auth(app.token_for(user))
        .json(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["status"], "completed", "{accepted}");
    accepted["request_id"].as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn hits_answered_early_are_stored_as_a_hit_stored_before_its_answer() {
    // Two users are answered from the first one's entries: a cache shared by every user.
    let app = spawn_app_with_providers(&["--cache-scope=global".to_owned()]).await;
    let worker = start_worker(&app.db, &[]);
    let bodies = [
        json!({"prompt": "a question for two models", "model": "mock",
               "parameters": {"max_tokens": 12}, "metadata": {"campaign": "early"}}),
        json!({"prompt": "a question for two models", "model": "mock-large",
               "cache": {"ttl_secs": 600}}),
    ];
    for body in &bodies {
        let (_, first) = ask(&app, body.clone()).await;
        assert_eq!(first["status"], "completed", "{first}");
    }
    worker.stop().await;
    let users = [app.user, Uuid::now_v7()];

    // Per user and model: one hit stored before its answer (it has an Idempotency-Key, so the
    // statement every submit uses writes it), and a burst answered before their rows are
    // written, all four kinds mixed in the hit writer's batches.
    let mut early = Vec::new();
    let mut keyed = Vec::new();
    for (u, user) in users.iter().enumerate() {
        for (b, body) in bodies.iter().enumerate() {
            let key = format!("stored-first-{u}-{b}");
            keyed.push((*user, b, hit_as(&app, *user, body, Some(&key)).await));
        }
    }
    let burst = (0..120).map(|n| {
        let (user, b) = (users[n % 2], (n / 2) % 2);
        let app = &app;
        let body = &bodies[b];
        async move { (user, b, hit_as(app, user, body, None).await) }
    });
    early.extend(futures::future::join_all(burst).await);

    // Every early hit's row, once written, is the keyed hit's row of its user and model, but
    // for what is each request's own.
    let written = tokio::time::Instant::now() + WAIT;
    while app
        .db
        .count("SELECT COUNT(*) FROM generation_requests WHERE cached")
        .await
        < 124
    {
        assert!(
            tokio::time::Instant::now() < written,
            "hit rows not written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let row = |id: Uuid| {
        let pool = app.db.pool.clone();
        async move {
            sqlx::query_scalar::<_, Value>(
                "SELECT to_jsonb(r) - 'id' - 'created_at' - 'updated_at' - 'completed_at'
                        - 'idempotency_key' - 'job_id' - 'trace_id'
                 FROM generation_requests r WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    for (user, b, id) in &early {
        let (_, _, stored_first) = keyed
            .iter()
            .find(|(u, kb, _)| u == user && kb == b)
            .unwrap();
        assert_eq!(row(*id).await, row(*stored_first).await);
        let (job_id, trace_id, completed): (String, Option<String>, bool) = sqlx::query_as(
            "SELECT job_id, trace_id, completed_at IS NOT NULL FROM generation_requests
             WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        assert_eq!(
            job_id,
            llm_shared::queue::job_id_for(*id).to_string(),
            "a hit's row names the job it would have had"
        );
        assert!(trace_id.is_some_and(|t| t.len() == 32) && completed);
    }
    assert_eq!(
        app.db.count("SELECT COUNT(*) FROM apalis.jobs").await,
        2,
        "only the two first requests had a job"
    );

    // Usage: every hit once, under its own user and model.
    for user in users {
        for (b, body) in bodies.iter().enumerate() {
            let (requests, cached): (i64, i64) = sqlx::query_as(
                "SELECT SUM(requests)::bigint, SUM(cached_requests)::bigint FROM usage_daily
                 WHERE user_id = $1 AND model = $2",
            )
            .bind(user)
            .bind(body["model"].as_str().unwrap())
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
            let first = i64::from(user == app.user);
            assert_eq!(
                (requests, cached),
                (31 + first, 31),
                "user {user}, body {b}"
            );
        }
    }
}
