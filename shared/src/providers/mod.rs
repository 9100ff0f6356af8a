//! Providers: who turns a prompt into text. One file per upstream, all behind [`Provider`],
//! dispatched through the [`ProviderClient`] enum (no boxing needed for a handful of them).
//!
//! A provider call's failure is a [`ProviderError`], which knows whether trying again can help
//! ([`ProviderError::is_retryable`]); the worker decides what to do with that.

pub mod mock;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use mock::{MockBehaviour, MockProvider};

/// Generation parameters a client may set; providers map them onto their wire formats.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
}

/// What a provider is asked to do.
#[derive(Debug, Clone)]
pub struct GenerationInput {
    pub prompt: String,
    pub params: GenerationParams,
    /// Upstream model name (the registry maps our model id onto it).
    pub upstream_model: String,
    /// 1 for the first claim of the request, 2 for the next, ...
    pub attempt: u32,
    /// Test and benchmark controls, honoured by the mock provider only.
    pub mock: Option<MockBehaviour>,
}

/// What a provider answered.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationOutput {
    pub text: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub finish_reason: String,
    pub upstream_model: String,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// Worth another try: connect errors, timeouts, 429, 5xx, cut streams.
    #[error("{message}")]
    Transient {
        message: String,
        http_status: Option<u16>,
        retry_after: Option<Duration>,
    },
    /// Trying again cannot help: 4xx, refused content, misconfiguration.
    #[error("{message}")]
    Permanent {
        message: String,
        http_status: Option<u16>,
    },
    #[error("the provider did not answer within {0:?}")]
    Timeout(Duration),
}

impl ProviderError {
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::Permanent { .. })
    }

    /// Short, stable name of the error class (stored with each attempt).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Transient { .. } => "transient",
            Self::Permanent { .. } => "permanent",
            Self::Timeout(_) => "timeout",
        }
    }

    pub fn http_status(&self) -> Option<u16> {
        match self {
            Self::Transient { http_status, .. } | Self::Permanent { http_status, .. } => {
                *http_status
            }
            Self::Timeout(_) => None,
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

    fn generate(
        &self,
        input: &GenerationInput,
    ) -> impl Future<Output = Result<GenerationOutput, ProviderError>> + Send;
}

/// Every configured provider, dispatched without dynamic boxing.
#[derive(Debug, Clone)]
pub enum ProviderClient {
    Mock(MockProvider),
}

impl Provider for ProviderClient {
    fn name(&self) -> &'static str {
        match self {
            Self::Mock(p) => p.name(),
        }
    }

    async fn generate(&self, input: &GenerationInput) -> Result<GenerationOutput, ProviderError> {
        match self {
            Self::Mock(p) => p.generate(input).await,
        }
    }
}

/// Rough token count for providers that report none (about four characters a token).
pub fn estimate_tokens(text: &str) -> u32 {
    u32::try_from(text.chars().count().div_ceil(4)).unwrap_or(u32::MAX)
}
