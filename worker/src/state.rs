//! The state every job of a worker process shares ([`WorkerState`]): pools, the executor,
//! completion notices, cache and limiter, admission control (in the executor), metrics, the requests running here (whose leases are
//! renewed), and the group-committed claim and completion writers.
//!
//! The claim and the completing write are group-committed: the concurrent jobs of a process
//! hand them to a [`Batcher`] each, and one statement claims (or completes) every call queued
//! together, each job getting its own answer ([`requests::claim_each`],
//! [`requests::complete_each`]). Each row keeps its own guard, so batching changes the number
//! of statements and commits, not what any one of them may do.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use crate::admission::Admission;
use crate::config::WorkerConfig;
use crate::execution::{Executor, Limits};
use crate::fetch_pause::FetchPause;
use crate::providers::MockProvider;
use llm_shared::cache::ResponseCache;
use llm_shared::generation::GenerationOutput;
use llm_shared::group_commit::Batcher;
use llm_shared::metrics::Metrics;
use llm_shared::models::LiveRegistry;
use llm_shared::notices::FinalNotices;
use llm_shared::queue::Wakeups;
use llm_shared::ratelimit::RateLimiter;
use llm_shared::requests::{self, Claim, ClaimedRequest, StillHeld, SuccessRow};
use llm_shared::stream_relay::StreamRelay;

/// Everything a job handler needs; shared by all jobs of the process.
pub struct WorkerState {
    pub pool: PgPool,
    pub name: String,
    pub lease: Duration,
    /// How long a job keeps trying to store its outcome while the database refuses it.
    pub result_retry: Duration,
    pub executor: Executor,
    /// Notices of requests reaching a final state: a running request cancelled under us.
    pub notices: FinalNotices,
    /// The fast copy of the response cache (the table is written with the result).
    pub cache: Option<ResponseCache>,
    /// Where the tokens estimated at submit are corrected with the actual usage.
    pub limiter: Option<RateLimiter>,
    default_cache_ttl: Duration,
    /// This process's metrics (served on `WORKER_METRICS_LISTEN`).
    pub metrics: Arc<Metrics>,
    /// Requests this process is running now (their leases are renewed).
    pub(crate) running: Mutex<HashSet<Uuid>>,
    /// This worker's pause of new batch jobs while their calls wait for budget.
    pub fetch_pause: FetchPause,
    /// What makes this worker look for jobs (the process's listener hears the announcements;
    /// jobs this worker puts back tell when they come due).
    pub wakeups: Wakeups,
    /// The claims of this process's jobs, group-committed.
    claims: Batcher<Uuid, Result<Claim, sqlx::Error>>,
    /// The completing writes of this process's jobs, group-committed.
    completes: Batcher<SuccessRow, Result<StillHeld, sqlx::Error>>,
}

/// Writer tasks per batcher: one batch is written while the next one fills.
const BATCH_WRITERS: usize = 2;
/// Connections for apalis' statements (fetches, acknowledgements, heartbeats; see
/// `db::queue_pool`).
pub(crate) const QUEUE_CONNECTIONS: u32 = 4;

impl WorkerState {
    /// The state of a worker; `relay` carries streamed requests' tokens. Completion notices
    /// reach `notices` only once the process's listener hands them to [`FinalNotices::heard`]
    /// (as `process::run` does). Starts the writer tasks of its claim and completion batches
    /// (so it must be called inside a tokio runtime); they end when the state is dropped.
    pub fn new(
        pool: PgPool,
        name: String,
        config: &WorkerConfig,
        models: LiveRegistry,
        relay: Option<StreamRelay>,
        cache: Option<ResponseCache>,
        limiter: Option<RateLimiter>,
    ) -> Self {
        let call_timeout = Duration::from_secs(config.provider_timeout_secs.max(1));
        let mock = MockProvider::new(config.mock_allow_crash);
        let metrics = Arc::new(Metrics::new());
        // A batch holds at most every job of the process.
        let batch = config.concurrency.max(1);
        // The claims' and completions' writers, each with a connection of its own (the claims'
        // commit without waiting for the disk: `db::ASYNC_WRITER_SETTINGS`).
        let writers = llm_shared::db::writer_pool(&pool, BATCH_WRITERS as u32);
        let claims = {
            let (pool, name, lease) = (
                llm_shared::db::async_writer_pool(&pool, BATCH_WRITERS as u32),
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
            Batcher::new(BATCH_WRITERS, batch, move |rows: Vec<SuccessRow>| {
                let (pool, name) = (pool.clone(), name.clone());
                metrics.batch("complete", rows.len());
                async move { requests::complete_each(&pool, &name, &rows).await }
            })
        };
        // Without a usable Redis URL every call goes unadmitted (logged by `Admission`).
        let admission = Admission::new(
            config.common.redis_client().ok(),
            &config.common.redis_key_prefix,
            metrics.clone(),
        );
        let wakeups = Wakeups::default();
        Self {
            fetch_pause: FetchPause::new(pool.clone(), name.clone(), wakeups.clone()),
            wakeups,
            pool,
            name,
            lease: config.lease(),
            result_retry: config.result_retry(),
            executor: Executor::new(
                models,
                mock,
                Limits {
                    call: call_timeout,
                    validation: config.validation_timeout(),
                },
                relay,
                metrics.clone(),
                admission,
            ),
            notices: FinalNotices::default(),
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
        completion: &requests::Success<'_>,
    ) -> Result<StillHeld, sqlx::Error> {
        self.completes
            .call(SuccessRow::new(claimed, completion))
            .await
            .map_err(unanswered)?
    }

    pub(crate) fn cache_ttl(&self, claimed: &ClaimedRequest) -> Duration {
        match (&self.cache, claimed.cache_policy.ttl_secs) {
            (Some(cache), _) => cache.ttl(&claimed.cache_policy),
            (None, Some(secs)) => Duration::from_secs(secs),
            (None, None) => self.default_cache_ttl,
        }
    }

    /// The tokens-per-minute counter of the request's submit window, corrected to the actual use.
    pub(crate) async fn reconcile_tokens(
        &self,
        claimed: &ClaimedRequest,
        output: &GenerationOutput,
    ) {
        if let (Some(limiter), Some(estimated)) = (&self.limiter, claimed.estimated_tokens) {
            let actual = i64::from(output.prompt_tokens) + i64::from(output.completion_tokens);
            let window = claimed.created_at.timestamp().div_euclid(60);
            limiter
                .reconcile(claimed.user_id, window, actual - i64::from(estimated))
                .await;
        }
    }

    /// After the result is committed (and stored in the table): the Redis copy.
    pub(crate) async fn fill_redis_cache(
        &self,
        claimed: &ClaimedRequest,
        completion: &requests::Success<'_>,
    ) {
        if let (Some(cache), Some(key)) = (&self.cache, &claimed.cache_key)
            && !claimed.cache_policy.no_store
        {
            cache
                .put_redis(key, &completion.cached_response(), completion.cache_ttl)
                .await;
        }
    }

    pub(crate) fn running_ids(&self) -> Vec<Uuid> {
        self.running
            .lock()
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// A batch writer that ended without answering (it panicked, or the runtime is stopping): an
/// error like any other database failure, so apalis delivers the job again.
fn unanswered(_: llm_shared::group_commit::Unanswered) -> sqlx::Error {
    sqlx::Error::WorkerCrashed
}
