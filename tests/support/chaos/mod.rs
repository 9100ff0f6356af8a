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
//! fake providers in `faulty_upstream`, the fake provider the load scenarios pay (and the count
//! of its answers per request) in `upstream`, and each scenario in `scenarios`.
//!
//! The load is bounded (a fixed number of requests, or a fixed rate for a fixed time), the
//! workers run at their production defaults, and a request is lost when it has no row or is
//! not final once the queue is idle again.

mod faulty_upstream;
mod judge;
mod load;
mod report;
mod scenarios;
mod stack;
mod streams;
mod upstream;

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
    /// Submits a second of the worker-kills load (its `kill_jobs` arrive at this rate).
    pub kill_rate: u32,
    pub kill_workers: usize,
    pub kill_every: Duration,
    pub kill_streams: usize,
    pub api_load: Duration,
    /// Submits a second during `api_load`.
    pub api_rate: u32,
    pub api_kills: usize,
    pub pg_load: Duration,
    pub pg_outage: Duration,
    pub pg_streams: usize,
    /// Submits a second before, during and after the outage.
    pub pg_rate: u32,
    pub redis_load: Duration,
    pub redis_outage: Duration,
    pub redis_streams: usize,
    /// Submits a second (to each of the two apis) during `redis_load`.
    pub redis_rate: u32,
    pub fault_requests: usize,
    /// The longest wait, once the fault is over, for every accepted request to be final or
    /// the queue to be idle (only a queue that never goes idle meets it).
    pub settle: Duration,
}

impl Sizes {
    /// The full suite (`llm-chaos`).
    pub fn full() -> Self {
        Self {
            kill_jobs: 1000,
            kill_rate: 50,
            kill_workers: 3,
            kill_every: Duration::from_secs(3),
            kill_streams: 30,
            api_load: Duration::from_secs(20),
            api_rate: 40,
            api_kills: 3,
            pg_load: Duration::from_secs(10),
            pg_outage: Duration::from_secs(10),
            pg_streams: 50,
            pg_rate: 20,
            redis_load: Duration::from_secs(12),
            redis_outage: Duration::from_secs(3),
            redis_streams: 100,
            redis_rate: 20,
            fault_requests: 300,
            settle: Duration::from_secs(600),
        }
    }

    /// The fast part (CI): the same scenarios, small.
    pub fn quick() -> Self {
        Self {
            kill_jobs: 150,
            kill_rate: 50,
            kill_workers: 3,
            kill_every: Duration::from_millis(1500),
            kill_streams: 6,
            api_load: Duration::from_secs(6),
            api_rate: 40,
            api_kills: 2,
            pg_load: Duration::from_secs(5),
            pg_outage: Duration::from_secs(7),
            pg_streams: 8,
            pg_rate: 20,
            redis_load: Duration::from_secs(6),
            redis_outage: Duration::from_secs(2),
            redis_streams: 12,
            redis_rate: 20,
            fault_requests: 48,
            settle: Duration::from_secs(300),
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
