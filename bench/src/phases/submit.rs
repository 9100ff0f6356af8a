//! Durable submit: `POST /api/v1/generate` at each `--concurrency` through the api with no
//! worker running (the api + PostgreSQL alone), and the same submits straight into PostgreSQL
//! without HTTP, the ceiling the database allows.

use std::time::{Duration, Instant};

use clap::Parser;
use llm_shared::db;
use llm_shared::requests::NewRequest;
use serde_json::json;
use uuid::Uuid;

use crate::cli::Args;
use crate::client::HitRequest;
use crate::load::{SubmitResult, measure_closed_loop};
use crate::stack::Stack;

/// The submits over HTTP at each `--concurrency`, each for `--submit-secs`.
pub async fn measure_over_http(stack: &Stack<'_>) -> anyhow::Result<Vec<SubmitResult>> {
    let args = stack.args;
    let mut submit = Vec::new();
    for &c in &args.concurrency {
        let r = measure_submit(stack, c, Duration::from_secs(args.submit_secs)).await?;
        println!(
            "  submit c={c}: {:.0} req/s, p99 {:.2} ms",
            r.requests_per_sec, r.latency.p99_ms
        );
        submit.push(r);
    }
    Ok(submit)
}

/// Submits from `concurrency` clients, each sending its next as soon as it has its answer, for
/// `run_for` ([`crate::load::closed_loop`]), every one with a prompt of its own
/// ([`SubmitRequests`]), over bare connections on the generator thread, as the cache hits are
/// sent: the generator then takes as little as it can of the two cores the api and PostgreSQL
/// need.
async fn measure_submit(
    stack: &Stack<'_>,
    concurrency: usize,
    run_for: Duration,
) -> anyhow::Result<SubmitResult> {
    let submits = SubmitRequests::new(stack, "submit bench")?;
    measure_closed_loop(stack, concurrency, run_for, 202, move || submits.next()).await
}

/// Submits, each with a prompt of its own, `{label} {run} {n}`: none answered from the cache or
/// attached to another request in flight, this run's or an earlier one's. Native submits
/// (`POST /api/v1/generate`, [`SubmitRequests::new`]) or OpenAI chat completions
/// (`POST /v1/chat/completions`, [`SubmitRequests::chat`]).
pub struct SubmitRequests {
    pub addr: std::net::SocketAddr,
    token: String,
    label: String,
    chat: bool,
    sent: std::cell::Cell<usize>,
}

impl SubmitRequests {
    pub fn new(stack: &Stack<'_>, label: &str) -> anyhow::Result<Self> {
        Ok(Self {
            addr: stack.api_addr()?,
            token: stack.token.to_owned(),
            label: format!("{label} {}", Uuid::now_v7().simple()),
            chat: false,
            sent: std::cell::Cell::new(0),
        })
    }

    pub fn chat(stack: &Stack<'_>, label: &str) -> anyhow::Result<Self> {
        Ok(Self {
            chat: true,
            ..Self::new(stack, label)?
        })
    }

    pub fn next(&self) -> HitRequest {
        let n = self.sent.get();
        self.sent.set(n + 1);
        let prompt = format!("{} {n}", self.label);
        if self.chat {
            let body = chat_body(&prompt).to_string();
            HitRequest::post(
                self.addr,
                "/v1/chat/completions",
                &self.token,
                body.as_bytes(),
            )
        } else {
            let body = json!({ "prompt": prompt }).to_string();
            HitRequest::post(self.addr, "/api/v1/generate", &self.token, body.as_bytes())
        }
    }
}

/// An OpenAI chat completion asking `prompt` of the mock model.
pub fn chat_body(prompt: &str) -> serde_json::Value {
    json!({"model": "mock", "messages": [{"role": "user", "content": prompt}]})
}

/// The submits of [`measure_submit`] without HTTP: the request the api would build
/// (`NewRequest::validate`), stored by the api's own `requests::Submitter` (same
/// group-committed statements) through a pool sized like the api's. What PostgreSQL allows, for comparison.
pub async fn measure_postgres_only(
    args: &Args,
    database_url: &str,
) -> anyhow::Result<Vec<SubmitResult>> {
    #[derive(Parser)]
    struct Common {
        #[command(flatten)]
        config: llm_shared::config::CommonConfig,
    }
    let config = Common::try_parse_from(["llm-bench", "--mock-provider=true"])?.config;
    let registry = std::sync::Arc::new(llm_shared::models::ModelRegistry::load(&config)?);
    let pool = db::connect_url(database_url, config.database_max_connections).await?;
    let submitter = llm_shared::requests::Submitter::new(pool.clone(), None);
    let user = Uuid::now_v7();
    let scope = config.cache_scope;
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
                    match NewRequest::validate(body, user, None, &registry, 5, scope) {
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
