//! Prometheus metrics: one [`Metrics`] per process (the api's lives in `AppState`, a worker's in
//! `WorkerState`), each with its own `prometheus::Registry`, so that several apps or workers in
//! one test process never mix their counts.
//!
//! This module owns the metric names, their labels and what the scrape-time gauges read
//! (queue depth, oldest pending age, outbox backlog and dead letters, from
//! `generation_requests`, `outbox_events` and `outbox_dead_letters`). `/metrics` needs no
//! credentials, so those reads are shared: at most one per [`GAUGES_MAX_AGE`] per process,
//! however many scrapes arrive (concurrent ones wait for the one read in progress). The events themselves are recorded where they happen: the api's HTTP
//! middleware (`llm_api::metrics`), the worker's execution (provider calls, retries, fallbacks)
//! and job loop (outcomes, tokens, cost, end-to-end latency), the admission control (budget
//! waits, throttles, effective limits), the submit handlers (cache), the
//! rate-limit answers (rejections) and the streams (active streams). The process's own
//! system metrics (CPU, memory, file descriptors, threads, network, its tokio runtime) are
//! read at each scrape by [`system::SystemMetrics`].
//!
//! **Invariant:** label values are bounded: route templates (never raw paths), status codes,
//! registry model ids, provider names and fixed outcome / error-kind words. Never a user id, a
//! request id or any text a client chose.

use std::time::{Duration, Instant};

use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use sqlx::PgPool;

pub mod system;

/// Content type of the Prometheus text format, as `/metrics` answers it.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Buckets (seconds) of the latency histograms: from a cache hit to a slow completion.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Buckets of the batch size histogram: up to a worker's whole concurrency.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

/// How long the scrape-time queries may take before the gauges keep their previous values.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the database gauges read at a scrape serve later scrapes: a burst of scrapes (or a
/// client scraping in a loop) costs the database one read per this interval.
pub const GAUGES_MAX_AGE: Duration = Duration::from_secs(2);

