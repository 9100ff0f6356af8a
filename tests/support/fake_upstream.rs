//! Fake provider upstreams for tests: a local HTTP server that answers each request with the
//! next scripted reply, in the providers' real wire formats (JSON bodies, server-sent events,
//! newline-delimited JSON), including their failures, and records what it was sent. It can
//! also enforce a provider's limits ([`FakeUpstream::enforce`]): calls at once and requests per
//! minute, answering 429 above them and counting what it saw.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A JSON body with a status and extra headers.
    Json {
        status: u16,
        body: Value,
        headers: Vec<(&'static str, String)>,
    },
    /// Any body, as is (malformed answers).
    Raw {
        status: u16,
        content_type: &'static str,
        body: String,
    },
    /// A streamed body: each piece is written in turn; `cut` closes the connection abruptly
    /// after the pieces (a body error instead of a clean end).
    Stream {
        content_type: &'static str,
        pieces: Vec<String>,
        gap: Duration,
        cut: bool,
    },
    /// Waits this long before answering with the inner reply.
    Delayed(Duration, Box<Reply>),
}

/// A request the fake received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    /// The query string (`api-version=…`), empty when none.
    pub query: String,
    pub headers: HeaderMap,
    pub body: Value,
}

/// Computes the reply to a request from the request itself and its number (0, 1, …): for
/// fakes that answer many concurrent callers (e.g. streaming or not, as each one asked).
pub type Responder = Arc<dyn Fn(&Received, usize) -> Reply + Send + Sync>;

/// Limits a fake enforces as a provider does. Requests per minute are a token bucket holding
/// one second's worth (at least one), refilled continuously: providers enforce per-minute
/// limits over shorter periods too, so a minute's requests sent at once are refused.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProviderLimits {
    pub max_concurrency: Option<usize>,
    pub requests_per_minute: Option<u32>,
}

/// What an enforcing fake saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct LimitStats {
    /// Calls answered within the limits.
    pub served: usize,
    /// Calls refused with the 429 (over a limit).
    pub refused: usize,
    /// The most calls in flight at once.
    pub max_in_flight: usize,
}

struct Enforcer {
    limits: ProviderLimits,
    refusal: Reply,
    in_flight: usize,
    bucket: f64,
    refilled_at: std::time::Instant,
    stats: LimitStats,
}

impl Enforcer {
    /// Admits a call (`None`) or answers the refusal.
    fn admit(&mut self) -> Option<Reply> {
        if let Some(rpm) = self.limits.requests_per_minute {
            let per_sec = f64::from(rpm) / 60.0;
            let now = std::time::Instant::now();
            let elapsed = (now - self.refilled_at).as_secs_f64();
            self.bucket = (self.bucket + elapsed * per_sec).min(per_sec.max(1.0));
            self.refilled_at = now;
        }
        let over_concurrency = self
            .limits
            .max_concurrency
            .is_some_and(|max| self.in_flight >= max);
        let over_rate = self.limits.requests_per_minute.is_some() && self.bucket < 1.0;
        if over_concurrency || over_rate {
            self.stats.refused += 1;
            return Some(self.refusal.clone());
        }
        if self.limits.requests_per_minute.is_some() {
            self.bucket -= 1.0;
        }
        self.in_flight += 1;
        self.stats.served += 1;
        self.stats.max_in_flight = self.stats.max_in_flight.max(self.in_flight);
        None
    }
}

/// A call counted in flight until its answer is ready (or its caller went away).
struct InFlight(Arc<Mutex<Option<Enforcer>>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(enforcer) = self.0.lock().unwrap().as_mut() {
            enforcer.in_flight -= 1;
        }
    }
}

#[derive(Clone)]
pub struct FakeUpstream {
    pub base_url: String,
    script: Arc<Mutex<VecDeque<Reply>>>,
    fallback: Arc<Mutex<Option<Reply>>>,
    responder: Arc<Mutex<Option<Responder>>>,
    received: Arc<Mutex<Vec<Received>>>,
    answered: Arc<Mutex<Vec<(usize, Received)>>>,
    enforcer: Arc<Mutex<Option<Enforcer>>>,
}

