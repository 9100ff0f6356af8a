//! End to end: jobs submitted over HTTP and run by workers (mock provider at 0 ms), read from
//! the rows' own timestamps: jobs/s, submit → completed and queue pickup (committed → running),
//! with 1 and 2 workers under a burst, and with 1 worker one request at a time (unloaded).

use std::time::Duration;

use anyhow::bail;
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use tokio::process::Child;

use super::submit::SubmitRequests;
use crate::client::HitClient;
use crate::cpu::{CpuMeter, CpuPerRequest};
use crate::database::{reset_tables, wait_finished, wait_settled};
use crate::load::{Until, closed_loop, on_generator_thread};
use crate::stack::{Stack, stop};
use crate::stats::Latencies;

#[derive(Debug, Serialize)]
pub struct EndToEndResult {
    pub workers: usize,
    pub jobs: usize,
    pub jobs_per_sec: f64,
    pub submit_to_completed: Latencies,
    pub pickup: Latencies,
    /// CPU per job, from the first submit until every job is acknowledged and its events
    /// delivered to the hub.
    pub cpu_per_job: CpuPerRequest,
}

/// `--unloaded-jobs` requests sent one at a time (100 per second) to 1 worker: the latency the
/// service itself adds.
pub async fn measure_unloaded(stack: &Stack<'_>, pool: &PgPool) -> anyhow::Result<EndToEndResult> {
    let (args, client, base, token) = (stack.args, stack.client, stack.base, stack.token);
    let mut worker = stack.worker("bench-unloaded", &[])?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let meter = CpuMeter::with_workers(stack.api_pid, worker.id().into_iter().collect());
    for n in 0..args.unloaded_jobs {
        let _ = client
            .post(format!("{base}/api/v1/generate"))
            .bearer_auth(token)
            .json(&json!({"prompt": format!("unloaded bench {n}")}))
            .send()
            .await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = collect_end_to_end(pool, args.unloaded_jobs, 1, meter).await?;
    println!(
        "  unloaded: e2e p50 {:.2} ms, p99 {:.2} ms",
        r.submit_to_completed.p50_ms, r.submit_to_completed.p99_ms
    );
    stop(&mut worker).await;
    reset_tables(pool).await?;
    Ok(r)
}

/// `--e2e-jobs` submitted at once to 1, then 2 workers.
pub async fn measure_with_workers(
    stack: &Stack<'_>,
    pool: &PgPool,
) -> anyhow::Result<Vec<EndToEndResult>> {
    let mut end_to_end = Vec::new();
    for workers in [1usize, 2] {
        let mut children = Vec::new();
        for i in 0..workers {
            children.push(stack.worker(&format!("bench-{workers}-{i}"), &[])?);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = measure_end_to_end(stack, pool, stack.args.e2e_jobs, &children).await?;
        println!(
            "  end to end, {workers} worker(s): {:.0} jobs/s, p50 {:.1} ms",
            r.jobs_per_sec, r.submit_to_completed.p50_ms
        );
        end_to_end.push(r);
        for child in &mut children {
            stop(child).await;
        }
        reset_tables(pool).await?;
    }
    Ok(end_to_end)
}

async fn measure_end_to_end(
    stack: &Stack<'_>,
    pool: &PgPool,
    jobs: usize,
    workers: &[Child],
) -> anyhow::Result<EndToEndResult> {
    let meter = CpuMeter::with_workers(
        stack.api_pid,
        workers.iter().filter_map(Child::id).collect(),
    );
    let total = submit_burst(stack, jobs).await?;
    collect_end_to_end(pool, total, workers.len(), meter).await
}

/// Submits `jobs` requests from 50 concurrent clients ([`closed_loop`]), each with a prompt of
/// its own ([`SubmitRequests`]). They are sent as the cache hits are ([`HitClient`], on the
/// generator thread): the generator shares the two cores with what it measures, and a reqwest
/// client costs ~20 µs of CPU per submit.
pub async fn submit_burst(stack: &Stack<'_>, jobs: usize) -> anyhow::Result<usize> {
    const CLIENTS: usize = 50;
    let submits = SubmitRequests::new(stack, "e2e bench")?;
    let result = on_generator_thread(move || async move {
        let clients = HitClient::connect_many(submits.addr, CLIENTS).await?;
        Ok(closed_loop(clients, Until::Sent(jobs), 202, || submits.next()).await)
    })
    .await?;
    if result.requests < jobs {
        bail!("only {} of {jobs} submits were accepted", result.requests);
    }
    Ok(jobs)
}

/// Waits for `total` requests to finish, then reads throughput and latencies from the rows,
/// and, once the jobs are settled, the CPU they cost since `meter` started.
async fn collect_end_to_end(
    pool: &PgPool,
    total: usize,
    workers: usize,
    meter: CpuMeter,
) -> anyhow::Result<EndToEndResult> {
    wait_finished(pool, total).await?;
    let (span_secs,): (f64,) = sqlx::query_as(
        "SELECT EXTRACT(EPOCH FROM (MAX(completed_at) - MIN(created_at)))::float8
         FROM generation_requests",
    )
    .fetch_one(pool)
    .await?;
    let rows: Vec<(f64, f64)> = sqlx::query_as(
        "SELECT EXTRACT(EPOCH FROM (completed_at - created_at))::float8 * 1000,
                EXTRACT(EPOCH FROM (started_at - created_at))::float8 * 1000
         FROM generation_requests WHERE status = 'completed' AND started_at IS NOT NULL",
    )
    .fetch_all(pool)
    .await?;
    // The acknowledgements and the outbox delivery follow the completing writes: counted too.
    wait_settled(pool).await?;
    Ok(EndToEndResult {
        workers,
        jobs: total,
        jobs_per_sec: total as f64 / span_secs,
        submit_to_completed: Latencies::of(rows.iter().map(|r| r.0).collect()),
        pickup: Latencies::of(rows.iter().map(|r| r.1).collect()),
        cpu_per_job: meter.per_request(total),
    })
}
