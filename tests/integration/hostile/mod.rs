//! What a hostile tenant (or a confused peer service) tries, and the clear 4xx it gets: tokens
//! that are not yet valid or were signed for another service, a `Last-Event-ID` past any event
//! id, and cache invalidations that would wipe every user's entries. Each file of this folder
//! holds the attacks on one area.

mod anthropic;
mod endpoints;
mod fair_share;
mod openai_responses;
mod operations;
mod owasp;
mod quotas;
mod tenancy;
mod worker;

use llm_api::jwt::JwtKeys;
use llm_tests::{TEST_SECRET, TestApp, spawn_app, spawn_app_with_providers};
use secrecy::SecretString;
use serde_json::{Value, json};
use uuid::Uuid;

/// `GET path` with `token`; the status.
async fn status_with(app: &TestApp, path: &str, token: &str) -> u16 {
    app.http
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A token signed with the test key carrying exactly `claims`.
fn signed(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(TEST_SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn a_token_not_yet_valid_is_refused() {
    let app = spawn_app().await;
    let now = chrono::Utc::now().timestamp();
    let path = format!("/api/v1/generate/{}", Uuid::now_v7());
    let later = signed(&json!({"sub": app.user, "exp": now + 7200, "nbf": now + 3600}));
    assert_eq!(status_with(&app, &path, &later).await, 401);
    // Within the clock-skew leeway, and already valid: accepted (404: no such request).
    let skewed = signed(&json!({"sub": app.user, "exp": now + 7200, "nbf": now + 5}));
    assert_eq!(status_with(&app, &path, &skewed).await, 404);
    let valid = signed(&json!({"sub": app.user, "exp": now + 7200, "nbf": now - 60}));
    assert_eq!(status_with(&app, &path, &valid).await, 404);
}

#[tokio::test]
async fn tokens_for_another_issuer_or_audience_are_refused_where_they_are_pinned() {
    let flags = [
        "--jwt-issuer",
        "auth.internal",
        "--jwt-audience",
        "llm-service",
    ];
    let app = spawn_app_with_providers(&flags.map(str::to_owned)).await;
    let path = format!("/api/v1/generate/{}", Uuid::now_v7());
    let now = chrono::Utc::now().timestamp();
    let with = |extra: Value| {
        let mut claims = json!({"sub": app.user, "exp": now + 600});
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        signed(&claims)
    };
    let right = with(json!({"iss": "auth.internal", "aud": "llm-service"}));
    assert_eq!(status_with(&app, &path, &right).await, 404);
    let among_several = with(json!({"iss": "auth.internal", "aud": ["billing", "llm-service"]}));
    assert_eq!(status_with(&app, &path, &among_several).await, 404);
    for wrong in [
        json!({"iss": "auth.internal", "aud": "billing"}),
        json!({"iss": "someone.else", "aud": "llm-service"}),
        json!({"aud": "llm-service"}),
        json!({"iss": "auth.internal"}),
        json!({}),
    ] {
        let token = with(wrong.clone());
        assert_eq!(status_with(&app, &path, &token).await, 401, "{wrong}");
    }
    // The keys the service issues with (`llm-api token`) carry the pinned claims.
    let issued = JwtKeys::new(&SecretString::from(TEST_SECRET))
        .pinned(Some("auth.internal".into()), Some("llm-service".into()))
        .issue(app.user, 600, None)
        .unwrap();
    assert_eq!(status_with(&app, &path, &issued).await, 404);
    // Unpinned, a token naming any audience is refused: it was meant for someone else.
    let open = spawn_app().await;
    let for_billing = signed(&json!({"sub": open.user, "exp": now + 600, "aud": "billing"}));
    assert_eq!(status_with(&open, &path, &for_billing).await, 401);
}

#[tokio::test]
async fn a_last_event_id_past_any_event_id_is_a_400() {
    let app = spawn_app().await;
    let id = app.submit_ok(json!({"model": "mock", "prompt": "x"})).await;
    let attach = |last: &'static str| {
        app.http
            .get(app.url(&format!("/api/v1/generate/{id}/stream")))
            .bearer_auth(app.token())
            .header("last-event-id", last)
            .send()
    };
    for bad in ["18446744073709551615", "9223372036854775808", "-1", "1e3"] {
        let response = attach(bad).await.unwrap();
        assert_eq!(response.status().as_u16(), 400, "{bad}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "bad_request", "{bad}: {body}");
    }
    // The largest event id there can be is taken as such: the stream opens.
    let response = attach("9223372036854775807").await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test]
async fn cache_invalidations_that_would_wipe_every_entry_are_refused() {
    let app = spawn_app().await;
    sqlx::query(
        "INSERT INTO response_cache (cache_key, response, prompt, model)
         VALUES ('v1:aa', 'kept', 'p', 'mock'), ('v1:bb', 'kept', 'p', 'mock-large')",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    let entries = || app.db.count("SELECT COUNT(*) FROM response_cache");

    let admin = app.jwt.issue(Uuid::now_v7(), 600, Some("admin")).unwrap();
    for filter in [
        json!({}),
        json!({"key_prefix": ""}),
        json!({"model": " "}),
        json!({"template_id": "", "model": "mock"}),
    ] {
        let response = app
            .http
            .post(app.url("/api/v1/admin/cache/invalidate"))
            .bearer_auth(&admin)
            .json(&filter)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 422, "{filter}");
    }
    assert_eq!(entries().await, 2);

    // The same filters from the message hub; the refused event's id stays unused, so the
    // hub's corrected retry takes effect rather than being answered as a duplicate.
    let service = app.jwt.issue(Uuid::now_v7(), 600, Some("service")).unwrap();
    let event = Uuid::now_v7();
    let send = |data: Value| {
        app.http
            .post(app.url("/api/v1/events"))
            .bearer_auth(&service)
            .json(&json!({"id": event, "type": "cache.invalidate", "data": data}))
            .send()
    };
    for data in [json!({}), json!({"key_prefix": ""})] {
        let response = send(data.clone()).await.unwrap();
        assert_eq!(response.status().as_u16(), 422, "{data}");
    }
    assert_eq!(entries().await, 2);
    let response = send(json!({"model": "mock"})).await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["invalidated"], 1, "{body}");
    assert_eq!(entries().await, 1);
}

#[tokio::test]
async fn a_schema_demanding_a_huge_value_is_refused_at_submit() {
    let app = spawn_app().await;
    let nested = json!({"type": "array", "minItems": 5000,
        "items": {"type": "array", "minItems": 5000, "items": {"type": "string"}}});
    for schema in [
        json!({"type": "string", "minLength": 50_000_000}),
        json!({"type": "array", "minItems": 1_000_000_000_000_u64}),
        nested,
    ] {
        let body = json!({"model": "mock", "prompt": "x", "parameters": {
            "response_format": {"type": "json_schema", "schema": schema}}});
        let (status, answer) = app.submit(body).await;
        assert_eq!(status, 422, "{schema}: {answer}");
        assert_eq!(answer["error"]["code"], "validation_failed", "{answer}");
    }
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_requests")
            .await,
        0
    );
}

#[tokio::test]
async fn metadata_the_service_writes_cannot_be_set_by_a_client() {
    let app = spawn_app().await;
    for key in ["template_id", "template_version", "event_id", "mock"] {
        let metadata = json!({key: {"fail": "crash"}});
        let (status, answer) = app
            .submit(json!({"model": "mock", "prompt": "x", "metadata": metadata}))
            .await;
        assert_eq!(status, 422, "{key}: {answer}");
        assert_eq!(answer["error"]["field"], "metadata", "{answer}");
    }
    // A client's own keys are kept, and a rendered template's origin is the service's to note.
    let id = app
        .submit_ok(json!({"model": "mock", "prompt": "x", "metadata": {"campaign": "c1"}}))
        .await;
    let (_, row) = app.poll(id, 0).await;
    assert_eq!(row["metadata"]["campaign"], "c1");
}

#[tokio::test]
async fn a_bulk_replay_names_its_requests_and_leaves_cancelled_ones_alone_unless_asked() {
    let app = spawn_app().await;
    // Cancelled by its user before any worker ran.
    let cancelled = app
        .submit_ok(json!({"model": "mock", "prompt": "mine"}))
        .await;
    let response = app
        .http
        .delete(app.url(&format!("/api/v1/generate/{cancelled}")))
        .bearer_auth(app.token())
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let _worker = llm_tests::start_worker(&app.db, &[]);
    let failed = app
        .submit_ok(json!({"model": "mock", "prompt": "doomed", "mock": {"fail": "permanent"}}))
        .await;
    let done = app
        .wait_final(failed, std::time::Duration::from_secs(20))
        .await;
    assert_eq!(done["status"], "failed", "{done}");

    let admin = app.jwt.issue(Uuid::now_v7(), 600, Some("admin")).unwrap();
    let replay = |body: Value| {
        app.http
            .post(app.url("/api/v1/admin/requests/replay"))
            .bearer_auth(&admin)
            .json(&body)
            .send()
    };
    for everything in [json!({}), json!({"filter": {}}), json!({"dry_run": false})] {
        let response = replay(everything.clone()).await.unwrap();
        assert_eq!(response.status().as_u16(), 422, "{everything}");
    }
    let by_model: Value = replay(json!({"filter": {"model": "mock"}, "dry_run": true}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(by_model["request_ids"], json!([failed]), "{by_model}");
    let asked: Value = replay(json!({"filter": {"status": "cancelled"}, "dry_run": true}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(asked["request_ids"], json!([cancelled]), "{asked}");
}