impl FakeUpstream {
    /// Starts a fake on a random local port; `path_prefix` is appended to its base URL (e.g.
    /// `/v1` for OpenAI-style base URLs).
    pub async fn start(path_prefix: &str) -> Self {
        let script = Arc::new(Mutex::new(VecDeque::new()));
        let fallback = Arc::new(Mutex::new(None));
        let responder = Arc::new(Mutex::new(None::<Responder>));
        let received = Arc::new(Mutex::new(Vec::new()));
        let answered = Arc::new(Mutex::new(Vec::new()));
        let enforcer = Arc::new(Mutex::new(None::<Enforcer>));
        let state = (
            script.clone(),
            fallback.clone(),
            responder.clone(),
            received.clone(),
            answered.clone(),
            enforcer.clone(),
        );
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
                let (script, fallback, responder, received, answered, enforcer) = state.clone();
                async move {
                    let body_json = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let request = Received {
                        path: uri.path().to_owned(),
                        query: uri.query().unwrap_or_default().to_owned(),
                        headers,
                        body: body_json,
                    };
                    let number = {
                        let mut all = received.lock().unwrap();
                        all.push(request.clone());
                        all.len() - 1
                    };
                    let refused = enforcer.lock().unwrap().as_mut().map(Enforcer::admit);
                    let _in_flight = match refused {
                        Some(Some(refusal)) => return respond(refusal).await,
                        Some(None) => Some(InFlight(enforcer.clone())),
                        None => None,
                    };
                    let respond_with = responder.lock().unwrap().clone();
                    let reply = match respond_with {
                        Some(f) => Some(f(&request, number)),
                        None => script
                            .lock()
                            .unwrap()
                            .pop_front()
                            .or_else(|| fallback.lock().unwrap().clone()),
                    };
                    let response = respond(reply.unwrap_or(Reply::Raw {
                        status: 599,
                        content_type: "text/plain",
                        body: "fake upstream: no reply scripted".into(),
                    }))
                    .await;
                    // Reached only if the caller still waited (axum drops this future when
                    // the connection closes).
                    answered.lock().unwrap().push((number, request));
                    response
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            base_url: format!("http://{addr}{path_prefix}"),
            script,
            fallback,
            responder,
            received,
            answered,
            enforcer,
        }
    }

    /// Enforces `limits` from now on: a call over them is answered `refusal` (a 429 in the
    /// provider's format) and counted in [`Self::limit_stats`].
    pub fn enforce(&self, limits: ProviderLimits, refusal: Reply) -> &Self {
        let per_sec = limits
            .requests_per_minute
            .map_or(1.0, |rpm| f64::from(rpm) / 60.0);
        *self.enforcer.lock().unwrap() = Some(Enforcer {
            limits,
            refusal,
            in_flight: 0,
            bucket: per_sec.max(1.0),
            refilled_at: std::time::Instant::now(),
            stats: LimitStats::default(),
        });
        self
    }

    /// What the limits of [`Self::enforce`] saw (all zero when none are enforced).
    pub fn limit_stats(&self) -> LimitStats {
        self.enforcer
            .lock()
            .unwrap()
            .as_ref()
            .map(|e| e.stats)
            .unwrap_or_default()
    }

    /// Answers every request with what `f` computes (instead of a script).
    pub fn respond_with(
        &self,
        f: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static,
    ) -> &Self {
        *self.responder.lock().unwrap() = Some(Arc::new(f));
        self
    }

    /// Queues replies, answered in order.
    pub fn then(&self, reply: Reply) -> &Self {
        self.script.lock().unwrap().push_back(reply);
        self
    }

    /// The reply once the script is used up.
    pub fn always(&self, reply: Reply) -> &Self {
        *self.fallback.lock().unwrap() = Some(reply);
        self
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The requests answered, each with its number (as [`Self::respond_with`] gets it): the
    /// reply was sent (a streamed one started) after any delay, to a caller still waiting. A
    /// caller that gave up or died while the reply was delayed is not counted.
    pub fn answered(&self) -> Vec<(usize, Received)> {
        self.answered.lock().unwrap().clone()
    }
}

fn respond(reply: Reply) -> std::pin::Pin<Box<dyn Future<Output = Response> + Send>> {
    Box::pin(async move {
        match reply {
            Reply::Delayed(wait, inner) => {
                tokio::time::sleep(wait).await;
                respond(*inner).await
            }
            Reply::Json {
                status,
                body,
                headers,
            } => {
                let mut builder = Response::builder()
                    .status(status)
                    .header("content-type", "application/json");
                for (k, v) in headers {
                    builder = builder.header(k, v);
                }
                builder.body(Body::from(body.to_string())).unwrap()
            }
            Reply::Raw {
                status,
                content_type,
                body,
            } => Response::builder()
                .status(status)
                .header("content-type", content_type)
                .body(Body::from(body))
                .unwrap(),
            Reply::Stream {
                content_type,
                pieces,
                gap,
                cut,
            } => {
                let stream = futures::stream::unfold(
                    (pieces.into_iter(), false, false),
                    move |(mut it, first_sent, ended)| async move {
                        if ended {
                            return None;
                        }
                        match it.next() {
                            Some(piece) => {
                                if first_sent {
                                    tokio::time::sleep(gap).await;
                                }
                                Some((
                                    Ok::<Bytes, std::io::Error>(Bytes::from(piece)),
                                    (it, true, false),
                                ))
                            }
                            None if cut => Some((
                                Err(std::io::Error::other("connection cut")),
                                (it, true, true),
                            )),
                            None => None,
                        }
                    },
                );
                Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", content_type)
                    .body(Body::from_stream(stream))
                    .unwrap()
            }
        }
    })
}

/// Replies in OpenAI's Chat Completions formats.
pub mod openai {
    use super::*;

