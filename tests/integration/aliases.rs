//! Model aliases: another name of a registry model, resolved wherever a model name comes in
//! and stored as the model it names; checked as the registry loads.

use std::time::Duration;

use llm_shared::models::ModelRegistry;
use llm_tests::{
    app_with_worker, common_config, registry, spawn_api_process_with, spawn_app,
    spawn_worker_process,
};
use serde_json::{Value, json};
use uuid::Uuid;

const REGISTRY: &str = include_str!("../../config/models.toml");

/// The shipped registry with one more alias.
fn with_alias(line: &str) -> String {
    assert!(REGISTRY.contains("[aliases]\n"));
    REGISTRY.replace("[aliases]\n", &format!("[aliases]\n{line}\n"))
}

#[tokio::test]
async fn an_alias_names_its_model_at_every_door_and_is_stored_as_that_model() {
    let path = std::env::temp_dir().join(format!("models-{}.toml", Uuid::now_v7()));
    std::fs::write(&path, with_alias(r#""dm" = "mock""#)).unwrap();
    let flags = vec!["--models-file".to_owned(), path.display().to_string()];
    let (app, worker) = app_with_worker(&flags).await;

    let id = app
        .submit_ok(json!({"prompt": "Name a tavern", "model": "dm"}))
        .await;
    let done = app.wait_final(id, Duration::from_secs(20)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["model"], "mock");
    let (status, batch) = app
        .post_json(
            "/api/v1/generate/batch",
            &json!({"requests": [{"prompt": "Name an inn", "model": "dm"}]}),
        )
        .await;
    assert_eq!(status, 202, "{batch}");
    let (status, chat) = app
        .post_json(
            "/v1/chat/completions",
            &json!({"model": "dm", "max_tokens": 8,
                    "messages": [{"role": "user", "content": "Name a ship"}]}),
        )
        .await;
    assert_eq!(status, 200, "{chat}");
    let (status, _, message) = crate::anthropic::post(
        &app,
        &app.token(),
        json!({"model": "dm", "max_tokens": 8,
               "messages": [{"role": "user", "content": "Name a sword"}]}),
    )
    .await;
    assert_eq!(status, 200, "{message}");
    let models: Vec<String> = sqlx::query_scalar("SELECT DISTINCT model FROM generation_requests")
        .fetch_all(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(
        models,
        ["mock"],
        "usage, cache and limits are per real model"
    );
    let (_, usage) = app.get_json("/api/v1/usage?group_by=model").await;
    assert_eq!(usage["rows"][0]["model"], "mock", "{usage}");

    // Listed: on the model natively, and as a model object of its own on the OpenAI door.
    let (_, list) = app.get_json("/api/v1/models").await;
    let aliases = |id: &str| -> Value {
        list["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .unwrap()["aliases"]
            .clone()
    };
    assert_eq!(aliases("mock"), json!(["dm"]));
    assert_eq!(aliases("gpt-4o"), json!(["gpt-4", "gpt-4-turbo"]));
    assert_eq!(aliases("claude-haiku"), json!([]));
    let (_, openai) = app.get_json("/v1/models").await;
    let dm = openai["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "dm")
        .cloned();
    assert_eq!(
        dm.as_ref().map(|m| &m["alias_of"]),
        Some(&json!("mock")),
        "{openai}"
    );
    let (status, one) = app.get_json("/v1/models/dm").await;
    assert_eq!(
        (status, &one["id"], &one["alias_of"]),
        (200, &json!("dm"), &json!("mock"))
    );

    // An alias of a model that cannot run here says so, as its model would.
    let (status, body) = app.submit(json!({"prompt": "x", "model": "gpt-4"})).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("model `gpt-4o` is unavailable"),
        "{body}"
    );
    worker.stop().await;
    let _ = std::fs::remove_file(path);
}

#[test]
fn an_alias_shadowing_a_model_or_naming_no_model_stops_the_registry_loading() {
    let config = common_config(&[]);
    for (line, expected) in [
        (
            r#""gpt-4o-mini" = "gpt-4o""#,
            "alias `gpt-4o-mini` is also the id of a model",
        ),
        (
            r#""gpt-5" = "gpt-6""#,
            "alias `gpt-5` names unknown model `gpt-6`",
        ),
        (
            r#""chain" = "gpt-4""#,
            "alias `chain` names unknown model `gpt-4`",
        ),
    ] {
        let error = ModelRegistry::from_toml("test.toml", &with_alias(line), &config)
            .err()
            .unwrap_or_else(|| panic!("loaded with {line}"))
            .to_string();
        assert!(error.contains(expected), "{line}: {error}");
    }
    // Without the mock provider an alias of a mock model is gone with it: no name reaches it.
    let off = common_config(&["--mock-provider=false"]);
    let models =
        ModelRegistry::from_toml("test.toml", &with_alias(r#""dm" = "mock""#), &off).unwrap();
    assert!(models.get("dm").is_none() && models.get("mock").is_none());
    assert!(
        models
            .all()
            .iter()
            .all(|m| !m.aliases.contains(&"dm".to_owned()))
    );
    let error = ModelRegistry::from_toml(
        "test.toml",
        &with_alias(r#""dm" = "mock""#),
        &common_config(&["--mock-provider=false", "--default-model", "dm"]),
    )
    .err()
    .map(|e| e.to_string());
    assert!(error.is_some_and(|e| e.contains("`dm` is not in the model registry")));
}

#[tokio::test]
async fn default_model_may_be_an_alias_and_both_binaries_start_with_it() {
    let models = registry(&["--default-model", "gpt-4"]);
    assert_eq!(models.default_model(), "gpt-4o");
    assert!(ModelRegistry::load(&common_config(&["--default-model", "gpt-5"])).is_err());

    let app = spawn_app().await; // for its database
    let env = [("DEFAULT_MODEL", "gpt-4")];
    let (_api, base) = spawn_api_process_with(&app.db, &env).await;
    let mut worker = spawn_worker_process(&app.db, &env);
    let token = app.jwt.issue(Uuid::now_v7(), 600, None).unwrap();
    let http = reqwest::Client::new();
    let call = |request: reqwest::RequestBuilder| async {
        let response = request.bearer_auth(&token).send().await.unwrap();
        response.json::<Value>().await.unwrap()
    };
    let list = call(http.get(format!("{base}/api/v1/models"))).await;
    assert_eq!(list["default_model"], "gpt-4o", "{list}");
    let body = json!({"prompt": "A halfling's name", "model": "mock"});
    let accepted = call(http.post(format!("{base}/api/v1/generate")).json(&body)).await;
    let poll = format!("{base}{}?wait=20", accepted["poll_url"].as_str().unwrap());
    let done = call(http.get(poll)).await;
    assert_eq!(
        done["status"], "completed",
        "the worker runs with it: {done}"
    );
    assert!(worker.try_wait().unwrap().is_none());
}

#[test]
fn a_templates_default_model_may_be_an_alias() {
    let dir = std::env::temp_dir().join(format!("prompts-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("tavern.j2"),
        "{#-\n[template]\ndescription = \"t\"\ndefault_model = \"dm\"\noutput = \"text\"\nversion = 1\n-#}\nName a tavern.",
    )
    .unwrap();
    let library = llm_shared::prompts::PromptLibrary::load(&dir).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let models = ModelRegistry::from_toml(
        "test.toml",
        &with_alias(r#""dm" = "mock-large""#),
        &common_config(&[]),
    )
    .unwrap();
    let body: llm_shared::requests::GenerateBody =
        serde_json::from_value(json!({"template_id": "tavern"})).unwrap();
    let body = body.resolve_template(&library, &models).unwrap();
    let request = llm_shared::requests::NewRequest::validate(
        body,
        Uuid::now_v7(),
        None,
        &models,
        3,
        llm_shared::cache::CacheScope::User,
    )
    .unwrap();
    assert_eq!(
        request.model, "mock-large",
        "not the default model, and not the alias"
    );
    assert_ne!(models.default_model(), "mock-large");
}
