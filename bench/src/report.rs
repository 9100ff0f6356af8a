//! The benchmark's results ([`Report`]): written as JSON, and printed as one table per phase.

use serde::Serialize;

use crate::cpu::CpuPerRequest;
use crate::load::{RateResult, SubmitResult};
use crate::machine::Machine;
use crate::phases::{
    CacheResult, DoorResult, DrainResult, EndToEndResult, MemoryResult, StreamingResult,
};
use crate::stats::Latencies;

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub started_at: String,
    pub total_secs: f64,
    pub submit: Vec<SubmitResult>,
    /// The same submits (same function, same SQL, a pool like the api's) without HTTP.
    pub submit_postgres_only: Vec<SubmitResult>,
    pub end_to_end: Vec<EndToEndResult>,
    /// Queue drain: jobs submitted first, then workers started; jobs/s of the workers alone.
    pub drain: Vec<DrainResult>,
    /// One request at a time (paced), 1 worker: the latency the service itself adds.
    pub unloaded: EndToEndResult,
    pub streaming: StreamingResult,
    pub cache_hits: Vec<CacheResult>,
    pub cache_hits_at_rate: Vec<RateResult>,
    /// The native and OpenAI doors side by side (hits and misses).
    pub doors: Vec<DoorResult>,
    /// Round trip of the rate limiter's check (what it adds to every submit).
    pub rate_limiter: Latencies,
    pub memory: MemoryResult,
    /// The LLM-shaped phase (realistic generation timing against a limited endpoint).
    pub llm: Option<crate::phases::llm::LlmResult>,
    /// Events the workers' outbox relays delivered to the benchmark's hub during the run.
    pub hub_events_delivered: u64,
}

/// What the CPU column of the latency tables holds.
const CPU_HEADER: &str = "CPU us/req: api / pg / redis / generator; steal: the share of the machine's CPU time its hypervisor took; then any kernel thread that held a CPU 0.5 ms or more at a time on average (runs x average), during which nothing else ran there";

/// The header of a latency table: what was held fixed (concurrency or rate), requests, their
/// rate, p50, p95, p99 (the columns every latency table shares), then one of its own.
fn header(fixed: &str, rate: &str, (last, width): (&str, usize)) {
    println!(
        "{fixed:>12} {:>10} {rate:>10} {:>9} {:>9} {:>9} {last:>width$}",
        "requests", "p50 ms", "p95 ms", "p99 ms"
    );
}

/// The shared columns of a latency table's row (see [`header`]).
fn row(fixed: usize, requests: usize, rate: f64, l: &Latencies) -> String {
    format!(
        "{fixed:>12} {requests:>10} {rate:>10.0} {:>9.2} {:>9.2} {:>9.2}",
        l.p50_ms, l.p95_ms, l.p99_ms
    )
}

fn columns(r: &SubmitResult) -> String {
    row(r.concurrency, r.requests, r.requests_per_sec, &r.latency)
}

/// CPU per answered request: api / PostgreSQL / Redis / load generator.
fn cpu_per_request(c: Option<&CpuPerRequest>) -> String {
    c.map_or(String::new(), CpuPerRequest::summary)
}

/// A table of closed-loop results, one row per concurrency, with its errors and CPU.
fn print_at_concurrency(results: &[SubmitResult]) {
    header("concurrency", "req/s", ("errors", 9));
    for r in results {
        println!(
            "{} {:>9}   {}",
            columns(r),
            r.errors,
            cpu_per_request(r.cpu_per_request.as_ref())
        );
    }
}

/// Writes `results` as JSON to `path`, making its directory.
pub fn save_json(results: &impl Serialize, path: &std::path::Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_vec_pretty(results)?)?;
    Ok(())
}

impl Report {
    /// Writes the report as JSON to `path`, making its directory.
    pub fn save(&self, path: &std::path::Path) -> anyhow::Result<()> {
        save_json(self, path)
    }

