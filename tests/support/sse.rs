//! A small server-sent-events client for tests: reads `event:`, `id:` and `data:` fields.

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct SseMessage {
    pub event: String,
    pub id: Option<u64>,
    pub data: Value,
}

pub struct SseReader {
    pub status: u16,
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl SseReader {
    pub async fn open(request: reqwest::RequestBuilder) -> Self {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        Self {
            status,
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    /// The next event (comments and keep-alives skipped), or `None` at the end of the body or
    /// when `within` passes.
    pub async fn next(&mut self, within: Duration) -> Option<SseMessage> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(pos) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..pos + 2).collect();
                let mut msg = SseMessage {
                    event: "message".into(),
                    id: None,
                    data: Value::Null,
                };
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        msg.event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        msg.id = v.trim().parse().ok();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if data.is_empty() && msg.event == "message" {
                    continue; // a comment (keep-alive)
                }
                msg.data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                return Some(msg);
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next())
                .await
                .ok()??
                .ok()?;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Events up to and including the terminal one (`done` or `error`).
    pub async fn until_terminal(&mut self, within: Duration) -> Vec<SseMessage> {
        let deadline = tokio::time::Instant::now() + within;
        let mut out = Vec::new();
        while let Some(msg) = self
            .next(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await
        {
            let terminal = msg.event == "done" || msg.event == "error";
            out.push(msg);
            if terminal {
                break;
            }
        }
        out
    }
}

/// The output a client assembles from token and restart events.
pub fn output_of(messages: &[SseMessage]) -> String {
    let mut text = String::new();
    for m in messages {
        match m.event.as_str() {
            "token" => text.push_str(m.data["text"].as_str().unwrap_or_default()),
            "restart" => text.clear(),
            _ => {}
        }
    }
    text
}
