//! The message hub (HTTP, `MESSAGE_HUB_URL`): delivery of the outbox.
//!
//! Events are written to `outbox_events` in the transaction of the state change they report;
//! every worker runs a delivery loop that POSTs them to `{MESSAGE_HUB_URL}/events` as CloudEvents
//! 1.0 in structured mode ([`Envelope`], `Content-Type: application/cloudevents+json`; the
//! fields the hub read before, `id`, `type`, `time`, `source` and `data`, keep their names and
//! values; `subject` is the request's id). Delivery is at least once (a worker that dies
//! mid-delivery leaves the event undelivered, and it is sent again; receivers drop duplicates
//! by `id`), in order per request (an event waits while an earlier one of its request is
//! undelivered), with exponential backoff while the hub fails, so a hub down for an hour loses
//! nothing.
//!
//! An event the hub refuses `OUTBOX_MAX_ATTEMPTS` times (about an hour at the default, with the
//! backoff) is moved to `outbox_dead_letters` in the transaction that records its last failure:
//! one event the hub will never take must not hold back its request's later events forever.
//! Admins list and replay dead letters (`llm_shared::dead_letters`).

use secrecy::{ExposeSecret, SecretString};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{FromRow, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Undelivered events read per round.
const WINDOW: i64 = 200;
/// Deliveries in flight at once (each request's own events one after another).
const IN_FLIGHT: usize = 16;
/// Longest wait before retrying an event.
const MAX_BACKOFF_SECS: f64 = 300.0;
/// Longest time the loop reads only new events after a pass over the backlog found every event
/// waiting out its backoff (see [`Scan`]): how late a request's new event may go when an event
/// of it was held back only by another worker's delivery.
const QUIET_AT_MOST: Duration = Duration::from_secs(5);
/// The `source` of every envelope.
pub const SOURCE: &str = "llm-service";

#[derive(Debug, FromRow)]
struct Pending {
    seq: i64,
    id: Uuid,
    request_id: Option<Uuid>,
    /// The trace of the api request that submitted the event's request.
    trace_id: Option<String>,
    #[sqlx(rename = "type")]
    kind: String,
    payload: Value,
    created_at: DateTime<Utc>,
    attempts: i32,
    /// Not waiting out a backoff.
    due: bool,
    next_attempt_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct HubClient {
    http: reqwest::Client,
    /// `{MESSAGE_HUB_URL}/events`, made once (a URL given as text is parsed per request).
    url: reqwest::Url,
    /// `MESSAGE_HUB_TOKEN`, sent as a bearer token with every event, when set.
    token: Option<SecretString>,
}

/// What the hub receives for one event: a CloudEvents 1.0 envelope, structured mode.
#[derive(Serialize)]
struct Envelope<'a> {
    specversion: &'static str,
    id: Uuid,
    #[serde(rename = "type")]
    kind: &'a str,
    time: DateTime<Utc>,
    source: &'static str,
    /// The request the event is about, when it is about one.
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<Uuid>,
    datacontenttype: &'static str,
    /// CloudEvents' distributed tracing extension: the trace of the event's request, as the
    /// `traceparent` header also carries it.
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<String>,
    data: &'a Value,
}

/// The media type of a CloudEvent in structured mode, JSON format.
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";

impl HubClient {
    pub fn new(base_url: &reqwest::Url, token: Option<SecretString>) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        // `{base}/events` whatever the base's path (`join` would replace its last segment).
        let mut url = base_url.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().push("events");
        }
        Self { http, url, token }
    }

    async fn post(&self, event: &Pending) -> Result<(), String> {
        use tracing::Instrument;
        let span = tracing::info_span!(
            "hub delivery",
            otel.name = %format_args!("send {}", event.kind),
            otel.kind = "producer",
            messaging.operation.type = "send",
            cloudevents.event_id = %event.id,
            cloudevents.event_type = %event.kind,
        );
        // The event goes on in its request's trace: under the span exported for this delivery,
        // else (no export) under the stored trace id, so the hub's logs join ours.
        let traceparent = match (&event.trace_id, event.request_id) {
            (Some(trace_id), Some(request)) => {
                llm_shared::telemetry::set_remote_trace(&span, trace_id, request)
                    .then(|| span.in_scope(llm_shared::telemetry::current_traceparent))
                    .flatten()
                    .or_else(|| llm_shared::telemetry::traceparent_of(trace_id, request))
            }
            _ => None,
        };
        self.send(event, traceparent).instrument(span).await
    }

    async fn send(&self, event: &Pending, traceparent: Option<String>) -> Result<(), String> {
        let envelope = Envelope {
            specversion: "1.0",
            id: event.id,
            kind: &event.kind,
            time: event.created_at,
            source: SOURCE,
            subject: event.request_id,
            datacontenttype: "application/json",
            traceparent: traceparent.clone(),
            data: &event.payload,
        };
        let body = serde_json::to_vec(&envelope).map_err(|e| e.to_string())?;
        let mut request = self
            .http
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, CLOUDEVENTS_JSON)
            .body(body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose_secret());
        }
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        match request.send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("the hub answered HTTP {}", r.status().as_u16())),
            Err(e) if e.is_timeout() => Err("the hub did not answer in time".into()),
            Err(_) => Err("could not reach the hub".into()),
        }
    }
}

