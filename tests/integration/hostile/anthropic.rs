//! What a hostile client sends to the Anthropic-compatible door (`/v1/messages`), and the clear
//! 4xx in Anthropic's shape it gets: oversize and deeply nested bodies, NUL characters,
//! numbers past any bound, a conversation longer than the service takes, and another user's
//! `Idempotency-Key`. Nothing refused is stored.

use llm_tests::spawn_app;
use serde_json::{Value, json};

use crate::anthropic::{VERSION, post};

/// `POST /v1/messages` with a raw body; status and JSON answer.
async fn post_raw(app: &llm_tests::TestApp, body: String) -> (u16, Value) {
    let response = app
        .http
        .post(app.url("/v1/messages"))
        .header("x-api-key", app.token())
        .header("anthropic-version", VERSION)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn hostile_bodies_get_a_4xx_in_anthropics_shape_and_nothing_is_stored() {
    let app = spawn_app().await;
    let deep = format!(
        r#"{{"model": "mock", "max_tokens": 5, "messages": [{{"role": "user", "content": "x"}}], "metadata": {}{}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let oversize = format!(
        r#"{{"model": "mock", "max_tokens": 5, "messages": [{{"role": "user", "content": "{}"}}]}}"#,
        "x".repeat(70_000)
    );
    let nul = r#"{"model": "mock", "max_tokens": 5, "messages": [{"role": "user", "content": "a\u0000b"}]}"#;
    let huge = r#"{"model": "mock", "max_tokens": 18446744073709551616, "messages": [{"role": "user", "content": "x"}]}"#;
    let negative =
        r#"{"model": "mock", "max_tokens": -1, "messages": [{"role": "user", "content": "x"}]}"#;
    let turns: Vec<Value> = (0..301)
        .map(|i| json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": "x"}))
        .collect();
    let long = json!({"model": "mock", "max_tokens": 5, "messages": turns}).to_string();
    let blocks: Vec<Value> = (0..2)
        .map(|_| json!({"type": "tool_result", "tool_use_id": "x", "content": "y"}))
        .collect();
    let tool = json!({"model": "mock", "max_tokens": 5,
                      "messages": [{"role": "user", "content": blocks}]})
    .to_string();
    for (name, body, status, kind) in [
        ("deep", deep, 400, "invalid_request_error"),
        ("oversize", oversize, 413, "request_too_large"),
        ("nul", nul.to_owned(), 400, "invalid_request_error"),
        ("huge", huge.to_owned(), 400, "invalid_request_error"),
        (
            "negative",
            negative.to_owned(),
            400,
            "invalid_request_error",
        ),
        ("long", long, 400, "invalid_request_error"),
        ("tool", tool, 400, "invalid_request_error"),
        ("array", "[]".to_owned(), 400, "invalid_request_error"),
    ] {
        let (got, answer) = post_raw(&app, body).await;
        assert_eq!(got, status, "{name}: {answer}");
        assert_eq!(answer["type"], "error", "{name}: {answer}");
        assert_eq!(answer["error"]["type"], kind, "{name}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{name}: {answer}"
        );
    }
    assert_eq!(
        app.db
            .count("SELECT count(*) FROM generation_requests")
            .await,
        0
    );
}

#[tokio::test]
async fn another_users_idempotency_key_is_not_theirs_to_replay() {
    let (app, worker) = llm_tests::app_with_worker(&[]).await;
    let body = json!({"model": "mock", "max_tokens": 6,
                      "messages": [{"role": "user", "content": "My secret plan"}]});
    let call = |token: String| {
        app.http
            .post(app.url("/v1/messages"))
            .header("x-api-key", token)
            .header("anthropic-version", VERSION)
            .header("idempotency-key", "shared-key-1")
            .json(&body)
            .send()
    };
    let mine: Value = call(app.token()).await.unwrap().json().await.unwrap();
    let again: Value = call(app.token()).await.unwrap().json().await.unwrap();
    assert_eq!(again["id"], mine["id"], "the same user's key replays");
    let other = app.token_for(uuid::Uuid::now_v7());
    let theirs: Value = call(other.clone()).await.unwrap().json().await.unwrap();
    assert_ne!(theirs["id"], mine["id"], "another user's key is their own");
    // Another user cannot read the first user's request by its id either.
    let id = mine["id"].as_str().unwrap().strip_prefix("msg_").unwrap();
    let (status, _) = app
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/generate/{id}"),
            &other,
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _, _) = post(
        &app,
        &other,
        json!({"model": "mock", "max_tokens": 5,
        "messages": [{"role": "user", "content": "x"}], "metadata": {"user_id": "x".repeat(300)}}),
    )
    .await;
    assert_eq!(status, 400, "an oversize metadata.user_id");
    worker.stop().await;
}
