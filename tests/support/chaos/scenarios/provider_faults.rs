//! The provider-faults scenario: requests to fake OpenAI, Anthropic and Ollama upstreams that
//! cycle through faults, some streamed, plus the mock provider's own faults; no request may
//! end as a truncated success, and JSON mode never completes with an answer that is not JSON.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::process::Child;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::chaos::Sizes;
use crate::chaos::faulty_upstream::{
    ANTHROPIC, FAULT_CYCLE, FAULTS_CALL_TIMEOUT_SECS, FAULTS_CIRCUIT_COOLDOWN_SECS, Fault, OLLAMA,
    OPENAI, Wire, faulty_reply, full_text, short_cooldown_registry,
};
use crate::chaos::judge::tally;
use crate::chaos::load::{ChaosClient, Load, Until, submit_load, unique_run};
use crate::chaos::report::{Tally, describe};
use crate::chaos::stack::{base_env, refs, spawn_worker, still_running};
use crate::chaos::upstream::judge_payments;
use crate::fake_upstream::FakeUpstream;
use crate::sse::{SseMessage, output_of};
use crate::{TestDb, spawn_api_process_with};

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
    let env = fault_env(&models_file, &fakes);
    let (mut api, base) = spawn_api_process_with(&db, &refs(&env)).await;
    let mut worker_env = env.clone();
    worker_env.push((
        "PROVIDER_TIMEOUT_SECS",
        FAULTS_CALL_TIMEOUT_SECS.to_string(),
    ));
    let mut workers: Vec<Child> = (0..2)
        .map(|_| spawn_worker(&db, &refs(&worker_env)))
        .collect();
    let client = ChaosClient::new(&base);
    let run = unique_run();

    let kinds = sizes.fault_requests;
    let body = |n: usize| fault_request(&run, n);
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

    let mut accepted = load.accepted();
    let streams = read_streams(stream_tasks, &mut accepted).await;
    let mut t = tally("provider faults", &db.pool, &accepted, sizes.settle).await;
    let stored = Stored::read(&db.pool, &accepted).await;
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
    judge_outcomes(&mut t, kinds, &stored, &streams, &load);
    // The fakes' successful answers (a success delayed past the call's timeout is not one: the
    // worker hung up first); no worker dies here, so none may be paid twice.
    let paid: Vec<_> = fakes
        .iter()
        .flat_map(|(fake, _)| fake.answered())
        .filter(|(n, _)| matches!(FAULT_CYCLE[n % FAULT_CYCLE.len()], Fault::Success))
        .map(|(_, call)| call)
        .collect();
    judge_payments(&db.pool, &accepted, &paid, &[], &mut t).await;
    still_running(&mut api, "the api", &mut t);
    for (i, worker) in workers.iter_mut().enumerate() {
        still_running(worker, &format!("worker {i}"), &mut t);
    }
    let _ = std::fs::remove_file(&models_file);
    t
}

/// The processes' environment: the shortened registry, and keys and URLs of the three fakes.
fn fault_env(
    models_file: &Path,
    fakes: &[(FakeUpstream, &Wire); 3],
) -> Vec<(&'static str, String)> {
    let providers = [
        ("MODELS_FILE", models_file.display().to_string()),
        ("OPENAI_API_KEY", "sk-chaos-0123456789".to_owned()),
        ("OPENAI_BASE_URL", fakes[0].0.base_url.clone()),
        ("ANTHROPIC_API_KEY", "sk-ant-chaos-0123456789".to_owned()),
        ("ANTHROPIC_BASE_URL", fakes[1].0.base_url.clone()),
        ("OLLAMA_URL", fakes[2].0.base_url.clone()),
    ];
    base_env(&providers)
}

