//! What one tenant can learn of, or do with, what belongs to the service or to other tenants:
//! the mock provider (free answers, failure and latency controls) exists only where
//! `MOCK_PROVIDER` turns it on, and the response cache, like the coalescing of identical
//! requests in flight, is shared between users only with `CACHE_SCOPE=global`.

use std::time::Duration;

use llm_shared::models::ModelRegistry;
use llm_tests::fake_upstream::{self, FakeUpstream, Reply};
use llm_tests::{
    InProcessWorker, TestApp, common_config, openai_flags, spawn_app, spawn_app_with_providers,
    start_worker,
};
use serde_json::{Value, json};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);
const MOCK_OFF: &str = "--mock-provider=false";

/// An app with the mock provider off, and these flags.
async fn app_without_mock(flags: &[String]) -> TestApp {
    let mut all = vec![MOCK_OFF.to_owned()];
    all.extend_from_slice(flags);
    spawn_app_with_providers(&all).await
}

/// `POST path` with `body` as `user`; status and JSON body.
async fn post_as(app: &TestApp, user: Uuid, path: &str, body: &Value) -> (u16, Value) {
    let response = app
        .http
        .post(app.url(path))
        .bearer_auth(app.token_for(user))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The error of an answer, with the model it names (`model`) written `MODEL`.
fn error_of(body: &Value, model: &str) -> String {
    body["error"].to_string().replace(model, "MODEL")
}

#[tokio::test]
async fn mock_models_are_unknown_unless_the_mock_provider_is_on() {
    let openai = FakeUpstream::start("/v1").await;
    let app = app_without_mock(&openai_flags(&openai)).await;

    let (status, list) = app.get_json("/api/v1/models").await;
    assert_eq!(status, 200, "{list}");
    let ids: Vec<&str> = list["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"gpt-4o"), "{list}");
    assert!(!ids.iter().any(|id| id.starts_with("mock")), "{list}");
    assert_ne!(list["default_model"], "mock");
    let (status, compat) = app.get_json("/v1/models").await;
    assert_eq!(status, 200, "{compat}");
    assert!(
        compat["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| !m["id"].as_str().unwrap().starts_with("mock")),
        "{compat}"
    );
    for path in ["/api/v1/models/mock", "/v1/models/mock"] {
        let (status, body) = app.get_json(path).await;
        let unknown = app.get_json(&path.replace("mock", "no-such-model")).await;
        assert_eq!(
            (status, error_of(&body, "mock")),
            (unknown.0, error_of(&unknown.1, "no-such-model"))
        );
    }

    // Naming one is answered as naming any model that does not exist, on every door.
    for (path, body) in [
        (
            "/api/v1/generate",
            json!({"prompt": "free?", "model": "MODEL"}),
        ),
        (
            "/api/v1/generate/stream",
            json!({"prompt": "free?", "model": "MODEL"}),
        ),
        (
            "/api/v1/generate/batch",
            json!({"items": [{"prompt": "free?", "model": "MODEL"}]}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "MODEL", "messages": [{"role": "user", "content": "free?"}]}),
        ),
        (
            "/v1/completions",
            json!({"model": "MODEL", "prompt": "free?"}),
        ),
    ] {
        let named = |model: &str| {
            serde_json::from_str::<Value>(&body.to_string().replace("MODEL", model)).unwrap()
        };
        let (status, refused) = app.post_json(path, &named("mock-large")).await;
        assert!((400..500).contains(&status), "{path}: {status} {refused}");
        let (unknown_status, unknown) = app.post_json(path, &named("no-such-model")).await;
        assert_eq!(
            (status, error_of(&refused, "mock-large")),
            (unknown_status, error_of(&unknown, "no-such-model")),
            "{path}"
        );
    }
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_requests")
            .await,
        0
    );
}

#[tokio::test]
async fn mock_controls_are_refused_on_every_door_unless_the_mock_provider_is_on() {
    let openai = FakeUpstream::start("/v1").await;
    let app = app_without_mock(&openai_flags(&openai)).await;
    let controls = json!({"fail": "permanent"});
    for model in [json!("mock"), json!("gpt-4o"), Value::Null] {
        for (path, body) in [
            (
                "/api/v1/generate",
                json!({"prompt": "x", "model": model, "mock": controls}),
            ),
            (
                "/api/v1/generate",
                json!({"prompt": "x", "model": model, "metadata": {"mock": controls}}),
            ),
            (
                "/api/v1/generate/stream",
                json!({"prompt": "x", "model": model, "mock": controls}),
            ),
            (
                "/api/v1/generate/batch",
                json!({"items": [{"prompt": "x", "model": model, "mock": controls}]}),
            ),
        ] {
            let (status, refused) = app.post_json(path, &body).await;
            assert_eq!(status, 422, "{path} {body}: {refused}");
            assert_eq!(refused["error"]["code"], "validation_failed", "{refused}");
        }
        let compat = json!({"model": model, "mock": controls,
                            "messages": [{"role": "user", "content": "x"}]});
        let (status, refused) = app.post_json("/v1/chat/completions", &compat).await;
        assert!((400..500).contains(&status), "{compat}: {status} {refused}");
        let anthropic = json!({"model": model, "mock": controls, "max_tokens": 5,
                               "messages": [{"role": "user", "content": "x"}]});
        let response = app
            .http
            .post(app.url("/v1/messages"))
            .header("x-api-key", app.token())
            .header("anthropic-version", "2023-06-01")
            .json(&anthropic)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let refused: Value = response.json().await.unwrap();
        assert!(
            (400..500).contains(&status),
            "{anthropic}: {status} {refused}"
        );
        assert_eq!(refused["type"], "error", "{refused}");
    }
    assert_eq!(
        app.db
            .count("SELECT COUNT(*) FROM generation_requests")
            .await,
        0
    );
    assert!(openai.received().is_empty());
}

#[tokio::test]
async fn without_a_configured_provider_or_the_mock_no_model_is_available() {
    let app = app_without_mock(&[]).await;
    let (status, list) = app.get_json("/api/v1/models").await;
    assert_eq!(status, 200, "{list}");
    assert_ne!(list["default_model"], "mock", "{list}");
    let (status, refused) = app.submit(json!({"prompt": "anything?"})).await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"]["field"], "model", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no model is available"),
        "{refused}"
    );

    // Naming a mock model as the default with the mock off stops the process at start.
    let named = ModelRegistry::load(&common_config(&[MOCK_OFF, "--default-model", "mock"]));
    let err = named.expect_err("a mock default is refused").to_string();
    assert!(err.contains("MOCK_PROVIDER"), "{err}");
}

