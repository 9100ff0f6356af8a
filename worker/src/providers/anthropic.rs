//! Anthropic Messages (`POST {base}/v1/messages`), JSON and SSE streaming (`message_start`,
//! `content_block_start`, `content_block_delta`, `content_block_stop`, `message_delta`,
//! `message_stop`, `ping`, `error`). Headers `x-api-key` and `anthropic-version`.
//!
//! The Messages API has no JSON mode: when JSON output is asked for, the system prompt says so
//! and the response validation enforces it.

use futures::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::wire;
use super::{
    ChunkStream, GenerationInput, GenerationOutput, Provider, ProviderError, StreamEvent, ToolCall,
    ToolCallDelta, ToolChoice, normalise_finish_reason,
};
use llm_shared::models::UpstreamSettings;

const DEFAULT_VERSION: &str = "2023-06-01";
/// `max_tokens` is required by the Messages API; used when the request sets none.
const DEFAULT_MAX_TOKENS: u32 = 4096;
const JSON_INSTRUCTION: &str = "Answer with a single JSON value only: no prose, no code fences.";

#[derive(Debug, Clone)]
pub struct AnthropicProvider {
    http: reqwest::Client,
    base_url: String,
    api_key: Option<SecretString>,
    version: String,
}

impl AnthropicProvider {
    pub fn new(settings: &UpstreamSettings) -> Self {
        Self {
            http: wire::client(settings),
            base_url: settings.base_url.trim_end_matches('/').to_owned(),
            api_key: settings.api_key.clone(),
            version: settings
                .version
                .clone()
                .unwrap_or_else(|| DEFAULT_VERSION.into()),
        }
    }

    fn request(
        &self,
        input: &GenerationInput,
        stream: bool,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        let key = self
            .api_key
            .as_ref()
            .ok_or_else(|| ProviderError::Unavailable {
                message: "ANTHROPIC_API_KEY is not set".into(),
                http_status: None,
            })?;
        Ok(self
            .http
            .post(format!("{}/v1/messages", self.base_url))
            .header("x-api-key", key.expose_secret())
            .header("anthropic-version", &self.version)
            .json(&MessagesRequest::new(input, stream)))
    }
}

#[derive(Debug, Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    messages: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    stream: bool,
}

/// The conversation as Anthropic's messages: an assistant's tool calls are `tool_use` blocks
/// (their arguments parsed into `input`); tools' results are `tool_result` blocks of the user's
/// next message, with the prompt, if any, as its text block (roles alternate).
fn messages(input: &GenerationInput) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    // The `tool_result` blocks waiting for the user's message they belong to.
    let mut results: Vec<Value> = Vec::new();
    for m in wire::conversation(input) {
        match m.role {
            "tool" => results.push(json!({
                "type": "tool_result",
                "tool_use_id": m.tool_call_id.unwrap_or_default(),
                "content": m.content,
            })),
            "user" if !results.is_empty() => {
                results.push(json!({"type": "text", "text": m.content}));
                out.push(json!({"role": "user", "content": std::mem::take(&mut results)}));
            }
            role => {
                if !results.is_empty() {
                    out.push(json!({"role": "user", "content": std::mem::take(&mut results)}));
                }
                if m.calls.is_empty() {
                    out.push(json!({"role": role, "content": m.content}));
                    continue;
                }
                let mut blocks = Vec::with_capacity(1 + m.calls.len());
                if !m.content.is_empty() {
                    blocks.push(json!({"type": "text", "text": m.content}));
                }
                for call in m.calls {
                    let input = serde_json::from_str::<Value>(&call.arguments)
                        .ok()
                        .filter(Value::is_object)
                        .unwrap_or_else(|| json!({}));
                    blocks.push(json!({
                        "type": "tool_use", "id": call.id, "name": call.name, "input": input,
                    }));
                }
                out.push(json!({"role": role, "content": blocks}));
            }
        }
    }
    if !results.is_empty() {
        out.push(json!({"role": "user", "content": results}));
    }
    out
}

fn wire_tools(input: &GenerationInput) -> Option<Vec<Value>> {
    let tools = input.params.tools();
    (!tools.is_empty()).then(|| {
        tools
            .iter()
            .map(|t| {
                let mut tool = json!({
                    "name": t.name,
                    "input_schema": t.parameters.clone().unwrap_or_else(|| json!({"type": "object"})),
                });
                if let Some(description) = &t.description {
                    tool["description"] = json!(description);
                }
                tool
            })
            .collect()
    })
}

