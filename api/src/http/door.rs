//! What the foreign-API doors (OpenAI's `/v1/chat/completions` and `/v1/completions`,
//! Anthropic's `/v1/messages`) share: a translated call runs as an ordinary durable request,
//! validated as the native submit is, then streamed through the relay or waited for up to
//! `OPENAI_COMPAT_WAIT_SECS`. Each door renders the outcome, and its errors, in its own format.

use axum::http::HeaderMap;
use uuid::Uuid;

use super::generate::{Admitted, Awaited, accept_answered, idempotency_key, wait_subscribed};
use super::stream::{FollowStream, Subscribed, follow_events, submit_subscribed};
use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::state::AppState;
use crate::telemetry::TraceContext;
use llm_shared::ratelimit::RateState;
use llm_shared::requests::{Durability, GenerateBody, NewRequest, RequestInput, RequestView};

/// How a door's call ran.
pub(super) enum Outcome {
    /// Streamed: the follower's events from the start, holding the user's stream slot.
    Streamed(FollowStream),
    /// Waited for: the request's row once final, or as it was when the wait ran out.
    Waited(Box<RequestView>),
}

pub(super) struct Run {
    /// The durable request's id.
    pub id: Uuid,
    pub outcome: Outcome,
    /// The rate-limit state the submit counted, for the answer's headers.
    pub rate: Option<RateState>,
}

/// Runs `body` for `user` as a durable request: streamed if `stream`, else waited for (the
/// wait slot is taken before anything is stored, so a user at `USER_MAX_WAITS` is refused with
/// nothing queued). A waited-for call is stored [`Durability::WithOutcome`]: its caller hears
/// of it only with its outcome, or once its row is on disk; its completion notice carries that
/// outcome, which is answered with the input held here, without reading the row back.
pub(super) async fn run(
    state: AppState,
    user: &AuthUser,
    trace: TraceContext,
    headers: &HeaderMap,
    body: GenerateBody,
    stream: bool,
) -> Result<Run, ApiError> {
    let registry = state.models.current();
    let key = idempotency_key(headers)?;
    let mut new = NewRequest::validate(
        body,
        user.id,
        key,
        &registry,
        state.limits.job_max_attempts,
        state.cache.scope,
    )
    .map_err(ApiError::from)?;
    new.trace_id = Some(trace.trace_id);
    if stream {
        let Subscribed {
            id,
            subscription,
            rate,
            slot,
        } = submit_subscribed(&state, user, new).await?;
        let events = follow_events(state, id, user.id, subscription, 0, slot);
        return Ok(Run {
            id,
            outcome: Outcome::Streamed(events),
            rate,
        });
    }
    let slot = super::quota::wait_slot(&state, user)?;
    // Before the row exists, so that its completion cannot come unseen.
    let (new_id, subscription) = (new.id, state.notices.subscribe(new.id));
    let input = RequestInput::of(&new);
    let Admitted {
        submitted,
        rate,
        answered,
    } = accept_answered(&state, user, new, Durability::WithOutcome).await?;
    let row = match answered {
        Some(row) => row,
        None => {
            let wait = state.limits.compat_wait;
            // Stored as submitted and unfinished: nothing to read before its notice. Otherwise
            // (an earlier request's Idempotency-Key, a cache-table hit) read it first.
            let awaited = if submitted.id == new_id {
                Awaited {
                    id: new_id,
                    subscription,
                    queued: !submitted.status.is_final(),
                    input: Some(input),
                    history: false,
                }
            } else {
                Awaited {
                    id: submitted.id,
                    subscription: state.notices.subscribe(submitted.id),
                    queued: false,
                    input: None,
                    history: false,
                }
            };
            let row = wait_subscribed(&state, user, wait, Some(slot), awaited)
                .await?
                .request;
            // Named unfinished (the wait ran out): on disk first. A final row's outcome was
            // committed waiting for the disk, which carried the submit's commit before it (a
            // cache hit's row, as with every hit, may reach the disk after its answer).
            if !row.status.is_final() && !submitted.durable {
                llm_shared::db::make_durable(&state.pool).await?;
            }
            Box::new(row)
        }
    };
    Ok(Run {
        id: submitted.id,
        outcome: Outcome::Waited(row),
        rate,
    })
}
