//! The memory soak: a steady submit load on a fresh api and one worker, their resident memory
//! (VmRSS) sampled every second: idle, peak, and its slope.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use serde_json::json;

use crate::procfs::rss_mb;
use crate::stack::{Stack, stop};
use crate::stats::slope_per_sec;

#[derive(Debug, Serialize)]
pub struct MemoryResult {
    pub soak_secs: u64,
    pub soak_rate_per_sec: u64,
    pub soak_requests: usize,
    pub api: RssResult,
    pub worker: RssResult,
}

/// Resident memory (VmRSS) of one process.
#[derive(Debug, Serialize)]
pub struct RssResult {
    /// Before any load.
    pub idle_mb: f64,
    pub peak_mb: f64,
    /// Least-squares slope over the soak (its first fifth, the warm-up, left out).
    pub slope_mb_per_min: f64,
}

/// A steady submit load (`--soak-rate` per second, mock provider at 0 ms, one worker) for
/// `--soak-secs`, sampling the VmRSS of the api (`api_pid`, started for it) and of the worker
/// every second.
pub async fn measure(stack: &Stack<'_>, api_pid: u32) -> anyhow::Result<MemoryResult> {
    let (args, client, base, token) = (stack.args, stack.client, stack.base, stack.token);
    let mut worker = stack.worker("bench-soak", &[])?;
    let worker_pid = worker.id().context("worker pid")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (api_idle_mb, worker_idle_mb) = (rss_mb(api_pid), rss_mb(worker_pid));

    let run_for = Duration::from_secs(args.soak_secs.max(1));
    let clients = 10u64;
    let every = Duration::from_secs_f64(clients as f64 / args.soak_rate.max(1) as f64);
    let deadline = Instant::now() + run_for;
    let senders: Vec<_> = (0..clients)
        .map(|c| {
            let (client, token) = (client.clone(), token.to_owned());
            let url = format!("{base}/api/v1/generate");
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut sent = 0usize;
                while Instant::now() < deadline {
                    tick.tick().await;
                    let body = json!({"prompt": format!("soak {c}/{sent}")});
                    let _ = client
                        .post(&url)
                        .bearer_auth(&token)
                        .json(&body)
                        .send()
                        .await;
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    let started = Instant::now();
    let (mut api_samples, mut worker_samples) = (Vec::new(), Vec::new());
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let t = started.elapsed().as_secs_f64();
        api_samples.push((t, rss_mb(api_pid)));
        worker_samples.push((t, rss_mb(worker_pid)));
    }
    let soak_requests = futures::future::join_all(senders)
        .await
        .into_iter()
        .flatten()
        .sum();
    stop(&mut worker).await;
    let warm_up = run_for.as_secs_f64() / 5.0;
    let rss = |idle_mb: f64, samples: &[(f64, f64)]| RssResult {
        idle_mb,
        peak_mb: samples.iter().map(|s| s.1).fold(idle_mb, f64::max),
        slope_mb_per_min: slope_per_sec(samples.iter().filter(|s| s.0 >= warm_up)) * 60.0,
    };
    let memory = MemoryResult {
        soak_secs: run_for.as_secs(),
        soak_rate_per_sec: args.soak_rate,
        soak_requests,
        api: rss(api_idle_mb, &api_samples),
        worker: rss(worker_idle_mb, &worker_samples),
    };
    println!(
        "  memory soak: api {:.1} -> {:.1} MB ({:+.2} MB/min), worker {:.1} -> {:.1} MB ({:+.2} MB/min)",
        memory.api.idle_mb,
        memory.api.peak_mb,
        memory.api.slope_mb_per_min,
        memory.worker.idle_mb,
        memory.worker.peak_mb,
        memory.worker.slope_mb_per_min
    );
    Ok(memory)
}
