//! The streamed answer (`stream: true`): the relay follower's events turned into Anthropic's
//! event sequence — `message_start`, `content_block_start`, `ping`, `content_block_delta`s
//! (`text_delta`), `content_block_stop`, then per tool call a `tool_use` block (its start,
//! `input_json_delta`s, its stop), `message_delta` (stop reason, usage), `message_stop` — or
//! ended by an `error` event in Anthropic's shape. Blocks are numbered in the order they open,
//! and a closed block gets nothing more: text that follows a tool call opens a text block of
//! its own. Keep-alives are `ping` events.

use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};
use uuid::Uuid;

use super::error::{AnthropicErrorBody, AnthropicErrorDetail};
use super::response::{failure_kind, message_id, stop_reason, usage};
use crate::http::stream::{FollowEvent, FollowStream};
use llm_shared::generation::ToolCallDelta;

/// The follower's events, mapped by the writer as they come (no task or channel of its own:
/// the follower is polled as the client reads).
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
                .event(ping()),
        )
        .into_response()
}

fn ping() -> Event {
    Event::default().event("ping").data(r#"{"type": "ping"}"#)
}

/// Turns a follower's events into Anthropic's. A `restart` cannot be shown to an Anthropic
/// client, so the writer sends only output that extends what the client already has: a retry
/// that regenerates the same text goes on seamlessly; one whose result no longer extends what
/// was sent ends the stream with an error naming the request id (the stored result is whole).
pub(super) struct EventWriter {
    id: Uuid,
    model: String,
    /// `message_start` and the content block's start were sent.
    started: bool,
    /// The text the client has.
    sent: String,
    /// The output since the last restart.
    current: String,
    /// The tool-call pieces the client has, and those since the last restart.
    sent_calls: Vec<ToolCallDelta>,
    current_calls: Vec<ToolCallDelta>,
    /// The content block open, if one is.
    open_block: Option<Block>,
    /// Blocks opened so far: the next one's index.
    blocks: u32,
    /// The tool calls whose block was opened (by the call's index).
    opened_calls: Vec<u32>,
    finished: bool,
}

/// An open content block: its index, and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Block {
    index: u32,
    /// `None`: text; `Some(n)`: tool call n's `tool_use`.
    call: Option<u32>,
}

impl EventWriter {
    pub(super) fn new(id: Uuid, model: String) -> Self {
        Self {
            id,
            model,
            started: false,
            sent: String::new(),
            current: String::new(),
            sent_calls: Vec::new(),
            current_calls: Vec::new(),
            open_block: None,
            blocks: 0,
            opened_calls: Vec::new(),
            finished: false,
        }
    }

