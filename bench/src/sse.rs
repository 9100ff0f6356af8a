//! Reading the api's server-sent events: a stream's request id, its token events, its end.

use uuid::Uuid;

/// Counts the token events of an SSE response.
pub struct SseCounter {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
    tokens: usize,
    /// The `data:` of the last event read.
    data: String,
}

impl SseCounter {
    pub fn new(response: reqwest::Response) -> Self {
        use futures::StreamExt;
        Self {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
            tokens: 0,
            data: String::new(),
        }
    }

    /// The next event's name, or `None` at the end.
    async fn next_event(&mut self) -> Option<String> {
        use futures::StreamExt;
        loop {
            if let Some(pos) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..pos + 2).collect();
                if let Some(name) = block.lines().find_map(|l| l.strip_prefix("event: ")) {
                    self.data = block
                        .lines()
                        .filter_map(|l| l.strip_prefix("data: "))
                        .collect();
                    return Some(name.to_owned());
                }
                continue;
            }
            let chunk = self.body.next().await?.ok()?;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// The request id of the stream's `start` event.
    pub async fn request_id(&mut self) -> Option<Uuid> {
        while let Some(event) = self.next_event().await {
            if event == "start" {
                let start: serde_json::Value = serde_json::from_str(&self.data).ok()?;
                return start["request_id"].as_str()?.parse().ok();
            }
        }
        None
    }

    pub async fn next_token(&mut self) -> bool {
        while let Some(event) = self.next_event().await {
            if event == "token" {
                self.tokens += 1;
                return true;
            }
            if event == "done" || event == "error" {
                return false;
            }
        }
        false
    }

    /// The token events read so far.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Reads to the terminal event; returns the tokens seen.
    pub async fn until_done(&mut self) -> usize {
        while let Some(event) = self.next_event().await {
            match event.as_str() {
                "token" => self.tokens += 1,
                "done" | "error" => break,
                _ => {}
            }
        }
        self.tokens
    }
}
