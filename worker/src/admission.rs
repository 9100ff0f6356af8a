//! Admission control: a provider call first takes its endpoint's budget, shared by every
//! worker process through Redis, so that the service's own traffic stays within what the
//! provider allows (`[endpoints.<name>.limits]`) instead of meeting it as a storm of 429s.
//!
//! One script (`admission.lua`, one round trip) checks and takes, all or nothing: one request
//! of the requests-per-minute budget, the tokens the call may use (prompt estimate + output
//! limit) of the tokens-per-minute budget, and a slot among the calls at once. Both per-minute
//! budgets are paced evenly (a cell-rate pacer: 120 per minute is one call every 500 ms),
//! since providers enforce their per-minute limits over shorter periods too.
//!
//! Refused callers stand in a line per endpoint, interactive requests before batch items and
//! each class in order of arrival, and the budget goes to them in that order: a caller's
//! answer is how long until its turn, which it waits in place (its job keeps its worker slot,
//! no call goes out) and then asks again with the same [`Ticket`]. A caller whose turn is
//! further than [`WAIT_IN_PLACE`] leaves the line and goes back to the queue, due at a time
//! promised to it (callers sent back together get successive ones, so each comes back about
//! once). Waiting in place keeps the budget spent at its pace: a turn is never lost to a
//! caller that is still in the queue when its time comes.
//!
//! A slot is a member of a sorted set scored by when its hold expires: renewed while the call
//! runs, removed when it ends, and left to expire (within `SLOT_HOLD`) when its worker dies.
//!
//! An upstream 429 to a call admitted under the current limits halves the endpoint's limits
//! for every worker (down to a floor), held for a while, then recovered linearly: a limit
//! declared too high converges on what the provider allows.
//!
//! Redis unreachable: calls are let through unadmitted (as with no limits), counted in
//! `llm_budget_unchecked_total` and logged; admission never stalls a job.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use llm_shared::budget::EndpointLimits;
use llm_shared::kv::KvConnection;
use llm_shared::metrics::Metrics;

use crate::providers::clients::Route;

/// The script (see the file for its keys, arguments and answers).
const SCRIPT: &str = include_str!("admission.lua");

/// How long a slot is held without renewal: a dead worker's slots free themselves this soon.
const SLOT_HOLD: Duration = Duration::from_secs(10);
/// How often a running call renews its slot.
const SLOT_RENEW: Duration = Duration::from_secs(3);
/// How long a call is taken to hold its slot until the endpoint's calls were measured.
const SLOT_WAIT: Duration = Duration::from_millis(1000);
/// How long the limits stay cut after an upstream 429, then how long they take to recover.
const CUT_HOLD: Duration = Duration::from_secs(60);
const CUT_RECOVERY: Duration = Duration::from_secs(60);
/// The furthest ahead a caller sent back to the queue is told to come back (a promise made
/// for callers that were cancelled since is forgotten by then).
const PROMISE_CAP: Duration = Duration::from_secs(600);
/// How long past its turn a waiting caller keeps its place in the line without asking again
/// (its worker died, or is that slow): then the callers behind it move up.
const PLACE_GRACE: Duration = Duration::from_secs(2);
/// How late a per-minute turn may still be taken, so that a caller waking a few ms after its
/// turn loses none (it is also the largest burst after an idle spell: 50 ms of calls).
const LATE_TURN: Duration = Duration::from_millis(50);
/// The smallest share of the declared limits a run of 429s can cut them to.
const CUT_FLOOR: f64 = 1.0 / 16.0;
/// How long Redis may take to answer an admission before the call goes ahead unadmitted.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// At most one warning per this interval while Redis is unreachable.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The longest a caller waits for its turn in place (its job keeps its worker slot); one whose
/// turn is further back hands its request back to the queue. At 3,000 calls a minute, 5 s is
/// 250 callers waiting across all workers: enough that the budget never waits for a caller.
pub const WAIT_IN_PLACE: Duration = Duration::from_secs(5);

