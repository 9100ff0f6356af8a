//! OpenAI Chat Completions (`POST {base}/chat/completions`), JSON and SSE streaming
//! (`data:` chunks ending with `data: [DONE]`, usage in the last chunk through
//! `stream_options.include_usage`), for the three endpoint kinds that speak it:
//!
//! - `openai`: `Authorization: Bearer <key>`, a key is required;
//! - `openai-compatible` (vLLM, Groq, OpenRouter, …): the same, the key optional;
//! - `azure-openai`: `POST {base}/openai/deployments/{deployment}/chat/completions
//!   ?api-version=…` with `api-key: <key>`; the deployment names the model, so the body
//!   carries none.

use futures::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::wire;
use super::{
    ChunkStream, GenerationInput, GenerationOutput, Provider, ProviderError, ResponseFormat,
    StreamEvent, ToolCall, ToolCallDelta, ToolChoice, estimate_tokens, normalise_finish_reason,
    tool_finish,
};
use llm_shared::models::{EndpointKind, UpstreamSettings};

#[derive(Debug, Clone)]
pub struct OpenAiProvider {
    http: reqwest::Client,
    kind: EndpointKind,
    base_url: String,
    api_key: Option<SecretString>,
    /// Why the endpoint cannot be called (its key is missing), if it cannot.
    unavailable: Option<String>,
    api_version: Option<String>,
    deployment: Option<String>,
}

impl OpenAiProvider {
    /// The client of an OpenAI endpoint (kind `openai`).
    pub fn new(settings: &UpstreamSettings) -> Self {
        Self::of_kind(EndpointKind::OpenAi, settings)
    }

    /// The client of an endpoint of any OpenAI wire-format kind.
    pub fn of_kind(kind: EndpointKind, settings: &UpstreamSettings) -> Self {
        Self {
            http: wire::client(settings),
            kind,
            base_url: settings.base_url.trim_end_matches('/').to_owned(),
            api_key: settings.api_key.clone(),
            unavailable: settings.unavailable.clone(),
            api_version: settings.api_version.clone(),
            deployment: settings.deployment.clone(),
        }
    }

    fn unavailable(&self, message: String) -> ProviderError {
        ProviderError::Unavailable {
            message,
            http_status: None,
        }
    }

    /// `{base}/openai/deployments/{deployment}/chat/completions?api-version=…`, the deployment
    /// as one path segment whatever it holds.
    fn azure_url(&self, input: &GenerationInput) -> Result<reqwest::Url, ProviderError> {
        let deployment = self.deployment.as_deref().unwrap_or(&input.upstream_model);
        let mut url = reqwest::Url::parse(&self.base_url)
            .map_err(|e| self.unavailable(format!("base_url is not a URL: {e}")))?;
        url.path_segments_mut()
            .map_err(|()| self.unavailable("base_url cannot take a path".into()))?
            .pop_if_empty()
            .extend(["openai", "deployments", deployment, "chat", "completions"]);
        url.query_pairs_mut().append_pair(
            "api-version",
            self.api_version.as_deref().unwrap_or_default(),
        );
        Ok(url)
    }

    fn request(
        &self,
        input: &GenerationInput,
        stream: bool,
    ) -> Result<reqwest::RequestBuilder, ProviderError> {
        if let Some(reason) = &self.unavailable {
            return Err(self.unavailable(reason.clone()));
        }
        let body = ChatRequest::new(input, stream, self.kind != EndpointKind::AzureOpenAi);
        let request = match self.kind {
            EndpointKind::AzureOpenAi => {
                let request = self.http.post(self.azure_url(input)?);
                match &self.api_key {
                    Some(key) => request.header("api-key", key.expose_secret()),
                    None => request,
                }
            }
            _ => {
                let request = self
                    .http
                    .post(format!("{}/chat/completions", self.base_url));
                match &self.api_key {
                    Some(key) => request.bearer_auth(key.expose_secret()),
                    None => request,
                }
            }
        };
        Ok(request.json(&body))
    }
}

