//! Providers: who turns a prompt into text. One file per upstream, all behind [`Provider`],
//! dispatched through the [`ProviderClient`] enum (no boxing needed for a handful of them);
//! `wire` holds what the HTTP ones share.
//!
//! A provider call's failure is a [`ProviderError`], which knows what can help: trying the same
//! provider again ([`ProviderError::is_retryable`]), trying the next model of the fallback chain
//! ([`ProviderError::falls_back`]), or nothing (the request itself was refused).

pub mod anthropic;
pub mod clients;
pub mod mock;
pub mod ollama;
pub mod openai;
pub mod wire;

use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;

pub use anthropic::AnthropicProvider;
pub use mock::MockProvider;
pub use ollama::OllamaProvider;
pub use openai::OpenAiProvider;

// The generation's own types, named here for the provider files that use them all.
pub(crate) use llm_shared::generation::{
    GenerationOutput, GenerationParams, MAX_MOCK_LATENCY_MS, MockBehaviour, MockFailure,
    ResponseFormat, ToolCall, ToolCallAssembler, ToolCallDelta, ToolChoice, estimate_tokens,
};
use llm_shared::models::{Endpoint, EndpointKind, ModelRegistry, ProviderKind};

/// What a provider is asked to do.
#[derive(Debug, Clone)]
pub struct GenerationInput {
    pub prompt: String,
    pub params: GenerationParams,
    /// Upstream model name (the registry maps our model id onto it).
    pub upstream_model: String,
    /// Number of this provider call within the request (1, 2, ...).
    pub attempt: u32,
    /// Test and benchmark controls, honoured by the mock provider only.
    pub mock: Option<MockBehaviour>,
}

/// One piece of a streamed answer.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    Delta(String),
    /// A piece of a tool call (the first of each call carries its id and name).
    ToolCall(ToolCallDelta),
    /// The end marker, with usage when the provider reports it.
    Finished {
        finish_reason: String,
        prompt_tokens: Option<u32>,
        completion_tokens: Option<u32>,
    },
}

pub type ChunkStream = BoxStream<'static, Result<StreamEvent, ProviderError>>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// Worth another try: connect errors, 408/409/429/5xx/529, malformed answers, cut streams.
    #[error("{message}")]
    Transient {
        message: String,
        http_status: Option<u16>,
        retry_after: Option<Duration>,
    },
    #[error("the provider did not answer in time")]
    Timeout(Duration),
    /// This provider cannot serve the request (bad key, unknown model, not configured):
    /// no retry, but the next model of the chain may.
    #[error("{message}")]
    Unavailable {
        message: String,
        http_status: Option<u16>,
    },
    /// The request itself was refused (400, 413, 422, refused content): nobody will take it.
    #[error("{message}")]
    Rejected {
        message: String,
        http_status: Option<u16>,
    },
    /// The answer came but fails validation (empty, not the JSON asked for).
    #[error("{message}")]
    InvalidOutput { message: String },
    /// Checking the answer against the request's JSON Schema took longer than its bound: the
    /// same answer (or any model's, to the same schema) would cost as much again, so the
    /// request fails.
    #[error("checking the answer against the JSON Schema took longer than {0:?}")]
    ValidationTimeout(Duration),
}

