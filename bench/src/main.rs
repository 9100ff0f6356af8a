//! `llm-bench`: the project's one benchmark command (`scripts/bench.sh`).
//!
//! Starts the real stack itself on a fresh database — the release `llm-api` and `llm-worker`
//! binaries, mock provider at 0 ms — drives it over loopback HTTP, and prints one table (also
//! written as JSON to `.bench/results.json`):
//! - durable submit: requests/s and latency percentiles at several concurrencies (no worker
//!   running, so the figure is the api + PostgreSQL alone);
//! - end to end with 1 and 2 workers: jobs/s, submit → completed and queue pickup latency
//!   (committed → running), read from the rows' own timestamps;
//! - the same submits straight into PostgreSQL (`llm_shared::requests::Submitter`, the api's own
//!   function, through a pool like the api's, no HTTP): the ceiling the database allows;
//! - resident memory of the api and of a worker: idle, peak, and its slope over a soak under a
//!   steady load (`--soak-secs`);
//! - the machine it ran on (CPU model, cores, memory).
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use llm_api::auth::JwtKeys;
use llm_shared::db;
use llm_shared::requests::NewRequest;
use secrecy::SecretString;
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use tokio::process::{Child, Command};
use uuid::Uuid;

const SECRET: &str = "benchmark-secret-key-of-sufficient-length!";

#[derive(Debug, Parser)]
#[command(
    name = "llm-bench",
    about = "Benchmark the LLM service end to end on this machine"
)]
struct Args {
    /// Admin connection used to create (and drop) the benchmark's own database; the stack
    /// connects with the same settings (query string). The default server is on this machine,
    /// so without TLS, as the README advises for a local server: sqlx's default
    /// (`sslmode=prefer`) encrypts loopback traffic whenever the server offers TLS.
    #[arg(
        long,
        env = "BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
    )]
    admin_database_url: String,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Submit concurrencies to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,10,50")]
    concurrency: Vec<usize>,
    /// Seconds each submit measurement runs.
    #[arg(long, default_value_t = 10)]
    submit_secs: u64,
    /// Concurrencies at which cache hits are measured. At a fixed concurrency the mean
    /// latency is concurrency / throughput (50 clients at 15,000 req/s wait 3.3 ms on average),
    /// so a latency target is read at the lower one.
    #[arg(long, value_delimiter = ',', default_value = "16,50")]
    cache_concurrency: Vec<usize>,
    /// Cache hits offered at a fixed rate (requests per second, open loop), where their latency
    /// is read: at a fixed concurrency the clients saturate the cores, so the latency measured
    /// there is mostly queueing for them.
    #[arg(long, value_delimiter = ',', default_value = "10000,15000")]
    cache_rate: Vec<u64>,
    /// Jobs per end-to-end run.
    #[arg(long, default_value_t = 5000)]
    e2e_jobs: usize,
    /// Requests sent one at a time (100 per second) to measure unloaded latency.
    #[arg(long, default_value_t = 500)]
    unloaded_jobs: usize,
    /// Streams measured one at a time for time to first token.
    #[arg(long, default_value_t = 200)]
    ttft_streams: usize,
    /// Concurrent streams held open on one api process.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Seconds of the memory soak (steady load, api and worker RSS sampled every second).
    #[arg(long, default_value_t = 180)]
    soak_secs: u64,
    /// Submits per second during the soak.
    #[arg(long, default_value_t = 200)]
    soak_rate: u64,
    /// Where the JSON results go.
    #[arg(long, default_value = ".bench/results.json")]
    output: PathBuf,
}

