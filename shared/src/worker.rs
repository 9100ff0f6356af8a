//! The worker: claims requests from the queue, calls their provider, records the outcome.
//!
//! Every job is safe to run more than once. The request row is claimed (pending → running, or
//! running with an expired lease → running) before the provider is called, and every final
//! write is guarded by that claim, so a second delivery of a job can neither run a request
//! that is running elsewhere nor finish one twice. A claim is a lease that this process
//! renews while it runs the request: when the process dies, the lease runs out and the next
//! delivery of the job (apalis re-queues a dead worker's jobs) claims it again.
//!
//! The claim and the completing write are group-committed: the concurrent jobs of a process
//! hand them to a [`Batcher`] each, and one statement claims (or completes) every call queued
//! together, each job getting its own answer ([`requests::claim_each`],
//! [`requests::complete_each`]). Each row keeps its own guard, so batching changes the number
//! of statements and commits, not what any one of them may do.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apalis::prelude::{BoxDynError, Data, Monitor, PollWith, WorkerBuilder, WorkerBuilderExt};
use apalis_postgres::{Config as QueueConfig, PostgresStorage};
use chrono::Utc;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::batching::Batcher;
use crate::cache::{self, ResponseCache};
use crate::config::WorkerConfig;
use crate::execution::{Executor, Outcome};
use crate::metrics::Metrics;
use crate::models::{ModelRegistry, Models};
use crate::notify::Completions;
use crate::providers::GenerationOutput;
use crate::providers::MockProvider;
use crate::queue::{self, GenerationJob, WakeStrategy};
use crate::ratelimit::RateLimiter;
use crate::relay::Relay;
use crate::requests::{self, Claim, ClaimedRequest, CompletionRow, StillHeld};

/// Everything a job handler needs; shared by all jobs of the process.
pub struct WorkerState {
    pub pool: PgPool,
    pub name: String,
    pub lease: Duration,
    pub executor: Executor,
    /// Notices of requests reaching a final state: a running request cancelled under us.
    pub completions: Completions,
    /// The fast copy of the response cache (the table is written with the result).
    pub cache: Option<ResponseCache>,
    /// Where the tokens estimated at submit are corrected with the actual usage.
    pub limiter: Option<RateLimiter>,
    default_cache_ttl: Duration,
    /// This process's metrics (served on `WORKER_METRICS_LISTEN`).
    pub metrics: Arc<Metrics>,
    /// Requests this process is running now (their leases are renewed).
    running: Mutex<HashSet<Uuid>>,
    /// The claims of this process's jobs, group-committed.
    claims: Batcher<Uuid, Result<Claim, sqlx::Error>>,
    /// The completing writes of this process's jobs, group-committed.
    completes: Batcher<CompletionRow, Result<StillHeld, sqlx::Error>>,
}

/// Writer tasks per batcher: one batch is written while the next one fills.
const BATCH_WRITERS: usize = 2;
/// Connections for apalis' statements (fetches, acknowledgements, heartbeats; see
/// `db::queue_pool`).
const QUEUE_CONNECTIONS: u32 = 4;

