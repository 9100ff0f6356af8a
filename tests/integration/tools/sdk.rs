//! The official SDKs (pinned in `tests/python/requirements.txt`) against the real binaries, the
//! provider a fake upstream speaking its wire format: a tool call, its stream, the result sent
//! back.

use llm_tests::fake_upstream::{self, FakeUpstream, Received, Reply};
use llm_tests::{spawn_api_process_with, start_worker};
use serde_json::json;
use uuid::Uuid;

use super::{ANTHROPIC_KEY, OPENAI_KEY};

/// The fake OpenAI model: calls `get_weather` for Paris, streamed or not as asked, and answers
/// in text once the conversation ends with the tool's result.
fn weather_model(request: &Received, _: usize) -> Reply {
    let body = &request.body;
    let stream = body["stream"] == true;
    let answered = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .is_some_and(|m| m["role"] == "tool");
    match (answered, stream) {
        (true, false) => fake_upstream::openai::success("It is sunny in Paris.", 50, 6),
        (true, true) => fake_upstream::openai::stream(&["It is sunny", " in Paris."], 50, 6, true),
        (false, false) => {
            fake_upstream::openai::tool_calls(&[("call_w1", "get_weather", r#"{"city":"Paris"}"#)])
        }
        (false, true) => fake_upstream::openai::tool_call_stream(&[(
            "call_w1",
            "get_weather",
            &[r#"{"city""#, r#":"Par"#, r#"is"}"#],
        )]),
    }
}

/// The official `openai` SDK against the real binaries: a call with a tool answers its
/// `tool_calls`; the same call streamed (`stream=True`, and through the SDK's stream helper)
/// assembles the same calls; the assistant message and the tool's result sent back get the
/// model's text (tests/python/openai_sdk_tools.py).
#[tokio::test]
async fn the_openai_sdk_does_a_tool_round_trip() {
    let python = llm_tests::openai_sdk_python().await;
    let openai = FakeUpstream::start("/v1").await;
    openai.respond_with(weather_model);
    let db = llm_tests::TestDb::new().await;
    let (_api, base) = spawn_api_process_with(
        &db,
        &[
            ("OPENAI_API_KEY", OPENAI_KEY),
            ("OPENAI_BASE_URL", &openai.base_url),
        ],
    )
    .await;
    let _worker = start_worker(
        &db,
        &[
            "--openai-base-url",
            &openai.base_url,
            "--openai-api-key",
            OPENAI_KEY,
        ],
    );
    let jwt = llm_api::jwt::JwtKeys::new(&secrecy::SecretString::from(llm_tests::TEST_SECRET));
    let output = tokio::process::Command::new(&python)
        .arg(llm_tests::repo_root().join("tests/python/openai_sdk_tools.py"))
        .env("OPENAI_BASE_URL", format!("{base}/v1"))
        .env(
            "OPENAI_API_KEY",
            jwt.issue(Uuid::now_v7(), 600, None).unwrap(),
        )
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "SDK checks failed:\n{stdout}\n{stderr}"
    );
    for check in ["tool_calls", "stream", "stream_helper", "round_trip"] {
        assert!(
            stdout.lines().any(|l| l == format!("ok {check}")),
            "{check} missing:\n{stdout}"
        );
    }
    // The upstream was sent the tools, and in the last call the assistant's calls and the result.
    let received = openai.received();
    let last = &received.last().unwrap().body;
    assert_eq!(last["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(last["messages"][1]["tool_calls"][0]["id"], "call_w1");
    assert_eq!(
        last["messages"][2],
        json!({"role": "tool", "content": "sunny, 21 C", "tool_call_id": "call_w1"})
    );
    let stored = db
        .count("SELECT count(*) FROM generation_requests WHERE tool_calls @> '[{\"name\": \"get_weather\"}]'")
        .await;
    assert_eq!(
        stored, 3,
        "the call, its stream and the helper's stream store their calls"
    );
}

/// The fake Anthropic model: some text and a `get_weather` call for Paris, streamed or not as
/// asked, and text once the user's message holds the tool's result.
fn anthropic_weather_model(request: &Received, _: usize) -> Reply {
    let body = &request.body;
    let answered = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .is_some_and(|m| m["content"][0]["type"] == "tool_result");
    match (answered, body["stream"] == true) {
        (true, _) => fake_upstream::anthropic::success("It is sunny in Paris.", 50, 6),
        (false, false) => fake_upstream::anthropic::tool_use(
            "I will look it up.",
            "toolu_01",
            "get_weather",
            json!({"city": "Paris"}),
        ),
        (false, true) => fake_upstream::anthropic::tool_use_stream(
            "toolu_01",
            "get_weather",
            &[r#"{"city": "#, r#""Paris"}"#],
        ),
    }
}

/// The official `anthropic` SDK against the real binaries: a call with a tool answers its
/// `tool_use` block; the SDK's stream helper assembles the same block; the `tool_result` sent
/// back gets the model's text (tests/python/anthropic_sdk_tools.py).
#[tokio::test]
async fn the_anthropic_sdk_does_a_tool_round_trip() {
    let python = llm_tests::openai_sdk_python().await;
    let upstream = FakeUpstream::start("").await;
    upstream.respond_with(anthropic_weather_model);
    let db = llm_tests::TestDb::new().await;
    let (_api, base) = spawn_api_process_with(
        &db,
        &[
            ("ANTHROPIC_API_KEY", ANTHROPIC_KEY),
            ("ANTHROPIC_BASE_URL", &upstream.base_url),
        ],
    )
    .await;
    let _worker = start_worker(
        &db,
        &[
            "--anthropic-base-url",
            &upstream.base_url,
            "--anthropic-api-key",
            ANTHROPIC_KEY,
        ],
    );
    let jwt = llm_api::jwt::JwtKeys::new(&secrecy::SecretString::from(llm_tests::TEST_SECRET));
    let output = tokio::process::Command::new(&python)
        .arg(llm_tests::repo_root().join("tests/python/anthropic_sdk_tools.py"))
        .env("ANTHROPIC_BASE_URL", &base)
        .env(
            "ANTHROPIC_API_KEY",
            jwt.issue(Uuid::now_v7(), 600, None).unwrap(),
        )
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "SDK checks failed:\n{stdout}\n{stderr}"
    );
    for check in ["tool_use", "stream", "round_trip"] {
        assert!(
            stdout.lines().any(|l| l == format!("ok {check}")),
            "{check} missing:\n{stdout}"
        );
    }
    let received = upstream.received();
    let last = &received.last().unwrap().body;
    assert_eq!(
        last["tools"][0]["input_schema"]["required"],
        json!(["city"])
    );
    assert_eq!(
        last["messages"][1]["content"],
        json!([{"type": "text", "text": "I will look it up."},
               {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}])
    );
    assert_eq!(
        last["messages"][2]["content"],
        json!([{"type": "tool_result", "tool_use_id": "toolu_01", "content": "sunny, 21 C"}])
    );
}