#[derive(Debug, Serialize)]
struct Latencies {
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Latencies {
    fn of(mut samples: Vec<f64>) -> Self {
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| {
            if samples.is_empty() {
                return f64::NAN;
            }
            let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[i]
        };
        Self {
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

#[derive(Debug, Serialize)]
struct SubmitResult {
    concurrency: usize,
    requests: usize,
    errors: usize,
    requests_per_sec: f64,
    latency: Latencies,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_per_request: Option<CpuPerRequest>,
}

impl SubmitResult {
    /// The answered requests' latencies (ms) and the failed ones, over `elapsed`.
    fn new(concurrency: usize, latencies: Vec<f64>, errors: usize, elapsed: Duration) -> Self {
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

/// CPU time (user + system) per answered request, by process, over a measurement: where the two
/// shared cores went. PostgreSQL and Redis are counted when they run on this machine.
#[derive(Debug, Clone, Serialize)]
struct CpuPerRequest {
    api_us: f64,
    postgres_us: Option<f64>,
    redis_us: Option<f64>,
    /// The workers, in the phases that run some.
    #[serde(skip_serializing_if = "Option::is_none")]
    worker_us: Option<f64>,
    /// The load generator (this process; in the end-to-end phases, also the hub's sink).
    generator_us: f64,
    /// The share (%) of the machine's CPU time its hypervisor gave to others meanwhile
    /// (`steal`): on a VM, what tells a slow minute from a slower build.
    #[serde(skip_serializing_if = "Option::is_none")]
    vm_steal_pct: Option<f64>,
    /// Kernel threads that held a CPU for half a millisecond or more at a time meanwhile.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    kernel_holds: Vec<KernelHold>,
}

/// A kernel thread that held a CPU for [`KernelThreads::HOLD`] or more at a time, on average,
/// during a measurement. On a kernel built without preemption (`PREEMPT_NONE`, as on the VMs
/// these figures were taken on) nothing else runs on that CPU until it yields, so whatever
/// waits for a thread queued there waits as long. There DAMON's `kdamond` (the host's memory
/// reclaim) ran every 0.5 s, up to ~5 ms at once (`perf sched timehist`), 0.5–1.5 ms per run on
/// average under load, and every cache hit due meanwhile was late by as much.
#[derive(Debug, Clone, Serialize)]
struct KernelHold {
    thread: String,
    runs: u64,
    avg_ms: f64,
}

/// Each kernel thread's time on a CPU so far and in how many runs (`/proc/<pid>/schedstat`), by
/// pid: the children of `kthreadd` (pid 2).
struct KernelThreads(std::collections::HashMap<u32, KernelThread>);

struct KernelThread {
    name: String,
    on_cpu_ns: u64,
    runs: u64,
}

impl KernelThreads {
    const HOLD: Duration = Duration::from_micros(500);

    fn now() -> Self {
        let mut threads = std::collections::HashMap::new();
        for pid in pids() {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // pid (comm) state ppid ...: the name may hold spaces and parentheses.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            if stat[close + 1..].split_whitespace().nth(1) != Some("2") {
                continue;
            }
            let Ok(schedstat) = std::fs::read_to_string(format!("/proc/{pid}/schedstat")) else {
                continue;
            };
            // on-CPU ns, waiting ns, runs
            let fields: Vec<u64> = schedstat
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            if let [on_cpu_ns, _, runs] = fields[..] {
                let name = stat[open + 1..close].to_owned();
                threads.insert(
                    pid,
                    KernelThread {
                        name,
                        on_cpu_ns,
                        runs,
                    },
                );
            }
        }
        Self(threads)
    }

    /// The threads whose runs since `then` lasted [`Self::HOLD`] or more on average, longest
    /// first.
    fn holds_since(&self, then: &Self) -> Vec<KernelHold> {
        let mut holds: Vec<KernelHold> = self
            .0
            .iter()
            .filter_map(|(pid, now)| {
                let before = then.0.get(pid)?;
                let runs = now.runs.checked_sub(before.runs).filter(|&r| r > 0)?;
                let avg =
                    Duration::from_nanos(now.on_cpu_ns.saturating_sub(before.on_cpu_ns) / runs);
                (avg >= Self::HOLD).then(|| KernelHold {
                    thread: now.name.clone(),
                    runs,
                    avg_ms: avg.as_secs_f64() * 1000.0,
                })
            })
            .collect();
        holds.sort_by(|a, b| b.avg_ms.total_cmp(&a.avg_ms));
        holds
    }
}

/// The CPU seconds of the processes a measurement shares the machine with, when it started.
struct CpuMeter {
    api_pid: u32,
    api: f64,
    worker_pids: Vec<u32>,
    workers: f64,
    postgres: Option<f64>,
    redis: Option<f64>,
    generator: f64,
    machine: Option<MachineTicks>,
    kernel: KernelThreads,
}

/// The machine's CPU time so far (`/proc/stat`, clock ticks): all of it, and what the
/// hypervisor stole.
#[derive(Clone, Copy)]
struct MachineTicks {
    total: u64,
    steal: u64,
}

impl MachineTicks {
    fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        // cpu user nice system idle iowait irq softirq steal (guest time is within user)
        let ticks: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|v| v.parse().ok())
            .collect();
        (ticks.len() == 8).then(|| Self {
            total: ticks.iter().sum(),
            steal: ticks[7],
        })
    }

    /// The stolen share (%) of the time since `then`.
    fn steal_pct_since(self, then: Self) -> Option<f64> {
        let total = self.total.checked_sub(then.total).filter(|&t| t > 0)?;
        Some(self.steal.saturating_sub(then.steal) as f64 * 100.0 / total as f64)
    }
}

impl CpuPerRequest {
    /// `api / [worker /] pg / redis / generator`, in µs, then the VM's steal and the kernel
    /// threads' long runs.
    fn summary(&self) -> String {
        let us = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
        let worker = self
            .worker_us
            .map_or(String::new(), |w| format!("{w:.0} / "));
        let steal = self
            .vm_steal_pct
            .map_or(String::new(), |p| format!("   steal {p:.0}%"));
        let kernel: String = self
            .kernel_holds
            .iter()
            .map(|h| format!(", {} {}x{:.1} ms", h.thread, h.runs, h.avg_ms))
            .collect();
        format!(
            "{} / {worker}{} / {} / {}{steal}{kernel}",
            us(Some(self.api_us)),
            us(self.postgres_us),
            us(self.redis_us),
            us(Some(self.generator_us))
        )
    }
}

impl CpuMeter {
    fn start(api_pid: u32) -> Self {
        Self::with_workers(api_pid, Vec::new())
    }

    fn with_workers(api_pid: u32, worker_pids: Vec<u32>) -> Self {
        Self {
            api_pid,
            api: cpu_secs(api_pid),
            workers: worker_pids.iter().map(|&pid| cpu_secs(pid)).sum(),
            worker_pids,
            postgres: cpu_secs_of("postgres"),
            redis: cpu_secs_of("redis-server"),
            generator: cpu_secs(std::process::id()),
            machine: MachineTicks::now(),
            kernel: KernelThreads::now(),
        }
    }

    fn per_request(&self, requests: usize) -> CpuPerRequest {
        let per = |secs: f64| secs * 1e6 / requests.max(1) as f64;
        let since = |then: Option<f64>, now: Option<f64>| Some(per(now? - then?));
        CpuPerRequest {
            api_us: per(cpu_secs(self.api_pid) - self.api),
            postgres_us: since(self.postgres, cpu_secs_of("postgres")),
            redis_us: since(self.redis, cpu_secs_of("redis-server")),
            worker_us: (!self.worker_pids.is_empty()).then(|| {
                per(self
                    .worker_pids
                    .iter()
                    .map(|&pid| cpu_secs(pid))
                    .sum::<f64>()
                    - self.workers)
            }),
            generator_us: per(cpu_secs(std::process::id()) - self.generator),
            vm_steal_pct: self
                .machine
                .zip(MachineTicks::now())
                .and_then(|(then, now)| now.steal_pct_since(then)),
            kernel_holds: KernelThreads::now().holds_since(&self.kernel),
        }
    }
}

#[derive(Debug, Serialize)]
struct EndToEndResult {
    workers: usize,
    jobs: usize,
    jobs_per_sec: f64,
    submit_to_completed: Latencies,
    pickup: Latencies,
    /// CPU per job, from the first submit until every job is acknowledged and its events
    /// delivered to the hub.
    cpu_per_job: CpuPerRequest,
}

#[derive(Debug, Serialize)]
struct StreamingResult {
    /// Client-observed time to the first token (mock provider: first token at 0 ms), so all of
    /// it is the service's own overhead: submit, commit, queue pickup, relay.
    ttft: Latencies,
    /// The relay's own hop: a token published as a worker publishes it (`StreamRelay::publish`) until
    /// the client reads it from the api's SSE stream (Redis, the api's hub, SSE, loopback).
    relay_hop: Latencies,
    streams: usize,
    tokens_per_stream: usize,
    /// api resident memory with no stream open, and with all of them open.
    api_rss_idle_mb: f64,
    api_rss_open_mb: f64,
    api_rss_per_stream_kb: f64,
    /// api CPU time spent while relaying every stream to its end, per relayed token.
    api_cpu_us_per_token: f64,
    all_streams_done_secs: f64,
}

/// Cache hits at a fixed concurrency are measured like submits (answers `200` counted).
type CacheResult = SubmitResult;

/// Requests sent at a fixed rate (open loop). Each one's latency runs from the moment it was
/// due, not from when it could be sent, so a stall of the service (or of the load generator)
/// counts against every request it delayed, not only against the one it held.
#[derive(Debug, Serialize)]
struct RateResult {
    offered_per_sec: u64,
    requests: usize,
    errors: usize,
    /// Answers per second over the measurement: the offered rate if the service kept up.
    answered_per_sec: f64,
    latency: Latencies,
    cpu_per_request: Option<CpuPerRequest>,
}

#[derive(Debug, Serialize)]
struct DrainResult {
    workers: usize,
    jobs: usize,
    jobs_per_sec: f64,
    /// What queueing the jobs cost PostgreSQL (the api's submits, no worker running) and what
    /// running them did (the workers' fetch, claim, completion, acknowledgement and the hub
    /// relay), per job: write-ahead log bytes, which do not depend on how busy the machine is,
    /// and CPU of the PostgreSQL processes, when the server runs on this machine.
    submit_cost: DbCost,
    run_cost: DbCost,
}

/// PostgreSQL's work per job over one phase.
#[derive(Debug, Serialize)]
struct DbCost {
    wal_bytes_per_job: f64,
    cpu_us_per_job: Option<f64>,
}

/// Where the database stood at the start of a phase (see [`DbCost`]).
struct DbMark {
    wal_lsn: String,
    cpu_secs: Option<f64>,
}

impl DbMark {
    async fn now(pool: &PgPool) -> anyhow::Result<Self> {
        let wal_lsn: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(pool)
            .await?;
        Ok(Self {
            wal_lsn,
            cpu_secs: cpu_secs_of("postgres"),
        })
    }

    async fn cost(&self, pool: &PgPool, jobs: usize) -> anyhow::Result<DbCost> {
        let wal_bytes: f64 = sqlx::query_scalar(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::float8",
        )
        .bind(&self.wal_lsn)
        .fetch_one(pool)
        .await?;
        let jobs = jobs.max(1) as f64;
        Ok(DbCost {
            wal_bytes_per_job: wal_bytes / jobs,
            cpu_us_per_job: self
                .cpu_secs
                .zip(cpu_secs_of("postgres"))
                .map(|(before, after)| (after - before) * 1e6 / jobs),
        })
    }
}

#[derive(Debug, Serialize)]
struct MemoryResult {
    soak_secs: u64,
    soak_rate_per_sec: u64,
    soak_requests: usize,
    api: RssResult,
    worker: RssResult,
}

/// Resident memory (VmRSS) of one process.
#[derive(Debug, Serialize)]
struct RssResult {
    /// Before any load.
    idle_mb: f64,
    peak_mb: f64,
    /// Least-squares slope over the soak (its first fifth, the warm-up, left out).
    slope_mb_per_min: f64,
}

#[derive(Debug, Serialize)]
struct Machine {
    cpu: String,
    cores: usize,
    memory_gib: f64,
    /// How the stack's database connections use TLS (`sslmode`; sqlx's default is `prefer`).
    database_sslmode: String,
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} cores, {:.0} GiB, {}; PostgreSQL sslmode={}",
            self.cores, self.memory_gib, self.cpu, self.database_sslmode
        )
    }
}