#[tokio::test]
async fn a_worker_without_the_mock_provider_fails_a_mock_request_for_good() {
    let app = spawn_app().await; // serves the mock: the request is stored
    let id = app
        .submit_ok(json!({"prompt": "run me", "model": "mock-large"}))
        .await;
    let worker = start_worker(&app.db, &[MOCK_OFF]);
    let done = app.wait_final(id, WAIT).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error_code"], "unknown_model", "{done}");
    assert!(done.to_string().contains("MOCK_PROVIDER"), "{done}");
    // The run's attempt row is closed with the request, not left `running` for ever.
    let open = app
        .db
        .count(&format!(
            "SELECT COUNT(*) FROM generation_attempts WHERE request_id = '{id}' AND outcome = 'running'"
        ))
        .await;
    assert_eq!(open, 0);
    worker.stop().await;
}

/// An app and worker on a fake OpenAI answering after `delay`, with extra api flags.
async fn cached_app(
    delay: Duration,
    api_flags: &[&str],
) -> (FakeUpstream, TestApp, InProcessWorker) {
    let openai = FakeUpstream::start("/v1").await;
    openai.always(Reply::Delayed(
        delay,
        Box::new(fake_upstream::openai::success("An answer.", 12, 4)),
    ));
    let flags = openai_flags(&openai);
    let mut all = flags.clone();
    all.extend(api_flags.iter().map(|f| f.to_string()));
    let app = spawn_app_with_providers(&all).await;
    let worker_flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let worker = start_worker(&app.db, &worker_flags);
    (openai, app, worker)
}