#[derive(Debug, Serialize)]
struct ChatRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    messages: Vec<wire::ChatMessage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<Value>,
}

/// A tool call of an assistant message, as OpenAI writes it.
fn wire_call(call: &ToolCall) -> Value {
    json!({
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    })
}

/// The request's tools as `tools` entries of type `function`.
fn wire_tools(input: &GenerationInput) -> Option<Vec<Value>> {
    let tools = input.params.tools();
    (!tools.is_empty()).then(|| {
        tools
            .iter()
            .map(|t| {
                let mut function = json!({"name": t.name});
                if let Some(description) = &t.description {
                    function["description"] = json!(description);
                }
                if let Some(parameters) = &t.parameters {
                    function["parameters"] = parameters.clone();
                }
                if let Some(strict) = t.strict {
                    function["strict"] = json!(strict);
                }
                json!({"type": "function", "function": function})
            })
            .collect()
    })
}

fn wire_tool_choice(choice: Option<&ToolChoice>) -> Option<Value> {
    Some(match choice? {
        ToolChoice::Auto => json!("auto"),
        ToolChoice::None => json!("none"),
        ToolChoice::Required => json!("required"),
        ToolChoice::Tool { name } => json!({"type": "function", "function": {"name": name}}),
    })
}

impl<'a> ChatRequest<'a> {
    /// `with_model`: false where the URL names the model (Azure's deployment).
    fn new(input: &'a GenerationInput, stream: bool, with_model: bool) -> Self {
        let p = &input.params;
        let messages = wire::chat_messages(input, wire_call);
        Self {
            model: with_model.then_some(input.upstream_model.as_str()),
            messages,
            max_tokens: p.max_tokens,
            temperature: p.temperature,
            top_p: p.top_p,
            stop: p.stop.as_deref(),
            response_format: match &p.response_format {
                Some(ResponseFormat::JsonObject) => Some(json!({"type": "json_object"})),
                Some(ResponseFormat::JsonSchema {
                    schema,
                    name,
                    strict,
                }) => {
                    let mut spec =
                        json!({"name": name.as_deref().unwrap_or("response"), "schema": schema});
                    if let Some(strict) = strict {
                        spec["strict"] = json!(strict);
                    }
                    Some(json!({"type": "json_schema", "json_schema": spec}))
                }
                Some(ResponseFormat::Text) | None => None,
            },
            tools: wire_tools(input),
            tool_choice: wire_tool_choice(p.tool_choice.as_ref()),
            stream,
            stream_options: stream.then(|| json!({"include_usage": true})),
        }
    }
}

#[derive(Debug, Deserialize)]
struct ChatResponse {
    #[serde(default)]
    model: Option<String>,
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    message: AssistantMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AssistantMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Vec<WireToolCall>,
}

#[derive(Debug, Deserialize)]
struct WireToolCall {
    id: String,
    function: WireFunction,
}

#[derive(Debug, Deserialize)]
struct WireFunction {
    name: String,
    #[serde(default)]
    arguments: String,
}

/// A piece of a streamed tool call (`delta.tool_calls[]`).
#[derive(Debug, Deserialize)]
struct WireCallDelta {
    index: u32,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<WireFunctionDelta>,
}

#[derive(Debug, Default, Deserialize)]
struct WireFunctionDelta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Usage {
    prompt_tokens: u32,
    completion_tokens: u32,
}

#[derive(Debug, Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Debug, Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Delta,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Vec<WireCallDelta>,
}

