//! The OpenAI-compatible front door (`/v1/...`): each call is a durable request (row, job,
//! attempts, usage) that answers in OpenAI's formats — JSON, SSE chunks with `[DONE]`, and
//! OpenAI-shaped errors — and the official Python SDK works against it unchanged.

use std::time::Duration;

use llm_tests::fake_upstream::{self, FakeUpstream};
use llm_tests::sse::SseReader;
use llm_tests::{TestApp, spawn_api_process_with, spawn_worker_process, start_worker};
use serde_json::{Value, json};
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(30);

async fn post(app: &TestApp, path: &str, body: Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let response = app
        .http
        .post(app.url(path))
        .bearer_auth(app.token())
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
    headers["x-request-id"].to_str().unwrap().parse().unwrap()
}

/// The `data:` payloads of an OpenAI stream, up to `[DONE]` or an error chunk (included).
async fn chunks(app: &TestApp, path: &str, body: Value) -> (u16, Option<Uuid>, Vec<Value>) {
    let response = app
        .http
        .post(app.url(path))
        .bearer_auth(app.token())
        .json(&body);
    let mut reader = SseReader::open(response).await;
    let mut out = Vec::new();
    while let Some(message) = reader.next(LONG).await {
        let end = message.data == "[DONE]" || message.data.get("error").is_some();
        out.push(message.data);
        if end {
            break;
        }
    }
    let id = out
        .first()
        .and_then(|c| c["id"].as_str())
        .and_then(|s| s.parse().ok());
    (reader.status, id, out)
}

fn streamed_content(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| {
            let choice = c["choices"].get(0)?;
            choice["delta"]["content"]
                .as_str()
                .or_else(|| choice["text"].as_str())
                .map(str::to_owned)
        })
        .collect()
}

#[tokio::test]
async fn a_chat_completion_is_a_durable_request_answered_in_openai_format() {
    let (app, worker) = llm_tests::app_with_worker(&[]).await;
    let (status, headers, body) = post(
        &app,
        "/v1/chat/completions",
        json!({
            "model": "mock",
            "messages": [
                {"role": "system", "content": "You are a dungeon master."},
                {"role": "user", "content": "Name a tavern."},
                {"role": "assistant", "content": "The Prancing Pony."},
                {"role": "user", "content": [{"type": "text", "text": "Another one."}]}
            ],
            "max_tokens": 12,
            "temperature": 0.5,
            "n": 1,
            "presence_penalty": 0,
            "user": "player-7"
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let id = request_id(&headers);
    assert_eq!(body["id"], id.to_string());
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "mock");
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["finish_reason"], "stop");
    let content = choice["message"]["content"].as_str().unwrap();
    assert_eq!(content.split(' ').count(), 12);

    // The same request, durable: pollable, with its attempt and usage.
    let (_, row) = app.poll(id, 0).await;
    assert_eq!(row["status"], "completed");
    assert_eq!(row["result"], content);
    assert_eq!(row["prompt"], "Another one.");
    assert_eq!(row["parameters"]["system"], "You are a dungeon master.");
    assert_eq!(
        row["parameters"]["history"],
        json!([
            {"role": "user", "content": "Name a tavern."},
            {"role": "assistant", "content": "The Prancing Pony."}
        ])
    );
    assert_eq!(row["metadata"]["api"], "openai.chat.completions");
    let trace_id = headers["x-trace-id"].to_str().unwrap();
    let stored: Option<String> =
        sqlx::query_scalar("SELECT trace_id FROM generation_requests WHERE id = $1")
            .bind(id)
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(
        stored.as_deref(),
        Some(trace_id),
        "the call's trace joins its job's"
    );
    assert_eq!(row["metadata"]["openai_user"], "player-7");
    assert_eq!(body["usage"]["completion_tokens"], 12);
    assert_eq!(body["usage"]["prompt_tokens"], row["prompt_tokens"]);
    assert_eq!(row["attempt_history"].as_array().unwrap().len(), 1);

    // Another conversation with the same last message is another answer (history counts).
    let (_, _, other) = post(
        &app,
        "/v1/chat/completions",
        json!({"model": "mock", "max_tokens": 12,
               "messages": [{"role": "user", "content": "Another one."}]}),
    )
    .await;
    assert_ne!(other["choices"][0]["message"]["content"], content);
    worker.stop().await;
}

#[tokio::test]
async fn the_conversation_reaches_each_provider_in_its_own_format() {
    let openai = FakeUpstream::start("/v1").await;
    openai.always(fake_upstream::openai::success("Aye.", 20, 1));
    let anthropic = FakeUpstream::start("").await;
    anthropic.always(fake_upstream::anthropic::success("Aye.", 20, 1));
    let mut flags = llm_tests::openai_flags(&openai);
    flags.extend(
        [
            "--anthropic-base-url",
            &anthropic.base_url,
            "--anthropic-api-key",
            "sk-ant-test-0123456789",
        ]
        .map(String::from),
    );
    let (app, worker) = llm_tests::app_with_worker(&flags).await;
    let messages = json!([
        {"role": "developer", "content": "Speak like a pirate."},
        {"role": "user", "content": "Hello?"},
        {"role": "assistant", "content": "Ahoy."},
        {"role": "user", "content": "Where is the treasure?"}
    ]);
    for model in ["gpt-4o", "claude-sonnet"] {
        let (status, _, body) = post(
            &app,
            "/v1/chat/completions",
            json!({"model": model, "messages": messages, "cache": {"no_cache": true}}),
        )
        .await;
        assert_eq!(status, 200, "{model}: {body}");
        assert_eq!(body["choices"][0]["message"]["content"], "Aye.");
    }
    let sent = &openai.received()[0].body;
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "system", "content": "Speak like a pirate."},
            {"role": "user", "content": "Hello?"},
            {"role": "assistant", "content": "Ahoy."},
            {"role": "user", "content": "Where is the treasure?"}
        ])
    );
    let sent = &anthropic.received()[0].body;
    assert_eq!(sent["system"], "Speak like a pirate.");
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "user", "content": "Hello?"},
            {"role": "assistant", "content": "Ahoy."},
            {"role": "user", "content": "Where is the treasure?"}
        ])
    );
    worker.stop().await;
}