/// Request `n` of the scenario. Every eighth request kind: 0-3 provider calls, 4-5 provider
/// streams, 6 a mock transient failure (succeeds on its 3rd run), 7 a mock answer that is not
/// the JSON asked for.
fn fault_request(run: &str, n: usize) -> Value {
    let models = ["gpt-4o-mini", "claude-haiku", "llama3.1"];
    let prompt = format!("chaos faults {run} {n}");
    match n % 8 {
        0..=5 => json!({"prompt": prompt, "model": models[n % 3]}),
        6 => json!({"prompt": prompt, "model": "mock",
                    "mock": {"fail": "transient", "fail_attempts": 2}}),
        _ => json!({"prompt": prompt, "model": "mock", "mock": {"fail": "invalid_json"},
                    "parameters": {"response_format": {"type": "json_object"}}}),
    }
}

/// How the streamed requests ended.
#[derive(Debug, Default, Clone, Copy)]
struct StreamEnds {
    done: usize,
    error: usize,
    no_end: usize,
    /// Ended `done` with an output other than the providers' whole answer.
    differ: usize,
}

/// Reads every stream to its end; adds the id of each one that started to `accepted`.
async fn read_streams(
    tasks: Vec<JoinHandle<Vec<SseMessage>>>,
    accepted: &mut Vec<Uuid>,
) -> StreamEnds {
    let mut ends = StreamEnds::default();
    for task in tasks {
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
                ends.done += 1;
                if output_of(&events) != full_text() {
                    ends.differ += 1;
                }
            }
            Some("error") => ends.error += 1,
            _ => ends.no_end += 1,
        }
    }
    ends
}

/// What the rows of the accepted requests say.
#[derive(Debug, Clone, Copy)]
struct Stored {
    /// Provider requests completed with a result other than the whole answer.
    truncated: i64,
    json_mode: i64,
    /// JSON-mode requests completed (their answers were never JSON).
    invalid_completed: i64,
    /// Mock requests failing twice then succeeding that completed.
    mock_retried_completed: i64,
}

impl Stored {
    async fn read(pool: &PgPool, accepted: &[Uuid]) -> Self {
        let truncated: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM generation_requests
             WHERE id = ANY($1) AND status = 'completed' AND provider <> 'mock' AND result IS DISTINCT FROM $2",
        )
        .bind(accepted)
        .bind(full_text())
        .fetch_one(pool)
        .await
        .unwrap();
        let (json_mode, invalid_completed, mock_retried_completed): (i64, i64, i64) = sqlx::query_as(
            "SELECT COUNT(*) FILTER (WHERE json_mode),
                    COUNT(*) FILTER (WHERE json_mode AND status = 'completed'),
                    COUNT(*) FILTER (WHERE model = 'mock' AND NOT json_mode AND status = 'completed')
             FROM (SELECT status, model,
                          COALESCE(parameters->'response_format'->>'type' = 'json_object', false) AS json_mode
                   FROM generation_requests WHERE id = ANY($1)) r",
        )
        .bind(accepted)
        .fetch_one(pool)
        .await
        .unwrap();
        Self {
            truncated,
            json_mode,
            invalid_completed,
            mock_retried_completed,
        }
    }
}

/// Notes what became of the mock faults, the stored results and the streams; each truncated
/// success, completed non-JSON answer, unended or incomplete stream, refused submit, or a run
/// with nothing completed is a problem.
fn judge_outcomes(t: &mut Tally, kinds: usize, stored: &Stored, streams: &StreamEnds, load: &Load) {
    let kind_count = |k: usize| (0..kinds).filter(|n| n % 8 == k).count() as i64;
    let Stored {
        truncated,
        json_mode,
        invalid_completed,
        mock_retried_completed,
    } = *stored;
    let StreamEnds {
        done: streams_done,
        error: streams_error,
        no_end: streams_no_end,
        differ: streams_differ,
    } = *streams;
    if json_mode != kind_count(7) {
        t.problem(format!(
            "{json_mode} JSON-mode requests found, {} submitted",
            kind_count(7)
        ));
    }
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
}