/// Whose line a caller stands in: interactive requests go before batch items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Interactive = 0,
    Batch = 1,
}

/// One call's place in its endpoint's line, kept while it waits in place so that asking again
/// keeps its turn. Dropped while in the line (the request was cancelled, or the job stopped),
/// it leaves the line, so the callers behind it move up at once.
#[derive(Debug)]
pub struct Ticket {
    holder: String,
    class: Class,
    /// Where it stands in line, if it does.
    line: Option<Budget>,
}

impl Ticket {
    pub fn new(class: Class) -> Self {
        Self {
            holder: ulid::Ulid::generate().to_string(),
            class,
            line: None,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(budget) = self.line.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let holder = std::mem::take(&mut self.holder);
            runtime.spawn(async move {
                budget
                    .run("leave", [holder, "0".into(), "0".into(), "0".into()])
                    .await;
            });
        }
    }
}

/// Where a call goes, for its budget: the endpoint's name (the key of its shared budget and
/// the `endpoint` label of its metrics) and its declared limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub name: String,
    pub limits: EndpointLimits,
}

/// The endpoint a call goes to: the registry's endpoint the call was routed to, named as in
/// the registry (the budget key), with its declared limits (none for the mock).
pub fn endpoint_of(route: &Route<'_>) -> Endpoint {
    Endpoint {
        name: route.endpoint.to_owned(),
        limits: route
            .settings
            .map(|settings| settings.limits)
            .unwrap_or_default(),
    }
}

/// What the budget said.
#[derive(Debug)]
pub enum Admit {
    /// Call now; the permit holds the slot until released (or dropped).
    Granted(Permit),
    /// Not before `after`; `reason` is `requests`, `tokens` or `concurrency`. `in_line`: wait
    /// in place and ask again with the same ticket; otherwise the call's turn is further than
    /// [`WAIT_IN_PLACE`] and its request goes back to the queue for `after`.
    Wait {
        after: Duration,
        reason: &'static str,
        in_line: bool,
    },
}

/// The admission control of one worker process; cheap to clone.
#[derive(Clone)]
pub struct Admission {
    conn: Option<KvConnection>,
    prefix: String,
    script: Arc<redis::Script>,
    metrics: Arc<Metrics>,
    /// Unix ms of the last "Redis unreachable" warning.
    warned_at: Arc<AtomicU64>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The script's answer to `take`: admitted, wait ms, reason, effective rpm, tpm and
/// concurrency, Redis' time in ms, still in line.
type TakeReply = (i64, i64, i64, i64, i64, i64, i64, i64);

impl Admission {
    /// Admission through `client` (keys under `prefix`); `None`: every call is let through.
    pub fn new(client: Option<redis::Client>, prefix: &str, metrics: Arc<Metrics>) -> Self {
        let conn = client.and_then(|client| {
            llm_shared::kv::lazy_connection(client, REDIS_TIMEOUT)
                .inspect_err(|err| tracing::warn!(error = %err, "admission control: no Redis connection; calls go unadmitted"))
                .ok()
        });
        Self {
            conn,
            prefix: prefix.to_owned(),
            script: Arc::new(redis::Script::new(SCRIPT)),
            metrics,
            warned_at: Arc::new(AtomicU64::new(0)),
        }
    }

    fn key(&self, endpoint: &Endpoint) -> String {
        format!("{}budget:{}", self.prefix, endpoint.name)
    }

