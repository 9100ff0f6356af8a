//! Structured output with full JSON Schema: what SDKs send (Pydantic's `$defs` / `$ref`,
//! `anyOf` for Optional, enums, patterns) is accepted at submit and enforced on the answer by
//! the worker, and what a hostile tenant sends (remote references, deep, huge, endless or
//! catastrophic schemas) is refused at submit or stays harmless.

use std::time::Duration;

use llm_tests::fake_upstream::{self, FakeUpstream, Received, Reply};
use llm_tests::{TestApp, app_with_worker, openai_flags, spawn_app};
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(60);

/// The schema the official `openai` SDK sends for `response_format=Character` (Pydantic
/// models nesting another, a list of models, an Optional and an Enum).
fn character_schema() -> Value {
    json!({
        "$defs": {
            "Class": {"enum": ["bard", "rogue", "wizard"], "title": "Class", "type": "string"},
            "Item": {
                "additionalProperties": false,
                "properties": {
                    "name": {"pattern": "^[A-Z][a-z]+$", "title": "Name", "type": "string"},
                    "weight": {"title": "Weight", "type": "number"}
                },
                "required": ["name", "weight"], "title": "Item", "type": "object"
            },
            "Stats": {
                "additionalProperties": false,
                "properties": {"strength": {"title": "Strength", "type": "integer"},
                               "class_": {"$ref": "#/$defs/Class"}},
                "required": ["strength", "class_"], "title": "Stats", "type": "object"
            }
        },
        "additionalProperties": false,
        "properties": {
            "name": {"title": "Name", "type": "string"},
            "stats": {"$ref": "#/$defs/Stats"},
            "inventory": {"items": {"$ref": "#/$defs/Item"}, "title": "Inventory", "type": "array"},
            "nickname": {"anyOf": [{"type": "string"}, {"type": "null"}], "title": "Nickname"}
        },
        "required": ["name", "stats", "inventory", "nickname"],
        "title": "Character",
        "type": "object"
    })
}

fn with_schema(prompt: &str, schema: Value) -> Value {
    json!({"prompt": prompt, "model": "gpt-4o",
           "parameters": {"response_format": {"type": "json_schema", "name": "Character",
                                              "strict": true, "schema": schema}}})
}