#[tokio::test]
async fn a_streamed_chat_completion_sends_openai_chunks_and_done() {
    let (app, worker) = llm_tests::app_with_worker(&[]).await;
    let (status, id, chunks) = chunks(
        &app,
        "/v1/chat/completions",
        json!({"model": "mock", "stream": true, "stream_options": {"include_usage": true},
               "max_tokens": 20, "messages": [{"role": "user", "content": "A rumour"}]}),
    )
    .await;
    assert_eq!(status, 200);
    let id = id.expect("chunks carry the request id");
    assert_eq!(chunks.last().unwrap(), "[DONE]", "{chunks:?}");
    let data = &chunks[..chunks.len() - 1];
    assert!(
        data.iter()
            .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == id.to_string()),
        "{chunks:?}"
    );
    assert_eq!(data[0]["choices"][0]["delta"]["role"], "assistant");
    let usage_chunk = data.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 20);
    let finish = &data[data.len() - 2]["choices"][0];
    assert_eq!(finish["finish_reason"], "stop");
    assert_eq!(finish["delta"], json!({}));
    assert!(
        data[..data.len() - 1]
            .iter()
            .all(|c| c["usage"].is_null() && c.get("usage").is_some()),
        "with include_usage, every other chunk has usage: null"
    );
    let (_, row) = app.poll(id, 0).await;
    assert_eq!(row["status"], "completed");
    assert_eq!(streamed_content(data), row["result"].as_str().unwrap());
    assert!(data.len() > 5, "the answer came in pieces: {chunks:?}");
    worker.stop().await;
}

#[tokio::test]
async fn a_failed_streamed_generation_ends_with_an_error_chunk_not_done() {
    let (app, worker) = llm_tests::app_with_worker(&[]).await;
    let (status, _, chunks) = chunks(
        &app,
        "/v1/chat/completions",
        json!({"model": "mock", "stream": true, "mock": {"fail": "permanent"},
               "messages": [{"role": "user", "content": "doomed"}]}),
    )
    .await;
    assert_eq!(status, 200);
    let last = chunks.last().unwrap();
    assert!(last.get("error").is_some(), "{chunks:?}");
    assert_eq!(last["error"]["code"], "rejected");
    assert!(!chunks.iter().any(|c| c == "[DONE]"));
    worker.stop().await;
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

    let body = json!({"model": "gpt-4o", "stream": true, "cache": {"no_cache": true},
                      "messages": [{"role": "user", "content": "Greet"}]});
    let (_, id, seamless) = chunks(&app, "/v1/chat/completions", body.clone()).await;
    assert_eq!(seamless.last().unwrap(), "[DONE]", "{seamless:?}");
    assert_eq!(streamed_content(&seamless), "Hello world.");
    let (_, row) = app.poll(id.unwrap(), 0).await;
    assert_eq!(row["result"], "Hello world.");

    let (_, id, diverged) = chunks(&app, "/v1/chat/completions", body).await;
    let last = diverged.last().unwrap();
    assert_eq!(
        last["error"]["code"], "generation_restarted",
        "{diverged:?}"
    );
    let id = id.unwrap();
    assert_eq!(last["error"]["request_id"], id.to_string());
    assert!(streamed_content(&diverged).starts_with("Half"));
    let (_, row) = app.poll(id, 0).await;
    assert_eq!(row["status"], "completed");
    assert_eq!(
        row["result"], "A whole answer.",
        "the stored result is whole"
    );
    worker.stop().await;
}

