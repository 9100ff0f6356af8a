//! Each provider behind a fake upstream speaking its real wire format: the request body carries
//! the tools, the tool choice and the tool turns in the provider's shape, and the calls come
//! back from JSON answers and from streams.

use llm_shared::generation::{
    ChatTurn, GenerationParams, ToolCall, ToolChoice, ToolDefinition, TurnRole,
};
use llm_shared::models::ProviderKind;
use llm_tests::fake_upstream::{self, FakeUpstream};
use llm_tests::registry;
use llm_worker::providers::{
    GenerationInput, MockProvider, Provider, ProviderClient, collect_stream,
};
use serde_json::json;

use super::{ANTHROPIC_KEY, LONG, OPENAI_KEY};

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
