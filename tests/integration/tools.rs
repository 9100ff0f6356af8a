//! Tool calling: tools and tool choices reach each provider in its own wire format and the
//! model's calls come back (JSON and streamed); the doors take and answer them in OpenAI's and
//! Anthropic's shapes; a cache hit answers the same calls; and a hostile tenant's tools are
//! refused before anything is stored.

use std::time::Duration;

use llm_shared::generation::{
    ChatTurn, GenerationParams, ToolCall, ToolChoice, ToolDefinition, TurnRole,
};
use llm_shared::models::ProviderKind;
use llm_tests::fake_upstream::{self, FakeUpstream, Received, Reply};
use llm_tests::sse::SseReader;
use llm_tests::{TestApp, registry, spawn_api_process_with, start_worker};
use llm_worker::providers::{
    GenerationInput, MockProvider, Provider, ProviderClient, collect_stream,
};
use serde_json::{Value, json};
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(30);
const OPENAI_KEY: &str = "sk-test-openai-0123456789";
const ANTHROPIC_KEY: &str = "sk-ant-test-0123456789";

fn weather_tool() -> ToolDefinition {
    ToolDefinition {
        name: "get_weather".into(),
        description: Some("The weather in a city".into()),
        parameters: Some(json!({
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        })),
        strict: Some(true),
    }
}

/// A conversation after one round trip: the user asked, the assistant called `get_weather`,
/// the tool answered; the model answers the result (no prompt).
fn after_a_tool_result(upstream: &str) -> GenerationInput {
    GenerationInput {
        prompt: String::new(),
        params: GenerationParams {
            max_tokens: Some(64),
            tools: Some(vec![weather_tool()]),
            tool_choice: Some(ToolChoice::Tool {
                name: "get_weather".into(),
            }),
            history: Some(vec![
                ChatTurn::text(TurnRole::User, "Weather in Paris?".into()),
                ChatTurn {
                    tool_calls: Some(vec![ToolCall {
                        id: "call_1".into(),
                        name: "get_weather".into(),
                        arguments: r#"{"city":"Paris"}"#.into(),
                    }]),
                    ..ChatTurn::text(TurnRole::Assistant, String::new())
                },
                ChatTurn {
                    tool_call_id: Some("call_1".into()),
                    ..ChatTurn::text(TurnRole::Tool, "sunny, 21 C".into())
                },
            ]),
            ..Default::default()
        },
        upstream_model: upstream.into(),
        attempt: 1,
        mock: None,
    }
}

fn client(kind: ProviderKind, fake: &FakeUpstream) -> ProviderClient {
    let flags: Vec<&str> = match kind {
        ProviderKind::OpenAi => vec![
            "--openai-base-url",
            &fake.base_url,
            "--openai-api-key",
            OPENAI_KEY,
        ],
        ProviderKind::Anthropic => vec![
            "--anthropic-base-url",
            &fake.base_url,
            "--anthropic-api-key",
            ANTHROPIC_KEY,
        ],
        _ => vec!["--ollama-url", &fake.base_url],
    };
    ProviderClient::new(kind, &registry(&flags), &MockProvider::default()).unwrap()
}

fn paris() -> Vec<ToolCall> {
    vec![ToolCall {
        id: "call_2".into(),
        name: "get_weather".into(),
        arguments: r#"{"city":"Paris"}"#.into(),
    }]
}

async fn streamed(client: &ProviderClient, input: &GenerationInput) -> (Vec<ToolCall>, String) {
    let stream = client.stream(input).await.unwrap();
    let out = collect_stream(stream, &input.upstream_model, "", LONG, LONG)
        .await
        .unwrap();
    (out.tool_calls, out.finish_reason)
}