/// Every metric of the service, registered in a registry of its own.
pub struct Metrics {
    registry: Registry,
    /// `llm_http_requests_total{method, route, status}`
    pub http_requests: IntCounterVec,
    /// `llm_http_request_duration_seconds{method, route}`
    pub http_duration: HistogramVec,
    /// `llm_generations_total{model, provider, outcome}`: how runs of requests ended.
    pub generations: IntCounterVec,
    /// `llm_generation_duration_seconds{model, outcome}`: submit to final state.
    pub generation_duration: HistogramVec,
    /// `llm_provider_calls_total{provider, model, outcome}`: `success` or the error kind.
    pub provider_calls: IntCounterVec,
    /// `llm_provider_latency_seconds{provider, model}`
    pub provider_latency: HistogramVec,
    /// `llm_tokens_total{model, kind}`: `kind` is `prompt` or `completion`.
    pub tokens: IntCounterVec,
    /// `llm_cost_usd_total{model}`
    pub cost: prometheus::CounterVec,
    /// `llm_cache_lookups_total{result}`: `hit` or `miss`.
    pub cache_lookups: IntCounterVec,
    /// `llm_waits_answered_total{from}`: waits for a request's end answered from its
    /// completion notice alone (`notice`: its outcome, and a long poll's attempt history) or
    /// with a read (`read`).
    pub waits_answered: IntCounterVec,
    /// `llm_rate_limit_rejections_total{limit}`: `requests` or `tokens`.
    pub rate_limit_rejections: IntCounterVec,
    /// `llm_provider_retries_total{provider, model}`: a call retried on the same model (in
    /// process, or by rescheduling the request).
    pub retries: IntCounterVec,
    /// `llm_fallbacks_total{model}`: a model given up for the next one of its chain.
    pub fallbacks: IntCounterVec,
    /// `llm_circuit_state{provider}`: 0 closed, 1 half-open, 2 open (this worker's breakers),
    /// per endpoint: the label holds the endpoint's registry name (the built-in ones are named
    /// after their providers).
    pub circuit_state: IntGaugeVec,
    /// `llm_active_streams`: SSE streams this api process is serving now.
    pub active_streams: IntGauge,
    /// `llm_queue_depth{status}`: unfinished requests, `pending` or `running`.
    pub queue_depth: IntGaugeVec,
    /// `llm_queue_oldest_pending_age_seconds`
    pub oldest_pending_age: Gauge,
    /// `llm_outbox_backlog`: hub events not delivered yet.
    pub outbox_backlog: IntGauge,
    /// `llm_outbox_dead_letters`: hub events given up after `OUTBOX_MAX_ATTEMPTS` tries,
    /// waiting for an admin's replay.
    pub outbox_dead_letters: IntGauge,
    /// `llm_metrics_gauge_reads_total`: reads of the database gauges by this process.
    pub gauge_reads: IntCounter,
    /// When the database gauges were last read (`None`: never); held while one is read.
    gauges_read_at: tokio::sync::Mutex<Option<Instant>>,
    /// `llm_worker_queue_fetches_total`: fetches of jobs this worker sent to the database
    /// (`queue::QueueBackend`: only when a job may be waiting).
    pub queue_fetches: IntCounter,
    /// `llm_worker_batch_size{statement}`: calls a group-committed statement (`claim`,
    /// `complete`) wrote at once.
    pub batch_size: HistogramVec,
    /// `llm_budget_waits_total{endpoint, reason}`: provider calls held back by their endpoint's
    /// budget (`requests`, `tokens`, `concurrency`), in place or by rescheduling the request.
    pub budget_waits: IntCounterVec,
    /// `llm_budget_unchecked_total{endpoint}`: calls let through unadmitted (Redis unreachable).
    pub budget_unchecked: IntCounterVec,
    /// `llm_budget_throttles_total{endpoint}`: upstream 429s that cut the endpoint's limits.
    pub budget_throttles: IntCounterVec,
    /// `llm_budget_effective_limit{endpoint, limit}`: the limit in force at this worker's last
    /// admission (the declared one, or less after a 429).
    pub budget_limit: IntGaugeVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered. The names and label sets are constants,
    /// so registration cannot fail; should it ever, the metric still counts, unexported.
    pub fn new() -> Self {
        let registry = Registry::new();
        let metrics = Self {
            http_requests: counter(
                "llm_http_requests_total",
                "HTTP requests answered, by route template and status code.",
                &["method", "route", "status"],
            ),
            http_duration: histogram(
                "llm_http_request_duration_seconds",
                "Time to answer an HTTP request (to the first byte of a stream).",
                &["method", "route"],
            ),
            generations: counter(
                "llm_generations_total",
                "Runs of generation requests by how they ended: completed, failed, rescheduled, cancelled.",
                &["model", "provider", "outcome"],
            ),
            generation_duration: histogram(
                "llm_generation_duration_seconds",
                "End-to-end time of a request, from submit to its final state.",
                &["model", "outcome"],
            ),
            provider_calls: counter(
                "llm_provider_calls_total",
                "Provider calls by outcome: success or the error kind.",
                &["provider", "model", "outcome"],
            ),
            provider_latency: histogram(
                "llm_provider_latency_seconds",
                "Duration of one provider call.",
                &["provider", "model"],
            ),
            tokens: counter(
                "llm_tokens_total",
                "Tokens of completed requests, by model and kind (prompt, completion).",
                &["model", "kind"],
            ),
            cost: prometheus::CounterVec::new(
                Opts::new(
                    "llm_cost_usd_total",
                    "Estimated cost in USD of completed requests (registry prices).",
                ),
                &["model"],
            )
            .unwrap_or_else(|_| unreachable_metric()),
            cache_lookups: counter(
                "llm_cache_lookups_total",
                "Response cache lookups at submit: hit or miss.",
                &["result"],
            ),
            waits_answered: counter(
                "llm_waits_answered_total",
                "Waits for a request's end answered from its notice alone or with a read.",
                &["from"],
            ),
            rate_limit_rejections: counter(
                "llm_rate_limit_rejections_total",
                "Submits refused by a rate limit (requests or tokens per minute).",
                &["limit"],
            ),
            retries: counter(
                "llm_provider_retries_total",
                "Provider calls retried on the same model (after a backoff or by rescheduling).",
                &["provider", "model"],
            ),
            fallbacks: counter(
                "llm_fallbacks_total",
                "LiveRegistry given up for the next model of their fallback chain.",
                &["model"],
            ),
            circuit_state: IntGaugeVec::new(
                Opts::new(
                    "llm_circuit_state",
                    "Circuit breaker of a provider in this worker: 0 closed, 1 half-open, 2 open.",
                ),
                &["provider"],
            )
            .unwrap_or_else(|_| unreachable_metric()),
            active_streams: IntGauge::new(
                "llm_active_streams",
                "SSE streams this api process is serving.",
            )
            .unwrap_or_else(|_| unreachable_metric()),
            queue_depth: IntGaugeVec::new(
                Opts::new(
                    "llm_queue_depth",
                    "Unfinished generation requests by status (pending, running).",
                ),
                &["status"],
            )
            .unwrap_or_else(|_| unreachable_metric()),
            oldest_pending_age: Gauge::new(
                "llm_queue_oldest_pending_age_seconds",
                "Age of the oldest pending request (0 when none is pending).",
            )
            .unwrap_or_else(|_| unreachable_metric()),
            outbox_backlog: IntGauge::new(
                "llm_outbox_backlog",
                "Message hub events written but not delivered yet.",
            )
            .unwrap_or_else(|_| unreachable_metric()),
            outbox_dead_letters: IntGauge::new(
                "llm_outbox_dead_letters",
                "Message hub events given up after OUTBOX_MAX_ATTEMPTS tries, waiting for a replay.",
            )
            .unwrap_or_else(|_| unreachable_metric()),
            gauge_reads: IntCounter::new(
                "llm_metrics_gauge_reads_total",
                "Reads of the queue and outbox gauges from the database by this process (at most one per 2 s, whatever the scrape rate).",
            )
            .unwrap_or_else(|_| unreachable_metric()),
            gauges_read_at: tokio::sync::Mutex::new(None),
            queue_fetches: IntCounter::new(
                "llm_worker_queue_fetches_total",
                "Fetches of jobs from the queue this worker sent to the database (only when a job was announced, the poll period ended, or the last fetch came back full).",
            )
            .unwrap_or_else(|_| unreachable_metric()),
            batch_size: HistogramVec::new(
                HistogramOpts::new(
                    "llm_worker_batch_size",
                    "Jobs' calls one group-committed statement of a worker wrote (claim, complete).",
                )
                .buckets(BATCH_BUCKETS.to_vec()),
                &["statement"],
            )
            .unwrap_or_else(|_| unreachable_metric()),
            budget_waits: counter(
                "llm_budget_waits_total",
                "Provider calls held back by their endpoint's shared budget, by reason (requests, tokens, concurrency).",
                &["endpoint", "reason"],
            ),
            budget_unchecked: counter(
                "llm_budget_unchecked_total",
                "Provider calls let through without admission because Redis was unreachable.",
                &["endpoint"],
            ),
            budget_throttles: counter(
                "llm_budget_throttles_total",
                "Upstream 429s to this worker's calls that cut their endpoint's limits for every worker.",
                &["endpoint"],
            ),
            budget_limit: IntGaugeVec::new(
                Opts::new(
                    "llm_budget_effective_limit",
                    "An endpoint's limit in force at this worker's last admission (requests_per_minute, tokens_per_minute, max_concurrency).",
                ),
                &["endpoint", "limit"],
            )
            .unwrap_or_else(|_| unreachable_metric()),
            registry,
        };
        metrics.register_all();
        metrics
    }

