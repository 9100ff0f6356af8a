//! One job: claims its request from the queue, runs it along its fallback chain, records the
//! outcome.
//!
//! Every job is safe to run more than once. The request row is claimed (pending → running, or
//! running with an expired lease → running) before the provider is called, and every final
//! write is guarded by that claim, so a second delivery of a job can neither run a request
//! that is running elsewhere nor finish one twice. A claim is a lease that this process
//! renews while it runs the request: when the process dies, the lease runs out and the next
//! delivery of the job (apalis re-queues a dead worker's jobs) claims it again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis::prelude::{BoxDynError, Data};
use chrono::Utc;
use tracing::Instrument;
use uuid::Uuid;

use crate::state::WorkerState;

use crate::execution::{BUDGET_WAIT, Outcome};
use crate::persist;
use llm_shared::queue::GenerationJob;
use llm_shared::requests::{self, Claim, ClaimedRequest};

/// Marks a request as running in this process for as long as it lives.
struct RunningGuard<'a> {
    state: &'a WorkerState,
    id: Uuid,
}

impl<'a> RunningGuard<'a> {
    fn new(state: &'a WorkerState, id: Uuid) -> Self {
        if let Ok(mut set) = state.running.lock() {
            set.insert(id);
        }
        Self { state, id }
    }
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.state.running.lock() {
            set.remove(&self.id);
        }
    }
}

/// The apalis job handler. `Ok` means "nothing left for this delivery to do"; an `Err` (only
/// for database failures) lets apalis deliver the job again.
///
/// The run goes on in a task of its own: an apalis worker that stops on a backend error (a
/// database outage) drops the handlers it was running, and a provider's answer in hand would
/// be dropped with them, and paid for again by the next delivery. The task keeps its request
/// among those whose leases are renewed, so that delivery waits for it instead.
pub async fn handle_generation(
    job: GenerationJob,
    state: Data<Arc<WorkerState>>,
) -> Result<(), BoxDynError> {
    let state: Arc<WorkerState> = Arc::clone(&state);
    let run = tokio::spawn(async move {
        continue_trace(&state, job.request_id, job.traceparent.as_deref()).await
    });
    match run.await {
        Ok(done) => done.map_err(Into::into),
        Err(stopped) => Err(stopped.into()),
    }
}

/// Runs one delivery of a request's job to its end.
pub async fn process(state: &WorkerState, request_id: Uuid) -> Result<(), sqlx::Error> {
    continue_trace(state, request_id, None).await
}

