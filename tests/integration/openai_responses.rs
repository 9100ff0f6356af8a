//! OpenAI's Responses API (`/v1/responses`): each response is a durable request under OpenAI's
//! names — answered as a Response object, queued in the background, streamed as numbered
//! `response.*` events that a client resumes with `starting_after`, cancelled — and the
//! official Python SDK works against it unchanged.

use std::time::Duration;

use llm_tests::fake_upstream::{self, FakeUpstream};
use llm_tests::sse::{SseMessage, SseReader};
use llm_tests::{TestApp, spawn_api_process_with, start_worker};
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(30);

pub(crate) async fn create(app: &TestApp, body: Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let response = app
        .http
        .post(app.url("/v1/responses"))
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

pub(crate) fn request_id(response_id: &str) -> Uuid {
    Uuid::try_parse(response_id.strip_prefix("resp_").unwrap()).unwrap()
}

/// The events of a Responses stream, up to its terminal event (included).
async fn events(request: reqwest::RequestBuilder) -> (u16, Vec<SseMessage>) {
    let mut reader = SseReader::open(request).await;
    let mut out = Vec::new();
    while let Some(message) = reader.next(LONG).await {
        let end = matches!(
            message.event.as_str(),
            "response.completed" | "response.incomplete" | "response.failed"
        );
        out.push(message);
        if end {
            break;
        }
    }
    (reader.status, out)
}

fn stream_get(app: &TestApp, id: &str, starting_after: Option<u64>) -> reqwest::RequestBuilder {
    let mut url = app.url(&format!("/v1/responses/{id}?stream=true"));
    if let Some(n) = starting_after {
        url.push_str(&format!("&starting_after={n}"));
    }
    app.http.get(url).bearer_auth(app.token())
}

fn numbers(events: &[SseMessage]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e.data["sequence_number"].as_u64().unwrap())
        .collect()
}

/// What identifies an event across connections: its type, number and delta or text.
fn identity(events: &[SseMessage]) -> Vec<(String, u64, Value)> {
    events
        .iter()
        .map(|e| {
            let content = e
                .data
                .get("delta")
                .or_else(|| e.data.get("text"))
                .cloned()
                .unwrap_or(Value::Null);
            (
                e.event.clone(),
                e.data["sequence_number"].as_u64().unwrap(),
                content,
            )
        })
        .collect()
}

