//! The streamed Response (`stream: true`, and `GET /v1/responses/{id}?stream=true`): a relay
//! follower's events turned into OpenAI's `response.*` SSE events, each with a
//! `sequence_number` that is the same for the same event on every connection, so that a client
//! resumes with `starting_after` and gets exactly the events it lacks.
//!
//! Numbering: `response.created` 0, `response.in_progress` 1, `response.output_item.added` 2,
//! `response.content_part.added` 3; the relay event with seq `s` (the worker's counter, from 1)
//! is number `3 + s`; the terminal events follow the last relay event: for a completion
//! `response.output_text.done`, `response.content_part.done`, `response.output_item.done`,
//! then `response.completed` (or `response.incomplete` for a length or content-filter cut);
//! for a failure an `error` event then `response.failed`; for a cancellation
//! `response.failed` whose response has status `cancelled`.
//!
//! A restart (a retry or a fallback after some output was relayed) cannot be shown to an
//! OpenAI client: deltas carry only output that extends what was already sent, so a retry that
//! regenerates the same text goes on seamlessly and its repeated tokens send nothing (their
//! numbers are skipped). If a retry's output diverges, the deltas stop there; the `done`
//! events and the final Response carry the whole stored text, which is authoritative. What is
//! sent is a function of the relay log alone, so every connection sees the same events.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::object::{self, ResponseError, ResponseObject, Settings};
use crate::http::stream::{FollowEvent, FollowStream};
use llm_shared::requests::Status;

/// The number of `response.output_text.delta` for relay seq 0 (relay seqs start at 1).
const BASE: u64 = 3;

