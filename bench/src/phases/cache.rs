//! Cache hits: one answer cached, then the same request at each `--cache-concurrency` (closed
//! loop) and at each `--cache-rate` (open loop), every one answered from the cache.

use std::time::Duration;

use serde_json::json;

use crate::client::{HitClient, HitRequest};
use crate::cpu::CpuMeter;
use crate::load::{
    RATE_CONNECTIONS, RateResult, SubmitResult, hits_at_rate, measure_closed_loop,
    on_generator_thread,
};
use crate::stack::{Stack, stop};

/// Cache hits at a fixed concurrency are measured like submits (answers `200` counted).
pub type CacheResult = SubmitResult;

/// One answer cached, then the same request at each `--cache-concurrency` and at each
/// `--cache-rate`: every one a hit.
pub async fn measure(stack: &Stack<'_>) -> anyhow::Result<(Vec<CacheResult>, Vec<RateResult>)> {
    let (args, client, base, token) = (stack.args, stack.client, stack.base, stack.token);
    let url = format!("{base}/api/v1/generate");
    let body = json!({"prompt": "a cached question", "parameters": {"max_tokens": 16}});
    let mut worker = stack.worker("bench-cache", &[])?;
    let first: serde_json::Value = client
        .post(&url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?
        .json()
        .await?;
    let poll = format!(
        "{base}{}?wait=10",
        first["poll_url"].as_str().unwrap_or_default()
    );
    client.get(poll).bearer_auth(token).send().await?;
    stop(&mut worker).await;

    // Serialised once, sent over bare connections (HitClient) from one thread of their own
    // (on_generator_thread): the load generator shares the cores with what it measures.
    let hit = HitRequest::post(
        stack.api_addr()?,
        "/api/v1/generate",
        token,
        &serde_json::to_vec(&body)?,
    );
    let run_for = Duration::from_secs(args.submit_secs);
    let mut at_concurrency = Vec::new();
    for &concurrency in &args.cache_concurrency {
        let hit = hit.clone();
        let result = measure_closed_loop(stack, concurrency, run_for, 200, move || hit.clone());
        at_concurrency.push(result.await?);
    }
    let mut at_rate = Vec::new();
    for &rate in &args.cache_rate {
        let hit = hit.clone();
        let meter = CpuMeter::start(stack.api_pid);
        let mut result = on_generator_thread(move || async move {
            let clients = HitClient::connect_many(hit.addr, RATE_CONNECTIONS).await?;
            Ok(hits_at_rate(clients, &hit, rate, run_for).await)
        })
        .await?;
        result.cpu_per_request = Some(meter.per_request(result.requests));
        at_rate.push(result);
    }
    print_progress(&at_concurrency, &at_rate);
    Ok((at_concurrency, at_rate))
}

fn print_progress(at_concurrency: &[CacheResult], at_rate: &[RateResult]) {
    for c in at_concurrency {
        println!(
            "  cache hits c={}: {:.0} req/s, p99 {:.2} ms",
            c.concurrency, c.requests_per_sec, c.latency.p99_ms
        );
    }
    for r in at_rate {
        println!(
            "  cache hits at {} req/s: {:.0} answered/s, p50 {:.2} ms, p99 {:.2} ms",
            r.offered_per_sec, r.answered_per_sec, r.latency.p50_ms, r.latency.p99_ms
        );
    }
}
