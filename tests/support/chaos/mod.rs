//! The chaos suite: each scenario runs the real `llm-api` / `llm-worker` binaries against real
//! PostgreSQL and Redis, breaks something under load (SIGKILLed workers or api, a restarted
//! PostgreSQL or Redis, misbehaving providers), and returns a [`Tally`] read from the database:
//! requests accepted (a `202`) / completed / failed / lost / completed twice, plus what else
//! the scenario checks ([`Tally::problems`] must stay empty).
//!
//! Used by the `llm-chaos` binary (`scripts/chaos.sh`, full sizes) and by the integration tests
//! (`tests/integration/chaos.rs`, small sizes). Scenarios that restart a server start a private
//! one ([`crate::servers`]): the shared PostgreSQL and Redis are never touched.
//!
//! This module owns the public face of the suite: the scenario list, [`run`] by name, the
//! [`Sizes`] of a run, and the re-exports of the parts below. The load generator is in `load`,
//! streams held open across a fault in `streams`, how loss and double completion are counted
//! in `judge`, the table in `report`, the processes' environment in `stack`, the misbehaving
//! fake providers in `faulty_upstream`, and each scenario in `scenarios`.

mod faulty_upstream;
mod judge;
mod load;
mod report;
mod scenarios;
mod stack;
mod streams;

use std::time::Duration;

pub use faulty_upstream::short_cooldown_registry;
pub use judge::tally;
pub use load::{ChaosClient, Load, Until, submit_load};
pub use report::{Tally, render_table};
pub use scenarios::{api_kills, postgres_restart, provider_faults, redis_restart, worker_kills};
pub use streams::OpenStreams;

/// How big each scenario is.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub kill_jobs: usize,
    pub kill_workers: usize,
    pub kill_every: Duration,
    pub kill_streams: usize,
    pub api_load: Duration,
    pub api_kills: usize,
    pub pg_load: Duration,
    pub pg_outage: Duration,
    pub pg_streams: usize,
    pub redis_load: Duration,
    pub redis_outage: Duration,
    pub redis_streams: usize,
    pub fault_requests: usize,
    /// How long every accepted request has to reach a final state once the fault is over.
    pub settle: Duration,
}

impl Sizes {
    /// The full suite (`llm-chaos`).
    pub fn full() -> Self {
        Self {
            kill_jobs: 1000,
            kill_workers: 3,
            kill_every: Duration::from_secs(3),
            kill_streams: 30,
            api_load: Duration::from_secs(20),
            api_kills: 3,
            pg_load: Duration::from_secs(10),
            pg_outage: Duration::from_secs(10),
            pg_streams: 50,
            redis_load: Duration::from_secs(12),
            redis_outage: Duration::from_secs(3),
            redis_streams: 100,
            fault_requests: 300,
            settle: Duration::from_secs(120),
        }
    }

    /// The fast part (CI): the same scenarios, small.
    pub fn quick() -> Self {
        Self {
            kill_jobs: 150,
            kill_workers: 3,
            kill_every: Duration::from_millis(1500),
            kill_streams: 6,
            api_load: Duration::from_secs(6),
            api_kills: 2,
            pg_load: Duration::from_secs(5),
            pg_outage: Duration::from_secs(7),
            pg_streams: 8,
            redis_load: Duration::from_secs(6),
            redis_outage: Duration::from_secs(2),
            redis_streams: 12,
            fault_requests: 48,
            settle: Duration::from_secs(90),
        }
    }
}

/// Every scenario's name, in the order the suite runs them.
pub const SCENARIOS: [&str; 5] = [
    "worker-kills",
    "api-kills",
    "postgres-restart",
    "redis-restart",
    "provider-faults",
];

/// Runs one scenario by name.
pub async fn run(name: &str, sizes: &Sizes) -> Option<Tally> {
    Some(match name {
        "worker-kills" => worker_kills(sizes).await,
        "api-kills" => api_kills(sizes).await,
        "postgres-restart" => postgres_restart(sizes).await,
        "redis-restart" => redis_restart(sizes).await,
        "provider-faults" => provider_faults(sizes).await,
        _ => return None,
    })
}
