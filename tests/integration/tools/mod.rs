//! Tool calling: tools and tool choices reach each provider in its own wire format and the
//! model's calls come back, JSON and streamed (`providers`); the official SDKs do round trips
//! (`sdk`); the doors take and answer them in their shapes, a cache hit answers the same calls,
//! and a hostile tenant's tools are refused before anything is stored (here).

mod providers;
mod sdk;

use std::time::Duration;

use llm_tests::TestApp;
use llm_tests::sse::SseReader;
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(30);
const OPENAI_KEY: &str = "sk-test-openai-0123456789";
const ANTHROPIC_KEY: &str = "sk-ant-test-0123456789";

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

/// Ollama takes no `tool_choice`: when a request requires a call and the model answers text,
/// the answer is a failed attempt (`invalid_output`) and the request runs again, instead of
/// completing without the call it required.
#[tokio::test]
async fn an_ollama_answer_without_the_required_call_is_a_failed_attempt() {
    use llm_tests::fake_upstream::{FakeUpstream, ollama};
    let fake = FakeUpstream::start("").await;
    fake.then(ollama::success("It is sunny.", 5, 3));
    fake.then(ollama::tool_calls(&[(
        "get_weather",
        json!({"city": "Paris"}),
    )]));
    let flags = vec!["--ollama-url".to_owned(), fake.base_url.clone()];
    let (app, worker) = llm_tests::app_with_worker(&flags).await;
    let tools = json!({"tools": [{"name": "get_weather", "parameters": {"type": "object"}}],
                       "tool_choice": {"type": "required"}});
    let id = app
        .submit_ok(json!({"model": "llama3.1", "prompt": "Weather in Paris?", "parameters": tools}))
        .await;
    let done = app.wait_final(id, LONG).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["tool_calls"][0]["name"], "get_weather", "{done}");
    assert_eq!(fake.received().len(), 2);
    assert_eq!(
        app.db
            .count(&format!(
                "SELECT COUNT(*) FROM generation_attempts
                 WHERE request_id = '{id}' AND error_kind = 'invalid_output'"
            ))
            .await,
        1
    );
    worker.stop().await;
}
