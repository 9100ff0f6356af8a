//! `POST /api/v1/generate` (durable submit) and `GET /api/v1/generate/{request_id}` (poll,
//! optionally long-poll with `?wait=N`, at most `USER_MAX_WAITS` at once per user).

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::extract::{JsonBody, QueryParams};
use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::error::doc;
use crate::state::AppState;
use crate::telemetry::TraceContext;
use llm_shared::notices::Subscription;
use llm_shared::quota::Slot;
use llm_shared::requests::{
    self, AttemptView, Durability, GenerateBody, NewRequest, RequestInput, RequestView, Status,
};

const IDEMPOTENCY_HEADER: &str = "idempotency-key";

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Accepted {
    pub request_id: Uuid,
    pub status: Status,
    pub poll_url: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub idempotent_replay: bool,
}

#[utoipa::path(
    post,
    path = "/api/v1/generate",
    tag = "generate",
    summary = "Submit a generation (durable job)",
    params(("Idempotency-Key" = Option<String>, Header, description = "a repeated key (same user, same body) returns the first request"), SubmitQuery),
    request_body = llm_shared::requests::GenerateBody,
    responses(
        (status = 202, description = "stored and queued", body = Accepted),
        (status = 200, description = "answered from the cache (already completed)", body = Accepted),
        doc::BadRequest, doc::Unauthorized, doc::TooLarge, doc::NotJson, doc::Invalid, doc::Conflict, doc::RateLimited, doc::Unavailable,
    ),
    security(("bearer" = [])),
)]
pub async fn submit(
    State(state): State<AppState>,
    user: AuthUser,
    trace: TraceContext,
    headers: HeaderMap,
    QueryParams(query): QueryParams<SubmitQuery>,
    JsonBody(body): JsonBody<GenerateBody>,
) -> Result<Response, ApiError> {
    let mut new = new_request(&state, &user, &headers, body, trace)?;
    new.stream = query.stream;
    let Admitted {
        submitted, rate, ..
    } = accept(&state, &user, new).await?;
    let poll_url = format!("/api/v1/generate/{}", submitted.id);
    // Answered from the cache: already complete, so 200 rather than "accepted for later".
    let code = if submitted.status == Status::Completed {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let mut response = (
        code,
        Json(Accepted {
            request_id: submitted.id,
            status: submitted.status,
            poll_url: poll_url.clone(),
            idempotent_replay: submitted.replayed,
        }),
    )
        .into_response();
    if let Ok(location) = HeaderValue::from_str(&poll_url) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    if submitted.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    super::rate_limits::attach(&mut response, rate);
    Ok(response)
}

/// The request a native submit body asks for: its template rendered, validated against the
/// registry, with the caller's `Idempotency-Key` and the api request's trace id.
pub(super) fn new_request(
    state: &AppState,
    user: &AuthUser,
    headers: &HeaderMap,
    body: GenerateBody,
    trace: TraceContext,
) -> Result<NewRequest, ApiError> {
    let key = idempotency_key(headers)?;
    let registry = state.models.current();
    let body = body.resolve_template(&state.prompts, &registry)?;
    let mut new = NewRequest::validate(
        body,
        user.id,
        key,
        &registry,
        state.limits.job_max_attempts,
        state.cache.scope,
    )?;
    new.trace_id = Some(trace.trace_id);
    Ok(new)
}

/// A submit that passed the rate limits and was stored.
pub(super) struct Admitted {
    pub submitted: requests::Submitted,
    /// The rate-limit state it counted (`None` if the limiter was not consulted), for the
    /// answer's headers ([`super::rate_limits::attach`]).
    pub rate: Option<llm_shared::ratelimit::RateState>,
    /// The request as answered from the cache's fast copy, when the caller asked for it
    /// ([`accept_answered`]): its row may not be written yet.
    pub answered: Option<Box<RequestView>>,
}

/// Looks a validated request up in the cache, counts it against the caller's rate limits (a
/// cache hit as a request without tokens: no provider runs it), refuses it if it would take
/// the caller past its queued-work quota (a fast-copy cache hit queues nothing and is not
/// counted) and stores it (answered from the cache, attached to an identical request in
/// flight, or committed with its job).
pub(super) async fn accept(
    state: &AppState,
    user: &AuthUser,
    new: NewRequest,
) -> Result<Admitted, ApiError> {
    accept_as(state, user, new, false, Durability::AtSubmit).await
}

/// [`accept`], keeping the request as answered if it is a hit of the cache's fast copy: a
/// caller that answers with the result (the foreign doors) needs no read of a row that the hit
/// writer stores a few milliseconds later (`GET` waits for it; this does not).
/// `durability`: when the stored request's commit reaches the disk (a caller that names it only
/// once final needs not wait for it).
pub(super) async fn accept_answered(
    state: &AppState,
    user: &AuthUser,
    new: NewRequest,
    durability: Durability,
) -> Result<Admitted, ApiError> {
    accept_as(state, user, new, true, durability).await
}

/// [`admit`] in a `submit` span, whose trace context the request's job carries on to the
/// worker (when spans are exported).
async fn accept_as(
    state: &AppState,
    user: &AuthUser,
    mut new: NewRequest,
    keep_answer: bool,
    durability: Durability,
) -> Result<Admitted, ApiError> {
    use tracing::Instrument;
    let span = tracing::info_span!(
        "submit",
        gen_ai.request.model = %new.model,
        request.id = tracing::field::Empty,
    );
    new.traceparent = span.in_scope(llm_shared::telemetry::current_traceparent);
    let admitted = admit(state, user, new, keep_answer, durability)
        .instrument(span.clone())
        .await?;
    span.record("request.id", tracing::field::display(admitted.submitted.id));
    crate::telemetry::record_request_id(admitted.submitted.id);
    Ok(admitted)
}

/// Counts the request against the limits and the quota, and stores it (or answers it from
/// the cache's fast copy).
async fn admit(
    state: &AppState,
    user: &AuthUser,
    new: NewRequest,
    keep_answer: bool,
    durability: Durability,
) -> Result<Admitted, ApiError> {
    let estimated = new.estimated_tokens;
    let (rate, how) = match state.submitter.fast_key(&new) {
        // One round trip: the cache's fast copy read and the request counted together.
        Some(key) => {
            let (rate, cached) =
                super::rate_limits::enforce_or_hit(state, user, estimated, key).await?;
            let hit = cached
                .as_deref()
                .and_then(llm_shared::cache::ResponseCache::parse_fast);
            (rate, requests::Submitter::insert_for(Some(hit)))
        }
        None => (
            super::rate_limits::enforce(state, user, estimated).await?,
            requests::Insert::Queued,
        ),
    };
    let tokens = match how {
        requests::Insert::CacheHit(_) => 0,
        requests::Insert::Queued | requests::Insert::CachedOrQueued => estimated,
    };
    if !matches!(how, requests::Insert::CacheHit(_))
        && let Err(refused) = super::quota::admit_queued(state, user, 1).await
    {
        // Refused after the limiter counted it: nothing is stored, so nothing stays charged.
        if let Some(rate) = rate {
            let tokens = u32::try_from(tokens.max(0)).unwrap_or(0);
            state
                .limiter
                .give_back(user.id, rate.window, 1, tokens)
                .await;
        }
        return Err(refused);
    }
    let answered = match &how {
        requests::Insert::CacheHit(hit) if keep_answer => Some(Box::new(
            RequestView::of_cache_hit(&new, hit, chrono::Utc::now()),
        )),
        _ => None,
    };
    let submitted = state.submitter.store(new, how, durability).await?;
    // A reused Idempotency-Key answers with the earlier request instead.
    let answered = answered.filter(|view| view.id == submitted.id);
    if let Some(rate) = rate
        && tokens > 0
        && submitted.cache_hit == Some(true)
    {
        // Answered from the cache table after all (its fast copy was missing): no provider
        // runs it, so its tokens go back.
        let refund = -i64::from(tokens);
        state.limiter.reconcile(user.id, rate.window, refund).await;
    }
    if let Some(hit) = submitted.cache_hit {
        state.metrics.cache_lookup(hit);
    }
    if !submitted.replayed {
        tracing::info!(request.id = %submitted.id, user.id = %user.id, "generation accepted");
    }
    Ok(Admitted {
        submitted,
        rate,
        answered,
    })
}

/// The `Idempotency-Key` header, if any.
pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    headers
        .get(IDEMPOTENCY_HEADER)
        .map(|value| {
            value
                .to_str()
                .map(str::to_owned)
                .map_err(|_| ApiError::BadRequest("Idempotency-Key must be visible ASCII".into()))
        })
        .transpose()
}