#[derive(Debug, Serialize)]
struct Report {
    machine: Machine,
    started_at: String,
    total_secs: f64,
    submit: Vec<SubmitResult>,
    /// The same submits (same function, same SQL, a pool like the api's) without HTTP.
    submit_postgres_only: Vec<SubmitResult>,
    end_to_end: Vec<EndToEndResult>,
    /// Queue drain: jobs submitted first, then workers started; jobs/s of the workers alone.
    drain: Vec<DrainResult>,
    /// One request at a time (paced), 1 worker: the latency the service itself adds.
    unloaded: EndToEndResult,
    streaming: StreamingResult,
    cache_hits: Vec<CacheResult>,
    cache_hits_at_rate: Vec<RateResult>,
    /// Round trip of the rate limiter's check (what it adds to every submit).
    rate_limiter: Latencies,
    memory: MemoryResult,
    /// Events the workers' outbox relays delivered to the benchmark's hub during the run.
    hub_events_delivered: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("binary directory")?
        .to_path_buf();
    for name in ["llm-api", "llm-worker"] {
        if !bin_dir.join(name).exists() {
            bail!(
                "{} missing: build with `cargo build --release --bins` (scripts/bench.sh does)",
                bin_dir.join(name).display()
            );
        }
    }
    let machine = machine(&args.admin_database_url);
    println!("llm-bench on {machine}");

    let bench_db = BenchDb::create(&args.admin_database_url).await?;
    let result = run(&args, &bin_dir, &bench_db, machine).await;
    forget_redis_namespace(&args.redis_url, &format!("{}:", bench_db.name)).await;
    bench_db.drop_it(&args.admin_database_url).await;
    let report = result?;

    print_report(&report);
    if let Some(dir) = args.output.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.output, serde_json::to_vec_pretty(&report)?)?;
    println!("\nJSON written to {}", args.output.display());
    Ok(())
}