fn deltas(events: &[SseMessage]) -> String {
    events
        .iter()
        .filter(|e| e.event == "response.output_text.delta")
        .map(|e| e.data["delta"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_response_is_a_durable_request_answered_as_a_response_object() {
    let (app, worker) = llm_tests::app_with_worker(&[]).await;
    let (status, headers, body) = create(
        &app,
        json!({"model": "mock", "instructions": "Be brief.", "max_output_tokens": 12,
        "temperature": 0.5, "metadata": {"campaign": "tavern"},
        "input": [
            {"role": "user", "content": "Describe the tavern."},
            {"type": "message", "role": "assistant",
             "content": [{"type": "output_text", "text": "Smoky.", "annotations": []}]},
            {"role": "user", "content": [{"type": "input_text", "text": "And its keeper?"}]},
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "response");
    assert_eq!(body["status"], "completed");
    let id = body["id"].as_str().unwrap();
    let request = request_id(id);
    assert_eq!(headers["x-request-id"], request.to_string().as_str());
    let text = body["output"][0]["content"][0]["text"].as_str().unwrap();
    assert_eq!(text.split_whitespace().count(), 12, "{body}");
    assert_eq!(body["output"][0]["type"], "message");
    assert_eq!(body["output"][0]["role"], "assistant");
    assert_eq!(body["output"][0]["content"][0]["type"], "output_text");
    assert_eq!(body["usage"]["output_tokens"], 12);
    assert_eq!(body["instructions"], "Be brief.");
    assert_eq!(body["metadata"], json!({"campaign": "tavern"}));
    assert_eq!(body["max_output_tokens"], 12);
    assert_eq!(body["temperature"], 0.5);
    assert_eq!(body["background"], false);
    assert_eq!(body["text"]["format"]["type"], "text");

    // The same response, read back; and it is an ordinary request underneath.
    let (status, again) = app.get_json(&format!("/v1/responses/{id}")).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["output"], body["output"]);
    assert_eq!(again["metadata"], body["metadata"]);
    let (_, row) = app.poll(request, 0).await;
    assert_eq!(row["metadata"]["api"], "openai.responses");
    assert_eq!(row["parameters"]["system"], "Be brief.");
    assert_eq!(row["parameters"]["history"].as_array().unwrap().len(), 2);
    assert_eq!(row["prompt"], "And its keeper?");

    worker.stop().await;
}

#[tokio::test]
async fn a_cut_at_max_output_tokens_is_an_incomplete_response() {
    let openai = FakeUpstream::start("/v1").await;
    let mut cut = fake_upstream::openai::success("It was a dark and", 5, 5);
    if let fake_upstream::Reply::Json { body, .. } = &mut cut {
        body["choices"][0]["finish_reason"] = json!("length");
    }
    openai.then(cut);
    let flags = llm_tests::openai_flags(&openai);
    let (app, worker) = llm_tests::app_with_worker(&flags).await;
    let (status, _, body) = create(
        &app,
        json!({"model": "gpt-4o", "input": "A tale", "max_output_tokens": 5}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "incomplete", "{body}");
    assert_eq!(body["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(body["output"][0]["status"], "incomplete");
    assert_eq!(body["output"][0]["content"][0]["text"], "It was a dark and");
    worker.stop().await;
}

#[tokio::test]
async fn a_background_response_is_queued_then_retrieved_and_a_json_schema_format_applies() {
    let (app, worker) = llm_tests::app_with_worker(&[]).await;
    let schema = json!({"type": "object", "required": ["name", "level"],
                        "properties": {"name": {"type": "string"}, "level": {"type": "integer"}}});
    let body_of_hero = json!({"model": "mock", "input": "A hero", "background": true,
                              "mock": {"latency_ms": 500},
                              "text": {"format": {"type": "json_schema", "name": "hero",
                                                  "schema": schema, "strict": true}}});
    let (status, _, body) = create(&app, body_of_hero.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "queued");
    assert_eq!(body["background"], true);
    assert_eq!(body["output"], json!([]));
    assert_eq!(body["text"]["format"]["name"], "hero");
    let id = body["id"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + LONG;
    let done = loop {
        let (status, now) = app.get_json(&format!("/v1/responses/{id}")).await;
        assert_eq!(status, 200, "{now}");
        assert!(
            ["queued", "in_progress", "completed"].contains(&now["status"].as_str().unwrap()),
            "{now}"
        );
        if now["status"] == "completed" {
            break now;
        }
        assert!(tokio::time::Instant::now() < deadline, "never completed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let hero: Value =
        serde_json::from_str(done["output"][0]["content"][0]["text"].as_str().unwrap()).unwrap();
    assert!(hero["name"].is_string() && hero["level"].is_i64(), "{hero}");
    assert_eq!(done["text"]["format"]["strict"], true);
    // The same call again is answered from the cache: completed at once.
    let (status, _, hit) = create(&app, body_of_hero.clone()).await;
    assert_eq!(status, 200, "{hit}");
    assert_eq!(hit["status"], "completed", "{hit}");
    assert_ne!(hit["id"], done["id"]);
    assert_eq!(
        hit["output"][0]["content"][0]["text"],
        done["output"][0]["content"][0]["text"]
    );
    // Cancelling a finished response answers its final state.
    let (status, cancelled) = app
        .call(
            Method::POST,
            &format!("/v1/responses/{id}/cancel"),
            &app.token(),
            None,
        )
        .await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "completed");
    worker.stop().await;
}

#[tokio::test]
async fn a_streamed_response_sends_numbered_response_events_in_order() {
    let (app, worker) = llm_tests::app_with_worker(&[]).await;
    let request = app
        .http
        .post(app.url("/v1/responses"))
        .bearer_auth(app.token())
        .json(
            &json!({"model": "mock", "input": "Tell a tale", "stream": true,
                      "max_output_tokens": 10}),
        );
    let (status, events) = events(request).await;
    assert_eq!(status, 200);
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        &kinds[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ]
    );
    assert_eq!(
        &kinds[kinds.len() - 4..],
        [
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    assert!(
        kinds[4..kinds.len() - 4]
            .iter()
            .all(|k| *k == "response.output_text.delta")
    );
    let numbers = numbers(&events);
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
    assert_eq!(numbers[..4], [0, 1, 2, 3]);
    for e in &events {
        assert_eq!(e.data["type"], e.event.as_str());
    }
    let done = &events[events.len() - 1].data["response"];
    let text = done["output"][0]["content"][0]["text"].as_str().unwrap();
    assert_eq!(deltas(&events), text);
    assert_eq!(text.split_whitespace().count(), 10);
    assert_eq!(done["status"], "completed");
    assert_eq!(done["usage"]["output_tokens"], 10);
    let delta = &events[4].data;
    assert_eq!(delta["item_id"], done["output"][0]["id"]);
    assert_eq!(
        (&delta["output_index"], &delta["content_index"]),
        (&json!(0), &json!(0))
    );
    // A stream that was not a background response cannot be streamed again.
    let (status, refused) = app
        .get_json(&format!(
            "/v1/responses/{}?stream=true",
            done["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["param"], "stream");
    worker.stop().await;
}

#[tokio::test]
async fn a_background_stream_resumes_after_any_sequence_number_with_the_same_events() {
    let (app, worker) = llm_tests::app_with_worker(&[]).await;
    let request = app
        .http
        .post(app.url("/v1/responses"))
        .bearer_auth(app.token())
        .json(
            &json!({"model": "mock", "input": "A long tale", "stream": true,
                      "background": true, "max_output_tokens": 30,
                      "mock": {"token_delay_ms": 40}}),
        );
    // The first connection goes away after a few deltas, while the response runs on.
    let mut reader = SseReader::open(request).await;
    assert_eq!(reader.status, 200);
    let mut first = Vec::new();
    while first.len() < 8 {
        first.push(reader.next(LONG).await.unwrap());
    }
    drop(reader);
    let id = first[0].data["response"]["id"].as_str().unwrap().to_owned();
    assert_eq!(first[0].data["response"]["background"], true);
    let seen = first.last().unwrap().data["sequence_number"]
        .as_u64()
        .unwrap();
    // Resumed live: exactly the events after the last one seen.
    let (status, rest) = events(stream_get(&app, &id, Some(seen))).await;
    assert_eq!(status, 200);
    assert_eq!(rest.last().unwrap().event, "response.completed");
    let mut joined = identity(&first);
    joined.extend(identity(&rest));
    // The whole stream again, now from the relay's log of a finished response: the same
    // events under the same numbers.
    let (_, whole) = events(stream_get(&app, &id, None)).await;
    assert_eq!(identity(&whole), joined);
    let text = whole.last().unwrap().data["response"]["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(deltas(&whole), text);
    assert_eq!(text.split_whitespace().count(), 30);
    // From any number: the suffix after it.
    for after in [0, 3, 4, 17, numbers(&whole)[whole.len() - 2]] {
        let (_, tail) = events(stream_get(&app, &id, Some(after))).await;
        let expected: Vec<_> = identity(&whole)
            .into_iter()
            .filter(|(_, n, _)| *n > after)
            .collect();
        assert_eq!(identity(&tail), expected, "starting_after={after}");
    }
    // After the last event: nothing more, and the stream ends.
    let last = numbers(&whole).last().copied().unwrap();
    let (status, none) = events(stream_get(&app, &id, Some(last))).await;
    assert_eq!((status, none.len()), (200, 0));
    worker.stop().await;
}

/// Once the relay's log of a finished response is gone (expired), its stream is rebuilt from
/// the stored row: the opening events, the whole text as one delta numbered 4, then the
/// terminal events; `starting_after` counts in that list.
#[tokio::test]
async fn a_stream_whose_relay_log_expired_is_rebuilt_from_the_stored_response() {
    let (app, worker) = llm_tests::app_with_worker(&[]).await;
    let (_, _, body) = create(
        &app,
        json!({"model": "mock", "input": "Remember", "background": true,
               "max_output_tokens": 8}),
    )
    .await;
    let id = body["id"].as_str().unwrap().to_owned();
    let row = app.wait_final(request_id(&id), LONG).await;
    let client = redis::Client::open(llm_tests::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let relay = format!("{}relay:{}", app.db.redis_prefix(), request_id(&id));
    let removed: i64 = redis::cmd("DEL")
        .arg(format!("{relay}:log"))
        .arg(format!("{relay}:seq"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(removed, 2, "the background response relayed its tokens");
    let (_, rebuilt) = events(stream_get(&app, &id, None)).await;
    assert_eq!(numbers(&rebuilt), [0, 1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(rebuilt[4].event, "response.output_text.delta");
    assert_eq!(rebuilt[4].data["delta"], row["result"]);
    assert_eq!(rebuilt[8].event, "response.completed");
    let (_, tail) = events(stream_get(&app, &id, Some(4))).await;
    assert_eq!(identity(&tail), identity(&rebuilt[5..]));
    worker.stop().await;
}

/// A retry after part of the output was relayed: the deltas carry only output that extends
/// what was sent, the same on every connection; the `done` events carry the stored text.
#[tokio::test]
async fn a_restarted_generation_streams_only_what_extends_the_sent_output_on_every_connection() {
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
        // Cut after "Half ", then the retry says something else.
        .then(fake_upstream::openai::stream(&["Half ", "a "], 5, 2, false))
        .then(fake_upstream::openai::stream(
            &["A whole answer."],
            5,
            3,
            true,
        ));
    let flags = llm_tests::openai_flags(&openai);
    let (app, worker) = llm_tests::app_with_worker(&flags).await;
    let body = json!({"model": "gpt-4o", "stream": true, "background": true,
                      "cache": {"no_cache": true}, "input": "Greet"});
    for expected_deltas in ["Hello world.", "Half "] {
        let request = app
            .http
            .post(app.url("/v1/responses"))
            .bearer_auth(app.token())
            .json(&body);
        let (_, live) = events(request).await;
        let last = live.last().unwrap();
        assert_eq!(last.event, "response.completed", "{live:?}");
        assert_eq!(deltas(&live), expected_deltas);
        let stored = last.data["response"]["output"][0]["content"][0]["text"].clone();
        let done = live
            .iter()
            .find(|e| e.event == "response.output_text.done")
            .unwrap();
        assert_eq!(done.data["text"], stored);
        let id = last.data["response"]["id"].as_str().unwrap();
        let (_, replayed) = events(stream_get(&app, id, None)).await;
        assert_eq!(identity(&replayed), identity(&live));
    }
    worker.stop().await;
}

#[tokio::test]
async fn a_slow_background_response_is_cancelled_through_the_native_cancel() {
    let (app, worker) = llm_tests::app_with_worker(&[]).await;
    let (_, _, body) = create(
        &app,
        json!({"model": "mock", "input": "Slowly", "background": true,
               "mock": {"latency_ms": 20000}}),
    )
    .await;
    let id = body["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/responses/{id}/cancel");
    let (status, cancelled) = app.call(Method::POST, &path, &app.token(), None).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["id"], id.as_str());
    let (_, row) = app.poll(request_id(&id), 0).await;
    assert_eq!(row["status"], "cancelled");
    // Its stream ends with the cancellation.
    let (_, streamed) = events(stream_get(&app, &id, None)).await;
    let last = streamed.last().unwrap();
    assert_eq!(last.event, "response.failed");
    assert_eq!(last.data["response"]["status"], "cancelled");
    // Cancelling again: the final state.
    let (status, again) = app.call(Method::POST, &path, &app.token(), None).await;
    assert_eq!((status, &again["status"]), (200, &json!("cancelled")));

    // A response that was not created in the background cannot be cancelled.
    let (_, _, plain) = create(&app, json!({"model": "mock", "input": "Now"})).await;
    let (status, refused) = app
        .call(
            Method::POST,
            &format!("/v1/responses/{}/cancel", plain["id"].as_str().unwrap()),
            &app.token(),
            None,
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["type"], "invalid_request_error");
    worker.stop().await;
}

/// The official `openai` Python SDK, unchanged, against the real binaries: `responses.create`
/// (plain, background, streamed, json_schema), `retrieve` (polled, and streamed from
/// `starting_after`) and `cancel` (tests/python/openai_responses_check.py).
#[tokio::test]
async fn the_official_openai_sdk_uses_the_responses_api_unchanged() {
    let python = llm_tests::openai_sdk_python().await;
    let db = llm_tests::TestDb::new().await;
    let (_api, base) = spawn_api_process_with(&db, &[]).await;
    let _worker = start_worker(&db, &[]);
    let output = tokio::process::Command::new(&python)
        .arg(llm_tests::repo_root().join("tests/python/openai_responses_check.py"))
        .env("OPENAI_BASE_URL", format!("{base}/v1"))
        .env(
            "OPENAI_API_KEY",
            llm_tests::test_jwt()
                .issue(Uuid::now_v7(), 600, None)
                .unwrap(),
        )
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
        "create",
        "background",
        "stream",
        "resume",
        "cancel",
        "json_schema",
    ] {
        assert!(
            stdout.lines().any(|l| l == format!("ok {check}")),
            "{check} missing:\n{stdout}"
        );
    }
    assert_eq!(
        db.count(
            "SELECT count(*) FROM generation_requests WHERE metadata->>'api' = 'openai.responses'"
        )
        .await,
        6
    );
}
