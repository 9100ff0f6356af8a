//! The answer of a non-streamed call, built from its stored request row: Anthropic's `message`
//! object (typed, so that the OpenAPI document shows it as it is sent), or the Anthropic error
//! for a generation that failed, was cancelled or is still running when the wait ends.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::SHOULD_RETRY_HEADER;
use super::error::{AnthropicErrorBody, AnthropicErrorDetail};
use llm_shared::requests::{RequestView, Status};

/// The answer to a call whose wait has ended, from the state of its row.
pub(super) fn answer(row: &RequestView, waited: Duration) -> Response {
    match row.status {
        Status::Completed => Json(message(row)).into_response(),
        Status::Failed => {
            let (status, kind) = failure_kind(row.error_code.as_deref());
            let message = row
                .error_message
                .clone()
                .unwrap_or_else(|| "the generation failed".into());
            error(status, AnthropicErrorDetail::new(kind, message), row.id)
        }
        Status::Cancelled => error(
            StatusCode::CONFLICT,
            AnthropicErrorDetail::new("invalid_request_error", "the request was cancelled"),
            row.id,
        ),
        Status::Pending | Status::Running => still_running(row, waited),
    }
}

/// The `id` of a message: the durable request's id behind Anthropic's `msg_` prefix.
pub(super) fn message_id(id: Uuid) -> String {
    format!("msg_{id}")
}

/// The served model's name: the registry model that answered (the requested one, or a
/// fallback).
pub(super) fn served_model(row: &RequestView) -> String {
    row.served_model
        .clone()
        .unwrap_or_else(|| row.model.clone())
}

fn message(row: &RequestView) -> MessageObject {
    MessageObject {
        id: message_id(row.id),
        kind: "message".into(),
        role: "assistant".into(),
        model: served_model(row),
        content: content(row),
        stop_reason: stop_reason(row.finish_reason.as_deref()).into(),
        stop_sequence: None,
        usage: usage(row),
    }
}

/// The text block (left out when the answer is tool calls alone), then a `tool_use` block per
/// call.
fn content(row: &RequestView) -> Vec<ContentBlock> {
    let text = row.result.clone().unwrap_or_default();
    let calls = row.tool_calls();
    let mut blocks = Vec::with_capacity(1 + calls.len());
    if !text.is_empty() || calls.is_empty() {
        blocks.push(ContentBlock::Text { text });
    }
    blocks.extend(calls.iter().map(|c| ContentBlock::ToolUse {
        id: c.id.clone(),
        name: c.name.clone(),
        input: tool_input(&c.arguments),
    }));
    blocks
}

/// A call's arguments as Anthropic's `input` object (`{}` when the model wrote no object).
pub(super) fn tool_input(arguments: &str) -> Value {
    serde_json::from_str::<Value>(arguments)
        .ok()
        .filter(Value::is_object)
        .unwrap_or_else(|| Value::Object(serde_json::Map::new()))
}

pub(super) fn usage(row: &RequestView) -> UsageObject {
    UsageObject {
        input_tokens: row.prompt_tokens.unwrap_or(0),
        output_tokens: row.completion_tokens.unwrap_or(0),
    }
}

/// Our finish reasons in Anthropic's words. The stored reason does not tell a stop sequence
/// from the natural end of the answer (providers report both as a stop), so both are
/// `end_turn`.
pub(super) fn stop_reason(reason: Option<&str>) -> &'static str {
    match reason {
        Some("length") => "max_tokens",
        Some("content_filter") => "refusal",
        Some("tool_calls") => "tool_use",
        _ => "end_turn",
    }
}

/// The status and Anthropic type of a generation that failed with `code`: the provider
/// refusing the request itself is the caller's to change; anything else failed upstream,
/// after the service's own retries and fallbacks.
pub(super) fn failure_kind(code: Option<&str>) -> (StatusCode, &'static str) {
    match code {
        Some("rejected") => (StatusCode::BAD_REQUEST, "invalid_request_error"),
        Some("cancelled") => (StatusCode::CONFLICT, "invalid_request_error"),
        _ => (StatusCode::BAD_GATEWAY, "api_error"),
    }
}

fn error(status: StatusCode, detail: AnthropicErrorDetail, id: Uuid) -> Response {
    let mut response = (status, Json(AnthropicErrorBody::new(detail, Some(id)))).into_response();
    response
        .headers_mut()
        .insert(SHOULD_RETRY_HEADER, HeaderValue::from_static("false"));
    response
}

/// The wait is over but the generation goes on (it is durable): the id to poll, and no
/// automatic retry (it would submit the call again).
fn still_running(row: &RequestView, waited: Duration) -> Response {
    let poll_url = format!("/api/v1/generate/{}", row.id);
    let mut detail = AnthropicErrorDetail::new(
        "timeout_error",
        format!(
            "the generation is still {} after {} s; it carries on: poll GET {poll_url} for its result",
            row.status.as_str(),
            waited.as_secs()
        ),
    );
    detail.poll_url = Some(poll_url.clone());
    let mut response = error(StatusCode::GATEWAY_TIMEOUT, detail, row.id);
    if let Ok(location) = HeaderValue::from_str(&poll_url) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// An Anthropic `message`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessageObject {
    /// `msg_` and the durable request's id: poll it at `/api/v1/generate/{id}` (also
    /// `request-id`).
    pub id: String,
    /// Always `message`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Always `assistant`.
    pub role: String,
    /// The registry model that answered (the requested one, or a fallback).
    pub model: String,
    /// A `text` block, then a `tool_use` block per tool call (the text block is left out
    /// when the answer is tool calls alone).
    pub content: Vec<ContentBlock>,
    /// `end_turn`, `max_tokens`, `refusal` or `tool_use`.
    pub stop_reason: String,
    /// Always null: a stop sequence is reported as `end_turn`.
    pub stop_sequence: Option<String>,
    pub usage: UsageObject,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlock {
    Text {
        text: String,
    },
    /// A call of one of the request's tools: the client runs it and sends a `tool_result`.
    ToolUse {
        id: String,
        name: String,
        #[schema(value_type = Object)]
        input: Value,
    },
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UsageObject {
    pub input_tokens: i32,
    pub output_tokens: i32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_reasons_are_anthropics_stop_reasons() {
        assert_eq!(stop_reason(Some("stop")), "end_turn");
        assert_eq!(stop_reason(Some("length")), "max_tokens");
        assert_eq!(stop_reason(Some("content_filter")), "refusal");
        assert_eq!(stop_reason(None), "end_turn");
    }
}
