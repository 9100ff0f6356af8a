//! Operations under hostile load and partial failure: hub events whose effect failed are
//! applied when the hub delivers them again, an event the hub keeps refusing stops blocking its
//! request, `/metrics` (open to anyone) is no database load amplifier, model health reads a
//! bounded window, and the api has no signing key anyone could read in its source.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::http::StatusCode;
use llm_tests::prom::value;
use llm_tests::servers::PrivateRedis;
use llm_tests::{TestApp, binary, spawn_app, spawn_app_with, spawn_worker_process};
use serde_json::{Value, json};
use uuid::Uuid;

fn service_token(app: &TestApp) -> String {
    app.jwt.issue(Uuid::now_v7(), 600, Some("service")).unwrap()
}

fn admin_token(app: &TestApp) -> String {
    app.jwt.issue(Uuid::now_v7(), 600, Some("admin")).unwrap()
}

async fn send(
    app: &TestApp,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = match method {
        "GET" => app.http.get(app.url(path)),
        _ => app.http.post(app.url(path)),
    }
    .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn wait_until(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A cache entry in the table, as a completed request leaves it.
async fn cache_entry(app: &TestApp, key: &str) {
    sqlx::query(
        "INSERT INTO response_cache (cache_key, response, prompt, model, expires_at)
         VALUES ($1, 'cached answer', 'a prompt', 'mock', NOW() + INTERVAL '1 hour')",
    )
    .bind(key)
    .execute(&app.db.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_cache_invalidation_that_redis_refused_takes_effect_when_the_hub_delivers_it_again() {
    let mut redis = PrivateRedis::start().await;
    let app = spawn_app_with(redis.url()).await;
    let service = service_token(&app);
    cache_entry(&app, "ops-key-1").await;
    let event =
        json!({"id": Uuid::now_v7(), "type": "cache.invalidate", "data": {"model": "mock"}});

    // Redis is down: its copies cannot be deleted, so nothing is applied or recorded.
    redis.kill().await;
    let (status, body) = send(
        &app,
        &service,
        "POST",
        "/api/v1/events",
        Some(event.clone()),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "service_unavailable", "{body}");
    assert_eq!(app.db.count("SELECT COUNT(*) FROM response_cache").await, 1);
    assert_eq!(app.db.count("SELECT COUNT(*) FROM inbox_events").await, 0);

    // The hub delivers it again once Redis is back: it takes effect, once.
    redis.up().await;
    let (status, body) = send(
        &app,
        &service,
        "POST",
        "/api/v1/events",
        Some(event.clone()),
    )
    .await;
    assert_eq!(
        (status, body["invalidated"].clone()),
        (200, json!(1)),
        "{body}"
    );
    assert_eq!(app.db.count("SELECT COUNT(*) FROM response_cache").await, 0);
    let (status, body) = send(&app, &service, "POST", "/api/v1/events", Some(event)).await;
    assert_eq!(
        (status, body["duplicate"].clone()),
        (200, json!(true)),
        "{body}"
    );
}

#[tokio::test]
async fn a_registry_reload_that_failed_takes_effect_when_the_hub_delivers_it_again() {
    let path = std::env::temp_dir().join(format!("models-{}.toml", Uuid::now_v7()));
    let original = include_str!("../../../config/models.toml");
    std::fs::write(&path, original).unwrap();
    let app = llm_tests::spawn_app_with_providers(&[
        "--models-file".to_owned(),
        path.display().to_string(),
    ])
    .await;
    let service = service_token(&app);
    let event = json!({"id": Uuid::now_v7(), "type": "model.updated", "data": {}});

    // The file is broken when the event arrives: refused, nothing recorded.
    std::fs::write(&path, "[[models]]\nid = ").unwrap();
    let (status, body) = send(
        &app,
        &service,
        "POST",
        "/api/v1/events",
        Some(event.clone()),
    )
    .await;
    assert_eq!(status, 422, "{body}");

    // Fixed, and delivered again: the registry is reloaded.
    std::fs::write(
        &path,
        original.replace("id = \"mock-large\"", "id = \"mock-renamed\""),
    )
    .unwrap();
    let (status, body) = send(
        &app,
        &service,
        "POST",
        "/api/v1/events",
        Some(event.clone()),
    )
    .await;
    assert_eq!(
        (status, body["reloaded"].clone()),
        (200, json!(true)),
        "{body}"
    );
    let (status, model) = app.get_json("/api/v1/models/mock-renamed").await;
    assert_eq!((status, model["id"].clone()), (200, json!("mock-renamed")));
    let (_, body) = send(&app, &service, "POST", "/api/v1/events", Some(event)).await;
    assert_eq!(body["duplicate"], true, "{body}");
    let _ = std::fs::remove_file(path);
}

/// A hub that accepts every event but those whose id it is told to refuse.
#[derive(Clone, Default)]
struct PickyHub {
    refused: Arc<Mutex<HashSet<String>>>,
    received: Arc<Mutex<Vec<String>>>,
    up: Arc<AtomicBool>,
}

impl PickyHub {
    async fn start() -> (Self, String) {
        let hub = Self::default();
        hub.up.store(true, Ordering::SeqCst);
        let state = hub.clone();
        let app = axum::Router::new().route(
            "/events",
            axum::routing::post(move |Json(event): Json<Value>| {
                let hub = state.clone();
                async move {
                    let id = event["id"].as_str().unwrap_or_default().to_owned();
                    if !hub.up.load(Ordering::SeqCst) || hub.refused.lock().unwrap().contains(&id) {
                        return StatusCode::UNPROCESSABLE_ENTITY;
                    }
                    hub.received.lock().unwrap().push(id);
                    StatusCode::ACCEPTED
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (hub, url)
    }

    fn received(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }
}

/// Writes hub events of one request to the outbox, in order; returns their ids.
async fn outbox_events(app: &TestApp, request: Uuid, kinds: &[&str]) -> Vec<String> {
    let mut ids = Vec::new();
    for kind in kinds {
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO outbox_events (id, request_id, type, payload) VALUES ($1, $2, $3, '{}')",
        )
        .bind(id)
        .bind(request)
        .bind(kind)
        .execute(&app.db.pool)
        .await
        .unwrap();
        ids.push(id.to_string());
    }
    ids
}

#[tokio::test]
async fn an_event_the_hub_keeps_refusing_becomes_a_dead_letter_that_no_longer_blocks_its_request() {
    let (hub, url) = PickyHub::start().await;
    let app = spawn_app().await;
    let admin = admin_token(&app);
    let request = Uuid::now_v7();
    let ids = outbox_events(
        &app,
        request,
        &["generation.completed", "usage.updated", "generation.failed"],
    )
    .await;
    hub.refused.lock().unwrap().insert(ids[0].clone());
    let _worker = spawn_worker_process(
        &app.db,
        &[
            ("MESSAGE_HUB_URL", url.as_str()),
            ("OUTBOX_MAX_ATTEMPTS", "3"),
        ],
    );

    // Refused three times, the first event is given up: the two behind it arrive, in order.
    wait_until(
        "the later events delivered",
        Duration::from_secs(30),
        async || hub.received().len() == 2,
    )
    .await;
    assert_eq!(hub.received(), ids[1..].to_vec());
    let (status, page) = send(&app, &admin, "GET", "/api/v1/admin/outbox/dead", None).await;
    assert_eq!(status, 200, "{page}");
    let dead = page["dead_letters"].as_array().unwrap();
    assert_eq!(dead.len(), 1, "{page}");
    assert_eq!(dead[0]["id"], ids[0].as_str());
    assert_eq!(dead[0]["request_id"], request.to_string());
    assert_eq!(dead[0]["type"], "generation.completed");
    assert_eq!(dead[0]["attempts"], 3);
    assert!(
        dead[0]["last_error"].as_str().unwrap().contains("422"),
        "{page}"
    );
    assert_eq!(app.db.count("SELECT COUNT(*) FROM outbox_events").await, 0);
    wait_until(
        "the dead letters gauge",
        Duration::from_secs(10),
        async || value(&app.metrics_text().await, "llm_outbox_dead_letters", &[]) == Some(1.0),
    )
    .await;

    // Only admins see or replay them; a replay names what it moves, boundedly.
    let user = app.token();
    assert_eq!(
        send(&app, &user, "GET", "/api/v1/admin/outbox/dead", None)
            .await
            .0,
        403
    );
    let replay = "/api/v1/admin/outbox/dead/replay";
    assert_eq!(
        send(&app, &user, "POST", replay, Some(json!({"all": true})))
            .await
            .0,
        403
    );
    let too_many: Vec<Uuid> = (0..1001).map(|_| Uuid::now_v7()).collect();
    for bad in [
        json!({}),
        json!({"ids": []}),
        json!({"ids": [ids[0]], "all": true}),
        json!({"ids": too_many}),
        json!({"ids": ["not-a-uuid"]}),
        json!({"all": true, "everything": true}),
    ] {
        let (status, body) = send(&app, &admin, "POST", replay, Some(bad.clone())).await;
        assert_eq!(status, 422, "{bad} -> {body}");
        assert!(body["error"]["code"].is_string(), "{body}");
    }
    assert_eq!(
        hub.received().len(),
        2,
        "nothing replayed by a refused body"
    );

    // The hub takes it now: replayed, delivered under its own id, no longer dead.
    hub.refused.lock().unwrap().clear();
    let (status, body) = send(&app, &admin, "POST", replay, Some(json!({"ids": [ids[0]]}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["replayed"], json!([ids[0]]));
    assert_eq!(body["remaining"], false);
    wait_until(
        "the replayed event delivered",
        Duration::from_secs(30),
        async || hub.received().len() == 3,
    )
    .await;
    assert_eq!(hub.received()[2], ids[0]);
    let (_, page) = send(&app, &admin, "GET", "/api/v1/admin/outbox/dead", None).await;
    assert_eq!(page["dead_letters"], json!([]), "{page}");
    assert_eq!(app.db.count("SELECT COUNT(*) FROM outbox_events").await, 0);
}

#[tokio::test]
async fn dead_letters_are_listed_in_bounded_pages_and_replayed_in_bounded_batches() {
    let app = spawn_app().await;
    let admin = admin_token(&app);
    let mut ids = Vec::new();
    for seq in 1..=5_i64 {
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO outbox_dead_letters (seq, id, request_id, type, payload, created_at, attempts, last_error)
             VALUES ($1, $2, NULL, 'usage.updated', '{\"n\": 1}', NOW(), 20, 'the hub answered HTTP 422')",
        )
        .bind(seq)
        .bind(id)
        .execute(&app.db.pool)
        .await
        .unwrap();
        ids.push(json!(id));
    }
    let list = "/api/v1/admin/outbox/dead";
    let (status, first) = send(&app, &admin, "GET", &format!("{list}?limit=2"), None).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["dead_letters"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"].as_i64().unwrap();
    let (_, rest) = send(
        &app,
        &admin,
        "GET",
        &format!("{list}?limit=1000000&cursor={cursor}"),
        None,
    )
    .await;
    let rest: Vec<Value> = rest["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].clone())
        .collect();
    assert_eq!(rest, ids[2..].to_vec());
    for bad in ["limit=many", "cursor=x", "offset=3"] {
        let (status, body) = send(&app, &admin, "GET", &format!("{list}?{bad}"), None).await;
        assert_eq!(status, 400, "{bad} -> {body}");
    }

    let (status, body) = send(
        &app,
        &admin,
        "POST",
        "/api/v1/admin/outbox/dead/replay",
        Some(json!({"all": true})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["replayed"], json!(ids));
    assert_eq!(body["remaining"], false);
    let back: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM outbox_events ORDER BY seq")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(
        json!(back),
        json!(ids),
        "back in the outbox, in their order, under their ids"
    );
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM outbox_dead_letters")
            .await,
        0
    );
}

#[tokio::test]
async fn a_burst_of_metrics_scrapes_reads_the_database_once() {
    let app = spawn_app().await;
    let scrapes = (0..40).map(|_| async {
        let response = app.http.get(app.url("/metrics")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    });
    let texts = futures::future::join_all(scrapes).await;
    for text in &texts {
        assert!(
            value(text, "llm_queue_depth", &[("status", "pending")]).is_some(),
            "{text}"
        );
    }
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let reads = value(&text, "llm_metrics_gauge_reads_total", &[]).unwrap();
    // One read serves the burst (two if it straddled the end of a read's lifetime).
    assert!(
        (1.0..=2.0).contains(&reads),
        "41 scrapes read the database {reads} times"
    );
}

#[tokio::test]
async fn model_health_reads_only_the_latest_calls_of_each_model_within_its_window() {
    let app = spawn_app().await;
    let request = app
        .submit_ok(json!({"prompt": "a request to hang attempts on"}))
        .await;
    // mock (upstream mock-1): its latest 1,000 calls succeeded; 500 failures before them
    // (still within five minutes) and 300 from ten minutes ago. mock-large: 5 recent failures.
    sqlx::query(
        "INSERT INTO generation_attempts
             (request_id, attempt, worker, provider, model, started_at, finished_at, latency_ms, outcome)
         SELECT $1, n, 'w', 'mock', 'mock-1', f, f, 10,
                CASE WHEN n <= 1000 THEN 'succeeded' ELSE 'failed' END
         FROM generate_series(1, 1800) AS n,
              LATERAL (SELECT NOW() - CASE WHEN n <= 1000 THEN make_interval(secs => n / 1000.0)
                                           WHEN n <= 1500 THEN make_interval(secs => 60 + n / 1000.0)
                                           ELSE make_interval(mins => 10) END AS f) t
         UNION ALL
         SELECT $1, 2000 + n, 'w', 'mock', 'mock-large-1', NOW(), NOW(), 10, 'failed'
         FROM generate_series(1, 5) AS n",
    )
    .bind(request)
    .execute(&app.db.pool)
    .await
    .unwrap();

    let (status, models) = app.get_json("/api/v1/models").await;
    assert_eq!(status, 200, "{models}");
    let health = |id: &str| {
        models["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .unwrap()["health"]
            .clone()
    };
    assert_eq!(health("mock")["recent_calls"], 1000, "{models}");
    assert_eq!(health("mock")["error_rate"], 0.0, "{models}");
    assert_eq!(health("mock")["circuit"], "closed");
    assert_eq!(health("mock-large")["recent_calls"], 5, "{models}");
    assert_eq!(health("mock-large")["circuit"], "open");

    // Both steps read the index. On a table this small a scan would be cheaper, so scans are
    // ruled out: the question is whether the index can serve them.
    let mut conn = app.db.pool.acquire().await.unwrap();
    sqlx::raw_sql("ANALYZE generation_attempts; SET enable_seqscan = off")
        .execute(&mut *conn)
        .await
        .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN {}",
        llm_shared::requests::RECENT_CALL_STATS
            .replace("$1", "300")
            .replace("$2", "5")
            .replace("$3", "1000")
    )))
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(!plan.contains("Seq Scan"), "{plan}");
    assert_eq!(
        plan.matches("generation_attempts_recent_calls_idx").count(),
        3,
        "{plan}"
    );
}

#[tokio::test]
async fn the_api_refuses_to_start_without_a_signing_key_even_on_loopback() {
    let app = spawn_app().await; // only for its database
    let serve = tokio::process::Command::new(binary("llm-api"))
        .arg("serve")
        .env_clear()
        .env("DATABASE_URL", &app.db.url)
        .env("API_LISTEN", "127.0.0.1:0")
        .env("PROMPTS_DIR", llm_tests::prompts_dir())
        .env("LOG_LEVEL", "error")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), serve)
        .await
        .expect("the api started without SECRET_KEY")
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SECRET_KEY is not set"), "{stderr}");

    // Nor does `llm-api token` sign with a key of its own.
    let token = tokio::process::Command::new(binary("llm-api"))
        .args(["token", "--user", &Uuid::now_v7().to_string()])
        .env_clear()
        .output()
        .await
        .unwrap();
    assert!(!token.status.success());
    assert!(String::from_utf8_lossy(&token.stderr).contains("SECRET_KEY is not set"));
}
