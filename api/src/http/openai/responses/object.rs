//! The Response object (`object: "response"`), built from a stored request row: its status in
//! OpenAI's words, its one `message` output item, usage, error, and the settings the call was
//! made with ([`Settings`], kept in the row's metadata). Also the ids: a response is
//! `resp_` + the request's UUID (32 hex digits), its message `msg_` + the same.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use llm_shared::generation::{GenerationParams, ResponseFormat as NativeFormat};
use llm_shared::requests::{RequestView, Status};

/// The `api` metadata of requests made through `/v1/responses`.
pub(super) const API_NAME: &str = "openai.responses";

/// The response id of a request.
pub(super) fn response_id(id: Uuid) -> String {
    format!("resp_{}", id.simple())
}

fn message_id(id: Uuid) -> String {
    format!("msg_{}", id.simple())
}

/// The request id inside a response id; `None` for anything that is not one of ours.
pub(super) fn parse_response_id(raw: &str) -> Option<Uuid> {
    let hex = raw.strip_prefix("resp_")?;
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Uuid::try_parse(hex).ok()
}

/// What a Responses call asked for that the native request does not hold: kept in the row's
/// metadata under [`Settings::KEY`], so that every later read shows it back.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Settings {
    pub background: bool,
    pub store: bool,
    #[serde(default)]
    pub instructions: Option<String>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    #[serde(default)]
    pub text: TextConfig,
    #[serde(default)]
    pub user: Option<String>,
}

impl Settings {
    pub(super) const KEY: &'static str = "openai_response";

    pub(super) fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The settings of a request made through `/v1/responses`; `None` for any other request.
    pub(super) fn of_row(row: &RequestView) -> Option<Self> {
        if row.metadata.get("api").and_then(Value::as_str) != Some(API_NAME) {
            return None;
        }
        serde_json::from_value(row.metadata.get(Self::KEY)?.clone()).ok()
    }
}

/// `text` of the Response: its output format.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TextConfig {
    #[schema(value_type = Object)]
    pub format: Value,
}

impl Default for TextConfig {
    fn default() -> Self {
        Self {
            format: serde_json::json!({"type": "text"}),
        }
    }
}

impl TextConfig {
    pub(super) fn from_native(format: Option<&NativeFormat>) -> Self {
        let format = match format {
            None | Some(NativeFormat::Text) => serde_json::json!({"type": "text"}),
            Some(NativeFormat::JsonObject) => serde_json::json!({"type": "json_object"}),
            Some(NativeFormat::JsonSchema {
                schema,
                name,
                strict,
            }) => serde_json::json!({
                "type": "json_schema", "name": name, "schema": schema, "strict": strict,
            }),
        };
        Self { format }
    }
}

