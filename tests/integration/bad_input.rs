//! Bad input gets a clear 4xx in the one JSON error shape; nothing is stored.

use llm_tests::spawn_app;
use serde_json::{Value, json};

async fn expect_error(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status().as_u16(), status);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    body
}

#[tokio::test]
async fn malformed_and_invalid_bodies_are_rejected() {
    let app = spawn_app().await;
    let post = || {
        app.http
            .post(app.url("/api/v1/generate"))
            .bearer_auth(app.token())
    };
    let raw = |body: &'static str| {
        post()
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    expect_error(raw("{not json").await.unwrap(), 400, "bad_request").await;
    expect_error(raw("").await.unwrap(), 400, "bad_request").await;
    let body = expect_error(
        raw(r#"{"model": "mock"}"#).await.unwrap(),
        422,
        "validation_failed",
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("prompt"),
        "{body}"
    );
    expect_error(
        raw(r#"{"prompt": 42}"#).await.unwrap(),
        422,
        "validation_failed",
    )
    .await;
    expect_error(
        raw(r#"{"prompt": "x", "parameters": {"history": [{"role": "system", "content": "y"}]}}"#)
            .await
            .unwrap(),
        422,
        "validation_failed",
    )
    .await;
    expect_error(
        raw(r#"{"prompt": "x", "surprise": 1}"#).await.unwrap(),
        422,
        "validation_failed",
    )
    .await;
    expect_error(
        post()
            .header("content-type", "text/plain")
            .body("hello")
            .send()
            .await
            .unwrap(),
        415,
        "unsupported_media_type",
    )
    .await;

    let cases = [
        (json!({"prompt": "   "}), "prompt"),
        (json!({"prompt": "x", "model": "gpt-17"}), "model"),
        (
            json!({"prompt": "x", "parameters": {"temperature": 7}}),
            "parameters.temperature",
        ),
        (
            json!({"prompt": "x", "parameters": {"max_tokens": 0}}),
            "parameters.max_tokens",
        ),
        (
            json!({"prompt": "x", "parameters": {"max_tokens": 1000000}}),
            "parameters.max_tokens",
        ),
        (
            json!({"prompt": "x", "parameters": {"top_p": 0}}),
            "parameters.top_p",
        ),
        (
            json!({"prompt": "x", "parameters": {"history": [{"role": "user", "content": " "}]}}),
            "parameters.history",
        ),
        (
            json!({"prompt": "x", "parameters": {"history": vec![json!({"role": "assistant", "content": "y"}); 257]}}),
            "parameters.history",
        ),
        (json!({"prompt": "x", "context": [1, 2]}), "context"),
        (json!({"prompt": "x", "metadata": "tag"}), "metadata"),
        (json!({"prompt": "x".repeat(100_001)}), "prompt"),
    ];
    for (payload, field) in cases {
        let response = post().json(&payload).send().await.unwrap();
        let status = response.status().as_u16();
        if field == "prompt" && status == 413 {
            continue; // the 100k-character prompt may exceed the body limit first
        }
        let body = expect_error(response, 422, "validation_failed").await;
        assert_eq!(body["error"]["field"], field, "{body}");
    }
    let unknown = post()
        .json(&json!({"prompt": "x", "model": "gpt-17"}))
        .send()
        .await
        .unwrap();
    let body = expect_error(unknown, 422, "validation_failed").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("known models: gpt-4o"),
        "{body}"
    );

    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_requests")
            .await,
        0
    );
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let app = spawn_app().await; // body limit: 64 KiB
    let response = app
        .http
        .post(app.url("/api/v1/generate"))
        .bearer_auth(app.token())
        .json(&json!({"prompt": "y".repeat(100 * 1024)}))
        .send()
        .await
        .unwrap();
    let body = expect_error(response, 413, "payload_too_large").await;
    assert!(
        body["error"]["message"].as_str().unwrap().contains("65536"),
        "{body}"
    );
}

#[tokio::test]
async fn malformed_ids_queries_routes_and_methods() {
    let app = spawn_app().await;
    let get = |path: &str| app.http.get(app.url(path)).bearer_auth(app.token()).send();

    let body = expect_error(
        get("/api/v1/generate/not-a-uuid").await.unwrap(),
        400,
        "bad_request",
    )
    .await;
    assert_eq!(body["error"]["message"], "request_id must be a UUID");
    let id = uuid::Uuid::now_v7();
    expect_error(
        get(&format!("/api/v1/generate/{id}")).await.unwrap(),
        404,
        "not_found",
    )
    .await;
    expect_error(
        get(&format!("/api/v1/generate/{id}?wait=soon"))
            .await
            .unwrap(),
        400,
        "bad_request",
    )
    .await;
    expect_error(
        get(&format!("/api/v1/generate/{id}?wait=-1"))
            .await
            .unwrap(),
        400,
        "bad_request",
    )
    .await;
    expect_error(
        get(&format!("/api/v1/generate/{id}?colour=red"))
            .await
            .unwrap(),
        400,
        "bad_request",
    )
    .await;
    expect_error(get("/api/v1/nothing-here").await.unwrap(), 404, "not_found").await;
    expect_error(
        app.http
            .delete(app.url("/api/v1/generate"))
            .bearer_auth(app.token())
            .send()
            .await
            .unwrap(),
        405,
        "method_not_allowed",
    )
    .await;

    // Bad Idempotency-Key values.
    let long_key = "k".repeat(300);
    let response = app
        .http
        .post(app.url("/api/v1/generate"))
        .bearer_auth(app.token())
        .header("Idempotency-Key", long_key)
        .json(&json!({"prompt": "x"}))
        .send()
        .await
        .unwrap();
    expect_error(response, 400, "bad_request").await;
}

#[tokio::test]
async fn mock_controls_are_refused_for_real_models_and_bad_values() {
    let app = spawn_app().await;
    let (status, body) = app
        .submit(json!({"prompt": "x", "mock": {"fail": "sometimes"}}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "validation_failed");
}

/// Found by `scripts/fuzz.sh`: PostgreSQL cannot store NUL in text or jsonb, so a NUL in a
/// body or a query was a 500. It is a 400 now, before anything is stored.
#[tokio::test]
async fn nul_characters_in_bodies_and_queries_are_refused_with_400() {
    let app = spawn_app().await;
    let admin = app.jwt.issue(app.user, 3600, Some("admin")).unwrap();
    for body in [
        r#"{"prompt": "a\u0000b"}"#,
        r#"{"prompt": "ok", "metadata": {"k\u0000": 1}}"#,
        r#"{"prompt": "ok", "context": {"note": "\\\u0000"}}"#,
    ] {
        let response = app
            .http
            .post(app.url("/api/v1/generate"))
            .bearer_auth(app.token())
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let error = expect_error(response, 400, "bad_request").await;
        assert!(
            error["error"]["message"].as_str().unwrap().contains("NUL"),
            "{error}"
        );
    }
    let response = app
        .http
        .get(app.url("/api/v1/admin/requests?provider=a%00b"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    expect_error(response, 400, "bad_request").await;
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_requests")
            .await,
        0
    );

    // An escaped backslash followed by `u0000` is ordinary text.
    let (status, _) = app
        .submit(serde_json::from_str(r#"{"prompt": "literally \\u0000"}"#).unwrap())
        .await;
    assert_eq!(status, 202);
}

/// Found by `scripts/fuzz.sh`: `?wait=1.8e308` overflowed a `Duration` and the handler
/// panicked (the connection closed with no answer). It is capped by `MAX_WAIT_SECS` now.
#[tokio::test]
async fn a_huge_wait_is_capped_not_a_panic() {
    let app = spawn_app().await;
    let id = app.submit_ok(json!({"prompt": "nobody runs me"})).await;
    let started = std::time::Instant::now();
    let response = app
        .http
        .get(app.url(&format!("/api/v1/generate/{id}?wait=0.5e-300")))
        .bearer_auth(app.token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    for wait in ["1.7976931348623157e308", "1e20"] {
        // No worker: the poll holds for MAX_WAIT_SECS (30 in tests) at most; one second of it
        // is enough to tell "held" from "crashed".
        let response = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            app.http
                .get(app.url(&format!("/api/v1/generate/{id}?wait={wait}")))
                .bearer_auth(app.token())
                .send(),
        )
        .await;
        assert!(
            response.is_err(),
            "wait={wait}: answered at once: {response:?}"
        );
    }
    // The connection survived: the api still answers.
    let (status, body) = app.poll(id, 0).await;
    assert_eq!(status, 200, "{body}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}
