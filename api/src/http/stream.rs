//! Streaming over SSE: `POST /api/v1/generate/stream` (submit, then follow) and
//! `GET /api/v1/generate/{request_id}/stream` (attach at any time, resuming after
//! `Last-Event-ID`; from a browser with a stream token, `stream_token`), plus `DELETE /api/v1/generate/{request_id}` (cancel). A user holds at
//! most `USER_MAX_STREAMS` streams open on one api process.
//!
//! Events: `start` (request id, model), `token` (`id:` = relay seq, data `{"text"}`),
//! `restart` (the output starts over: drop what you have), `tool_call` (a piece of a tool call:
//! `{"index", "id", "name", "arguments"}`, id and name on a call's first piece, the arguments'
//! text in pieces), and exactly one terminal event, `done` (finish reason, tool calls, usage,
//! cached) or `error` (code, message; `cancelled` for a cancelled request). The terminal event
//! is written from the request row, after the relay's log has been drained, and the tokens and
//! tool calls sent since the last `restart` always equal the stored result.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use futures::stream::BoxStream;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::extract::{JsonBody, QueryParams};
use super::generate::{new_request, parse_request_id};
use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::error::doc;
use crate::state::AppState;
use crate::telemetry::TraceContext;
use llm_shared::generation::{ToolCallAssembler, ToolCallDelta};
use llm_shared::quota::Slot;
use llm_shared::ratelimit::RateState;
use llm_shared::requests::{self, GenerateBody, NewRequest, RequestView, Status};
use llm_shared::stream_relay::{RelayEvent, RelayKind, RelayMessage, RelaySubscription};

/// How often a follower tries to read the row again while the database is unreachable.
const DATABASE_RETRY: Duration = Duration::from_secs(1);
/// Room a follower's queue of found events keeps once it is empty again; a larger one (a
/// replayed log) is given back.
const OUT_KEPT: usize = 16;

type EventStream = Sse<
    axum::response::sse::KeepAliveStream<
        futures::stream::BoxStream<'static, Result<Event, Infallible>>,
    >,
>;

#[utoipa::path(
    post,
    path = "/api/v1/generate/stream",
    tag = "generate",
    summary = "Submit and stream over SSE",
    params(("Idempotency-Key" = Option<String>, Header, description = "a repeated key (same user, same body) returns the first request")),
    request_body = llm_shared::requests::GenerateBody,
    responses(
        (status = 200, description = "SSE events: start, token, restart, then done or error", body = String, content_type = "text/event-stream"),
        doc::BadRequest, doc::Unauthorized, doc::TooLarge, doc::NotJson, doc::Invalid, doc::Conflict, doc::RateLimited, doc::Unavailable,
    ),
    security(("bearer" = [])),
)]
pub async fn submit_stream(
    State(state): State<AppState>,
    user: AuthUser,
    trace: TraceContext,
    headers: HeaderMap,
    JsonBody(body): JsonBody<GenerateBody>,
) -> Result<Response, ApiError> {
    let new = new_request(&state, &user, &headers, body, trace)?;
    let Subscribed {
        id,
        subscription,
        rate,
        slot,
    } = submit_subscribed(&state, &user, new).await?;
    let mut response =
        sse(follow_events(state, id, user.id, subscription, 0, slot)).into_response();
    super::rate_limits::attach(&mut response, rate);
    Ok(response)
}

/// A streamed submit, stored and subscribed to.
pub(super) struct Subscribed {
    pub id: Uuid,
    pub subscription: RelaySubscription,
    /// The rate-limit state the submit counted.
    pub rate: Option<RateState>,
    /// The user's stream slot on this process, for the stream's lifetime.
    pub slot: Slot,
}

/// Submits a request whose worker relays its tokens, subscribed to its relay channel before
/// the job exists, so that not even the first token can be missed. The user's stream slot is
/// taken first: a user at `USER_MAX_STREAMS` is refused before anything is stored or counted.
pub(super) async fn submit_subscribed(
    state: &AppState,
    user: &AuthUser,
    mut new: NewRequest,
) -> Result<Subscribed, ApiError> {
    let slot = super::quota::stream_slot(state, user)?;
    new.stream = true;
    let subscription = state
        .relay
        .subscribe(new.id)
        .await
        .map_err(|_| relay_unavailable())?;
    let super::generate::Admitted {
        submitted, rate, ..
    } = super::generate::accept(state, user, new).await?;
    let subscription = if submitted.replayed {
        // An earlier request with the same Idempotency-Key: follow that one instead.
        drop(subscription);
        state
            .relay
            .subscribe(submitted.id)
            .await
            .map_err(|_| relay_unavailable())?
    } else {
        subscription
    };
    Ok(Subscribed {
        id: submitted.id,
        subscription,
        rate,
        slot,
    })
}