impl WorkerState {
    /// The state of a worker; `relay` carries streamed requests' tokens. Completion notices
    /// reach `completions` only once [`Completions::listen`] runs (as [`run`] does). Starts
    /// the writer tasks of its claim and completion batches (so it must be called inside a
    /// tokio runtime); they end when the state is dropped.
    pub fn new(
        pool: PgPool,
        name: String,
        config: &WorkerConfig,
        models: Models,
        relay: Option<Relay>,
        cache: Option<ResponseCache>,
        limiter: Option<RateLimiter>,
    ) -> Self {
        let call_timeout = Duration::from_secs(config.provider_timeout_secs.max(1));
        let mock = MockProvider::new(config.mock_allow_crash);
        let metrics = Arc::new(Metrics::new());
        // A batch holds at most every job of the process.
        let batch = config.concurrency.max(1);
        // The claims' and completions' writers, each with a connection of its own.
        let writers = crate::db::writer_pool(&pool, (2 * BATCH_WRITERS) as u32);
        let claims = {
            let (pool, name, lease) = (
                writers.clone(),
                Arc::<str>::from(name.as_str()),
                config.lease(),
            );
            let metrics = metrics.clone();
            Batcher::new(BATCH_WRITERS, batch, move |ids: Vec<Uuid>| {
                let (pool, name) = (pool.clone(), name.clone());
                metrics.batch("claim", ids.len());
                async move { requests::claim_each(&pool, &ids, &name, lease).await }
            })
        };
        let completes = {
            let (pool, name) = (writers.clone(), Arc::<str>::from(name.as_str()));
            let metrics = metrics.clone();
            Batcher::new(BATCH_WRITERS, batch, move |rows: Vec<CompletionRow>| {
                let (pool, name) = (pool.clone(), name.clone());
                metrics.batch("complete", rows.len());
                async move { requests::complete_each(&pool, &name, &rows).await }
            })
        };
        Self {
            pool,
            name,
            lease: config.lease(),
            executor: Executor::new(models, mock, call_timeout, relay, metrics.clone()),
            completions: Completions::default(),
            cache,
            limiter,
            default_cache_ttl: Duration::from_secs(config.common.cache_ttl),
            metrics,
            running: Mutex::new(HashSet::new()),
            claims,
            completes,
        }
    }

    /// Claims the request for this process ([`requests::claim`]), in a batch with the claims
    /// of its other jobs.
    pub async fn claim(&self, id: Uuid) -> Result<Claim, sqlx::Error> {
        self.claims.call(id).await.map_err(unanswered)?
    }

    /// Completes the claimed request ([`requests::complete`]), in a batch with the
    /// completions of its other jobs.
    pub async fn complete(
        &self,
        claimed: &ClaimedRequest,
        completion: &requests::Completion<'_>,
    ) -> Result<StillHeld, sqlx::Error> {
        self.completes
            .call(CompletionRow::new(claimed, completion))
            .await
            .map_err(unanswered)?
    }

    fn cache_ttl(&self, claimed: &ClaimedRequest) -> Duration {
        match (&self.cache, claimed.cache_policy.ttl_secs) {
            (Some(cache), _) => cache.ttl(&claimed.cache_policy),
            (None, Some(secs)) => Duration::from_secs(secs),
            (None, None) => self.default_cache_ttl,
        }
    }

    /// The tokens-per-minute counter of the request's submit window, corrected to the actual use.
    async fn reconcile_tokens(&self, claimed: &ClaimedRequest, output: &GenerationOutput) {
        if let (Some(limiter), Some(estimated)) = (&self.limiter, claimed.estimated_tokens) {
            let actual = i64::from(output.prompt_tokens) + i64::from(output.completion_tokens);
            let window = claimed.created_at.timestamp().div_euclid(60);
            limiter
                .reconcile(claimed.user_id, window, actual - i64::from(estimated))
                .await;
        }
    }

    /// After the result is committed (and stored in the table): the Redis copy.
    async fn fill_redis_cache(
        &self,
        claimed: &ClaimedRequest,
        completion: &requests::Completion<'_>,
    ) {
        if let (Some(cache), Some(key)) = (&self.cache, &claimed.cache_key)
            && !claimed.cache_policy.no_store
        {
            cache
                .put_redis(key, &completion.cached_response(), completion.cache_ttl)
                .await;
        }
    }