/// Where a delivery loop's walk through the backlog stands between rounds. A round reads the first
/// [`WINDOW`] undelivered events after `after_seq`; while windows come back full, the next
/// round reads on from there, carrying the requests that an undelivered event before the
/// cursor holds back (so a front of events waiting out their backoff never stalls the rest).
///
/// A pass over the whole backlog that sent nothing (every event waiting out its backoff, as
/// while the hub is down) is not read again until the first backoff ends (at most
/// [`QUIET_AT_MOST`]): meanwhile the rounds read only the events written since, the requests
/// held back still held. Reading the backlog every half second cost ~18% of a core of
/// PostgreSQL with 4,000 events waiting, and grew with the backlog for as long as the hub was
/// down (`hub::a_backlog_waiting_out_its_backoff_is_not_read_again_until_it_is_due`).
#[derive(Debug, Default)]
pub struct Scan {
    after_seq: i64,
    held_back: HashSet<Uuid>,
    /// This pass sent an event.
    sent: bool,
    /// The earliest next try of the events this pass (or quiet spell) saw waiting.
    next_due: Option<DateTime<Utc>>,
    /// Until when rounds read only new events (a quiet spell), if they do.
    quiet_until: Option<DateTime<Utc>>,
}

/// What one round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    pub delivered: usize,
    /// Undelivered events read.
    pub read: usize,
    /// The window was full: more undelivered events follow it.
    pub more: bool,
}