/// The Response object, as OpenAI's SDKs parse it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ResponseObject {
    /// `resp_` + the durable request's id (32 hex digits).
    pub id: String,
    /// Always `response`.
    pub object: &'static str,
    pub created_at: i64,
    /// `queued`, `in_progress`, `completed`, `incomplete` (cut by `max_output_tokens` or a
    /// content filter), `failed` or `cancelled`.
    pub status: &'static str,
    pub completed_at: Option<i64>,
    pub background: bool,
    pub store: bool,
    pub model: String,
    pub output: Vec<OutputMessage>,
    pub usage: Option<ResponseUsage>,
    pub error: Option<ResponseError>,
    pub incomplete_details: Option<IncompleteDetails>,
    pub instructions: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    pub text: TextConfig,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub max_output_tokens: Option<u32>,
    /// Always empty: tools are not supported.
    #[schema(value_type = Vec<Object>)]
    pub tools: Vec<Value>,
    pub tool_choice: &'static str,
    pub parallel_tool_calls: bool,
    pub previous_response_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub reasoning: Option<Value>,
    pub truncation: &'static str,
    pub user: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OutputMessage {
    /// `msg_` + the request's id.
    pub id: String,
    /// Always `message`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Always `assistant`.
    pub role: &'static str,
    /// `in_progress`, `completed` or `incomplete`.
    pub status: &'static str,
    pub content: Vec<OutputText>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OutputText {
    /// Always `output_text`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub text: String,
    #[schema(value_type = Vec<Object>)]
    pub annotations: Vec<Value>,
    #[schema(value_type = Vec<Object>)]
    pub logprobs: Vec<Value>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ResponseUsage {
    pub input_tokens: i32,
    pub input_tokens_details: InputTokensDetails,
    pub output_tokens: i32,
    pub output_tokens_details: OutputTokensDetails,
    pub total_tokens: i32,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InputTokensDetails {
    pub cached_tokens: i32,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OutputTokensDetails {
    pub reasoning_tokens: i32,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ResponseError {
    /// `server_error`, or `invalid_prompt` when the provider refused the request itself.
    pub code: String,
    /// The service's own error code, then its message.
    pub message: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct IncompleteDetails {
    /// `max_output_tokens` or `content_filter`.
    pub reason: &'static str,
}

/// A request's status in OpenAI's words (a length or content-filter cut is `incomplete`).
pub(super) fn status_of(row: &RequestView) -> &'static str {
    match row.status {
        Status::Pending => "queued",
        Status::Running => "in_progress",
        Status::Completed => match incomplete_reason(row) {
            Some(_) => "incomplete",
            None => "completed",
        },
        Status::Failed => "failed",
        Status::Cancelled => "cancelled",
    }
}

fn incomplete_reason(row: &RequestView) -> Option<&'static str> {
    match row.finish_reason.as_deref() {
        Some("length") => Some("max_output_tokens"),
        Some("content_filter") => Some("content_filter"),
        _ => None,
    }
}

/// The message item of a request's output, as it stands with `text`.
pub(super) fn message(id: Uuid, status: &'static str, text: String) -> OutputMessage {
    OutputMessage {
        id: message_id(id),
        kind: "message",
        role: "assistant",
        status,
        content: vec![output_text(text)],
    }
}

pub(super) fn output_text(text: String) -> OutputText {
    OutputText {
        kind: "output_text",
        text,
        annotations: Vec::new(),
        logprobs: Vec::new(),
    }
}

/// The Response object of a stored request made through `/v1/responses`.
pub(super) fn from_row(row: &RequestView, settings: &Settings) -> ResponseObject {
    let status = status_of(row);
    let params: GenerationParams =
        serde_json::from_value(row.parameters.clone()).unwrap_or_default();
    let mut object = skeleton(
        row.id,
        row.created_at.timestamp(),
        settings,
        &params,
        status,
    );
    object.model = row
        .served_model
        .clone()
        .unwrap_or_else(|| row.model.clone());
    if row.status == Status::Completed {
        let item_status = if status == "incomplete" {
            "incomplete"
        } else {
            "completed"
        };
        let text = row.result.clone().unwrap_or_default();
        object.output = vec![message(row.id, item_status, text)];
        object.usage = Some(usage(row));
        object.completed_at = row.completed_at.map(|t| t.timestamp());
        object.incomplete_details =
            incomplete_reason(row).map(|reason| IncompleteDetails { reason });
    }
    if row.status == Status::Failed {
        object.error = Some(error_of(row));
    }
    object
}

/// The object before any output: what a call's settings and parameters say.
pub(super) fn skeleton(
    id: Uuid,
    created_at: i64,
    settings: &Settings,
    params: &GenerationParams,
    status: &'static str,
) -> ResponseObject {
    ResponseObject {
        id: response_id(id),
        object: "response",
        created_at,
        status,
        completed_at: None,
        background: settings.background,
        store: settings.store,
        model: String::new(),
        output: Vec::new(),
        usage: None,
        error: None,
        incomplete_details: None,
        instructions: settings.instructions.clone(),
        metadata: settings.metadata.clone(),
        text: TextConfig::from_native(params.response_format.as_ref()),
        temperature: params.temperature,
        top_p: params.top_p,
        max_output_tokens: params.max_tokens,
        tools: Vec::new(),
        tool_choice: "none",
        parallel_tool_calls: false,
        previous_response_id: None,
        reasoning: None,
        truncation: "disabled",
        user: settings.user.clone(),
    }
}

pub(super) fn usage(row: &RequestView) -> ResponseUsage {
    let input_tokens = row.prompt_tokens.unwrap_or(0);
    let output_tokens = row.completion_tokens.unwrap_or(0);
    ResponseUsage {
        input_tokens,
        input_tokens_details: InputTokensDetails { cached_tokens: 0 },
        output_tokens,
        output_tokens_details: OutputTokensDetails {
            reasoning_tokens: 0,
        },
        total_tokens: row
            .tokens_used
            .unwrap_or(input_tokens.saturating_add(output_tokens)),
    }
}

pub(super) fn error_of(row: &RequestView) -> ResponseError {
    let code = row.error_code.as_deref().unwrap_or("failed");
    let message = row
        .error_message
        .as_deref()
        .unwrap_or("the generation failed");
    ResponseError {
        // OpenAI's codes: the provider refused the prompt itself, or anything else failed.
        code: if code == "rejected" {
            "invalid_prompt".into()
        } else {
            "server_error".into()
        },
        message: format!("{code}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_ids_parse_back_and_nothing_else_does() {
        let id = Uuid::now_v7();
        assert_eq!(parse_response_id(&response_id(id)), Some(id));
        for bad in [
            "",
            "resp_",
            "resp_xyz",
            &id.to_string(),
            &format!("resp_{id}"),
            &format!("resp_{}0", id.simple()),
            &format!("msg_{}", id.simple()),
            "resp_+0000000000000000000000000000000",
        ] {
            assert_eq!(parse_response_id(bad), None, "{bad}");
        }
    }
}