    /// Takes the budget of one call to `endpoint` needing `tokens`, all or nothing, for the
    /// caller holding `ticket` (the same one each time it asks again after waiting).
    pub async fn admit(&self, endpoint: &Endpoint, tokens: u32, ticket: &mut Ticket) -> Admit {
        let limits = endpoint.limits;
        if limits.is_unlimited() {
            return Admit::Granted(Permit::unchecked());
        }
        let Some(conn) = &self.conn else {
            return self.unchecked(endpoint, "no Redis connection");
        };
        let holder = ticket.holder.clone();
        let key = self.key(endpoint);
        let mut invocation = self.script.key(&key);
        invocation
            .arg("take")
            .arg(limits.requests_per_minute.unwrap_or(0))
            .arg(limits.tokens_per_minute.unwrap_or(0))
            .arg(limits.max_concurrency.unwrap_or(0))
            .arg(tokens)
            .arg(&holder)
            .arg(millis(SLOT_HOLD))
            .arg(millis(SLOT_WAIT));
        with_cut_timing(&mut invocation);
        invocation
            .arg(ticket.class as u8)
            .arg(millis(PLACE_GRACE))
            .arg(millis(LATE_TURN))
            .arg(millis(PROMISE_CAP));
        let mut conn = conn.clone();
        let reply: Result<TakeReply, _> = invocation.invoke_async(&mut conn).await;
        let (admitted, wait_ms, reason, rpm, tpm, conc, now, in_line) = match reply {
            Ok(reply) => reply,
            Err(err) => return self.unchecked(endpoint, &err.to_string()),
        };
        self.export_limits(endpoint, rpm, tpm, conc);
        let budget = Budget {
            conn,
            script: self.script.clone(),
            key,
        };
        ticket.line = (in_line == 1).then(|| budget.clone());
        if admitted == 1 {
            return Admit::Granted(Permit {
                budget: Some(budget),
                slot: (conc > 0).then_some(holder),
                tpm: u32::try_from(tpm).unwrap_or(0),
                tokens,
                admitted_at: now,
            });
        }
        let reason = match reason {
            1 => "requests",
            2 => "tokens",
            _ => "concurrency",
        };
        self.metrics
            .budget_waits
            .with_label_values(&[endpoint.name.as_str(), reason])
            .inc();
        Admit::Wait {
            after: Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0).max(1)),
            reason,
            in_line: in_line == 1,
        }
    }

    /// The provider answered 429 to a call admitted under `permit`: the endpoint's limits are
    /// cut for every worker (unless a cut since that call's admission already answered it).
    pub async fn throttled(&self, endpoint: &Endpoint, permit: &Permit) {
        let (Some(conn), false) = (&self.conn, endpoint.limits.is_unlimited()) else {
            return;
        };
        let mut invocation = self.script.key(self.key(endpoint));
        invocation
            .arg("throttle")
            .arg(CUT_FLOOR)
            .arg(permit.admitted_at)
            .arg(0)
            .arg(0)
            .arg(0)
            .arg(0)
            .arg(0);
        with_cut_timing(&mut invocation);
        let mut conn = conn.clone();
        match invocation.invoke_async::<i64>(&mut conn).await {
            Ok(per_mille) if per_mille <= 0 => {
                tracing::debug!(endpoint = %endpoint.name, "provider answered 429 to a call admitted before the last cut");
            }
            Ok(per_mille) => {
                self.metrics
                    .budget_throttles
                    .with_label_values(&[endpoint.name.as_str()])
                    .inc();
                tracing::info!(
                    endpoint = %endpoint.name,
                    share = per_mille as f64 / 1000.0,
                    "provider answered 429: its limits are cut for every worker"
                );
            }
            Err(err) => {
                tracing::warn!(endpoint = %endpoint.name, error = %err, "admission control: could not cut the limits after a 429");
            }
        }
    }

    /// Redis did not answer: the call goes ahead as if the endpoint had no limits.
    fn unchecked(&self, endpoint: &Endpoint, why: &str) -> Admit {
        self.metrics
            .budget_unchecked
            .with_label_values(&[endpoint.name.as_str()])
            .inc();
        let now = unix_millis();
        let last = self.warned_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= millis(WARN_EVERY)
            && self
                .warned_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(endpoint = %endpoint.name, error = why, "admission control: Redis unavailable; provider calls go ahead unadmitted");
        }
        Admit::Granted(Permit::unchecked())
    }

    fn export_limits(&self, endpoint: &Endpoint, rpm: i64, tpm: i64, conc: i64) {
        for (limit, value) in [
            ("requests_per_minute", rpm),
            ("tokens_per_minute", tpm),
            ("max_concurrency", conc),
        ] {
            if value > 0 {
                self.metrics
                    .budget_limit
                    .with_label_values(&[endpoint.name.as_str(), limit])
                    .set(value);
            }
        }
    }
}

