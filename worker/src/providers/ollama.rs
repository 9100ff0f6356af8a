//! Ollama chat (`POST {base}/api/chat`), JSON and newline-delimited JSON streaming: one object
//! per line, the last with `"done": true`, `done_reason`, `prompt_eval_count` and `eval_count`.

use futures::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::wire;
use super::{
    ChunkStream, GenerationInput, GenerationOutput, Provider, ProviderError, ResponseFormat,
    StreamEvent, ToolCall, ToolCallDelta, estimate_tokens, normalise_finish_reason, tool_finish,
};
use llm_shared::models::UpstreamSettings;

#[derive(Debug, Clone)]
pub struct OllamaProvider {
    http: reqwest::Client,
    base_url: String,
    /// Sent as a bearer token when the endpoint names one (an Ollama behind a proxy).
    api_key: Option<SecretString>,
}

impl OllamaProvider {
    pub fn new(settings: &UpstreamSettings) -> Self {
        Self {
            http: wire::client(settings),
            base_url: settings.base_url.trim_end_matches('/').to_owned(),
            api_key: settings.api_key.clone(),
        }
    }

    fn request(
        &self,
        input: &GenerationInput,
        stream: bool,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        if self.base_url.is_empty() {
            return Err(ProviderError::Unavailable {
                message: "OLLAMA_URL is not set".into(),
                http_status: None,
            });
        }
        let request = self
            .http
            .post(format!("{}/api/chat", self.base_url))
            .json(&ChatRequest::new(input, stream));
        Ok(match &self.api_key {
            Some(key) => request.bearer_auth(key.expose_secret()),
            None => request,
        })
    }
}

#[derive(Debug, Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: Vec<wire::ChatMessage<'a>>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Vec<Value>>,
    options: Value,
}

/// A tool call of an assistant message, as Ollama writes it: the arguments as an object (the
/// model's text parsed; text that is not JSON travels as a string).
fn wire_call(call: &ToolCall) -> Value {
    let arguments = serde_json::from_str::<Value>(&call.arguments)
        .unwrap_or_else(|_| Value::String(call.arguments.clone()));
    json!({"function": {"name": call.name, "arguments": arguments}})
}

/// The request's tools, in the OpenAI shape Ollama takes. Ollama has no `tool_choice`: `none`
/// sends no tools, `required` and a named tool send only the tool(s) the model may call.
fn wire_tools(input: &GenerationInput) -> Option<Vec<Value>> {
    let tools = match (&input.params.tool_choice, input.params.forced_tool()) {
        (Some(super::ToolChoice::None), _) => return None,
        (Some(super::ToolChoice::Tool { .. }), Some(tool)) => std::slice::from_ref(tool),
        _ => input.params.tools(),
    };
    if tools.is_empty() {
        return None;
    }
    Some(
        tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.name,
                    "description": t.description.as_deref().unwrap_or_default(),
                    "parameters": t.parameters.clone().unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                }})
            })
            .collect(),
    )
}

/// The tool calls of an answer's message, numbered in order (Ollama gives them no id).
fn calls_of(message: &LineMessage) -> Vec<ToolCall> {
    message
        .tool_calls
        .iter()
        .enumerate()
        .map(|(i, c)| ToolCall {
            id: format!("call_{i}"),
            name: c.function.name.clone(),
            arguments: match &c.function.arguments {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            },
        })
        .collect()
}

impl<'a> ChatRequest<'a> {
    fn new(input: &'a GenerationInput, stream: bool) -> Self {
        let p = &input.params;
        let messages = wire::chat_messages(input, wire_call);
        let mut options = serde_json::Map::new();
        if let Some(t) = p.temperature {
            options.insert("temperature".into(), json!(t));
        }
        if let Some(top_p) = p.top_p {
            options.insert("top_p".into(), json!(top_p));
        }
        if let Some(n) = p.max_tokens {
            options.insert("num_predict".into(), json!(n));
        }
        if let Some(stop) = &p.stop {
            options.insert("stop".into(), json!(stop));
        }
        Self {
            model: &input.upstream_model,
            messages,
            stream,
            format: match &p.response_format {
                Some(ResponseFormat::JsonObject) => Some(json!("json")),
                Some(ResponseFormat::JsonSchema { schema, .. }) => Some(schema.clone()),
                Some(ResponseFormat::Text) | None => None,
            },
            tools: wire_tools(input),
            options: Value::Object(options),
        }
    }
}