/// The query of `GET …/stream`: the ways a browser's `EventSource` can say what a header
/// would (it sends no headers of its own but `Last-Event-ID` on a reconnection).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AttachQuery {
    /// A stream token of this request (`POST …/stream-token`) instead of `Authorization`.
    pub access_token: Option<String>,
    /// Resume after this event id, as `Last-Event-ID` does (the header wins when both are
    /// sent): a new `EventSource` resuming where another one stopped.
    pub last_event_id: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/generate/{request_id}/stream",
    tag = "generate",
    summary = "Attach to a request's stream",
    params(("request_id" = uuid::Uuid, Path, description = "the request's id (a UUID)"), ("Last-Event-ID" = Option<String>, Header, description = "resume after this event id"), AttachQuery),
    responses(
        (status = 200, description = "SSE events after Last-Event-ID", body = String, content_type = "text/event-stream"),
        doc::BadRequest, doc::Unauthorized, doc::NotFound, doc::RateLimited, doc::Unavailable,
    ),
    security(("bearer" = []), ("stream_token" = [])),
)]
pub async fn attach(
    State(state): State<AppState>,
    Path(request_id): Path<String>,
    QueryParams(query): QueryParams<AttachQuery>,
    headers: HeaderMap,
) -> Result<EventStream, ApiError> {
    Ok(sse(
        follow_attached(&state, &request_id, &query, &headers).await?
    ))
}

/// The follower of an existing request for its caller (bearer token, or the URL's stream
/// token), resuming after `Last-Event-ID` or the query's `last_event_id`: the SSE stream and the
/// WebSocket (`ws`) both attach through here.
pub(super) async fn follow_attached(
    state: &AppState,
    request_id: &str,
    query: &AttachQuery,
    headers: &HeaderMap,
) -> Result<FollowStream, ApiError> {
    let id = parse_request_id(request_id)?;
    let user =
        super::stream_token::stream_caller(state, headers, query.access_token.as_deref(), id)?;
    crate::telemetry::record_request_id(id);
    let last_seen = match headers.get("last-event-id") {
        Some(v) => last_event_id(v.to_str().ok())?,
        None => match query.last_event_id.as_deref() {
            Some(v) => last_event_id(Some(v))?,
            None => 0,
        },
    };
    super::generate::find(state, id, user.id).await?;
    let slot = super::quota::stream_slot(state, &user)?;
    let subscription = state
        .relay
        .subscribe(id)
        .await
        .map_err(|_| relay_unavailable())?;
    Ok(follow_events(
        state.clone(),
        id,
        user.id,
        subscription,
        last_seen,
        slot,
    ))
}

/// The event id a client resumes after.
fn last_event_id(raw: Option<&str>) -> Result<u64, ApiError> {
    raw.and_then(|v| v.trim().parse::<u64>().ok())
        // Event ids are a Redis counter (a signed 64-bit integer): anything above it is
        // no id of this stream.
        .filter(|&seen| i64::try_from(seen).is_ok())
        .ok_or_else(|| {
            ApiError::BadRequest("Last-Event-ID must be an event id of this stream".into())
        })
}

#[utoipa::path(
    delete,
    path = "/api/v1/generate/{request_id}",
    tag = "generate",
    summary = "Cancel a pending or running request",
    params(("request_id" = uuid::Uuid, Path, description = "the request's id (a UUID)")),
    responses(
        (status = 200, description = "the cancelled request", body = llm_shared::requests::RequestView),
        doc::BadRequest, doc::Unauthorized, doc::NotFound, doc::Conflict, doc::Unavailable,
    ),
    security(("bearer" = [])),
)]
pub async fn cancel(
    State(state): State<AppState>,
    user: AuthUser,
    Path(request_id): Path<String>,
) -> Result<Json<RequestView>, ApiError> {
    let id = parse_request_id(&request_id)?;
    crate::telemetry::record_request_id(id);
    // The owner, or an admin for anyone's request.
    let owner = if user.is_admin() { None } else { Some(user.id) };
    match requests::cancel(&state.pool, id, owner).await? {
        requests::Cancelled::Done(view) => {
            tracing::info!(request.id = %id, "generation cancelled");
            Ok(Json(*view))
        }
        requests::Cancelled::AlreadyFinished(status) => Err(ApiError::Conflict(format!(
            "the request is already {} and cannot be cancelled",
            status.as_str()
        ))),
        requests::Cancelled::NotFound => Err(ApiError::NotFound("no such generation request")),
    }
}

