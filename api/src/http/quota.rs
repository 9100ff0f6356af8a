//! The per-user quotas over HTTP ([`llm_shared::quota`]): unfinished requests at submit
//! (`USER_MAX_QUEUED`), open streams (`USER_MAX_STREAMS`) and waits (`USER_MAX_WAITS`). Each
//! refusal is a 429 with its own code and a `Retry-After`.

use llm_shared::quota::{QueuedDecision, Slot, UserSlots};

use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::state::AppState;

/// Seconds a client over its queued-work quota is told to wait: its backlog drains at the
/// workers' pace, which the api does not know; a short constant keeps retries cheap.
const QUEUED_RETRY_AFTER_SECS: u32 = 5;
/// Seconds a client holding all its streams or waits is told to wait: one of them may end at
/// any moment.
const SLOTS_RETRY_AFTER_SECS: u32 = 1;

/// Refuses work of `n` requests that would take the user past `USER_MAX_QUEUED` unfinished
/// requests (all or nothing: a batch is refused whole).
pub(super) async fn admit_queued(
    state: &AppState,
    user: &AuthUser,
    n: u32,
) -> Result<(), ApiError> {
    match state.quotas.queued.check(&state.pool, user.id, n).await? {
        QueuedDecision::Allowed => Ok(()),
        QueuedDecision::Refused { queued, max } => {
            tracing::info!(user.id = %user.id, queued, max, asked = n, "queued-work quota reached");
            let message = if n == 1 {
                format!(
                    "you have {queued} unfinished requests, the most allowed ({max}); retry once some have finished"
                )
            } else {
                format!(
                    "these {n} requests would take your unfinished requests ({queued}) past the {max} allowed; retry once some have finished, or send fewer"
                )
            };
            Err(ApiError::QuotaExceeded {
                code: "queue_quota_exceeded",
                message,
                retry_after_secs: QUEUED_RETRY_AFTER_SECS,
            })
        }
    }
}

/// A stream slot of the user on this process (`USER_MAX_STREAMS`), held while the stream is
/// open.
pub(super) fn stream_slot(state: &AppState, user: &AuthUser) -> Result<Slot, ApiError> {
    take(&state.quotas.streams, user, "too_many_streams", "streams")
}

/// A wait slot of the user on this process (`USER_MAX_WAITS`), held while the wait lasts.
pub(super) fn wait_slot(state: &AppState, user: &AuthUser) -> Result<Slot, ApiError> {
    take(
        &state.quotas.waits,
        user,
        "too_many_waits",
        "waiting requests",
    )
}

fn take(
    slots: &UserSlots,
    user: &AuthUser,
    code: &'static str,
    what: &str,
) -> Result<Slot, ApiError> {
    slots.try_take(user.id).ok_or_else(|| {
        tracing::info!(user.id = %user.id, code, "per-user cap of open {what} reached");
        ApiError::QuotaExceeded {
            code,
            message: format!(
                "you have {} {what} open, the most allowed at once; close one or retry shortly",
                slots.max()
            ),
            retry_after_secs: SLOTS_RETRY_AFTER_SECS,
        }
    })
}
