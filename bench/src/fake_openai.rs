//! A fake OpenAI Chat Completions endpoint with the timing of real generations and a declared
//! request limit: what the LLM-shaped phase pays its calls to.
//!
//! Each call draws a time to first token (300–800 ms), a speed (30–80 tokens/s) and a length
//! (200–800 tokens, at most the request's `max_tokens`), then answers as OpenAI does: one JSON
//! body once the whole answer is written, or (`"stream": true`) server-sent events, one chunk
//! per token, then the usage chunk and `[DONE]`. Above its requests-per-minute limit it answers
//! `429` with `Retry-After`, as OpenAI does, and counts them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// What the fake saw, read by the phase while it runs.
#[derive(Default)]
pub struct Counters {
    /// Calls answered (a `200`, streamed or not).
    pub answered: AtomicU64,
    /// Calls refused with `429` (over the limit).
    pub limited: AtomicU64,
    /// Calls open now, and the most at once.
    pub in_flight: AtomicU64,
    pub peak_in_flight: AtomicU64,
    /// Milliseconds from the fake's start to the first and the latest call it accepted.
    pub first_accepted_ms: AtomicU64,
    pub last_accepted_ms: AtomicU64,
}

/// Requests allowed per minute, as a bucket refilled continuously and holding a second's
/// worth: a burst above the rate is refused, as a provider's limiter does.
struct Bucket {
    per_sec: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Takes one request; `Err(seconds)` until the next one is allowed when over the limit.
    fn take(&mut self) -> Result<(), u64> {
        let now = Instant::now();
        let capacity = self.per_sec.max(1.0);
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.per_sec).min(capacity);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - self.tokens) / self.per_sec).ceil().max(1.0) as u64)
        }
    }
}

struct Fake {
    counters: Arc<Counters>,
    bucket: Option<Mutex<Bucket>>,
    started: Instant,
    seed: AtomicU64,
}

/// A running fake: its base URL (what `OPENAI_BASE_URL` takes) and its counters.
pub struct FakeOpenAi {
    pub url: String,
    pub counters: Arc<Counters>,
}

impl FakeOpenAi {
    /// Serves from a thread of its own (a single-threaded runtime, as the load generator
    /// runs). `requests_per_minute` 0: no limit.
    pub fn start(requests_per_minute: u64) -> anyhow::Result<Self> {
        let counters = Arc::new(Counters::default());
        let per_sec = requests_per_minute as f64 / 60.0;
        let fake = Arc::new(Fake {
            counters: counters.clone(),
            bucket: (requests_per_minute > 0).then(|| {
                Mutex::new(Bucket {
                    per_sec,
                    tokens: per_sec.max(1.0),
                    at: Instant::now(),
                })
            }),
            started: Instant::now(),
            seed: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
        });
        let app = axum::Router::new().route(
            "/v1/chat/completions",
            axum::routing::post(move |body: axum::Json<Value>| {
                let fake = fake.clone();
                async move { fake.answer(&body.0).await }
            }),
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let url = format!("http://{}/v1", listener.local_addr()?);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("fake-openai".into())
            .spawn(move || {
                runtime.block_on(async move {
                    if let Ok(listener) = tokio::net::TcpListener::from_std(listener) {
                        let _ = axum::serve(listener, app).await;
                    }
                })
            })?;
        Ok(Self { url, counters })
    }
}

/// One call's timing.
struct Timing {
    first_token: Duration,
    per_token: Duration,
    tokens: u64,
}

/// Decrements the calls in flight when the answer has been written (or dropped).
struct Open(Arc<Counters>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

impl Fake {
    /// A pseudo-random number in `lo..=hi` (splitmix64 over a shared counter).
    fn draw(&self, lo: u64, hi: u64) -> u64 {
        let mut z = self.seed.fetch_add(0x9E37_79B9_7F4A_7C15, Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        lo + z % (hi - lo + 1)
    }

    async fn answer(&self, request: &Value) -> Response {
        if let Some(bucket) = &self.bucket {
            let taken = bucket.lock().map_or(Ok(()), |mut b| b.take());
            if let Err(retry_after) = taken {
                self.counters.limited.fetch_add(1, Relaxed);
                let body = json!({"error": {"message": "Rate limit reached for requests",
                    "type": "requests", "param": null, "code": "rate_limit_exceeded"}});
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, retry_after.to_string())],
                    axum::Json(body),
                )
                    .into_response();
            }
        }
        let now_ms = self.started.elapsed().as_millis() as u64;
        let _ = self
            .counters
            .first_accepted_ms
            .compare_exchange(0, now_ms, Relaxed, Relaxed);
        self.counters.last_accepted_ms.fetch_max(now_ms, Relaxed);
        let open = self.counters.in_flight.fetch_add(1, Relaxed) + 1;
        self.counters.peak_in_flight.fetch_max(open, Relaxed);
        let guard = Open(self.counters.clone());

        let cap = ["max_completion_tokens", "max_tokens"]
            .iter()
            .find_map(|k| request[*k].as_u64())
            .unwrap_or(u64::MAX)
            .max(1);
        let timing = Timing {
            first_token: Duration::from_millis(self.draw(300, 800)),
            per_token: Duration::from_secs_f64(1.0 / self.draw(30, 80) as f64),
            tokens: self.draw(200, 800).min(cap),
        };
        self.counters.answered.fetch_add(1, Relaxed);
        if request["stream"].as_bool().unwrap_or(false) {
            stream(timing, guard)
        } else {
            tokio::time::sleep(timing.first_token + timing.per_token * timing.tokens as u32).await;
            drop(guard);
            let text = "word ".repeat(timing.tokens as usize);
            axum::Json(json!({
                "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_700_000_000,
                "model": "gpt-4o-mini-2024-07-18",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text,
                             "refusal": null}, "logprobs": null, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 20, "completion_tokens": timing.tokens,
                          "total_tokens": 20 + timing.tokens}
            }))
            .into_response()
        }
    }
}

fn chunk(delta: Value, finish: Value) -> String {
    format!(
        "data: {}\n\n",
        json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1_700_000_000,
               "model": "gpt-4o-mini-2024-07-18",
               "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
    )
}

/// The answer as OpenAI streams it: a role chunk at the first token, one chunk per token, the
/// finishing chunk, the usage chunk, `[DONE]`.
fn stream(timing: Timing, guard: Open) -> Response {
    let events = futures::stream::unfold((0u64, Some(guard)), move |(sent, guard)| async move {
        let guard = guard?;
        let piece = if sent == 0 {
            tokio::time::sleep(timing.first_token).await;
            chunk(json!({"role": "assistant", "content": ""}), Value::Null)
        } else if sent <= timing.tokens {
            tokio::time::sleep(timing.per_token).await;
            chunk(json!({"content": "word "}), Value::Null)
        } else {
            let usage = json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk",
                "created": 1_700_000_000, "model": "gpt-4o-mini-2024-07-18", "choices": [],
                "usage": {"prompt_tokens": 20, "completion_tokens": timing.tokens,
                          "total_tokens": 20 + timing.tokens}});
            let last = format!(
                "{}data: {usage}\n\ndata: [DONE]\n\n",
                chunk(json!({}), json!("stop"))
            );
            drop(guard);
            return Some((Ok::<_, std::io::Error>(last), (sent + 1, None)));
        };
        Some((Ok(piece), (sent + 1, Some(guard))))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(events))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