    fn on(&mut self, event: Option<FollowEvent>) -> Vec<Event> {
        match event {
            None => self.fail(
                "api_error",
                &format!(
                    "the stream was interrupted; the generation carries on: poll GET /api/v1/generate/{}",
                    self.id
                ),
            ),
            Some(FollowEvent::Start { .. }) => self.start(),
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
                let mut frames = self.start();
                frames.extend(self.flush());
                frames.extend(self.flush_calls());
                if self.sent != self.current || self.sent_calls != self.current_calls {
                    frames.extend(self.fail(
                        "api_error",
                        &format!(
                            "the generation restarted after part of its output was sent; its whole result is stored: GET /api/v1/generate/{}",
                            self.id
                        ),
                    ));
                    return frames;
                }
                let usage = usage(&row);
                frames.extend(self.close_block());
                frames.push(frame(
                    "message_delta",
                    json!({
                        "type": "message_delta",
                        "delta": {
                            "stop_reason": stop_reason(row.finish_reason.as_deref()),
                            "stop_sequence": null,
                        },
                        "usage": {
                            "input_tokens": usage.input_tokens,
                            "output_tokens": usage.output_tokens,
                        },
                    }),
                ));
                frames.push(frame("message_stop", json!({"type": "message_stop"})));
                self.finished = true;
                frames
            }
            Some(FollowEvent::Failed { code, message, .. }) => {
                let (_, kind) = failure_kind(Some(&code));
                self.fail(kind, &message)
            }
        }
    }

    /// The message's opening events, once.
    fn start(&mut self) -> Vec<Event> {
        if self.started {
            return Vec::new();
        }
        self.started = true;
        let message = json!({
            "id": message_id(self.id),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            // Known once the generation ends: `message_delta` carries them.
            "usage": {"input_tokens": 0, "output_tokens": 0},
        });
        let mut frames = vec![frame(
            "message_start",
            json!({"type": "message_start", "message": message}),
        )];
        frames.extend(self.open_text());
        frames.push(ping());
        frames
    }

    /// Opens a text block after the one open (closed first), unless a text block is open.
    fn open_text(&mut self) -> Vec<Event> {
        if matches!(self.open_block, Some(Block { call: None, .. })) {
            return Vec::new();
        }
        let mut frames = self.close_block();
        let index = self.open(None);
        frames.push(frame(
            "content_block_start",
            json!({"type": "content_block_start", "index": index,
                   "content_block": {"type": "text", "text": ""}}),
        ));
        frames
    }

    /// Numbers a new block and makes it the open one.
    fn open(&mut self, call: Option<u32>) -> u32 {
        let index = self.blocks;
        self.blocks = self.blocks.saturating_add(1);
        self.open_block = Some(Block { index, call });
        index
    }

    /// Sends what extends the client's text, if the current output does.
    fn flush(&mut self) -> Vec<Event> {
        if self.current.len() <= self.sent.len() || !self.current.starts_with(&self.sent) {
            return Vec::new();
        }
        let delta = self.current[self.sent.len()..].to_owned();
        self.sent.push_str(&delta);
        let mut frames = self.start();
        frames.extend(self.open_text());
        let index = self.open_block.map_or(0, |block| block.index);
        frames.push(frame(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index,
                   "delta": {"type": "text_delta", "text": delta}}),
        ));
        frames
    }

    /// Ends the open content block, if one is.
    fn close_block(&mut self) -> Vec<Event> {
        self.open_block
            .take()
            .map(|block| {
                frame(
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": block.index}),
                )
            })
            .into_iter()
            .collect()
    }

    /// Sends the tool-call pieces that extend the client's, if the current ones do: a call's
    /// first piece opens its `tool_use` block (after closing the one before), its arguments
    /// come as `input_json_delta`s. A piece of a call whose block was closed already (its
    /// pieces interleaved with another's) is dropped: Anthropic's blocks do not reopen, and
    /// the stored result has the whole call.
    fn flush_calls(&mut self) -> Vec<Event> {
        if self.current_calls.len() <= self.sent_calls.len()
            || !self.current_calls.starts_with(&self.sent_calls)
        {
            return Vec::new();
        }
        let new = self.current_calls[self.sent_calls.len()..].to_vec();
        self.sent_calls.extend(new.iter().cloned());
        let mut frames = self.start();
        for piece in new {
            let index = match self.open_block {
                Some(Block {
                    index,
                    call: Some(call),
                }) if call == piece.index => index,
                _ if self.opened_calls.contains(&piece.index) => {
                    continue;
                }
                _ => {
                    frames.extend(self.close_block());
                    let index = self.open(Some(piece.index));
                    self.opened_calls.push(piece.index);
                    frames.push(frame(
                        "content_block_start",
                        json!({"type": "content_block_start", "index": index,
                           "content_block": {"type": "tool_use",
                               "id": piece.id.unwrap_or_default(),
                               "name": piece.name.unwrap_or_default(), "input": {}}}),
                    ));
                    index
                }
            };
            if !piece.arguments.is_empty() {
                frames.push(frame(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index,
                           "delta": {"type": "input_json_delta",
                                     "partial_json": piece.arguments}}),
                ));
            }
        }
        frames
    }

    fn fail(&mut self, kind: &str, message: &str) -> Vec<Event> {
        self.finished = true;
        let body = AnthropicErrorBody::new(AnthropicErrorDetail::new(kind, message), Some(self.id));
        let data = serde_json::to_value(&body).unwrap_or(Value::Null);
        vec![frame("error", data)]
    }
}