    /// Prints the report's tables.
    pub fn print(&self) {
        println!("\n== llm-bench  ({})", self.machine);
        self.print_submit();
        self.print_end_to_end();
        self.print_drain();
        self.print_unloaded();
        self.print_cache_hits();
        print_doors(&self.doors);
        self.print_streaming();
        self.print_memory();
        if let Some(llm) = &self.llm {
            llm.print();
        }
        println!(
            "\nmessage hub: {} events delivered by the workers' outbox relays",
            self.hub_events_delivered
        );
        println!("\ntotal {:.0} s", self.total_secs);
    }

    fn print_submit(&self) {
        println!("\ndurable submit (api + PostgreSQL, no worker running)");
        print_at_concurrency(&self.submit);
        println!("  ({CPU_HEADER})");
        println!(
            "\nthe same submits straight into PostgreSQL (requests::Submitter, no HTTP): the ceiling"
        );
        header("concurrency", "req/s", ("api / db", 12));
        for r in &self.submit_postgres_only {
            let api = self
                .submit
                .iter()
                .find(|s| s.concurrency == r.concurrency)
                .map_or(f64::NAN, |s| s.requests_per_sec);
            println!("{} {:>11.0}%", columns(r), api / r.requests_per_sec * 100.0);
        }
    }

    fn print_end_to_end(&self) {
        println!("\nend to end (mock provider at 0 ms; submitted at concurrency 50)");
        println!(
            "{:>8} {:>7} {:>9} {:>13} {:>13} {:>13} {:>13}   CPU us/job: api / worker / pg / redis / generator, VM steal",
            "workers", "jobs", "jobs/s", "e2e p50 ms", "e2e p99 ms", "pickup p50", "pickup p99"
        );
        for r in &self.end_to_end {
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
    }

    fn print_drain(&self) {
        println!(
            "\nqueue drain (jobs queued first, then the workers started); PostgreSQL's work per job"
        );
        println!(
            "{:>8} {:>7} {:>9} {:>14} {:>14} {:>14} {:>14}",
            "workers", "jobs", "jobs/s", "submit WAL B", "submit CPU us", "run WAL B", "run CPU us"
        );
        let cpu = |c: Option<f64>| c.map_or_else(|| "-".to_owned(), |us| format!("{us:.0}"));
        for r in &self.drain {
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
    }

    fn print_unloaded(&self) {
        let u = &self.unloaded;
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
    }

    fn print_cache_hits(&self) {
        println!("\ncache hits (one identical request, answered from the cache)");
        print_at_concurrency(&self.cache_hits);
        println!("cache hits at a fixed rate (open loop; latency from when each request was due)");
        header("offered/s", "answered/s", ("errors", 9));
        for r in &self.cache_hits_at_rate {
            let offered = usize::try_from(r.offered_per_sec).unwrap_or(usize::MAX);
            let columns = row(offered, r.requests, r.answered_per_sec, &r.latency);
            println!(
                "{columns} {:>9}   {}",
                r.errors,
                cpu_per_request(r.cpu_per_request.as_ref())
            );
        }
        println!("  ({CPU_HEADER})");
        println!(
            "rate limiter check (added to every submit): p50 {:.3} ms, p99 {:.3} ms",
            self.rate_limiter.p50_ms, self.rate_limiter.p99_ms
        );
    }

    fn print_streaming(&self) {
        let st = &self.streaming;
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
    }

    fn print_memory(&self) {
        let m = &self.memory;
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
    }
}

/// The doors' table: each door's hits and misses at each concurrency.
pub fn print_doors(doors: &[DoorResult]) {
    println!(
        "\nthe doors (native: submit, and for a miss its GET ?wait=; openai: one /v1/chat/completions call; mock at 0 ms, 1 worker)"
    );
    println!(
        "{:>8} {:>6} {:>12} {:>10} {:>10} {:>9} {:>9} {:>9}",
        "door", "case", "concurrency", "requests", "req/s", "p50 ms", "p95 ms", "p99 ms"
    );
    for d in doors {
        let r = &d.result;
        println!(
            "{:>8} {:>6} {:>12} {:>10} {:>10.0} {:>9.2} {:>9.2} {:>9.2}   {}",
            d.door,
            d.case,
            r.concurrency,
            r.requests,
            r.requests_per_sec,
            r.latency.p50_ms,
            r.latency.p95_ms,
            r.latency.p99_ms,
            cpu_per_request(r.cpu_per_request.as_ref())
        );
    }
}