pub(super) fn parse_request_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::BadRequest("request_id must be a UUID".into()))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SubmitQuery {
    /// Relay the tokens as they are generated, so that `GET …/stream` (e.g. a browser's
    /// `EventSource` with a stream token) follows them one by one rather than getting the
    /// whole text at the end.
    #[serde(default)]
    pub stream: bool,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PollQuery {
    /// Seconds to hold the answer until the request finishes (capped by `MAX_WAIT_SECS`).
    #[serde(default)]
    pub wait: Option<f64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PollResponse {
    #[serde(flatten)]
    pub request: RequestView,
    pub attempt_history: Vec<AttemptView>,
}

#[utoipa::path(
    get,
    path = "/api/v1/generate/{request_id}",
    tag = "generate",
    summary = "Read a request (optionally wait for it)",
    params(("request_id" = uuid::Uuid, Path, description = "the request's id (a UUID)"), PollQuery),
    responses(
        (status = 200, description = "the request and its attempt history", body = PollResponse),
        doc::BadRequest, doc::Unauthorized, doc::NotFound, doc::RateLimited, doc::Unavailable,
    ),
    security(("bearer" = [])),
)]
pub async fn poll(
    State(state): State<AppState>,
    user: AuthUser,
    Path(request_id): Path<String>,
    QueryParams(query): QueryParams<PollQuery>,
) -> Result<Json<PollResponse>, ApiError> {
    let id = parse_request_id(&request_id)?;
    crate::telemetry::record_request_id(id);
    let wait = match query.wait {
        None => Duration::ZERO,
        Some(secs) if secs.is_finite() && secs >= 0.0 => {
            // Capped before converting: a huge number must not overflow a Duration (found by
            // scripts/fuzz.sh: `?wait=1.8e308` panicked the handler).
            Duration::from_secs_f64(secs.min(state.limits.max_wait.as_secs_f64()))
        }
        Some(_) => {
            return Err(ApiError::BadRequest(
                "wait must be a non-negative number of seconds".into(),
            ));
        }
    };

    let (request, attempt_history) = if wait.is_zero() {
        let request = find(&state, id, user.id).await?;
        (request, requests::attempts_of(&state.pool, id).await?)
    } else {
        let seen = wait_until_final(&state, id, &user, wait, None).await?;
        (seen.request, seen.history.unwrap_or_default())
    };
    Ok(Json(PollResponse {
        request,
        attempt_history,
    }))
}