#[tokio::test]
async fn legacy_completions_answer_and_stream_text_completions() {
    let (app, worker) = llm_tests::app_with_worker(&[]).await;
    let (status, headers, body) = post(
        &app,
        "/v1/completions",
        json!({"model": "mock", "prompt": "Once upon a time", "max_tokens": 8, "echo": false}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    let id = request_id(&headers);
    let (_, row) = app.poll(id, 0).await;
    assert_eq!(body["choices"][0]["text"], row["result"]);
    assert_eq!(row["metadata"]["api"], "openai.completions");

    let (_, id, streamed) = chunks(
        &app,
        "/v1/completions",
        json!({"model": "mock", "prompt": ["Twice upon a time"], "max_tokens": 8, "stream": true}),
    )
    .await;
    assert_eq!(streamed.last().unwrap(), "[DONE]");
    assert!(
        streamed[..streamed.len() - 1]
            .iter()
            .all(|c| c["object"] == "text_completion")
    );
    let (_, row) = app.poll(id.unwrap(), 0).await;
    assert_eq!(
        streamed_content(&streamed[..streamed.len() - 1]),
        row["result"].as_str().unwrap()
    );
    worker.stop().await;
}

#[tokio::test]
async fn json_response_formats_map_onto_response_validation() {
    let (app, worker) = llm_tests::app_with_worker(&[]).await;
    let schema = json!({"type": "object", "required": ["name", "level"],
                        "properties": {"name": {"type": "string"}, "level": {"type": "integer"}}});
    let (status, headers, body) = post(
        &app,
        "/v1/chat/completions",
        json!({"model": "mock", "messages": [{"role": "user", "content": "A hero"}],
               "response_format": {"type": "json_schema",
                                   "json_schema": {"name": "hero", "schema": schema, "strict": true}}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let hero: Value =
        serde_json::from_str(body["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert!(hero["name"].is_string() && hero["level"].is_i64(), "{hero}");
    // The schema's name and `strict` are kept with the request, for the provider.
    let (_, row) = app.poll(request_id(&headers), 0).await;
    let format = &row["parameters"]["response_format"];
    assert_eq!(
        (&format["name"], &format["strict"]),
        (&json!("hero"), &json!(true)),
        "{row}"
    );

    // An answer that never is the JSON asked for fails validation on every attempt: an
    // upstream error, never a completion.
    let (status, headers, body) = post(
        &app,
        "/v1/chat/completions",
        json!({"model": "mock", "messages": [{"role": "user", "content": "A villain"}],
               "response_format": {"type": "json_object"}, "mock": {"fail": "invalid_json"}}),
    )
    .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["type"], "upstream_error");
    assert_eq!(headers["x-should-retry"], "false");
    let (_, row) = app.poll(request_id(&headers), 0).await;
    assert_eq!(row["status"], "failed");
    worker.stop().await;
}

#[tokio::test]
async fn errors_have_openai_shape_and_unsupported_parameters_are_refused() {
    let app = llm_tests::spawn_app().await;
    let user = |content: &str| json!([{"role": "user", "content": content}]);
    let cases: Vec<(Value, u16, &str, Option<&str>)> = vec![
        (
            json!({"model": "nope", "messages": user("x")}),
            404,
            "model_not_found",
            Some("model"),
        ),
        (
            json!({"model": "mock", "messages": user("x"), "functions": [{"name": "roll"}]}),
            400,
            "unsupported_parameter",
            Some("functions"),
        ),
        (
            json!({"model": "mock", "messages": user("x"), "n": 2}),
            400,
            "unsupported_parameter",
            Some("n"),
        ),
        (
            json!({"model": "mock", "messages": user("x"), "seed": 7}),
            400,
            "unsupported_parameter",
            Some("seed"),
        ),
        (
            json!({"model": "mock", "messages": [{"role": "user", "content": "x", "name": "bob"}]}),
            400,
            "unsupported_parameter",
            Some("messages[0].name"),
        ),
        (
            json!({"model": "mock", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            400,
            "",
            Some("messages"),
        ),
        (
            json!({"model": "mock", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}),
            400,
            "",
            Some("messages"),
        ),
        (
            json!({"model": "mock", "messages": []}),
            400,
            "",
            Some("messages"),
        ),
        (
            json!({"model": "mock", "messages": user("x"), "max_tokens": 0}),
            400,
            "validation_failed",
            Some("max_tokens"),
        ),
        (
            json!({"model": "mock", "messages": user("x"), "temperature": 5}),
            400,
            "validation_failed",
            Some("temperature"),
        ),
        (
            json!({"model": "mock", "messages": user("   ")}),
            400,
            "validation_failed",
            Some("messages"),
        ),
        (
            json!({"model": "mock", "messages": user("x"), "stream_options": {"include_usage": true}}),
            400,
            "",
            Some("stream_options"),
        ),
        (
            json!({"messages": user("x")}),
            400,
            "validation_failed",
            None,
        ),
    ];
    for (body, status, code, param) in cases {
        let (got, headers, answer) = post(&app, "/v1/chat/completions", body.clone()).await;
        assert_eq!(got, status, "{body} → {answer}");
        let error = &answer["error"];
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{answer}"
        );
        assert!(error["type"].is_string(), "{answer}");
        if !code.is_empty() {
            assert_eq!(error["code"], code, "{body} → {answer}");
        }
        assert_eq!(error["param"].as_str(), param, "{body} → {answer}");
        assert_eq!(headers["x-should-retry"], "false", "{body}");
    }
    // Not JSON at all, and no key at all.
    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(app.token())
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["type"], "invalid_request_error");
    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .json(&json!({"model": "mock", "messages": user("x")}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], "invalid_api_key");
    assert_eq!(
        app.db
            .count("SELECT count(*) FROM generation_requests")
            .await,
        0,
        "no refused call created a request"
    );
}

#[tokio::test]
async fn a_rate_limited_call_is_429_with_retry_after_and_the_openai_error() {
    let app = llm_tests::spawn_app().await;
    llm_tests::limit_to_one_request_per_minute(&app.url(""), app.user).await;
    let body = json!({"model": "mock", "messages": [{"role": "user", "content": "x"}]});
    let response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(app.token())
        .json(&json!({"model": "mock", "stream": true, "messages": [{"role": "user", "content": "first"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "the first call of the minute passes"
    );
    drop(response);
    let (status, headers, answer) = post(&app, "/v1/chat/completions", body).await;
    assert_eq!(status, 429, "{answer}");
    assert_eq!(answer["error"]["code"], "rate_limit_exceeded");
    assert_eq!(answer["error"]["type"], "requests");
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after));
    assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    assert!(
        headers.get("x-should-retry").is_none(),
        "a 429 may be retried"
    );
}

#[tokio::test]
async fn models_are_listed_in_openai_format() {
    let app = llm_tests::spawn_app().await;
    let (status, list) = app.get_json("/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(list["object"], "list");
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
    assert!(!ids.contains(&"gpt-4o"), "no OpenAI key here: not usable");
    let (status, one) = app.get_json("/v1/models/mock").await;
    assert_eq!(status, 200);
    assert_eq!(one["object"], "model");
    assert_eq!(one["owned_by"], "mock");
    let (status, missing) = app.get_json("/v1/models/gpt-4o").await;
    assert_eq!(status, 404);
    assert_eq!(missing["error"]["code"], "model_not_found");
}

#[tokio::test]
async fn a_call_that_outlasts_its_wait_answers_504_with_the_id_to_poll() {
    let db = llm_tests::TestDb::new().await;
    let (_api, base) = spawn_api_process_with(&db, &[("OPENAI_COMPAT_WAIT_SECS", "1")]).await;
    let _worker = spawn_worker_process(&db, &[]);
    let token = llm_tests::test_jwt()
        .issue(Uuid::now_v7(), 600, None)
        .unwrap();
    let http = reqwest::Client::new();
    let call = || {
        http.post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&token)
            .header("Idempotency-Key", "slow-call-1")
            .json(&json!({"model": "mock", "mock": {"latency_ms": 3000},
                          "messages": [{"role": "user", "content": "slowly"}]}))
            .send()
    };
    let started = std::time::Instant::now();
    let response = call().await.unwrap();
    assert_eq!(response.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(response.headers()["x-should-retry"], "false");
    let id = request_id(response.headers());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "generation_pending");
    assert_eq!(body["error"]["request_id"], id.to_string());
    let poll_url = body["error"]["poll_url"].as_str().unwrap().to_owned();
    let polled = http
        .get(format!("{base}{poll_url}?wait=10"))
        .bearer_auth(&token);
    let polled: Value = polled.send().await.unwrap().json().await.unwrap();
    assert_eq!(polled["status"], "completed", "{polled}");
    // The same call again (its Idempotency-Key) is the same request, now complete.
    let again: Value = call().await.unwrap().json().await.unwrap();
    assert_eq!(again["id"], id.to_string());
    assert_eq!(again["choices"][0]["message"]["content"], polled["result"]);
    assert_eq!(
        db.count("SELECT count(*) FROM generation_requests").await,
        1
    );
}

/// The official `openai` Python SDK, unchanged, against the real binaries: a completion, a
/// streamed completion, a 429 as its `RateLimitError` and an invalid request as its
/// `BadRequestError` (tests/python/openai_sdk_check.py).
#[tokio::test]
async fn the_official_openai_python_sdk_works_unchanged() {
    let python = llm_tests::openai_sdk_python().await;
    let db = llm_tests::TestDb::new().await;
    let (_api, base) = spawn_api_process_with(&db, &[]).await;
    let _worker = start_worker(&db, &[]);
    let jwt = llm_tests::test_jwt();
    let (user, limited) = (Uuid::now_v7(), Uuid::now_v7());
    llm_tests::limit_to_one_request_per_minute(&base, limited).await;
    let output = tokio::process::Command::new(&python)
        .arg(llm_tests::repo_root().join("tests/python/openai_sdk_check.py"))
        .env("OPENAI_BASE_URL", format!("{base}/v1"))
        .env("OPENAI_API_KEY", jwt.issue(user, 600, None).unwrap())
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
    for check in ["completion", "stream", "rate_limit", "bad_request"] {
        assert!(
            stdout.lines().any(|l| l == format!("ok {check}")),
            "{check} missing:\n{stdout}"
        );
    }
    // What the SDK created are ordinary durable requests.
    assert_eq!(
        db.count("SELECT count(*) FROM generation_requests WHERE status = 'completed' AND metadata->>'api' = 'openai.chat.completions'")
            .await,
        3,
        "the completion, the stream and the limited user's first call"
    );
}

#[tokio::test]
async fn a_cache_hit_is_answered_from_the_cache_before_its_row_is_written() {
    let (app, worker) = llm_tests::app_with_worker(&[]).await;
    let body = json!({"model": "mock", "max_tokens": 8,
                      "messages": [{"role": "user", "content": "a question asked twice"}]});
    let (status, _, first) = post(&app, "/v1/chat/completions", body.clone()).await;
    assert_eq!(status, 200, "{first}");
    worker.stop().await;

    // A hit's row is written with its usage count, in one statement: while `usage_daily` is
    // locked, no hit's row can be written.
    let mut lock = app.db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE usage_daily IN EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let (status, headers, hit) =
        tokio::time::timeout(LONG, post(&app, "/v1/chat/completions", body))
            .await
            .expect("a hit waits for no row");
    assert_eq!(status, 200, "{hit}");
    let answer = |b: &Value| b["choices"][0]["message"]["content"].clone();
    assert_eq!(answer(&hit), answer(&first));
    assert_eq!(hit["usage"], first["usage"]);
    let id = request_id(&headers);
    let stored = format!("SELECT COUNT(*) FROM generation_requests WHERE id = '{id}'");
    assert_eq!(app.db.count(&stored).await, 0, "answered before its row");

    lock.rollback().await.unwrap();
    let (status, row) = app.poll(id, 0).await;
    assert_eq!(status, 200, "{row}");
    assert_eq!(
        (row["cached"].clone(), row["result"].clone()),
        (json!(true), answer(&first))
    );
}