/// Sends the events that are due, in one window of the backlog (see [`Scan`]).
///
/// The window is read in `seq` order through the undelivered-events index, and the order per
/// request is decided here, not by the planner: an event goes only if every earlier undelivered
/// event of its request goes before it in this round. A query asking PostgreSQL for "the first
/// undelivered event of each request" would be planned from the statistics, and with stale ones
/// read the whole backlog every round. Requests' chains are posted side by side, each
/// chain in order; the outcomes are written in two statements.
pub async fn deliver_due(
    pool: &PgPool,
    hub: &HubClient,
    scan: &mut Scan,
    max_attempts: u32,
) -> Result<Round, sqlx::Error> {
    let window: Vec<Pending> = sqlx::query_as(
        "SELECT seq, id, request_id, type, payload, created_at, attempts,
                next_attempt_at <= NOW() AS due, next_attempt_at,
                (SELECT r.trace_id FROM generation_requests r WHERE r.id = request_id) AS trace_id
         FROM outbox_events
         WHERE delivered_at IS NULL AND seq > $1
         ORDER BY seq LIMIT $2",
    )
    .bind(scan.after_seq)
    .bind(WINDOW)
    .fetch_all(pool)
    .await?;
    let more = window.len() as i64 == WINDOW;
    let read = window.len();
    let last_seq = window.last().map_or(scan.after_seq, |e| e.seq);

    let mut chains = chains_of(window, scan);
    if chains.is_empty() {
        scan.advance(more, last_seq, Utc::now());
        return Ok(Round {
            delivered: 0,
            read,
            more,
        });
    }
    scan.sent = true;

    let mut tx = pool.begin().await?;
    // Locked for this round: another worker's delivery skips them (and we skip what it holds).
    let wanted: Vec<i64> = chains.iter().flatten().map(|e| e.seq).collect();
    let locked: HashSet<i64> = sqlx::query_scalar(
        "SELECT seq FROM outbox_events WHERE seq = ANY($1) AND delivered_at IS NULL
         FOR UPDATE SKIP LOCKED",
    )
    .bind(&wanted)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    for chain in &mut chains {
        // An event another worker's delivery holds (or has just delivered) ends its request's chain.
        if let Some(cut) = chain.iter().position(|e| !locked.contains(&e.seq)) {
            if let Some(request) = chain[cut].request_id {
                scan.held_back.insert(request);
            }
            chain.truncate(cut);
        }
    }

    let outcomes: Vec<(i64, Option<Failure>)> =
        futures::stream::iter(chains.into_iter().map(|chain| post_chain(hub, chain)))
            .buffer_unordered(IN_FLIGHT)
            .flat_map(futures::stream::iter)
            .collect()
            .await;

    let delivered = record_outcomes(&mut tx, &outcomes, max_attempts).await?;
    tx.commit().await?;
    for (_, failure) in &outcomes {
        // A dead letter holds nothing back: its request's later events go in the next round.
        let Some(failure) = failure.as_ref().filter(|f| !f.is_dead(max_attempts)) else {
            continue;
        };
        scan.waiting_until(
            Utc::now() + chrono::Duration::milliseconds((failure.backoff * 1000.0) as i64),
        );
        if let Some(request) = failure.request {
            scan.held_back.insert(request);
        }
    }
    scan.advance(more, last_seq, Utc::now());
    Ok(Round {
        delivered,
        read,
        more,
    })
}

/// Each request's events of `window` in `seq` order, up to the first that may not go now (not
/// due, or its request held back); events of no request stand alone.
fn chains_of(window: Vec<Pending>, scan: &mut Scan) -> Vec<Vec<Pending>> {
    let mut chains: Vec<Vec<Pending>> = Vec::new();
    let mut chain_of: HashMap<Uuid, usize> = HashMap::new();
    for event in window {
        if !event.due {
            scan.waiting_until(event.next_attempt_at);
        }
        match event.request_id {
            Some(request) if scan.held_back.contains(&request) => {}
            Some(request) if !event.due => {
                scan.held_back.insert(request);
            }
            Some(request) => match chain_of.get(&request) {
                Some(&i) => chains[i].push(event),
                None => {
                    chain_of.insert(request, chains.len());
                    chains.push(vec![event]);
                }
            },
            None if event.due => chains.push(vec![event]),
            None => {}
        }
    }
    chains
}

