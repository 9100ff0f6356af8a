//! The answer of a non-streamed call, built from its stored request row: the
//! `chat.completion` / `text_completion` object (typed, so that the OpenAPI document shows it
//! as it is sent), or the OpenAI error for a generation that failed, was cancelled or is still
//! running when the wait ends.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::error::{OpenAiError, OpenAiErrorBody, OpenAiErrorDetail};
use super::{Endpoint, SHOULD_RETRY_HEADER};
use llm_shared::generation::ToolCall;
use llm_shared::requests::{RequestView, Status};

/// The answer to a call whose wait has ended, from the state of its row.
pub(super) fn answer(row: &RequestView, endpoint: Endpoint, waited: Duration) -> Response {
    match row.status {
        Status::Completed => Json(completion(row, endpoint)).into_response(),
        Status::Failed => generation_failed(row).into_response(),
        Status::Cancelled => OpenAiError::Custom {
            status: StatusCode::CONFLICT,
            kind: "invalid_request_error",
            code: Some("cancelled".into()),
            message: "the request was cancelled".into(),
            param: None,
        }
        .into_response(),
        Status::Pending | Status::Running => still_running(row, waited),
    }
}

pub(super) fn completion(row: &RequestView, endpoint: Endpoint) -> CompletionObject {
    let text = row.result.clone().unwrap_or_default();
    let (message, text) = match endpoint {
        Endpoint::Chat => {
            let calls = row.tool_calls();
            let message = AssistantMessage {
                role: "assistant".into(),
                // OpenAI's answer of tool calls alone has no content.
                content: (!text.is_empty() || calls.is_empty()).then_some(text),
                refusal: None,
                tool_calls: (!calls.is_empty())
                    .then(|| calls.iter().map(ToolCallObject::of).collect()),
            };
            (Some(message), None)
        }
        Endpoint::Text => (None, Some(text)),
    };
    CompletionObject {
        id: row.id,
        object: endpoint.object().into(),
        created: row.created_at.timestamp(),
        model: row
            .served_model
            .clone()
            .unwrap_or_else(|| row.model.clone()),
        system_fingerprint: None,
        choices: vec![CompletionChoice {
            index: 0,
            message,
            text,
            logprobs: None,
            finish_reason: finish_reason(row.finish_reason.as_deref()).into(),
        }],
        usage: usage(row),
    }
}

pub(super) fn usage(row: &RequestView) -> UsageObject {
    let prompt_tokens = row.prompt_tokens.unwrap_or(0);
    let completion_tokens = row.completion_tokens.unwrap_or(0);
    UsageObject {
        prompt_tokens,
        completion_tokens,
        total_tokens: row
            .tokens_used
            .unwrap_or(prompt_tokens.saturating_add(completion_tokens)),
    }
}

/// Our finish reasons in OpenAI's words.
pub(super) fn finish_reason(reason: Option<&str>) -> &'static str {
    match reason {
        Some("length") => "length",
        Some("content_filter") => "content_filter",
        Some("tool_calls") => "tool_calls",
        _ => "stop",
    }
}

/// A generation that failed after the service's own retries and fallbacks.
pub(super) fn generation_failed(row: &RequestView) -> OpenAiError {
    let code = row.error_code.clone().unwrap_or_else(|| "failed".into());
    let message = row
        .error_message
        .clone()
        .unwrap_or_else(|| "the generation failed".into());
    // The provider refused the request itself: the caller must change it.
    let (status, kind) = if code == "rejected" {
        (StatusCode::BAD_REQUEST, "invalid_request_error")
    } else {
        (StatusCode::BAD_GATEWAY, "upstream_error")
    };
    OpenAiError::Custom {
        status,
        kind,
        code: Some(code),
        message,
        param: None,
    }
}

/// The wait is over but the generation goes on (it is durable): the id to poll.
fn still_running(row: &RequestView, waited: Duration) -> Response {
    let poll_url = format!("/api/v1/generate/{}", row.id);
    let body = OpenAiErrorBody::new(OpenAiErrorDetail {
        message: format!(
            "the generation is still {} after {} s; it carries on: poll GET {poll_url} for its result",
            row.status.as_str(),
            waited.as_secs()
        ),
        kind: "timeout".into(),
        param: None,
        code: Some("generation_pending".into()),
        request_id: Some(row.id),
        poll_url: Some(poll_url.clone()),
    });
    let mut response = (StatusCode::GATEWAY_TIMEOUT, Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(SHOULD_RETRY_HEADER, HeaderValue::from_static("false"));
    if let Ok(location) = HeaderValue::from_str(&poll_url) {
        headers.insert(header::LOCATION, location);
    }
    response
}

/// A `chat.completion` (or, from `/v1/completions`, a `text_completion`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CompletionObject {
    /// The durable request's id: poll it at `/api/v1/generate/{id}` (also `x-request-id`).
    pub id: Uuid,
    /// `chat.completion` or `text_completion`.
    pub object: String,
    pub created: i64,
    /// The registry model that answered (the requested one, or a fallback).
    pub model: String,
    pub system_fingerprint: Option<String>,
    /// Always one choice.
    pub choices: Vec<CompletionChoice>,
    pub usage: UsageObject,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CompletionChoice {
    pub index: u32,
    /// Chat completions: the assistant's message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<AssistantMessage>,
    /// Text completions: the text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Always null: log probabilities are not offered.
    pub logprobs: Option<Value>,
    /// `stop`, `length`, `content_filter` or `tool_calls`.
    pub finish_reason: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AssistantMessage {
    pub role: String,
    /// Null when the answer is tool calls alone.
    pub content: Option<String>,
    pub refusal: Option<String>,
    /// The functions the model called: the client runs them and sends their results back as
    /// `tool` messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallObject>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ToolCallObject {
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionCallObject,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FunctionCallObject {
    pub name: String,
    /// The arguments as the JSON text the model wrote.
    pub arguments: String,
}

impl ToolCallObject {
    fn of(call: &ToolCall) -> Self {
        Self {
            id: call.id.clone(),
            kind: "function".into(),
            function: FunctionCallObject {
                name: call.name.clone(),
                arguments: call.arguments.clone(),
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UsageObject {
    pub prompt_tokens: i32,
    pub completion_tokens: i32,
    pub total_tokens: i32,
}
