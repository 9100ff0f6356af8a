//! The LLM-shaped phase: generations with the timing of real ones (first token after
//! 300–800 ms, 30–80 tokens/s, 200–800 tokens) paid to a fake OpenAI that allows
//! `--llm-rpm` requests a minute (and answers `429` above it), declared in the registry as
//! `[endpoints.openai.limits] requests_per_minute`. One tenant submits a `--llm-batch`-item
//! batch (1,000 items per call) while `--llm-users` interactive users each submit one request
//! at a time (every fourth streamed), until the batch has drained. One worker runs it all at
//! its default concurrency.
//!
//! It reports what happens, whatever the workers do with the limit: calls accepted per minute
//! against the limit while the batch had items waiting (and over the whole phase), the upstream's `429`s, how the batch ended, the interactive requests'
//! queue wait (`started_at - created_at`), the calls in flight on the worker and its memory.
//! [`super::llm_capacity`] measures memory per call in flight and open streams on one api.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use llm_api::jwt::JwtKeys;
use secrecy::SecretString;
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::llm_capacity::{InFlightMemory, OpenStreams};
use crate::database::reset_tables;
use crate::fake_openai::FakeOpenAi;
use crate::procfs::rss_mb;
use crate::stack::{SECRET, Stack, free_port, start_api, stop};
use crate::stats::Latencies;

/// The model every call of the phase asks for (served by the fake OpenAI).
pub const MODEL: &str = "gpt-4o-mini";
/// Items per batch call: the api's maximum.
const PER_BATCH_CALL: usize = 1000;
/// One interactive request in this many is streamed.
const STREAMED_EVERY: usize = 4;

#[derive(Debug, Serialize)]
pub struct LlmResult {
    pub limit_rpm: u64,
    pub batch_items: usize,
    pub interactive_users: usize,
    /// From the first batch call until every batch item is final (or the phase stopped waiting).
    pub drain_secs: f64,
    /// Calls the fake answered (`200`), and refused with `429`.
    pub upstream_answered: u64,
    pub upstream_429: u64,
    /// Calls accepted per minute while the batch had items waiting for a call (more items
    /// left than calls out): what the workers draw from the limit when they have the work.
    pub throughput_rpm: f64,
    pub throughput_pct_of_limit: f64,
    /// Calls accepted per minute from the first accepted call to the last (the batch's ramp
    /// up and its tail, when only its last calls and the interactive users remain, included).
    pub overall_rpm: f64,
    pub batch_completed: i64,
    pub batch_failed: i64,
    /// Items not final when the phase stopped waiting (half again the time the limit allows
    /// the batch, plus a minute).
    pub batch_unfinished: i64,
    /// Why requests failed (error code, count), if any did.
    pub failures: Vec<(String, i64)>,
    pub interactive_requests: usize,
    pub interactive_streamed: usize,
    /// `started_at - created_at` of the interactive requests.
    pub interactive_queue_wait: Latencies,
    /// Calls open at the fake at once (one worker): the most, and the mean over the drain.
    pub in_flight_peak: u64,
    pub in_flight_mean: f64,
    pub worker_rss_idle_mb: f64,
    pub worker_rss_peak_mb: f64,
    pub in_flight_memory: InFlightMemory,
    pub open_streams: OpenStreams,
}

/// The registry with the fake's limit declared (the built-in one, plus one line), or the
/// built-in one as it is (`None`: a fake without limit), in a file of its own.
pub fn models_file(limit_rpm: Option<u64>) -> anyhow::Result<std::path::PathBuf> {
    let builtin = include_str!("../../../config/models.toml");
    anyhow::ensure!(
        builtin.contains("[endpoints.openai.limits]\n"),
        "the built-in registry has no [endpoints.openai.limits] section to declare the limit in"
    );
    let registry = match limit_rpm {
        Some(limit) => builtin.replace(
            "[endpoints.openai.limits]\n",
            &format!("[endpoints.openai.limits]\nrequests_per_minute = {limit}\n"),
        ),
        None => builtin.to_owned(),
    };
    let name = format!(
        "llm-bench-models-{}-{}.toml",
        std::process::id(),
        limit_rpm.map_or("unlimited".to_owned(), |l| l.to_string())
    );
    let path = std::env::temp_dir().join(name);
    std::fs::write(&path, registry)?;
    Ok(path)
}

