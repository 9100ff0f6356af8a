//! The chaos suite: each scenario runs the real `llm-api` / `llm-worker` binaries against real
//! PostgreSQL and Redis, breaks something under load (SIGKILLed workers or api, a restarted
//! PostgreSQL or Redis, misbehaving providers), and returns a [`Tally`] read from the database:
//! requests accepted (a `202`) / completed / failed / lost / completed twice, plus what else
//! the scenario checks ([`Tally::problems`] must stay empty).
//!
//! Used by the `llm-chaos` binary (`scripts/chaos.sh`, full sizes) and by the integration tests
//! (`tests/integration/chaos.rs`, small sizes). Scenarios that restart a server start a private
//! one ([`crate::servers`]): the shared PostgreSQL and Redis are never touched.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use llm_api::auth::JwtKeys;
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::process::Child;
use tokio::time::Instant;
use uuid::Uuid;

use crate::fake_upstream::{self, FakeUpstream, Received, Reply};
use crate::servers::{PrivatePostgres, PrivateRedis};
use crate::sse::{SseReader, output_of};
use crate::{
    TEST_SECRET, TestDb, free_port, signal, spawn_api_process_on, spawn_api_process_with,
    spawn_worker_process,
};

/// What one scenario measured.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub scenario: &'static str,
    /// Requests answered `202` (or, for streams, that started).
    pub accepted: usize,
    pub completed: usize,
    /// Failed or cancelled: a final state, reported as such to the client.
    pub failed: usize,
    /// Accepted, but without a row, or not final within the scenario's bound.
    pub lost: usize,
    /// Requests with more than one succeeded provider call recorded, more than one
    /// `generation.completed` event, or usage counted more than once.
    pub completed_twice: usize,
    /// What the scenario did and saw (kills, status counts, streams' ends, …).
    pub notes: Vec<String>,
    /// Broken expectations besides lost / completed twice (a 500 during an outage, a stream
    /// that hung, a truncated success, a process that died, …).
    pub problems: Vec<String>,
}

impl Tally {
    /// Lost = 0, completed twice = 0, and nothing else broken.
    pub fn passed(&self) -> bool {
        self.lost == 0 && self.completed_twice == 0 && self.problems.is_empty()
    }

    fn problem(&mut self, what: impl Into<String>) {
        self.problems.push(what.into());
    }

    fn note(&mut self, what: impl Into<String>) {
        self.notes.push(what.into());
    }
}

/// The tallies as one table, each scenario followed by its notes and problems.
pub fn render_table(tallies: &[Tally]) -> String {
    let mut out = format!(
        "{:<18} {:>9} {:>10} {:>7} {:>5} {:>16}  {}\n",
        "scenario", "accepted", "completed", "failed", "lost", "completed twice", "result"
    );
    for t in tallies {
        out.push_str(&format!(
            "{:<18} {:>9} {:>10} {:>7} {:>5} {:>16}  {}\n",
            t.scenario,
            t.accepted,
            t.completed,
            t.failed,
            t.lost,
            t.completed_twice,
            if t.passed() { "ok" } else { "FAILED" }
        ));
        for note in &t.notes {
            out.push_str(&format!("    {note}\n"));
        }
        for problem in &t.problems {
            out.push_str(&format!("    PROBLEM: {problem}\n"));
        }
    }
    out
}

/// How big each scenario is.
#[derive(Debug, Clone)]
pub struct Sizes {
    pub kill_jobs: usize,
    pub kill_workers: usize,
    pub kill_every: Duration,
    pub kill_streams: usize,
    pub api_load: Duration,
    pub api_kills: usize,
    pub pg_load: Duration,
    pub pg_outage: Duration,
    pub pg_streams: usize,
    pub redis_load: Duration,
    pub redis_outage: Duration,
    pub redis_streams: usize,
    pub fault_requests: usize,
    /// How long every accepted request has to reach a final state once the fault is over.
    pub settle: Duration,
}

impl Sizes {
    /// The full suite (`llm-chaos`): the sizes of the issue.
    pub fn full() -> Self {
        Self {
            kill_jobs: 1000,
            kill_workers: 3,
            kill_every: Duration::from_secs(3),
            kill_streams: 30,
            api_load: Duration::from_secs(20),
            api_kills: 3,
            pg_load: Duration::from_secs(10),
            pg_outage: Duration::from_secs(10),
            pg_streams: 50,
            redis_load: Duration::from_secs(12),
            redis_outage: Duration::from_secs(3),
            redis_streams: 100,
            fault_requests: 300,
            settle: Duration::from_secs(120),
        }
    }

    /// The fast part (CI): the same scenarios, small.
    pub fn quick() -> Self {
        Self {
            kill_jobs: 150,
            kill_workers: 3,
            kill_every: Duration::from_millis(1500),
            kill_streams: 6,
            api_load: Duration::from_secs(6),
            api_kills: 2,
            pg_load: Duration::from_secs(5),
            pg_outage: Duration::from_secs(7),
            pg_streams: 8,
            redis_load: Duration::from_secs(6),
            redis_outage: Duration::from_secs(2),
            redis_streams: 12,
            fault_requests: 48,
            settle: Duration::from_secs(90),
        }
    }
}

// ------------------------------------------------------------------------------ load

/// One submit's answer.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Accepted(Uuid),
    Status(u16),
    /// No HTTP answer at all (connection refused or reset: the api is down).
    Unreachable,
}

/// An HTTP client of the service, as one user.
#[derive(Clone)]
pub struct ChaosClient {
    http: reqwest::Client,
    pub base: String,
    token: String,
}

impl ChaosClient {
    pub fn new(base: &str) -> Self {
        let token = JwtKeys::new(&SecretString::from(TEST_SECRET))
            .issue(Uuid::now_v7(), 7200, None)
            .unwrap();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        Self {
            http,
            base: base.to_owned(),
            token,
        }
    }