#[tokio::test]
async fn openai_receives_tools_and_tool_turns_and_its_calls_come_back() {
    let fake = FakeUpstream::start("/v1").await;
    fake.then(fake_upstream::openai::tool_calls(&[(
        "call_2",
        "get_weather",
        r#"{"city":"Paris"}"#,
    )]));
    fake.then(fake_upstream::openai::tool_call_stream(&[(
        "call_2",
        "get_weather",
        &[r#"{"ci"#, r#"ty":"Par"#, r#"is"}"#],
    )]));
    let client = client(ProviderKind::OpenAi, &fake);
    let input = after_a_tool_result("gpt-4o");
    let out = client.generate(&input).await.unwrap();
    assert_eq!(
        (
            out.tool_calls,
            out.finish_reason.as_str(),
            out.text.as_str()
        ),
        (paris(), "tool_calls", "")
    );
    assert_eq!(
        streamed(&client, &input).await,
        (paris(), "tool_calls".into())
    );

    let sent = &fake.received()[0].body;
    assert_eq!(
        sent["tools"],
        json!([{"type": "function", "function": {
            "name": "get_weather", "description": "The weather in a city",
            "parameters": weather_tool().parameters.unwrap(), "strict": true}}])
    );
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "function", "function": {"name": "get_weather"}})
    );
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "content": "sunny, 21 C", "tool_call_id": "call_1"}
        ]),
        "no empty user message after the tool's result"
    );
}

#[tokio::test]
async fn anthropic_receives_tool_use_and_tool_result_blocks_and_its_calls_come_back() {
    let fake = FakeUpstream::start("").await;
    fake.then(fake_upstream::anthropic::tool_use(
        "Let me look.",
        "call_2",
        "get_weather",
        json!({"city": "Paris"}),
    ));
    fake.then(fake_upstream::anthropic::tool_use_stream(
        "call_2",
        "get_weather",
        &[r#"{"city":"#, r#""Paris"}"#],
    ));
    let client = client(ProviderKind::Anthropic, &fake);
    let mut input = after_a_tool_result("claude-sonnet-4-5");
    input.prompt = "And tomorrow?".into();
    let out = client.generate(&input).await.unwrap();
    assert_eq!(
        (
            out.tool_calls,
            out.finish_reason.as_str(),
            out.text.as_str()
        ),
        (paris(), "tool_calls", "Let me look.")
    );
    assert_eq!(
        streamed(&client, &input).await,
        (paris(), "tool_calls".into())
    );

    let sent = &fake.received()[0].body;
    assert_eq!(
        sent["tools"],
        json!([{"name": "get_weather", "description": "The weather in a city",
                "input_schema": weather_tool().parameters.unwrap()}])
    );
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "tool", "name": "get_weather"})
    );
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1",
                "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny, 21 C"},
                {"type": "text", "text": "And tomorrow?"}
            ]}
        ])
    );
}

