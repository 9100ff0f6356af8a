//! The relay's own hop: tokens published into the relay as a worker publishes them
//! (`StreamRelay::publish`, no worker running the request), each timed until the client has read it
//! from the api's SSE stream.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use crate::stack::Stack;
use crate::stats::Latencies;

/// Opens one stream at `url`, then publishes `--ttft-streams` tokens into it one at a time.
pub async fn measure_hop(stack: &Stack<'_>, url: &str) -> anyhow::Result<Latencies> {
    let prefix = stack
        .env
        .iter()
        .find_map(|(name, value)| (*name == "REDIS_KEY_PREFIX").then_some(value.as_str()))
        .unwrap_or_default();
    let relay = llm_shared::stream_relay::StreamRelay::new(
        redis::Client::open(stack.args.redis_url.as_str())?,
        prefix,
        Duration::from_secs(600),
    )?;
    let body = json!({"prompt": "relay hop", "parameters": {"max_tokens": 8}});
    let mut events = stack.open_stream(url, body).await?;
    let id = events
        .request_id()
        .await
        .context("the stream's start event")?;
    let mut hops = Vec::with_capacity(stack.args.ttft_streams);
    for n in 0..stack.args.ttft_streams {
        let token = llm_shared::stream_relay::RelayKind::Token {
            text: format!("t{n} "),
        };
        let started = Instant::now();
        relay.publish(id, &token).await?;
        if !events.next_token().await {
            bail!("the stream ended before relayed token {n}");
        }
        hops.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(Latencies::of(hops))
}