    pub fn success(text: &str, prompt_tokens: u32, completion_tokens: u32) -> Reply {
        Reply::Json {
            status: 200,
            body: json!({
                "id": "chatcmpl-123", "object": "chat.completion", "created": 1_700_000_000, "model": "gpt-4o-2024-08-06",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": null}, "logprobs": null, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
            }),
            headers: vec![],
        }
    }

    pub fn stream(
        pieces: &[&str],
        prompt_tokens: u32,
        completion_tokens: u32,
        complete: bool,
    ) -> Reply {
        let chunk = |delta: Value, finish: Value| {
            format!(
                "data: {}\n\n",
                json!({"id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "gpt-4o-2024-08-06",
                       "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
            )
        };
        let mut out = vec![chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )];
        out.extend(
            pieces
                .iter()
                .map(|p| chunk(json!({"content": p}), Value::Null)),
        );
        if complete {
            out.push(chunk(json!({}), json!("stop")));
            out.push(format!(
                "data: {}\n\n",
                json!({"id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "gpt-4o-2024-08-06", "choices": [],
                       "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}})
            ));
            out.push("data: [DONE]\n\n".into());
        }
        Reply::Stream {
            content_type: "text/event-stream",
            pieces: out,
            gap: Duration::from_millis(5),
            cut: !complete,
        }
    }

    /// An answer of tool calls (`(id, name, arguments)`), no content.
    pub fn tool_calls(calls: &[(&str, &str, &str)]) -> Reply {
        let calls: Vec<Value> = calls
            .iter()
            .map(|(id, name, arguments)| json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}))
            .collect();
        Reply::Json {
            status: 200,
            body: json!({
                "id": "chatcmpl-123", "object": "chat.completion", "created": 1_700_000_000, "model": "gpt-4o-2024-08-06",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "refusal": null, "tool_calls": calls}, "logprobs": null, "finish_reason": "tool_calls"}],
                "usage": {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52}
            }),
            headers: vec![],
        }
    }

    /// Tool calls streamed as OpenAI streams them: per call, a first `delta.tool_calls` piece
    /// with index, id, type, name and empty arguments, then the arguments in `pieces` fragments.
    pub fn tool_call_stream(calls: &[(&str, &str, &[&str])]) -> Reply {
        let chunk = |delta: Value, finish: Value| {
            format!(
                "data: {}\n\n",
                json!({"id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "gpt-4o-2024-08-06",
                       "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
            )
        };
        let mut out = vec![chunk(
            json!({"role": "assistant", "content": null}),
            Value::Null,
        )];
        for (index, (id, name, pieces)) in calls.iter().enumerate() {
            out.push(chunk(
                json!({"tool_calls": [{"index": index, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
                Value::Null,
            ));
            for piece in *pieces {
                out.push(chunk(
                    json!({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}),
                    Value::Null,
                ));
            }
        }
        out.push(chunk(json!({}), json!("tool_calls")));
        out.push(format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-123", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "gpt-4o-2024-08-06", "choices": [],
                   "usage": {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52}})
        ));
        out.push("data: [DONE]\n\n".into());
        Reply::Stream {
            content_type: "text/event-stream",
            pieces: out,
            gap: Duration::from_millis(5),
            cut: false,
        }
    }

    pub fn error(status: u16, message: &str, retry_after: Option<&str>) -> Reply {
        let kind = match status {
            429 => "rate_limit_exceeded",
            401 => "invalid_api_key",
            _ => "server_error",
        };
        Reply::Json {
            status,
            body: json!({"error": {"message": message, "type": kind, "param": null, "code": kind}}),
            headers: retry_after
                .map(|r| vec![("retry-after", r.to_owned())])
                .unwrap_or_default(),
        }
    }
}

/// Replies in Anthropic's Messages formats.
pub mod anthropic {
    use super::*;

    pub fn success(text: &str, input_tokens: u32, output_tokens: u32) -> Reply {
        Reply::Json {
            status: 200,
            body: json!({
                "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens}
            }),
            headers: vec![],
        }
    }

    pub fn stream(pieces: &[&str], input_tokens: u32, output_tokens: u32, complete: bool) -> Reply {
        let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
        let mut out = vec![
            event(
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_01", "type": "message", "role": "assistant", "content": [], "model": "claude-sonnet-4-5-20250929", "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": input_tokens, "output_tokens": 1}}}),
            ),
            event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            event("ping", json!({"type": "ping"})),
        ];
        out.extend(pieces.iter().map(|p| {
            event("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}))
        }));
        if complete {
            out.push(event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ));
            out.push(event("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": output_tokens}})));
            out.push(event("message_stop", json!({"type": "message_stop"})));
        }
        Reply::Stream {
            content_type: "text/event-stream",
            pieces: out,
            gap: Duration::from_millis(5),
            cut: !complete,
        }
    }

    /// An answer of some text and one `tool_use` block, `stop_reason: tool_use`.
    pub fn tool_use(text: &str, id: &str, name: &str, input: Value) -> Reply {
        Reply::Json {
            status: 200,
            body: json!({
                "id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
                "content": [{"type": "text", "text": text}, {"type": "tool_use", "id": id, "name": name, "input": input}],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 30, "output_tokens": 9}
            }),
            headers: vec![],
        }
    }

    /// A `tool_use` block streamed as Anthropic streams it: its start (with an empty `input`),
    /// `input_json_delta`s, its stop, then `stop_reason: tool_use`.
    pub fn tool_use_stream(id: &str, name: &str, partial_json: &[&str]) -> Reply {
        let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
        let mut out = vec![
            event(
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_01", "type": "message", "role": "assistant", "content": [], "model": "claude-sonnet-4-5-20250929", "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 30, "output_tokens": 1}}}),
            ),
            event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
            ),
            event("ping", json!({"type": "ping"})),
        ];
        out.extend(partial_json.iter().map(|p| {
            event("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": p}}))
        }));
        out.push(event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ));
        out.push(event("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 9}})));
        out.push(event("message_stop", json!({"type": "message_stop"})));
        Reply::Stream {
            content_type: "text/event-stream",
            pieces: out,
            gap: Duration::from_millis(5),
            cut: false,
        }
    }

    pub fn stream_error(pieces: &[&str]) -> Reply {
        let Reply::Stream { mut pieces, .. } = stream(pieces, 10, 0, false) else {
            unreachable!()
        };
        pieces.push(format!(
            "event: error\ndata: {}\n\n",
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
        ));
        Reply::Stream {
            content_type: "text/event-stream",
            pieces,
            gap: Duration::from_millis(5),
            cut: false,
        }
    }

    pub fn error(status: u16, message: &str, retry_after: Option<&str>) -> Reply {
        let kind = match status {
            429 => "rate_limit_error",
            401 => "authentication_error",
            400 => "invalid_request_error",
            529 => "overloaded_error",
            _ => "api_error",
        };
        Reply::Json {
            status,
            body: json!({"type": "error", "error": {"type": kind, "message": message}}),
            headers: retry_after
                .map(|r| vec![("retry-after", r.to_owned())])
                .unwrap_or_default(),
        }
    }
}