#[tokio::test]
async fn ollama_receives_tools_and_its_calls_come_back_with_arguments_as_text() {
    let fake = FakeUpstream::start("").await;
    fake.then(fake_upstream::ollama::tool_calls(&[(
        "get_weather",
        json!({"city": "Paris"}),
    )]));
    fake.then(fake_upstream::ollama::tool_call_stream(&[(
        "get_weather",
        json!({"city": "Paris"}),
    )]));
    let client = client(ProviderKind::Ollama, &fake);
    let mut input = after_a_tool_result("llama3.1:8b");
    input.params.tool_choice = None;
    let expected = vec![ToolCall {
        id: "call_0".into(),
        ..paris()[0].clone()
    }];
    let out = client.generate(&input).await.unwrap();
    assert_eq!(
        (out.tool_calls, out.finish_reason.as_str()),
        (expected.clone(), "tool_calls"),
        "Ollama says `stop`; calls make it `tool_calls`"
    );
    assert_eq!(
        streamed(&client, &input).await,
        (expected, "tool_calls".into())
    );

    let sent = &fake.received()[0].body;
    assert_eq!(
        sent["tools"],
        json!([{"type": "function", "function": {"name": "get_weather",
            "description": "The weather in a city", "parameters": weather_tool().parameters.unwrap()}}])
    );
    assert_eq!(
        sent["messages"][1]["tool_calls"],
        json!([{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]),
        "Ollama takes arguments as an object"
    );
    assert_eq!(sent["messages"][2]["role"], "tool");
    assert_eq!(sent["messages"].as_array().unwrap().len(), 3);
}

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

/// `POST path` as the test user, bearer token and Anthropic's version header (ignored
/// elsewhere).
async fn post(app: &TestApp, path: &str, body: &Value) -> (u16, Value) {
    let response = app
        .http
        .post(app.url(path))
        .bearer_auth(app.token())
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// One hostile set of tools, as each door spells it.
struct Hostile {
    what: &'static str,
    /// `(name, parameters)` of each tool.
    tools: Vec<(String, Value)>,
    /// The tool `tool_choice` names, if any.
    choice: Option<&'static str>,
    model: &'static str,
    /// What the refusal says.
    says: &'static str,
}

fn deep_schema(depth: usize) -> Value {
    (0..depth).fold(
        json!({"type": "string"}),
        |inner, _| json!({"type": "object", "properties": {"a": inner}}),
    )
}

fn hostile_cases() -> Vec<Hostile> {
    let tool = |name: &str| (name.to_owned(), json!({"type": "object"}));
    vec![
        Hostile {
            what: "10,000 tools",
            tools: (0..10_000).map(|i| tool(&format!("t{i}"))).collect(),
            choice: None,
            model: "mock",
            says: "tools",
        },
        Hostile {
            what: "a name with spaces",
            tools: vec![tool("get the weather")],
            choice: None,
            model: "mock",
            says: "name",
        },
        Hostile {
            what: "a name too long",
            tools: vec![tool(&"w".repeat(65))],
            choice: None,
            model: "mock",
            says: "name",
        },
        Hostile {
            what: "a schema too deep",
            tools: vec![("deep".into(), deep_schema(40))],
            choice: None,
            model: "mock",
            says: "JSON Schema",
        },
        Hostile {
            what: "a tool choice naming an absent tool",
            tools: vec![tool("get_weather")],
            choice: Some("launch_missiles"),
            model: "mock",
            says: "launch_missiles",
        },
        Hostile {
            what: "tools for a model that cannot call them",
            tools: vec![tool("get_weather")],
            choice: None,
            model: "mock-large",
            says: "mock-large",
        },
    ]
}

/// Every hostile set of tools is refused by every door, in its own error shape, and nothing is
/// stored: native 422, OpenAI's and Anthropic's 400 (or 413 for a body over the size limit).
#[tokio::test]
async fn hostile_tools_are_refused_by_every_door_and_nothing_is_stored() {
    let app = llm_tests::spawn_app().await;
    for case in hostile_cases() {
        let native_tools: Vec<Value> = case
            .tools
            .iter()
            .map(|(name, schema)| json!({"name": name, "parameters": schema}))
            .collect();
        let mut parameters = json!({"tools": native_tools});
        if let Some(name) = case.choice {
            parameters["tool_choice"] = json!({"type": "tool", "name": name});
        }
        let (status, body) = post(
            &app,
            "/api/v1/generate",
            &json!({"model": case.model, "prompt": "Hi", "parameters": parameters}),
        )
        .await;
        assert!(
            status == 422 || status == 413,
            "native, {}: {status} {body}",
            case.what
        );
        if status == 422 {
            assert!(
                body.to_string().contains(case.says),
                "native, {}: {body}",
                case.what
            );
        }

        let openai_tools: Vec<Value> = case
            .tools
            .iter()
            .map(|(name, schema)| {
                json!({"type": "function", "function": {"name": name, "parameters": schema}})
            })
            .collect();
        let mut call = json!({"model": case.model, "tools": openai_tools,
                              "messages": [{"role": "user", "content": "Hi"}]});
        if let Some(name) = case.choice {
            call["tool_choice"] = json!({"type": "function", "function": {"name": name}});
        }
        let (status, body) = post(&app, "/v1/chat/completions", &call).await;
        assert!(
            status == 400 || status == 413,
            "openai, {}: {status} {body}",
            case.what
        );
        assert!(
            body["error"]["message"].is_string(),
            "openai shape, {}: {body}",
            case.what
        );
        if status == 400 {
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains(case.says),
                "openai, {}: {body}",
                case.what
            );
        }

        let anthropic_tools: Vec<Value> = case
            .tools
            .iter()
            .map(|(name, schema)| json!({"name": name, "input_schema": schema}))
            .collect();
        let mut call = json!({"model": case.model, "max_tokens": 32, "tools": anthropic_tools,
                              "messages": [{"role": "user", "content": "Hi"}]});
        if let Some(name) = case.choice {
            call["tool_choice"] = json!({"type": "tool", "name": name});
        }
        let (status, body) = post(&app, "/v1/messages", &call).await;
        assert!(
            status == 400 || status == 413,
            "anthropic, {}: {status} {body}",
            case.what
        );
        assert_eq!(
            body["type"], "error",
            "anthropic shape, {}: {body}",
            case.what
        );
        if status == 400 {
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains(case.says),
                "anthropic, {}: {body}",
                case.what
            );
        }
    }
    assert_eq!(
        app.db
            .count("SELECT count(*) FROM generation_requests")
            .await,
        0
    );
}

