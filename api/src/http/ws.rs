//! WebSocket streaming, the same events as SSE (`stream`) as JSON text messages
//! `{"event", "id", "data"}` (`id` the relay seq, absent on `start`):
//! `GET /api/v1/generate/{request_id}/ws` follows a request, resuming after `last_event_id`, with
//! a bearer token or the request's stream token (`?access_token=`, as a browser's `WebSocket`
//! cannot send headers either); `GET /api/v1/generate/ws` submits over the socket: its first
//! message is `{"request": <the submit body>}`, with `"token": <bearer JWT>` when the upgrade
//! carried no `Authorization`. The server closes the socket after the terminal event (`done` or
//! `error`); a failure before it is the one error body as the last message, then a close.
//!
//! A message is at most `MAX_BODY_BYTES`, a first message is awaited [`FIRST_MESSAGE_WAIT`], and
//! a socket holds one of the user's `USER_MAX_STREAMS` like an SSE stream.

use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::Response;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

use super::extract::{QueryParams, has_nul_escape};
use super::stream::{AttachQuery, FollowStream, event_parts};
use crate::auth::AuthUser;
use crate::error::{ApiError, doc};
use crate::state::AppState;
use crate::telemetry::TraceContext;
use llm_shared::requests::GenerateBody;

/// How long a submit socket waits for its first message.
pub const FIRST_MESSAGE_WAIT: Duration = Duration::from_secs(10);
/// How often an idle socket is pinged (proxies close silent connections).
const PING_EVERY: Duration = Duration::from_secs(15);

#[utoipa::path(
    get,
    path = "/api/v1/generate/{request_id}/ws",
    tag = "generate",
    summary = "Follow a request over a WebSocket (the SSE events as JSON messages)",
    params(("request_id" = uuid::Uuid, Path, description = "the request's id (a UUID)"), AttachQuery),
    responses(
        (status = 101, description = "messages {\"event\", \"id\", \"data\"}: start, token, restart, tool_call, then done or error; then a close"),
        doc::BadRequest, doc::Unauthorized, doc::NotFound, doc::RateLimited, doc::Unavailable,
    ),
    security(("bearer" = []), ("stream_token" = [])),
)]
pub async fn attach(
    State(state): State<AppState>,
    Path(request_id): Path<String>,
    QueryParams(query): QueryParams<AttachQuery>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // Credentials and the request first: a refused caller learns nothing more from the upgrade.
    let events = super::stream::follow_attached(&state, &request_id, &query, &headers).await?;
    Ok(bounded(upgrade?, &state).on_upgrade(move |socket| relay(socket, events)))
}

#[utoipa::path(
    get,
    path = "/api/v1/generate/ws",
    tag = "generate",
    summary = "Submit over a WebSocket and follow the request",
    params(("Idempotency-Key" = Option<String>, Header, description = "a repeated key (same user, same body) returns the first request")),
    responses(
        (status = 101, description = "send {\"request\": GenerateBody} (and \"token\" without Authorization); then the messages of …/{request_id}/ws"),
        doc::BadRequest, doc::Unauthorized,
    ),
    security(("bearer" = []), ()),
)]
pub async fn submit(
    State(state): State<AppState>,
    trace: TraceContext,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    // Authorization, when sent, is checked before the upgrade; else the first message has it.
    let caller = if headers.contains_key(header::AUTHORIZATION) {
        Some(AuthUser::from_headers(&headers, &state)?)
    } else {
        None
    };
    let upgrade = bounded(upgrade?, &state);
    Ok(upgrade.on_upgrade(move |mut socket| async move {
        match submitted(&mut socket, &state, caller, &headers, trace).await {
            Ok(events) => relay(socket, events).await,
            Err(err) => refuse(socket, &err).await,
        }
    }))
}

impl From<WebSocketUpgradeRejection> for ApiError {
    fn from(_: WebSocketUpgradeRejection) -> Self {
        Self::BadRequest("this route is a WebSocket: send a GET with Upgrade: websocket".into())
    }
}

