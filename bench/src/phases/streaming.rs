//! Streaming (SSE through the Redis relay): time to first token one stream at a time, the
//! relay's own hop, and many concurrent streams held open on one api process (its memory per
//! stream and CPU per relayed token).

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use tokio::process::Child;

use super::relay;
use crate::database::reset_tables;
use crate::procfs::{cpu_secs, rss_mb};
use crate::stack::{Stack, stop};
use crate::stats::Latencies;

#[derive(Debug, Serialize)]
pub struct StreamingResult {
    /// Client-observed time to the first token (mock provider: first token at 0 ms), so all of
    /// it is the service's own overhead: submit, commit, queue pickup, relay.
    pub ttft: Latencies,
    /// The relay's own hop: a token published as a worker publishes it (`StreamRelay::publish`) until
    /// the client reads it from the api's SSE stream (Redis, the api's hub, SSE, loopback).
    pub relay_hop: Latencies,
    pub streams: usize,
    pub tokens_per_stream: usize,
    /// api resident memory with no stream open, and with all of them open.
    pub api_rss_idle_mb: f64,
    pub api_rss_open_mb: f64,
    pub api_rss_per_stream_kb: f64,
    /// api CPU time spent while relaying every stream to its end, per relayed token.
    pub api_cpu_us_per_token: f64,
    pub all_streams_done_secs: f64,
}

pub async fn measure(
    stack: &Stack<'_>,
    api: &Child,
    pool: &PgPool,
) -> anyhow::Result<StreamingResult> {
    let args = stack.args;
    let url = format!("{}/api/v1/generate/stream", stack.base);
    // 1. Time to first token, one stream at a time, one worker.
    let ttft = measure_ttft(stack, &url).await?;

    // 2. The relay hop alone: tokens published straight into the relay (no worker runs the
    //    request), one at a time, each timed until the client has read it.
    let relay_hop = relay::measure_hop(stack, &url).await?;
    reset_tables(pool).await?;

    // 3. Many concurrent streams on one api process: open them all (no worker yet), then let
    //    workers produce every token.
    let pid = api.id().context("api pid")?;
    let rss_idle = rss_mb(pid);
    let tokens = 50usize;
    let mut open = Vec::new();
    for chunk in 0..args.streams.div_ceil(100) {
        let batch = (0..100.min(args.streams - chunk * 100)).map(|i| {
            let body = json!({"prompt": format!("stream {chunk}/{i}"), "parameters": {"max_tokens": tokens},
                              "mock": {"token_delay_ms": 20}});
            stack.open_stream(&url, body)
        });
        for stream in futures::future::join_all(batch).await {
            open.push(stream?);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_open = rss_mb(pid);
    let cpu_before = cpu_secs(pid);
    let started = Instant::now();
    let mut workers = Vec::new();
    for i in 0..2 {
        let extra = [("WORKER_CONCURRENCY", "600".to_owned())];
        workers.push(stack.worker(&format!("bench-streams-{i}"), &extra)?);
    }
    let counts = futures::future::join_all(
        open.into_iter()
            .map(|mut s| async move { s.until_done().await }),
    )
    .await;
    let done_secs = started.elapsed().as_secs_f64();
    let cpu = cpu_secs(pid) - cpu_before;
    let relayed: usize = counts.iter().sum();
    for worker in &mut workers {
        stop(worker).await;
    }
    Ok(StreamingResult {
        ttft,
        relay_hop,
        streams: args.streams,
        tokens_per_stream: tokens,
        api_rss_idle_mb: rss_idle,
        api_rss_open_mb: rss_open,
        api_rss_per_stream_kb: (rss_open - rss_idle) * 1024.0 / args.streams.max(1) as f64,
        api_cpu_us_per_token: cpu * 1e6 / relayed.max(1) as f64,
        all_streams_done_secs: done_secs,
    })
}

/// `--ttft-streams` streams at `url`, one at a time, one worker: each timed from its request to
/// its first token.
async fn measure_ttft(stack: &Stack<'_>, url: &str) -> anyhow::Result<Latencies> {
    let mut worker = stack.worker("bench-ttft", &[])?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ttft = Vec::new();
    for n in 0..stack.args.ttft_streams {
        let started = Instant::now();
        let body = json!({"prompt": format!("ttft {n}"), "parameters": {"max_tokens": 8}});
        let mut events = stack.open_stream(url, body).await?;
        if events.next_token().await {
            ttft.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        events.until_done().await;
    }
    stop(&mut worker).await;
    Ok(Latencies::of(ttft))
}
