//! The streamed answer (`stream: true`): the relay follower's events turned into OpenAI's SSE
//! chunks (`chat.completion.chunk` or `text_completion`; tool calls as `delta.tool_calls`
//! pieces by index), ending with `data: [DONE]`, or with an error chunk in OpenAI's shape.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use futures::StreamExt;
use serde_json::{Value, json};
use uuid::Uuid;

use super::Endpoint;
use super::error::{OpenAiErrorBody, OpenAiErrorDetail};
use super::response::{finish_reason, usage};
use crate::http::stream::{FollowEvent, FollowStream};
use llm_shared::generation::ToolCallDelta;

/// The follower's events, mapped by the writer as they come (no task or channel of its own:
/// the follower is polled as the client reads).
pub(super) fn sse(events: FollowStream, writer: ChunkWriter) -> Response {
    let frames = futures::stream::unfold((events, writer), |(mut events, mut writer)| async move {
        if writer.finished {
            return None;
        }
        let frames = writer.on(events.next().await);
        Some((futures::stream::iter(frames), (events, writer)))
    })
    .flatten()
    .map(Ok::<_, Infallible>);
    Sse::new(frames)
        .keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(15))
                .text("keep-alive"),
        )
        .into_response()
}

/// Turns a follower's events into OpenAI chunks. A `restart` cannot be shown to an OpenAI
/// client, so the writer sends only output that extends what the client already has: a retry
/// that regenerates the same text goes on seamlessly; one whose result no longer extends what
/// was sent ends the stream with an error naming the request id (the stored result is whole).
pub(super) struct ChunkWriter {
    id: Uuid,
    created: i64,
    model: String,
    endpoint: Endpoint,
    include_usage: bool,
    /// The content the client has.
    sent: String,
    /// The output since the last restart.
    current: String,
    /// The tool-call pieces the client has, and those since the last restart.
    sent_calls: Vec<ToolCallDelta>,
    current_calls: Vec<ToolCallDelta>,
    finished: bool,
}

impl ChunkWriter {
    pub(super) fn new(id: Uuid, model: String, endpoint: Endpoint, include_usage: bool) -> Self {
        Self {
            id,
            created: Utc::now().timestamp(),
            model,
            endpoint,
            include_usage,
            sent: String::new(),
            current: String::new(),
            sent_calls: Vec::new(),
            current_calls: Vec::new(),
            finished: false,
        }
    }

    fn on(&mut self, event: Option<FollowEvent>) -> Vec<Event> {
        match event {
            None => self.fail(
                "stream_interrupted",
                &format!(
                    "the stream was interrupted; the generation carries on: poll GET /api/v1/generate/{}",
                    self.id
                ),
            ),
            Some(FollowEvent::Start { .. }) => match self.endpoint {
                Endpoint::Chat => vec![self.chunk(json!({"role": "assistant", "content": ""}), None)],
                Endpoint::Text => Vec::new(),
            },
            Some(FollowEvent::Token { text, .. }) => {
                self.current.push_str(&text);
                self.flush()
            }
            Some(FollowEvent::Restart { .. }) => {
                self.current.clear();
                self.current_calls.clear();
                Vec::new()
            }
            Some(FollowEvent::ToolCall { delta, .. }) => {
                self.current_calls.push(delta);
                self.flush_calls()
            }
            Some(FollowEvent::Done { row, .. }) => {
                let mut frames = self.flush();
                frames.extend(self.flush_calls());
                if self.sent != self.current || self.sent_calls != self.current_calls {
                    frames.extend(self.fail(
                        "generation_restarted",
                        &format!(
                            "the generation restarted after part of its output was sent; its whole result is stored: GET /api/v1/generate/{}",
                            self.id
                        ),
                    ));
                    return frames;
                }
                let reason = finish_reason(row.finish_reason.as_deref());
                frames.push(self.chunk(json!({}), Some(reason)));
                if self.include_usage {
                    let usage = serde_json::to_value(usage(&row)).unwrap_or_default();
                    frames.push(self.frame(json!([]), usage));
                }
                frames.push(Event::default().data("[DONE]"));
                self.finished = true;
                frames
            }
            Some(FollowEvent::Failed { code, message, .. }) => self.fail(&code, &message),
        }
    }

    /// Sends what extends the client's content, if the current output does.
    fn flush(&mut self) -> Vec<Event> {
        if self.current.len() <= self.sent.len() || !self.current.starts_with(&self.sent) {
            return Vec::new();
        }
        let delta = self.current[self.sent.len()..].to_owned();
        self.sent.push_str(&delta);
        vec![match self.endpoint {
            Endpoint::Chat => self.chunk(json!({"content": delta}), None),
            Endpoint::Text => self.chunk(Value::from(delta), None),
        }]
    }

    /// Sends the tool-call pieces that extend the client's, if the current ones do: a call's
    /// first piece with its id, type and name, the next ones with more of its arguments.
    fn flush_calls(&mut self) -> Vec<Event> {
        if self.endpoint != Endpoint::Chat
            || self.current_calls.len() <= self.sent_calls.len()
            || !self.current_calls.starts_with(&self.sent_calls)
        {
            return Vec::new();
        }
        let new = self.current_calls[self.sent_calls.len()..].to_vec();
        self.sent_calls.extend(new.iter().cloned());
        new.iter()
            .map(|piece| {
                let call = match (&piece.id, &piece.name) {
                    (None, None) => json!({
                        "index": piece.index,
                        "function": {"arguments": piece.arguments},
                    }),
                    (id, name) => json!({
                        "index": piece.index,
                        "id": id,
                        "type": "function",
                        "function": {"name": name, "arguments": piece.arguments},
                    }),
                };
                self.chunk(json!({"tool_calls": [call]}), None)
            })
            .collect()
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Event {
        let choice = match self.endpoint {
            Endpoint::Chat => json!({
                "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason,
            }),
            Endpoint::Text => json!({
                "index": 0,
                "text": delta.as_str().unwrap_or_default(),
                "logprobs": null,
                "finish_reason": finish_reason,
            }),
        };
        self.frame(json!([choice]), Value::Null)
    }

    fn frame(&self, choices: Value, usage: Value) -> Event {
        let mut chunk = json!({
            "id": self.id,
            "object": self.endpoint.chunk_object(),
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
        });
        if self.include_usage
            && let Some(map) = chunk.as_object_mut()
        {
            map.insert("usage".into(), usage);
        }
        Event::default().data(chunk.to_string())
    }

    fn fail(&mut self, code: &str, message: &str) -> Vec<Event> {
        self.finished = true;
        let kind = if code == "cancelled" {
            "invalid_request_error"
        } else {
            "server_error"
        };
        let body = OpenAiErrorBody::new(OpenAiErrorDetail {
            message: message.to_owned(),
            kind: kind.into(),
            param: None,
            code: Some(code.to_owned()),
            request_id: Some(self.id),
            poll_url: None,
        });
        let data = serde_json::to_string(&body).unwrap_or_default();
        vec![Event::default().data(data)]
    }
}