fn relay_unavailable() -> ApiError {
    ApiError::Unavailable(
        "streaming is unavailable right now (the relay is down); submit and poll instead",
    )
}

/// The SSE response: the body is the follower itself, polled as the client reads; it ends
/// with the terminal event, or when the client goes away (the generation itself carries on).
fn sse(events: FollowStream) -> EventStream {
    let body = events.map(|e| Ok::<_, Infallible>(to_sse(&e))).boxed();
    Sse::new(body).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("keep-alive"),
    )
}

/// What a follower tells its client, in order: `Start`, then tokens and restarts, then exactly
/// one `Done` or `Failed` (built from the request row). Every event but `Start` has a seq.
#[derive(Debug, Clone)]
pub(super) enum FollowEvent {
    Start {
        request_id: Uuid,
        model: String,
        status: Status,
    },
    Token {
        seq: u64,
        text: String,
    },
    Restart {
        seq: u64,
        reason: String,
    },
    /// A piece of a tool call (the first of each call carries its id and name).
    ToolCall {
        seq: u64,
        delta: ToolCallDelta,
    },
    Done {
        seq: u64,
        row: Box<RequestView>,
    },
    Failed {
        seq: u64,
        code: String,
        message: String,
    },
}

/// A request's events as its follower finds them, ending after the terminal one.
pub(super) type FollowStream = BoxStream<'static, FollowEvent>;

/// Follows a request: no task and no channel of its own, the stream is the follower (one
/// allocation of ~1.6 KB, by heaptrack), and it runs while its reader polls it. Dropping it
/// stops the follower (the generation itself carries on); it holds the user's stream `slot`
/// until then.
pub(super) fn follow_events(
    state: AppState,
    id: Uuid,
    user: Uuid,
    subscription: RelaySubscription,
    last_seen: u64,
    slot: Slot,
) -> FollowStream {
    let active = crate::metrics::ActiveStream::new(state.metrics.clone());
    let completion = state.notices.subscribe(id);
    let follower = Follower {
        state,
        id,
        user,
        subscription,
        completion,
        stage: Stage::Start,
        out: VecDeque::new(),
        last_seen,
        text: String::new(),
        // A client resuming after an event id has output we cannot see until the log is read.
        tokens: usize::from(last_seen > 0),
        calls: Vec::new(),
        _active: active,
        _slot: slot,
    };
    futures::stream::unfold(follower, |mut follower| async move {
        let event = follower.next().await?;
        Some((event, follower))
    })
    .boxed()
}

/// Where a follower is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Nothing read yet: the row, then the log.
    Start,
    /// Waiting for live events and for the request to end.
    Following,
    /// The terminal event is queued (or the stream stops without one).
    Ended,
}

struct Follower {
    state: AppState,
    id: Uuid,
    user: Uuid,
    subscription: RelaySubscription,
    /// Completion notices of the request: registered before its row is first read. A notice
    /// that comes while the follower is busy is counted, not lost, and one that never comes is
    /// made up within `notices::SWEEP_EVERY` by the sweep: the follower reads its row only
    /// when told to, however many live events it hears.
    completion: llm_shared::notices::Subscription,
    stage: Stage,
    /// Events found but not yet taken by the reader.
    out: VecDeque<FollowEvent>,
    /// Highest relay seq queued for the client.
    last_seen: u64,
    /// Output since the last `restart`, as the client has it (replayed or sent).
    text: String,
    /// Token events in `text`.
    tokens: usize,
    /// Tool-call pieces since the last `restart`, as the client has them.
    calls: Vec<ToolCallDelta>,
    _active: crate::metrics::ActiveStream,
    _slot: Slot,
}

/// What woke a following follower.
enum Wake {
    Relay(RelayMessage),
    /// A completion notice: read the row.
    Check,
}

impl Follower {
    /// The next event for the client; `None` once the stream is over.
    async fn next(&mut self) -> Option<FollowEvent> {
        loop {
            if let Some(event) = self.out.pop_front() {
                if self.out.is_empty() && self.out.capacity() > OUT_KEPT {
                    // A replayed log is sent: its room goes back.
                    self.out = VecDeque::new();
                }
                return Some(event);
            }
            if self.stage == Stage::Ended {
                return None;
            }
            let shutdown = self.state.shutdown.clone();
            let step = tokio::select! {
                step = self.step() => step,
                // The process is stopping: the stream ends without its terminal event, and the
                // client resumes after its last event id on another api.
                () = shutdown.cancelled() => Ok(Stage::Ended),
            };
            self.stage = step.unwrap_or_else(|err| {
                tracing::debug!(request.id = %self.id, error = %err, "stream follower stopped");
                Stage::Ended
            });
        }
    }