    async fn submit(&self, body: &Value) -> Answer {
        let sent = self
            .http
            .post(format!("{}/api/v1/generate", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await;
        let Ok(response) = sent else {
            return Answer::Unreachable;
        };
        let status = response.status().as_u16();
        if status != 202 {
            return Answer::Status(status);
        }
        let id = response
            .json::<Value>()
            .await
            .ok()
            .and_then(|v| v["request_id"].as_str().and_then(|s| s.parse().ok()));
        // A 202 whose body did not arrive is still an acceptance we cannot name: count it as
        // unreachable rather than invent an id.
        id.map_or(Answer::Unreachable, Answer::Accepted)
    }

    /// `GET /health/ready`'s status, 0 when the api does not answer.
    pub async fn readiness(&self) -> u16 {
        self.http
            .get(format!("{}/health/ready", self.base))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_or(0, |r| r.status().as_u16())
    }

    /// Opens a stream (`POST /api/v1/generate/stream`).
    pub async fn open_stream(&self, body: &Value) -> SseReader {
        SseReader::open(
            self.http
                .post(format!("{}/api/v1/generate/stream", self.base))
                .timeout(Duration::from_secs(300))
                .bearer_auth(&self.token)
                .json(body),
        )
        .await
    }
}

/// When a load stops.
#[derive(Debug, Clone)]
pub enum Until {
    /// After this many submits in all.
    Sent(usize),
    /// At this time.
    Deadline(Instant),
    /// When the flag is set.
    Stopped(Arc<AtomicBool>),
}

/// Every answer of a load, with when its submit was sent and how long the answer took.
#[derive(Debug, Default)]
pub struct Load {
    answers: Vec<(Instant, Duration, Answer)>,
}

impl Load {
    pub fn accepted(&self) -> Vec<Uuid> {
        self.answers
            .iter()
            .filter_map(|(_, _, a)| match a {
                Answer::Accepted(id) => Some(*id),
                _ => None,
            })
            .collect()
    }

    /// Answers by status (`202`, `503`, …; `unreachable` for no answer) to the submits sent
    /// within `[from, to)`.
    fn statuses_between(&self, from: Instant, to: Instant) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for (at, _, answer) in &self.answers {
            if *at < from || *at >= to {
                continue;
            }
            let key = match answer {
                Answer::Accepted(_) => "202".to_owned(),
                Answer::Status(s) => s.to_string(),
                Answer::Unreachable => "unreachable".to_owned(),
            };
            *counts.entry(key).or_insert(0) += 1;
        }
        counts
    }

    /// The longest any submit sent within `[from, to)` waited for its answer.
    fn slowest_between(&self, from: Instant, to: Instant) -> Duration {
        self.answers
            .iter()
            .filter(|(at, _, _)| *at >= from && *at < to)
            .map(|(_, took, _)| *took)
            .max()
            .unwrap_or_default()
    }

    fn statuses(&self) -> BTreeMap<String, usize> {
        let far = Instant::now() + Duration::from_secs(86_400);
        self.statuses_between(Instant::now() - Duration::from_secs(86_400), far)
    }
}

fn describe(counts: &BTreeMap<String, usize>) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Submits from `concurrency` clients until `until`; body `n` comes from `body(n)`.
pub async fn submit_load(
    client: &ChaosClient,
    concurrency: usize,
    until: Until,
    body: impl Fn(usize) -> Value + Send + Sync + 'static,
) -> Load {
    let next = Arc::new(AtomicUsize::new(0));
    let body = Arc::new(body);
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (client, next, body) = (client.clone(), next.clone(), body.clone());
            let until = until.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let more = match &until {
                        Until::Sent(total) => n < *total,
                        Until::Deadline(at) => Instant::now() < *at,
                        Until::Stopped(flag) => !flag.load(Ordering::Relaxed),
                    };
                    if !more {
                        return answers;
                    }
                    let sent = Instant::now();
                    let answer = client.submit(&body(n)).await;
                    answers.push((sent, sent.elapsed(), answer));
                    if !matches!(answer, Answer::Accepted(_)) {
                        // The service is (partly) down: do not spin.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect();
    let mut load = Load::default();
    for task in futures::future::join_all(tasks).await {
        load.answers.extend(task.unwrap());
    }
    load.answers.sort_by_key(|(at, _, _)| *at);
    load
}

// ------------------------------------------------------------------------------ counting

const FINAL: &str = "('completed', 'failed', 'cancelled')";

/// Waits (up to `bound`) for every accepted request to be final, then counts.
pub async fn tally(
    scenario: &'static str,
    pool: &PgPool,
    accepted: &[Uuid],
    bound: Duration,
) -> Tally {
    let deadline = Instant::now() + bound;
    let final_count = loop {
        let n: Result<i64, _> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM generation_requests WHERE id = ANY($1) AND status IN {FINAL}"
        )))
        .bind(accepted)
        .fetch_one(pool)
        .await;
        let n = n.map_or(0, |n| n as usize);
        if n >= accepted.len() || Instant::now() >= deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let by_status: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status::text, COUNT(*) FROM generation_requests WHERE id = ANY($1) GROUP BY 1",
    )
    .bind(accepted)
    .fetch_all(pool)
    .await
    .unwrap();
    let count = |names: &[&str]| -> usize {
        by_status
            .iter()
            .filter(|(s, _)| names.contains(&s.as_str()))
            .map(|(_, n)| *n as usize)
            .sum()
    };
    let mut t = Tally {
        scenario,
        accepted: accepted.len(),
        completed: count(&["completed"]),
        failed: count(&["failed", "cancelled"]),
        lost: accepted.len().saturating_sub(final_count),
        ..Tally::default()
    };
    t.completed_twice = completed_twice(pool).await;
    if t.failed > 0 {
        let codes: Vec<(Option<String>, i64)> = sqlx::query_as(
            "SELECT error_code, COUNT(*) FROM generation_requests
             WHERE id = ANY($1) AND status IN ('failed', 'cancelled') GROUP BY 1 ORDER BY 2 DESC",
        )
        .bind(accepted)
        .fetch_all(pool)
        .await
        .unwrap();
        let codes = codes
            .into_iter()
            .map(|(c, n)| (c.unwrap_or_else(|| "cancelled".into()), n as usize))
            .collect();
        t.note(format!("failed by error code: {}", describe(&codes)));
    }
    if t.lost > 0 {
        let unfinished = describe(
            &by_status
                .iter()
                .filter(|(s, _)| !["completed", "failed", "cancelled"].contains(&s.as_str()))
                .map(|(s, n)| (s.clone(), *n as usize))
                .collect(),
        );
        let rows: usize = by_status.iter().map(|(_, n)| *n as usize).sum();
        t.note(format!(
            "lost: {} without a row, not final after {bound:?}: {unfinished}",
            accepted.len().saturating_sub(rows)
        ));
    }
    t
}