/// Replies in Ollama's `/api/chat` formats.
pub mod ollama {
    use super::*;

    fn line(content: &str, done: bool, prompt_eval: u32, eval: u32) -> Value {
        let mut v = json!({"model": "llama3.1:8b", "created_at": "2026-11-25T12:00:00.000000Z",
                           "message": {"role": "assistant", "content": content}, "done": done});
        if done {
            let extra = json!({"done_reason": "stop", "total_duration": 5_000_000_u64, "load_duration": 1_000_000_u64,
                               "prompt_eval_count": prompt_eval, "prompt_eval_duration": 1_000_000_u64,
                               "eval_count": eval, "eval_duration": 3_000_000_u64});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
        }
        v
    }

    pub fn success(text: &str, prompt_eval: u32, eval: u32) -> Reply {
        Reply::Json {
            status: 200,
            body: line(text, true, prompt_eval, eval),
            headers: vec![],
        }
    }

    /// A final message with tool calls (`(name, arguments object)`): Ollama says `stop`.
    fn tool_line(calls: &[(&str, Value)]) -> Value {
        let mut v = line("", true, 25, 8);
        v["message"]["tool_calls"] = calls
            .iter()
            .map(|(name, arguments)| json!({"function": {"name": name, "arguments": arguments}}))
            .collect();
        v
    }