    fn register_all(&self) {
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.http_requests.clone()),
            Box::new(self.http_duration.clone()),
            Box::new(self.generations.clone()),
            Box::new(self.generation_duration.clone()),
            Box::new(self.provider_calls.clone()),
            Box::new(self.provider_latency.clone()),
            Box::new(self.tokens.clone()),
            Box::new(self.cost.clone()),
            Box::new(self.cache_lookups.clone()),
            Box::new(self.waits_answered.clone()),
            Box::new(self.rate_limit_rejections.clone()),
            Box::new(self.retries.clone()),
            Box::new(self.fallbacks.clone()),
            Box::new(self.circuit_state.clone()),
            Box::new(self.active_streams.clone()),
            Box::new(self.queue_depth.clone()),
            Box::new(self.oldest_pending_age.clone()),
            Box::new(self.outbox_backlog.clone()),
            Box::new(self.outbox_dead_letters.clone()),
            Box::new(self.gauge_reads.clone()),
            Box::new(self.queue_fetches.clone()),
            Box::new(self.batch_size.clone()),
            Box::new(self.budget_waits.clone()),
            Box::new(self.budget_unchecked.clone()),
            Box::new(self.budget_throttles.clone()),
            Box::new(self.budget_limit.clone()),
            Box::new(system::SystemMetrics::new()),
        ];
        for collector in collectors {
            if let Err(err) = self.registry.register(collector) {
                tracing::error!(error = %err, "a metric could not be registered");
            }
        }
    }

    /// A batch of `calls` written by one group-committed `statement` (`claim`, `complete`).
    pub fn batch(&self, statement: &'static str, calls: usize) {
        self.batch_size
            .with_label_values(&[statement])
            .observe(calls as f64);
    }

    /// A cache lookup at submit.
    pub fn cache_lookup(&self, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.cache_lookups.with_label_values(&[result]).inc();
    }

    /// A wait for a request's end answered, `from_notice` its notice alone or else with a read.
    pub fn wait_answered(&self, from_notice: bool) {
        let from = if from_notice { "notice" } else { "read" };
        self.waits_answered.with_label_values(&[from]).inc();
    }

    /// One provider call and how it went (`success` or the error kind).
    pub fn provider_call(&self, provider: &str, model: &str, outcome: &str, latency: Duration) {
        self.provider_calls
            .with_label_values(&[provider, model, outcome])
            .inc();
        self.provider_latency
            .with_label_values(&[provider, model])
            .observe(latency.as_secs_f64());
    }

    /// A run of a request ended (`outcome`: completed, failed, rescheduled, cancelled);
    /// `since_submit` is observed for final outcomes only.
    pub fn generation_ended(
        &self,
        model: &str,
        provider: &str,
        outcome: &str,
        since_submit: Option<Duration>,
    ) {
        self.generations
            .with_label_values(&[model, provider, outcome])
            .inc();
        if let Some(elapsed) = since_submit {
            self.generation_duration
                .with_label_values(&[model, outcome])
                .observe(elapsed.as_secs_f64());
        }
    }

    /// Tokens and cost of a completed request.
    pub fn usage(&self, model: &str, prompt_tokens: u32, completion_tokens: u32, cost_usd: f64) {
        self.tokens
            .with_label_values(&[model, "prompt"])
            .inc_by(u64::from(prompt_tokens));
        self.tokens
            .with_label_values(&[model, "completion"])
            .inc_by(u64::from(completion_tokens));
        // Also for free models: the series exists (at 0) once the model has completed anything.
        let cost = if cost_usd.is_finite() {
            cost_usd.max(0.0)
        } else {
            0.0
        };
        self.cost.with_label_values(&[model]).inc_by(cost);
    }

    /// Sets `llm_circuit_state` of one endpoint (named in the registry, or `mock`): 0 closed,
    /// 1 half-open, 2 open.
    pub fn set_circuit(&self, endpoint: &str, state: i64) {
        self.circuit_state.with_label_values(&[endpoint]).set(state);
    }

    /// Re-reads the queue and outbox gauges from the database, unless they were read less than
    /// [`GAUGES_MAX_AGE`] ago: scrapes arriving meanwhile wait for the read in progress and
    /// share it. On failure (or after [`REFRESH_TIMEOUT`]) they keep their previous values and
    /// the failure is logged; the next read is due after the same interval.
    pub async fn refresh_queue(&self, pool: &PgPool) {
        let mut read_at = self.gauges_read_at.lock().await;
        if read_at.is_some_and(|at| at.elapsed() < GAUGES_MAX_AGE) {
            return;
        }
        self.gauge_reads.inc();
        self.read_gauges(pool).await;
        *read_at = Some(Instant::now());
    }

    async fn read_gauges(&self, pool: &PgPool) {
        let read = async {
            let (pending, running, oldest, backlog, dead): (i64, i64, Option<f64>, i64, i64) =
                sqlx::query_as(
                    "SELECT
                         (SELECT COUNT(*) FROM generation_requests
                          WHERE completed_at IS NULL AND status = 'pending'),
                         (SELECT COUNT(*) FROM generation_requests
                          WHERE completed_at IS NULL AND status = 'running'),
                         (SELECT EXTRACT(EPOCH FROM NOW() - MIN(created_at))::float8
                          FROM generation_requests WHERE completed_at IS NULL AND status = 'pending'),
                         (SELECT COUNT(*) FROM outbox_events WHERE delivered_at IS NULL),
                         (SELECT COUNT(*) FROM outbox_dead_letters)",
                )
                .fetch_one(pool)
                .await?;
            Ok::<_, sqlx::Error>((pending, running, oldest, backlog, dead))
        };
        match tokio::time::timeout(REFRESH_TIMEOUT, read).await {
            Ok(Ok((pending, running, oldest, backlog, dead))) => {
                self.queue_depth
                    .with_label_values(&["pending"])
                    .set(pending);
                self.queue_depth
                    .with_label_values(&["running"])
                    .set(running);
                self.oldest_pending_age.set(oldest.unwrap_or(0.0).max(0.0));
                self.outbox_backlog.set(backlog);
                self.outbox_dead_letters.set(dead);
            }
            Ok(Err(err)) => tracing::warn!(error = %err, "metrics: could not read the queue depth"),
            Err(_) => tracing::warn!("metrics: reading the queue depth timed out"),
        }
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> Result<String, prometheus::Error> {
        TextEncoder::new().encode_to_string(&self.registry.gather())
    }
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|_| unreachable_metric())
}

fn histogram(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .unwrap_or_else(|_| unreachable_metric())
}

/// Metric constructors fail only for invalid names or label names, which are constants here.
#[allow(clippy::panic)]
fn unreachable_metric() -> ! {
    panic!("invalid metric definition (a constant name or label is malformed)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_registered_and_encodes() {
        let metrics = Metrics::new();
        metrics.cache_lookup(true);
        metrics.usage("mock", 3, 4, 0.5);
        let text = metrics.encode().unwrap_or_default();
        assert!(
            text.contains("llm_cache_lookups_total{result=\"hit\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("llm_tokens_total{kind=\"completion\",model=\"mock\"} 4"),
            "{text}"
        );
        assert!(
            text.contains("llm_cost_usd_total{model=\"mock\"} 0.5"),
            "{text}"
        );
        assert!(text.contains("llm_active_streams 0"), "{text}");
    }
}