pub(super) async fn find(state: &AppState, id: Uuid, user: Uuid) -> Result<RequestView, ApiError> {
    // A cache hit this process answered may not have its row yet.
    state.submitter.written(id).await;
    requests::find_for_user(&state.pool, id, user)
        .await?
        .ok_or(ApiError::NotFound("no such generation request"))
}

/// Answers as soon as the request is final, or when `wait` is up, or at once when the process
/// starts to stop, with its attempt history. The subscription is taken before the row is read,
/// so a completion between the read and the wait is not missed.
///
/// Waiting holds one of the user's `USER_MAX_WAITS` slots on this process: `held` if the
/// caller took it already (before submitting what it waits for), else one taken once the
/// request is found unfinished (a final request is answered without one). The slot is freed
/// when this returns or is dropped (the client went away).
pub(super) async fn wait_until_final(
    state: &AppState,
    id: Uuid,
    user: &AuthUser,
    wait: Duration,
    held: Option<Slot>,
) -> Result<Seen, ApiError> {
    let awaited = Awaited {
        id,
        subscription: state.notices.subscribe(id),
        queued: false,
        input: None,
        history: true,
    };
    wait_subscribed(state, user, wait, held, awaited).await
}

/// A request waited for, subscribed to its completion notice before it was stored or read.
pub(super) struct Awaited {
    pub id: Uuid,
    pub subscription: Subscription,
    /// Stored unfinished just now: nothing to read before its notice.
    pub queued: bool,
    /// The request's input, if the caller holds it (it sent it; else the first read, which
    /// found the request unfinished, gives it): a notice carrying the request's outcome
    /// ([`requests::Notice::Outcome`]) then answers without a read.
    pub input: Option<RequestInput>,
    /// Whether the answer shows the request's attempt history: from its notice if it carried
    /// it ([`requests::Notice::OutcomeAndAttempts`]), else read.
    pub history: bool,
}

