//! The provider the load scenarios pay: a fake OpenAI upstream that answers every call after a
//! latency and counts the calls it answered, and the judge of what they cost: provider calls
//! per completed request, and requests paid twice.
//!
//! A request may legitimately be paid twice only when the worker running it was killed between
//! the provider's answer and the commit of the result (nothing can store an answer that died
//! with its process); any other second answer for one request is a failure.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::report::Tally;
use crate::fake_upstream::{FakeUpstream, Received, Reply, openai};

/// The fake OpenAI of a load scenario.
pub(crate) struct PaidUpstream {
    fake: FakeUpstream,
}

/// The model the load asks for (served by the fake).
const MODEL: &str = "gpt-4o-mini";

impl PaidUpstream {
    /// A fake answering every call after `latency`.
    pub(crate) async fn start(latency: Duration) -> Self {
        let fake = FakeUpstream::start("/v1").await;
        let answer = openai::success("The ancient dragon sleeps beneath the mountain.", 12, 9);
        fake.always(Reply::Delayed(latency, Box::new(answer)));
        Self { fake }
    }

    /// The environment that points the api and the workers at it.
    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("OPENAI_API_KEY", "sk-chaos-0123456789".to_owned()),
            ("OPENAI_BASE_URL", self.fake.base_url.clone()),
        ]
    }

    /// Request `n` of a load named `run` (each prompt unique: no cache hit, no coalescing).
    pub(crate) fn body(run: &str, n: usize) -> Value {
        json!({"prompt": format!("chaos {run} {n}"), "model": MODEL})
    }

    /// Judges the calls this fake answered for the `accepted` requests ([`judge_payments`]).
    pub(crate) async fn judge(
        &self,
        pool: &PgPool,
        accepted: &[Uuid],
        killed: &[u32],
        t: &mut Tally,
    ) {
        let answered: Vec<Received> = self.fake.answered().into_iter().map(|(_, c)| c).collect();
        judge_payments(pool, accepted, &answered, killed, t).await;
    }
}

/// Counts the provider's successful answers `paid` for the `accepted` requests into `t`: calls
/// per completed request, and each request paid more than once that no kill of a worker in
/// `killed` (process ids) explains is a problem.
pub(crate) async fn judge_payments(
    pool: &PgPool,
    accepted: &[Uuid],
    paid: &[Received],
    killed: &[u32],
    t: &mut Tally,
) {
    let mut per_prompt: HashMap<String, usize> = HashMap::new();
    for call in paid {
        if let Some(prompt) = prompt_of(call) {
            *per_prompt.entry(prompt).or_insert(0) += 1;
        }
    }
    let rows: Vec<(String, String, Vec<String>)> = sqlx::query_as(
        "SELECT r.prompt, r.status::text,
                ARRAY(SELECT DISTINCT a.worker FROM generation_attempts a WHERE a.request_id = r.id)
         FROM generation_requests r WHERE r.id = ANY($1)",
    )
    .bind(accepted)
    .fetch_all(pool)
    .await
    .unwrap();
    let killed: HashSet<String> = killed.iter().map(u32::to_string).collect();
    let (mut calls, mut twice, mut explained) = (0, 0, 0);
    let completed = rows.iter().filter(|(_, s, _)| s == "completed").count();
    for (prompt, _, workers) in &rows {
        let answers = per_prompt.get(prompt).copied().unwrap_or(0);
        calls += answers;
        if answers > 1 {
            twice += 1;
            // Worker names are `<host>-<pid>-<suffix>`.
            if workers
                .iter()
                .any(|w| w.split('-').nth(1).is_some_and(|pid| killed.contains(pid)))
            {
                explained += 1;
            }
        }
    }
    t.provider_calls = Some((calls, completed));
    t.paid_twice = twice - explained;
    t.note(format!(
        "provider answers paid for: {calls} for {completed} completed requests ({}); \
         requests paid more than once: {twice}, {explained} of them run by a worker killed \
         (a kill between the answer and the commit calls the provider again)",
        per_completed(calls, completed)
    ));
    if twice > explained {
        t.problem(format!(
            "{} requests were paid more than once though no kill of their worker explains it",
            twice - explained
        ));
    }
}

/// Calls per completed request, as the report prints it.
pub(crate) fn per_completed(calls: usize, completed: usize) -> String {
    if completed == 0 {
        return "no request completed".into();
    }
    format!(
        "{:.3} per completed request",
        calls as f64 / completed as f64
    )
}

/// The user prompt of an OpenAI chat call (its last message).
fn prompt_of(call: &Received) -> Option<String> {
    call.body["messages"]
        .as_array()?
        .last()?
        .get("content")?
        .as_str()
        .map(str::to_owned)
}