/// The last user message the fake was sent.
fn prompt_of(request: &Received) -> String {
    let messages = request.body["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    messages
        .last()
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned()
}

async fn run(app: &TestApp, body: Value) -> Value {
    let id = app.submit_ok(body).await;
    app.wait_final(id, WITHIN).await
}

#[tokio::test]
async fn a_pydantic_schema_with_references_is_enforced_down_to_its_nested_keywords() {
    let openai = FakeUpstream::start("/v1").await;
    openai.respond_with(|request, _| {
        let answer = match prompt_of(request).as_str() {
            "bad pattern" => json!({"name": "Vex", "stats": {"strength": 9, "class_": "rogue"},
                                    "inventory": [{"name": "Rope", "weight": 1},
                                                  {"name": "rope", "weight": 1}], "nickname": null}),
            "bad enum" => json!({"name": "Vex", "stats": {"strength": 9, "class_": "monk"},
                                 "inventory": [], "nickname": "Shade"}),
            _ => json!({"name": "Vex", "stats": {"strength": 9, "class_": "rogue"},
                        "inventory": [{"name": "Rope", "weight": 1.5}], "nickname": null}),
        };
        fake_upstream::openai::success(&answer.to_string(), 10, 20)
    });
    let (app, worker) = app_with_worker(&openai_flags(&openai)).await;

    let fine = run(&app, with_schema("good", character_schema())).await;
    assert_eq!(fine["status"], "completed", "{fine}");
    // The schema reached OpenAI whole, references and all.
    let sent = &openai.received()[0].body["response_format"]["json_schema"];
    assert_eq!(
        sent["schema"]["$defs"]["Item"]["properties"]["name"]["pattern"],
        "^[A-Z][a-z]+$"
    );
    assert_eq!(sent["strict"], true);

    for (prompt, path) in [
        ("bad pattern", "$.inventory[1].name"),
        ("bad enum", "$.stats.class_"),
    ] {
        let failed = run(&app, with_schema(prompt, character_schema())).await;
        assert_eq!(failed["status"], "failed", "{failed}");
        let attempts = failed["attempt_history"].as_array().unwrap();
        assert!(attempts.len() > 1, "an invalid answer is retried: {failed}");
        for attempt in attempts {
            assert_eq!(attempt["error_kind"], "invalid_output", "{failed}");
            let message = attempt["error_message"].as_str().unwrap();
            assert!(message.contains(&format!("{path}:")), "{prompt}: {message}");
        }
    }
    worker.stop().await;
}

async fn refused(app: &TestApp, schema: Value) -> String {
    let (status, body) = app
        .submit(json!({"prompt": "x", "model": "mock",
                       "parameters": {"response_format": {"type": "json_schema", "schema": schema}}}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body["error"]["field"], "parameters.response_format.schema",
        "{body}"
    );
    body["error"]["message"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn hostile_schemas_are_refused_at_submit_and_nothing_is_fetched() {
    let app = spawn_app().await;
    // A listener that would see any attempt to fetch a reference.
    let target = FakeUpstream::start("").await;
    target.always(Reply::Json {
        status: 200,
        body: json!({"type": "string"}),
        headers: vec![],
    });
    let remote = format!("{}/schema.json", target.base_url);
    for reference in [remote.as_str(), "file:///etc/passwd", "#/$defs/missing"] {
        let message = refused(
            &app,
            json!({"type": "object", "properties": {"a": {"$ref": reference}}}),
        )
        .await;
        assert!(message.contains("$ref"), "{reference}: {message}");
    }
    let message = refused(&app, json!({"$schema": remote, "type": "string"})).await;
    assert!(!message.is_empty());
    let message = refused(&app, json!({"$defs": {"a": {"$id": remote}}})).await;
    assert!(message.contains("$id"), "{message}");
    assert!(target.received().is_empty(), "a reference was fetched");

    let mut deep = json!({"type": "string"});
    for _ in 0..40 {
        deep = json!({"anyOf": [deep, {"type": "null"}]});
    }
    assert!(refused(&app, deep).await.contains("deeper"));
    let huge = json!({"type": "array", "minItems": 5000,
                      "items": {"$ref": "#/$defs/row"},
                      "$defs": {"row": {"type": "string", "minLength": 5000}}});
    assert!(refused(&app, huge).await.contains("smallest value"));
    let endless = json!({"type": "object", "required": ["next"],
                         "properties": {"next": {"$ref": "#"}}});
    assert!(refused(&app, endless).await.contains("no end"));
    let long_pattern = json!({"type": "string", "pattern": "a".repeat(5_000)});
    assert!(refused(&app, long_pattern).await.contains("pattern"));
    let backtracking = json!({"type": "string", "pattern": "^(?=a)(a+)+$"});
    refused(&app, backtracking).await;
    // A schema larger than a request body may be is refused before it is read.
    let wide: serde_json::Map<String, Value> = (0..20_000)
        .map(|i| (format!("p{i}"), json!({"type": "string"})))
        .collect();
    let (status, _) = app
        .submit(json!({"prompt": "x", "model": "mock",
                       "parameters": {"response_format": {"type": "json_schema",
                                                          "schema": {"properties": wide}}}}))
        .await;
    assert_eq!(status, 413);
}

#[tokio::test]
async fn a_catastrophic_pattern_is_checked_in_linear_time() {
    let openai = FakeUpstream::start("/v1").await;
    let hostile = json!({"code": format!("{}!", "a".repeat(50_000))}).to_string();
    openai.always(fake_upstream::openai::success(&hostile, 10, 20));
    let (app, worker) = app_with_worker(&openai_flags(&openai)).await;
    let schema = json!({"type": "object", "required": ["code"],
                        "properties": {"code": {"type": "string", "pattern": "^(a+)+$"}}});
    let failed = run(&app, with_schema("a code", schema)).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let first = &failed["attempt_history"][0];
    assert_eq!(first["error_kind"], "invalid_output", "{failed}");
    assert!(
        first["error_message"].as_str().unwrap().contains("$.code:"),
        "{failed}"
    );
    worker.stop().await;
}

/// The official `openai` Python SDK's `client.chat.completions.parse(response_format=Character)`
/// (tests/python/openai_sdk_parse_check.py): its Pydantic schema is accepted, OpenAI receives
/// it, the answer passes the worker's validation and the SDK parses it into a `Character`.
#[tokio::test]
async fn the_official_sdks_parse_gets_a_pydantic_instance() {
    let python = llm_tests::openai_sdk_python().await;
    let openai = FakeUpstream::start("/v1").await;
    let answer = json!({"name": "Vex", "character_class": "rogue",
                        "stats": {"strength": 9, "dexterity": 17},
                        "inventory": [{"name": "Rope", "weight": 1.5},
                                      {"name": "Lockpicks", "weight": 0.2}],
                        "nickname": null});
    openai.always(fake_upstream::openai::success(&answer.to_string(), 30, 40));
    let (app, worker) = app_with_worker(&openai_flags(&openai)).await;
    let output = tokio::process::Command::new(&python)
        .arg(llm_tests::repo_root().join("tests/python/openai_sdk_parse_check.py"))
        .env("OPENAI_BASE_URL", app.url("/v1"))
        .env("OPENAI_API_KEY", app.token())
        .env("MODEL", "gpt-4o")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.lines().any(|l| l == "ok parse"),
        "SDK check failed:\n{stdout}\n{stderr}"
    );
    let sent = &openai.received()[0].body["response_format"]["json_schema"];
    assert_eq!(sent["name"], "Character");
    assert_eq!(
        sent["schema"]["properties"]["stats"]["$ref"],
        "#/$defs/Stats"
    );
    assert_eq!(
        sent["schema"]["$defs"]["Class"]["enum"],
        json!(["bard", "rogue", "wizard"])
    );
    worker.stop().await;
}
