//! Streaming over SSE: `POST /api/v1/generate/stream` (submit, then follow) and
//! `GET /api/v1/generate/{request_id}/stream` (attach at any time, resuming after
//! `Last-Event-ID`), plus `DELETE /api/v1/generate/{request_id}` (cancel). A user holds at
//! most `USER_MAX_STREAMS` streams open on one api process.
//!
//! Events: `start` (request id, model), `token` (`id:` = relay seq, data `{"text"}`),
//! `restart` (the output starts over: drop what you have), and exactly one terminal event,
//! `done` (finish reason, usage, cached) or `error` (code, message; `cancelled` for a cancelled
//! request). The terminal event is written from the request row, after the relay's log has been
//! drained, and the tokens sent since the last `restart` always equal the stored result.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

use super::extract::JsonBody;
use super::generate::{new_request, parse_request_id};
use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::error::doc;
use crate::state::AppState;
use crate::telemetry::TraceContext;
use llm_shared::quota::Slot;
use llm_shared::ratelimit::RateState;
use llm_shared::requests::{self, GenerateBody, NewRequest, RequestView, Status};
use llm_shared::stream_relay::{RelayEvent, RelayKind, RelayMessage, RelaySubscription};

/// How often a follower re-reads the row when no notice came (a missed notice costs at most
/// this much delay, never a hang).
const RECHECK_EVERY: Duration = Duration::from_secs(5);
/// How often a follower tries to read the row again while the database is unreachable.
const DATABASE_RETRY: Duration = Duration::from_secs(1);

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
    let mut response = follow(state, id, user.id, subscription, 0, slot).into_response();
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
    let super::generate::Admitted { submitted, rate } =
        super::generate::accept(state, user, new).await?;
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

#[utoipa::path(
    get,
    path = "/api/v1/generate/{request_id}/stream",
    tag = "generate",
    summary = "Attach to a request's stream",
    params(("request_id" = uuid::Uuid, Path, description = "the request's id (a UUID)"), ("Last-Event-ID" = Option<String>, Header, description = "resume after this event id")),
    responses(
        (status = 200, description = "SSE events after Last-Event-ID", body = String, content_type = "text/event-stream"),
        doc::BadRequest, doc::Unauthorized, doc::NotFound, doc::RateLimited, doc::Unavailable,
    ),
    security(("bearer" = [])),
)]
pub async fn attach(
    State(state): State<AppState>,
    user: AuthUser,
    Path(request_id): Path<String>,
    headers: HeaderMap,
) -> Result<EventStream, ApiError> {
    let id = parse_request_id(&request_id)?;
    crate::telemetry::record_request_id(id);
    let last_seen = match headers.get("last-event-id") {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            // Event ids are a Redis counter (a signed 64-bit integer): anything above it is
            // no id of this stream.
            .filter(|&seen| i64::try_from(seen).is_ok())
            .ok_or_else(|| {
                ApiError::BadRequest("Last-Event-ID must be an event id of this stream".into())
            })?,
    };
    super::generate::find(&state, id, user.id).await?;
    let slot = super::quota::stream_slot(&state, &user)?;
    let subscription = state
        .relay
        .subscribe(id)
        .await
        .map_err(|_| relay_unavailable())?;
    Ok(follow(state, id, user.id, subscription, last_seen, slot))
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

/// The SSE response: a task follows the request and feeds the body; it ends with the terminal
/// event, or when the client goes away (the generation itself carries on).
fn follow(
    state: AppState,
    id: Uuid,
    user: Uuid,
    subscription: RelaySubscription,
    last_seen: u64,
    slot: Slot,
) -> EventStream {
    let rx = follow_events(state, id, user, subscription, last_seen, slot);
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok(to_sse(&e)), rx))
    });
    let body: futures::stream::BoxStream<'static, Result<Event, Infallible>> = Box::pin(body);
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

