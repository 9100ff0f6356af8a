//! The Anthropic-compatible front door (`/v1/messages`): each call is a durable request (row,
//! job, attempts, usage) that answers in Anthropic's formats — a `message`, the SSE event
//! sequence, Anthropic-shaped errors — and the official Python SDK works against it unchanged.

use std::time::Duration;

use llm_tests::fake_upstream::{self, FakeUpstream};
use llm_tests::sse::{SseMessage, SseReader};
use llm_tests::{TestApp, spawn_api_process_with, spawn_worker_process, start_worker};
use serde_json::{Value, json};
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(30);
pub(crate) const VERSION: &str = "2023-06-01";

/// `POST /v1/messages` with the test user's JWT as `x-api-key`, as Anthropic's SDKs send it.
pub(crate) async fn post(
    app: &TestApp,
    token: &str,
    body: Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let response = app
        .http
        .post(app.url("/v1/messages"))
        .header("x-api-key", token)
        .header("anthropic-version", VERSION)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (
        status,
        headers,
        response.json().await.unwrap_or(Value::Null),
    )
}

fn request_id(headers: &reqwest::header::HeaderMap) -> Uuid {
    headers["request-id"].to_str().unwrap().parse().unwrap()
}

/// The events of a streamed message, up to `message_stop` or `error` (included).
async fn events_of(app: &TestApp, body: Value) -> (u16, Option<Uuid>, Vec<SseMessage>) {
    let request = app
        .http
        .post(app.url("/v1/messages"))
        .bearer_auth(app.token())
        .header("anthropic-version", VERSION)
        .json(&body);
    let mut reader = SseReader::open(request).await;
    let mut out = Vec::new();
    while let Some(message) = reader.next(LONG).await {
        let end = message.event == "message_stop" || message.event == "error";
        out.push(message);
        if end {
            break;
        }
    }
    let id = out
        .first()
        .and_then(|e| e.data["message"]["id"].as_str())
        .and_then(|id| id.strip_prefix("msg_"))
        .and_then(|id| id.parse().ok());
    (reader.status, id, out)
}

fn streamed_text(events: &[SseMessage]) -> String {
    events
        .iter()
        .filter(|e| e.event == "content_block_delta")
        .filter_map(|e| e.data["delta"]["text"].as_str())
        .collect()
}