/// The upgrade with the api's body limit on every message.
fn bounded(upgrade: WebSocketUpgrade, state: &AppState) -> WebSocketUpgrade {
    let max = state.limits.max_body_bytes;
    upgrade.max_message_size(max).max_frame_size(max)
}

/// The first message of a submit socket.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitMessage {
    /// The bearer JWT, when the upgrade carried no `Authorization`.
    token: Option<String>,
    request: GenerateBody,
}

/// Reads the first message, authenticates it and submits its request, subscribed to its relay.
async fn submitted(
    socket: &mut WebSocket,
    state: &AppState,
    caller: Option<AuthUser>,
    headers: &HeaderMap,
    trace: TraceContext,
) -> Result<FollowStream, ApiError> {
    let text = loop {
        match tokio::time::timeout(FIRST_MESSAGE_WAIT, socket.recv()).await {
            Err(_) => {
                return Err(ApiError::BadRequest(format!(
                    "no request within {} s of the upgrade",
                    FIRST_MESSAGE_WAIT.as_secs()
                )));
            }
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => {
                return Err(ApiError::BadRequest("the socket closed".into()));
            }
            Ok(Some(Ok(Message::Text(text)))) => break text,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(Some(Ok(Message::Binary(_)))) => {
                return Err(ApiError::BadRequest(
                    "the first message must be JSON text".into(),
                ));
            }
        }
    };
    if has_nul_escape(text.as_bytes()) {
        return Err(ApiError::BadRequest(
            "text must not contain NUL characters (\\u0000)".into(),
        ));
    }
    let message: SubmitMessage = serde_json::from_str(text.as_str())
        .map_err(|err| ApiError::BadRequest(format!("the first message: {err}")))?;
    let user = match (caller, message.token) {
        (Some(user), _) => user,
        (None, Some(token)) => {
            let claims = state.jwt.verify(token.trim())?;
            AuthUser {
                id: claims.sub,
                role: claims.role,
            }
        }
        (None, None) => {
            return Err(ApiError::Unauthorized(
                "no credentials: send Authorization with the upgrade or \"token\" in the first message",
            ));
        }
    };
    let new = super::generate::new_request(state, &user, headers, message.request, trace)?;
    let subscribed = super::stream::submit_subscribed(state, &user, new).await?;
    crate::telemetry::record_request_id(subscribed.id);
    Ok(super::stream::follow_events(
        state.clone(),
        subscribed.id,
        user.id,
        subscribed.subscription,
        0,
        subscribed.slot,
    ))
}

/// Sends the follower's events until the terminal one, then closes; stops early when the
/// client closes or goes away (the generation itself carries on).
async fn relay(mut socket: WebSocket, mut events: FollowStream) {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.reset();
    loop {
        tokio::select! {
            event = events.next() => {
                let Some(event) = event else { break };
                let (name, id, data) = event_parts(&event);
                let message = json!({"event": name, "id": id, "data": data}).to_string();
                if socket.send(Message::Text(message.into())).await.is_err() {
                    return;
                }
                ping.reset();
            }
            incoming = socket.recv() => match incoming {
                None | Some(Err(_) | Ok(Message::Close(_))) => return,
                // Nothing else is asked of a client while it follows.
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
        }
    }
    close(socket, close_code::NORMAL, "").await;
}

/// The error body as the last message, then a close saying why (policy or server error).
async fn refuse(mut socket: WebSocket, err: &ApiError) {
    let body = serde_json::to_string(&err.body()).unwrap_or_default();
    let _ = socket.send(Message::Text(body.into())).await;
    let code = if err.status().is_server_error() {
        close_code::ERROR
    } else {
        close_code::POLICY
    };
    close(socket, code, err.code()).await;
}

async fn close(mut socket: WebSocket, code: u16, reason: &'static str) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}