#[derive(Debug, Deserialize)]
struct ChatLine {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    message: Option<LineMessage>,
    #[serde(default)]
    done: bool,
    #[serde(default)]
    done_reason: Option<String>,
    #[serde(default)]
    prompt_eval_count: Option<u32>,
    #[serde(default)]
    eval_count: Option<u32>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LineMessage {
    #[serde(default)]
    content: String,
    #[serde(default)]
    tool_calls: Vec<LineToolCall>,
}

#[derive(Debug, Deserialize)]
struct LineToolCall {
    function: LineFunction,
}

#[derive(Debug, Deserialize)]
struct LineFunction {
    name: String,
    #[serde(default)]
    arguments: Value,
}

impl Provider for OllamaProvider {
    fn name(&self) -> &'static str {
        "ollama"
    }

    async fn generate(&self, input: &GenerationInput) -> Result<GenerationOutput, ProviderError> {
        let response = wire::send_keyed(self.request(input, false)?, self.api_key.as_ref()).await?;
        let line: ChatLine = wire::json_body(response).await?;
        if let Some(error) = line.error {
            return Err(ProviderError::Transient {
                message: wire::shorten(&error),
                http_status: None,
                retry_after: None,
            });
        }
        if !line.done {
            return Err(wire::malformed("answer without `done: true`"));
        }
        let tool_calls = line.message.as_ref().map(calls_of).unwrap_or_default();
        let text = line.message.map(|m| m.content).unwrap_or_default();
        Ok(GenerationOutput {
            prompt_tokens: line
                .prompt_eval_count
                .unwrap_or_else(|| estimate_tokens(&input.prompt)),
            completion_tokens: line.eval_count.unwrap_or_else(|| estimate_tokens(&text)),
            finish_reason: tool_finish(
                normalise_finish_reason(line.done_reason.as_deref().unwrap_or("stop")),
                &tool_calls,
            ),
            upstream_model: line.model.unwrap_or_else(|| input.upstream_model.clone()),
            text,
            tool_calls,
        })
    }

    async fn stream(&self, input: &GenerationInput) -> Result<ChunkStream, ProviderError> {
        let response = wire::send_keyed(self.request(input, true)?, self.api_key.as_ref()).await?;
        let stream = wire::lines(response.bytes_stream())
            .filter(|line| futures::future::ready(!matches!(line, Ok(l) if l.trim().is_empty())))
            .scan((false, 0u32), |(done, calls), line| {
                if *done {
                    return futures::future::ready(None);
                }
                let parsed = line.and_then(|l| {
                    serde_json::from_str::<ChatLine>(&l)
                        .map_err(|e| wire::malformed(&e.to_string()))
                });
                let out: Vec<Result<StreamEvent, ProviderError>> = match parsed {
                    Err(e) => {
                        *done = true;
                        vec![Err(e)]
                    }
                    Ok(ChatLine {
                        error: Some(error), ..
                    }) => {
                        *done = true;
                        vec![Err(ProviderError::Transient {
                            message: wire::shorten(&error),
                            http_status: None,
                            retry_after: None,
                        })]
                    }
                    Ok(line) => {
                        let mut out = Vec::new();
                        // Ollama sends each call whole, in one line's message.
                        for call in line.message.as_ref().map(calls_of).unwrap_or_default() {
                            out.push(Ok(StreamEvent::ToolCall(ToolCallDelta {
                                index: *calls,
                                id: Some(format!("call_{calls}")),
                                name: Some(call.name),
                                arguments: call.arguments,
                            })));
                            *calls += 1;
                        }
                        if let Some(text) =
                            line.message.map(|m| m.content).filter(|t| !t.is_empty())
                        {
                            out.push(Ok(StreamEvent::Delta(text)));
                        }
                        if line.done {
                            *done = true;
                            out.push(Ok(StreamEvent::Finished {
                                finish_reason: normalise_finish_reason(
                                    line.done_reason.as_deref().unwrap_or("stop"),
                                ),
                                prompt_tokens: line.prompt_eval_count,
                                completion_tokens: line.eval_count,
                            }));
                        }
                        out
                    }
                };
                futures::future::ready(Some(futures::stream::iter(out)))
            })
            .flatten();
        Ok(stream.boxed())
    }
}