    fn running_ids(&self) -> Vec<Uuid> {
        self.running
            .lock()
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// A batch writer that ended without answering (it panicked, or the runtime is stopping): an
/// error like any other database failure, so apalis delivers the job again.
fn unanswered(_: crate::batching::Unanswered) -> sqlx::Error {
    sqlx::Error::WorkerCrashed
}

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
pub async fn handle_generation(
    job: GenerationJob,
    state: Data<Arc<WorkerState>>,
) -> Result<(), BoxDynError> {
    process(&state, job.request_id).await.map_err(Into::into)
}

/// Runs one delivery of a request's job to its end.
pub async fn process(state: &WorkerState, request_id: Uuid) -> Result<(), sqlx::Error> {
    // One span per delivery of the job, from the claim on. Once claimed, it carries the run and
    // the trace id of the api request that submitted it: the worker's logs join the api's.
    let span = tracing::info_span!(
        "job",
        request.id = %request_id,
        attempt = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
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
            let completion = requests::Completion {
                attempt: *attempt,
                provider,
                served_model,
                output,
                latency: *latency,
                cost_usd: *cost_usd,
                cache_ttl: state.cache_ttl(&claimed),
            };
            let held = state.complete(&claimed, &completion).await?;
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
            let held = requests::fail(&state.pool, &claimed, &state.name, code, message).await?;
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
            requests::release_for_retry(
                &state.pool,
                &claimed,
                &state.name,
                *delay,
                *fallback_index,
                code,
                message,
            )
            .await?
        }
    };
    if !held {
        tracing::warn!(request.id = %request_id, run = claimed.attempts, "lost the claim while running; outcome discarded");
    }
    Ok(())
}

/// Runs the request, unless it is cancelled meanwhile (then `None`: the provider call is
/// dropped mid-flight).
async fn execute_unless_cancelled(
    state: &WorkerState,
    claimed: &ClaimedRequest,
) -> Result<Option<Outcome>, sqlx::Error> {
    let finished = state.completions.subscribe(claimed.id);
    let execution = state.executor.execute(&state.pool, claimed, &state.name);
    tokio::pin!(execution);
    loop {
        let notified = finished.notify().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        tokio::select! {
            outcome = &mut execution => return outcome.map(Some),
            _ = &mut notified => {
                let status: Option<requests::Status> =
                    sqlx::query_scalar("SELECT status FROM generation_requests WHERE id = $1")
                        .bind(claimed.id)
                        .fetch_optional(&state.pool)
                        .await?;
                if status == Some(requests::Status::Cancelled) {
                    return Ok(None);
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

/// Name that no other process (and no earlier run of this one) uses.
pub fn unique_worker_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &ulid::Ulid::generate().to_string()[20..]
    )
}

/// Runs the worker until `shutdown` resolves, then drains in-flight jobs for up to the grace
/// period.
pub async fn run(
    config: WorkerConfig,
    pool: PgPool,
    shutdown: impl Future<Output = std::io::Result<()>> + Send + 'static,
) -> Result<(), BoxDynError> {
    let name = config.name.clone().unwrap_or_else(unique_worker_name);
    let models = Models::new(ModelRegistry::load(&config.common)?, config.common.clone());
    let reloads = tokio::spawn(follow_registry_reloads(models.clone(), pool.clone()));
    let relay = config.common.relay()?;
    let cache = config.common.response_cache()?;
    let limiter = config.common.rate_limiter()?;
    let state = Arc::new(WorkerState::new(
        pool.clone(),
        name.clone(),
        &config,
        models,
        Some(relay),
        Some(cache),
        Some(limiter),
    ));
    let listener = tokio::spawn(state.completions.clone().listen(pool.clone()));
    let background = CancellationToken::new();
    let renewer = tokio::spawn(renew_leases(state.clone(), background.clone()));
    let rescuer = tokio::spawn(rescue_stranded(state.clone(), background.clone()));
    let keep = Duration::from_secs(config.job_retention_hours.saturating_mul(3600));
    let retention = tokio::spawn(retain(state.clone(), keep, background.clone()));
    let hub = crate::hub::HubClient::new(&config.common.message_hub_url);
    let hub_relay = tokio::spawn(crate::hub::relay(pool.clone(), hub, background.clone()));
    let metrics_server = match tokio::net::TcpListener::bind(config.metrics_listen).await {
        Ok(listener) => {
            let addr = listener.local_addr().unwrap_or(config.metrics_listen);
            tracing::info!(listen = %addr, "worker metrics listening");
            Some(tokio::spawn(serve_metrics(
                listener,
                state.clone(),
                background.clone(),
            )))
        }
        Err(err) => {
            tracing::warn!(listen = %config.metrics_listen, error = %err, "worker metrics endpoint not started");
            None
        }
    };

    let queue_config = QueueConfig::default()
        .queue(queue::QUEUE)
        // Up to a full complement of jobs per fetch (capped): the claims and completions of a
        // fetch share their statements (group commit), so larger fetches mean fewer commits.
        .batch_size(config.concurrency.clamp(1, 32))
        .heartbeat_interval(config.heartbeat())
        .missed_heartbeats(3)
        .lock_tasks(false);
    let concurrency = config.concurrency.max(1);
    let poll = Duration::from_millis(config.poll_ms.max(50));
    tracing::info!(worker = %name, concurrency, "worker starting");

    let queue_pool = crate::db::queue_pool(&pool, QUEUE_CONNECTIONS);
    let monitor = Monitor::new()
        .register(move |restarts| {
            // A restarted worker must not reuse its name: jobs locked under it would stay locked.
            let worker_name = if restarts == 0 { name.clone() } else { format!("{name}-r{restarts}") };
            let storage = PostgresStorage::<GenerationJob>::new(&queue_pool).with_config(queue_config.clone());
            let backend = PollWith::new(storage, WakeStrategy::new(pool.clone(), poll));
            WorkerBuilder::new(worker_name)
                .backend(backend)
                .data(state.clone())
                .concurrency(concurrency)
                .build(handle_generation)
        })
        .should_restart(|ctx, err| {
            tracing::error!(worker = %ctx.name(), error = %err, "worker stopped with an error; restarting");
            true
        })
        .shutdown_timeout(Duration::from_secs(config.shutdown_grace_secs));

    let result = monitor.run_with_signal(shutdown).await;
    background.cancel();
    let _ = renewer.await;
    let _ = rescuer.await;
    let _ = retention.await;
    let _ = hub_relay.await;
    if let Some(server) = metrics_server {
        let _ = server.await;
    }
    listener.abort();
    reloads.abort();
    result.map_err(Into::into)
}

/// `GET /metrics` of the worker process: circuit and queue gauges are refreshed at each scrape.
async fn serve_metrics(
    listener: tokio::net::TcpListener,
    state: Arc<WorkerState>,
    stop: CancellationToken,
) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let state = state.clone();
            async move {
                state.metrics.set_circuits(&state.executor.circuits);
                state.metrics.refresh_queue(&state.pool).await;
                state.metrics.response()
            }
        }),
    );
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(err) = served {
        tracing::warn!(error = %err, "worker metrics endpoint stopped");
    }
}