/// Runs the phase on an api of its own (OpenAI pointed at the fake), then the capacity
/// measurements.
pub async fn measure(stack: &Stack<'_>, pool: &PgPool) -> anyhow::Result<LlmResult> {
    let args = stack.args;
    let quick = args.quick;
    let (batch_items, in_flight_calls, open_streams) = if quick {
        (1000, 1000, 1000)
    } else {
        (args.llm_batch, args.in_flight_calls, args.open_streams)
    };
    let fake = FakeOpenAi::start(args.llm_rpm)?;
    let models = models_file(Some(args.llm_rpm))?;
    let mut env: Vec<(&str, String)> = stack.env.to_vec();
    env.extend([
        ("OPENAI_API_KEY", "sk-bench".to_owned()),
        ("OPENAI_BASE_URL", fake.url.clone()),
        ("MODELS_FILE", models.display().to_string()),
    ]);
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let (mut api, api_pid) = start_api(stack.bin_dir, &env, port).await?;
    let llm = Stack {
        api_pid,
        env: &env,
        base: &base,
        ..*stack
    };
    reset_tables(pool).await?;
    let drained = drain_with_users(&llm, pool, &fake, batch_items).await;
    stop(&mut api).await;
    let drained = drained?;
    reset_tables(pool).await?;

    let in_flight_memory = super::llm_capacity::in_flight_memory(&llm, in_flight_calls).await?;
    reset_tables(pool).await?;
    let open_streams = super::llm_capacity::open_streams(&llm, open_streams).await?;
    reset_tables(pool).await?;
    let _ = std::fs::remove_file(&models);
    Ok(LlmResult {
        in_flight_memory,
        open_streams,
        ..drained
    })
}

/// The batch and the interactive users on one worker, until the batch has drained.
async fn drain_with_users(
    stack: &Stack<'_>,
    pool: &PgPool,
    fake: &FakeOpenAi,
    batch_items: usize,
) -> anyhow::Result<LlmResult> {
    let args = stack.args;
    let keys = JwtKeys::new(&SecretString::from(SECRET));
    let tenant = Uuid::now_v7();
    let tenant_token = keys.issue(tenant, 7200, None)?;
    let users: Vec<Uuid> = (0..args.llm_users).map(|_| Uuid::now_v7()).collect();

    let mut worker = stack.worker("bench-llm", &[])?;
    let worker_pid = worker.id().context("worker pid")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let worker_rss_idle_mb = rss_mb(worker_pid);

    let counts = Arc::new(UserCounts::default());
    let mut interactive = Vec::new();
    for (n, user) in users.iter().enumerate() {
        let token = keys.issue(*user, 7200, None)?;
        let (client, base, counts) = (stack.client.clone(), stack.base.to_owned(), counts.clone());
        interactive.push(tokio::spawn(interactive_user(
            client, base, token, n, counts,
        )));
    }

    let started = Instant::now();
    for call in 0..batch_items.div_ceil(PER_BATCH_CALL) {
        let items: Vec<Value> = (call * PER_BATCH_CALL
            ..batch_items.min((call + 1) * PER_BATCH_CALL))
            .map(
                |i| json!({"prompt": format!("Describe the village of item {i}."), "model": MODEL}),
            )
            .collect();
        let response = stack
            .client
            .post(format!("{}/api/v1/generate/batch", stack.base))
            .bearer_auth(&tenant_token)
            .json(&json!({"items": items}))
            .send()
            .await?;
        if response.status().as_u16() != 202 {
            bail!(
                "batch call {call} answered {}: {}",
                response.status(),
                response.text().await?
            );
        }
    }

    // Until the batch has drained, or half again the time the limit allows it plus a minute
    // (what is left then is reported): the calls in flight and the worker's memory, twice a
    // second.
    let at_limit = batch_items as f64 / (args.llm_rpm.max(1) as f64 / 60.0);
    let deadline = started + Duration::from_secs_f64(at_limit * 1.5 + 60.0);
    let (mut in_flight, mut rss_peak) = (Vec::new(), worker_rss_idle_mb);
    let mut batch_unfinished = 0;
    // The window in which the batch had items waiting (more left than calls out): calls
    // accepted then, at the first and the latest sample of it.
    let mut backlog: Option<((Instant, u64), (Instant, u64))> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let out = fake.counters.in_flight.load(Relaxed);
        let accepted = (Instant::now(), fake.counters.answered.load(Relaxed));
        in_flight.push(out);
        rss_peak = rss_peak.max(rss_mb(worker_pid));
        let left: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM generation_requests WHERE completed_at IS NULL AND user_id = $1",
        )
        .bind(tenant)
        .fetch_one(pool)
        .await?;
        if left > i64::try_from(out).unwrap_or(i64::MAX) && accepted.1 > 0 {
            backlog = Some((backlog.map_or(accepted, |(first, _)| first), accepted));
        }
        if left == 0 {
            break;
        }
        if Instant::now() > deadline {
            batch_unfinished = left;
            break;
        }
    }
    let drain_secs = started.elapsed().as_secs_f64();
    // The users finish the request in hand, if it ends soon: the phase keeps its bound.
    counts.stop.store(true, Relaxed);
    let users_done = futures::future::join_all(interactive.iter_mut());
    if tokio::time::timeout(Duration::from_secs(30), users_done)
        .await
        .is_err()
    {
        interactive.iter().for_each(|user| user.abort());
    }
    let interactive_requests = counts.sent.load(Relaxed);
    let interactive_streamed = counts.streamed.load(Relaxed);
    stop(&mut worker).await;

    let waits: Vec<f64> = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM (started_at - created_at))::float8 * 1000
         FROM generation_requests WHERE user_id = ANY($1) AND started_at IS NOT NULL",
    )
    .bind(&users)
    .fetch_all(pool)
    .await?;
    let (batch_completed, batch_failed): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*) FILTER (WHERE status = 'completed'), COUNT(*) FILTER (WHERE status = 'failed')
         FROM generation_requests WHERE user_id = $1",
    )
    .bind(tenant)
    .fetch_one(pool)
    .await?;
    let failures: Vec<(String, i64)> = sqlx::query_as(
        "SELECT COALESCE(error_code, '?'), COUNT(*) FROM generation_requests
         WHERE status = 'failed' GROUP BY 1 ORDER BY 2 DESC",
    )
    .fetch_all(pool)
    .await?;

    let c = &fake.counters;
    let answered = c.answered.load(Relaxed);
    let span_min = (c.last_accepted_ms.load(Relaxed) as f64
        - c.first_accepted_ms.load(Relaxed) as f64)
        .max(1.0)
        / 60_000.0;
    let overall_rpm = answered as f64 / span_min;
    let throughput_rpm = match backlog {
        Some(((t0, n0), (t1, n1))) if t1 > t0 => (n1 - n0) as f64 * 60.0 / (t1 - t0).as_secs_f64(),
        _ => overall_rpm,
    };
    Ok(LlmResult {
        limit_rpm: args.llm_rpm,
        batch_items,
        interactive_users: users.len(),
        drain_secs,
        upstream_answered: answered,
        upstream_429: c.limited.load(Relaxed),
        throughput_rpm,
        throughput_pct_of_limit: throughput_rpm * 100.0 / args.llm_rpm.max(1) as f64,
        overall_rpm,
        batch_completed,
        batch_failed,
        batch_unfinished,
        failures,
        interactive_requests,
        interactive_streamed,
        interactive_queue_wait: Latencies::of(waits),
        in_flight_peak: c.peak_in_flight.load(Relaxed),
        in_flight_mean: in_flight.iter().sum::<u64>() as f64 / in_flight.len().max(1) as f64,
        worker_rss_idle_mb,
        worker_rss_peak_mb: rss_peak,
        in_flight_memory: InFlightMemory::default(),
        open_streams: OpenStreams::default(),
    })
}

