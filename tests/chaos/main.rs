//! `llm-chaos`: the chaos suite (`scripts/chaos.sh`). Runs every scenario of
//! [`llm_tests::chaos`] against the real `llm-api` / `llm-worker` binaries built next to it,
//! prints one table (accepted / completed / failed / lost / completed twice per scenario) and
//! exits non-zero when any scenario lost a request, completed one twice, or broke another
//! expectation. The fast part of the same scenarios runs in CI (`tests/integration/chaos.rs`).
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::process::ExitCode;

use clap::Parser;
use llm_tests::chaos::{self, SCENARIOS, Sizes};

#[derive(Debug, Parser)]
#[command(
    name = "llm-chaos",
    about = "Break the LLM service under load and count what was lost or completed twice"
)]
struct Args {
    /// Scenarios to run (default: all): worker-kills, api-kills, postgres-restart,
    /// redis-restart, provider-faults.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The small sizes CI runs, instead of the full ones.
    #[arg(long)]
    quick: bool,
    /// Jobs of the worker-kills scenario (default 1,000; 150 with --quick).
    #[arg(long)]
    jobs: Option<usize>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut sizes = if args.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    if let Some(jobs) = args.jobs {
        sizes.kill_jobs = jobs;
    }
    let names: Vec<String> = if args.only.is_empty() {
        SCENARIOS.iter().map(|s| s.to_string()).collect()
    } else {
        args.only.clone()
    };
    if let Some(unknown) = names.iter().find(|n| !SCENARIOS.contains(&n.as_str())) {
        eprintln!(
            "unknown scenario {unknown}; known: {}",
            SCENARIOS.join(", ")
        );
        return ExitCode::from(2);
    }
    let mut tallies = Vec::new();
    for name in &names {
        println!("running {name} …");
        let started = std::time::Instant::now();
        let tally = chaos::run(name, &sizes).await.expect("a known scenario");
        println!(
            "  {name}: {} in {:.0?}",
            if tally.passed() { "ok" } else { "FAILED" },
            started.elapsed()
        );
        tallies.push(tally);
    }
    println!("\n{}", chaos::render_table(&tallies));
    if tallies.iter().all(|t| t.passed()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
