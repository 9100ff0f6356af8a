//! What many slow calls cost: one worker's memory per call in flight (calls held open by a fake
//! OpenAI with realistic timing and no limit), and one api's memory and CPU with many server-
//! sent event streams open at once.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::{Value, json};

use super::llm::MODEL;
use crate::fake_openai::FakeOpenAi;
use crate::procfs::{cpu_secs, rss_mb};
use crate::stack::{Stack, free_port, start_api, stop};

#[derive(Debug, Default, Serialize)]
pub struct InFlightMemory {
    /// Calls submitted, and the most the fake saw open at once (all from one worker).
    pub calls: usize,
    pub in_flight: u64,
    pub worker_rss_idle_mb: f64,
    pub worker_rss_in_flight_mb: f64,
    pub rss_per_1000_calls_mb: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct OpenStreams {
    pub streams: usize,
    pub api_rss_idle_mb: f64,
    pub api_rss_open_mb: f64,
    pub api_rss_per_stream_kb: f64,
    pub tokens_relayed: usize,
    /// Streams without their terminal event 120 s after the workers started.
    pub streams_unfinished: usize,
    /// api CPU time from the first token to the end of the last stream, per relayed token.
    pub api_cpu_us_per_token: f64,
    pub all_done_secs: f64,
}

/// `calls` requests to one worker allowed as many at once: its resident memory with them all
/// open at the fake, minus its idle memory.
pub async fn in_flight_memory(stack: &Stack<'_>, calls: usize) -> anyhow::Result<InFlightMemory> {
    let fake = FakeOpenAi::start(0)?;
    // The registry declares no limit either: every call is let through at once.
    let models = super::llm::models_file(None)?;
    let extra = [
        ("OPENAI_BASE_URL", fake.url.clone()),
        ("WORKER_CONCURRENCY", (calls + 64).to_string()),
        ("MODELS_FILE", models.display().to_string()),
    ];
    // The api is only for submitting: one started here, with the phase's registry.
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let (mut api, _) = start_api(stack.bin_dir, stack.env, port).await?;
    let mut worker = stack.worker("bench-in-flight", &extra)?;
    let pid = worker.id().context("worker pid")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = rss_mb(pid);
    for call in 0..calls.div_ceil(1000) {
        let items: Vec<Value> = (call * 1000..calls.min((call + 1) * 1000))
            .map(|i| json!({"prompt": format!("A slow call {i}."), "model": MODEL}))
            .collect();
        let response = stack
            .client
            .post(format!("{base}/api/v1/generate/batch"))
            .bearer_auth(stack.token)
            .json(&json!({"items": items}))
            .send()
            .await?;
        if response.status().as_u16() != 202 {
            bail!("batch answered {}", response.status());
        }
    }
    // Until the calls open stop growing (the shortest take ~3.3 s), the fullest moment kept.
    let (mut most, mut rss_then, mut since) = (0, idle, Instant::now());
    while since.elapsed() < Duration::from_secs(2) && most < calls as u64 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let open = fake.counters.in_flight.load(Relaxed);
        if open > most {
            (most, rss_then, since) = (open, rss_mb(pid), Instant::now());
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let open = fake.counters.in_flight.load(Relaxed);
    if open >= most {
        (most, rss_then) = (open, rss_mb(pid).max(rss_then));
    }
    let _ = worker.kill().await;
    stop(&mut api).await;
    let _ = std::fs::remove_file(&models);
    println!("  {most} calls in flight on one worker: {idle:.1} → {rss_then:.1} MB");
    Ok(InFlightMemory {
        calls,
        in_flight: most,
        worker_rss_idle_mb: idle,
        worker_rss_in_flight_mb: rss_then,
        rss_per_1000_calls_mb: (rss_then - idle) * 1000.0 / most.max(1) as f64,
    })
}

/// `streams` streams opened on a fresh api (the mock provider, no worker yet), then two
/// workers produce their tokens: the api's memory with them open and its CPU per token.
pub async fn open_streams(stack: &Stack<'_>, streams: usize) -> anyhow::Result<OpenStreams> {
    const TOKENS: usize = 20;
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let (mut api, pid) = start_api(stack.bin_dir, stack.env, port).await?;
    let fresh = Stack {
        api_pid: pid,
        base: &base,
        ..*stack
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_mb(pid);
    let url = format!("{base}/api/v1/generate/stream");
    let mut open = Vec::with_capacity(streams);
    for chunk in 0..streams.div_ceil(250) {
        let batch = (chunk * 250..streams.min((chunk + 1) * 250)).map(|i| {
            let body = json!({"prompt": format!("open stream {i}"), "model": "mock",
                              "parameters": {"max_tokens": TOKENS}, "mock": {"token_delay_ms": 20}});
            fresh.open_stream(&url, body)
        });
        for stream in futures::future::join_all(batch).await {
            open.push(stream?);
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let open_rss = rss_mb(pid);
    println!("  {streams} streams open on one api: {idle:.1} → {open_rss:.1} MB");
    let cpu_before = cpu_secs(pid);
    let started = Instant::now();
    let per_worker = (streams / 2 + 64).to_string();
    let mut workers = Vec::new();
    for i in 0..2 {
        let extra = [("WORKER_CONCURRENCY", per_worker.clone())];
        workers.push(fresh.worker(&format!("bench-open-streams-{i}"), &extra)?);
    }
    // Bounded: a stream that never ends is counted, not waited for.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let counts = futures::future::join_all(open.into_iter().map(|mut s| async move {
        let ended = tokio::time::timeout_at(deadline, s.until_done())
            .await
            .is_ok();
        (s.tokens(), ended)
    }))
    .await;
    let all_done_secs = started.elapsed().as_secs_f64();
    let cpu = cpu_secs(pid) - cpu_before;
    let relayed: usize = counts.iter().map(|c| c.0).sum();
    let unfinished = counts.iter().filter(|c| !c.1).count();
    for worker in &mut workers {
        stop(worker).await;
    }
    stop(&mut api).await;
    Ok(OpenStreams {
        streams,
        api_rss_idle_mb: idle,
        api_rss_open_mb: open_rss,
        api_rss_per_stream_kb: (open_rss - idle) * 1024.0 / streams.max(1) as f64,
        tokens_relayed: relayed,
        streams_unfinished: unfinished,
        api_cpu_us_per_token: cpu * 1e6 / relayed.max(1) as f64,
        all_done_secs,
    })
}