/// Follows a request in a task of its own: the events go to the returned receiver. Dropping
/// the receiver stops the follower (the generation itself carries on). The follower holds the
/// user's stream `slot` until it ends, however it ends.
pub(super) fn follow_events(
    state: AppState,
    id: Uuid,
    user: Uuid,
    subscription: RelaySubscription,
    last_seen: u64,
    slot: Slot,
) -> mpsc::Receiver<FollowEvent> {
    let (tx, rx) = mpsc::channel::<FollowEvent>(16);
    let active = crate::metrics::ActiveStream::new(state.metrics.clone());
    tokio::spawn(async move {
        let _active = active;
        let _slot = slot;
        // A client resuming after an event id has output we cannot see until the log is read.
        let tokens = usize::from(last_seen > 0);
        let mut follower = Follower {
            state,
            id,
            user,
            tx,
            last_seen,
            text: String::new(),
            tokens,
        };
        let shutdown = follower.state.shutdown.clone();
        let outcome = tokio::select! {
            outcome = follower.run(subscription) => outcome,
            // The process is stopping: the stream ends without its terminal event, and the
            // client resumes after its last event id on another api.
            () = shutdown.cancelled() => Ok(()),
        };
        if let Err(err) = outcome {
            tracing::debug!(request.id = %id, error = %err, "stream follower stopped");
        }
    });
    rx
}

#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error("the client went away")]
    Gone,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

struct Follower {
    state: AppState,
    id: Uuid,
    user: Uuid,
    tx: mpsc::Sender<FollowEvent>,
    /// Highest relay seq the client has.
    last_seen: u64,
    /// Output since the last `restart`, as the client has it (replayed or sent).
    text: String,
    /// Token events in `text`.
    tokens: usize,
}

impl Follower {
    /// The request's row. While the database is unreachable it waits (keep-alives go on) and
    /// reads again, so that an outage delays the terminal event instead of cutting the stream
    /// without one.
    async fn row(&self) -> Result<Option<RequestView>, FollowError> {
        // A cache hit answered by this process may not have its row yet.
        self.state.submitter.written(self.id).await;
        loop {
            match requests::find_for_user(&self.state.pool, self.id, self.user).await {
                Err(err) if llm_shared::error::is_unavailable(&err) => {
                    tracing::debug!(request.id = %self.id, error = %err, "stream follower: database unavailable; reading again");
                    tokio::select! {
                        _ = tokio::time::sleep(DATABASE_RETRY) => {}
                        _ = self.tx.closed() => return Err(FollowError::Gone),
                    }
                }
                other => return Ok(other?),
            }
        }
    }

    async fn send(&self, event: FollowEvent) -> Result<(), FollowError> {
        self.tx.send(event).await.map_err(|_| FollowError::Gone)
    }

