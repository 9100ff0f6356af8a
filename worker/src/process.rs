//! The worker process: the apalis monitor (restarted on backend errors under a new name), and
//! the background tasks every worker runs: its one `LISTEN` connection (completion notices,
//! registry reloads, new jobs), lease renewal, the rescuer of stranded requests, queue-job
//! retention, the outbox delivery and the `/metrics` endpoint.

use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::{BoxDynError, Monitor, PollWith, WorkerBuilder, WorkerBuilderExt};
use apalis_postgres::Config as QueueConfig;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use llm_shared::metrics::CONTENT_TYPE as METRICS_TYPE;

use crate::job::handle_generation;
use crate::state::{QUEUE_CONNECTIONS, WorkerState};

use crate::config::WorkerConfig;
use llm_shared::cache::{self};
use llm_shared::listener::Listener;
use llm_shared::models::{LiveRegistry, ModelRegistry};
use llm_shared::notices;
use llm_shared::queue::{self, GenerationJob, QueueBackend, WakeStrategy};
use llm_shared::requests::{self};

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
    // Read before the file: a reload announced after this is followed (`registry_reloads`).
    let registry_version = llm_shared::registry_reloads::current_version(&pool).await?;
    let models = LiveRegistry::new(ModelRegistry::load(&config.common)?, config.common.clone());
    let reloads =
        llm_shared::registry_reloads::follower(models.clone(), pool.clone(), registry_version);
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
    // One LISTEN connection for the completion notices, registry reloads and new jobs.
    let wakeups = state.wakeups.clone();
    let completions = state.notices.clone();
    let listener = Listener::default()
        .on(notices::CHANNEL, move |heard| completions.heard(heard))
        .on(llm_shared::registry_reloads::CHANNEL, reloads)
        .on(queue::CHANNEL, wakeups.handler());
    let listener = tokio::spawn(listener.run(pool.clone()));
    let background = CancellationToken::new();
    let renewer = tokio::spawn(renew_leases(state.clone(), background.clone()));
    let rescuer = tokio::spawn(rescue_stranded(state.clone(), background.clone()));
    let keep = Duration::from_secs(config.job_retention_hours.saturating_mul(3600));
    let retention = tokio::spawn(retain(state.clone(), keep, background.clone()));
    let hub = crate::outbox::HubClient::new(
        &config.common.message_hub_url,
        llm_shared::config::present(&config.common.message_hub_token).cloned(),
    );
    let outbox = tokio::spawn(crate::outbox::deliver(
        pool.clone(),
        hub,
        config.outbox_max_attempts,
        background.clone(),
    ));
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
    let ack_delay = Duration::from_millis(config.ack_delay_ms);
    tracing::info!(worker = %name, concurrency, "worker starting");

    let queue_pool = llm_shared::db::queue_pool(&pool, QUEUE_CONNECTIONS);
    let fetches = state.metrics.queue_fetches.clone();
    let monitor = Monitor::new()
        .register(move |restarts| {
            // A restarted worker must not reuse its name: jobs locked under it would stay locked.
            let worker_name = if restarts == 0 { name.clone() } else { format!("{name}-r{restarts}") };
            let storage = QueueBackend::<GenerationJob>::new(&queue_pool, queue_config.clone(), wakeups.clone(), fetches.clone(), ack_delay);
            let backend = PollWith::new(storage, WakeStrategy::new(wakeups.clone(), poll));
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
    let _ = outbox.await;
    if let Some(server) = metrics_server {
        let _ = server.await;
    }
    listener.abort();
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
                state.executor.circuits.export(&state.metrics);
                state.metrics.refresh_queue(&state.pool).await;
                state
                    .metrics
                    .encode()
                    .map(|text| ([(CONTENT_TYPE, METRICS_TYPE)], text))
                    .map_err(|err| {
                        tracing::error!(error = %err, "metrics: encoding failed");
                        StatusCode::INTERNAL_SERVER_ERROR
                    })
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

/// Leases renewed per statement. A statement locks its rows until it commits: bounded
/// batches keep each lock short however many calls a worker has in flight, so claims and
/// completions touching the same rows wait milliseconds, not for a renewal of thousands.
pub const RENEW_BATCH: usize = 256;

/// Extends the leases of every request this worker runs, every third of a lease, in batches
/// of [`RENEW_BATCH`] in id order (the order every batched statement locks rows in).
async fn renew_leases(state: Arc<WorkerState>, stop: CancellationToken) {
    let mut every = tokio::time::interval(state.lease / 3);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let mut ids = state.running_ids();
        ids.sort_unstable();
        let started = std::time::Instant::now();
        for batch in ids.chunks(RENEW_BATCH) {
            if let Err(err) =
                requests::renew_leases(&state.pool, &state.name, batch, state.lease).await
            {
                tracing::warn!(error = %err, leases = batch.len(), "could not renew leases");
            }
        }
        let took = started.elapsed();
        if took > state.lease / 6 {
            tracing::warn!(
                leases = ids.len(),
                took_ms = took.as_millis() as u64,
                "renewing leases took over a sixth of a lease"
            );
        }
    }
}

/// Every lease, the upkeep no single request drives: stranded jobs, orphaned followers, expired
/// cache entries, OpenAI batches past their completion window.
async fn rescue_stranded(state: Arc<WorkerState>, stop: CancellationToken) {
    let mut every = tokio::time::interval(state.lease);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        match queue::rescue_stranded(&state.pool, state.lease).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(
                    jobs = n,
                    "re-queued jobs of unfinished requests that nothing would run"
                );
                // Put back without an announcement: this worker looks for them now.
                state.wakeups.announce();
            }
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
        match llm_shared::openai_batches::expire_due(&state.pool).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                requests = n,
                "expired the unfinished requests of batches whose completion window ended"
            ),
            Err(err) => tracing::warn!(error = %err, "could not expire batches past their window"),
        }
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
        match llm_shared::admin::purge_finished_jobs(&state.pool, keep).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "retention: deleted finished queue jobs"),
            Err(err) => tracing::warn!(error = %err, "retention: could not delete finished jobs"),
        }
    }
}
