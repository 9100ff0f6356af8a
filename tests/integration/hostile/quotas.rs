//! A tenant that floods: more queued work than its quota (one by one, in a batch, through the
//! OpenAI door), batches as a way around the rate limits, and more open streams or long polls
//! than one user may hold. Each refusal is a 429 with its own code and a `Retry-After`, and
//! stores nothing.

use std::time::Duration;

use chrono::Timelike;
use llm_tests::sse::SseReader;
use llm_tests::{TestApp, spawn_app_with_providers};
use serde_json::{Value, json};
use uuid::Uuid;

/// The app with these settings (e.g. `--user-max-queued 3`) over the harness' own.
async fn app_with(flags: &[&str]) -> TestApp {
    let flags: Vec<String> = flags.iter().map(|f| (*f).to_owned()).collect();
    spawn_app_with_providers(&flags).await
}

/// Rate limits count in one-minute windows: start well inside one.
async fn away_from_a_minute_boundary() {
    let second = chrono::Utc::now().second();
    if second >= 45 {
        tokio::time::sleep(Duration::from_secs(u64::from(61 - second))).await;
    }
}

/// A JSON answer: status, `Retry-After` (seconds) and body (null if none came within a few
/// seconds: a stream that opened instead of being refused).
async fn answer(response: reqwest::Response) -> (u16, Option<u64>, Value) {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = tokio::time::timeout(Duration::from_secs(5), response.json::<Value>()).await;
    (
        status,
        retry_after,
        body.ok().and_then(Result::ok).unwrap_or(Value::Null),
    )
}

async fn post(app: &TestApp, token: &str, path: &str, body: &Value) -> (u16, Option<u64>, Value) {
    let response = app
        .http
        .post(app.url(path))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    answer(response).await
}

async fn batch(app: &TestApp, items: Vec<Value>) -> (u16, Option<u64>, Value) {
    post(
        app,
        &app.token(),
        "/api/v1/generate/batch",
        &json!({ "items": items }),
    )
    .await
}

/// `n` batch items, each asking for `max_tokens`.
fn items(n: usize, max_tokens: u32) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"prompt": format!("item {i}"), "parameters": {"max_tokens": max_tokens}}))
        .collect()
}

