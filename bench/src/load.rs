//! The load generator: closed-loop clients (each sends its next request once answered) and an
//! open-loop fixed rate, both on a thread of their own over [`HitClient`]s, and what they
//! measure ([`SubmitResult`], [`RateResult`]).

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::{HitClient, HitRequest};
use crate::cpu::{CpuMeter, CpuPerRequest};
use crate::stack::Stack;
use crate::stats::Latencies;

#[derive(Debug, Serialize)]
pub struct SubmitResult {
    pub concurrency: usize,
    pub requests: usize,
    pub errors: usize,
    pub requests_per_sec: f64,
    pub latency: Latencies,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_per_request: Option<CpuPerRequest>,
}

impl SubmitResult {
    /// The answered requests' latencies (ms) and the failed ones, over `elapsed`.
    pub fn new(concurrency: usize, latencies: Vec<f64>, errors: usize, elapsed: Duration) -> Self {
        Self {
            concurrency,
            requests: latencies.len(),
            errors,
            requests_per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
            latency: Latencies::of(latencies),
            cpu_per_request: None,
        }
    }
}

/// Requests sent at a fixed rate (open loop). Each one's latency runs from the moment it was
/// due, not from when it could be sent, so a stall of the service (or of the load generator)
/// counts against every request it delayed, not only against the one it held.
#[derive(Debug, Serialize)]
pub struct RateResult {
    pub offered_per_sec: u64,
    pub requests: usize,
    pub errors: usize,
    /// Answers per second over the measurement: the offered rate if the service kept up.
    pub answered_per_sec: f64,
    pub latency: Latencies,
    pub cpu_per_request: Option<CpuPerRequest>,
}

/// Connections of a fixed-rate run, each sending its next due request as soon as it is free:
/// at most this many requests are in flight, and a due request that finds them all busy waits
/// (its wait counts in its latency), as behind a client's connection pool.
pub const RATE_CONNECTIONS: usize = 32;

/// How finely the fixed-rate sends are paced: the requests due in a slice are released
/// together at its end, so each may be counted up to this much late.
const PACING: Duration = Duration::from_micros(250);

/// `concurrency` clients in a [`closed_loop`] for `run_for`, on the generator thread, with the
/// CPU per answered request.
pub async fn measure_closed_loop(
    stack: &Stack<'_>,
    concurrency: usize,
    run_for: Duration,
    expected: u16,
    next: impl FnMut() -> HitRequest + Send + 'static,
) -> anyhow::Result<SubmitResult> {
    let addr = stack.api_addr()?;
    let meter = CpuMeter::start(stack.api_pid);
    let mut result = on_generator_thread(move || async move {
        let clients = HitClient::connect_many(addr, concurrency).await?;
        Ok(closed_loop(clients, Until::Elapsed(run_for), expected, next).await)
    })
    .await?;
    result.cpu_per_request = Some(meter.per_request(result.requests));
    Ok(result)
}

/// Runs a measurement's load on a thread of its own with a single-threaded runtime, as
/// `wrk -t1` runs: all its connections polled by one task, no task per connection and no
/// channel or lock per request. The generator shares the two cores with what it measures:
/// spread over a multi-threaded runtime (a task per connection, a shared queue of due requests
/// behind a lock) it costs 24–36 µs of CPU per request at a fixed rate and 13–14 at 16
/// clients; on one thread, 16–23 and 11–12 (the report's CPU column).
pub async fn on_generator_thread<T, F, Fut>(measure: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("hit-generator".into())
        .spawn(move || {
            let outcome = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|runtime| runtime.block_on(measure()));
            let _ = done.send(outcome);
        })?;
    result.await?
}

/// When the clients of a [`closed_loop`] stop sending.
#[derive(Clone, Copy)]
pub enum Until {
    /// Once this long has passed since the first request.
    Elapsed(Duration),
    /// Once this many requests were sent, by all of them.
    Sent(usize),
}