/// Submits `body` as `user` and waits for its end: submit status and final view.
async fn ask_as(app: &TestApp, user: Uuid, body: &Value) -> (u16, Value) {
    let (status, accepted) = post_as(app, user, "/api/v1/generate", body).await;
    assert!(status == 200 || status == 202, "{accepted}");
    let id = accepted["request_id"].as_str().unwrap();
    let view = app
        .http
        .get(app.url(&format!("/api/v1/generate/{id}?wait=10")))
        .bearer_auth(app.token_for(user))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(view["status"], "completed", "{view}");
    (status, view)
}

#[tokio::test]
async fn a_user_is_not_answered_from_another_users_cached_answer() {
    let (openai, app, worker) = cached_app(Duration::ZERO, &[]).await;
    let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
    let body = json!({"prompt": "the heir's secret name", "model": "gpt-4o"});

    let (status, first) = ask_as(&app, alice, &body).await;
    assert_eq!((status, &first["cached"]), (202, &json!(false)));
    let (status, other) = ask_as(&app, bob, &body).await;
    assert_eq!(status, 202, "{other}");
    assert_eq!(other["cached"], false, "{other}");
    assert_eq!(openai.received().len(), 2, "each user's own provider call");
    let (status, again) = ask_as(&app, bob, &body).await;
    assert_eq!((status, &again["cached"]), (200, &json!(true)), "{again}");
    assert_eq!(openai.received().len(), 2);

    // Each user's entry; a key_prefix naming the answer's content reaches both.
    let keys: Vec<String> = sqlx::query_scalar("SELECT cache_key FROM response_cache")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    let content = &keys[0][..keys[0].rfind(':').unwrap()];
    assert!(keys.iter().all(|k| k.starts_with(content)), "{keys:?}");
    let admin = app.jwt.issue(Uuid::now_v7(), 600, Some("admin")).unwrap();
    let invalidated: Value = app
        .http
        .post(app.url("/api/v1/admin/cache/invalidate"))
        .bearer_auth(admin)
        .json(&json!({"key_prefix": content}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(invalidated["invalidated"], 2, "{invalidated}");
    let (status, _) = ask_as(&app, alice, &body).await;
    assert_eq!(status, 202);
    assert_eq!(openai.received().len(), 3);
    worker.stop().await;
}

#[tokio::test]
async fn with_a_global_cache_scope_users_share_cached_answers() {
    let (openai, app, worker) = cached_app(Duration::ZERO, &["--cache-scope=global"]).await;
    let body = json!({"prompt": "a common question", "model": "gpt-4o"});
    let (status, _) = ask_as(&app, Uuid::now_v7(), &body).await;
    assert_eq!(status, 202);
    let (status, other) = ask_as(&app, Uuid::now_v7(), &body).await;
    assert_eq!((status, &other["cached"]), (200, &json!(true)), "{other}");
    assert_eq!(openai.received().len(), 1);
    worker.stop().await;
}

#[tokio::test]
async fn identical_requests_of_two_users_in_flight_are_not_joined() {
    let (openai, app, worker) = cached_app(Duration::from_millis(1500), &[]).await;
    let body = json!({"prompt": "asked by two at once", "model": "gpt-4o"});
    let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
    // One after the other: the second is stored while the first is in flight.
    let first = post_as(&app, alice, "/api/v1/generate", &body).await;
    let second = post_as(&app, bob, "/api/v1/generate", &body).await;
    assert_eq!((first.0, second.0), (202, 202), "{first:?} {second:?}");
    let followers = app
        .db
        .count("SELECT COUNT(*) FROM generation_requests WHERE coalesced_into IS NOT NULL")
        .await;
    assert_eq!(followers, 0, "neither follows the other's provider call");
    for (user, accepted) in [(alice, first.1), (bob, second.1)] {
        let id = accepted["request_id"].as_str().unwrap();
        let view: Value = app
            .http
            .get(app.url(&format!("/api/v1/generate/{id}?wait=15")))
            .bearer_auth(app.token_for(user))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(view["status"], "completed", "{view}");
        assert_eq!(view["cached"], false, "{view}");
    }
    assert_eq!(openai.received().len(), 2, "one provider call per user");
    worker.stop().await;
}