async fn renew_leases(state: Arc<WorkerState>, stop: CancellationToken) {
    let mut every = tokio::time::interval(state.lease / 3);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let ids = state.running_ids();
        if ids.is_empty() {
            continue;
        }
        if let Err(err) = requests::renew_leases(&state.pool, &state.name, &ids, state.lease).await
        {
            tracing::warn!(error = %err, "could not renew leases");
        }
    }
}

async fn rescue_stranded(state: Arc<WorkerState>, stop: CancellationToken) {
    let mut every = tokio::time::interval(state.lease);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        match queue::rescue_stranded(&state.pool, state.lease).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                jobs = n,
                "re-queued jobs of unfinished requests that nothing would run"
            ),
            Err(err) => tracing::warn!(error = %err, "could not look for stranded requests"),
        }
        match queue::rescue_orphaned_followers(&state.pool).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                requests = n,
                "gave jobs to requests whose identical leader ended without them"
            ),
            Err(err) => tracing::warn!(error = %err, "could not look for orphaned followers"),
        }
        if let Err(err) = cache::purge_expired(&state.pool).await {
            tracing::warn!(error = %err, "could not purge expired cache entries");
        }
    }
}

/// Re-reads the model registry whenever an api announces a reload (`models_reload`).
async fn follow_registry_reloads(models: Models, pool: PgPool) {
    loop {
        if let Ok(mut listener) = sqlx::postgres::PgListener::connect_with(&pool).await
            && listener.listen(crate::models::RELOAD_CHANNEL).await.is_ok()
        {
            while listener.recv().await.is_ok() {
                match models.reload() {
                    Ok(fresh) => {
                        tracing::info!(models = fresh.all().len(), "model registry reloaded")
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "model registry not reloaded; keeping the one in use")
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Deletes the queue jobs of requests finished longer than `keep` ago, once a minute.
async fn retain(state: Arc<WorkerState>, keep: Duration, stop: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        match crate::admin::purge_finished_jobs(&state.pool, keep).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "retention: deleted finished queue jobs"),
            Err(err) => tracing::warn!(error = %err, "retention: could not delete finished jobs"),
        }
    }
}