    /// Moves the follower on until it has found events or ended: the stage it is in then.
    async fn step(&mut self) -> Result<Stage, sqlx::Error> {
        match self.stage {
            Stage::Start => self.start().await,
            Stage::Following => self.follow().await,
            Stage::Ended => Ok(Stage::Ended),
        }
    }

    async fn start(&mut self) -> Result<Stage, sqlx::Error> {
        let Some(row) = self.row().await? else {
            return Ok(Stage::Ended);
        };
        self.out.push_back(FollowEvent::Start {
            request_id: self.id,
            model: row.model.clone(),
            status: row.status,
        });
        self.catch_up().await;
        if row.status.is_final() {
            self.finish(row).await;
            return Ok(Stage::Ended);
        }
        Ok(Stage::Following)
    }

    /// Waits for a live event or a completion notice, and acts on it.
    async fn follow(&mut self) -> Result<Stage, sqlx::Error> {
        let wake = {
            let notified = self.completion.notify().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // A notice that came while the follower was busy (forwarding, or waiting for its
            // reader) is counted: it is not lost to a follower that was not waiting.
            if self.completion.noticed() {
                Wake::Check
            } else {
                tokio::select! {
                    message = self.subscription.recv() => Wake::Relay(message),
                    () = &mut notified => Wake::Check,
                }
            }
        };
        match wake {
            Wake::Relay(RelayMessage::Event(event)) => self.forward(event).await,
            Wake::Relay(RelayMessage::Resync) => self.catch_up().await,
            Wake::Check => {
                // This notice is the one being acted on.
                self.completion.noticed();
                if let Some(row) = self.row().await?
                    && row.status.is_final()
                {
                    self.finish(row).await;
                    return Ok(Stage::Ended);
                }
            }
        }
        Ok(Stage::Following)
    }

    /// The request's row. While the database is unreachable it waits (keep-alives go on) and
    /// reads again, so that an outage delays the terminal event instead of cutting the stream
    /// without one.
    async fn row(&self) -> Result<Option<RequestView>, sqlx::Error> {
        // A cache hit answered by this process may not have its row yet.
        self.state.submitter.written(self.id).await;
        loop {
            let read = {
                // Closed never: without a permit the read goes ahead all the same.
                let _permit = self.state.follow_reads.acquire().await;
                requests::find_for_user(&self.state.pool, self.id, self.user).await
            };
            match read {
                Err(err) if llm_shared::error::is_unavailable(&err) => {
                    tracing::debug!(request.id = %self.id, error = %err, "stream follower: database unavailable; reading again");
                    tokio::time::sleep(DATABASE_RETRY).await;
                }
                other => return other,
            }
        }
    }

    /// Replays the relay's log: events the client lacks are queued; all are tracked.
    async fn catch_up(&mut self) {
        let Ok(log) = self.state.relay.relay.log(self.id).await else {
            return;
        };
        let (mut text, mut tokens, mut calls) = (String::new(), 0, Vec::new());
        let last = log.last().map(|e| e.seq);
        for event in log {
            match &event.kind {
                RelayKind::Token { text: t } => {
                    text.push_str(t);
                    tokens += 1;
                }
                RelayKind::Restart { .. } => {
                    text.clear();
                    tokens = 0;
                    calls.clear();
                }
                RelayKind::ToolCall { .. } => calls.push(call_delta(&event.kind)),
            }
            if event.seq > self.last_seen {
                self.last_seen = event.seq;
                self.out.push_back(relayed(event));
            }
        }
        if last.is_some_and(|seq| seq >= self.last_seen) {
            self.text = text;
            self.tokens = tokens;
            self.calls = calls;
        }
    }

    async fn forward(&mut self, event: RelayEvent) {
        if event.seq <= self.last_seen {
            return;
        }
        if event.seq > self.last_seen.saturating_add(1) {
            // A gap (missed live message): the log has it.
            return self.catch_up().await;
        }
        match &event.kind {
            RelayKind::Token { text } => {
                self.text.push_str(text);
                self.tokens += 1;
            }
            RelayKind::Restart { .. } => {
                self.text.clear();
                self.tokens = 0;
                self.calls.clear();
            }
            RelayKind::ToolCall { .. } => self.calls.push(call_delta(&event.kind)),
        }
        self.last_seen = event.seq;
        self.out.push_back(relayed(event));
    }

