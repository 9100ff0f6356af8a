//! Streams across a fault: [`OpenStreams`] opened before it and read to their end in the
//! background (each must end with a terminal event, `done` with the stored result), and one
//! stream that tells whether tokens came live through the relay.

use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::load::{ChaosClient, unique_run};
use super::report::Tally;
use crate::sse::output_of;

/// Streams opened before a fault, read to their end in the background.
pub struct OpenStreams {
    wanted: usize,
    pub(crate) ids: Vec<Uuid>,
    readers: Vec<tokio::task::JoinHandle<Vec<crate::sse::SseMessage>>>,
}

impl OpenStreams {
    /// Opens `n` streams of `tokens` mock tokens, `token_delay_ms` apart, and waits for each
    /// one's `start` event.
    pub async fn open(client: &ChaosClient, n: usize, tokens: u32, token_delay_ms: u64) -> Self {
        let run = unique_run();
        let mut streams = Self {
            wanted: n,
            ids: Vec::new(),
            readers: Vec::new(),
        };
        for i in 0..n {
            let body = json!({"prompt": format!("chaos stream {run} {i}"), "model": "mock",
                              "parameters": {"max_tokens": tokens}, "mock": {"token_delay_ms": token_delay_ms}});
            let mut reader = client.open_stream(&body).await;
            let Some(start) = reader.next(Duration::from_secs(10)).await else {
                continue;
            };
            let Some(id) = start.data["request_id"]
                .as_str()
                .and_then(|s| s.parse().ok())
            else {
                continue;
            };
            streams.ids.push(id);
            streams.readers.push(tokio::spawn(async move {
                reader.until_terminal(Duration::from_secs(180)).await
            }));
        }
        streams
    }

    /// Waits for every stream's end; notes how each ended; a stream that ended without a
    /// terminal event, or `done` with an output other than the stored result, is a problem.
    pub async fn check(self, pool: &PgPool, t: &mut Tally) {
        let (mut done, mut errors, mut no_end, mut differ, mut restarted) = (0, 0, 0, 0, 0);
        for (reader, id) in self.readers.into_iter().zip(&self.ids) {
            let events = reader.await.unwrap();
            if events.iter().any(|m| m.event == "restart") {
                restarted += 1;
            }
            match events.last().map(|m| m.event.as_str()) {
                Some("done") => {
                    done += 1;
                    let stored: Option<String> =
                        sqlx::query_scalar("SELECT result FROM generation_requests WHERE id = $1")
                            .bind(id)
                            .fetch_one(pool)
                            .await
                            .unwrap();
                    if stored.as_deref() != Some(output_of(&events).as_str()) {
                        differ += 1;
                    }
                }
                Some("error") => errors += 1,
                _ => no_end += 1,
            }
        }
        t.note(format!(
            "{} streams open across the fault ({restarted} of them started over) ended: done {done} \
             (output = stored result: {}), error {errors}, without a terminal event {no_end}",
            self.ids.len(),
            done - differ
        ));
        if self.ids.len() < self.wanted {
            t.problem(format!(
                "only {} of {} streams started",
                self.ids.len(),
                self.wanted
            ));
        }
        if no_end > 0 {
            t.problem(format!("{no_end} streams ended without a terminal event"));
        }
        if differ > 0 {
            t.problem(format!(
                "{differ} streams ended `done` with an output different from the stored result"
            ));
        }
    }
}

/// Streams one request (10 tokens, 200 ms apart); returns its terminal event and whether its
/// tokens came live through the relay: the first one well before the request completed (not
/// only re-sent from the row at the end).
pub(crate) async fn live_stream(
    client: &ChaosClient,
    pool: &PgPool,
    label: &str,
) -> (Option<String>, bool) {
    let mut stream = client
        .open_stream(
            &json!({"prompt": format!("chaos live stream {label}"), "model": "mock",
                             "parameters": {"max_tokens": 10}, "mock": {"token_delay_ms": 200}}),
        )
        .await;
    let (mut first_token_at, mut id, mut end) = (None, None, None);
    while let Some(m) = stream.next(Duration::from_secs(30)).await {
        match m.event.as_str() {
            "start" => {
                id = m.data["request_id"]
                    .as_str()
                    .and_then(|s| s.parse::<Uuid>().ok())
            }
            "token" if first_token_at.is_none() => first_token_at = Some(chrono::Utc::now()),
            "done" | "error" => {
                end = Some(m.event);
                break;
            }
            _ => {}
        }
    }
    let completed_at: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT completed_at FROM generation_requests WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await
            .unwrap()
            .flatten();
    let live = matches!((first_token_at, completed_at),
        (Some(first), Some(done)) if first < done - chrono::Duration::milliseconds(500));
    (end, live)
}