fn wire_tool_choice(choice: Option<&ToolChoice>) -> Option<Value> {
    Some(match choice? {
        ToolChoice::Auto => json!({"type": "auto"}),
        ToolChoice::None => json!({"type": "none"}),
        ToolChoice::Required => json!({"type": "any"}),
        ToolChoice::Tool { name } => json!({"type": "tool", "name": name}),
    })
}

impl<'a> MessagesRequest<'a> {
    fn new(input: &'a GenerationInput, stream: bool) -> Self {
        let p = &input.params;
        let system = match (p.system.as_deref(), p.json_output().is_some()) {
            (Some(system), true) => Some(format!("{system}\n\n{JSON_INSTRUCTION}")),
            (Some(system), false) => Some(system.to_owned()),
            (None, true) => Some(JSON_INSTRUCTION.to_owned()),
            (None, false) => None,
        };
        Self {
            model: &input.upstream_model,
            max_tokens: p.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
            messages: messages(input),
            system,
            temperature: p.temperature.map(|t| t.min(1.0)),
            top_p: p.top_p,
            stop_sequences: p.stop.as_deref(),
            tools: wire_tools(input),
            tool_choice: wire_tool_choice(p.tool_choice.as_ref()),
            stream,
        }
    }
}

#[derive(Debug, Deserialize)]
struct MessagesResponse {
    #[serde(default)]
    model: Option<String>,
    content: Vec<ContentBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    usage: Usage,
}

#[derive(Debug, Deserialize)]
struct ContentBlock {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    input: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct Usage {
    #[serde(default)]
    input_tokens: Option<u32>,
    #[serde(default)]
    output_tokens: Option<u32>,
}

/// The streaming events we act on; others (`ping`, `content_block_stop`) are skipped.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        #[serde(default)]
        index: u32,
        content_block: ContentBlock,
    },
    ContentBlockDelta {
        #[serde(default)]
        index: u32,
        delta: BlockDelta,
    },
    MessageDelta {
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: Usage,
    },
    MessageStop,
    Error {
        error: ErrorBody,
    },
    #[serde(other)]
    Other,
}

#[derive(Debug, Deserialize)]
struct StartMessage {
    #[serde(default)]
    usage: Usage,
}

#[derive(Debug, Deserialize)]
struct BlockDelta {
    #[serde(default)]
    text: Option<String>,
    /// A piece of a `tool_use` block's input (`input_json_delta`).
    #[serde(default)]
    partial_json: Option<String>,
}

#[derive(Debug, Deserialize)]
struct MessageDeltaBody {
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(rename = "type")]
    kind: String,
    message: String,
}

/// An `error` event inside a stream: overloaded and API errors are worth a retry.
fn stream_error(error: ErrorBody) -> ProviderError {
    let message = format!("{}: {}", error.kind, wire::shorten(&error.message));
    match error.kind.as_str() {
        "invalid_request_error" | "request_too_large" => ProviderError::Rejected {
            message,
            http_status: None,
        },
        "authentication_error" | "permission_error" | "not_found_error" => {
            ProviderError::Unavailable {
                message,
                http_status: None,
            }
        }
        _ => ProviderError::Transient {
            message,
            http_status: None,
            retry_after: None,
        },
    }
}

impl MessagesResponse {
    /// The answer in our terms (text, tokens, finish reason), checked.
    fn into_output(self, input: &GenerationInput) -> Result<GenerationOutput, ProviderError> {
        let response = self;
        if response.stop_reason.as_deref() == Some("refusal") {
            return Err(ProviderError::Rejected {
                message: "refused by the provider".into(),
                http_status: None,
            });
        }
        let text: String = response
            .content
            .iter()
            .filter(|b| b.kind == "text")
            .filter_map(|b| b.text.as_deref())
            .collect();
        let tool_calls: Vec<ToolCall> = response
            .content
            .iter()
            .filter(|b| b.kind == "tool_use")
            .map(|b| ToolCall {
                id: b.id.clone().unwrap_or_default(),
                name: b.name.clone().unwrap_or_default(),
                arguments: b
                    .input
                    .as_ref()
                    .map_or_else(|| "{}".into(), Value::to_string),
            })
            .collect();
        Ok(GenerationOutput {
            prompt_tokens: response
                .usage
                .input_tokens
                .unwrap_or_else(|| super::estimate_tokens(&input.prompt)),
            completion_tokens: response
                .usage
                .output_tokens
                .unwrap_or_else(|| super::estimate_tokens(&text)),
            finish_reason: normalise_finish_reason(
                response.stop_reason.as_deref().unwrap_or("end_turn"),
            ),
            upstream_model: response
                .model
                .unwrap_or_else(|| input.upstream_model.clone()),
            text,
            tool_calls,
        })
    }
}

