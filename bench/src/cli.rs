//! The command line: what the benchmark measures, for how long, against which servers, and
//! where the results go.

use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "llm-bench",
    about = "Benchmark the LLM service end to end on this machine"
)]
pub struct Args {
    /// Admin connection used to create (and drop) the benchmark's own database; the stack
    /// connects with the same settings (query string). The default server is on this machine,
    /// so without TLS, as the README advises for a local server: sqlx's default
    /// (`sslmode=prefer`) encrypts loopback traffic whenever the server offers TLS.
    #[arg(
        long,
        env = "BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
    )]
    pub admin_database_url: String,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Submit concurrencies to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,10,50")]
    pub concurrency: Vec<usize>,
    /// Seconds each submit measurement runs.
    #[arg(long, default_value_t = 10)]
    pub submit_secs: u64,
    /// Concurrencies at which cache hits are measured. At a fixed concurrency the mean
    /// latency is concurrency / throughput (50 clients at 15,000 req/s wait 3.3 ms on average),
    /// so a latency target is read at the lower one.
    #[arg(long, value_delimiter = ',', default_value = "16,50")]
    pub cache_concurrency: Vec<usize>,
    /// Cache hits offered at a fixed rate (requests per second, open loop), where their latency
    /// is read: at a fixed concurrency the clients saturate the cores, so the latency measured
    /// there is mostly queueing for them.
    #[arg(long, value_delimiter = ',', default_value = "10000,15000")]
    pub cache_rate: Vec<u64>,
    /// Concurrencies at which the native and OpenAI doors are compared (hits and misses).
    #[arg(long, value_delimiter = ',', default_value = "1,50")]
    pub door_concurrency: Vec<usize>,
    /// Jobs per end-to-end run.
    #[arg(long, default_value_t = 5000)]
    pub e2e_jobs: usize,
    /// Requests sent one at a time (100 per second) to measure unloaded latency.
    #[arg(long, default_value_t = 500)]
    pub unloaded_jobs: usize,
    /// Streams measured one at a time for time to first token.
    #[arg(long, default_value_t = 200)]
    pub ttft_streams: usize,
    /// Concurrent streams held open on one api process.
    #[arg(long, default_value_t = 1000)]
    pub streams: usize,
    /// Seconds of the memory soak (steady load, api and worker RSS sampled every second).
    #[arg(long, default_value_t = 180)]
    pub soak_secs: u64,
    /// Submits per second during the soak.
    #[arg(long, default_value_t = 200)]
    pub soak_rate: u64,
    /// Requests per minute the fake OpenAI of the LLM-shaped phase allows (declared in the
    /// registry as `[endpoints.openai.limits] requests_per_minute`); above it, `429`.
    #[arg(long, default_value_t = 3000)]
    pub llm_rpm: u64,
    /// Items of the LLM-shaped phase's batch (submitted 1,000 per call).
    #[arg(long, default_value_t = 10_000)]
    pub llm_batch: usize,
    /// Interactive users of the LLM-shaped phase, each one request at a time.
    #[arg(long, default_value_t = 20)]
    pub llm_users: usize,
    /// Calls held in flight on one worker to measure its memory per call.
    #[arg(long, default_value_t = 2000)]
    pub in_flight_calls: usize,
    /// Streams held open at once on one api (needs `ulimit -n` above it; scripts/bench.sh
    /// raises it to the hard limit).
    #[arg(long, default_value_t = 10_000)]
    pub open_streams: usize,
    /// Run only the LLM-shaped phase.
    #[arg(long)]
    pub llm_only: bool,
    /// Run only the doors' comparison.
    #[arg(long, conflicts_with = "llm_only")]
    pub doors_only: bool,
    /// The LLM-shaped phase at a size for trying it (a 1,000-item batch, 1,000 calls in flight,
    /// 1,000 open streams): a few minutes at most.
    #[arg(long)]
    pub quick: bool,
    /// Where the JSON results go.
    #[arg(long, default_value = ".bench/results.json")]
    pub output: PathBuf,
}