impl ChatResponse {
    /// The answer in our terms (text, tokens, finish reason), checked.
    fn into_output(self, input: &GenerationInput) -> Result<GenerationOutput, ProviderError> {
        let response = self;
        let choice = response
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| wire::malformed("no choices"))?;
        if let Some(refusal) = choice.message.refusal {
            return Err(ProviderError::Rejected {
                message: format!("refused: {}", wire::shorten(&refusal)),
                http_status: None,
            });
        }
        let text = choice.message.content.unwrap_or_default();
        let tool_calls: Vec<ToolCall> = choice
            .message
            .tool_calls
            .into_iter()
            .map(|c| ToolCall {
                id: c.id,
                name: c.function.name,
                arguments: c.function.arguments,
            })
            .collect();
        let (prompt_tokens, completion_tokens) = match response.usage {
            Some(u) => (u.prompt_tokens, u.completion_tokens),
            None => (estimate_tokens(&input.prompt), estimate_tokens(&text)),
        };
        Ok(GenerationOutput {
            finish_reason: tool_finish(
                normalise_finish_reason(choice.finish_reason.as_deref().unwrap_or("stop")),
                &tool_calls,
            ),
            tool_calls,
            upstream_model: response
                .model
                .unwrap_or_else(|| input.upstream_model.clone()),
            prompt_tokens,
            completion_tokens,
            text,
        })
    }
}

impl Provider for OpenAiProvider {
    fn name(&self) -> &'static str {
        "openai"
    }

    async fn generate(&self, input: &GenerationInput) -> Result<GenerationOutput, ProviderError> {
        let response = wire::send_keyed(self.request(input, false)?, self.api_key.as_ref()).await?;
        let body: ChatResponse = wire::json_body(response).await?;
        body.into_output(input)
    }

    async fn stream(&self, input: &GenerationInput) -> Result<ChunkStream, ProviderError> {
        let response = wire::send_keyed(self.request(input, true)?, self.api_key.as_ref()).await?;
        let events = wire::sse_events(response.bytes_stream());
        // State: the finish reason seen so far; the end comes with `[DONE]`.
        let stream = events
            .scan(
                (None::<String>, None::<Usage>, false),
                |(finish, usage, done), event| {
                    if *done {
                        return futures::future::ready(None);
                    }
                    let out: Vec<Result<StreamEvent, ProviderError>> = match event {
                        Err(e) => {
                            *done = true;
                            vec![Err(e)]
                        }
                        Ok(event) if event.data == "[DONE]" => {
                            *done = true;
                            let usage = usage.take();
                            vec![Ok(StreamEvent::Finished {
                                finish_reason: normalise_finish_reason(
                                    finish.as_deref().unwrap_or("stop"),
                                ),
                                prompt_tokens: usage.as_ref().map(|u| u.prompt_tokens),
                                completion_tokens: usage.as_ref().map(|u| u.completion_tokens),
                            })]
                        }
                        Ok(event) => match serde_json::from_str::<Chunk>(&event.data) {
                            Err(e) => {
                                *done = true;
                                vec![Err(wire::malformed(&e.to_string()))]
                            }
                            Ok(chunk) => {
                                if chunk.usage.is_some() {
                                    *usage = chunk.usage;
                                }
                                let mut out = Vec::new();
                                for choice in chunk.choices {
                                    if let Some(refusal) = choice.delta.refusal {
                                        *done = true;
                                        out.push(Err(ProviderError::Rejected {
                                            message: format!(
                                                "refused: {}",
                                                wire::shorten(&refusal)
                                            ),
                                            http_status: None,
                                        }));
                                        break;
                                    }
                                    if let Some(text) =
                                        choice.delta.content.filter(|t| !t.is_empty())
                                    {
                                        out.push(Ok(StreamEvent::Delta(text)));
                                    }
                                    for call in choice.delta.tool_calls {
                                        let function = call.function.unwrap_or_default();
                                        out.push(Ok(StreamEvent::ToolCall(ToolCallDelta {
                                            index: call.index,
                                            id: call.id,
                                            name: function.name,
                                            arguments: function.arguments.unwrap_or_default(),
                                        })));
                                    }
                                    if choice.finish_reason.is_some() {
                                        *finish = choice.finish_reason;
                                    }
                                }
                                out
                            }
                        },
                    };
                    futures::future::ready(Some(futures::stream::iter(out)))
                },
            )
            .flatten();
        Ok(stream.boxed())
    }
}