    pub fn tool_calls(calls: &[(&str, Value)]) -> Reply {
        Reply::Json {
            status: 200,
            body: tool_line(calls),
            headers: vec![],
        }
    }

    /// Streamed: the calls come whole in the last line.
    pub fn tool_call_stream(calls: &[(&str, Value)]) -> Reply {
        Reply::Stream {
            content_type: "application/x-ndjson",
            pieces: vec![format!("{}\n", tool_line(calls))],
            gap: Duration::from_millis(5),
            cut: false,
        }
    }

    pub fn stream(pieces: &[&str], prompt_eval: u32, eval: u32, complete: bool) -> Reply {
        let mut out: Vec<String> = pieces
            .iter()
            .map(|p| format!("{}\n", line(p, false, 0, 0)))
            .collect();
        if complete {
            out.push(format!("{}\n", line("", true, prompt_eval, eval)));
        }
        Reply::Stream {
            content_type: "application/x-ndjson",
            pieces: out,
            gap: Duration::from_millis(5),
            cut: !complete,
        }
    }

    pub fn error(status: u16, message: &str, retry_after: Option<&str>) -> Reply {
        Reply::Json {
            status,
            body: json!({"error": message}),
            headers: retry_after
                .map(|r| vec![("retry-after", r.to_owned())])
                .unwrap_or_default(),
        }
    }
}

/// Azure OpenAI: OpenAI's Chat Completions formats on
/// `/openai/deployments/{deployment}/chat/completions?api-version=…` with an `api-key` header,
/// plus its content-filter annotations.
pub mod azure {
    use super::*;

    /// What an Azure resource checks before answering, as Azure answers when it does not hold.
    pub struct Resource {
        pub deployment: &'static str,
        pub api_version: &'static str,
        pub key: &'static str,
    }

    impl Resource {
        /// `None` when the request reaches the deployment with the version and key; otherwise
        /// Azure's own refusal (404 for an unknown path, deployment or version, 401 for a bad key).
        pub fn refusal(&self, request: &Received) -> Option<Reply> {
            let path = format!("/openai/deployments/{}/chat/completions", self.deployment);
            let version = format!("api-version={}", self.api_version);
            if request.path != path {
                return Some(error(
                    404,
                    "DeploymentNotFound",
                    "The API deployment for this resource does not exist.",
                ));
            }
            if !request.query.split('&').any(|pair| pair == version) {
                return Some(error(404, "404", "Resource not found"));
            }
            let key = request.headers.get("api-key").and_then(|v| v.to_str().ok());
            if key != Some(self.key) {
                return Some(error(
                    401,
                    "401",
                    "Access denied due to invalid subscription key or wrong API endpoint.",
                ));
            }
            None
        }
    }

    pub fn error(status: u16, code: &str, message: &str) -> Reply {
        Reply::Json {
            status,
            body: json!({"error": {"code": code, "message": message}}),
            headers: vec![],
        }
    }

    /// A whole answer, with the prompt and content filter results Azure adds.
    pub fn success(text: &str, prompt_tokens: u32, completion_tokens: u32) -> Reply {
        let filters = json!({"hate": {"filtered": false, "severity": "safe"}, "violence": {"filtered": false, "severity": "safe"}});
        Reply::Json {
            status: 200,
            body: json!({
                "id": "chatcmpl-az1", "object": "chat.completion", "created": 1_700_000_000, "model": "gpt-4o-2024-08-06",
                "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": filters}],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "content_filter_results": filters}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
            }),
            headers: vec![],
        }
    }

    /// A streamed answer: Azure's first chunk carries no choice, only the prompt filter results.
    pub fn stream(pieces: &[&str], prompt_tokens: u32, completion_tokens: u32) -> Reply {
        let first = format!(
            "data: {}\n\n",
            json!({"id": "", "object": "", "created": 0, "model": "", "choices": [],
                   "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]})
        );
        match super::openai::stream(pieces, prompt_tokens, completion_tokens, true) {
            Reply::Stream {
                content_type,
                pieces,
                gap,
                cut,
            } => Reply::Stream {
                content_type,
                pieces: std::iter::once(first).chain(pieces).collect(),
                gap,
                cut,
            },
            other => other,
        }
    }
}
