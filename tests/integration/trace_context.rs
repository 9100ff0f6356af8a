//! Trace context: the api request's trace id is echoed, stored with the request, and carried by
//! the worker's job span, so the worker's (JSON) logs join the api's; prompts stay out of the
//! info-level logs. With `OTEL_EXPORTER_OTLP_ENDPOINT` set, both binaries export their spans
//! (OTLP/HTTP) and one trace runs from the client to the provider.

use std::time::Duration;

use llm_tests::fake_upstream::{FakeUpstream, Reply, openai};
use llm_tests::otlp::{Collector, ReceivedSpan};
use llm_tests::{
    TestDb, signal, spawn_api_process_with, spawn_app, spawn_worker_process,
    spawn_worker_process_logged, test_jwt,
};
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

/// The environment of an api and a worker exporting to `collector` (in batches every 200 ms),
/// with the OpenAI endpoint at `openai`.
fn exporting<'a>(
    collector: &'a Collector,
    openai: &'a FakeUpstream,
    hub: &'a FakeUpstream,
) -> [(&'a str, &'a str); 5] {
    [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.as_str()),
        ("MESSAGE_HUB_URL", hub.base_url.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ("OPENAI_BASE_URL", openai.base_url.as_str()),
        ("OPENAI_API_KEY", "sk-test-0123456789"),
    ]
}

#[tokio::test]
async fn one_exported_trace_runs_from_the_client_through_the_job_to_the_provider() {
    let collector = Collector::start().await;
    let upstream = FakeUpstream::start("/v1").await;
    upstream.always(openai::success("a tale of two dwarves", 12, 34));
    let hub = FakeUpstream::start("").await;
    hub.always(Reply::Json {
        status: 200,
        body: json!({}),
        headers: vec![],
    });
    let db = TestDb::new().await;
    let env = exporting(&collector, &upstream, &hub);
    let (_api, base) = spawn_api_process_with(&db, &env).await;
    let _worker = spawn_worker_process(&db, &env);
    let token = test_jwt().issue(uuid::Uuid::now_v7(), 600, None).unwrap();
    let http = reqwest::Client::new();

    let response = http
        .post(format!("{base}/api/v1/generate"))
        .bearer_auth(&token)
        .header("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-01"))
        .json(&json!({"prompt": "a tale", "model": "gpt-4o-mini",
                      "parameters": {"max_tokens": 50, "temperature": 0.5}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-trace-id"], TRACE_ID);
    let id = response.json::<Value>().await.unwrap()["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let done: Value = http
        .get(format!("{base}/api/v1/generate/{id}?wait=20"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(done["status"], "completed", "{done}");

    let within = Duration::from_secs(20);
    let in_trace = |s: &ReceivedSpan| s.trace_id == TRACE_ID;
    let request = collector
        .wait_for("request", within, |s| {
            in_trace(s) && s.name == "POST /api/v1/generate"
        })
        .await;
    assert_eq!(request.service, "llm-api");
    assert_eq!(request.kind, 2, "a server span");
    assert_eq!(
        request.parent_span_id, "00f067aa0ba902b7",
        "the client's span"
    );
    assert_eq!(request.attributes["http.route"], "/api/v1/generate");
    assert_eq!(request.attributes["http.response.status_code"], 202);
    let submit = collector
        .wait_for("submit", within, |s| in_trace(s) && s.name == "submit")
        .await;
    assert_eq!(submit.parent_span_id, request.span_id);
    assert_eq!(submit.attributes["request.id"], id);
    let job = collector
        .wait_for("job", within, |s| in_trace(s) && s.name == "job")
        .await;
    assert_eq!(job.service, "llm-worker");
    assert_eq!(
        job.parent_span_id, submit.span_id,
        "the job continues the submit"
    );
    let call = collector
        .wait_for("provider call", within, |s| {
            in_trace(s) && s.name == "chat gpt-4o-mini"
        })
        .await;
    assert_eq!(call.service, "llm-worker");
    assert_eq!(call.kind, 3, "a client span");
    assert_eq!(call.parent_span_id, job.span_id);
    let attribute = |key: &str| call.attributes.get(key).cloned().unwrap_or(Value::Null);
    assert_eq!(attribute("gen_ai.operation.name"), "chat");
    assert_eq!(attribute("gen_ai.system"), "openai");
    assert_eq!(attribute("gen_ai.request.model"), "gpt-4o-mini");
    assert_eq!(attribute("gen_ai.request.max_tokens"), 50);
    assert_eq!(attribute("gen_ai.request.temperature"), 0.5);
    assert_eq!(attribute("gen_ai.usage.input_tokens"), 12);
    assert_eq!(attribute("gen_ai.usage.output_tokens"), 34);
    assert_eq!(attribute("gen_ai.response.finish_reasons"), json!(["stop"]));
    let exported = serde_json::to_string(
        &collector
            .spans()
            .iter()
            .map(|s| &s.attributes)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert!(
        !exported.contains("a tale"),
        "a prompt or an answer was exported"
    );

    // The provider was called within that span: its trace goes on upstream.
    let sent = upstream.received();
    assert_eq!(
        sent[0].headers["traceparent"],
        format!("00-{TRACE_ID}-{}-01", call.span_id).as_str()
    );

    // Its hub events go on in its trace: a producer span, whose context the hub receives in
    // the header and in the CloudEvent (distributed tracing extension).
    let delivery = collector
        .wait_for("hub delivery", within, |s| {
            in_trace(s) && s.name == "send generation.completed"
        })
        .await;
    assert_eq!(delivery.kind, 4, "a producer span");
    let expected = format!("00-{TRACE_ID}-{}-01", delivery.span_id);
    let events = hub.received();
    let completed = events
        .iter()
        .find(|e| e.body["type"] == "generation.completed")
        .expect("the hub received the completion");
    assert_eq!(completed.headers["traceparent"], expected.as_str());
    assert_eq!(completed.body["traceparent"], expected);
    assert_eq!(completed.body["subject"], id);

    // Without a trace context, the exported trace is a new one and the answer names it.
    let fresh = http
        .get(format!("{base}/health"))
        .header("traceparent", "00-not-a-trace-01")
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.status(), 200, "a malformed traceparent is ignored");
    let fresh = fresh.headers()["x-trace-id"].to_str().unwrap().to_owned();
    assert_ne!(fresh, TRACE_ID);
    let health = collector
        .wait_for("health", within, |s| s.trace_id == fresh)
        .await;
    assert_eq!(health.name, "GET /health");
    assert_eq!(health.parent_span_id, "", "a root span");
}

#[tokio::test]
async fn a_collector_that_is_down_or_unusable_never_holds_the_service() {
    let db = TestDb::new().await;
    let down = format!("http://127.0.0.1:{}", llm_tests::free_port());
    for endpoint in [down.as_str(), "https://collector.example", "not a url"] {
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ];
        let (_api, base) = spawn_api_process_with(&db, &env).await;
        let token = test_jwt().issue(uuid::Uuid::now_v7(), 600, None).unwrap();
        for _ in 0..20 {
            let response = reqwest::Client::new()
                .post(format!("{base}/api/v1/generate"))
                .bearer_auth(&token)
                .timeout(Duration::from_secs(5))
                .json(&json!({"prompt": "still served"}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 202, "{endpoint}");
        }
    }
}