impl Provider for AnthropicProvider {
    fn name(&self) -> &'static str {
        "anthropic"
    }

    async fn generate(&self, input: &GenerationInput) -> Result<GenerationOutput, ProviderError> {
        let response = wire::send_keyed(self.request(input, false)?, self.api_key.as_ref()).await?;
        let body: MessagesResponse = wire::json_body(response).await?;
        body.into_output(input)
    }

    async fn stream(&self, input: &GenerationInput) -> Result<ChunkStream, ProviderError> {
        let response = wire::send_keyed(self.request(input, true)?, self.api_key.as_ref()).await?;
        let events = wire::sse_events(response.bytes_stream());
        // State: input tokens (from message_start), output tokens and stop reason (message_delta),
        // the content blocks that are tool calls (block index → call index).
        let stream = events
            .scan(
                (
                    None::<u32>,
                    None::<u32>,
                    None::<String>,
                    false,
                    Vec::<u32>::new(),
                ),
                |(input_tokens, output_tokens, stop, done, tool_blocks), event| {
                    if *done {
                        return futures::future::ready(None);
                    }
                    let out = match event.and_then(|e| {
                        serde_json::from_str::<Event>(&e.data)
                            .map_err(|err| wire::malformed(&err.to_string()))
                    }) {
                        Err(e) => {
                            *done = true;
                            Some(Err(e))
                        }
                        Ok(Event::MessageStart { message }) => {
                            *input_tokens = message.usage.input_tokens;
                            None
                        }
                        Ok(Event::ContentBlockStart {
                            index,
                            content_block,
                        }) if content_block.kind == "tool_use" => {
                            let call = u32::try_from(tool_blocks.len()).unwrap_or(u32::MAX);
                            tool_blocks.push(index);
                            // The block's `input` is `{}` here; its text comes as deltas.
                            Some(Ok(StreamEvent::ToolCall(ToolCallDelta {
                                index: call,
                                id: content_block.id,
                                name: content_block.name,
                                arguments: String::new(),
                            })))
                        }
                        Ok(Event::ContentBlockDelta { index, delta }) => {
                            match (
                                delta.partial_json,
                                tool_blocks.iter().position(|b| *b == index),
                            ) {
                                (Some(json), Some(call)) => {
                                    Some(Ok(StreamEvent::ToolCall(ToolCallDelta {
                                        index: u32::try_from(call).unwrap_or(u32::MAX),
                                        id: None,
                                        name: None,
                                        arguments: json,
                                    })))
                                }
                                _ => delta
                                    .text
                                    .filter(|t| !t.is_empty())
                                    .map(|t| Ok(StreamEvent::Delta(t))),
                            }
                        }
                        Ok(Event::MessageDelta { delta, usage }) => {
                            if delta.stop_reason.is_some() {
                                *stop = delta.stop_reason;
                            }
                            if usage.output_tokens.is_some() {
                                *output_tokens = usage.output_tokens;
                            }
                            None
                        }
                        Ok(Event::MessageStop) => {
                            *done = true;
                            if stop.as_deref() == Some("refusal") {
                                Some(Err(ProviderError::Rejected {
                                    message: "refused by the provider".into(),
                                    http_status: None,
                                }))
                            } else {
                                Some(Ok(StreamEvent::Finished {
                                    finish_reason: normalise_finish_reason(
                                        stop.as_deref().unwrap_or("end_turn"),
                                    ),
                                    prompt_tokens: *input_tokens,
                                    completion_tokens: *output_tokens,
                                }))
                            }
                        }
                        Ok(Event::Error { error }) => {
                            *done = true;
                            Some(Err(stream_error(error)))
                        }
                        Ok(Event::ContentBlockStart { .. } | Event::Other) => None,
                    };
                    futures::future::ready(Some(futures::stream::iter(out)))
                },
            )
            .flatten();
        Ok(stream.boxed())
    }
}