/// [`process`], its span the child of the submit's span `traceparent` names (when spans are
/// exported).
async fn continue_trace(
    state: &WorkerState,
    request_id: Uuid,
    traceparent: Option<&str>,
) -> Result<(), sqlx::Error> {
    // One span per delivery of the job, from the claim on. Once claimed, it carries the run and
    // the trace id of the api request that submitted it: the worker's logs join the api's.
    let span = tracing::info_span!(
        "job",
        otel.kind = "consumer",
        request.id = %request_id,
        attempt = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    if let Some(traceparent) = traceparent {
        llm_shared::telemetry::set_remote_parent(&span, traceparent);
    }
    async move {
        let claimed = match claim_waiting_for_lease(state, request_id).await? {
            Some(claimed) => claimed,
            None => return Ok(()),
        };
        let span = tracing::Span::current();
        span.record("attempt", claimed.attempts);
        if let Some(trace_id) = &claimed.trace_id {
            span.record("trace_id", trace_id.as_str());
        }
        run_claimed(state, claimed).await
    }
    .instrument(span)
    .await
}

async fn run_claimed(state: &WorkerState, claimed: ClaimedRequest) -> Result<(), sqlx::Error> {
    let request_id = claimed.id;
    let _guard = RunningGuard::new(state, request_id);
    let Some(outcome) = execute_unless_cancelled(state, &claimed).await? else {
        tracing::info!(request.id = %request_id, "cancelled while running; provider call stopped");
        requests::close_cancelled_attempts(&state.pool, request_id).await?;
        let elapsed = since(claimed.created_at);
        state
            .metrics
            .generation_ended(&claimed.model, "none", "cancelled", Some(elapsed));
        return Ok(());
    };
    let held = match &outcome {
        Outcome::Completed {
            output,
            provider,
            served_model,
            cost_usd,
            attempt,
            latency,
        } => {
            let completion = requests::Success {
                attempt: *attempt,
                provider,
                served_model,
                output,
                latency: *latency,
                cost_usd: *cost_usd,
                cache_ttl: state.cache_ttl(&claimed),
            };
            let stored = persist::retrying(request_id, "result", state.result_retry, || {
                state.complete(&claimed, &completion)
            })
            .await;
            let held = match stored {
                Ok(held) => held,
                Err(err) => {
                    give_up_answer(state, &claimed, &completion, &err).await;
                    return Err(err);
                }
            };
            if held {
                tracing::info!(request.id = %request_id, provider, latency_ms = latency.as_millis() as u64, "generation completed");
                let metrics = &state.metrics;
                let elapsed = since(claimed.created_at);
                metrics.generation_ended(served_model, provider, "completed", Some(elapsed));
                metrics.usage(
                    served_model,
                    output.prompt_tokens,
                    output.completion_tokens,
                    *cost_usd,
                );
                // Two independent Redis writes: one round trip, not two.
                tokio::join!(
                    state.fill_redis_cache(&claimed, &completion),
                    state.reconcile_tokens(&claimed, output)
                );
            }
            held
        }
        Outcome::Failed { code, message } => {
            tracing::warn!(request.id = %request_id, error.code = code, error = %message, "generation failed");
            let held = persist::retrying(request_id, "failure", state.result_retry, || {
                requests::fail(&state.pool, &claimed, &state.name, code, message)
            })
            .await?;
            if held {
                let elapsed = since(claimed.created_at);
                state
                    .metrics
                    .generation_ended(&claimed.model, "none", "failed", Some(elapsed));
            }
            held
        }
        Outcome::Reschedule {
            delay,
            fallback_index,
            code,
            message,
        } => {
            tracing::info!(request.id = %request_id, retry_in_ms = delay.as_millis() as u64, "rescheduled");
            state
                .metrics
                .generation_ended(&claimed.model, "none", "rescheduled", None);
            if *code == BUDGET_WAIT && claimed.batch_id.is_some() {
                // Before the release: the sooner the pause, the fewer items fetched for nothing.
                state.fetch_pause.batch_item_sent_back(*delay).await;
            }
            let held = persist::retrying(request_id, "reschedule", state.result_retry, || {
                requests::release_for_retry(
                    &state.pool,
                    &claimed,
                    &state.name,
                    *delay,
                    *fallback_index,
                    code,
                    message,
                )
            })
            .await?;
            if held {
                // Announced to no one: this worker looks for it when it comes due.
                state.wakeups.due_in(*delay);
            }
            held
        }
    };
    if !held {
        tracing::warn!(request.id = %request_id, run = claimed.attempts, "lost the claim while running; outcome discarded");
    }
    Ok(())
}

/// The answer could not be stored within `WORKER_RESULT_RETRY_SECS`: the request will run again.
/// Its attempt is closed as what it was (the provider answered, the result was not stored), if
/// the database takes even that.
async fn give_up_answer(
    state: &WorkerState,
    claimed: &ClaimedRequest,
    completion: &requests::Success<'_>,
    err: &sqlx::Error,
) {
    tracing::error!(request.id = %claimed.id, error = %err, "the provider answered but the result could not be stored; the request will run again");
    let message = format!("the provider answered, but the result could not be stored: {err}");
    let failure = requests::AttemptFailure {
        kind: "result_not_stored",
        http_status: None,
        message: &message,
        latency: completion.latency,
        provider: Some(completion.provider),
        upstream_model: Some(&completion.output.upstream_model),
    };
    if let Err(err) =
        requests::fail_attempt(&state.pool, claimed.id, completion.attempt, &failure).await
    {
        tracing::warn!(request.id = %claimed.id, error = %err, "could not record the attempt whose result was not stored");
    }
}

/// Runs the request, unless it is cancelled meanwhile (then `None`: the provider call is
/// dropped mid-flight). A notice (or every subscriber's re-check after the listener lost its
/// connection) makes it read the request's status; a read that fails leaves the call running:
/// dropping it would throw away an answer that may be paid for already, and a cancel the read
/// missed still stands (the completion's guard refuses a cancelled request).
async fn execute_unless_cancelled(
    state: &WorkerState,
    claimed: &ClaimedRequest,
) -> Result<Option<Outcome>, sqlx::Error> {
    let finished = state.notices.subscribe(claimed.id);
    let execution = state.executor.execute(&state.pool, claimed, &state.name);
    tokio::pin!(execution);
    loop {
        let notified = finished.notify().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        tokio::select! {
            outcome = &mut execution => return outcome.map(Some),
            _ = &mut notified => {
                let status: Result<Option<requests::Status>, sqlx::Error> =
                    sqlx::query_scalar("SELECT status FROM generation_requests WHERE id = $1")
                        .bind(claimed.id)
                        .fetch_optional(&state.pool)
                        .await;
                match status {
                    Ok(Some(requests::Status::Cancelled)) => return Ok(None),
                    Ok(_) => {}
                    Err(err) => {
                        tracing::warn!(request.id = %claimed.id, error = %err, "could not read whether the request was cancelled; its call goes on");
                    }
                }
            }
        }
    }
}

/// Time since `at` (zero if the clocks disagree).
fn since(at: chrono::DateTime<Utc>) -> Duration {
    (Utc::now() - at).to_std().unwrap_or_default()
}

/// Claims the request; if another worker's lease on it is still valid, waits for it to run out
/// (a holder that is alive renews it, and will finish the request itself).
async fn claim_waiting_for_lease(
    state: &WorkerState,
    request_id: Uuid,
) -> Result<Option<ClaimedRequest>, sqlx::Error> {
    let give_up_at = Instant::now() + state.lease * 2;
    loop {
        match state.claim(request_id).await? {
            Claim::Claimed(claimed) => return Ok(Some(*claimed)),
            Claim::Finished | Claim::NotFound => return Ok(None),
            Claim::Exhausted => {
                tracing::error!(request.id = %request_id, "request failed: attempts exhausted by lost workers");
                return Ok(None);
            }
            Claim::HeldElsewhere { until } => {
                if Instant::now() >= give_up_at {
                    tracing::info!(request.id = %request_id, "request is held by a live worker; leaving it to that worker");
                    return Ok(None);
                }
                let wait =
                    (until - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(50);
                tokio::time::sleep(wait.min(state.lease)).await;
            }
        }
    }
}
