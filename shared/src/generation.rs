//! What a generation is made of, whichever process handles it: the parameters a client may
//! set ([`GenerationParams`]), the mock provider's per-request controls ([`MockBehaviour`]),
//! what a provider answered ([`GenerationOutput`]) and the token estimate used where a provider
//! reports none and for rate limits at submit ([`estimate_tokens`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Generation parameters a client may set; providers map them onto their wire formats.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// Text (default), any JSON object, or JSON matching a schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    /// Earlier turns of a conversation, oldest first; the prompt is the user's next turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<ChatTurn>>,
}

/// One earlier turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatTurn {
    pub role: TurnRole,
    pub content: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TurnRole {
    User,
    Assistant,
}

impl TurnRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema {
        schema: Value,
        /// The schema's name, for providers that take one (OpenAI: 1–64 of `a-zA-Z0-9_-`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// Whether the provider is asked to follow the schema exactly (OpenAI's `strict`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        strict: Option<bool>,
    },
}

impl GenerationParams {
    /// The JSON Schema the output must match, `Some(None)` for "any JSON", `None` for text.
    pub fn json_output(&self) -> Option<Option<&Value>> {
        match &self.response_format {
            Some(ResponseFormat::JsonObject) => Some(None),
            Some(ResponseFormat::JsonSchema { schema, .. }) => Some(Some(schema)),
            Some(ResponseFormat::Text) | None => None,
        }
    }
}

/// What a provider answered.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationOutput {
    pub text: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// `stop`, `length` (cut by the token limit), `content_filter`, or the provider's own.
    pub finish_reason: String,
    pub upstream_model: String,
}

/// Rough token count for providers that report none (about four characters a token).
pub fn estimate_tokens(text: &str) -> u32 {
    u32::try_from(text.chars().count().div_ceil(4)).unwrap_or(u32::MAX)
}

/// Per-request controls (the request body's `mock` object).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MockBehaviour {
    /// Delay before answering, in milliseconds.
    #[serde(default)]
    pub latency_ms: u64,
    /// How attempts fail: `transient` (retryable), `permanent`, or `crash` (aborts the worker
    /// process; only honoured when the worker runs with `MOCK_ALLOW_CRASH`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail: Option<MockFailure>,
    /// When streaming, the pause between two tokens, in milliseconds.
    #[serde(default)]
    pub token_delay_ms: u64,
    /// Only the first N attempts fail; absent means every attempt fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_attempts: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MockFailure {
    Transient,
    Permanent,
    Crash,
    /// Answers text that is not JSON (to exercise response validation).
    InvalidJson,
}

/// Upper bound on mock latency, so a request cannot park a worker slot for long.
pub const MAX_MOCK_LATENCY_MS: u64 = 60_000;
