//! Model listing with availability and health, model selection, and registry reload.

use std::time::Duration;

use llm_shared::models::{self, Requirements};
use llm_tests::fake_upstream::{self, FakeUpstream};
use llm_tests::{registry, spawn_app, start_worker};
use serde_json::{Value, json};
use uuid::Uuid;

#[tokio::test]
async fn models_are_listed_with_availability_prices_and_health() {
    let app = spawn_app().await;
    let worker = start_worker(&app.db, &[]);
    for i in 0..3 {
        let id = app
            .submit_ok(json!({"prompt": format!("health {i}"), "mock": {"latency_ms": 30}}))
            .await;
        app.wait_final(id, Duration::from_secs(20)).await;
    }
    let (status, list) = app.get_json("/api/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(list["default_model"], "mock");
    let models = list["models"].as_array().unwrap();
    let find = |id: &str| models.iter().find(|m| m["id"] == id).unwrap().clone();
    let gpt = find("gpt-4o");
    assert_eq!(gpt["available"], false);
    assert_eq!(gpt["unavailable_reason"], "OPENAI_API_KEY is not set");
    assert_eq!(gpt["input_price"], 2.5);
    assert_eq!(gpt["context_window"], 128000);
    assert_eq!(gpt["fallback"], json!(["claude-sonnet", "llama3.1"]));
    let mock = find("mock");
    assert_eq!(mock["available"], true);
    assert_eq!(mock["default"], true);
    assert_eq!(mock["health"]["recent_calls"], 3);
    assert_eq!(mock["health"]["error_rate"], 0.0);
    assert!(mock["health"]["p50_latency_ms"].as_f64().unwrap() >= 30.0);
    assert_eq!(mock["health"]["circuit"], "closed");

    let (status, one) = app.get_json("/api/v1/models/claude-haiku").await;
    assert_eq!(status, 200);
    assert_eq!(one["provider"], "anthropic");
    assert_eq!(app.get_json("/api/v1/models/gpt-17").await.0, 404);
    worker.stop().await;
}

#[tokio::test]
async fn a_failing_provider_shows_in_its_models_health() {
    let openai = FakeUpstream::start("/v1").await;
    openai.always(fake_upstream::openai::error(503, "down", None));
    let flags = llm_tests::openai_flags(&openai);
    let (app, worker) = llm_tests::app_with_worker(&flags).await;
    for i in 0..2 {
        let id = app
            .submit_ok(json!({"prompt": format!("down {i}"), "model": "gpt-4o-mini"}))
            .await;
        app.wait_final(id, Duration::from_secs(30)).await;
    }
    let (_, model) = app.get_json("/api/v1/models/gpt-4o-mini").await;
    let health = &model["health"];
    assert!(health["recent_calls"].as_i64().unwrap() >= 5, "{health}");
    assert_eq!(health["error_rate"], 1.0);
    assert_eq!(health["circuit"], "open");
    worker.stop().await;
}

fn req(value: Value) -> Requirements {
    serde_json::from_value(value).unwrap()
}

#[tokio::test]
async fn selection_picks_the_best_fitting_model() {
    let all = registry(&[
        "--openai-api-key",
        "k",
        "--anthropic-api-key",
        "k",
        "--ollama-url",
        "http://127.0.0.1:9",
    ]);
    let keys_only = registry(&["--openai-api-key", "k", "--anthropic-api-key", "k"]);
    let best = |r: &llm_shared::models::ModelRegistry, v: Value| {
        models::select(r, &req(v)).map(|c| c[0].model.clone())
    };
    let cases = [
        // No constraints: the cheapest real model (Ollama's is free).
        (&all, json!({}), Ok("llama3.1")),
        // A large context rules out Ollama and the 128k models; the cheaper Claude wins.
        (&all, json!({"min_context": 150000}), Ok("claude-haiku")),
        // Preferred providers come first, then price.
        (
            &all,
            json!({"preferred_providers": ["openai"], "prompt_tokens": 1000, "expected_output_tokens": 500}),
            Ok("gpt-4o-mini"),
        ),
        (
            &keys_only,
            json!({"preferred_providers": ["anthropic", "openai"]}),
            Ok("claude-haiku"),
        ),
        // Price caps; without Ollama only the mock models fit (the larger context wins the tie).
        (
            &keys_only,
            json!({"capabilities": ["json"], "max_output_price": 0.5}),
            Ok("mock-large"),
        ),
        (
            &keys_only,
            json!({"max_input_price": 2.0, "min_context": 150000}),
            Ok("claude-haiku"),
        ),
        // Output larger than the model's limit.
        (
            &keys_only,
            json!({"expected_output_tokens": 20000, "preferred_providers": ["openai"]}),
            Ok("claude-haiku"),
        ),
        (&all, json!({"min_context": 500000}), Err(())),
    ];
    for (registry, requirements, expected) in cases {
        let got = best(registry, requirements.clone()).map_err(|_| ());
        assert_eq!(
            got.as_deref(),
            expected.as_ref().map(|s| *s).map_err(|_| &()),
            "{requirements}"
        );
    }

    let app = spawn_app().await;
    let r = app
        .http
        .post(app.url("/api/v1/models/select"))
        .bearer_auth(app.token())
        .json(&json!({"min_context": 100000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["model"], "mock-large",
        "no keys: only mock models are available"
    );
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("200000 tokens of context")
    );
    let r = app
        .http
        .post(app.url("/api/v1/models/select"))
        .bearer_auth(app.token())
        .json(&json!({"min_context": 900000}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gpt-4o: unavailable"),
        "{body}"
    );
}

#[tokio::test]
async fn an_admin_reloads_the_registry_without_a_restart() {
    let path = std::env::temp_dir().join(format!("models-{}.toml", Uuid::now_v7()));
    let original = include_str!("../../config/models.toml");
    std::fs::write(&path, original).unwrap();
    let flags = vec!["--models-file".to_owned(), path.display().to_string()];
    let (app, worker) = llm_tests::app_with_worker(&flags).await;
    assert_eq!(app.get_json("/api/v1/models/mock-large").await.0, 200);

    // The file changes: mock-large goes away.
    let edited = original.replace("id = \"mock-large\"", "id = \"mock-xl\"");
    std::fs::write(&path, edited).unwrap();
    let reload = |token: String| {
        app.http
            .post(app.url("/api/v1/admin/models/reload"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(reload(app.token()).await.unwrap().status(), 403);
    let admin = app.jwt.issue(Uuid::now_v7(), 600, Some("admin")).unwrap();
    let r = reload(admin.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(app.get_json("/api/v1/models/mock-large").await.0, 404);
    assert_eq!(app.get_json("/api/v1/models/mock-xl").await.0, 200);
    // The worker was told too: it runs a request for the new model id.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = app
        .submit_ok(json!({"prompt": "on the new model", "model": "mock-xl"}))
        .await;
    let done = app.wait_final(id, Duration::from_secs(20)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["served_model"], "mock-xl");

    // A broken file is refused and the registry in use stays.
    std::fs::write(&path, "this is not toml [").unwrap();
    let r = reload(admin).await.unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(app.get_json("/api/v1/models/mock-xl").await.0, 200);
    let _ = std::fs::remove_file(path);
    worker.stop().await;
}

/// A registry file of its own for a test, and the flags that point a process at it.
fn own_registry_file() -> (std::path::PathBuf, Vec<String>) {
    let path = std::env::temp_dir().join(format!("models-{}.toml", Uuid::now_v7()));
    std::fs::write(&path, include_str!("../../config/models.toml")).unwrap();
    let flags = vec!["--models-file".to_owned(), path.display().to_string()];
    (path, flags)
}

/// Asks `addr` (an api) for `model` until it answers `status`, for up to 10 s.
async fn until_model_is(
    app: &llm_tests::TestApp,
    addr: std::net::SocketAddr,
    model: &str,
    status: u16,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = app
            .http
            .get(format!("http://{addr}/api/v1/models/{model}"))
            .bearer_auth(app.token())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if got == status {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{addr} still answers {got} for {model}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn model_updated_posted_to_one_api_reaches_every_api_and_the_worker() {
    let (path, flags) = own_registry_file();
    let flag_refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (app, worker) = llm_tests::app_with_worker(&flags).await;
    let other = app.replica(&flag_refs).await;
    until_model_is(&app, other, "mock-large", 200).await;

    let edited = include_str!("../../config/models.toml")
        .replace("id = \"mock-large\"", "id = \"mock-xxl\"");
    std::fs::write(&path, edited).unwrap();
    let service = app.jwt.issue(Uuid::now_v7(), 600, Some("service")).unwrap();
    let (status, body) = app
        .call(
            reqwest::Method::POST,
            "/api/v1/events",
            &service,
            Some(
                json!({"specversion": "1.0", "id": Uuid::now_v7(), "source": "hub",
                        "type": "model.updated", "data": {}}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // The api that received it, the other replica, and the worker all use the new registry.
    until_model_is(&app, app.addr, "mock-xxl", 200).await;
    until_model_is(&app, other, "mock-xxl", 200).await;
    until_model_is(&app, other, "mock-large", 404).await;
    let submitted = app
        .http
        .post(format!("http://{other}/api/v1/generate"))
        .bearer_auth(app.token())
        .json(&json!({"prompt": "on the updated registry", "model": "mock-xxl"}))
        .send()
        .await
        .unwrap();
    assert_eq!(submitted.status(), 202);
    let id: Uuid = submitted.json::<Value>().await.unwrap()["request_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let done = app.wait_final(id, Duration::from_secs(20)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["served_model"], "mock-xxl");
    assert_eq!(
        app.db
            .count("SELECT version FROM model_registry_version")
            .await,
        1
    );
    let _ = std::fs::remove_file(path);
    worker.stop().await;
}

#[tokio::test]
async fn a_reload_announced_while_a_replica_was_not_listening_is_applied_when_it_listens_again() {
    let (path, flags) = own_registry_file();
    let flag_refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let app = llm_tests::spawn_app_with_providers(&flags).await;
    let other = app.replica(&flag_refs).await;
    until_model_is(&app, other, "mock-large", 200).await;

    // The registry moves on while no one hears of it: the file changes and the version is
    // raised without a notice (as if it came while the listeners were between connections).
    let edited = include_str!("../../config/models.toml")
        .replace("id = \"mock-large\"", "id = \"mock-xxl\"");
    std::fs::write(&path, edited).unwrap();
    sqlx::query("UPDATE model_registry_version SET version = version + 1")
        .execute(&app.db.pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    until_model_is(&app, other, "mock-large", 200).await;

    // Their connections drop; once they listen again, they read the version and reload.
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()
           AND query ILIKE 'LISTEN%models_reload%'",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    until_model_is(&app, other, "mock-xxl", 200).await;
    until_model_is(&app, app.addr, "mock-xxl", 200).await;
    let _ = std::fs::remove_file(path);
}
