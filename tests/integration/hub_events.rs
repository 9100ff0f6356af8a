//! Every way a request ends reaches the hub: a worker's completion, the followers completed
//! with it, cache hits stored at submit (early or in the submit statement) and cancellations
//! (the owner's, an admin's) each queue their events with the row, so the hub's usage is ours.
//! Cache hits stored at submit publish their usage per user and model, one event per statement.

use std::time::Duration;

use llm_tests::{TestApp, spawn_app, start_worker};
use serde_json::{Value, json};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

/// Each request's queued event types, in the order they will be delivered.
async fn events_by_request(app: &TestApp) -> Vec<(Option<Uuid>, Vec<String>)> {
    sqlx::query_as(
        "SELECT request_id, array_agg(type ORDER BY seq) FROM outbox_events
         GROUP BY request_id ORDER BY request_id NULLS LAST",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap()
}

/// Per user and model: requests, cached requests, prompt and completion tokens, as the hub
/// adds them up from `usage.updated`, and as `usage_daily` has them.
async fn hub_usage_and_ours(app: &TestApp) -> (Vec<Value>, Vec<Value>) {
    let hub: Vec<Value> = sqlx::query_scalar(
        "SELECT jsonb_build_array(payload->>'user_id', payload->>'model',
                    SUM((payload->>'requests')::bigint),
                    SUM((payload->>'cached_requests')::bigint),
                    SUM((payload->>'prompt_tokens')::bigint),
                    SUM((payload->>'completion_tokens')::bigint))
         FROM outbox_events WHERE type = 'usage.updated'
         GROUP BY payload->>'user_id', payload->>'model' ORDER BY 1",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    let ours: Vec<Value> = sqlx::query_scalar(
        "SELECT jsonb_build_array(user_id::text, model, SUM(requests), SUM(cached_requests),
                    SUM(prompt_tokens), SUM(completion_tokens))
         FROM usage_daily GROUP BY user_id, model ORDER BY 1",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    (hub, ours)
}

#[tokio::test]
async fn followers_and_cache_hits_publish_completion_and_usage_so_the_hubs_usage_is_ours() {
    let app = spawn_app().await;
    let worker = start_worker(&app.db, &[]);
    // A slow leader, and two identical requests that follow it while it runs.
    let body = json!({"prompt": "one answer for many", "mock": {"latency_ms": 1500}});
    let leader = app.submit_ok(body.clone()).await;
    let followers = futures::future::join_all((0..2).map(|_| app.submit_ok(body.clone()))).await;
    for id in std::iter::once(&leader).chain(&followers) {
        let done = app.wait_final(*id, WAIT).await;
        assert_eq!(done["status"], "completed", "{done}");
    }
    worker.stop().await;
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_requests WHERE coalesced_into IS NOT NULL")
            .await,
        2,
        "the two followed the leader"
    );

    // A hit answered before its row is written, and one stored by the submit statement (an
    // Idempotency-Key makes it wait for its row).
    let (status, early) = app.submit(body.clone()).await;
    assert_eq!(status, 200, "{early}");
    let keyed = app
        .http
        .post(app.url("/api/v1/generate"))
        .bearer_auth(app.token())
        .header("Idempotency-Key", "hub-hit")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(keyed.status(), 200);
    let keyed: Value = keyed.json().await.unwrap();
    let hits: Vec<Uuid> = [&early, &keyed]
        .iter()
        .map(|a| a["request_id"].as_str().unwrap().parse().unwrap())
        .collect();
    // The early hit's row is written behind its answer: reading it waits for it.
    for id in &hits {
        assert_eq!(app.poll(*id, 0).await.0, 200);
    }

    // Every request that ended, worker or not, has its `generation.completed`; a request run
    // by a provider and each follower has its `usage.updated` after it, and the hits stored at
    // submit have theirs per user and model, one per statement (no subject).
    let events = events_by_request(&app).await;
    let mut ended: Vec<Uuid> = [vec![leader], followers.clone(), hits.clone()].concat();
    ended.sort();
    let (per_request, unattached): (Vec<_>, Vec<_>) =
        events.into_iter().partition(|(id, _)| id.is_some());
    assert_eq!(
        per_request
            .iter()
            .map(|(id, _)| id.unwrap())
            .collect::<Vec<_>>(),
        ended,
        "{per_request:?}"
    );
    for (id, kinds) in &per_request {
        let expected: &[&str] = if hits.contains(&id.unwrap()) {
            &["generation.completed"]
        } else {
            &["generation.completed", "usage.updated"]
        };
        assert_eq!(kinds, expected, "request {id:?}");
    }
    assert_eq!(
        unattached,
        vec![(None, vec!["usage.updated".to_owned(); 2])],
        "one usage event per hit-storing statement"
    );
    let cached: Vec<Uuid> = sqlx::query_scalar(
        "SELECT request_id FROM outbox_events
         WHERE type = 'generation.completed' AND (payload->>'cached')::bool
           AND (payload->>'cost_usd')::float8 = 0 AND payload->>'user_id' = $1
         ORDER BY request_id",
    )
    .bind(app.user.to_string())
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    let mut expected: Vec<Uuid> = [followers, hits].concat();
    expected.sort();
    assert_eq!(
        cached, expected,
        "followers and hits are published as cached"
    );

    let (hub, ours) = hub_usage_and_ours(&app).await;
    assert!(!ours.is_empty());
    assert_eq!(hub, ours, "the hub's usage adds up to ours");
}

