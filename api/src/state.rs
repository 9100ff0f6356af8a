//! What every handler shares ([`AppState`]): connections, clients, the registry and templates,
//! the limits of the HTTP surface, the per-user quotas, metrics and the stop signal.

use std::sync::Arc;
use std::time::Duration;

use llm_shared::cache::ResponseCache;
use llm_shared::metrics::Metrics;
use llm_shared::models::LiveRegistry;
use llm_shared::notices::FinalNotices;
use llm_shared::prompts::PromptLibrary;
use llm_shared::quota::{QueuedQuota, UserSlots};
use llm_shared::ratelimit::RateLimiter;
use llm_shared::requests::Submitter;
use llm_shared::stream_relay::RelayListener;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::jwt::JwtKeys;

/// Everything handlers share. Cloned for every extractor and middleware that asks for it (several
/// times per request), so it is one `Arc`: a clone is a reference count, not a copy of every
/// client, string and map inside (that copying was a tenth of the api's CPU under load).
#[derive(Clone)]
pub struct AppState(std::sync::Arc<AppServices>);

impl std::ops::Deref for AppState {
    type Target = AppServices;

    fn deref(&self) -> &AppServices {
        &self.0
    }
}

impl From<AppServices> for AppState {
    fn from(services: AppServices) -> Self {
        Self(std::sync::Arc::new(services))
    }
}

/// What [`AppState`] shares: connections, clients, configuration.
pub struct AppServices {
    pub pool: PgPool,
    pub redis: redis::Client,
    pub relay: RelayListener,
    pub cache: ResponseCache,
    /// Stores submits, group-committed (reads `cache` first).
    pub submitter: Submitter,
    pub limiter: RateLimiter,
    pub jwt: JwtKeys,
    pub models: LiveRegistry,
    pub prompts: std::sync::Arc<PromptLibrary>,
    pub notices: FinalNotices,
    /// Stream followers' reads of their rows, at most this many at once: thousands of streams
    /// re-reading together would each hold a query waiting for a connection (~5 KB apiece,
    /// heaptrack of `llm-bench --llm-only --open-streams 3000`), and take the whole pool.
    pub follow_reads: tokio::sync::Semaphore,
    pub limits: ApiLimits,
    /// Per-user quotas: unfinished requests (all processes), open streams and waits (this
    /// process).
    pub quotas: Quotas,
    /// This process's metrics, served on `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Cancelled when the process starts to stop: requests that wait on a generation (streams,
    /// long polls) end at once, so that the graceful stop does not wait for them (a stream's
    /// client resumes elsewhere with `Last-Event-ID`; a poll is asked again).
    pub shutdown: CancellationToken,
}

#[derive(Debug, Clone, Copy)]
pub struct ApiLimits {
    pub max_body_bytes: usize,
    pub max_wait: Duration,
    pub job_max_attempts: u32,
    /// How long a `/v1/...` call waits for its generation (`OPENAI_COMPAT_WAIT_SECS`).
    pub compat_wait: Duration,
    /// How long a stream token is valid (`STREAM_TOKEN_TTL_SECS`).
    pub stream_token_ttl: Duration,
}

/// Per-user quotas ([`llm_shared::quota`]): `USER_MAX_QUEUED`, `USER_MAX_STREAMS`,
/// `USER_MAX_WAITS`.
#[derive(Debug, Clone)]
pub struct Quotas {
    pub queued: QueuedQuota,
    pub streams: UserSlots,
    pub waits: UserSlots,
}
