//! The measured phases, run in order on one stack: each starts on empty tables and leaves
//! them empty for the next.

mod cache;
mod doors;
mod drain;
mod end_to_end;
pub mod llm;
mod llm_capacity;
mod rate_limiter;
mod relay;
mod soak;
mod streaming;
mod submit;

use std::time::Instant;

use llm_api::jwt::JwtKeys;
use secrecy::SecretString;
use uuid::Uuid;

pub use cache::CacheResult;
pub use doors::DoorResult;
pub use drain::DrainResult;
pub use end_to_end::EndToEndResult;
pub use soak::MemoryResult;
pub use streaming::StreamingResult;

use crate::cli::Args;
use crate::database::{BenchDb, reset_tables};
use crate::hub::HubSink;
use crate::machine::Machine;
use crate::report::Report;
use crate::stack::{self, SECRET, Stack, free_port, stop};

/// Starts the stack on `bench_db` and runs every phase on it.
pub async fn run(
    args: &Args,
    bin_dir: &std::path::Path,
    bench_db: &BenchDb,
    machine: Machine,
) -> anyhow::Result<Report> {
    let started_at = chrono::Utc::now().to_rfc3339();
    let started = Instant::now();
    let mut own = OwnStack::start(args, bench_db, bin_dir).await?;
    let stack = own.stack(args, bin_dir);
    let pool = &bench_db.pool;

    let submit = submit::measure_over_http(&stack).await?;
    // The submit phase left its jobs queued: clear them so the end-to-end runs start empty.
    reset_tables(pool).await?;
    let submit_postgres_only = submit::measure_postgres_only(args, &bench_db.url).await?;
    reset_tables(pool).await?;
    let unloaded = end_to_end::measure_unloaded(&stack, pool).await?;
    let end_to_end = end_to_end::measure_with_workers(&stack, pool).await?;
    let streaming = streaming::measure(&stack, &own.api, pool).await?;
    reset_tables(pool).await?;
    let (cache_hits, cache_hits_at_rate) = cache::measure(&stack).await?;
    reset_tables(pool).await?;
    let doors = doors::measure(&stack, pool).await?;
    // The drain is timed over the whole table: no row of an earlier phase may be left in it.
    reset_tables(pool).await?;
    let rate_limiter = rate_limiter::measure(&args.redis_url, pool).await?;
    let drain = drain::measure(&stack, pool).await?;
    // The soak runs on an api of its own: the one that served the phases above would hand back
    // what they left (1,000 streams, the cache hits, the drain's bursts) during it, and its
    // slope would read as that, not as what a steady load does to a fresh process.
    stop(&mut own.api).await;
    let (mut api, soak_api_pid) = stack::start_api(bin_dir, &own.env, own.port).await?;
    let stack = own.stack(args, bin_dir);
    let memory = soak::measure(&stack, soak_api_pid).await?;
    reset_tables(pool).await?;
    let llm = llm::measure(&stack, pool).await?;
    stop(&mut api).await;
    Ok(Report {
        machine,
        started_at,
        total_secs: started.elapsed().as_secs_f64(),
        submit,
        submit_postgres_only,
        end_to_end,
        drain,
        unloaded,
        streaming,
        cache_hits,
        cache_hits_at_rate,
        doors,
        rate_limiter,
        memory,
        llm: Some(llm),
        hub_events_delivered: own.hub.received.load(std::sync::atomic::Ordering::Relaxed),
    })
}

/// Only the LLM-shaped phase (`--llm-only`), on a stack started for it.
pub async fn run_llm_only(
    args: &Args,
    bin_dir: &std::path::Path,
    bench_db: &BenchDb,
) -> anyhow::Result<llm::LlmResult> {
    let mut own = OwnStack::start(args, bench_db, bin_dir).await?;
    let result = llm::measure(&own.stack(args, bin_dir), &bench_db.pool).await;
    stop(&mut own.api).await;
    result
}

/// Only the doors' comparison (`--doors-only`), on a stack started for it.
pub async fn run_doors_only(
    args: &Args,
    bin_dir: &std::path::Path,
    bench_db: &BenchDb,
) -> anyhow::Result<Vec<DoorResult>> {
    let mut own = OwnStack::start(args, bench_db, bin_dir).await?;
    let result = doors::measure(&own.stack(args, bin_dir), &bench_db.pool).await;
    stop(&mut own.api).await;
    result
}

/// An api started for one phase, and what its [`Stack`] borrows.
struct OwnStack {
    api: tokio::process::Child,
    api_pid: u32,
    env: [(&'static str, String); 12],
    client: reqwest::Client,
    port: u16,
    base: String,
    token: String,
    hub: HubSink,
}

impl OwnStack {
    async fn start(
        args: &Args,
        bench_db: &BenchDb,
        bin_dir: &std::path::Path,
    ) -> anyhow::Result<Self> {
        let port = free_port()?;
        let hub = HubSink::start()?;
        let env = stack::environment(args, bench_db, &hub.url);
        let (api, api_pid) = stack::start_api(bin_dir, &env, port).await?;
        Ok(Self {
            api,
            api_pid,
            env,
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .build()?,
            port,
            base: format!("http://127.0.0.1:{port}"),
            token: JwtKeys::new(&SecretString::from(SECRET)).issue(Uuid::now_v7(), 3600, None)?,
            hub,
        })
    }

    fn stack<'a>(&'a self, args: &'a Args, bin_dir: &'a std::path::Path) -> Stack<'a> {
        Stack {
            args,
            api_pid: self.api_pid,
            bin_dir,
            env: &self.env,
            client: &self.client,
            base: &self.base,
            token: &self.token,
        }
    }
}
