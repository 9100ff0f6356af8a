//! What a hostile client sends to OpenAI's Responses API (`/v1/responses`), and the clear 4xx
//! in OpenAI's shape it gets: other users' response ids (read, stream, cancel), malformed ids,
//! `starting_after` values that are no sequence number, oversize metadata, refused parameters,
//! huge and deep `input`, 10,000 messages, `background` without `store`; and replays of an
//! `Idempotency-Key`, which answer the first response.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::openai_responses::{create, request_id};

const LONG: Duration = Duration::from_secs(30);

#[tokio::test]
async fn hostile_response_ids_queries_and_bodies_are_refused_in_openai_shape() {
    let (app, worker) = llm_tests::app_with_worker(&[]).await;
    let (_, _, mine) = create(
        &app,
        json!({"model": "mock", "input": "Mine", "background": true,
               "mock": {"latency_ms": 20000}}),
    )
    .await;
    let id = mine["id"].as_str().unwrap().to_owned();
    let other = app.token_for(Uuid::now_v7());

    // Someone else's response: not found, whatever the route.
    for (method, path) in [
        (Method::GET, format!("/v1/responses/{id}")),
        (Method::GET, format!("/v1/responses/{id}?stream=true")),
        (
            Method::GET,
            format!("/v1/responses/{id}?stream=true&starting_after=2"),
        ),
        (Method::POST, format!("/v1/responses/{id}/cancel")),
    ] {
        let (status, body) = app.call(method, &path, &other, None).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(body["error"]["message"].is_string(), "{body}");
    }
    let (_, row) = app.poll(request_id(&id), 0).await;
    assert_ne!(
        row["status"], "cancelled",
        "another user's cancel changed nothing"
    );

    // Malformed ids: 400, never a 500; ids of other APIs' requests are not responses.
    let chat = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(app.token())
        .json(&json!({"model": "mock", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    let chat_id: Uuid = chat.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    for bad in [
        "resp_".to_owned(),
        "resp_zz".to_owned(),
        request_id(&id).to_string(),
        format!("{id}0"),
        format!("resp_{}", "f".repeat(4000)),
        "resp_%00".to_owned(),
        "..%2F..%2Fetc".to_owned(),
    ] {
        for (method, path) in [
            (Method::GET, format!("/v1/responses/{bad}")),
            (Method::POST, format!("/v1/responses/{bad}/cancel")),
        ] {
            let (status, body) = app.call(method, &path, &app.token(), None).await;
            assert!(status == 400 || status == 404, "{path}: {status} {body}");
        }
    }
    let (status, _) = app
        .get_json(&format!("/v1/responses/resp_{}", chat_id.simple()))
        .await;
    assert_eq!(status, 404);

    // starting_after: a sequence number, with stream=true only.
    for query in [
        "stream=true&starting_after=-1",
        "stream=true&starting_after=abc",
        "stream=true&starting_after=1e3",
        "stream=true&starting_after=18446744073709551616",
        "stream=true&starting_after=9223372036854775808",
        "starting_after=3",
        "stream=yes",
        "stream=true&unknown=1",
    ] {
        let (status, body) = app.get_json(&format!("/v1/responses/{id}?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    }

    // Bodies.
    let big_metadata: serde_json::Map<String, Value> =
        (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
    let deep = (0..200).fold(json!("x"), |inner, _| json!([inner]));
    let conversation = |n: usize| -> Vec<Value> {
        (0..n)
            .map(
                |i| json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": "hi"}),
            )
            .collect()
    };
    // More turns than a request may have (but a small body).
    let turns = conversation(301);
    for (body, param) in [
        (
            json!({"model": "mock", "input": "x", "background": true, "store": false}),
            "background",
        ),
        (
            json!({"model": "mock", "input": "x", "metadata": big_metadata}),
            "metadata",
        ),
        (
            json!({"model": "mock", "input": "x", "metadata": {"k".repeat(65): "v"}}),
            "metadata",
        ),
        (
            json!({"model": "mock", "input": "x", "metadata": {"k": "v".repeat(513)}}),
            "metadata",
        ),
        (
            json!({"model": "mock", "input": "x", "metadata": {"k": 1}}),
            "metadata",
        ),
        (
            json!({"model": "mock", "input": "x", "tools": [{"type": "web_search"}]}),
            "tools",
        ),
        (
            json!({"model": "mock", "input": "x", "previous_response_id": id}),
            "previous_response_id",
        ),
        (
            json!({"model": "mock", "input": "x", "reasoning": {"effort": "high"}}),
            "reasoning",
        ),
        (json!({"model": "mock", "input": "x", "n": 2}), "n"),
        (
            json!({"model": "mock", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}),
            "input[0].content[0].type",
        ),
        (
            json!({"model": "mock", "input": [{"type": "function_call_output", "call_id": "c", "output": "o"}]}),
            "input[0].type",
        ),
        (
            json!({"model": "mock", "input": [{"role": "tool", "content": "x"}]}),
            "input[0].role",
        ),
        (
            json!({"model": "mock", "input": [{"role": "assistant", "content": "x"}]}),
            "input",
        ),
        (json!({"model": "mock", "input": turns}), "input"),
        (
            json!({"model": "mock", "input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}}),
            "text.format.schema",
        ),
        (
            json!({"model": "mock", "input": "x", "temperature": 5}),
            "temperature",
        ),
        (
            json!({"model": "mock", "input": "x", "max_output_tokens": 0}),
            "max_output_tokens",
        ),
        (
            json!({"model": "mock", "input": "x", "stream_options": {"include_obfuscation": false}}),
            "stream_options",
        ),
    ] {
        let started = std::time::Instant::now();
        let (status, _, answer) = create(&app, body).await;
        assert_eq!(status, 400, "{param}: {answer}");
        assert_eq!(answer["error"]["param"], param, "{answer}");
        assert_eq!(answer["error"]["type"], "invalid_request_error");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    // 10,000 messages: refused before any work (the body limit, or the turn limit above it).
    let started = std::time::Instant::now();
    let (status, _, answer) = create(
        &app,
        json!({"model": "mock", "input": conversation(10_001)}),
    )
    .await;
    assert!(status == 413 || status == 400, "{status} {answer}");
    assert!(answer["error"]["message"].is_string());
    assert!(started.elapsed() < Duration::from_secs(5));
    let (status, _, answer) = create(&app, json!({"model": "mock", "input": [deep]})).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"]["message"].is_string());
    let (status, _, _) = create(&app, json!({"model": "mock", "input": "x".repeat(4 << 20)})).await;
    assert_eq!(status, 413);
    let (status, _, answer) = create(&app, json!({"model": "nope", "input": "x"})).await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (404, &json!("model_not_found"))
    );

    // A response not stored cannot be read back, though its request is recorded.
    let (status, headers, unstored) =
        create(&app, json!({"model": "mock", "input": "x", "store": false})).await;
    assert_eq!(status, 200, "{unstored}");
    assert_eq!(unstored["store"], false);
    let (status, _) = app
        .get_json(&format!(
            "/v1/responses/{}",
            unstored["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 404);
    let recorded: Uuid = headers["x-request-id"].to_str().unwrap().parse().unwrap();
    let (status, _) = app.poll(recorded, 0).await;
    assert_eq!(status, 200);
    worker.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_response() {
    let (app, worker) = llm_tests::app_with_worker(&[]).await;
    let body = json!({"model": "mock", "input": "Once", "background": true,
                      "mock": {"latency_ms": 300}});
    let send = |body: Value| {
        app.http
            .post(app.url("/v1/responses"))
            .bearer_auth(app.token())
            .header("Idempotency-Key", "responses-once")
            .json(&body)
            .send()
    };
    let first: Value = send(body.clone()).await.unwrap().json().await.unwrap();
    let again = send(body.clone()).await.unwrap();
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    let changed = send(json!({"model": "mock", "input": "Twice", "background": true}))
        .await
        .unwrap();
    assert_eq!(changed.status(), 409);
    let changed: Value = changed.json().await.unwrap();
    assert!(changed["error"]["message"].is_string(), "{changed}");
    app.wait_final(request_id(first["id"].as_str().unwrap()), LONG)
        .await;
    let replayed: Value = send(body).await.unwrap().json().await.unwrap();
    assert_eq!(replayed["id"], first["id"]);
    assert_eq!(replayed["status"], "completed", "{replayed}");
    assert_eq!(
        app.db
            .count("SELECT count(*) FROM generation_requests WHERE metadata->>'api' = 'openai.responses'")
            .await,
        1
    );
    worker.stop().await;
}