async fn run(
    args: &Args,
    bin_dir: &std::path::Path,
    bench_db: &BenchDb,
    machine: Machine,
) -> anyhow::Result<Report> {
    let started_at = chrono::Utc::now().to_rfc3339();
    let started = Instant::now();
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let hub = HubSink::start()?;
    let env = [
        ("DATABASE_URL", bench_db.url.clone()),
        // A message hub that accepts every event: the outbox drains as in production.
        ("MESSAGE_HUB_URL", hub.url.clone()),
        ("REDIS_URL", args.redis_url.clone()),
        ("SECRET_KEY", SECRET.to_owned()),
        ("LOG_LEVEL", "warn".to_owned()),
        // The benchmark is one user sending far more than a user may: lift its limits (the
        // limiter still runs on every submit).
        ("RATE_LIMIT_RPM", "4000000000".to_owned()),
        // Its own Redis namespace: nothing shared with another run or a local deployment.
        ("REDIS_KEY_PREFIX", format!("{}:", bench_db.name)),
        ("RATE_LIMIT_TPM", "4000000000".to_owned()),
    ];
    let start_api = || async {
        let api = spawn(
            bin_dir.join("llm-api"),
            &["serve"],
            &env,
            &[("API_LISTEN", format!("127.0.0.1:{port}"))],
        )?;
        wait_healthy(&base).await?;
        let pid = api.id().context("api pid")?;
        anyhow::Ok((api, pid))
    };
    let (mut api, api_pid) = start_api().await?;

    let token = JwtKeys::new(&SecretString::from(SECRET)).issue(Uuid::now_v7(), 3600, None)?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let stack = Stack {
        args,
        api_pid,
        bin_dir,
        env: &env,
        client: &client,
        base: &base,
        token: &token,
    };

    let mut submit = Vec::new();
    for &c in &args.concurrency {
        let r = measure_submit(&stack, c, Duration::from_secs(args.submit_secs)).await?;
        println!(
            "  submit c={c}: {:.0} req/s, p99 {:.2} ms",
            r.requests_per_sec, r.latency.p99_ms
        );
        submit.push(r);
    }
    // The submit phase left its jobs queued: clear them so the end-to-end runs start empty.
    reset_tables(&bench_db.pool).await?;
    let submit_postgres_only = measure_submit_postgres_only(args, &bench_db.url).await?;
    reset_tables(&bench_db.pool).await?;

    let unloaded = {
        let mut worker = stack.worker("bench-unloaded", &[])?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let meter = CpuMeter::with_workers(stack.api_pid, worker.id().into_iter().collect());
        for n in 0..args.unloaded_jobs {
            let _ = client
                .post(format!("{base}/api/v1/generate"))
                .bearer_auth(&token)
                .json(&json!({"prompt": format!("unloaded bench {n}")}))
                .send()
                .await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let r = collect_end_to_end(&bench_db.pool, args.unloaded_jobs, 1, meter).await?;
        println!(
            "  unloaded: e2e p50 {:.2} ms, p99 {:.2} ms",
            r.submit_to_completed.p50_ms, r.submit_to_completed.p99_ms
        );
        stop(&mut worker).await;
        reset_tables(&bench_db.pool).await?;
        r
    };

    let mut end_to_end = Vec::new();
    for workers in [1usize, 2] {
        let mut children = Vec::new();
        for i in 0..workers {
            children.push(stack.worker(&format!("bench-{workers}-{i}"), &[])?);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = measure_end_to_end(&stack, &bench_db.pool, args.e2e_jobs, &children).await?;
        println!(
            "  end to end, {workers} worker(s): {:.0} jobs/s, p50 {:.1} ms",
            r.jobs_per_sec, r.submit_to_completed.p50_ms
        );
        end_to_end.push(r);
        for child in &mut children {
            stop(child).await;
        }
        reset_tables(&bench_db.pool).await?;
    }
    let streaming = measure_streaming(&stack, &api, &bench_db.pool).await?;
    reset_tables(&bench_db.pool).await?;

    let (cache_hits, cache_hits_at_rate) = measure_cache_hits(&stack).await?;
    for c in &cache_hits {
        println!(
            "  cache hits c={}: {:.0} req/s, p99 {:.2} ms",
            c.concurrency, c.requests_per_sec, c.latency.p99_ms
        );
    }
    for r in &cache_hits_at_rate {
        println!(
            "  cache hits at {} req/s: {:.0} answered/s, p50 {:.2} ms, p99 {:.2} ms",
            r.offered_per_sec, r.answered_per_sec, r.latency.p50_ms, r.latency.p99_ms
        );
    }
    // The drain is timed over the whole table: no row of an earlier phase may be left in it.
    reset_tables(&bench_db.pool).await?;
    let rate_limiter = measure_rate_limiter(&args.redis_url, &bench_db.pool).await?;
    println!(
        "  rate limiter: p50 {:.3} ms, p99 {:.3} ms",
        rate_limiter.p50_ms, rate_limiter.p99_ms
    );

    let mut drain = Vec::new();
    for workers in [1usize, 2] {
        let queued = DbMark::now(&bench_db.pool).await?;
        let total = submit_burst(&stack, args.e2e_jobs).await?;
        // The api's group-commit writers answer once their batch committed: nothing is left.
        let started = DbMark::now(&bench_db.pool).await?;
        let submit_cost = queued.cost(&bench_db.pool, total).await?;
        let mut children = Vec::new();
        for i in 0..workers {
            children.push(stack.worker(&format!("drain-{workers}-{i}"), &[])?);
        }
        wait_finished(&bench_db.pool, total).await?;
        // The acknowledgements and the hub relay follow the completing writes.
        wait_settled(&bench_db.pool).await?;
        let run_cost = started.cost(&bench_db.pool, total).await?;
        let (secs,): (f64,) = sqlx::query_as(
            "SELECT EXTRACT(EPOCH FROM (MAX(completed_at) - MIN(started_at)))::float8
             FROM generation_requests",
        )
        .fetch_one(&bench_db.pool)
        .await?;
        let r = DrainResult {
            workers,
            jobs: total,
            jobs_per_sec: total as f64 / secs,
            submit_cost,
            run_cost,
        };
        println!(
            "  drain, {workers} worker(s): {:.0} jobs/s; per job, submit {:.0} B WAL, run {:.0} B WAL",
            r.jobs_per_sec, r.submit_cost.wal_bytes_per_job, r.run_cost.wal_bytes_per_job
        );
        drain.push(r);
        for child in &mut children {
            stop(child).await;
        }
        reset_tables(&bench_db.pool).await?;
    }
    // The soak runs on an api of its own: the one that served the phases above would hand back
    // what they left (1,000 streams, the cache hits, the drain's bursts) during it, and its
    // slope would read as that, not as what a steady load does to a fresh process.
    stop(&mut api).await;
    let (mut api, soak_api_pid) = start_api().await?;
    let memory = measure_memory(&stack, soak_api_pid).await?;
    println!(
        "  memory soak: api {:.1} -> {:.1} MB ({:+.2} MB/min), worker {:.1} -> {:.1} MB ({:+.2} MB/min)",
        memory.api.idle_mb,
        memory.api.peak_mb,
        memory.api.slope_mb_per_min,
        memory.worker.idle_mb,
        memory.worker.peak_mb,
        memory.worker.slope_mb_per_min
    );
    reset_tables(&bench_db.pool).await?;
    stop(&mut api).await;
    Ok(Report {
        machine,
        started_at,
        total_secs: started.elapsed().as_secs_f64(),
        submit,
        submit_postgres_only,
        end_to_end,
        drain,
        unloaded,
        streaming,
        cache_hits,
        cache_hits_at_rate,
        rate_limiter,
        memory,
        hub_events_delivered: hub.received.load(std::sync::atomic::Ordering::Relaxed),
    })
}

/// Submits from `concurrency` clients, each sending its next as soon as it has its answer, for
/// `run_for` ([`closed_loop`]), every one with a prompt of its own ([`SubmitRequests`]), over
/// bare connections on the generator thread, as the cache hits are sent. Through reqwest, with a
/// task per client on the bench's runtime, the generator took a share of the two cores the api
/// and PostgreSQL then lacked.
async fn measure_submit(
    stack: &Stack<'_>,
    concurrency: usize,
    run_for: Duration,
) -> anyhow::Result<SubmitResult> {
    let submits = SubmitRequests::new(stack, "submit bench")?;
    measure_closed_loop(stack, concurrency, run_for, 202, move || submits.next()).await
}

/// `concurrency` clients in a [`closed_loop`] for `run_for`, on the generator thread, with the
/// CPU per answered request.
async fn measure_closed_loop(
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

/// Submits (`POST /api/v1/generate`), each with a prompt of its own, `{label} {run} {n}`: none
/// answered from the cache or attached to another request in flight, this run's or an earlier
/// one's.
struct SubmitRequests {
    addr: std::net::SocketAddr,
    token: String,
    label: String,
    sent: std::cell::Cell<usize>,
}

impl SubmitRequests {
    fn new(stack: &Stack<'_>, label: &str) -> anyhow::Result<Self> {
        Ok(Self {
            addr: stack.api_addr()?,
            token: stack.token.to_owned(),
            label: format!("{label} {}", Uuid::now_v7().simple()),
            sent: std::cell::Cell::new(0),
        })
    }

    fn next(&self) -> HitRequest {
        let n = self.sent.get();
        self.sent.set(n + 1);
        let body = json!({ "prompt": format!("{} {n}", self.label) }).to_string();
        HitRequest::post(self.addr, "/api/v1/generate", &self.token, body.as_bytes())
    }
}

/// The submits of [`measure_submit`] without HTTP: the request the api would build
/// (`NewRequest::validate`), stored by the api's own `requests::Submitter` (same
/// group-committed statements) through a pool sized like the api's. What PostgreSQL allows, for comparison.
async fn measure_submit_postgres_only(
    args: &Args,
    database_url: &str,
) -> anyhow::Result<Vec<SubmitResult>> {
    #[derive(Parser)]
    struct Common {
        #[command(flatten)]
        config: llm_shared::config::CommonConfig,
    }
    let config = Common::try_parse_from(["llm-bench"])?.config;
    let registry = std::sync::Arc::new(llm_shared::models::ModelRegistry::load(&config)?);
    let pool = db::connect_url(database_url, config.database_max_connections).await?;
    let submitter = llm_shared::requests::Submitter::new(pool.clone(), None);
    let user = Uuid::now_v7();
    let mut results = Vec::new();
    for &c in &args.concurrency {
        let (submitter, registry) = (submitter.clone(), registry.clone());
        let r = measure_concurrently(
            c,
            Duration::from_secs(args.submit_secs),
            move |worker, n| {
                let (submitter, registry) = (submitter.clone(), registry.clone());
                async move {
                    let body = json!({"prompt": format!("postgres bench {worker}/{n}")});
                    let Ok(body) = serde_json::from_value(body) else {
                        return false;
                    };
                    match NewRequest::validate(body, user, None, &registry, 5) {
                        Ok(new) => submitter.submit(new).await.is_ok(),
                        Err(_) => false,
                    }
                }
            },
        )
        .await;
        println!(
            "  submit c={c}, PostgreSQL only: {:.0} req/s, p99 {:.2} ms",
            r.requests_per_sec, r.latency.p99_ms
        );
        results.push(r);
    }
    pool.close().await;
    Ok(results)
}

/// Runs `op(client, n)` from `concurrency` clients in a loop for `run_for`; counts the
/// operations that returned true and their latencies.
async fn measure_concurrently<F, Fut>(concurrency: usize, run_for: Duration, op: F) -> SubmitResult
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let deadline = Instant::now() + run_for;
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|worker| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0usize;
                let mut n = 0usize;
                while Instant::now() < deadline {
                    n += 1;
                    let t = Instant::now();
                    if op(worker, n).await {
                        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                    } else {
                        errors += 1;
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for task in futures::future::join_all(tasks).await.into_iter().flatten() {
        all.extend(task.0);
        errors += task.1;
    }
    SubmitResult::new(concurrency, all, errors, started.elapsed())
}

/// A steady submit load (`--soak-rate` per second, mock provider at 0 ms, one worker) for
/// `--soak-secs`, sampling the VmRSS of the api (`api_pid`, started for it) and of the worker
/// every second.
async fn measure_memory(stack: &Stack<'_>, api_pid: u32) -> anyhow::Result<MemoryResult> {
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
    Ok(MemoryResult {
        soak_secs: run_for.as_secs(),
        soak_rate_per_sec: args.soak_rate,
        soak_requests,
        api: rss(api_idle_mb, &api_samples),
        worker: rss(worker_idle_mb, &worker_samples),
    })
}

/// Least-squares slope of (t, y) points; 0 for fewer than two.
fn slope_per_sec<'a>(points: impl Iterator<Item = &'a (f64, f64)>) -> f64 {
    let points: Vec<_> = points.collect();
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let (mean_t, mean_y) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let cov: f64 = points.iter().map(|p| (p.0 - mean_t) * (p.1 - mean_y)).sum();
    let var: f64 = points.iter().map(|p| (p.0 - mean_t).powi(2)).sum();
    if var == 0.0 { 0.0 } else { cov / var }
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
/// client cost ~20 µs of CPU per submit.
async fn submit_burst(stack: &Stack<'_>, jobs: usize) -> anyhow::Result<usize> {
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

/// Waits (bounded) until `total` requests are final.
async fn wait_finished(pool: &PgPool, total: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql).fetch_one(pool);
    loop {
        // The poll shares the database with what it measures: it counts the unfinished rows
        // (through their partial index, fewer as the run goes on), not the finished ones
        // (counting those cost 9 ms a poll at 10,000 jobs, 18 µs of PostgreSQL time per job).
        let unfinished =
            count("SELECT COUNT(*) FROM generation_requests WHERE completed_at IS NULL").await?;
        let done = if unfinished == 0 {
            count(
                "SELECT COUNT(*) FROM generation_requests WHERE status IN ('completed', 'failed')",
            )
            .await?
        } else {
            0
        };
        if done as usize >= total {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {done} of {total} jobs finished within 300 s ({unfinished} unfinished)");
        }
        // The figures come from the rows' timestamps, not from this poll: poll gently.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits (bounded) until every job is acknowledged and every event delivered to the hub.
async fn wait_settled(pool: &PgPool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM apalis.jobs WHERE status NOT IN ('Done', 'Failed', 'Killed'))
                  + (SELECT COUNT(*) FROM outbox_events WHERE delivered_at IS NULL)",
        )
        .fetch_one(pool)
        .await?;
        if left == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{left} jobs or events still unsettled after 60 s");
        }
        // Counted in the phase's cost like the rest: poll gently (as `wait_finished` does).
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
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
    // The acknowledgements and the hub relay follow the completing writes: counted too.
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

/// One answer cached, then the same request at each `--cache-concurrency` and at each
/// `--cache-rate`: every one a hit.
async fn measure_cache_hits(
    stack: &Stack<'_>,
) -> anyhow::Result<(Vec<CacheResult>, Vec<RateResult>)> {
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
    Ok((at_concurrency, at_rate))
}

/// A request as [`HitClient`]s send it: its bytes on the wire, made once.
#[derive(Clone)]
struct HitRequest {
    addr: std::net::SocketAddr,
    bytes: bytes::Bytes,
}

impl HitRequest {
    fn post(addr: std::net::SocketAddr, path: &str, token: &str, body: &[u8]) -> Self {
        let mut bytes = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        bytes.extend_from_slice(body);
        Self {
            addr,
            bytes: bytes.into(),
        }
    }
}

/// One HTTP/1.1 keep-alive connection to the api, sending [`HitRequest`]s one at a time, as
/// `wrk` does: the request's bytes written as they are, the answer read up to its
/// `Content-Length`, one task, no client library. The load generator shares the two cores with
/// the service, so its own cost shows in the figures: a hyper client connection (a task of its
/// own per connection) cost ~12 µs of CPU per request, reqwest's pool ~18.
struct HitClient {
    /// Where a failed connection is opened again.
    addr: std::net::SocketAddr,
    stream: tokio::net::TcpStream,
    /// What was read of the answer (kept across requests: no allocation per request).
    buffer: Vec<u8>,
}

impl HitClient {
    async fn connect(addr: std::net::SocketAddr) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            addr,
            stream,
            buffer: Vec::with_capacity(4096),
        })
    }

    async fn connect_many(addr: std::net::SocketAddr, n: usize) -> anyhow::Result<Vec<Self>> {
        let mut clients = Vec::with_capacity(n);
        for _ in 0..n {
            clients.push(Self::connect(addr).await?);
        }
        Ok(clients)
    }

    /// Sends `request`, timed: the client back, whether it was answered with the status
    /// `expected`, and when it was due and answered.
    async fn send_due(
        mut self,
        request: HitRequest,
        expected: u16,
        due: Instant,
    ) -> (Self, bool, Instant, Instant) {
        let answered = self.send_or_reconnect(&request.bytes).await == Some(expected);
        (self, answered, due, Instant::now())
    }

    /// Sends `request` (its bytes on the wire) and reads the whole answer: its status. A
    /// connection that failed is replaced for the next request (and this one has none).
    async fn send_or_reconnect(&mut self, request: &[u8]) -> Option<u16> {
        match self.send(request).await {
            Ok(status) => status,
            Err(_) => {
                if let Ok(fresh) = Self::connect(self.addr).await {
                    *self = fresh;
                }
                None
            }
        }
    }

    async fn send(&mut self, request: &[u8]) -> anyhow::Result<Option<u16>> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.stream.write_all(request).await?;
        self.buffer.clear();
        let (status, length) = loop {
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                bail!("the api closed the connection");
            }
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head) = response.parse(&self.buffer)? {
                let body = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                    .context("an answer without Content-Length")?;
                break (response.code, head + body);
            }
        };
        while self.buffer.len() < length {
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                bail!("the api closed the connection mid-answer");
            }
        }
        Ok(status)
    }
}