/// Writes a round's outcomes: delivered events deleted, failed ones given their next attempt,
/// or moved to the dead letters when that was their last. Returns how many were delivered.
async fn record_outcomes(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    outcomes: &[(i64, Option<Failure>)],
    max_attempts: u32,
) -> Result<usize, sqlx::Error> {
    let delivered: Vec<i64> = outcomes
        .iter()
        .filter(|(_, f)| f.is_none())
        .map(|(seq, _)| *seq)
        .collect();
    let (dead, failed): (Vec<Failed>, Vec<Failed>) = outcomes
        .iter()
        .filter_map(|(seq, f)| f.as_ref().map(|f| (*seq, f)))
        .partition(|(_, f)| f.is_dead(max_attempts));
    if !delivered.is_empty() {
        // Gone once the hub has it: nothing reads a delivered event, and a mark was a second
        // copy of the row (see migration 20261205000002).
        sqlx::query("DELETE FROM outbox_events WHERE seq = ANY($1)")
            .bind(&delivered)
            .execute(&mut **tx)
            .await?;
    }
    if !failed.is_empty() {
        sqlx::query(
            "UPDATE outbox_events o
             SET attempts = o.attempts + 1, last_error = f.reason,
                 next_attempt_at = NOW() + make_interval(secs => f.backoff)
             FROM unnest($1::int8[], $2::text[], $3::float8[]) AS f(seq, reason, backoff)
             WHERE o.seq = f.seq",
        )
        .bind(failed.iter().map(|(seq, _)| *seq).collect::<Vec<_>>())
        .bind(
            failed
                .iter()
                .map(|(_, f)| f.reason.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(failed.iter().map(|(_, f)| f.backoff).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }
    if !dead.is_empty() {
        let buried: Vec<(Uuid, String)> = sqlx::query_as(BURY)
            .bind(dead.iter().map(|(seq, _)| *seq).collect::<Vec<_>>())
            .bind(
                dead.iter()
                    .map(|(_, f)| f.reason.as_str())
                    .collect::<Vec<_>>(),
            )
            .fetch_all(&mut **tx)
            .await?;
        for (id, kind) in buried {
            tracing::warn!(event.id = %id, event.type = kind, max_attempts, "the hub refused an event on every attempt: moved to the dead letters (replay: POST /api/v1/admin/outbox/dead/replay)");
        }
    }
    Ok(delivered.len())
}

/// An event that failed this round: its `seq` and why.
type Failed<'a> = (i64, &'a Failure);

/// Moves events (`$1` seqs, `$2` their last errors) from the outbox to the dead letters.
const BURY: &str = "WITH dead AS (
         DELETE FROM outbox_events o
         USING unnest($1::int8[], $2::text[]) AS f(seq, reason)
         WHERE o.seq = f.seq
         RETURNING o.seq, o.id, o.request_id, o.type, o.payload, o.created_at,
                   o.attempts + 1 AS attempts, f.reason
     )
     INSERT INTO outbox_dead_letters
         (seq, id, request_id, type, payload, created_at, attempts, last_error)
     SELECT seq, id, request_id, type, payload, created_at, attempts, reason FROM dead
     ON CONFLICT (id) DO UPDATE SET seq = EXCLUDED.seq, attempts = EXCLUDED.attempts,
         last_error = EXCLUDED.last_error, dead_at = NOW()
     RETURNING id, type";

/// Posts a request's events in order, up to the first that fails (the later ones wait for it).
async fn post_chain(hub: &HubClient, chain: Vec<Pending>) -> Vec<(i64, Option<Failure>)> {
    let mut outcomes = Vec::with_capacity(chain.len());
    for event in chain {
        match hub.post(&event).await {
            Ok(()) => outcomes.push((event.seq, None)),
            Err(reason) => {
                tracing::debug!(event.id = %event.id, reason, "hub delivery failed; will retry");
                let backoff = (0.5 * 2f64.powi(event.attempts.min(20))).min(MAX_BACKOFF_SECS);
                let request = event.request_id;
                outcomes.push((
                    event.seq,
                    Some(Failure {
                        reason,
                        backoff,
                        request,
                        attempts: event.attempts.saturating_add(1),
                    }),
                ));
                break;
            }
        }
    }
    outcomes
}

/// A delivery that failed, and when to try it again.
#[derive(Debug)]
struct Failure {
    reason: String,
    backoff: f64,
    request: Option<Uuid>,
    /// Tries of the event so far, this one included.
    attempts: i32,
}

impl Failure {
    /// Whether this was the event's last try.
    fn is_dead(&self, max_attempts: u32) -> bool {
        i64::from(self.attempts) >= i64::from(max_attempts)
    }
}

impl Scan {
    /// An event seen waiting until `at`.
    fn waiting_until(&mut self, at: DateTime<Utc>) {
        self.next_due = Some(self.next_due.map_or(at, |due| due.min(at)));
    }

    /// After a round: read on past a full window; at the end of the backlog, go on reading
    /// only new events while a quiet spell lasts (or start one after a pass that sent nothing
    /// and saw events waiting), else start over from the front.
    fn advance(&mut self, more: bool, last_seq: i64, now: DateTime<Utc>) {
        if more {
            self.after_seq = last_seq;
            return;
        }
        let quiet = match self.quiet_until {
            Some(until) if now < until => Some(self.next_due.map_or(until, |due| due.min(until))),
            Some(_) => None,
            None if !self.sent => self.next_due.map(|due| {
                let longest = chrono::Duration::from_std(QUIET_AT_MOST).unwrap_or_default();
                due.min(now + longest)
            }),
            None => None,
        };
        match quiet {
            Some(until) if until > now => {
                self.after_seq = last_seq;
                self.quiet_until = Some(until);
            }
            _ => {
                self.after_seq = 0;
                self.held_back.clear();
                self.quiet_until = None;
            }
        }
        self.sent = false;
        self.next_due = None;
    }
}

/// The worker's delivery loop: delivers due events until stopped, giving each up to the dead
/// letters after `max_attempts` tries.
pub async fn deliver(pool: PgPool, hub: HubClient, max_attempts: u32, stop: CancellationToken) {
    let mut scan = Scan::default();
    loop {
        let pause = match deliver_due(&pool, &hub, &mut scan, max_attempts).await {
            // More to read, or a busy outbox: go on at once.
            Ok(round) if round.more || round.delivered > 0 => Duration::ZERO,
            Ok(_) => Duration::from_millis(500),
            Err(err) => {
                tracing::warn!(error = %err, "outbox delivery: database error");
                scan = Scan::default();
                Duration::from_secs(2)
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{HubClient, Pending};
    use chrono::Utc;
    use secrecy::SecretString;
    use uuid::Uuid;

    #[test]
    fn events_go_to_the_events_path_under_the_base() -> Result<(), Box<dyn std::error::Error>> {
        for (base, events) in [
            ("http://hub:8200", "http://hub:8200/events"),
            ("http://hub:8200/", "http://hub:8200/events"),
            (
                "https://hub.internal/prefix",
                "https://hub.internal/prefix/events",
            ),
            (
                "https://hub.internal/prefix/",
                "https://hub.internal/prefix/events",
            ),
        ] {
            let client = HubClient::new(&reqwest::Url::parse(base)?, None);
            assert_eq!(client.url.as_str(), events, "base {base}");
        }
        Ok(())
    }

    /// The `Authorization` header of each event a local hub received.
    async fn delivered_with(token: Option<&str>) -> Vec<Option<String>> {
        use std::sync::{Arc, Mutex};
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let app = axum::Router::new().route(
            "/events",
            axum::routing::post(move |headers: axum::http::HeaderMap| {
                let record = record.clone();
                async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    record.lock().map(|mut s| s.push(auth)).ok();
                    axum::http::StatusCode::ACCEPTED
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = reqwest::Url::parse(&format!("http://{}", listener.local_addr().unwrap()));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let hub = HubClient::new(&base.unwrap(), token.map(SecretString::from));
        let event = Pending {
            seq: 1,
            id: Uuid::now_v7(),
            request_id: None,
            trace_id: None,
            kind: "generation.completed".into(),
            payload: serde_json::json!({}),
            created_at: Utc::now(),
            attempts: 0,
            due: true,
            next_attempt_at: Utc::now(),
        };
        assert_eq!(hub.post(&event).await, Ok(()));
        seen.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn events_carry_the_hub_token_when_one_is_set() {
        assert_eq!(
            delivered_with(Some("hub-token-0123456789")).await,
            vec![Some("Bearer hub-token-0123456789".to_owned())]
        );
        assert_eq!(delivered_with(None).await, vec![None]);
    }
}