/// The follower's events, rendered by the writer as they come (the follower is polled as the
/// client reads).
pub(super) fn sse(events: FollowStream, writer: EventWriter) -> Response {
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

/// Turns a follower's events into numbered `response.*` events, sending those numbered after
/// `after` (the client's `starting_after`).
pub(super) struct EventWriter {
    id: Uuid,
    settings: Settings,
    /// The object as it stands before any output.
    template: ResponseObject,
    after: Option<u64>,
    /// The text the deltas carried.
    sent: String,
    /// The output since the last restart.
    current: String,
    /// The highest number given out.
    last: u64,
    finished: bool,
}

impl EventWriter {
    pub(super) fn new(
        id: Uuid,
        settings: Settings,
        template: ResponseObject,
        after: Option<u64>,
    ) -> Self {
        Self {
            id,
            settings,
            template,
            after,
            sent: String::new(),
            current: String::new(),
            last: 0,
            finished: false,
        }
    }

    fn on(&mut self, event: Option<FollowEvent>) -> Vec<Event> {
        let mut out = Vec::new();
        match event {
            None => {
                // The process is stopping, or the follower lost the request: the stream ends
                // without its terminal event. The `error` event carries the last number
                // given out, not a new one: a background response resumed from it loses no
                // event that would have had the next number.
                self.finished = true;
                let number = self.last;
                self.push(
                    &mut out,
                    number,
                    "error",
                    json!({"code": "stream_interrupted", "param": null,
                           "message": format!("the stream was interrupted; the response carries on: GET /v1/responses/{}", object::response_id(self.id))}),
                );
            }
            // Tools are refused at create: no call of one is ever relayed here.
            Some(FollowEvent::ToolCall { .. }) => {}
            Some(FollowEvent::Start { status, .. }) => {
                let created = self.object(match status {
                    Status::Pending => "queued",
                    _ => "in_progress",
                });
                self.push(
                    &mut out,
                    0,
                    "response.created",
                    json!({"response": created}),
                );
                let running = self.object("in_progress");
                self.push(
                    &mut out,
                    1,
                    "response.in_progress",
                    json!({"response": running}),
                );
                let mut item = object::message(self.id, "in_progress", String::new());
                item.content.clear();
                self.push(
                    &mut out,
                    2,
                    "response.output_item.added",
                    json!({"output_index": 0, "item": item}),
                );
                self.push(
                    &mut out,
                    3,
                    "response.content_part.added",
                    json!({"item_id": item.id, "output_index": 0, "content_index": 0,
                           "part": object::output_text(String::new())}),
                );
            }
            Some(FollowEvent::Token { seq, text }) => {
                self.current.push_str(&text);
                if self.current.len() > self.sent.len() && self.current.starts_with(&self.sent) {
                    let delta = self.current[self.sent.len()..].to_owned();
                    self.sent.clone_from(&self.current);
                    let item_id = self.item_id();
                    self.push(
                        &mut out,
                        BASE.saturating_add(seq),
                        "response.output_text.delta",
                        json!({"item_id": item_id, "output_index": 0, "content_index": 0,
                               "delta": delta, "logprobs": []}),
                    );
                }
            }
            Some(FollowEvent::Restart { .. }) => self.current.clear(),
            Some(FollowEvent::Done { seq, row }) => {
                self.finished = true;
                let response = object::from_row(&row, &self.settings);
                let item = response.output.first().cloned().unwrap_or_else(|| {
                    object::message(self.id, "completed", row.result.clone().unwrap_or_default())
                });
                let text = item
                    .content
                    .first()
                    .map(|p| p.text.clone())
                    .unwrap_or_default();
                let n = BASE.saturating_add(seq);
                self.push(
                    &mut out,
                    n,
                    "response.output_text.done",
                    json!({"item_id": item.id, "output_index": 0, "content_index": 0,
                           "text": text, "logprobs": []}),
                );
                self.push(
                    &mut out,
                    n + 1,
                    "response.content_part.done",
                    json!({"item_id": item.id, "output_index": 0, "content_index": 0,
                           "part": object::output_text(text)}),
                );
                self.push(
                    &mut out,
                    n + 2,
                    "response.output_item.done",
                    json!({"output_index": 0, "item": item}),
                );
                let kind = if response.status == "incomplete" {
                    "response.incomplete"
                } else {
                    "response.completed"
                };
                self.push(&mut out, n + 3, kind, json!({"response": response}));
            }
            Some(FollowEvent::Failed { seq, code, message }) => {
                self.finished = true;
                let n = BASE.saturating_add(seq);
                if code == "cancelled" {
                    let cancelled = self.object("cancelled");
                    self.push(
                        &mut out,
                        n,
                        "response.failed",
                        json!({"response": cancelled}),
                    );
                } else {
                    self.push(
                        &mut out,
                        n,
                        "error",
                        json!({"code": code, "message": message, "param": null}),
                    );
                    let mut failed = self.object("failed");
                    failed.error = Some(ResponseError {
                        code: if code == "rejected" {
                            "invalid_prompt".into()
                        } else {
                            "server_error".into()
                        },
                        message: format!("{code}: {message}"),
                    });
                    self.push(
                        &mut out,
                        n + 1,
                        "response.failed",
                        json!({"response": failed}),
                    );
                }
            }
        }
        out
    }

    fn object(&self, status: &'static str) -> ResponseObject {
        let mut object = self.template.clone();
        object.status = status;
        object
    }

    fn item_id(&self) -> String {
        format!("msg_{}", self.id.simple())
    }

    /// Adds the event numbered `number`, unless the client has it already.
    fn push(&mut self, out: &mut Vec<Event>, number: u64, kind: &str, fields: Value) {
        self.last = self.last.max(number);
        if self.after.is_some_and(|after| number <= after) {
            return;
        }
        let mut data = match fields {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        data.insert("type".into(), Value::from(kind));
        data.insert("sequence_number".into(), Value::from(number));
        out.push(sse_event(kind, &data));
    }
}

fn sse_event(kind: &str, data: &impl Serialize) -> Event {
    let data = serde_json::to_string(data).unwrap_or_default();
    Event::default().event(kind).data(data)
}
