//! Settings of the worker binary: the common ones (`llm_shared::config::CommonConfig`) plus
//! the job loop's own, loaded once at start from flags and environment variables.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use llm_shared::config::CommonConfig;

/// Settings of the worker binary.
#[derive(Debug, Clone, Args)]
pub struct WorkerConfig {
    #[command(flatten)]
    pub common: CommonConfig,

    /// Jobs this process runs at once. A job is mostly waiting (on its provider, and on the
    /// database's fetch, claim, completion and acknowledgement, each a batched round trip), so
    /// a worker's throughput is this divided by a job's cycle time. Real generations take
    /// 1–30 s: at 64, calls of 2 s cap a worker at 32 jobs/s. A call in flight costs a few
    /// tens of kilobytes (docs/PERFORMANCE.md), so the default is sized for waiting calls.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 1024)]
    pub concurrency: usize,

    /// Threads of this process's runtime. With one (the default), every task runs on the main
    /// thread: a worker mostly waits on the network, and tasks handing work to each other
    /// across threads (job, batch writer, connection) cost it a third or more of its CPU per
    /// job in wake-ups and context switches. More cores are used by more processes, or by
    /// raising this.
    #[arg(long, env = "WORKER_THREADS", default_value_t = 1)]
    pub threads: usize,

    /// Unique worker name; defaults to host, pid and a random suffix (a reused name would keep
    /// a dead process's jobs locked).
    #[arg(long, env = "WORKER_NAME")]
    pub name: Option<String>,

    /// Seconds between queue heartbeats; a worker silent for three of them is presumed dead and
    /// its jobs go back to the queue.
    #[arg(long, env = "WORKER_HEARTBEAT_SECS", default_value_t = 5)]
    pub heartbeat_secs: u64,

    /// Seconds a claim on a request lasts without renewal (renewed every third of it).
    #[arg(long, env = "WORKER_LEASE_SECS", default_value_t = 15)]
    pub lease_secs: u64,

    /// Fallback poll interval in milliseconds, for jobs nothing announced to this worker (jobs
    /// another worker put back or rescued); what a worker puts back itself (a rescheduled run,
    /// a rescued job, a dead worker's job) wakes it when it comes due.
    #[arg(long, env = "WORKER_POLL_MS", default_value_t = 1000)]
    pub poll_ms: u64,

    /// Milliseconds a finished job's acknowledgement waits to be written together with those of
    /// the jobs that finish meanwhile (`queue::acks`); its request's outcome is committed already.
    #[arg(long, env = "WORKER_ACK_DELAY_MS", default_value_t = 50)]
    pub ack_delay_ms: u64,

    /// Upper bound on one provider call, in seconds.
    #[arg(long, env = "PROVIDER_TIMEOUT_SECS", default_value_t = 120)]
    pub provider_timeout_secs: u64,

    /// Seconds a job keeps trying to store its outcome (a provider's answer above all) while
    /// the database refuses the write, with backoff, holding its lease meanwhile: a database
    /// blip must not throw an answer away and pay the provider for it again. Past this, the
    /// job gives up and the request runs again later.
    #[arg(long, env = "WORKER_RESULT_RETRY_SECS", default_value_t = 60)]
    pub result_retry_secs: u64,

    /// Milliseconds the validation of one JSON answer against its schema may take. It runs off
    /// the job loop (heartbeats, leases and other jobs go on meanwhile); an answer whose check
    /// takes longer fails the request as `validation_timeout`.
    #[arg(long, env = "VALIDATION_TIMEOUT_MS", default_value_t = 2000)]
    pub validation_timeout_ms: u64,

    /// Seconds in-flight jobs get to finish after SIGTERM.
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,

    /// Hours a finished request's queue job is kept before retention deletes it (the request
    /// row itself is kept).
    #[arg(long, env = "JOB_RETENTION_HOURS", default_value_t = 72)]
    pub job_retention_hours: u64,

    /// Address of this worker's Prometheus endpoint (`GET /metrics`); port 0 picks a free one.
    /// If it cannot be bound, the worker runs on without it (a warning is logged).
    #[arg(long, env = "WORKER_METRICS_LISTEN", default_value = "127.0.0.1:9100")]
    pub metrics_listen: SocketAddr,

    /// Tries of a message hub event before it is moved to the dead letters (listed and
    /// replayed by admins), so that it no longer holds back its request's later events. With
    /// the backoff (0.5 s doubling, at most 5 min) 20 tries take about an hour.
    #[arg(long, env = "OUTBOX_MAX_ATTEMPTS", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub outbox_max_attempts: u32,

    /// Lets the mock provider's `crash` behaviour abort this process (chaos tests only).
    #[arg(long, env = "MOCK_ALLOW_CRASH", default_value_t = false)]
    pub mock_allow_crash: bool,
}

impl WorkerConfig {
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs.max(3))
    }
    pub fn result_retry(&self) -> Duration {
        Duration::from_secs(self.result_retry_secs)
    }
    pub fn validation_timeout(&self) -> Duration {
        Duration::from_millis(self.validation_timeout_ms.max(1))
    }
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs.max(1))
    }
}
