//! Fair share of the workers between users within each priority class: a user's backlog
//! delays another user's request by about one call, weights divide the share, a user who was
//! idle starts level with the others, and interactive requests still go before batch items.

use std::time::{Duration, Instant};

use futures::StreamExt;
use llm_tests::{TestApp, spawn_app, start_worker};
use serde_json::{Value, json};
use uuid::Uuid;

/// Submits `n` distinct requests of `user` (a few at a time), each taking `latency_ms` to run.
async fn submit_many(app: &TestApp, user: Uuid, n: usize, latency_ms: u64) -> Vec<Uuid> {
    let token = app.token_for(user);
    futures::stream::iter(0..n)
        .map(|i| {
            let body =
                json!({"prompt": format!("{user} #{i}"), "mock": {"latency_ms": latency_ms}});
            let request = app
                .http
                .post(app.url("/api/v1/generate"))
                .bearer_auth(&token)
                .json(&body)
                .send();
            async move {
                let response = request.await.unwrap();
                assert_eq!(response.status().as_u16(), 202);
                let body: Value = response.json().await.unwrap();
                body["request_id"]
                    .as_str()
                    .unwrap()
                    .parse::<Uuid>()
                    .unwrap()
            }
        })
        .buffered(8)
        .collect()
        .await
}

