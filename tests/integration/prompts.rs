//! Prompt templates: every shipped template renders its example (snapshots), parameters are
//! checked, prompts are validated against context windows, generations can name a template,
//! and a broken template stops the api from starting.

use std::path::PathBuf;
use std::time::Duration;

use llm_shared::prompts::PromptLibrary;
use llm_tests::{TEST_SECRET, TestApp, binary, prompts_dir, spawn_app, start_worker};
use serde_json::{Map, Value, json};

fn snapshot_path(id: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots/prompts"))
        .join(format!("{id}.txt"))
}

#[test]
fn every_shipped_template_renders_its_example_as_snapshotted() {
    let library = PromptLibrary::load(&prompts_dir()).unwrap();
    let ids: Vec<String> = library.list().map(|t| t.id.clone()).collect();
    for family in ["character.", "campaign."] {
        assert!(
            ids.iter().filter(|id| id.starts_with(family)).count() >= 4,
            "{ids:?}"
        );
    }
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    for template in library.list() {
        let example = template
            .example
            .clone()
            .unwrap_or_else(|| panic!("{} has no example", template.id));
        let rendered = library.render(&template.id, &example, &json!({})).unwrap();
        assert!(
            rendered.prompt.contains("Dungeons & Dragons"),
            "{}: the common preamble is included",
            template.id
        );
        let path = snapshot_path(&template.id);
        if update {
            std::fs::write(&path, &rendered.prompt).unwrap();
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
            panic!(
                "missing snapshot {} (run with UPDATE_SNAPSHOTS=1)",
                path.display()
            )
        });
        assert_eq!(
            rendered.prompt, expected,
            "{} changed; review and run with UPDATE_SNAPSHOTS=1",
            template.id
        );
    }
}

async fn post(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    let r = app
        .http
        .post(app.url(path))
        .bearer_auth(app.token())
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn templates_are_listed_rendered_and_their_parameters_checked() {
    let app = spawn_app().await;
    let list: Value = app
        .http
        .get(app.url("/api/v1/prompts"))
        .bearer_auth(app.token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let templates = list["templates"].as_array().unwrap();
    assert_eq!(templates.len(), 8);
    let backstory = templates
        .iter()
        .find(|t| t["id"] == "character.backstory")
        .unwrap();
    assert_eq!(backstory["params"]["name"]["required"], true);
    assert_eq!(backstory["params"]["level"]["default"], 1);
    assert_eq!(backstory["output"], "text");

    let (status, ok) = post(
        &app,
        "/api/v1/prompts/character.backstory/render",
        json!({"params": {"name": "Ilsa", "race": "human", "class_name": "wizard"}}),
    )
    .await;
    assert_eq!(status, 200, "{ok}");
    let prompt = ok["rendered"]["prompt"].as_str().unwrap();
    assert!(prompt.contains("Ilsa, a level 1 human wizard"), "{prompt}");
    assert!(ok["token_estimate"].as_u64().unwrap() > 10);

    let (status, err) = post(
        &app,
        "/api/v1/prompts/character.backstory/render",
        json!({"params": {"name": 7, "colour": "red"}}),
    )
    .await;
    assert_eq!(status, 422);
    let message = err["error"]["message"].as_str().unwrap();
    for part in [
        "missing required parameter `race`",
        "`name` must be of type string",
        "unknown parameter `colour`",
    ] {
        assert!(message.contains(part), "{message}");
    }
    let (status, _) = post(
        &app,
        "/api/v1/prompts/character.nope/render",
        json!({"params": {}}),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn prompts_are_validated_against_the_models_context_window() {
    let app = spawn_app().await;
    let (status, ok) = post(&app, "/api/v1/prompts/validate",
        json!({"template_id": "campaign.encounter", "params": {"party_level": 3, "environment": "a bog"}})).await;
    assert_eq!(status, 200);
    assert_eq!(ok["valid"], true, "{ok}");
    assert_eq!(ok["fits"], true);

    let (_, missing) = post(
        &app,
        "/api/v1/prompts/validate",
        json!({"template_id": "campaign.encounter", "params": {}}),
    )
    .await;
    assert_eq!(missing["valid"], false);
    assert!(
        missing["errors"][0]
            .as_str()
            .unwrap()
            .contains("party_level"),
        "{missing}"
    );

    // A prompt plus the output asked for, over the mock model's 32k window; not over 200k.
    let prompt = "word ".repeat(2_000);
    let (_, too_big) = post(
        &app,
        "/api/v1/prompts/validate",
        json!({"prompt": prompt, "model": "mock", "max_tokens": 32_000}),
    )
    .await;
    assert_eq!(too_big["valid"], false, "{too_big}");
    assert_eq!(too_big["fits"], false);
    assert_eq!(too_big["context_window"], 32768);
    let (_, larger) = post(
        &app,
        "/api/v1/prompts/validate",
        json!({"prompt": prompt, "model": "mock-large", "max_tokens": 32_000}),
    )
    .await;
    assert_eq!(larger["fits"], true);
}

#[tokio::test]
async fn a_generation_can_name_a_template_and_its_json_output_is_validated() {
    let app = spawn_app().await;
    let worker = start_worker(&app.db, &[]);
    let id = app
        .submit_ok(json!({
            "template_id": "character.personality",
            "params": {"name": "Vex", "race": "tiefling", "class_name": "rogue"},
        }))
        .await;
    let done = app.wait_final(id, Duration::from_secs(20)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(
        done["prompt"]
            .as_str()
            .unwrap()
            .contains("Describe the personality of Vex")
    );
    assert_eq!(done["metadata"]["template_id"], "character.personality");
    assert_eq!(done["metadata"]["template_version"], 1);
    assert_eq!(done["parameters"]["response_format"]["type"], "json_schema");
    let parsed: Map<String, Value> =
        serde_json::from_str(done["result"].as_str().unwrap()).unwrap();
    assert_eq!(parsed["traits"].as_array().unwrap().len(), 2);
    assert!(parsed.contains_key("flaw"));

    // The mock answering prose where JSON was asked for fails validation, never succeeds.
    let bad = app.submit_ok(json!({
        "template_id": "character.name_ideas", "params": {"race": "gnome"}, "mock": {"fail": "invalid_json"},
    })).await;
    let failed = app.wait_final(bad, Duration::from_secs(20)).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["attempt_history"][0]["error_kind"], "invalid_output");

    let (status, body) = app
        .submit(json!({"template_id": "character.backstory", "params": {"name": "X"}}))
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["field"], "params");
    let (status, _) = app
        .submit(json!({"prompt": "both", "template_id": "character.backstory"}))
        .await;
    assert_eq!(status, 422);
    worker.stop().await;
}

#[tokio::test]
async fn a_broken_template_stops_the_api_with_its_file_and_line() {
    let dir = std::env::temp_dir().join(format!("broken-prompts-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(dir.join("character")).unwrap();
    std::fs::write(
        dir.join("character/oops.j2"),
        "{#-\n[template]\ndescription = \"x\"\noutput = \"text\"\nversion = 1\n-#}\nHello\n{% for x in %}\n",
    )
    .unwrap();
    let app = spawn_app().await;
    let out = tokio::process::Command::new(binary("llm-api"))
        .arg("serve")
        .env_clear()
        .env("DATABASE_URL", &app.db.url)
        .env("SECRET_KEY", TEST_SECRET)
        .env("API_LISTEN", "127.0.0.1:0")
        .env("PROMPTS_DIR", &dir)
        .env("LOG_LEVEL", "error")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("character/oops.j2") && stderr.contains("line"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
