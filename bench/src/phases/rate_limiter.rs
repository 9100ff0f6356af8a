//! The rate limiter's check on its own: the round trip it adds to every submit.

use std::time::Instant;

use sqlx::PgPool;
use uuid::Uuid;

use crate::stats::Latencies;

/// The limiter's check on its own, one at a time, as a submit runs it.
pub async fn measure(redis_url: &str, pool: &PgPool) -> anyhow::Result<Latencies> {
    let client = redis::Client::open(redis_url)?;
    let limits = llm_shared::ratelimit::RateLimits {
        requests_per_minute: u32::MAX,
        tokens_per_minute: u32::MAX,
    };
    let limiter = llm_shared::ratelimit::RateLimiter::new(client, "llmbench:", limits, true)?;
    let user = Uuid::now_v7();
    let mut samples = Vec::with_capacity(5000);
    for _ in 0..5000 {
        let t = Instant::now();
        limiter.take(pool, user, 100).await?;
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let latencies = Latencies::of(samples);
    println!(
        "  rate limiter: p50 {:.3} ms, p99 {:.3} ms",
        latencies.p50_ms, latencies.p99_ms
    );
    Ok(latencies)
}