/// Requests (of the whole database) that completed more than once, by any of three records:
/// succeeded provider calls, `generation.completed` events, usage counted.
async fn completed_twice(pool: &PgPool) -> usize {
    let scalar = |sql: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(pool)
            .await
            .unwrap()
    };
    let calls = scalar(
        "SELECT COUNT(*) FROM (SELECT request_id FROM generation_attempts
         WHERE outcome = 'succeeded' GROUP BY request_id HAVING COUNT(*) > 1) s",
    )
    .await;
    let events = scalar(
        "SELECT COUNT(*) FROM (SELECT request_id FROM outbox_events
         WHERE type = 'generation.completed' GROUP BY request_id HAVING COUNT(*) > 1) s",
    )
    .await;
    let usage_excess = scalar(
        "SELECT GREATEST(0, (SELECT COALESCE(SUM(requests), 0) FROM usage_daily)::bigint
                          - (SELECT COUNT(*) FROM generation_requests WHERE status = 'completed'))",
    )
    .await;
    calls.max(events).max(usage_excess) as usize
}

async fn scalar(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Rows nobody got an answer for (the api died between commit and answer): they must finish
/// like the others. Returns (rows, not final after `bound`).
async fn unanswered_rows(pool: &PgPool, accepted: &[Uuid], bound: Duration) -> (i64, i64) {
    let deadline = Instant::now() + bound;
    loop {
        let (rows, open): (i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE status NOT IN {FINAL})
             FROM generation_requests WHERE NOT (id = ANY($1))"
        )))
        .bind(accepted)
        .fetch_one(pool)
        .await
        .unwrap();
        if open == 0 || Instant::now() >= deadline {
            return (rows, open);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ------------------------------------------------------------------------------ processes

/// Environment of every chaos process: limits far above the load (one user sends it all),
/// small pools (the shared PostgreSQL serves parallel tests too), and `CHAOS_LOG_LEVEL`
/// (default `error`) so the table stays readable.
fn base_env(extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let level = std::env::var("CHAOS_LOG_LEVEL").unwrap_or_else(|_| "error".into());
    let mut env = vec![
        ("LOG_LEVEL", level),
        ("DATABASE_MAX_CONNECTIONS", "10".to_owned()),
        ("RATE_LIMIT_RPM", "1000000000".to_owned()),
        ("RATE_LIMIT_TPM", "4000000000".to_owned()),
    ];
    env.extend(extra.iter().cloned());
    env
}

fn refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn still_running(child: &mut Child, what: &str, t: &mut Tally) {
    if !matches!(child.try_wait(), Ok(None)) {
        t.problem(format!("{what} exited"));
    }
}

fn unique_run() -> String {
    Uuid::now_v7().simple().to_string()
}

/// In the background: a load of mock requests answering after `latency_ms`, each prompt
/// unique (no cache hit, no coalescing).
fn mock_load(
    client: &ChaosClient,
    concurrency: usize,
    until: Until,
    latency_ms: u64,
) -> tokio::task::JoinHandle<Load> {
    let client = client.clone();
    let run = unique_run();
    tokio::spawn(async move {
        submit_load(&client, concurrency, until, move |n| {
            json!({"prompt": format!("chaos {run} {n}"), "mock": {"latency_ms": latency_ms}})
        })
        .await
    })
}

// ------------------------------------------------------------------------------ streams

/// Streams opened before a fault, read to their end in the background.
pub struct OpenStreams {
    wanted: usize,
    ids: Vec<Uuid>,
    readers: Vec<tokio::task::JoinHandle<Vec<crate::sse::SseMessage>>>,
}

impl OpenStreams {
    /// Opens `n` streams of `tokens` mock tokens, `token_delay_ms` apart, and waits for each
    /// one's `start` event.
    pub async fn open(client: &ChaosClient, n: usize, tokens: u32, token_delay_ms: u64) -> Self {
        let run = unique_run();
        let mut streams = Self {
            wanted: n,
            ids: Vec::new(),
            readers: Vec::new(),
        };
        for i in 0..n {
            let body = json!({"prompt": format!("chaos stream {run} {i}"),
                              "parameters": {"max_tokens": tokens}, "mock": {"token_delay_ms": token_delay_ms}});
            let mut reader = client.open_stream(&body).await;
            let Some(start) = reader.next(Duration::from_secs(10)).await else {
                continue;
            };
            let Some(id) = start.data["request_id"]
                .as_str()
                .and_then(|s| s.parse().ok())
            else {
                continue;
            };
            streams.ids.push(id);
            streams.readers.push(tokio::spawn(async move {
                reader.until_terminal(Duration::from_secs(180)).await
            }));
        }
        streams
    }

    /// Waits for every stream's end; notes how each ended; a stream that ended without a
    /// terminal event, or `done` with an output other than the stored result, is a problem.
    pub async fn check(self, pool: &PgPool, t: &mut Tally) {
        let (mut done, mut errors, mut no_end, mut differ, mut restarted) = (0, 0, 0, 0, 0);
        for (reader, id) in self.readers.into_iter().zip(&self.ids) {
            let events = reader.await.unwrap();
            if events.iter().any(|m| m.event == "restart") {
                restarted += 1;
            }
            match events.last().map(|m| m.event.as_str()) {
                Some("done") => {
                    done += 1;
                    let stored: Option<String> =
                        sqlx::query_scalar("SELECT result FROM generation_requests WHERE id = $1")
                            .bind(id)
                            .fetch_one(pool)
                            .await
                            .unwrap();
                    if stored.as_deref() != Some(output_of(&events).as_str()) {
                        differ += 1;
                    }
                }
                Some("error") => errors += 1,
                _ => no_end += 1,
            }
        }
        t.note(format!(
            "{} streams open across the fault ({restarted} of them started over) ended: done {done} \
             (output = stored result: {}), error {errors}, without a terminal event {no_end}",
            self.ids.len(),
            done - differ
        ));
        if self.ids.len() < self.wanted {
            t.problem(format!(
                "only {} of {} streams started",
                self.ids.len(),
                self.wanted
            ));
        }
        if no_end > 0 {
            t.problem(format!("{no_end} streams ended without a terminal event"));
        }
        if differ > 0 {
            t.problem(format!(
                "{differ} streams ended `done` with an output different from the stored result"
            ));
        }
    }
}

/// Streams one request (10 tokens, 200 ms apart); returns its terminal event and whether its
/// tokens came live through the relay: the first one well before the request completed (not
/// only re-sent from the row at the end).
async fn live_stream(client: &ChaosClient, pool: &PgPool, label: &str) -> (Option<String>, bool) {
    let mut stream = client
        .open_stream(&json!({"prompt": format!("chaos live stream {label}"),
                             "parameters": {"max_tokens": 10}, "mock": {"token_delay_ms": 200}}))
        .await;
    let (mut first_token_at, mut id, mut end) = (None, None, None);
    while let Some(m) = stream.next(Duration::from_secs(30)).await {
        match m.event.as_str() {
            "start" => {
                id = m.data["request_id"]
                    .as_str()
                    .and_then(|s| s.parse::<Uuid>().ok())
            }
            "token" if first_token_at.is_none() => first_token_at = Some(chrono::Utc::now()),
            "done" | "error" => {
                end = Some(m.event);
                break;
            }
            _ => {}
        }
    }
    let completed_at: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT completed_at FROM generation_requests WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await
            .unwrap()
            .flatten();
    let live = matches!((first_token_at, completed_at),
        (Some(first), Some(done)) if first < done - chrono::Duration::milliseconds(500));
    (end, live)
}

// ------------------------------------------------------------------------------ scenarios

/// `kill_workers` workers, one of them SIGKILLed (and replaced) every `kill_every` while
/// `kill_jobs` jobs run.
pub async fn worker_kills(sizes: &Sizes) -> Tally {
    let db = TestDb::new().await;
    let env = base_env(&[]);
    let (mut api, base) = spawn_api_process_with(&db, &refs(&env)).await;
    let mut workers: Vec<Child> = (0..sizes.kill_workers)
        .map(|_| spawn_worker_process(&db, &refs(&env)))
        .collect();
    let client = ChaosClient::new(&base);
    let jobs = sizes.kill_jobs;
    let load = mock_load(&client, 16, Until::Sent(jobs), 500);
    // Streams whose workers die under them: they restart elsewhere and must end with the
    // stored result.
    let streams = OpenStreams::open(&client, sizes.kill_streams, 20, 50).await;
    let started = Instant::now();
    let mut kills = 0usize;
    loop {
        tokio::time::sleep(sizes.kill_every).await;
        let open = scalar(
            &db.pool,
            "SELECT COUNT(*) FROM generation_requests WHERE status NOT IN ('completed', 'failed', 'cancelled')",
        )
        .await;
        if (load.is_finished() && open == 0) || started.elapsed() > sizes.settle {
            break;
        }
        let victim = kills % workers.len();
        signal(&workers[victim], libc::SIGKILL);
        let _ = workers[victim].wait().await;
        workers[victim] = spawn_worker_process(&db, &refs(&env));
        kills += 1;
    }
    let load = load.await.unwrap();
    let mut accepted = load.accepted();
    accepted.extend(&streams.ids);
    let mut t = tally("worker SIGKILLs", &db.pool, &accepted, sizes.settle).await;
    streams.check(&db.pool, &mut t).await;
    let abandoned = scalar(
        &db.pool,
        "SELECT COUNT(*) FROM generation_attempts WHERE outcome = 'abandoned'",
    )
    .await;
    t.note(format!(
        "{} workers, {kills} SIGKILLs (one every {:?}); {abandoned} in-flight runs interrupted; submits: {}",
        sizes.kill_workers,
        sizes.kill_every,
        describe(&load.statuses())
    ));
    if kills == 0 || abandoned == 0 {
        t.problem("no worker was killed while running a job: the scenario tested nothing");
    }
    if t.accepted < jobs + sizes.kill_streams {
        t.problem(format!("only {} of {jobs} submits accepted", t.accepted));
    }
    still_running(&mut api, "the api", &mut t);
    t
}

/// A submit load while the api is SIGKILLed (and restarted on its port) `api_kills` times:
/// every id that got a 202 completes; rows committed without an answer finish too.
pub async fn api_kills(sizes: &Sizes) -> Tally {
    let db = TestDb::new().await;
    let env = base_env(&[]);
    let port = free_port();
    let (mut api, base) = spawn_api_process_on(&db, port, &refs(&env)).await;
    let _workers: Vec<Child> = (0..2)
        .map(|_| spawn_worker_process(&db, &refs(&env)))
        .collect();
    let client = ChaosClient::new(&base);
    let end = Instant::now() + sizes.api_load;
    let load = mock_load(&client, 16, Until::Deadline(end), 50);
    let gap = sizes.api_load / (sizes.api_kills as u32 + 1);
    for _ in 0..sizes.api_kills {
        tokio::time::sleep(gap).await;
        signal(&api, libc::SIGKILL);
        let _ = api.wait().await;
        api = spawn_api_process_on(&db, port, &refs(&env)).await.0;
    }
    let load = load.await.unwrap();
    let accepted = load.accepted();
    let mut t = tally("api SIGKILLs", &db.pool, &accepted, sizes.settle).await;
    let (rows, open) = unanswered_rows(&db.pool, &accepted, sizes.settle).await;
    t.note(format!(
        "{} SIGKILLs of the api during {:?} of submits at concurrency 16; answers: {}",
        sizes.api_kills,
        sizes.api_load,
        describe(&load.statuses())
    ));
    t.note(format!(
        "{rows} requests committed whose 202 never reached the client; {open} of them not final"
    ));
    if open > 0 {
        t.problem(format!(
            "{open} committed but unanswered requests never finished"
        ));
    }
    let other: usize = load
        .statuses()
        .iter()
        .filter(|(k, _)| !["202", "unreachable"].contains(&k.as_str()))
        .map(|(_, n)| n)
        .sum();
    if other > 0 {
        t.problem(format!(
            "{other} submits answered with an error status while the api was up"
        ));
    }
    t
}

/// A submit load while a private PostgreSQL is stopped for `pg_outage` and started again:
/// the api and the workers recover without a restart, the api answers 503 meanwhile. The load
/// runs `pg_load` before the outage and `pg_load` after the restart.
pub async fn postgres_restart(sizes: &Sizes) -> Tally {
    let pg = PrivatePostgres::start().await;
    let db = TestDb::on(&pg.admin_url()).await;
    let env = base_env(&[]);
    let (mut api, base) = spawn_api_process_with(&db, &refs(&env)).await;
    let mut workers: Vec<Child> = (0..2)
        .map(|_| spawn_worker_process(&db, &refs(&env)))
        .collect();
    let client = ChaosClient::new(&base);
    let stop = Arc::new(AtomicBool::new(false));
    let load = mock_load(&client, 8, Until::Stopped(stop.clone()), 100);
    tokio::time::sleep(sizes.pg_load).await;
    // Streams mid-flight when the server stops: 30 tokens, 200 ms apart.
    let streams = OpenStreams::open(&client, sizes.pg_streams, 30, 200).await;
    // From the start of the shutdown: sessions are terminated, new ones refused.
    let down_at = Instant::now();
    pg.down().await;
    let mut readiness_during = BTreeMap::new();
    while down_at.elapsed() < sizes.pg_outage {
        *readiness_during
            .entry(client.readiness().await)
            .or_insert(0) += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let up_at = Instant::now();
    pg.up().await;
    let back_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT NOW()")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let ready_at = Instant::now();
    tokio::time::sleep(sizes.pg_load).await;
    stop.store(true, Ordering::Relaxed);
    let end = Instant::now();
    let load = load.await.unwrap();
    let mut accepted = load.accepted();
    accepted.extend(&streams.ids);
    let mut t = tally("PostgreSQL restart", &db.pool, &accepted, sizes.settle).await;
    let during = load.statuses_between(down_at, up_at);
    let after = load.statuses_between(ready_at + Duration::from_secs(2), end);
    t.note(format!(
        "PostgreSQL down for {:?} between {:?} of submits (concurrency 8) before and after",
        sizes.pg_outage, sizes.pg_load
    ));
    streams.check(&db.pool, &mut t).await;
    t.note(format!(
        "submits sent while down: {} (slowest answer {:.1?}); /health/ready while down: {}",
        describe(&during),
        load.slowest_between(down_at, up_at),
        describe(
            &readiness_during
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect()
        )
    ));
    t.note(format!(
        "submits from 2 s after PostgreSQL was ready again on: {}; all: {}",
        describe(&after),
        describe(&load.statuses())
    ));
    if !during.contains_key("503") {
        t.problem("no submit was answered 503 while PostgreSQL was down");
    }
    if during.keys().any(|k| !["202", "503"].contains(&k.as_str())) {
        t.problem("while PostgreSQL was down, submits got answers other than 202 / 503");
    }
    if readiness_during.keys().any(|s| *s != 503) {
        t.problem("/health/ready did not answer 503 while PostgreSQL was down");
    }
    if after.keys().any(|k| k != "202") || !after.contains_key("202") {
        t.problem("the api did not go back to accepting every submit after the restart");
    }
    if client.readiness().await != 200 {
        t.problem("/health/ready is not 200 after the restart");
    }
    still_running(&mut api, "the api", &mut t);
    for (i, worker) in workers.iter_mut().enumerate() {
        still_running(worker, &format!("worker {i}"), &mut t);
    }
    let after_restart: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM generation_requests WHERE id = ANY($1) AND created_at > NOW() - make_interval(secs => $2) AND status = 'completed'",
    )
    .bind(&accepted)
    .bind(up_at.elapsed().as_secs_f64())
    .fetch_one(&db.pool)
    .await
    .unwrap();
    // Worker names are `<host>-<pid>-<suffix>` (a restarted apalis worker adds `-r<n>`).
    let pids: Vec<String> = workers
        .iter()
        .filter_map(|w| w.id().map(|pid| pid.to_string()))
        .collect();
    // When each worker process took its first job once PostgreSQL was back.
    let mut first_jobs = Vec::new();
    for pid in &pids {
        let first: Option<f64> = sqlx::query_scalar(
            "SELECT EXTRACT(EPOCH FROM MIN(started_at) - $1)::float8 FROM generation_attempts
             WHERE started_at > $1 AND split_part(worker, '-', 2) = $2",
        )
        .bind(back_at)
        .bind(pid)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        first_jobs.push(first);
    }
    t.note(format!(
        "{after_restart} requests submitted after the restart completed; the {} worker processes \
         (never restarted) took their first job {} after PostgreSQL was back",
        pids.len(),
        first_jobs
            .iter()
            .map(|f| f.map_or("never".to_owned(), |s| format!("{s:.1} s")))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    if after_restart == 0 {
        t.problem("no request submitted after the restart completed");
    }
    if first_jobs.iter().any(Option::is_none) {
        t.problem("a worker process took no job after the restart");
    }
    drop(workers);
    drop(api);
    drop(db);
    drop(pg);
    t
}

/// A submit load and open streams while a private Redis is killed and started again:
/// submits are unaffected, every stream ends (`done` with the stored result, or `error`),
/// rate limiting follows its fail mode (an api with `closed` answers 503 meanwhile).
pub async fn redis_restart(sizes: &Sizes) -> Tally {
    let mut redis = PrivateRedis::start().await;
    let db = TestDb::new().await;
    let redis_env = [("REDIS_URL", redis.url())];
    let open_env = base_env(&redis_env);
    let mut closed_env = base_env(&redis_env);
    closed_env.push(("RATE_LIMIT_FAIL_MODE", "closed".to_owned()));
    let (mut api, base) = spawn_api_process_with(&db, &refs(&open_env)).await;
    let (mut api_closed, closed_base) = spawn_api_process_with(&db, &refs(&closed_env)).await;
    let mut worker_env = base_env(&redis_env);
    worker_env.push(("WORKER_CONCURRENCY", "64".to_owned()));
    let mut worker = spawn_worker_process(&db, &refs(&worker_env));
    let client = ChaosClient::new(&base);
    let closed_client = ChaosClient::new(&closed_base);
    let run = unique_run();

    let (_, live_before) = live_stream(&client, &db.pool, &format!("{run} before")).await;
    // Streams that will be mid-flight when Redis dies: 30 tokens, 100 ms apart.
    let streams = OpenStreams::open(&client, sizes.redis_streams, 30, 100).await;
    let stream_ids = streams.ids.clone();

    let end = Instant::now() + sizes.redis_load;
    let load = mock_load(&client, 4, Until::Deadline(end), 20);
    let closed_load = mock_load(&closed_client, 2, Until::Deadline(end), 20);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let down_at = Instant::now();
    redis.kill().await;
    tokio::time::sleep(sizes.redis_outage).await;
    let up_at = Instant::now();
    redis.up().await;
    let load = load.await.unwrap();
    let closed_load = closed_load.await.unwrap();

    // After the restart the relay carries tokens live again.
    let (fresh_end, live_after_restart) =
        live_stream(&client, &db.pool, &format!("{run} after")).await;
    let mut accepted = load.accepted();
    accepted.extend(closed_load.accepted());
    accepted.extend(&stream_ids);
    let mut t = tally("Redis restart", &db.pool, &accepted, sizes.settle).await;
    t.note(format!(
        "Redis killed for {:?} during {:?} of submits",
        sizes.redis_outage, sizes.redis_load,
    ));
    streams.check(&db.pool, &mut t).await;
    let during = load.statuses_between(down_at, up_at);
    let closed_during = closed_load.statuses_between(down_at, up_at);
    t.note(format!(
        "submits (fail mode open) while down: {}; all: {}",
        describe(&during),
        describe(&load.statuses())
    ));
    t.note(format!(
        "submits to an api with RATE_LIMIT_FAIL_MODE=closed while down: {}",
        describe(&closed_during)
    ));
    t.note(format!(
        "a stream opened after the restart ended with {} (tokens live: {live_after_restart})",
        fresh_end.as_deref().unwrap_or("nothing")
    ));
    if load.statuses().keys().any(|k| k != "202") {
        t.problem("submits with fail mode open were affected by the Redis outage");
    }
    if !closed_during.contains_key("503") {
        t.problem("the fail-closed api did not answer 503 while Redis was down");
    }
    let closed_after = closed_load.statuses_between(up_at + Duration::from_secs(1), end);
    t.note(format!(
        "submits to the fail-closed api from 1 s after the restart on: {}",
        describe(&closed_after)
    ));
    if closed_after.keys().any(|k| k != "202") {
        t.problem("the fail-closed api still refused submits after Redis was back");
    }
    if closed_during
        .keys()
        .any(|k| !["202", "503"].contains(&k.as_str()))
    {
        t.problem("the fail-closed api answered something other than 202 / 503");
    }
    if fresh_end.as_deref() != Some("done") {
        t.problem("a stream opened after the restart did not complete");
    }
    if !live_before {
        t.problem("before the outage, tokens were not relayed live");
    }
    if !live_after_restart {
        t.problem("after the restart, tokens were not relayed live");
    }
    still_running(&mut api, "the api", &mut t);
    still_running(&mut api_closed, "the fail-closed api", &mut t);
    still_running(&mut worker, "the worker", &mut t);
    t
}

/// The answer every fake provider gives when it succeeds, in pieces when streaming.
const FULL_PIECES: [&str; 7] = [
    "The",
    " ancient",
    " dragon",
    " sleeps",
    " beneath",
    " the",
    " mountain.",
];

fn full_text() -> String {
    FULL_PIECES.concat()
}

/// The faults a fake provider cycles through: half successes, the rest a 429 storm with
/// `Retry-After`, 5xx, a timeout, garbage bodies, cut streams and streams that end early.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Success,
    TooMany,
    ServerError,
    Unavailable,
    Timeout,
    Garbage,
    Cut,
    EndsEarly,
    Empty,
}

const FAULT_CYCLE: [Fault; 18] = [
    Fault::Success,
    Fault::TooMany,
    Fault::TooMany,
    Fault::TooMany,
    Fault::Success,
    Fault::ServerError,
    Fault::Success,
    Fault::Timeout,
    Fault::Success,
    Fault::Garbage,
    Fault::Success,
    Fault::Cut,
    Fault::Success,
    Fault::EndsEarly,
    Fault::Success,
    Fault::Empty,
    Fault::Success,
    Fault::Unavailable,
];

/// Reply constructors of one provider's wire format.
struct Wire {
    success: fn(&str, u32, u32) -> Reply,
    stream: fn(&[&str], u32, u32, bool) -> Reply,
    error: fn(u16, &str, Option<&str>) -> Reply,
}

const OPENAI: Wire = Wire {
    success: fake_upstream::openai::success,
    stream: fake_upstream::openai::stream,
    error: fake_upstream::openai::error,
};
const ANTHROPIC: Wire = Wire {
    success: fake_upstream::anthropic::success,
    stream: fake_upstream::anthropic::stream,
    error: fake_upstream::anthropic::error,
};
const OLLAMA: Wire = Wire {
    success: fake_upstream::ollama::success,
    stream: fake_upstream::ollama::stream,
    error: fake_upstream::ollama::error,
};

/// A provider call's timeout in the faults scenario; `Fault::Timeout` answers after it.
const FAULTS_CALL_TIMEOUT_SECS: u64 = 2;

fn faulty_reply(wire: &Wire, request: &Received, n: usize) -> Reply {
    let streaming = request.body["stream"].as_bool().unwrap_or(false);
    let content_type = if streaming {
        "text/event-stream"
    } else {
        "application/json"
    };
    let success = || {
        if streaming {
            (wire.stream)(&FULL_PIECES, 12, 7, true)
        } else {
            (wire.success)(&full_text(), 12, 7)
        }
    };
    match FAULT_CYCLE[n % FAULT_CYCLE.len()] {
        Fault::Success => success(),
        Fault::TooMany => (wire.error)(429, "slow down", Some("1")),
        Fault::ServerError => (wire.error)(500, "internal error", None),
        Fault::Unavailable => (wire.error)(503, "overloaded", None),
        Fault::Timeout => Reply::Delayed(
            Duration::from_secs(FAULTS_CALL_TIMEOUT_SECS + 1),
            Box::new(success()),
        ),
        Fault::Garbage => Reply::Raw {
            status: 200,
            content_type,
            body: "<html><body>502 Bad Gateway</body></html>".into(),
        },
        // Some of the answer, then the connection drops.
        Fault::Cut => (wire.stream)(&FULL_PIECES[..3], 12, 3, false),
        // Some of the answer and a clean end of the body, but no end-of-message marker.
        Fault::EndsEarly => match (wire.stream)(&FULL_PIECES[..3], 12, 3, false) {
            Reply::Stream {
                content_type,
                pieces,
                gap,
                ..
            } if streaming => Reply::Stream {
                content_type,
                pieces,
                gap,
                cut: false,
            },
            _ => Reply::Raw {
                status: 200,
                content_type,
                body: r#"{"id": "cut-short", "choices": [{"index": 0, "mess"#.into(),
            },
        },
        Fault::Empty => (wire.success)("", 12, 0),
    }
}

/// Circuit cool-down of the faults scenario: circuits open, probe and close within its run.
const FAULTS_CIRCUIT_COOLDOWN_SECS: u64 = 2;

/// The repository's model registry with the circuit cool-down shortened to `secs`, written to
/// the temporary directory under the test database's name (for `MODELS_FILE`).
pub fn short_cooldown_registry(db: &TestDb, secs: u64) -> std::path::PathBuf {
    let registry = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/models.toml");
    let text = std::fs::read_to_string(registry).unwrap();
    let shortened = text.replacen("cooldown_secs = 30", &format!("cooldown_secs = {secs}"), 1);
    assert_ne!(
        text, shortened,
        "config/models.toml changed its circuit cool-down line"
    );
    let path = std::env::temp_dir().join(format!("{}-models.toml", db.name));
    std::fs::write(&path, shortened).unwrap();
    path
}

/// Requests to fake OpenAI, Anthropic and Ollama upstreams that cycle through faults (429
/// storms with `Retry-After`, 5xx, timeouts, garbage bodies, cut streams), some of them
/// streamed, plus the mock provider's own faults: no request ends as a truncated success.
pub async fn provider_faults(sizes: &Sizes) -> Tally {
    let fakes = [
        (FakeUpstream::start("/v1").await, &OPENAI),
        (FakeUpstream::start("").await, &ANTHROPIC),
        (FakeUpstream::start("").await, &OLLAMA),
    ];
    for (fake, wire) in &fakes {
        let wire: &'static Wire = wire;
        fake.respond_with(move |request, n| faulty_reply(wire, request, n));
    }
    let db = TestDb::new().await;
    let models_file = short_cooldown_registry(&db, FAULTS_CIRCUIT_COOLDOWN_SECS);
    let providers = [
        ("MODELS_FILE", models_file.display().to_string()),
        ("OPENAI_API_KEY", "sk-chaos-0123456789".to_owned()),
        ("OPENAI_BASE_URL", fakes[0].0.base_url.clone()),
        ("ANTHROPIC_API_KEY", "sk-ant-chaos-0123456789".to_owned()),
        ("ANTHROPIC_BASE_URL", fakes[1].0.base_url.clone()),
        ("OLLAMA_URL", fakes[2].0.base_url.clone()),
    ];
    let env = base_env(&providers);
    let (mut api, base) = spawn_api_process_with(&db, &refs(&env)).await;
    let mut worker_env = env.clone();
    worker_env.push((
        "PROVIDER_TIMEOUT_SECS",
        FAULTS_CALL_TIMEOUT_SECS.to_string(),
    ));
    let mut workers: Vec<Child> = (0..2)
        .map(|_| spawn_worker_process(&db, &refs(&worker_env)))
        .collect();
    let client = ChaosClient::new(&base);
    let run = unique_run();
    let models = ["gpt-4o-mini", "claude-haiku", "llama3.1"];

    // Every eighth request kind: 0-3 provider calls, 4-5 provider streams, 6 a mock transient
    // failure (succeeds on its 3rd run), 7 a mock answer that is not the JSON asked for.
    let kinds = sizes.fault_requests;
    let body = {
        let run = run.clone();
        move |n: usize| -> Value {
            let prompt = format!("chaos faults {run} {n}");
            match n % 8 {
                0..=5 => json!({"prompt": prompt, "model": models[n % 3]}),
                6 => json!({"prompt": prompt, "model": "mock",
                            "mock": {"fail": "transient", "fail_attempts": 2}}),
                _ => json!({"prompt": prompt, "model": "mock", "mock": {"fail": "invalid_json"},
                            "parameters": {"response_format": {"type": "json_object"}}}),
            }
        }
    };
    let plain: Vec<usize> = (0..kinds).filter(|n| !matches!(n % 8, 4 | 5)).collect();
    let streamed: Vec<usize> = (0..kinds).filter(|n| matches!(n % 8, 4 | 5)).collect();
    let stream_tasks: Vec<_> = streamed
        .iter()
        .map(|&n| {
            let (client, body) = (client.clone(), body(n));
            tokio::spawn(async move {
                let mut reader = client.open_stream(&body).await;
                reader.until_terminal(Duration::from_secs(240)).await
            })
        })
        .collect();
    let bodies: Vec<Value> = plain.iter().map(|&n| body(n)).collect();
    let count = bodies.len();
    let load = submit_load(&client, 12, Until::Sent(count), move |i| {
        bodies[i % count].clone()
    })
    .await;

    let (mut streams_done, mut streams_error, mut streams_no_end, mut streams_differ) =
        (0, 0, 0, 0);
    let mut accepted = load.accepted();
    for task in stream_tasks {
        let events = task.await.unwrap();
        if let Some(id) = events
            .iter()
            .find(|m| m.event == "start")
            .and_then(|m| m.data["request_id"].as_str())
            .and_then(|s| s.parse().ok())
        {
            accepted.push(id);
        }
        match events.last().map(|m| m.event.as_str()) {
            Some("done") => {
                streams_done += 1;
                if output_of(&events) != full_text() {
                    streams_differ += 1;
                }
            }
            Some("error") => streams_error += 1,
            _ => streams_no_end += 1,
        }
    }
    let mut t = tally("provider faults", &db.pool, &accepted, sizes.settle).await;
    let truncated: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM generation_requests
         WHERE id = ANY($1) AND status = 'completed' AND provider <> 'mock' AND result IS DISTINCT FROM $2",
    )
    .bind(&accepted)
    .bind(full_text())
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let kind_count = |k: usize| (0..kinds).filter(|n| n % 8 == k).count() as i64;
    let (json_mode, invalid_completed, mock_retried_completed): (i64, i64, i64) = sqlx::query_as(
        "SELECT COUNT(*) FILTER (WHERE json_mode),
                COUNT(*) FILTER (WHERE json_mode AND status = 'completed'),
                COUNT(*) FILTER (WHERE model = 'mock' AND NOT json_mode AND status = 'completed')
         FROM (SELECT status, model,
                      COALESCE(parameters->'response_format'->>'type' = 'json_object', false) AS json_mode
               FROM generation_requests WHERE id = ANY($1)) r",
    )
    .bind(&accepted)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    if json_mode != kind_count(7) {
        t.problem(format!(
            "{json_mode} JSON-mode requests found, {} submitted",
            kind_count(7)
        ));
    }
    let calls: Vec<String> = fakes
        .iter()
        .zip(["openai", "anthropic", "ollama"])
        .map(|((fake, _), name)| format!("{name} {}", fake.received().len()))
        .collect();
    t.note(format!(
        "{} requests ({} streamed) over OpenAI / Anthropic / Ollama fakes cycling through {} replies \
         ({} successes, a 429 storm with Retry-After, 500, 503, a timeout, garbage, a cut stream, \
         a stream ending early, an empty answer) and mock faults; upstream calls: {}",
        accepted.len(),
        streamed.len(),
        FAULT_CYCLE.len(),
        FAULT_CYCLE.iter().filter(|f| matches!(f, Fault::Success)).count(),
        calls.join(", ")
    ));
    t.note(format!(
        "mock requests failing twice then succeeding: {mock_retried_completed} of {} completed \
         (the others met the mock provider's open circuit until the end of their chain)",
        kind_count(6)
    ));
    t.note(format!(
        "truncated or altered successes: {truncated}; JSON-mode answers that were not JSON yet completed: {invalid_completed}; \
         streams: done {streams_done}, error {streams_error}, no end {streams_no_end}, done but not the whole answer {streams_differ}"
    ));
    if load.statuses().keys().any(|k| k != "202") {
        t.problem(format!("submits refused: {}", describe(&load.statuses())));
    }
    if truncated > 0 {
        t.problem(format!(
            "{truncated} requests completed with a result other than the provider's whole answer"
        ));
    }
    if invalid_completed > 0 {
        t.problem(format!(
            "{invalid_completed} JSON-mode requests completed with an answer that is not JSON"
        ));
    }
    if streams_differ > 0 || streams_no_end > 0 {
        t.problem(format!(
            "{streams_differ} streams ended done without the whole answer, {streams_no_end} without a terminal event"
        ));
    }
    if t.completed == 0 {
        t.problem("nothing completed: the faults left no success to check");
    }
    still_running(&mut api, "the api", &mut t);
    for (i, worker) in workers.iter_mut().enumerate() {
        still_running(worker, &format!("worker {i}"), &mut t);
    }
    let _ = std::fs::remove_file(&models_file);
    t
}

/// Every scenario's name, in the order the suite runs them.
pub const SCENARIOS: [&str; 5] = [
    "worker-kills",
    "api-kills",
    "postgres-restart",
    "redis-restart",
    "provider-faults",
];

/// Runs one scenario by name.
pub async fn run(name: &str, sizes: &Sizes) -> Option<Tally> {
    Some(match name {
        "worker-kills" => worker_kills(sizes).await,
        "api-kills" => api_kills(sizes).await,
        "postgres-restart" => postgres_restart(sizes).await,
        "redis-restart" => redis_restart(sizes).await,
        "provider-faults" => provider_faults(sizes).await,
        _ => return None,
    })
}
