//! The doors side by side: the same generation asked through the native API and through the
//! OpenAI door (`POST /v1/chat/completions`), answered from the cache (hit) and run by one
//! worker with the mock at 0 ms (miss), at each `--door-concurrency` (closed loop). A native
//! hit is one submit answered `200`; a native miss is the submit and its `GET ?wait=` (two
//! requests on one connection, timed together); through the OpenAI door either is one call.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;

use super::submit::{SubmitRequests, chat_body};
use crate::client::{HitClient, HitRequest};
use crate::cpu::CpuMeter;
use crate::database::wait_settled;
use crate::load::{SubmitResult, measure_closed_loop, on_generator_thread};
use crate::stack::{Stack, stop};

#[derive(Debug, Serialize)]
pub struct DoorResult {
    /// `native` or `openai`.
    pub door: &'static str,
    /// `hit` (answered from the cache) or `miss` (run by the worker).
    pub case: &'static str,
    #[serde(flatten)]
    pub result: SubmitResult,
}

/// Hits, then misses, through both doors at each `--door-concurrency`. Each row starts once the
/// rows before it are settled (their jobs acknowledged, their hub events delivered), so that no
/// row pays for another's backlog (a hit row leaves one `generation.completed` per hit).
pub async fn measure(stack: &Stack<'_>, pool: &PgPool) -> anyhow::Result<Vec<DoorResult>> {
    let (args, token, addr) = (stack.args, stack.token, stack.api_addr()?);
    let run_for = Duration::from_secs(args.submit_secs);
    let mut worker = stack.worker("bench-doors", &[])?;
    let native_hit = json!({"prompt": "a cached question for the doors"}).to_string();
    let openai_hit = chat_body("a cached question for the doors").to_string();
    let hits = [
        (
            "native",
            HitRequest::post(addr, "/api/v1/generate", token, native_hit.as_bytes()),
        ),
        (
            "openai",
            HitRequest::post(addr, "/v1/chat/completions", token, openai_hit.as_bytes()),
        ),
    ];
    // The first of each is a miss: its answer is then cached.
    for (_, hit) in &hits {
        warm(hit, token).await?;
    }
    let mut results = Vec::new();
    for &concurrency in &args.door_concurrency {
        for (door, hit) in &hits {
            wait_settled(pool).await?;
            let hit = hit.clone();
            let result = measure_closed_loop(stack, concurrency, run_for, 200, move || hit.clone());
            results.push(DoorResult {
                door,
                case: "hit",
                result: result.await?,
            });
        }
    }
    for &concurrency in &args.door_concurrency {
        wait_settled(pool).await?;
        results.push(DoorResult {
            door: "native",
            case: "miss",
            result: native_misses(stack, concurrency, run_for).await?,
        });
        wait_settled(pool).await?;
        let calls = SubmitRequests::chat(stack, "door miss")?;
        let result = measure_closed_loop(stack, concurrency, run_for, 200, move || calls.next());
        results.push(DoorResult {
            door: "openai",
            case: "miss",
            result: result.await?,
        });
    }
    stop(&mut worker).await;
    for r in &results {
        println!(
            "  {} {} c={}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
            r.door,
            r.case,
            r.result.concurrency,
            r.result.requests_per_sec,
            r.result.latency.p50_ms,
            r.result.latency.p99_ms
        );
    }
    Ok(results)
}

/// Sends `hit` once, natively waiting for its request to finish, so that it is cached.
async fn warm(hit: &HitRequest, token: &str) -> anyhow::Result<()> {
    let mut client = HitClient::connect_many(hit.addr, 1)
        .await?
        .pop()
        .context("no connection")?;
    let (status, body) = client.exchange(hit).await?;
    if status == 202 {
        let id = request_id(body)?;
        let poll = HitRequest::get(hit.addr, &format!("/api/v1/generate/{id}?wait=30"), token);
        client.exchange(&poll).await?;
    } else if status != 200 {
        bail!("warming the cache was answered {status}");
    }
    Ok(())
}

fn request_id(body: &[u8]) -> anyhow::Result<String> {
    let accepted: serde_json::Value = serde_json::from_slice(body)?;
    accepted["request_id"]
        .as_str()
        .map(str::to_owned)
        .context("an answer without request_id")
}

/// `concurrency` clients each submitting natively and waiting with `GET ?wait=` for the
/// result, one round trip after another, for `run_for`.
async fn native_misses(
    stack: &Stack<'_>,
    concurrency: usize,
    run_for: Duration,
) -> anyhow::Result<SubmitResult> {
    let submits = SubmitRequests::new(stack, "door native miss")?;
    let (addr, token) = (submits.addr, stack.token.to_owned());
    let meter = CpuMeter::start(stack.api_pid);
    let mut result = on_generator_thread(move || async move {
        let clients = HitClient::connect_many(addr, concurrency).await?;
        let (submits, token) = (Rc::new(submits), Rc::new(token));
        let started = Instant::now();
        let errors = Rc::new(Cell::new(0usize));
        let loops = clients.into_iter().map(|mut client| {
            let (submits, token, errors) = (submits.clone(), token.clone(), errors.clone());
            async move {
                let mut latencies = Vec::new();
                while started.elapsed() < run_for {
                    let sent = Instant::now();
                    match round_trip(&mut client, &submits, &token).await {
                        Ok(()) => latencies.push(sent.elapsed().as_secs_f64() * 1000.0),
                        Err(_) => errors.set(errors.get() + 1),
                    }
                }
                latencies
            }
        });
        let latencies = futures::future::join_all(loops).await.concat();
        Ok(SubmitResult::new(
            concurrency,
            latencies,
            errors.get(),
            started.elapsed(),
        ))
    })
    .await?;
    result.cpu_per_request = Some(meter.per_request(result.requests));
    Ok(result)
}

/// One native miss: the submit, then its poll waiting until it is completed.
async fn round_trip(
    client: &mut HitClient,
    submits: &SubmitRequests,
    token: &str,
) -> anyhow::Result<()> {
    let (status, body) = client.exchange(&submits.next()).await?;
    if status != 202 {
        bail!("submit answered {status}");
    }
    let poll = format!("/api/v1/generate/{}?wait=30", request_id(body)?);
    let (status, body) = client
        .exchange(&HitRequest::get(submits.addr, &poll, token))
        .await?;
    let polled: serde_json::Value = serde_json::from_slice(body)?;
    if status != 200 || polled["status"] != "completed" {
        bail!("poll answered {status}, {}", polled["status"]);
    }
    Ok(())
}