    async fn run(&mut self, mut subscription: RelaySubscription) -> Result<(), FollowError> {
        let completion = self.state.notices.subscribe(self.id);
        let Some(row) = self.row().await? else {
            return Ok(());
        };
        self.send(FollowEvent::Start {
            request_id: self.id,
            model: row.model.clone(),
            status: row.status,
        })
        .await?;
        self.catch_up().await?;
        if row.status.is_final() {
            return self.finish().await;
        }
        loop {
            let notified = completion.notify().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            tokio::select! {
                message = subscription.receiver.recv() => match message {
                    Ok(RelayMessage::Event(event)) => self.forward(event).await?,
                    Ok(RelayMessage::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => self.catch_up().await?,
                    Err(broadcast::error::RecvError::Closed) => {
                        // The relay dropped us (relay lost): carry on from the database alone.
                        subscription = match self.state.relay.subscribe(self.id).await {
                            Ok(s) => s,
                            Err(_) => return self.wait_and_finish(&completion).await,
                        };
                    }
                },
                _ = &mut notified => {
                    if self.row_is_final().await? {
                        return self.finish().await;
                    }
                }
                _ = tokio::time::sleep(RECHECK_EVERY) => {
                    if self.row_is_final().await? {
                        return self.finish().await;
                    }
                }
                _ = self.tx.closed() => return Err(FollowError::Gone),
            }
        }
    }

    async fn row_is_final(&self) -> Result<bool, FollowError> {
        Ok(self.row().await?.is_some_and(|r| r.status.is_final()))
    }

    /// Without a relay: wait for the request to end, then send its result.
    async fn wait_and_finish(
        &mut self,
        completion: &llm_shared::notices::Subscription,
    ) -> Result<(), FollowError> {
        loop {
            if self.row_is_final().await? {
                return self.finish().await;
            }
            let _ = tokio::time::timeout(RECHECK_EVERY, completion.notify().notified()).await;
        }
    }

    /// Replays the relay's log: events the client lacks are sent; all are tracked.
    async fn catch_up(&mut self) -> Result<(), FollowError> {
        let Ok(log) = self.state.relay.relay.log(self.id).await else {
            return Ok(());
        };
        let (mut text, mut tokens) = (String::new(), 0);
        for event in &log {
            match &event.kind {
                RelayKind::Token { text: t } => {
                    text.push_str(t);
                    tokens += 1;
                }
                RelayKind::Restart { .. } => {
                    text.clear();
                    tokens = 0;
                }
            }
            if event.seq > self.last_seen {
                self.send(relayed(event)).await?;
                self.last_seen = event.seq;
            }
        }
        if log.last().is_some_and(|e| e.seq >= self.last_seen) {
            self.text = text;
            self.tokens = tokens;
        }
        Ok(())
    }

    async fn forward(&mut self, event: RelayEvent) -> Result<(), FollowError> {
        if event.seq <= self.last_seen {
            return Ok(());
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
            }
        }
        self.last_seen = event.seq;
        self.send(relayed(&event)).await
    }

    /// The request is final: drain the log, make the output equal the stored result, and send
    /// the one terminal event.
    async fn finish(&mut self) -> Result<(), FollowError> {
        self.catch_up().await?;
        let Some(row) = self.row().await? else {
            return Ok(());
        };
        let mut next_id = self.last_seen.saturating_add(1);
        match row.status {
            Status::Completed => {
                let result = row.result.clone().unwrap_or_default();
                if self.text != result {
                    if self.tokens > 0 {
                        self.send(FollowEvent::Restart {
                            seq: next_id,
                            reason: "resync".into(),
                        })
                        .await?;
                        next_id += 1;
                    }
                    self.send(FollowEvent::Token {
                        seq: next_id,
                        text: result,
                    })
                    .await?;
                    next_id += 1;
                }
                self.send(FollowEvent::Done {
                    seq: next_id,
                    row: Box::new(row),
                })
                .await
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
                self.send(FollowEvent::Failed {
                    seq: next_id,
                    code,
                    message,
                })
                .await
            }
            Status::Pending | Status::Running => Ok(()),
        }
    }
}

fn relayed(event: &RelayEvent) -> FollowEvent {
    match &event.kind {
        RelayKind::Token { text } => FollowEvent::Token {
            seq: event.seq,
            text: text.clone(),
        },
        RelayKind::Restart { reason } => FollowEvent::Restart {
            seq: event.seq,
            reason: reason.clone(),
        },
    }
}

/// The native SSE event of a follower's event.
fn to_sse(event: &FollowEvent) -> Event {
    let (name, seq, data) = match event {
        FollowEvent::Start {
            request_id,
            model,
            status,
        } => (
            "start",
            None,
            json!({"request_id": request_id, "model": model, "status": status}),
        ),
        FollowEvent::Token { seq, text } => ("token", Some(seq), json!({"text": text})),
        FollowEvent::Restart { seq, reason } => ("restart", Some(seq), json!({"reason": reason})),
        FollowEvent::Done { seq, row } => (
            "done",
            Some(seq),
            json!({
                "finish_reason": row.finish_reason,
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
            Some(seq),
            json!({"code": code, "message": message}),
        ),
    };
    let event = Event::default().event(name).data(data.to_string());
    match seq {
        Some(seq) => event.id(seq.to_string()),
        None => event,
    }
}