/// The mock answers a required tool with one call of it; a second identical request is a cache
/// hit with the same calls; a request that differs only in its tools has another cache key.
#[tokio::test]
async fn a_cache_hit_answers_the_same_tool_calls_and_tools_are_in_the_key() {
    let (app, worker) = llm_tests::app_with_worker(&[]).await;
    let body = |description: &str| {
        json!({"model": "mock", "prompt": "Weather in Paris?", "parameters": {
            "tools": [{"name": "get_weather", "description": description,
                       "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "required"}}})
    };
    let first = app.submit_ok(body("The weather")).await;
    let first = app.wait_final(first, LONG).await;
    let expected = json!([{"id": "call_mock_0", "name": "get_weather", "arguments": "{}"}]);
    assert_eq!(first["status"], "completed", "{first}");
    assert_eq!(first["tool_calls"], expected);
    assert_eq!(first["finish_reason"], "tool_calls");
    assert_eq!(first["cached"], false);

    let (status, hit) = app.submit(body("The weather")).await;
    assert!(status == 200 || status == 202, "{status} {hit}");
    let hit = app
        .wait_final(hit["request_id"].as_str().unwrap().parse().unwrap(), LONG)
        .await;
    assert_eq!(
        (&hit["cached"], &hit["tool_calls"]),
        (&json!(true), &expected)
    );

    // The durable copy answers the same calls once the fast copy is gone.
    let mut redis = redis::Client::open(llm_tests::redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}cache:*", app.db.redis_prefix()))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut redis)
        .await
        .unwrap();
    let (_, from_table) = app.submit(body("The weather")).await;
    let from_table = app
        .wait_final(
            from_table["request_id"].as_str().unwrap().parse().unwrap(),
            LONG,
        )
        .await;
    assert_eq!(
        (&from_table["cached"], &from_table["tool_calls"]),
        (&json!(true), &expected)
    );

    let (_, other) = app.submit(body("Today's weather")).await;
    let other = app
        .wait_final(other["request_id"].as_str().unwrap().parse().unwrap(), LONG)
        .await;
    assert_eq!(other["cached"], false, "other tools, another key: {other}");
    assert_eq!(
        app.db
            .count("SELECT count(DISTINCT cache_key) FROM generation_requests")
            .await,
        2
    );
    worker.stop().await;
}

/// The Anthropic door: a required tool answers a `tool_use` block (`stop_reason: tool_use`),
/// streamed as a `tool_use` block with its `input_json_delta`; the assistant's `tool_use` and
/// the user's `tool_result` sent back get text.
#[tokio::test]
async fn the_anthropic_door_answers_tool_use_and_takes_tool_results() {
    let (app, worker) = llm_tests::app_with_worker(&[]).await;
    let tools = json!([{"name": "get_weather", "description": "The weather in a city",
                        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]);
    let question = json!({"role": "user", "content": "Weather in Paris?"});
    let call = json!({"model": "mock", "max_tokens": 32, "tools": tools,
                      "tool_choice": {"type": "any"}, "messages": [question]});
    let (status, message) = post(&app, "/v1/messages", &call).await;
    assert_eq!(status, 200, "{message}");
    assert_eq!(message["stop_reason"], "tool_use");
    assert_eq!(
        message["content"],
        json!([{"type": "tool_use", "id": "call_mock_0", "name": "get_weather", "input": {}}])
    );

    let mut streamed = call.clone();
    streamed["stream"] = json!(true);
    streamed["cache"] = json!({"no_cache": true});
    let request = app
        .http
        .post(app.url("/v1/messages"))
        .bearer_auth(app.token())
        .header("anthropic-version", "2023-06-01")
        .json(&streamed);
    let mut reader = SseReader::open(request).await;
    let mut events = Vec::new();
    while let Some(event) = reader.next(LONG).await {
        let end = event.event == "message_stop" || event.event == "error";
        events.push(event);
        if end {
            break;
        }
    }
    let of = |name: &str| -> Vec<&Value> {
        events
            .iter()
            .filter(|e| e.event == name)
            .map(|e| &e.data)
            .collect()
    };
    let started = of("content_block_start");
    assert_eq!(
        started.last().unwrap()["content_block"],
        json!({"type": "tool_use", "id": "call_mock_0", "name": "get_weather", "input": {}}),
        "{events:?}"
    );
    let index = started.last().unwrap()["index"].clone();
    let input: String = of("content_block_delta")
        .iter()
        .filter(|d| d["index"] == index)
        .map(|d| d["delta"]["partial_json"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(input, "{}");
    assert_eq!(of("message_delta")[0]["delta"]["stop_reason"], "tool_use");

    let answer = json!({"model": "mock", "max_tokens": 8, "tools": tools, "messages": [
        question,
        {"role": "assistant", "content": message["content"]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_mock_0",
                                       "content": [{"type": "text", "text": "sunny"}]}]}
    ]});
    let (status, text) = post(&app, "/v1/messages", &answer).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(text["stop_reason"], "end_turn");
    assert_eq!(text["content"][0]["type"], "text");
    let stored = app
        .db
        .count("SELECT count(*) FROM generation_requests WHERE prompt = '' AND parameters->'history'->2->>'role' = 'tool'")
        .await;
    assert_eq!(
        stored, 1,
        "the result is the history's last turn, no prompt"
    );
    worker.stop().await;
}

/// The native stream relays a tool call as `tool_call` pieces (id and name first, then the
/// arguments) and ends with `done` carrying the stored calls.
#[tokio::test]
async fn the_native_stream_relays_tool_call_pieces_and_done_carries_the_calls() {
    let (app, worker) = llm_tests::app_with_worker(&[]).await;
    let request = app
        .http
        .post(app.url("/api/v1/generate/stream"))
        .bearer_auth(app.token())
        .json(&json!({"model": "mock", "prompt": "Weather?", "parameters": {
            "tools": [{"name": "get_weather"}], "tool_choice": {"type": "tool", "name": "get_weather"}}}));
    let mut reader = SseReader::open(request).await;
    let events = reader.until_terminal(LONG).await;
    let pieces: Vec<&Value> = events
        .iter()
        .filter(|e| e.event == "tool_call")
        .map(|e| &e.data)
        .collect();
    assert_eq!(
        pieces,
        [
            &json!({"index": 0, "id": "call_mock_0", "name": "get_weather", "arguments": ""}),
            &json!({"index": 0, "arguments": "{}"})
        ],
        "{events:?}"
    );
    let done = events.last().unwrap();
    assert_eq!(done.event, "done");
    assert_eq!(done.data["finish_reason"], "tool_calls");
    assert_eq!(
        done.data["tool_calls"],
        json!([{"id": "call_mock_0", "name": "get_weather", "arguments": "{}"}])
    );
    worker.stop().await;
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