#[tokio::test]
async fn a_message_is_a_durable_request_answered_in_anthropic_format() {
    let (app, worker) = llm_tests::app_with_worker(&[]).await;
    let (status, headers, body) = post(
        &app,
        &app.token(),
        json!({
            "model": "mock",
            "max_tokens": 12,
            "system": [{"type": "text", "text": "You are a dungeon master."}],
            "messages": [
                {"role": "user", "content": "Name a tavern."},
                {"role": "assistant", "content": "The Prancing Pony."},
                {"role": "user", "content": [{"type": "text", "text": "Another one.", "cache_control": {"type": "ephemeral"}}]}
            ],
            "temperature": 0.5,
            "stop_sequences": ["THE END"],
            "metadata": {"user_id": "player-7"}
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let id = request_id(&headers);
    assert_eq!(headers["x-request-id"], id.to_string());
    assert_eq!(body["id"], format!("msg_{id}"));
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["model"], "mock");
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["stop_sequence"], Value::Null);
    assert_eq!(body["content"].as_array().unwrap().len(), 1);
    assert_eq!(body["content"][0]["type"], "text");
    let text = body["content"][0]["text"].as_str().unwrap();
    assert_eq!(text.split(' ').count(), 12);

    // The same request, durable: pollable, with its attempt and usage.
    let (_, row) = app.poll(id, 0).await;
    assert_eq!(row["status"], "completed");
    assert_eq!(row["result"], text);
    assert_eq!(row["prompt"], "Another one.");
    assert_eq!(row["parameters"]["system"], "You are a dungeon master.");
    assert_eq!(row["parameters"]["stop"], json!(["THE END"]));
    assert_eq!(
        row["parameters"]["history"],
        json!([
            {"role": "user", "content": "Name a tavern."},
            {"role": "assistant", "content": "The Prancing Pony."}
        ])
    );
    assert_eq!(row["metadata"]["api"], "anthropic.messages");
    assert_eq!(row["metadata"]["anthropic_user_id"], "player-7");
    assert_eq!(body["usage"]["output_tokens"], 12);
    assert_eq!(body["usage"]["input_tokens"], row["prompt_tokens"]);
    assert_eq!(row["attempt_history"].as_array().unwrap().len(), 1);

    // The bearer token works as well as x-api-key.
    let response = app
        .http
        .post(app.url("/v1/messages"))
        .bearer_auth(app.token())
        .header("anthropic-version", "2024-01-01")
        .json(&json!({"model": "mock", "max_tokens": 4,
                      "messages": [{"role": "user", "content": "Hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    worker.stop().await;
}

#[tokio::test]
async fn the_conversation_reaches_anthropic_whole_and_a_cut_answer_stops_for_max_tokens() {
    let anthropic = FakeUpstream::start("").await;
    anthropic
        .then(fake_upstream::anthropic::success("Aye.", 20, 1))
        .then(fake_upstream::Reply::Json {
            status: 200,
            body: json!({
                "id": "msg_02", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                "content": [{"type": "text", "text": "Arr, the treasure lies"}],
                "stop_reason": "max_tokens", "stop_sequence": null,
                "usage": {"input_tokens": 9, "output_tokens": 5}
            }),
            headers: vec![],
        });
    let flags = [
        "--anthropic-base-url",
        &anthropic.base_url,
        "--anthropic-api-key",
        "sk-ant-test-0123456789",
    ]
    .map(String::from);
    let (app, worker) = llm_tests::app_with_worker(&flags).await;
    let (status, _, body) = post(
        &app,
        &app.token(),
        json!({"model": "claude-sonnet", "max_tokens": 64,
        "system": "Speak like a pirate.",
        "messages": [
            {"role": "user", "content": "Hello?"},
            {"role": "assistant", "content": "Ahoy."},
            {"role": "user", "content": "Where is the treasure?"}
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["content"][0]["text"], "Aye.");
    assert_eq!(body["model"], "claude-sonnet");
    let sent = &anthropic.received()[0].body;
    assert_eq!(sent["system"], "Speak like a pirate.");
    assert_eq!(sent["max_tokens"], 64);
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "user", "content": "Hello?"},
            {"role": "assistant", "content": "Ahoy."},
            {"role": "user", "content": "Where is the treasure?"}
        ])
    );

    // An answer cut by its token limit stops for `max_tokens`.
    let (status, _, body) = post(
        &app,
        &app.token(),
        json!({"model": "claude-sonnet", "max_tokens": 5,
               "messages": [{"role": "user", "content": "Where, exactly?"}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["stop_reason"], "max_tokens");
    assert_eq!(
        body["usage"],
        json!({"input_tokens": 9, "output_tokens": 5})
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_streamed_message_sends_anthropics_event_sequence() {
    let (app, worker) = llm_tests::app_with_worker(&[]).await;
    let body = json!({"model": "mock", "stream": true, "max_tokens": 20,
                      "messages": [{"role": "user", "content": "A rumour"}]});
    let (status, id, events) = events_of(&app, body.clone()).await;
    assert_eq!(status, 200);
    let id = id.expect("message_start carries the request id");
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        &names[..3],
        ["message_start", "content_block_start", "ping"],
        "{names:?}"
    );
    assert_eq!(
        &names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"],
        "{names:?}"
    );
    assert!(
        names[3..names.len() - 3]
            .iter()
            .all(|n| *n == "content_block_delta" || *n == "ping"),
        "{names:?}"
    );
    assert!(names.len() > 8, "the answer came in pieces: {names:?}");
    for event in &events {
        assert_eq!(event.data["type"], event.event, "{event:?}");
    }
    let start = &events[0].data["message"];
    assert_eq!(start["role"], "assistant");
    assert_eq!(start["model"], "mock");
    assert_eq!(start["content"], json!([]));
    assert_eq!(
        events[1].data["content_block"],
        json!({"type": "text", "text": ""})
    );
    let delta = &events[names.len() - 2].data;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 20);
    let (_, row) = app.poll(id, 0).await;
    assert_eq!(row["status"], "completed");
    assert_eq!(row["metadata"]["api"], "anthropic.messages");
    assert_eq!(streamed_text(&events), row["result"].as_str().unwrap());

    // The same call again is answered from the cache: the same sequence and text.
    let (status, again, cached) = events_of(&app, body).await;
    assert_eq!(status, 200);
    let again = again.unwrap();
    assert_ne!(again, id, "a request of its own");
    assert_eq!(app.poll(again, 0).await.1["cached"], true);
    let names: Vec<&str> = cached.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names[0], "message_start", "{names:?}");
    assert_eq!(names[names.len() - 1], "message_stop", "{names:?}");
    assert_eq!(streamed_text(&cached), row["result"].as_str().unwrap());
    worker.stop().await;
}

#[tokio::test]
async fn a_failed_streamed_message_ends_with_an_error_event() {
    let (app, worker) = llm_tests::app_with_worker(&[]).await;
    let (status, id, events) = events_of(
        &app,
        json!({"model": "mock", "stream": true, "max_tokens": 8, "mock": {"fail": "permanent"},
               "messages": [{"role": "user", "content": "doomed"}]}),
    )
    .await;
    assert_eq!(status, 200);
    let last = events.last().unwrap();
    assert_eq!(last.event, "error", "{events:?}");
    assert_eq!(last.data["type"], "error");
    assert_eq!(last.data["error"]["type"], "invalid_request_error");
    assert!(last.data["error"]["message"].is_string());
    assert_eq!(last.data["request_id"], id.unwrap().to_string());
    assert!(!events.iter().any(|e| e.event == "message_stop"));

    // Not streamed: the same failure answers with its status and Anthropic's error.
    let (status, headers, body) = post(
        &app,
        &app.token(),
        json!({"model": "mock", "max_tokens": 8, "mock": {"fail": "permanent"},
               "messages": [{"role": "user", "content": "doomed again"}]}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["request_id"], request_id(&headers).to_string());
    assert_eq!(headers["x-should-retry"], "false");
    worker.stop().await;
}

#[tokio::test]
async fn errors_have_anthropic_shape_and_what_cannot_be_honoured_is_refused() {
    let app = llm_tests::spawn_app().await;
    let user = json!([{"role": "user", "content": "x"}]);
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (
            json!({"model": "nope", "max_tokens": 5, "messages": user}),
            404,
            "not_found_error",
            "model",
        ),
        (
            json!({"model": "mock", "messages": user}),
            400,
            "invalid_request_error",
            "max_tokens",
        ),
        (
            json!({"model": "mock", "max_tokens": 4097, "messages": user}),
            400,
            "invalid_request_error",
            "max_tokens",
        ),
        (
            json!({"model": "mock", "max_tokens": 0, "messages": user}),
            400,
            "invalid_request_error",
            "max_tokens",
        ),
        (
            json!({"model": "mock", "max_tokens": 5, "messages": []}),
            400,
            "invalid_request_error",
            "messages",
        ),
        (
            json!({"model": "mock", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}),
            400,
            "invalid_request_error",
            "messages.0.role",
        ),
        (
            json!({"model": "mock", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}),
            400,
            "invalid_request_error",
            "messages",
        ),
        (
            json!({"model": "mock", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}]}),
            400,
            "invalid_request_error",
            "messages.0.content.0.type",
        ),
        (
            json!({"model": "mock", "max_tokens": 5, "messages": [{"role": "user", "content": "   "}]}),
            400,
            "invalid_request_error",
            "messages",
        ),
        (
            json!({"model": "mock", "max_tokens": 5, "messages": user, "top_k": 40}),
            400,
            "invalid_request_error",
            "top_k",
        ),
        (
            json!({"model": "mock", "max_tokens": 5, "messages": user, "temperature": 1.5}),
            400,
            "invalid_request_error",
            "temperature",
        ),
        (
            json!({"model": "mock", "max_tokens": 5, "messages": user, "stop_sequences": ["a", "b", "c", "d", "e"]}),
            400,
            "invalid_request_error",
            "stop_sequences",
        ),
        (
            json!({"model": "mock", "max_tokens": 5, "messages": user, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
            400,
            "invalid_request_error",
            "tools",
        ),
        (
            json!({"model": "mock", "max_tokens": "many", "messages": user}),
            400,
            "invalid_request_error",
            "",
        ),
    ];
    for (body, status, kind, param) in cases {
        let (got, headers, answer) = post(&app, &app.token(), body.clone()).await;
        assert_eq!(got, status, "{body} → {answer}");
        assert_eq!(answer["type"], "error", "{answer}");
        assert_eq!(answer["error"]["type"], kind, "{body} → {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(param), "{body} → {message}");
        assert_eq!(headers["x-should-retry"], "false", "{body}");
    }

    // No anthropic-version, no key, a bad key, not JSON.
    let call = |version: Option<&str>, key: Option<&str>, body: &str| {
        let mut request = app
            .http
            .post(app.url("/v1/messages"))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(version) = version {
            request = request.header("anthropic-version", version);
        }
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        request.send()
    };
    let valid =
        r#"{"model": "mock", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}"#;
    let token = app.token();
    for (version, key, body, status, kind) in [
        (
            None,
            Some(token.as_str()),
            valid,
            400,
            "invalid_request_error",
        ),
        (Some(VERSION), None, valid, 401, "authentication_error"),
        (
            Some(VERSION),
            Some("sk-ant-not-ours"),
            valid,
            401,
            "authentication_error",
        ),
        (
            Some(VERSION),
            Some(token.as_str()),
            "{not json",
            400,
            "invalid_request_error",
        ),
    ] {
        let response = call(version, key, body).await.unwrap();
        assert_eq!(response.status(), status, "{version:?} {key:?} {body}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["type"], "error");
        assert_eq!(answer["error"]["type"], kind, "{answer}");
    }
    assert_eq!(
        app.db
            .count("SELECT count(*) FROM generation_requests")
            .await,
        0,
        "no refused call created a request"
    );
}

#[tokio::test]
async fn a_rate_limited_message_is_429_with_retry_after_and_anthropics_error() {
    let app = llm_tests::spawn_app().await;
    llm_tests::limit_to_one_request_per_minute(&app.url(""), app.user).await;
    let body = json!({"model": "mock", "max_tokens": 4,
                      "messages": [{"role": "user", "content": "x"}]});
    let response = app
        .http
        .post(app.url("/v1/messages"))
        .header("x-api-key", app.token())
        .header("anthropic-version", VERSION)
        .json(&json!({"model": "mock", "max_tokens": 4, "stream": true,
                      "messages": [{"role": "user", "content": "first"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "the first call of the minute passes"
    );
    drop(response);
    let (status, headers, answer) = post(&app, &app.token(), body).await;
    assert_eq!(status, 429, "{answer}");
    assert_eq!(answer["type"], "error");
    assert_eq!(answer["error"]["type"], "rate_limit_error");
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after));
    assert!(
        headers.get("x-should-retry").is_none(),
        "a 429 may be retried"
    );
}

#[tokio::test]
async fn a_retry_that_regenerates_what_was_sent_streams_on_and_one_that_differs_errors() {
    let openai = FakeUpstream::start("/v1").await;
    openai
        // Cut after "Hello ", then the retry says the same and more: seamless.
        .then(fake_upstream::openai::stream(
            &["Hello ", "wor"],
            5,
            2,
            false,
        ))
        .then(fake_upstream::openai::stream(
            &["Hello ", "world."],
            5,
            2,
            true,
        ))
        // Cut after "Half ", then the retry says something else: the client is told.
        .then(fake_upstream::openai::stream(&["Half ", "a "], 5, 2, false))
        .then(fake_upstream::openai::stream(
            &["A whole answer."],
            5,
            3,
            true,
        ));
    let flags = llm_tests::openai_flags(&openai);
    let (app, worker) = llm_tests::app_with_worker(&flags).await;
    let body = json!({"model": "gpt-4o", "max_tokens": 16, "stream": true,
                      "cache": {"no_cache": true},
                      "messages": [{"role": "user", "content": "Greet"}]});
    let (_, id, seamless) = events_of(&app, body.clone()).await;
    assert_eq!(seamless.last().unwrap().event, "message_stop");
    assert_eq!(streamed_text(&seamless), "Hello world.");
    let (_, row) = app.poll(id.unwrap(), 0).await;
    assert_eq!(row["result"], "Hello world.");

    let (_, id, diverged) = events_of(&app, body).await;
    let last = diverged.last().unwrap();
    assert_eq!(last.event, "error", "{diverged:?}");
    assert_eq!(last.data["error"]["type"], "api_error");
    let id = id.unwrap();
    assert_eq!(last.data["request_id"], id.to_string());
    assert!(streamed_text(&diverged).starts_with("Half"));
    let (_, row) = app.poll(id, 0).await;
    assert_eq!(row["status"], "completed");
    assert_eq!(
        row["result"], "A whole answer.",
        "the stored result is whole"
    );
    worker.stop().await;
}

#[tokio::test]
async fn without_the_relay_a_streamed_message_is_529_overloaded_and_nothing_is_stored() {
    let app = llm_tests::spawn_app_with("redis://127.0.0.1:1".into()).await;
    let (status, headers, answer) = post(
        &app,
        &app.token(),
        json!({"model": "mock", "max_tokens": 4, "stream": true,
               "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 529, "{answer}");
    assert_eq!(answer["error"]["type"], "overloaded_error");
    assert!(
        headers.get("x-should-retry").is_none(),
        "an overload may be retried"
    );
    assert_eq!(
        app.db
            .count("SELECT count(*) FROM generation_requests")
            .await,
        0
    );
}

#[tokio::test]
async fn a_message_that_outlasts_its_wait_answers_504_with_the_id_to_poll() {
    let db = llm_tests::TestDb::new().await;
    let (_api, base) = spawn_api_process_with(&db, &[("OPENAI_COMPAT_WAIT_SECS", "1")]).await;
    let _worker = spawn_worker_process(&db, &[]);
    let token = llm_tests::test_jwt()
        .issue(Uuid::now_v7(), 600, None)
        .unwrap();
    let http = reqwest::Client::new();
    let call = || {
        http.post(format!("{base}/v1/messages"))
            .header("x-api-key", &token)
            .header("anthropic-version", VERSION)
            .header("Idempotency-Key", "slow-message-1")
            .json(
                &json!({"model": "mock", "max_tokens": 8, "mock": {"latency_ms": 3000},
                          "messages": [{"role": "user", "content": "slowly"}]}),
            )
            .send()
    };
    let response = call().await.unwrap();
    assert_eq!(response.status(), 504);
    assert_eq!(response.headers()["x-should-retry"], "false");
    let id = request_id(response.headers());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "timeout_error");
    assert_eq!(body["request_id"], id.to_string());
    let poll_url = body["error"]["poll_url"].as_str().unwrap().to_owned();
    let polled = http
        .get(format!("{base}{poll_url}?wait=10"))
        .bearer_auth(&token);
    let polled: Value = polled.send().await.unwrap().json().await.unwrap();
    assert_eq!(polled["status"], "completed", "{polled}");
    // The same call again (its Idempotency-Key) is the same request, now complete.
    let again: Value = call().await.unwrap().json().await.unwrap();
    assert_eq!(again["id"], format!("msg_{id}"));
    assert_eq!(again["content"][0]["text"], polled["result"]);
    assert_eq!(
        db.count("SELECT count(*) FROM generation_requests").await,
        1
    );
}

#[tokio::test]
async fn models_are_listed_in_anthropic_format_to_anthropic_clients() {
    let app = llm_tests::spawn_app().await;
    let get = |path: &str, key: Option<String>| {
        let mut request = app
            .http
            .get(app.url(path))
            .header("anthropic-version", VERSION);
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        request.send()
    };
    let response = get("/v1/models", Some(app.token())).await.unwrap();
    assert_eq!(response.status(), 200);
    let list: Value = response.json().await.unwrap();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"mock") && ids.contains(&"mock-large"),
        "{ids:?}"
    );
    assert!(!ids.contains(&"claude-sonnet"), "no Anthropic key here");
    assert_eq!(list["has_more"], false);
    assert_eq!(list["first_id"], ids[0]);
    assert_eq!(list["data"][0]["type"], "model");
    assert!(list["data"][0]["created_at"].is_string());

    let one: Value = get("/v1/models/mock", Some(app.token()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["type"], "model");
    assert_eq!(one["id"], "mock");
    let missing = get("/v1/models/claude-sonnet", Some(app.token()))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let missing: Value = missing.json().await.unwrap();
    assert_eq!(missing["error"]["type"], "not_found_error");
    let anonymous = get("/v1/models", None).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let anonymous: Value = anonymous.json().await.unwrap();
    assert_eq!(anonymous["error"]["type"], "authentication_error");

    // Without anthropic-version, the same route answers OpenAI's list.
    let (status, list) = app.get_json("/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(list["object"], "list");
}

/// The official `anthropic` Python SDK, unchanged, against the real binaries: a message, a
/// streamed message (its helper and `stream=True`), a 429 as its `RateLimitError` and an
/// invalid request as its `BadRequestError` (tests/python/anthropic_sdk_check.py).
#[tokio::test]
async fn the_official_anthropic_python_sdk_works_unchanged() {
    let python = llm_tests::openai_sdk_python().await;
    let db = llm_tests::TestDb::new().await;
    let (_api, base) = spawn_api_process_with(&db, &[]).await;
    let _worker = start_worker(&db, &[]);
    let jwt = llm_tests::test_jwt();
    let (user, limited) = (Uuid::now_v7(), Uuid::now_v7());
    llm_tests::limit_to_one_request_per_minute(&base, limited).await;
    let output = tokio::process::Command::new(&python)
        .arg(llm_tests::repo_root().join("tests/python/anthropic_sdk_check.py"))
        .env("ANTHROPIC_BASE_URL", &base)
        .env("ANTHROPIC_API_KEY", jwt.issue(user, 600, None).unwrap())
        .env("LIMITED_API_KEY", jwt.issue(limited, 600, None).unwrap())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "SDK checks failed:\n{stdout}\n{stderr}"
    );
    for check in [
        "message",
        "stream_helper",
        "stream_events",
        "rate_limit",
        "bad_request",
        "models",
    ] {
        assert!(
            stdout.lines().any(|l| l == format!("ok {check}")),
            "{check} missing:\n{stdout}"
        );
    }
    // What the SDK created are ordinary durable requests.
    assert_eq!(
        db.count("SELECT count(*) FROM generation_requests WHERE status = 'completed' AND metadata->>'api' = 'anthropic.messages'")
            .await,
        4,
        "the message, the two streams and the limited user's first call"
    );
}