impl Until {
    fn goes_on(self, started: Instant, sent: usize) -> bool {
        match self {
            Self::Elapsed(run_for) => started.elapsed() < run_for,
            Self::Sent(total) => sent < total,
        }
    }
}

/// Each client sends its next request (`next`) as soon as it has its answer, `until` it is
/// time to stop: the requests answered with the status `expected` are timed, the others
/// counted as errors.
pub async fn closed_loop(
    clients: Vec<HitClient>,
    until: Until,
    expected: u16,
    mut next: impl FnMut() -> HitRequest,
) -> SubmitResult {
    use futures::StreamExt;
    let concurrency = clients.len();
    let started = Instant::now();
    let mut sent = 0usize;
    let mut running = futures::stream::FuturesUnordered::new();
    for client in clients {
        if !until.goes_on(started, sent) {
            break;
        }
        sent += 1;
        running.push(client.send_due(next(), expected, Instant::now()));
    }
    let (mut latencies, mut errors) = (Vec::new(), 0usize);
    while let Some((client, answered, due, at)) = running.next().await {
        if answered {
            latencies.push((at - due).as_secs_f64() * 1000.0);
        } else {
            errors += 1;
        }
        if until.goes_on(started, sent) {
            sent += 1;
            running.push(client.send_due(next(), expected, Instant::now()));
        }
    }
    SubmitResult::new(concurrency, latencies, errors, started.elapsed())
}

/// Sends `rate` requests a second for `run_for` (open loop: a request is due at its time
/// whether or not the earlier ones were answered) and times each from when it was due. A thread
/// of its own keeps the time ([`PACING`]; the runtime's timers tick in whole milliseconds) and
/// hands each slice's due times over; each goes to a free client, or waits for the first one
/// free (its wait counts in its latency), as behind a client's connection pool.
pub async fn hits_at_rate(
    clients: Vec<HitClient>,
    hit: &HitRequest,
    rate: u64,
    run_for: Duration,
) -> RateResult {
    use futures::StreamExt;
    let (slice_tx, mut slices) = tokio::sync::mpsc::unbounded_channel::<Vec<Instant>>();
    let total = (rate as f64 * run_for.as_secs_f64()) as usize;
    let started = Instant::now();
    let pacer = std::thread::spawn(move || {
        let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
        let mut n = 0usize;
        while n < total {
            std::thread::sleep(PACING);
            let now = Instant::now();
            let mut due = Vec::new();
            while n < total && started + interval.mul_f64(n as f64) <= now {
                due.push(started + interval.mul_f64(n as f64));
                n += 1;
            }
            if !due.is_empty() && slice_tx.send(due).is_err() {
                return;
            }
        }
    });
    let mut free = clients;
    let mut waiting = std::collections::VecDeque::new();
    let mut running = futures::stream::FuturesUnordered::new();
    let (mut latencies, mut errors) = (Vec::with_capacity(total), 0usize);
    let mut pacing = true;
    while latencies.len() + errors < total {
        tokio::select! {
            slice = slices.recv(), if pacing => match slice {
                Some(slice) => {
                    for due in slice {
                        match free.pop() {
                            Some(client) => running.push(client.send_due(hit.clone(), 200, due)),
                            None => waiting.push_back(due),
                        }
                    }
                }
                None => pacing = false,
            },
            Some((client, answered, due, at)) = running.next() => {
                if answered {
                    latencies.push((at - due).as_secs_f64() * 1000.0);
                } else {
                    errors += 1;
                }
                match waiting.pop_front() {
                    Some(due) => running.push(client.send_due(hit.clone(), 200, due)),
                    None => free.push(client),
                }
            }
            else => break,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = pacer.join();
    RateResult {
        offered_per_sec: rate,
        requests: latencies.len(),
        errors,
        answered_per_sec: latencies.len() as f64 / elapsed,
        latency: Latencies::of(latencies),
        cpu_per_request: None,
    }
}