impl ProviderError {
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Transient { .. } | Self::Timeout(_) | Self::InvalidOutput { .. }
        )
    }

    /// Whether the next model of the fallback chain should be tried after this error.
    pub fn falls_back(&self) -> bool {
        !matches!(self, Self::Rejected { .. } | Self::ValidationTimeout(_))
    }

    /// Short, stable name of the error class (stored with each attempt).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Transient { .. } => "transient",
            Self::Timeout(_) => "timeout",
            Self::Unavailable { .. } => "provider_unavailable",
            Self::Rejected { .. } => "rejected",
            Self::InvalidOutput { .. } => "invalid_output",
            Self::ValidationTimeout(_) => "validation_timeout",
        }
    }

    pub fn http_status(&self) -> Option<u16> {
        match self {
            Self::Transient { http_status, .. }
            | Self::Unavailable { http_status, .. }
            | Self::Rejected { http_status, .. } => *http_status,
            Self::Timeout(_) | Self::InvalidOutput { .. } | Self::ValidationTimeout(_) => None,
        }
    }

    /// The same error with every occurrence of `secret` in its message replaced: providers
    /// echo (parts of) API keys in their error bodies, and messages are stored and shown.
    pub fn redact(self, secret: &str) -> Self {
        if secret.len() < 8 {
            return self;
        }
        let clean = |m: String| m.replace(secret, "[redacted]");
        match self {
            Self::Transient {
                message,
                http_status,
                retry_after,
            } => Self::Transient {
                message: clean(message),
                http_status,
                retry_after,
            },
            Self::Unavailable {
                message,
                http_status,
            } => Self::Unavailable {
                message: clean(message),
                http_status,
            },
            Self::Rejected {
                message,
                http_status,
            } => Self::Rejected {
                message: clean(message),
                http_status,
            },
            Self::InvalidOutput { message } => Self::InvalidOutput {
                message: clean(message),
            },
            other @ (Self::Timeout(_) | Self::ValidationTimeout(_)) => other,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The contract every provider implements.
pub trait Provider {
    /// Name stored with results and attempts (`openai`, `anthropic`, `ollama`, `mock`).
    fn name(&self) -> &'static str;

    /// The whole answer at once.
    fn generate(
        &self,
        input: &GenerationInput,
    ) -> impl Future<Output = Result<GenerationOutput, ProviderError>> + Send;

    /// The answer as it is produced. The stream ends with exactly one `Finished` event, or
    /// with an error (a stream that stops without its end marker is an error, never success).
    fn stream(
        &self,
        input: &GenerationInput,
    ) -> impl Future<Output = Result<ChunkStream, ProviderError>> + Send;
}

/// Every provider, dispatched without dynamic boxing.
#[derive(Debug, Clone)]
pub enum ProviderClient {
    Mock(MockProvider),
    OpenAi(OpenAiProvider),
    Anthropic(AnthropicProvider),
    Ollama(OllamaProvider),
}

impl ProviderClient {
    /// The client of a provider kind: the mock, or the client of the registry's endpoint named
    /// after the provider (`openai`, `anthropic`, `ollama`).
    pub fn new(kind: ProviderKind, registry: &ModelRegistry, mock: &MockProvider) -> Option<Self> {
        match kind {
            ProviderKind::Mock => Some(Self::Mock(mock.clone())),
            _ => registry.endpoint(kind.as_str()).map(Self::for_endpoint),
        }
    }

    /// The client of one endpoint, with its own connection pool.
    pub fn for_endpoint(endpoint: &Endpoint) -> Self {
        let settings = &endpoint.settings;
        match endpoint.kind {
            EndpointKind::OpenAi | EndpointKind::OpenAiCompatible | EndpointKind::AzureOpenAi => {
                Self::OpenAi(OpenAiProvider::of_kind(endpoint.kind, settings))
            }
            EndpointKind::Anthropic => Self::Anthropic(AnthropicProvider::new(settings)),
            EndpointKind::Ollama => Self::Ollama(OllamaProvider::new(settings)),
        }
    }
}

impl Provider for ProviderClient {
    fn name(&self) -> &'static str {
        match self {
            Self::Mock(p) => p.name(),
            Self::OpenAi(p) => p.name(),
            Self::Anthropic(p) => p.name(),
            Self::Ollama(p) => p.name(),
        }
    }

    async fn generate(&self, input: &GenerationInput) -> Result<GenerationOutput, ProviderError> {
        match self {
            Self::Mock(p) => p.generate(input).await,
            Self::OpenAi(p) => p.generate(input).await,
            Self::Anthropic(p) => p.generate(input).await,
            Self::Ollama(p) => p.generate(input).await,
        }
    }

    async fn stream(&self, input: &GenerationInput) -> Result<ChunkStream, ProviderError> {
        match self {
            Self::Mock(p) => p.stream(input).await,
            Self::OpenAi(p) => p.stream(input).await,
            Self::Anthropic(p) => p.stream(input).await,
            Self::Ollama(p) => p.stream(input).await,
        }
    }
}

/// Where the pieces of a streamed answer go as they arrive (besides being collected).
pub trait DeltaSink: Send {
    fn delta(&mut self, text: &str) -> impl Future<Output = ()> + Send;

    /// A piece of a tool call; dropped unless the sink relays them.
    fn tool_call(&mut self, _delta: &ToolCallDelta) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Collecting only.
impl DeltaSink for () {
    async fn delta(&mut self, _: &str) {}
}

/// Reads a stream to its end marker into one output, with a time limit for the first event
/// and for every gap between events.
pub async fn collect_stream(
    stream: ChunkStream,
    upstream_model: &str,
    prompt: &str,
    first_event: Duration,
    idle: Duration,
) -> Result<GenerationOutput, ProviderError> {
    collect_stream_into(stream, &mut (), upstream_model, prompt, first_event, idle).await
}

/// [`collect_stream`], handing each piece to `sink` as it arrives.
pub async fn collect_stream_into(
    mut stream: ChunkStream,
    sink: &mut impl DeltaSink,
    upstream_model: &str,
    prompt: &str,
    first_event: Duration,
    idle: Duration,
) -> Result<GenerationOutput, ProviderError> {
    let mut text = String::new();
    let mut calls = ToolCallAssembler::default();
    let mut limit = first_event;
    loop {
        let next = tokio::time::timeout(limit, stream.next())
            .await
            .map_err(|_| ProviderError::Timeout(limit))?;
        limit = idle;
        match next {
            Some(Ok(StreamEvent::Delta(delta))) => {
                sink.delta(&delta).await;
                text.push_str(&delta);
            }
            Some(Ok(StreamEvent::ToolCall(delta))) => {
                sink.tool_call(&delta).await;
                calls.push(&delta);
            }
            Some(Ok(StreamEvent::Finished {
                finish_reason,
                prompt_tokens,
                completion_tokens,
            })) => {
                let tool_calls = calls.finish();
                return Ok(GenerationOutput {
                    prompt_tokens: prompt_tokens.unwrap_or_else(|| estimate_tokens(prompt)),
                    completion_tokens: completion_tokens.unwrap_or_else(|| estimate_tokens(&text)),
                    finish_reason: tool_finish(finish_reason, &tool_calls),
                    upstream_model: upstream_model.to_owned(),
                    text,
                    tool_calls,
                });
            }
            Some(Err(err)) => return Err(err),
            None => return Err(wire::cut_stream()),
        }
    }
}

/// The finish reasons of the providers, in our words.
pub fn normalise_finish_reason(reason: &str) -> String {
    match reason {
        "tool_calls" | "tool_use" | "function_call" => "tool_calls".into(),
        "stop" | "end_turn" | "stop_sequence" => "stop".into(),
        "length" | "max_tokens" => "length".into(),
        "content_filter" | "refusal" => "content_filter".into(),
        other => other.into(),
    }
}

/// `tool_calls` when the model called tools and otherwise stopped as usual (Ollama says `stop`
/// then), else the reason as given.
pub fn tool_finish(reason: String, calls: &[ToolCall]) -> String {
    if !calls.is_empty() && reason == "stop" {
        "tool_calls".into()
    } else {
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::ProviderError;

    #[test]
    fn a_key_echoed_in_an_error_is_redacted_from_its_message() {
        let key = "sk-test-0123456789abcdef";
        let errors = [
            ProviderError::Transient {
                message: format!("429: slow down, {key}"),
                http_status: Some(429),
                retry_after: None,
            },
            ProviderError::Unavailable {
                message: format!("401: Incorrect API key provided: {key}."),
                http_status: Some(401),
            },
            ProviderError::Rejected {
                message: format!("400: {key} {key}"),
                http_status: Some(400),
            },
            ProviderError::InvalidOutput {
                message: format!("echoed {key}"),
            },
        ];
        for err in errors {
            let (kind, status) = (err.kind(), err.http_status());
            let clean = err.redact(key);
            let text = clean.to_string();
            assert!(!text.contains(key) && text.contains("[redacted]"), "{text}");
            assert_eq!((clean.kind(), clean.http_status()), (kind, status));
        }
    }
}