/// What the interactive users did, and the flag that stops them.
#[derive(Default)]
struct UserCounts {
    stop: AtomicBool,
    /// Requests sent, and how many of them streamed.
    sent: AtomicUsize,
    streamed: AtomicUsize,
}

/// One interactive user: a request at a time (every [`STREAMED_EVERY`]th streamed, the others
/// long-polled to their end), a second of thought between them, until told to stop.
async fn interactive_user(
    client: reqwest::Client,
    base: String,
    token: String,
    user: usize,
    counts: Arc<UserCounts>,
) {
    let mut sent = 0;
    while !counts.stop.load(Relaxed) {
        let body = json!({"prompt": format!("User {user} asks question {sent}: a backstory."),
                          "model": MODEL});
        counts.sent.fetch_add(1, Relaxed);
        if sent % STREAMED_EVERY == STREAMED_EVERY - 1 {
            let opened = client
                .post(format!("{base}/api/v1/generate/stream"))
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await;
            if let Ok(response) = opened {
                counts.streamed.fetch_add(1, Relaxed);
                crate::sse::SseCounter::new(response).until_done().await;
            }
        } else {
            let _ = submit_and_wait(&client, &base, &token, &body).await;
        }
        sent += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Submits `body` and long-polls the request until it is final.
async fn submit_and_wait(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    body: &Value,
) -> anyhow::Result<()> {
    let accepted: Value = client
        .post(format!("{base}/api/v1/generate"))
        .bearer_auth(token)
        .json(body)
        .send()
        .await?
        .json()
        .await?;
    let id = accepted["request_id"].as_str().context("no request id")?;
    for _ in 0..20 {
        let state: Value = client
            .get(format!("{base}/api/v1/generate/{id}?wait=30"))
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        if matches!(
            state["status"].as_str(),
            Some("completed" | "failed" | "cancelled")
        ) {
            return Ok(());
        }
    }
    Ok(())
}
