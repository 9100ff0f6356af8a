//! Per-user rate limits: exact across api processes, requests and tokens per minute, headers
//! on every answer, admin overrides, and the fail mode when Redis is down.

use std::time::Duration;

use chrono::Timelike;
use futures::future::join_all;
use llm_tests::fake_upstream::{self, FakeUpstream};
use llm_tests::{TestApp, spawn_api_process_with, spawn_app, start_worker};
use serde_json::{Value, json};
use uuid::Uuid;

/// Limits count in one-minute windows: start a burst well inside one.
async fn away_from_a_minute_boundary() {
    let second = chrono::Utc::now().second();
    if second >= 50 {
        tokio::time::sleep(Duration::from_secs(u64::from(61 - second))).await;
    }
}

async fn post(app: &TestApp, base: &str, token: &str, body: Value) -> reqwest::Response {
    app.http
        .post(format!("{base}/api/v1/generate"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// `GET /api/v1/rate_limits` on the api at `base`.
async fn rate_limits(app: &TestApp, base: &str, token: &str) -> Value {
    let response = app
        .http
        .get(format!("{base}/api/v1/rate_limits"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    response.json().await.unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> Option<u64> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn a_requests_per_minute_limit_is_exact_across_two_api_processes() {
    let app = spawn_app().await;
    let env = [("RATE_LIMIT_RPM", "20")];
    let (_a, base_a) = spawn_api_process_with(&app.db, &env).await;
    let (_b, base_b) = spawn_api_process_with(&app.db, &env).await;
    let token = app.token();
    away_from_a_minute_boundary().await;

    let sends = (0..50).map(|i| {
        let base = if i % 2 == 0 { &base_a } else { &base_b };
        post(&app, base, &token, json!({"prompt": format!("burst {i}")}))
    });
    let responses = join_all(sends).await;
    let accepted = responses.iter().filter(|r| r.status() == 202).count();
    assert_eq!(accepted, 20, "exactly the limit is accepted");
    let refused: Vec<_> = responses
        .into_iter()
        .filter(|r| r.status() == 429)
        .collect();
    assert_eq!(refused.len(), 30);
    for r in refused {
        let retry_after = header(&r, "retry-after").expect("Retry-After");
        assert!((1..=60).contains(&retry_after));
        assert_eq!(header(&r, "x-ratelimit-limit"), Some(20));
        assert_eq!(header(&r, "x-ratelimit-remaining"), Some(0));
        assert!(header(&r, "x-ratelimit-reset").is_some());
        assert!(header(&r, "x-ratelimit-remaining-tokens").is_some());
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "rate_limited");
    }
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_requests")
            .await,
        20
    );
}

#[tokio::test]
async fn a_tokens_per_minute_limit_counts_estimates_and_reconciles_actual_use() {
    let openai = FakeUpstream::start("/v1").await;
    openai.always(fake_upstream::openai::success("Short.", 10, 5));
    let app = spawn_app().await;
    let env = [
        ("RATE_LIMIT_TPM", "1000"),
        ("OPENAI_BASE_URL", openai.base_url.as_str()),
        ("OPENAI_API_KEY", "sk-test-0123456789"),
    ];
    let (_api, base) = spawn_api_process_with(&app.db, &env).await;
    let token = app.token();
    away_from_a_minute_boundary().await;

    // Too large for the limit as a whole: not a 429 (waiting cannot help) but a 422.
    let r = post(
        &app,
        &base,
        &token,
        json!({"prompt": "x", "parameters": {"max_tokens": 2000}}),
    )
    .await;
    assert_eq!(r.status(), 422);

    // Each request is estimated at about 300 tokens: three fit in 1000, the fourth does not.
    let body = |i: u32| json!({"prompt": format!("t{i}"), "model": "gpt-4o", "parameters": {"max_tokens": 300}});
    let mut statuses = Vec::new();
    for i in 0..4 {
        statuses.push(post(&app, &base, &token, body(i)).await.status().as_u16());
    }
    assert_eq!(statuses, vec![202, 202, 202, 429]);
    // The refused one counted nothing: neither a request nor its tokens.
    let state = rate_limits(&app, &base, &token).await;
    let requests_limit = state["requests"]["limit"].as_u64().unwrap_or_default();
    assert_eq!(
        state["requests"]["remaining"].as_u64(),
        Some(requests_limit - 3),
        "{state}"
    );
    let tokens_left = state["tokens"]["remaining"].as_u64().unwrap_or_default();
    assert!((1..300).contains(&tokens_left), "{state}");

    // Completed with 15 tokens each (not ~300): the counter is corrected and room comes back.
    let flags = [
        "--openai-base-url",
        openai.base_url.as_str(),
        "--openai-api-key",
        "sk-test-0123456789",
    ];
    let worker = start_worker(&app.db, &flags);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while app
        .db
        .count("SELECT COUNT(*) FROM generation_requests WHERE status = 'completed'")
        .await
        < 3
    {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let state = rate_limits(&app, &base, &token).await;
    assert_eq!(state["tokens"]["limit"], 1000);
    assert_eq!(state["tokens"]["remaining"], 1000 - 3 * 15, "{state}");
    assert_eq!(post(&app, &base, &token, body(9)).await.status(), 202);
    worker.stop().await;
}

/// A cache hit runs no provider: it counts as a request but takes no tokens, so it is answered
/// even when the tokens left would not cover a fresh run of it.
#[tokio::test]
async fn a_cache_hit_takes_no_tokens() {
    let app = spawn_app().await;
    let (_api, base) = spawn_api_process_with(&app.db, &[("RATE_LIMIT_TPM", "1000")]).await;
    let token = app.token();
    away_from_a_minute_boundary().await;
    let body = |i: u32| json!({"prompt": format!("c{i}"), "parameters": {"max_tokens": 280}});

    let first: Value = post(&app, &base, &token, body(0))
        .await
        .json()
        .await
        .unwrap();
    let id: Uuid = first["request_id"].as_str().unwrap().parse().unwrap();
    let worker = start_worker(&app.db, &[]);
    app.wait_final(id, Duration::from_secs(20)).await;
    worker.stop().await;
    // Nothing runs these: their estimates stay counted, until less than one estimate is left.
    let mut statuses = Vec::new();
    for i in 1..6 {
        let status = post(&app, &base, &token, body(i)).await.status().as_u16();
        statuses.push(status);
        if status == 429 {
            break;
        }
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert!(statuses.len() > 1, "{statuses:?}");

    let hit = post(&app, &base, &token, body(0)).await;
    assert_eq!(hit.status(), 200, "a cache hit needs no tokens");
    let left_after_hit = header(&hit, "x-ratelimit-remaining-tokens").unwrap();
    let state = rate_limits(&app, &base, &token).await;
    assert_eq!(state["tokens"]["remaining"], left_after_hit, "{state}");
    assert!(left_after_hit < 280, "{state}");
}

#[tokio::test]
async fn every_answer_carries_the_rate_limit_state_and_admins_can_override_it() {
    let app = spawn_app().await;
    let (_api, base) = spawn_api_process_with(&app.db, &[("RATE_LIMIT_RPM", "30")]).await;
    let token = app.token();
    away_from_a_minute_boundary().await;

    let first = post(&app, &base, &token, json!({"prompt": "one"})).await;
    assert_eq!(header(&first, "x-ratelimit-remaining"), Some(29));
    let id = first.json::<Value>().await.unwrap()["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let poll = app
        .http
        .get(format!("{base}/api/v1/generate/{id}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(header(&poll, "x-ratelimit-limit"), Some(30));
    assert_eq!(
        header(&poll, "x-ratelimit-remaining"),
        Some(29),
        "reading does not count"
    );

    let admin = app.jwt.issue(Uuid::now_v7(), 600, Some("admin")).unwrap();
    let url = format!("{base}/api/v1/admin/rate_limits/{}", app.user);
    let denied = app
        .http
        .put(&url)
        .bearer_auth(&token)
        .json(&json!({"requests_per_minute": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    let set = app
        .http
        .put(&url)
        .bearer_auth(&admin)
        .json(&json!({"requests_per_minute": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);
    assert_eq!(
        set.json::<Value>().await.unwrap()["limits"]["requests_per_minute"],
        2
    );
    // The api that stored the override forgets its cached limits at once (others within 10 s).
    away_from_a_minute_boundary().await;
    let mut statuses = Vec::new();
    for i in 0..3 {
        statuses.push(
            post(&app, &base, &token, json!({"prompt": format!("o{i}")}))
                .await
                .status()
                .as_u16(),
        );
    }
    assert!(
        statuses.contains(&429) && statuses[0] == 202,
        "{statuses:?}"
    );

    let cleared = app
        .http
        .delete(&url)
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(
        cleared.json::<Value>().await.unwrap()["limits"]["requests_per_minute"],
        30
    );
}

#[tokio::test]
async fn with_redis_down_the_fail_mode_decides() {
    let app = spawn_app().await;
    let down = [
        ("REDIS_URL", "redis://127.0.0.1:1"),
        ("RATE_LIMIT_RPM", "1"),
    ];
    let (_open, open_base) = spawn_api_process_with(&app.db, &down).await;
    let token = app.token();
    for i in 0..3 {
        let r = post(
            &app,
            &open_base,
            &token,
            json!({"prompt": format!("open {i}")}),
        )
        .await;
        assert_eq!(r.status(), 202, "fail-open lets requests through");
    }
    let closed = [
        ("REDIS_URL", "redis://127.0.0.1:1"),
        ("RATE_LIMIT_FAIL_MODE", "closed"),
    ];
    let (_closed, closed_base) = spawn_api_process_with(&app.db, &closed).await;
    let r = post(&app, &closed_base, &token, json!({"prompt": "closed"})).await;
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "service_unavailable"
    );
}

/// The limiter's round trip is on every submit's path: its connections never hold a command
/// back for Nagle's algorithm (redis-rs leaves it on).
#[test]
fn redis_connections_send_each_command_at_once() {
    let config = llm_tests::common_config(&["--redis-url", "redis://127.0.0.1:6379/0"]);
    let client = config.redis_client().unwrap();
    assert!(client.get_connection_info().tcp_settings().nodelay());
}

/// A correction after the check (tokens given back, usage reconciled) adjusts the counters of a
/// window still kept, and leaves a window that is gone gone: a counter it created would have
/// no expiry and stay in Redis for good.
#[tokio::test]
async fn corrections_adjust_a_kept_window_and_bring_no_expired_one_back() {
    use llm_shared::ratelimit::{Decision, RateLimiter, RateLimits};
    let db = llm_tests::TestDb::new().await;
    let client = redis::Client::open(llm_tests::redis_url()).unwrap();
    let prefix = format!("test:{}:", Uuid::now_v7());
    let limits = RateLimits {
        requests_per_minute: 100,
        tokens_per_minute: 10_000,
    };
    let limiter = RateLimiter::new(client.clone(), &prefix, limits, false).unwrap();
    let user = Uuid::now_v7();
    away_from_a_minute_boundary().await;
    let Decision::Allowed(state) = limiter.take(&db.pool, user, 1_000).await.unwrap() else {
        panic!("the first request is allowed");
    };
    assert_eq!(state.tokens.remaining, 9_000);
    limiter.reconcile(user, state.window, -400).await;
    limiter.give_back(user, state.window, 1, 100).await;
    let Decision::Allowed(now) = limiter.peek(&db.pool, user).await.unwrap() else {
        panic!("a peek is allowed");
    };
    assert_eq!(
        now.tokens.remaining, 9_500,
        "1,000 counted, 400 reconciled, 100 given back"
    );
    assert_eq!(now.requests.remaining, 100, "the request given back");

    let gone = state.window - 2;
    limiter.reconcile(user, gone, 250).await;
    limiter.give_back(user, gone, 1, 250).await;
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*:{gone}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    for key in keys {
        let ttl: i64 = redis::cmd("TTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0, "{key} expires ({ttl})");
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}