/// Connections of a fixed-rate run, each sending its next due request as soon as it is free:
/// at most this many requests are in flight, and a due request that finds them all busy waits
/// (its wait counts in its latency), as behind a client's connection pool.
const RATE_CONNECTIONS: usize = 32;

/// How finely the fixed-rate sends are paced: the requests due in a slice are released
/// together at its end, so each may be counted up to this much late.
const PACING: Duration = Duration::from_micros(250);

/// Runs a cache-hit measurement on a thread of its own with a single-threaded runtime, as
/// `wrk -t1` runs: all its connections polled by one task, no task per connection and no
/// channel or lock per request. The generator shares the two cores with what it measures:
/// spread over the bench's multi-threaded runtime (a task per connection, a shared queue of due
/// requests behind a lock) it cost 24–36 µs of CPU per request at a fixed rate and 13–14 at 16
/// clients; on one thread, 16–23 and 11–12 (the report's CPU column).
async fn on_generator_thread<T, F, Fut>(measure: F) -> anyhow::Result<T>
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
enum Until {
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
async fn closed_loop(
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
async fn hits_at_rate(
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

/// The limiter's check on its own, one at a time, as a submit runs it.
async fn measure_rate_limiter(redis_url: &str, pool: &PgPool) -> anyhow::Result<Latencies> {
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
    Ok(Latencies::of(samples))
}

async fn measure_streaming(
    stack: &Stack<'_>,
    api: &Child,
    pool: &PgPool,
) -> anyhow::Result<StreamingResult> {
    let (args, client, base, token) = (stack.args, stack.client, stack.base, stack.token);
    let url = format!("{base}/api/v1/generate/stream");
    // 1. Time to first token, one stream at a time, one worker.
    let mut worker = stack.worker("bench-ttft", &[])?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ttft = Vec::new();
    for n in 0..args.ttft_streams {
        let started = Instant::now();
        let body = json!({"prompt": format!("ttft {n}"), "parameters": {"max_tokens": 8}});
        let response = client
            .post(&url)
            .bearer_auth(token)
            .json(&body)
            .send()
            .await?;
        let mut events = SseCounter::new(response);
        if events.next_token().await {
            ttft.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        events.until_done().await;
    }
    stop(&mut worker).await;

    // 2. The relay hop alone: tokens published straight into the relay (no worker runs the
    //    request), one at a time, each timed until the client has read it.
    let relay_hop = measure_relay_hop(stack, &url).await?;
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
            client.post(&url).bearer_auth(token).json(&body).send()
        });
        for response in futures::future::join_all(batch).await {
            open.push(SseCounter::new(response?));
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
        ttft: Latencies::of(ttft),
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

async fn measure_relay_hop(stack: &Stack<'_>, url: &str) -> anyhow::Result<Latencies> {
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
    let response = stack
        .client
        .post(url)
        .bearer_auth(stack.token)
        .json(&body)
        .send()
        .await?;
    let mut events = SseCounter::new(response);
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

/// Counts the token events of an SSE response.
struct SseCounter {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
    tokens: usize,
    /// The `data:` of the last event read.
    data: String,
}

impl SseCounter {
    fn new(response: reqwest::Response) -> Self {
        use futures::StreamExt;
        Self {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
            tokens: 0,
            data: String::new(),
        }
    }

    /// The next event's name, or `None` at the end.
    async fn next_event(&mut self) -> Option<String> {
        use futures::StreamExt;
        loop {
            if let Some(pos) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..pos + 2).collect();
                if let Some(name) = block.lines().find_map(|l| l.strip_prefix("event: ")) {
                    self.data = block
                        .lines()
                        .filter_map(|l| l.strip_prefix("data: "))
                        .collect();
                    return Some(name.to_owned());
                }
                continue;
            }
            let chunk = self.body.next().await?.ok()?;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// The request id of the stream's `start` event.
    async fn request_id(&mut self) -> Option<Uuid> {
        while let Some(event) = self.next_event().await {
            if event == "start" {
                let start: serde_json::Value = serde_json::from_str(&self.data).ok()?;
                return start["request_id"].as_str()?.parse().ok();
            }
        }
        None
    }

    async fn next_token(&mut self) -> bool {
        while let Some(event) = self.next_event().await {
            if event == "token" {
                self.tokens += 1;
                return true;
            }
            if event == "done" || event == "error" {
                return false;
            }
        }
        false
    }

    /// Reads to the terminal event; returns the tokens seen.
    async fn until_done(&mut self) -> usize {
        while let Some(event) = self.next_event().await {
            match event.as_str() {
                "token" => self.tokens += 1,
                "done" | "error" => break,
                _ => {}
            }
        }
        self.tokens
    }
}

fn proc_status(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default()
}

fn rss_mb(pid: u32) -> f64 {
    proc_status(pid)
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// User + system CPU seconds of a process and of its children that exited.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the name; cutime and
    // cstime (13 and 14 after it) are those of its children that exited, so that a server's
    // CPU includes the backends that ended during a measurement.
    (ticks(11) + ticks(12) + ticks(13) + ticks(14)) / 100.0
}

/// User + system CPU seconds of every process of this machine named `name` (with their exited
/// children), if there are any: PostgreSQL's or Redis' server may run elsewhere.
fn cpu_secs_of(name: &str) -> Option<f64> {
    let mut total = None;
    for pid in pids() {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim_end() == name {
            *total.get_or_insert(0.0) += cpu_secs(pid);
        }
    }
    total
}

/// The machine's processes (`/proc`): none if it cannot be read.
fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
}

fn print_report(report: &Report) {
    println!("\n== llm-bench  ({})", report.machine);
    // What was held fixed (concurrency or rate), requests, their rate, p50, p95, p99: the
    // columns every latency table shares, then one of its own.
    let header = |fixed: &str, rate: &str, (last, width): (&str, usize)| {
        println!(
            "{fixed:>12} {:>10} {rate:>10} {:>9} {:>9} {:>9} {last:>width$}",
            "requests", "p50 ms", "p95 ms", "p99 ms"
        );
    };
    let row = |fixed: usize, requests: usize, rate: f64, l: &Latencies| {
        format!(
            "{fixed:>12} {requests:>10} {rate:>10.0} {:>9.2} {:>9.2} {:>9.2}",
            l.p50_ms, l.p95_ms, l.p99_ms
        )
    };
    let columns = |r: &SubmitResult| row(r.concurrency, r.requests, r.requests_per_sec, &r.latency);
    println!("\ndurable submit (api + PostgreSQL, no worker running)");
    // CPU per answered request: api / PostgreSQL / Redis / load generator.
    let cpu_per_request =
        |c: &Option<CpuPerRequest>| c.as_ref().map_or(String::new(), CpuPerRequest::summary);
    const CPU_HEADER: &str = "CPU us/req: api / pg / redis / generator; steal: the share of the machine's CPU time its hypervisor took; then any kernel thread that held a CPU 0.5 ms or more at a time on average (runs x average), during which nothing else ran there";
    header("concurrency", "req/s", ("errors", 9));
    for r in &report.submit {
        println!(
            "{} {:>9}   {}",
            columns(r),
            r.errors,
            cpu_per_request(&r.cpu_per_request)
        );
    }
    println!("  ({CPU_HEADER})");
    println!(
        "\nthe same submits straight into PostgreSQL (requests::Submitter, no HTTP): the ceiling"
    );
    header("concurrency", "req/s", ("api / db", 12));
    for r in &report.submit_postgres_only {
        let api = report
            .submit
            .iter()
            .find(|s| s.concurrency == r.concurrency)
            .map_or(f64::NAN, |s| s.requests_per_sec);
        println!("{} {:>11.0}%", columns(r), api / r.requests_per_sec * 100.0);
    }
    println!("\nend to end (mock provider at 0 ms; submitted at concurrency 50)");
    println!(
        "{:>8} {:>7} {:>9} {:>13} {:>13} {:>13} {:>13}   CPU us/job: api / worker / pg / redis / generator, VM steal",
        "workers", "jobs", "jobs/s", "e2e p50 ms", "e2e p99 ms", "pickup p50", "pickup p99"
    );
    for r in &report.end_to_end {
        println!(
            "{:>8} {:>7} {:>9.0} {:>13.1} {:>13.1} {:>13.1} {:>13.1}   {}",
            r.workers,
            r.jobs,
            r.jobs_per_sec,
            r.submit_to_completed.p50_ms,
            r.submit_to_completed.p99_ms,
            r.pickup.p50_ms,
            r.pickup.p99_ms,
            r.cpu_per_job.summary()
        );
    }
    println!(
        "\nqueue drain (jobs queued first, then the workers started); PostgreSQL's work per job"
    );
    println!(
        "{:>8} {:>7} {:>9} {:>14} {:>14} {:>14} {:>14}",
        "workers", "jobs", "jobs/s", "submit WAL B", "submit CPU us", "run WAL B", "run CPU us"
    );
    let cpu = |c: Option<f64>| c.map_or_else(|| "-".to_owned(), |us| format!("{us:.0}"));
    for r in &report.drain {
        println!(
            "{:>8} {:>7} {:>9.0} {:>14.0} {:>14} {:>14.0} {:>14}",
            r.workers,
            r.jobs,
            r.jobs_per_sec,
            r.submit_cost.wal_bytes_per_job,
            cpu(r.submit_cost.cpu_us_per_job),
            r.run_cost.wal_bytes_per_job,
            cpu(r.run_cost.cpu_us_per_job)
        );
    }
    let u = &report.unloaded;
    println!(
        "\nunloaded end to end (1 worker, one request at a time, {} requests)",
        u.jobs
    );
    println!(
        "  submit -> completed p50 {:.2} ms, p99 {:.2} ms; pickup (committed -> running) p50 {:.2} ms, p99 {:.2} ms",
        u.submit_to_completed.p50_ms,
        u.submit_to_completed.p99_ms,
        u.pickup.p50_ms,
        u.pickup.p99_ms
    );
    println!("\ncache hits (one identical request, answered from the cache)");
    header("concurrency", "req/s", ("errors", 9));
    for c in &report.cache_hits {
        println!(
            "{} {:>9}   {}",
            columns(c),
            c.errors,
            cpu_per_request(&c.cpu_per_request)
        );
    }
    println!("cache hits at a fixed rate (open loop; latency from when each request was due)");
    header("offered/s", "answered/s", ("errors", 9));
    for r in &report.cache_hits_at_rate {
        let offered = usize::try_from(r.offered_per_sec).unwrap_or(usize::MAX);
        let columns = row(offered, r.requests, r.answered_per_sec, &r.latency);
        println!(
            "{columns} {:>9}   {}",
            r.errors,
            cpu_per_request(&r.cpu_per_request)
        );
    }
    println!("  ({CPU_HEADER})");
    println!(
        "rate limiter check (added to every submit): p50 {:.3} ms, p99 {:.3} ms",
        report.rate_limiter.p50_ms, report.rate_limiter.p99_ms
    );
    let st = &report.streaming;
    println!("\nstreaming (SSE through the Redis relay, mock provider: first token at 0 ms)");
    println!(
        "  time to first token, one stream at a time: p50 {:.2} ms, p99 {:.2} ms (all of it service overhead: submit, commit, queue pickup, relay)",
        st.ttft.p50_ms, st.ttft.p99_ms
    );
    println!(
        "  relay hop (worker's publish -> Redis -> api hub -> SSE -> client): p50 {:.2} ms, p99 {:.2} ms",
        st.relay_hop.p50_ms, st.relay_hop.p99_ms
    );
    println!(
        "  {} concurrent streams x {} tokens on one api: RSS {:.1} MB idle -> {:.1} MB open ({:.1} KB per stream); \
         api CPU {:.1} us per relayed token; all done in {:.1} s",
        st.streams,
        st.tokens_per_stream,
        st.api_rss_idle_mb,
        st.api_rss_open_mb,
        st.api_rss_per_stream_kb,
        st.api_cpu_us_per_token,
        st.all_streams_done_secs
    );
    let m = &report.memory;
    println!(
        "\nresident memory (VmRSS; soak on a fresh api: {} s at {} submits/s, {} requests, 1 worker; slope after a warm-up fifth)",
        m.soak_secs, m.soak_rate_per_sec, m.soak_requests
    );
    println!(
        "{:>8} {:>10} {:>10} {:>14}",
        "process", "idle MB", "peak MB", "slope MB/min"
    );
    for (name, r) in [("api", &m.api), ("worker", &m.worker)] {
        println!(
            "{:>8} {:>10.1} {:>10.1} {:>+14.2}",
            name, r.idle_mb, r.peak_mb, r.slope_mb_per_min
        );
    }
    println!(
        "\nmessage hub: {} events delivered by the workers' outbox relays",
        report.hub_events_delivered
    );
    println!("\ntotal {:.0} s", report.total_secs);
}

/// Empties what the jobs of a phase wrote, so that each phase starts where the first one did:
/// requests (and their attempts), queue jobs, outbox events and cache entries. Left to grow,
/// the outbox and the cache held every earlier phase's rows, and the later phases ran on
/// tables larger than PostgreSQL's buffers.
async fn reset_tables(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("TRUNCATE generation_requests, apalis.jobs, outbox_events, response_cache CASCADE")
        .execute(pool)
        .await?;
    Ok(())
}

struct BenchDb {
    name: String,
    url: String,
    pool: PgPool,
}

impl BenchDb {
    async fn create(admin_url: &str) -> anyhow::Result<Self> {
        let name = format!("llmbench_{}", Uuid::now_v7().simple());
        let admin = db::connect_url(admin_url, 1)
            .await
            .context("connecting to BENCH_DATABASE_URL")?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await?;
        admin.close().await;
        let (path, query) = admin_url.split_once('?').unwrap_or((admin_url, ""));
        let (base, _) = path
            .rsplit_once('/')
            .context("database URL without a path")?;
        let url = if query.is_empty() {
            format!("{base}/{name}")
        } else {
            format!("{base}/{name}?{query}")
        };
        let pool = db::connect_url(&url, 4).await?;
        db::migrate(&pool).await?;
        Ok(Self { name, url, pool })
    }

    async fn drop_it(self, admin_url: &str) {
        self.pool.close().await;
        if let Ok(admin) = db::connect_url(admin_url, 1).await {
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&admin).await;
        }
    }
}

/// Deletes the run's Redis keys (its `REDIS_KEY_PREFIX`).
async fn forget_redis_namespace(redis_url: &str, prefix: &str) {
    if let Ok(client) = redis::Client::open(redis_url) {
        let _ = llm_shared::kv::forget_namespace(&client, prefix).await;
    }
}

/// What the measurements share: the settings, the binaries' directory, the processes'
/// environment, and an HTTP client of the api with its base URL and token.
struct Stack<'a> {
    args: &'a Args,
    api_pid: u32,
    bin_dir: &'a std::path::Path,
    env: &'a [(&'a str, String)],
    client: &'a reqwest::Client,
    base: &'a str,
    token: &'a str,
}

