//! Ollama chat (`POST {base}/api/chat`), JSON and newline-delimited JSON streaming: one object
//! per line, the last with `"done": true`, `done_reason`, `prompt_eval_count` and `eval_count`.

use futures::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::wire;
use super::{
    ChunkStream, GenerationInput, GenerationOutput, Provider, ProviderError, ResponseFormat,
    StreamEvent, estimate_tokens, normalise_finish_reason,
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
    options: Value,
}

impl<'a> ChatRequest<'a> {
    fn new(input: &'a GenerationInput, stream: bool) -> Self {
        let p = &input.params;
        let messages = wire::chat_messages(input);
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
        let text = line.message.map(|m| m.content).unwrap_or_default();
        Ok(GenerationOutput {
            prompt_tokens: line
                .prompt_eval_count
                .unwrap_or_else(|| estimate_tokens(&input.prompt)),
            completion_tokens: line.eval_count.unwrap_or_else(|| estimate_tokens(&text)),
            finish_reason: normalise_finish_reason(line.done_reason.as_deref().unwrap_or("stop")),
            upstream_model: line.model.unwrap_or_else(|| input.upstream_model.clone()),
            text,
        })
    }

    async fn stream(&self, input: &GenerationInput) -> Result<ChunkStream, ProviderError> {
        let response = wire::send_keyed(self.request(input, true)?, self.api_key.as_ref()).await?;
        let stream = wire::lines(response.bytes_stream())
            .filter(|line| futures::future::ready(!matches!(line, Ok(l) if l.trim().is_empty())))
            .scan(false, |done, line| {
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