/// The hold and recovery of a cut and the longest wait in place, which every mode of the
/// script takes as ARGV[9], [10] and [11].
fn with_cut_timing(invocation: &mut redis::ScriptInvocation<'_>) {
    invocation
        .arg(millis(CUT_HOLD))
        .arg(millis(CUT_RECOVERY))
        .arg(millis(WAIT_IN_PLACE));
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}

/// A call's taken budget: its slot among the calls at once, if the endpoint limits them, and
/// the tokens taken, corrected when the call ends.
#[derive(Debug)]
pub struct Permit {
    /// Where the budget was taken (`None`: unadmitted).
    budget: Option<Budget>,
    /// The slot's holder id, if a slot was taken.
    slot: Option<String>,
    /// The tokens-per-minute limit the tokens were taken under (0: not limited).
    tpm: u32,
    tokens: u32,
    /// Redis' time of the admission, in ms (0: unadmitted).
    admitted_at: i64,
}

#[derive(Clone)]
struct Budget {
    conn: KvConnection,
    script: Arc<redis::Script>,
    key: String,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Budget {
    /// One mode of the script on this budget, its answer ignored (logged at debug).
    async fn run(&self, mode: &str, args: [String; 4]) {
        let mut invocation = self.script.key(&self.key);
        invocation.arg(mode);
        for arg in args {
            invocation.arg(arg);
        }
        // ARGV[6..=8] belong to `take` alone
        invocation.arg(0).arg(0).arg(0);
        with_cut_timing(&mut invocation);
        let mut conn = self.conn.clone();
        if let Err(err) = invocation.invoke_async::<i64>(&mut conn).await {
            tracing::debug!(mode, error = %err, "admission control: a budget update failed (slots expire on their own)");
        }
    }
}

impl Permit {
    /// A call let through without admission.
    fn unchecked() -> Self {
        Self {
            budget: None,
            slot: None,
            tpm: 0,
            tokens: 0,
            admitted_at: 0,
        }
    }

    /// Keeps the slot held while the call runs: renews it for ever (run it alongside the
    /// call). Without a slot, never resolves either.
    pub async fn keep_alive(&self) -> std::convert::Infallible {
        let (Some(budget), Some(holder)) = (&self.budget, &self.slot) else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(SLOT_RENEW).await;
            let args = [
                holder.clone(),
                millis(SLOT_HOLD).to_string(),
                "0".into(),
                "0".into(),
            ];
            budget.run("renew", args).await;
        }
    }

    /// The call ended: its slot is freed at once, and the tokens taken are corrected to what
    /// it used (`used`, when the provider answered).
    pub async fn release(mut self, used: Option<u32>) {
        let delta = match used {
            Some(used) if self.tpm > 0 => i64::from(used) - i64::from(self.tokens),
            _ => 0,
        };
        let slot = self.slot.take();
        if let Some(budget) = self.budget.take()
            && (slot.is_some() || delta != 0)
        {
            let args = [
                slot.unwrap_or_default(),
                delta.to_string(),
                self.tpm.to_string(),
                self.admitted_at.to_string(),
            ];
            budget.run("release", args).await;
        }
    }
}

impl Drop for Permit {
    /// A call dropped mid-flight (its request cancelled) frees its slot too.
    fn drop(&mut self) {
        if let (Some(budget), Some(holder)) = (self.budget.take(), self.slot.take())
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                budget
                    .run("release", [holder, "0".into(), "0".into(), "0".into()])
                    .await;
            });
        }
    }
}
