//! Trace context: the api request's trace id is echoed, stored with the request, and carried by
//! the worker's job span, so the worker's (JSON) logs join the api's; prompts stay out of the
//! info-level logs.

use std::time::Duration;

use llm_tests::{signal, spawn_app, spawn_worker_process_logged};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test]
async fn tracing_carries_the_trace_id_from_the_api_request_to_the_worker_logs() {
    let app = spawn_app().await;
    let mut worker =
        spawn_worker_process_logged(&app.db, &[("LOG_LEVEL", "info"), ("LOG_FORMAT", "json")]);
    let secret_prompt = format!("a prompt that must not be logged {}", uuid::Uuid::now_v7());
    let response = app
        .http
        .post(app.url("/api/v1/generate"))
        .bearer_auth(app.token())
        .header("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01"))
        .json(&json!({"prompt": secret_prompt}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-trace-id"], TRACE_ID);
    let body: Value = response.json().await.unwrap();
    let id: uuid::Uuid = body["request_id"].as_str().unwrap().parse().unwrap();
    let stored: Option<String> =
        sqlx::query_scalar("SELECT trace_id FROM generation_requests WHERE id = $1")
            .bind(id)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(stored.as_deref(), Some(TRACE_ID));
    let done = app.wait_final(id, Duration::from_secs(20)).await;
    assert_eq!(done["status"], "completed");

    // Without a traceparent, a fresh id is generated (and still echoed).
    let other = app.http.get(app.url("/health")).send().await.unwrap();
    let fresh = other.headers()["x-trace-id"].to_str().unwrap().to_owned();
    assert_eq!(fresh.len(), 32);
    assert_ne!(fresh, TRACE_ID);

    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&worker, libc::SIGTERM);
    let mut stdout = worker.stdout.take().unwrap();
    let mut logs = String::new();
    tokio::time::timeout(Duration::from_secs(20), stdout.read_to_string(&mut logs))
        .await
        .expect("the worker stops")
        .unwrap();
    let _ = worker.wait().await;

    let completed: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["message"] == "generation completed")
        .collect();
    assert_eq!(completed.len(), 1, "{logs}");
    let line = &completed[0];
    assert_eq!(line["span"]["name"], "job", "{line}");
    assert_eq!(line["span"]["trace_id"], TRACE_ID, "{line}");
    assert_eq!(line["request.id"], id.to_string(), "{line}");
    assert!(
        !logs.contains(&secret_prompt),
        "the prompt reached the info logs"
    );
}

#[tokio::test]
async fn tracing_stores_the_trace_id_with_every_item_of_a_batch() {
    let app = spawn_app().await;
    let response = app
        .http
        .post(app.url("/api/v1/generate/batch"))
        .bearer_auth(app.token())
        .header("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01"))
        .json(&json!({"items": [{"prompt": "one"}, {"prompt": "two"}, {"prompt": "three"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-trace-id"], TRACE_ID);
    let traced = app
        .db
        .count(&format!(
            "SELECT COUNT(*) FROM generation_requests WHERE trace_id = '{TRACE_ID}'"
        ))
        .await;
    assert_eq!(traced, 3);
}