fn frame(event: &str, data: Value) -> Event {
    Event::default().event(event).data(data.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(writer: &mut EventWriter, event: FollowEvent) -> usize {
        writer.on(Some(event)).len()
    }

    #[test]
    fn a_retry_that_diverges_from_what_was_sent_sends_nothing_more_of_it() {
        let mut writer = EventWriter::new(Uuid::nil(), "mock".into());
        let start = FollowEvent::Start {
            request_id: Uuid::nil(),
            model: "mock".into(),
            status: llm_shared::requests::Status::Pending,
        };
        assert_eq!(
            names(&mut writer, start),
            3,
            "message_start, block start, ping"
        );
        let token = |text: &str| FollowEvent::Token {
            seq: 1,
            text: text.into(),
        };
        assert_eq!(names(&mut writer, token("Half ")), 1);
        writer.on(Some(FollowEvent::Restart {
            seq: 2,
            reason: "retry".into(),
        }));
        assert_eq!(names(&mut writer, token("Another")), 0);
        assert_eq!(writer.sent, "Half ");
    }

    /// The frames as a client reads them: (event, data) in order.
    async fn wire(frames: Vec<Event>) -> Vec<(String, Value)> {
        let stream = futures::stream::iter(frames.into_iter().map(Ok::<_, Infallible>));
        let body = axum::body::to_bytes(Sse::new(stream).into_response().into_body(), 1 << 20)
            .await
            .unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        text.split("\n\n")
            .filter(|frame| !frame.is_empty())
            .map(|frame| {
                let field = |name: &str| {
                    frame
                        .lines()
                        .find_map(|line| line.strip_prefix(name))
                        .unwrap_or_default()
                        .to_owned()
                };
                let data = field("data: ");
                (field("event: "), serde_json::from_str(&data).unwrap())
            })
            .collect()
    }

    #[tokio::test]
    async fn text_after_a_tool_call_opens_a_block_of_its_own_and_closed_blocks_get_nothing() {
        let mut writer = EventWriter::new(Uuid::nil(), "mock".into());
        let mut frames = writer.on(Some(FollowEvent::Token {
            seq: 1,
            text: "Let me look. ".into(),
        }));
        let call = |arguments: &str, first: bool| FollowEvent::ToolCall {
            seq: 2,
            delta: ToolCallDelta {
                index: 0,
                id: first.then(|| "call_1".to_owned()),
                name: first.then(|| "lookup".to_owned()),
                arguments: arguments.into(),
            },
        };
        frames.extend(writer.on(Some(call("{\"q\":", true))));
        frames.extend(writer.on(Some(call("\"x\"}", false))));
        frames.extend(writer.on(Some(FollowEvent::Token {
            seq: 3,
            text: "Done.".into(),
        })));
        let events = wire(frames).await;
        let mut open: Option<u64> = None;
        let mut opened = Vec::new();
        for (event, data) in &events {
            let index = data["index"].as_u64();
            match event.as_str() {
                "content_block_start" => {
                    assert_eq!(open, None, "a block opened over an open one: {events:?}");
                    open = index;
                    opened.push((index, data["content_block"]["type"].clone()));
                }
                "content_block_delta" => {
                    assert_eq!(index, open, "a delta outside the open block: {events:?}")
                }
                "content_block_stop" => {
                    assert_eq!(index, open, "{events:?}");
                    open = None;
                }
                _ => {}
            }
        }
        assert_eq!(
            opened,
            vec![
                (Some(0), json!("text")),
                (Some(1), json!("tool_use")),
                (Some(2), json!("text")),
            ]
        );
        assert_eq!(open, Some(2));
    }
}