/// A waited request as last seen: final, or as it was when the wait ended.
pub(super) struct Seen {
    pub request: RequestView,
    /// Its attempt history, if [`Awaited::history`] asked for it.
    pub history: Option<Vec<AttemptView>>,
}

/// Request `id`'s row as its last notice told it, if final and told whole, with the attempt
/// history the notice carried if `history` asks for it (`input` is then taken: a notice is
/// sent only once a request is final, so one that does not read as final is not expected, and
/// is answered by a read).
fn noticed_final(
    id: Uuid,
    subscription: &Subscription,
    input: &mut Option<RequestInput>,
    history: bool,
) -> Option<(RequestView, Option<Vec<AttemptView>>)> {
    input.as_ref()?;
    let outcome = subscription.outcome()?;
    let told = RequestView::of_notice(id, input.take()?, &outcome).and_then(|view| {
        let attempts = if history {
            AttemptView::history_of_notice(&outcome)?
        } else {
            None
        };
        Ok((view, attempts))
    });
    match told {
        Ok((view, history)) if view.status.is_final() => Some((view, history)),
        Ok(_) => None,
        Err(err) => {
            tracing::warn!(error = %err, request.id = %id, "a notice's outcome did not read");
            None
        }
    }
}

/// [`wait_until_final`] for a request `awaited` subscribed to already. A final request is
/// counted as answered from its notice (nothing read after it) or from a read.
pub(super) async fn wait_subscribed(
    state: &AppState,
    user: &AuthUser,
    wait: Duration,
    mut held: Option<Slot>,
    awaited: Awaited,
) -> Result<Seen, ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    let Awaited {
        id,
        subscription,
        mut queued,
        mut input,
        history,
    } = awaited;
    let user_id = user.id;
    // The row as read, with its history if asked for.
    let read = |request: RequestView| async move {
        let history = if history {
            Some(requests::attempts_of(&state.pool, id).await?)
        } else {
            None
        };
        Ok::<_, ApiError>(Seen { request, history })
    };
    loop {
        let notified = subscription.notify().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let unread = std::mem::take(&mut queued) && !subscription.noticed();
        if !unread {
            if let Some((request, told)) = noticed_final(id, &subscription, &mut input, history) {
                let whole = told.is_some() || !history;
                state.metrics.wait_answered(whole);
                return match told {
                    Some(told) => Ok(Seen {
                        request,
                        history: Some(told),
                    }),
                    None => read(request).await,
                };
            }
            let request = find(state, id, user_id).await?;
            if request.status.is_final() {
                state.metrics.wait_answered(false);
                return read(request).await;
            }
            if input.is_none() {
                input = Some(RequestInput::of_view(request));
            }
        }
        if held.is_none() {
            held = Some(super::quota::wait_slot(state, user)?);
        }
        // The wait ran out, or the process stops: answered as the request is now.
        let ended = tokio::select! {
            _ = &mut notified => false,
            () = tokio::time::sleep_until(deadline) => true,
            () = state.shutdown.cancelled() => true,
        };
        if ended {
            return read(find(state, id, user_id).await?).await;
        }
    }
}