/// Asserts a native 429 refusal with `code` and a `Retry-After` within a minute.
fn assert_refused(refusal: &(u16, Option<u64>, Value), code: &str) {
    let (status, retry_after, body) = refusal;
    assert_eq!(*status, 429, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let retry_after = retry_after.expect("Retry-After on every refusal");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
}

/// Asserts an OpenAI-shaped 429 refusal with `code` and a `Retry-After`.
fn assert_refused_openai(refusal: &(u16, Option<u64>, Value), code: &str) {
    let (status, retry_after, body) = refusal;
    assert_eq!(*status, 429, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert_eq!(body["error"]["type"], "requests", "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    assert!(retry_after.is_some(), "Retry-After on every refusal");
}

async fn rows(app: &TestApp) -> i64 {
    app.db
        .count("SELECT COUNT(*) FROM generation_requests")
        .await
}

fn chat(stream: bool) -> Value {
    json!({"model": "mock", "stream": stream,
        "messages": [{"role": "user", "content": "a name for a tavern"}]})
}

#[tokio::test]
async fn a_user_past_the_queued_quota_is_refused_until_some_of_its_requests_finish() {
    // No worker: everything accepted stays pending.
    let app = app_with(&["--user-max-queued", "3"]).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            app.submit_ok(json!({"prompt": format!("queued {i}")}))
                .await,
        );
    }
    let token = app.token();
    let single = post(
        &app,
        &token,
        "/api/v1/generate",
        &json!({"prompt": "one more"}),
    )
    .await;
    assert_refused(&single, "queue_quota_exceeded");
    let streamed = post(
        &app,
        &token,
        "/api/v1/generate/stream",
        &json!({"prompt": "one more, streamed"}),
    )
    .await;
    assert_refused(&streamed, "queue_quota_exceeded");
    let door = post(&app, &token, "/v1/chat/completions", &chat(false)).await;
    assert_refused_openai(&door, "queue_quota_exceeded");
    assert_eq!(rows(&app).await, 3, "a refused submit stores nothing");

    // The quota is the user's own: another user is not affected.
    let other = app.token_for(Uuid::now_v7());
    let theirs = post(&app, &other, "/api/v1/generate", &json!({"prompt": "mine"})).await;
    assert_eq!(theirs.0, 202, "{}", theirs.2);

    // A finished request frees its place.
    let response = app
        .http
        .delete(app.url(&format!("/api/v1/generate/{}", ids[0])))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    app.submit_ok(json!({"prompt": "room again"})).await;
}

#[tokio::test]
async fn a_batch_past_the_queued_quota_is_refused_whole_with_nothing_stored() {
    let app = app_with(&["--user-max-queued", "10"]).await;
    for i in 0..4 {
        app.submit_ok(json!({"prompt": format!("before {i}")}))
            .await;
    }
    // 6 places remain: 7 items are refused whole, not cut to 6.
    let refused = batch(&app, items(7, 16)).await;
    assert_refused(&refused, "queue_quota_exceeded");
    assert_eq!(rows(&app).await, 4, "no item of a refused batch is stored");
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_batches")
            .await,
        0
    );
    assert_eq!(
        app.db.count("SELECT COUNT(*) FROM apalis.jobs").await,
        4,
        "no job of a refused batch is queued"
    );
    let (status, _, body) = batch(&app, items(6, 16)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(rows(&app).await, 10);
}

#[tokio::test]
async fn a_batch_is_charged_every_item_it_queues_against_the_requests_per_minute() {
    let app = app_with(&["--rate-limit-rpm", "10"]).await;
    away_from_a_minute_boundary().await;
    // More items than a whole minute allows can never fit: a 422 naming the items.
    let (status, _, body) = batch(&app, items(11, 16)).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "items", "{body}");

    let (status, _, body) = batch(&app, items(6, 16)).await;
    assert_eq!(status, 202, "{body}");
    let (_, limits) = app.get_json("/api/v1/rate_limits").await;
    assert_eq!(limits["requests"]["remaining"], 4, "{limits}");
    // Five more do not fit in the four left: refused whole, and nothing of it is charged.
    let refused = batch(&app, items(5, 16)).await;
    assert_refused(&refused, "rate_limited");
    let (_, limits) = app.get_json("/api/v1/rate_limits").await;
    assert_eq!(limits["requests"]["remaining"], 4, "{limits}");
    let (status, _, body) = batch(&app, items(4, 16)).await;
    assert_eq!(status, 202, "{body}");
    // The minute's ten requests are spent: a single submit is refused.
    let (status, body) = app.submit(json!({"prompt": "one more"})).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert_eq!(rows(&app).await, 10);
}

#[tokio::test]
async fn a_batch_is_charged_its_items_estimated_tokens_against_the_tokens_per_minute() {
    let app = app_with(&["--rate-limit-tpm", "1000"]).await;
    away_from_a_minute_boundary().await;
    // Four items of 300 output tokens each: more than a minute's 1,000 tokens, ever.
    let (status, _, body) = batch(&app, items(4, 300)).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "items", "{body}");
    // Three fit (about 900 tokens); then 300 more do not, as a batch or alone.
    let (status, _, body) = batch(&app, items(3, 300)).await;
    assert_eq!(status, 202, "{body}");
    let refused = batch(&app, items(1, 300)).await;
    assert_refused(&refused, "rate_limited");
    let (status, body) = app
        .submit(json!({"prompt": "alone", "parameters": {"max_tokens": 300}}))
        .await;
    assert_eq!(status, 429, "{body}");
    // What is left of the minute still serves a small request.
    app.submit_ok(json!({"prompt": "small", "parameters": {"max_tokens": 50}}))
        .await;
}

