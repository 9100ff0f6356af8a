//! `llm-bench`: the project's one benchmark command (`scripts/bench.sh`).
//!
//! Starts the real stack itself on a fresh database — the release `llm-api` and `llm-worker`
//! binaries, mock provider at 0 ms — drives it over loopback HTTP, and prints one table (also
//! written as JSON to `.bench/results.json`):
//! - durable submit: requests/s and latency percentiles at several concurrencies (no worker
//!   running, so the figure is the api + PostgreSQL alone);
//! - end to end with 1 and 2 workers: jobs/s, submit → completed and queue pickup latency
//!   (committed → running), read from the rows' own timestamps;
//! - the same submits straight into PostgreSQL (`llm_shared::requests::Submitter`, the api's own
//!   function, through a pool like the api's, no HTTP): the ceiling the database allows;
//! - resident memory of the api and of a worker: idle, peak, and its slope over a soak under a
//!   steady load (`--soak-secs`);
//! - an LLM-shaped phase: generations with real timing against a fake OpenAI with a request
//!   limit, a large batch beside interactive users, calls in flight per worker and their memory,
//!   and thousands of streams open on one api (`--llm-only`, `--quick`);
//! - the native and OpenAI doors side by side, cache hits and misses at 1 and 50 clients
//!   (`--doors-only`);
//! - the machine it ran on (CPU model, cores, memory).
#![allow(clippy::print_stdout)]

mod cli;
mod client;
mod cpu;
mod database;
mod fake_openai;
mod hub;
mod load;
mod machine;
mod phases;
mod procfs;
mod report;
mod report_llm;
mod sse;
mod stack;
mod stats;

use clap::Parser;

use crate::cli::Args;
use crate::database::BenchDb;
use crate::machine::machine;
use crate::stack::forget_redis_namespace;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin_dir = stack::bin_dir()?;
    let machine = machine(&args.admin_database_url);
    println!("llm-bench on {machine}");

    let bench_db = BenchDb::create(&args.admin_database_url).await?;
    if args.llm_only {
        let result = phases::run_llm_only(&args, &bin_dir, &bench_db).await;
        forget_redis_namespace(&args.redis_url, &bench_db.redis_prefix()).await;
        bench_db.drop_it(&args.admin_database_url).await;
        let result = result?;
        println!("\n== llm-bench, LLM-shaped phase  ({machine})");
        result.print();
        report::save_json(&result, &args.output)?;
        println!("\nJSON written to {}", args.output.display());
        return Ok(());
    }
    if args.doors_only {
        let result = phases::run_doors_only(&args, &bin_dir, &bench_db).await;
        forget_redis_namespace(&args.redis_url, &bench_db.redis_prefix()).await;
        bench_db.drop_it(&args.admin_database_url).await;
        let result = result?;
        println!("\n== llm-bench, the doors  ({machine})");
        report::print_doors(&result);
        report::save_json(&result, &args.output)?;
        println!("\nJSON written to {}", args.output.display());
        return Ok(());
    }
    let result = phases::run(&args, &bin_dir, &bench_db, machine).await;
    forget_redis_namespace(&args.redis_url, &bench_db.redis_prefix()).await;
    bench_db.drop_it(&args.admin_database_url).await;
    let report = result?;

    report.print();
    report.save(&args.output)?;
    println!("\nJSON written to {}", args.output.display());
    Ok(())
}