impl Stack<'_> {
    /// The api's address, for bare connections ([`HitClient`]).
    fn api_addr(&self) -> anyhow::Result<std::net::SocketAddr> {
        Ok(self.base.trim_start_matches("http://").parse()?)
    }

    /// Starts an `llm-worker` named `name`, with `extra` environment.
    fn worker(&self, name: &str, extra: &[(&str, String)]) -> anyhow::Result<Child> {
        // Several workers share the machine: each its own free metrics port.
        let mut env = vec![
            ("WORKER_NAME", name.to_owned()),
            ("WORKER_METRICS_LISTEN", "127.0.0.1:0".to_owned()),
        ];
        env.extend(extra.iter().cloned());
        spawn(self.bin_dir.join("llm-worker"), &[], self.env, &env)
    }
}

fn spawn(
    path: PathBuf,
    args: &[&str],
    env: &[(&str, String)],
    extra: &[(&str, String)],
) -> anyhow::Result<Child> {
    Command::new(&path)
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", path.display()))
}

async fn stop(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    if tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

async fn wait_healthy(base: &str) -> anyhow::Result<()> {
    for _ in 0..100 {
        if reqwest::get(format!("{base}/health"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("llm-api did not become healthy")
}

/// A local message hub that accepts every event (`POST /events` → 204) and counts them, so
/// that the workers' outbox relays deliver as they would to a live hub. It serves from a
/// thread of its own on a single-threaded runtime, as the load generator runs: it shares the
/// cores with what it measures.
struct HubSink {
    url: String,
    received: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl HubSink {
    fn start() -> anyhow::Result<Self> {
        let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = received.clone();
        let app = axum::Router::new().route(
            "/events",
            axum::routing::post(move || {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let url = format!("http://{}", listener.local_addr()?);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("hub-sink".into())
            .spawn(move || {
                runtime.block_on(async move {
                    if let Ok(listener) = tokio::net::TcpListener::from_std(listener) {
                        let _ = axum::serve(listener, app).await;
                    }
                })
            })?;
        Ok(Self { url, received })
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The machine, and how the stack reaches PostgreSQL (`database_url`'s `sslmode`).
fn machine(database_url: &str) -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let database_sslmode = database_url
        .split_once('?')
        .and_then(|(_, query)| {
            query
                .split('&')
                .find_map(|pair| pair.strip_prefix("sslmode="))
        })
        .unwrap_or("prefer")
        .to_owned();
    Machine {
        cpu,
        cores,
        memory_gib,
        database_sslmode,
    }
}