    /// The request is final (its `row` says so): drain the log, make the output equal the
    /// stored result, and queue the one terminal event.
    async fn finish(&mut self, row: RequestView) {
        self.catch_up().await;
        let mut next_id = self.last_seen.saturating_add(1);
        match row.status {
            Status::Completed => {
                let result = row.result.clone().unwrap_or_default();
                let mut relayed = ToolCallAssembler::default();
                self.calls.iter().for_each(|d| relayed.push(d));
                let calls_differ = relayed.finish() != row.tool_calls();
                if self.text != result || calls_differ {
                    if self.tokens > 0 || !self.calls.is_empty() {
                        self.out.push_back(FollowEvent::Restart {
                            seq: next_id,
                            reason: "resync".into(),
                        });
                        next_id += 1;
                    }
                    if !result.is_empty() {
                        self.out.push_back(FollowEvent::Token {
                            seq: next_id,
                            text: result,
                        });
                        next_id += 1;
                    }
                    // Each call whole, as one piece.
                    for (index, call) in (0..).zip(row.tool_calls()) {
                        self.out.push_back(FollowEvent::ToolCall {
                            seq: next_id,
                            delta: ToolCallDelta {
                                index,
                                id: Some(call.id.clone()),
                                name: Some(call.name.clone()),
                                arguments: call.arguments.clone(),
                            },
                        });
                        next_id += 1;
                    }
                }
                self.out.push_back(FollowEvent::Done {
                    seq: next_id,
                    row: Box::new(row),
                });
            }
            Status::Failed | Status::Cancelled => {
                let (code, message) = if row.status == Status::Cancelled {
                    (
                        "cancelled".to_owned(),
                        "the request was cancelled".to_owned(),
                    )
                } else {
                    (
                        row.error_code.clone().unwrap_or_else(|| "failed".into()),
                        row.error_message
                            .clone()
                            .unwrap_or_else(|| "the generation failed".into()),
                    )
                };
                self.out.push_back(FollowEvent::Failed {
                    seq: next_id,
                    code,
                    message,
                });
            }
            Status::Pending | Status::Running => {}
        }
    }
}

fn relayed(event: RelayEvent) -> FollowEvent {
    match event.kind {
        RelayKind::Token { text } => FollowEvent::Token {
            seq: event.seq,
            text,
        },
        RelayKind::Restart { reason } => FollowEvent::Restart {
            seq: event.seq,
            reason,
        },
        kind @ RelayKind::ToolCall { .. } => FollowEvent::ToolCall {
            seq: event.seq,
            delta: call_delta(&kind),
        },
    }
}

/// The tool-call piece a relayed event carries (empty for other events).
fn call_delta(kind: &RelayKind) -> ToolCallDelta {
    match kind {
        RelayKind::ToolCall {
            index,
            id,
            name,
            arguments,
        } => ToolCallDelta {
            index: *index,
            id: id.clone(),
            name: name.clone(),
            arguments: arguments.clone(),
        },
        RelayKind::Token { .. } | RelayKind::Restart { .. } => ToolCallDelta {
            index: 0,
            id: None,
            name: None,
            arguments: String::new(),
        },
    }
}

/// The native SSE event of a follower's event.
fn to_sse(event: &FollowEvent) -> Event {
    let (name, seq, data) = event_parts(event);
    let event = Event::default().event(name).data(data.to_string());
    match seq {
        Some(seq) => event.id(seq.to_string()),
        None => event,
    }
}

/// An event's name, id (its relay seq; none for `start`) and data, as SSE and the WebSocket
/// send them.
pub(super) fn event_parts(event: &FollowEvent) -> (&'static str, Option<u64>, serde_json::Value) {
    match event {
        FollowEvent::Start {
            request_id,
            model,
            status,
        } => (
            "start",
            None,
            json!({"request_id": request_id, "model": model, "status": status}),
        ),
        FollowEvent::Token { seq, text } => ("token", Some(*seq), json!({"text": text})),
        FollowEvent::Restart { seq, reason } => ("restart", Some(*seq), json!({"reason": reason})),
        FollowEvent::ToolCall { seq, delta } => ("tool_call", Some(*seq), json!(delta)),
        FollowEvent::Done { seq, row } => (
            "done",
            Some(*seq),
            json!({
                "finish_reason": row.finish_reason,
                "tool_calls": row.tool_calls,
                "usage": {
                    "prompt_tokens": row.prompt_tokens,
                    "completion_tokens": row.completion_tokens,
                    "total_tokens": row.tokens_used,
                },
                "cached": row.cached,
                "provider": row.provider,
                "model": row.provider_model,
            }),
        ),
        FollowEvent::Failed { seq, code, message } => (
            "error",
            Some(*seq),
            json!({"code": code, "message": message}),
        ),
    }
}
