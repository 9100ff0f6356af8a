//! Authentication and per-user isolation on every `/api/v1` route.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use llm_tests::{TEST_SECRET, spawn_app};
use serde_json::{Value, json};
use uuid::Uuid;

async fn assert_unauthorized(response: reqwest::Response, message: &str) {
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    assert_eq!(body["error"]["message"], message, "{body}");
}

fn token(alg: Algorithm, secret: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn in_an_hour() -> i64 {
    chrono::Utc::now().timestamp() + 3600
}

#[tokio::test]
async fn every_route_requires_a_valid_token() {
    let app = spawn_app().await;
    let id = Uuid::now_v7();
    let submit = || {
        app.http
            .post(app.url("/api/v1/generate"))
            .json(&json!({"prompt": "x"}))
    };
    let poll = || app.http.get(app.url(&format!("/api/v1/generate/{id}")));

    assert_unauthorized(
        submit().send().await.unwrap(),
        "missing Authorization header (expected: Bearer <token>)",
    )
    .await;
    assert_unauthorized(
        poll().send().await.unwrap(),
        "missing Authorization header (expected: Bearer <token>)",
    )
    .await;
    assert_unauthorized(
        submit()
            .header("authorization", "Basic dXNlcjpwYXNz")
            .send()
            .await
            .unwrap(),
        "the Authorization header must be: Bearer <token>",
    )
    .await;
    assert_unauthorized(
        submit().bearer_auth("not-a-jwt").send().await.unwrap(),
        "the token is invalid",
    )
    .await;

    let sub = Uuid::now_v7().to_string();
    let wrong_key = token(
        Algorithm::HS256,
        "some-other-secret-key-that-is-long-enough",
        json!({"sub": sub, "exp": in_an_hour()}),
    );
    assert_unauthorized(
        submit().bearer_auth(wrong_key).send().await.unwrap(),
        "the token is invalid",
    )
    .await;

    let expired = token(
        Algorithm::HS256,
        TEST_SECRET,
        json!({"sub": sub, "exp": chrono::Utc::now().timestamp() - 3600}),
    );
    assert_unauthorized(
        poll().bearer_auth(expired).send().await.unwrap(),
        "the token has expired",
    )
    .await;

    // The algorithm is pinned: the right key under another algorithm is refused.
    let hs384 = token(
        Algorithm::HS384,
        TEST_SECRET,
        json!({"sub": sub, "exp": in_an_hour()}),
    );
    assert_unauthorized(
        submit().bearer_auth(hs384).send().await.unwrap(),
        "the token is invalid",
    )
    .await;

    // `alg: none` (unsigned) is refused.
    let unsigned = {
        use base64_url as b64;
        format!(
            "{}.{}.",
            b64::encode(r#"{"alg":"none","typ":"JWT"}"#),
            b64::encode(&json!({"sub": sub, "exp": in_an_hour()}).to_string())
        )
    };
    assert_unauthorized(
        submit().bearer_auth(unsigned).send().await.unwrap(),
        "the token is invalid",
    )
    .await;

    let no_exp = token(Algorithm::HS256, TEST_SECRET, json!({"sub": sub}));
    assert_unauthorized(
        submit().bearer_auth(no_exp).send().await.unwrap(),
        "the token is invalid",
    )
    .await;

    let not_uuid = token(
        Algorithm::HS256,
        TEST_SECRET,
        json!({"sub": "alice", "exp": in_an_hour()}),
    );
    assert_unauthorized(
        submit().bearer_auth(not_uuid).send().await.unwrap(),
        "the token is invalid",
    )
    .await;

    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_requests")
            .await,
        0
    );
}

#[tokio::test]
async fn a_user_cannot_read_another_users_request() {
    let app = spawn_app().await;
    let id = app.submit_ok(json!({"prompt": "mine"})).await;
    let intruder = app.token_for(Uuid::now_v7());
    let response = app
        .http
        .get(app.url(&format!("/api/v1/generate/{id}")))
        .bearer_auth(intruder)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");

    let (status, body) = app.poll(id, 0).await;
    assert_eq!(status, 200);
    assert_eq!(body["id"], id.to_string());
}

/// Minimal base64url without padding, for hand-made tokens.
mod base64_url {
    pub fn encode(input: &str) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = input.as_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}