/// Opens a stream as `token`: native submit-and-stream, attach, or the OpenAI door.
async fn stream(app: &TestApp, token: &str, how: &str, id: Uuid) -> SseReader {
    let request = match how {
        "submit" => app
            .http
            .post(app.url("/api/v1/generate/stream"))
            .json(&json!({"prompt": "streamed"})),
        "attach" => app
            .http
            .get(app.url(&format!("/api/v1/generate/{id}/stream"))),
        _ => app
            .http
            .post(app.url("/v1/chat/completions"))
            .json(&chat(true)),
    };
    SseReader::open(request.bearer_auth(token)).await
}

#[tokio::test]
async fn a_user_holds_at_most_its_cap_of_open_streams_and_a_closed_one_frees_its_place() {
    // No worker: the streamed requests stay pending and their streams open.
    let app = app_with(&["--user-max-streams", "2"]).await;
    let token = app.token();
    let id = app.submit_ok(json!({"prompt": "to attach to"})).await;
    let first = stream(&app, &token, "submit", id).await;
    assert_eq!(first.status, 200);
    let second = stream(&app, &token, "attach", id).await;
    assert_eq!(second.status, 200);
    let before = rows(&app).await;

    let submitted = post(
        &app,
        &token,
        "/api/v1/generate/stream",
        &json!({"prompt": "a third stream"}),
    )
    .await;
    assert_refused(&submitted, "too_many_streams");
    let attached = app
        .http
        .get(app.url(&format!("/api/v1/generate/{id}/stream")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_refused(&answer(attached).await, "too_many_streams");
    let door = post(&app, &token, "/v1/chat/completions", &chat(true)).await;
    assert_refused_openai(&door, "too_many_streams");
    assert_eq!(rows(&app).await, before, "a refused stream submits nothing");

    // Another user has streams of their own.
    let other = app.token_for(Uuid::now_v7());
    let theirs = stream(&app, &other, "chat", id).await;
    assert_eq!(theirs.status, 200);

    // A client that goes away frees its place.
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let again = stream(&app, &token, "attach", id).await;
        if again.status == 200 {
            break;
        }
        assert_eq!(again.status, 429);
        assert!(
            tokio::time::Instant::now() < deadline,
            "a closed stream never freed its place"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(second);
}

#[tokio::test]
async fn a_user_holds_at_most_its_cap_of_long_polls_and_plain_reads_stay_open() {
    // No worker: the request stays pending and every `?wait=` waits its whole time.
    let app = app_with(&["--user-max-waits", "2"]).await;
    let id = app.submit_ok(json!({"prompt": "waited for"})).await;
    let token = app.token();
    let waits: Vec<_> = (0..2)
        .map(|_| {
            let request = app
                .http
                .get(app.url(&format!("/api/v1/generate/{id}?wait=25")))
                .bearer_auth(&token)
                .send();
            tokio::spawn(request)
        })
        .collect();
    let poll = |wait: u32| {
        app.http
            .get(app.url(&format!("/api/v1/generate/{id}?wait={wait}")))
            .bearer_auth(&token)
            .send()
    };
    // Both waits take their places (a probe meanwhile could take one of them).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(waits.iter().all(|w| !w.is_finished()), "both waits wait");
    let refused = answer(poll(1).await.unwrap()).await;
    assert_refused(&refused, "too_many_waits");
    // A read that does not wait is never capped.
    let (status, _, body) = answer(poll(0).await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    // An unstreamed OpenAI call waits too: refused before anything is stored.
    let before = rows(&app).await;
    let door = post(&app, &token, "/v1/chat/completions", &chat(false)).await;
    assert_refused_openai(&door, "too_many_waits");
    assert_eq!(rows(&app).await, before);

    // Clients that go away free their places.
    for wait in waits {
        wait.abort();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _, body) = answer(poll(1).await.unwrap()).await;
        if status == 200 {
            assert_eq!(body["status"], "pending", "{body}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "an abandoned wait never freed its place"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