#[tokio::test]
async fn each_cancellation_publishes_generation_cancelled_once_and_no_one_elses() {
    let app = spawn_app().await;
    let admin = app.jwt.issue(Uuid::now_v7(), 600, Some("admin")).unwrap();
    let intruder = app.token_for(Uuid::now_v7());
    // No worker runs: both stay pending until cancelled.
    let mine = app.submit_ok(json!({"prompt": "cancel me"})).await;
    let theirs = app
        .submit_ok(json!({"prompt": "an admin cancels me"}))
        .await;
    let path = |id: Uuid| format!("/api/v1/generate/{id}");

    // Another user's cancel finds nothing and publishes nothing.
    let (status, _) = app
        .call(reqwest::Method::DELETE, &path(mine), &intruder, None)
        .await;
    assert_eq!(status, 404);
    assert_eq!(app.db.count("SELECT COUNT(*) FROM outbox_events").await, 0);

    let (status, body) = app
        .call(reqwest::Method::DELETE, &path(mine), &app.token(), None)
        .await;
    assert_eq!((status, body["status"].clone()), (200, json!("cancelled")));
    let (status, _) = app
        .call(reqwest::Method::DELETE, &path(theirs), &admin, None)
        .await;
    assert_eq!(status, 200);
    // Cancelling again is a conflict and publishes nothing more.
    let (status, _) = app
        .call(reqwest::Method::DELETE, &path(mine), &app.token(), None)
        .await;
    assert_eq!(status, 409);

    let events: Vec<(Uuid, String, Value)> =
        sqlx::query_as("SELECT request_id, type, payload FROM outbox_events ORDER BY request_id")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    let mut cancelled = vec![mine, theirs];
    cancelled.sort();
    assert_eq!(
        events.iter().map(|(id, _, _)| *id).collect::<Vec<_>>(),
        cancelled
    );
    for (id, kind, payload) in &events {
        assert_eq!(kind, "generation.cancelled");
        assert_eq!(payload["request_id"], id.to_string());
        assert_eq!(payload["user_id"], app.user.to_string());
        assert_eq!(payload["error_code"], "cancelled");
    }
    // Nothing was counted as usage for them.
    assert_eq!(app.db.count("SELECT COUNT(*) FROM usage_daily").await, 0);
}
