//! The message hub: events written with each state change reach the hub at least once, in
//! order per request, even when the hub is down for a while or a worker dies mid-delivery; a
//! delivered event is deleted. Events go out, and come in, as CloudEvents 1.0.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use llm_tests::{TestApp, signal, spawn_app, spawn_worker_process};
use serde_json::{Value, json};

#[derive(Clone, Default)]
struct FakeHub {
    up: Arc<AtomicBool>,
    delay_ms: Arc<AtomicUsize>,
    started: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<Value>>>,
    /// The `Content-Type` of each event received.
    content_types: Arc<Mutex<Vec<String>>>,
}

impl FakeHub {
    async fn start() -> (Self, String) {
        let hub = Self::default();
        let state = hub.clone();
        let app = axum::Router::new().route(
            "/events",
            axum::routing::post(move |headers: HeaderMap, Json(event): Json<Value>| {
                let hub = state.clone();
                async move {
                    hub.started.fetch_add(1, Ordering::SeqCst);
                    let delay = hub.delay_ms.load(Ordering::SeqCst) as u64;
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    if !hub.up.load(Ordering::SeqCst) {
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    hub.received.lock().unwrap().push(event);
                    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok());
                    hub.content_types
                        .lock()
                        .unwrap()
                        .push(content_type.unwrap_or_default().to_owned());
                    StatusCode::ACCEPTED
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (hub, url)
    }

    fn received(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }
}

async fn wait_until(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn outbox_ids(app: &TestApp) -> HashSet<String> {
    sqlx::query_scalar::<_, uuid::Uuid>("SELECT id FROM outbox_events")
        .fetch_all(&app.db.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|id| id.to_string())
        .collect()
}

#[tokio::test]
async fn a_hub_that_is_down_then_up_receives_every_event_in_order() {
    let (hub, url) = FakeHub::start().await;
    let app = spawn_app().await;
    let _worker = spawn_worker_process(&app.db, &[("MESSAGE_HUB_URL", url.as_str())]);
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            app.submit_ok(json!({"prompt": format!("hub ok {i}")}))
                .await,
        );
    }
    for i in 0..2 {
        ids.push(
            app.submit_ok(
                json!({"prompt": format!("hub fail {i}"), "mock": {"fail": "permanent"}}),
            )
            .await,
        );
    }
    for id in &ids {
        app.wait_final(*id, Duration::from_secs(20)).await;
    }
    // The hub is down: nothing arrives, the events wait (and are retried).
    wait_until("failed deliveries", Duration::from_secs(10), async || {
        app.db
            .count("SELECT COUNT(*) FROM outbox_events WHERE attempts > 0 AND delivered_at IS NULL")
            .await
            > 0
    })
    .await;
    assert!(hub.received().is_empty());
    assert_eq!(
        app.db.count("SELECT COUNT(*) FROM outbox_events").await,
        4 * 2 + 2
    );
    let written = outbox_ids(&app).await;
    let seqs: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT request_id::text, seq, id::text FROM outbox_events ORDER BY request_id, seq",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();

    hub.up.store(true, Ordering::SeqCst);
    // Delivered means deleted: nothing is left behind, marked or not.
    wait_until(
        "every event delivered and deleted",
        Duration::from_secs(30),
        async || app.db.count("SELECT COUNT(*) FROM outbox_events").await == 0,
    )
    .await;
    let received = hub.received();
    let unique: HashSet<String> = received
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(unique, written, "every event arrived");
    assert_eq!(
        received.len(),
        unique.len(),
        "no duplicates without a crash"
    );
    // CloudEvents 1.0, structured mode: the envelope's attributes, the request as subject.
    let by_id: std::collections::HashMap<String, String> = seqs
        .iter()
        .map(|(request, _, id)| (id.clone(), request.clone()))
        .collect();
    for event in &received {
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["source"], "llm-service");
        assert_eq!(event["datacontenttype"], "application/json");
        assert!(event["time"].is_string());
        assert!(event["data"].is_object());
        let id = event["id"].as_str().unwrap();
        assert_eq!(event["subject"].as_str(), Some(by_id[id].as_str()));
        if event["type"] != "usage.updated" {
            assert_eq!(event["data"]["request_id"], event["subject"], "{event}");
        }
    }
    assert!(
        hub.content_types
            .lock()
            .unwrap()
            .iter()
            .all(|t| t == "application/cloudevents+json")
    );
    let kinds = |t: &str| received.iter().filter(|e| e["type"] == t).count();
    assert_eq!(
        (
            kinds("generation.completed"),
            kinds("usage.updated"),
            kinds("generation.failed")
        ),
        (4, 4, 2)
    );
    // In order per request: each request's events arrived in the order they were written.
    let positions: Vec<(String, String)> = received
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for pair in seqs.windows(2) {
        if pair[0].0 == pair[1].0 {
            let at = |id: &str| positions.iter().position(|(_, e)| e == id).unwrap();
            assert!(
                at(&pair[0].2) < at(&pair[1].2),
                "events of a request arrived out of order"
            );
        }
    }
}

#[tokio::test]
async fn a_worker_killed_during_delivery_loses_no_event() {
    let (hub, url) = FakeHub::start().await;
    hub.up.store(true, Ordering::SeqCst);
    hub.delay_ms.store(1500, Ordering::SeqCst);
    let app = spawn_app().await;
    let mut victim = spawn_worker_process(
        &app.db,
        &[
            ("MESSAGE_HUB_URL", url.as_str()),
            ("WORKER_NAME", "hub-victim"),
        ],
    );
    let id = app.submit_ok(json!({"prompt": "announce me"})).await;
    app.wait_final(id, Duration::from_secs(20)).await;
    wait_until(
        "a delivery in flight",
        Duration::from_secs(10),
        async || hub.started.load(Ordering::SeqCst) > 0,
    )
    .await;
    signal(&victim, libc::SIGKILL);
    victim.wait().await.unwrap();
    let written = outbox_ids(&app).await;
    assert!(!written.is_empty(), "the delivery in flight did not commit");

    hub.delay_ms.store(0, Ordering::SeqCst);
    let _next = spawn_worker_process(&app.db, &[("MESSAGE_HUB_URL", url.as_str())]);
    wait_until(
        "delivery by the next worker",
        Duration::from_secs(30),
        async || app.db.count("SELECT COUNT(*) FROM outbox_events").await == 0,
    )
    .await;
    let unique: HashSet<String> = hub
        .received()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(unique, written);
}

async fn send_event(app: &TestApp, token: &str, event: Value) -> (u16, Value) {
    let r = app
        .http
        .post(app.url("/api/v1/events"))
        .bearer_auth(token)
        .json(&event)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn subscribed_events_have_their_effect_once() {
    let path = std::env::temp_dir().join(format!("models-{}.toml", uuid::Uuid::now_v7()));
    let original = include_str!("../../config/models.toml");
    std::fs::write(&path, original).unwrap();
    let app = llm_tests::spawn_app_with_providers(&[
        "--models-file".to_owned(),
        path.display().to_string(),
    ])
    .await;
    let worker = llm_tests::start_worker(&app.db, &["--models-file", path.to_str().unwrap()]);
    let service = app
        .jwt
        .issue(uuid::Uuid::now_v7(), 600, Some("service"))
        .unwrap();

    // Only service identities (and admins) may deliver events; malformed ones are refused.
    let requested = json!({"id": uuid::Uuid::now_v7(), "type": "generation.requested", "source": "hub",
                           "data": {"user_id": app.user, "prompt": "a quest from the hub"}});
    assert_eq!(
        send_event(&app, &app.token(), requested.clone()).await.0,
        403
    );
    assert_eq!(
        send_event(&app, &service, json!({"type": "generation.requested"}))
            .await
            .0,
        422
    );
    assert_eq!(
        send_event(&app, &service, json!({"id": "nope", "type": "x"}))
            .await
            .0,
        422
    );
    let (status, body) = send_event(&app, &service, json!({"id": uuid::Uuid::now_v7(), "type": "generation.requested", "data": {"prompt": "no user"}})).await;
    assert_eq!(status, 422, "{body}");

    // generation.requested creates a request for the user, once per event id.
    let (status, created) = send_event(&app, &service, requested.clone()).await;
    assert_eq!(status, 202, "{created}");
    let id: uuid::Uuid = created["request_id"].as_str().unwrap().parse().unwrap();
    let done = app.wait_final(id, Duration::from_secs(20)).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["metadata"]["event_id"], requested["id"]);
    let (status, again) = send_event(&app, &service, requested).await;
    assert_eq!((status, again["duplicate"].clone()), (200, json!(true)));
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_requests")
            .await,
        1
    );

    // cache.invalidate clears the matching entries.
    assert_eq!(app.db.count("SELECT COUNT(*) FROM response_cache").await, 1);
    let invalidate =
        json!({"id": uuid::Uuid::now_v7(), "type": "cache.invalidate", "data": {"model": "mock"}});
    let (status, body) = send_event(&app, &service, invalidate.clone()).await;
    assert_eq!((status, body["invalidated"].clone()), (200, json!(1)));
    assert_eq!(app.db.count("SELECT COUNT(*) FROM response_cache").await, 0);
    assert_eq!(
        send_event(&app, &service, invalidate).await.1["duplicate"],
        true
    );

    // model.updated reloads the registry.
    std::fs::write(
        &path,
        original.replace("id = \"mock-large\"", "id = \"mock-xxl\""),
    )
    .unwrap();
    let (status, _) = send_event(
        &app,
        &service,
        json!({"id": uuid::Uuid::now_v7(), "type": "model.updated", "data": {}}),
    )
    .await;
    assert_eq!(status, 200);
    let models: Value = app
        .http
        .get(app.url("/api/v1/models/mock-xxl"))
        .bearer_auth(app.token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["id"], "mock-xxl");

    // Unknown types are acknowledged, with no effect.
    let (status, body) = send_event(
        &app,
        &service,
        json!({"id": uuid::Uuid::now_v7(), "type": "party.started", "data": {}}),
    )
    .await;
    assert_eq!((status, body["ignored"].clone()), (202, json!(true)));
    let _ = std::fs::remove_file(path);
    worker.stop().await;
}

#[tokio::test]
async fn cloud_events_from_the_hub_are_applied_and_other_versions_or_media_refused() {
    let app = spawn_app().await;
    let service = app
        .jwt
        .issue(uuid::Uuid::now_v7(), 600, Some("service"))
        .unwrap();
    let post = |event: Value, content_type: &'static str| {
        app.http
            .post(app.url("/api/v1/events"))
            .bearer_auth(&service)
            .header("content-type", content_type)
            .body(event.to_string())
            .send()
    };
    let event = |extra: Value| {
        let mut e = json!({"specversion": "1.0", "id": uuid::Uuid::now_v7(), "source": "//hub",
                           "type": "generation.requested", "subject": "quest",
                           "time": "2026-12-08T02:00:00Z", "datacontenttype": "application/json",
                           "data": {"user_id": app.user, "prompt": "a CloudEvent from the hub"}});
        e.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        e
    };