/// Submits a batch of `n` items for `user`; the ids of its requests.
async fn submit_batch(app: &TestApp, user: Uuid, n: usize, latency_ms: u64) -> Vec<Uuid> {
    let items: Vec<Value> = (0..n)
        .map(|i| json!({"prompt": format!("{user} item {i}"), "mock": {"latency_ms": latency_ms}}))
        .collect();
    let response = app
        .http
        .post(app.url("/api/v1/generate/batch"))
        .bearer_auth(app.token_for(user))
        .json(&json!({"items": items}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let body: Value = response.json().await.unwrap();
    body["request_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().parse().unwrap())
        .collect()
}

/// The requests that have started running, in the order their first run started.
async fn started(app: &TestApp) -> Vec<(Uuid, Uuid)> {
    sqlx::query_as(
        "SELECT r.id, r.user_id FROM generation_attempts a
         JOIN generation_requests r ON r.id = a.request_id
         WHERE a.attempt = 1 ORDER BY a.started_at, a.request_id",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap()
}

/// Waits until `ids` have all started (or `within` passes); the start order then.
async fn wait_started(app: &TestApp, ids: &[Uuid], within: Duration) -> Vec<(Uuid, Uuid)> {
    let deadline = Instant::now() + within;
    loop {
        let order = started(app).await;
        if ids.iter().all(|id| order.iter().any(|(r, _)| r == id)) || Instant::now() > deadline {
            return order;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many requests started before the first of `ids`.
fn started_before(order: &[(Uuid, Uuid)], ids: &[Uuid]) -> usize {
    order
        .iter()
        .position(|(r, _)| ids.contains(r))
        .unwrap_or(order.len())
}

/// Waits until `n` requests have started; the start order then.
async fn wait_count(app: &TestApp, n: usize, within: Duration) -> Vec<(Uuid, Uuid)> {
    let deadline = Instant::now() + within;
    loop {
        let order = started(app).await;
        if order.len() >= n || Instant::now() > deadline {
            return order;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn count_of(order: &[(Uuid, Uuid)], user: Uuid) -> usize {
    order.iter().filter(|(_, u)| *u == user).count()
}

#[tokio::test]
async fn another_users_backlog_delays_a_request_by_about_one_call() {
    let app = spawn_app().await;
    let backlog_owner = Uuid::now_v7();
    submit_many(&app, backlog_owner, 300, 50).await;
    let mine = app
        .submit_ok(json!({"prompt": "my turn", "mock": {"latency_ms": 50}}))
        .await;

    let worker = start_worker(&app.db, &["--concurrency", "2"]);
    let order = wait_started(&app, &[mine], Duration::from_secs(60)).await;
    worker.stop().await;
    let before = started_before(&order, &[mine]);
    assert!(
        before <= 4,
        "{before} of the other user's 300 jobs ran before this request"
    );
}

#[tokio::test]
async fn another_users_batches_delay_a_batch_by_about_one_call_and_interactive_goes_first() {
    let app = spawn_app().await;
    let backlog_owner = Uuid::now_v7();
    submit_batch(&app, backlog_owner, 150, 20).await;
    submit_batch(&app, backlog_owner, 150, 20).await;
    let mine = submit_batch(&app, app.user, 3, 20).await;
    // A third user's interactive request, submitted last, still runs before any batch item.
    let hurried = Uuid::now_v7();
    let interactive = submit_many(&app, hurried, 1, 20).await;

    let worker = start_worker(&app.db, &["--concurrency", "2"]);
    let order = wait_started(&app, &mine, Duration::from_secs(60)).await;
    worker.stop().await;
    // Two workers' slots start together: the interactive request is in the first pair.
    let waited = started_before(&order, &interactive);
    assert!(
        waited <= 1,
        "an interactive request waited for {waited} batch items"
    );
    let before = started_before(&order, &mine);
    assert!(
        before <= 5,
        "{before} requests (of another user's 300 batch items) ran before this batch's first item"
    );
}

#[tokio::test]
async fn a_user_of_weight_two_gets_about_twice_the_share_of_a_user_of_weight_one() {
    let app = spawn_app().await;
    let heavy = Uuid::now_v7();
    let admin = app.jwt.issue(Uuid::now_v7(), 600, Some("admin")).unwrap();
    let response = app
        .http
        .put(app.url(&format!("/api/v1/admin/rate_limits/{heavy}")))
        .bearer_auth(&admin)
        .json(&json!({"weight": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["weight"], 2, "{body}");

    submit_many(&app, heavy, 60, 10).await;
    submit_many(&app, app.user, 60, 10).await;
    let worker = start_worker(&app.db, &["--concurrency", "1"]);
    let order = wait_count(&app, 30, Duration::from_secs(60)).await;
    worker.stop().await;
    let first: Vec<_> = order.into_iter().take(30).collect();
    let heavy_share = count_of(&first, heavy);
    assert!(
        (18..=22).contains(&heavy_share),
        "the user of weight 2 got {heavy_share} of the first 30 runs"
    );
}

#[tokio::test]
async fn a_user_idle_for_a_long_time_starts_level_with_the_others() {
    let app = spawn_app().await;
    let busy = Uuid::now_v7();
    // The idle user's one request long ago, then the busy user's 40.
    submit_many(&app, app.user, 1, 1).await;
    let earlier = submit_many(&app, busy, 40, 1).await;
    let worker = start_worker(&app.db, &["--concurrency", "4"]);
    wait_started(&app, &earlier, Duration::from_secs(60)).await;
    worker.stop().await;
    let done = app
        .db
        .count("SELECT COUNT(*) FROM generation_requests WHERE completed_at IS NULL")
        .await;
    assert_eq!(done, 0, "the first requests did not all finish");

    // Both now queue 40 on the drained queue, the idle user first: it has no credit to burst
    // with, so the busy user's requests, queued next, interleave with its own.
    let seen = started(&app).await.len();
    submit_many(&app, app.user, 40, 5).await;
    submit_many(&app, busy, 40, 5).await;
    let worker = start_worker(&app.db, &["--concurrency", "1"]);
    let order = wait_count(&app, seen + 20, Duration::from_secs(60)).await;
    worker.stop().await;
    let next: Vec<_> = order.into_iter().skip(seen).take(20).collect();
    let idle_share = count_of(&next, app.user);
    assert!(
        (7..=13).contains(&idle_share),
        "the idle user got {idle_share} of the next 20 runs"
    );
}

#[tokio::test]
async fn virtual_times_far_beyond_a_32_bit_count_still_share_fairly_and_stay_due() {
    let app = spawn_app().await;
    // A class whose virtual time went through ~9 * 10^11 jobs' worth of milliseconds.
    sqlx::query(
        "INSERT INTO fair_share (user_id, class, finish_at)
         VALUES ($1, 10, TIMESTAMPTZ '1999-12-30 23:59:00+00')",
    )
    .bind(Uuid::now_v7())
    .execute(&app.db.pool)
    .await
    .unwrap();
    let backlog_owner = Uuid::now_v7();
    let backlog = submit_many(&app, backlog_owner, 100, 20).await;
    let mine = app
        .submit_ok(json!({"prompt": "late", "mock": {"latency_ms": 20}}))
        .await;
    let not_due = app
        .db
        .count(
            "SELECT COUNT(*) FROM apalis.jobs
             WHERE run_at >= NOW() OR run_at < TIMESTAMPTZ '1999-12-30 23:59:00+00'",
        )
        .await;
    assert_eq!(
        not_due, 0,
        "a job's virtual time left the range of due times"
    );

    let worker = start_worker(&app.db, &["--concurrency", "2"]);
    let order = wait_started(&app, &[mine], Duration::from_secs(60)).await;
    let before = started_before(&order, &[mine]);
    assert!(
        before <= 4,
        "{before} of the backlog ran before this request"
    );
    let all = wait_started(&app, &backlog, Duration::from_secs(60)).await;
    worker.stop().await;
    assert_eq!(all.len(), 101, "every job ran");
}