    // Another CloudEvents version, or data that is not JSON: refused, nothing recorded.
    for (bad, field) in [
        (json!({"specversion": "0.3"}), "specversion"),
        (json!({"datacontenttype": "text/plain"}), "datacontenttype"),
        (
            json!({"datacontenttype": "application/xml"}),
            "datacontenttype",
        ),
    ] {
        let r = post(event(bad), "application/cloudevents+json")
            .await
            .unwrap();
        assert_eq!(r.status(), 422);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["field"], field, "{body}");
    }
    // A batch of CloudEvents (a JSON array) is not an event.
    let r = post(
        json!([event(json!({}))]),
        "application/cloudevents-batch+json",
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(app.db.count("SELECT COUNT(*) FROM inbox_events").await, 0);

    // A structured CloudEvent is applied once, under either media type.
    let accepted = event(json!({}));
    let r = post(accepted.clone(), "application/cloudevents+json")
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let created: Value = r.json().await.unwrap();
    assert!(created["request_id"].is_string(), "{created}");
    let r = post(accepted, "application/json").await.unwrap();
    let again: Value = r.json().await.unwrap();
    assert_eq!(again["duplicate"], true);
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_requests")
            .await,
        1
    );
}

/// While the hub is down every event waits out its backoff. A pass over such a backlog sends
/// nothing, and the delivery does not read it again until the first backoff ends (at most a
/// few seconds): meanwhile its rounds read only the events written since. It used to read the
/// whole backlog every half second for as long as the hub was down.
#[tokio::test]
async fn a_backlog_waiting_out_its_backoff_is_not_read_again_until_it_is_due() {
    let test = llm_tests::TestDb::new().await;
    let write = |events: i32| {
        sqlx::query(
            "INSERT INTO outbox_events (id, request_id, type, payload, attempts, next_attempt_at)
             SELECT gen_random_uuid(), gen_random_uuid(), 'generation.completed', '{}', 5,
                    NOW() + INTERVAL '1 hour'
             FROM generate_series(1, $1)",
        )
        .bind(events)
        .execute(&test.pool)
    };
    write(1000).await.unwrap();
    let down = reqwest::Url::parse("http://127.0.0.1:9").unwrap();
    let hub = llm_worker::outbox::HubClient::new(&down, None);
    let mut scan = llm_worker::outbox::Scan::default();
    let pool = &test.pool;
    let round = async |scan: &mut llm_worker::outbox::Scan| {
        llm_worker::outbox::deliver_due(pool, &hub, scan, 20)
            .await
            .unwrap()
    };

    // The first pass reads the backlog to its end, and sends nothing.
    let mut read = 0;
    loop {
        let done = round(&mut scan).await;
        assert_eq!(done.delivered, 0);
        read += done.read;
        if !done.more {
            break;
        }
    }
    assert_eq!(read, 1000);
    // The next rounds read only what was written since.
    assert_eq!(round(&mut scan).await.read, 0, "the backlog was read again");
    write(3).await.unwrap();
    assert_eq!(round(&mut scan).await.read, 3);
    assert_eq!(round(&mut scan).await.read, 0, "the backlog was read again");
}
