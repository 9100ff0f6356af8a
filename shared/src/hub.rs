//! The message hub (HTTP, `MESSAGE_HUB_URL`): delivery of the outbox.
//!
//! Events are written to `outbox_events` in the transaction of the state change they report;
//! every worker runs a relay that POSTs them to `{MESSAGE_HUB_URL}/events` in a JSON envelope
//! (`id`, `type`, `time`, `source`, `data`). Delivery is at least once (a worker that dies
//! mid-delivery leaves the event undelivered, and it is sent again; receivers drop duplicates by
//! `id`), in order per request (an event waits while an earlier one of its request is
//! undelivered), with exponential backoff while the hub fails, so a hub down for an hour loses
//! nothing.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::{FromRow, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Events sent per round.
const BATCH: i64 = 50;
/// Longest wait before retrying an event.
const MAX_BACKOFF_SECS: f64 = 300.0;
/// The `source` of every envelope.
pub const SOURCE: &str = "llm-service";

#[derive(Debug, FromRow)]
struct Pending {
    seq: i64,
    id: Uuid,
    request_id: Option<Uuid>,
    #[sqlx(rename = "type")]
    kind: String,
    payload: Value,
    created_at: DateTime<Utc>,
    attempts: i32,
}

#[derive(Debug, Clone)]
pub struct HubClient {
    http: reqwest::Client,
    url: String,
}

impl HubClient {
    pub fn new(base_url: &str) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self {
            http,
            url: format!("{}/events", base_url.trim_end_matches('/')),
        }
    }

    async fn post(&self, event: &Pending) -> Result<(), String> {
        let envelope = json!({
            "id": event.id,
            "type": event.kind,
            "time": event.created_at,
            "source": SOURCE,
            "data": event.payload,
        });
        match self.http.post(&self.url).json(&envelope).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("the hub answered HTTP {}", r.status().as_u16())),
            Err(e) if e.is_timeout() => Err("the hub did not answer in time".into()),
            Err(_) => Err("could not reach the hub".into()),
        }
    }
}

/// Sends the events that are due; returns how many were delivered.
pub async fn deliver_due(pool: &PgPool, hub: &HubClient) -> Result<usize, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Locked for this round (another worker skips them); only the first undelivered event of
    // each request is eligible, which keeps each request's events in order.
    let due: Vec<Pending> = sqlx::query_as(
        "SELECT seq, id, request_id, type, payload, created_at, attempts
         FROM outbox_events e
         WHERE delivered_at IS NULL AND next_attempt_at <= NOW()
           AND NOT EXISTS (
               SELECT 1 FROM outbox_events earlier
               WHERE earlier.request_id = e.request_id AND earlier.seq < e.seq
                 AND earlier.delivered_at IS NULL)
         ORDER BY seq LIMIT $1
         FOR UPDATE SKIP LOCKED",
    )
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    let mut delivered = 0;
    let mut blocked: HashSet<Uuid> = HashSet::new();
    for event in &due {
        if event.request_id.is_some_and(|r| blocked.contains(&r)) {
            continue;
        }
        match hub.post(event).await {
            Ok(()) => {
                sqlx::query("UPDATE outbox_events SET delivered_at = NOW(), attempts = attempts + 1 WHERE seq = $1")
                    .bind(event.seq)
                    .execute(&mut *tx)
                    .await?;
                delivered += 1;
            }
            Err(reason) => {
                let backoff = (0.5 * 2f64.powi(event.attempts.min(20))).min(MAX_BACKOFF_SECS);
                sqlx::query(
                    "UPDATE outbox_events
                     SET attempts = attempts + 1, last_error = $2,
                         next_attempt_at = NOW() + make_interval(secs => $3)
                     WHERE seq = $1",
                )
                .bind(event.seq)
                .bind(&reason)
                .bind(backoff)
                .execute(&mut *tx)
                .await?;
                tracing::debug!(event.id = %event.id, reason, "hub delivery failed; will retry");
                if let Some(request) = event.request_id {
                    blocked.insert(request);
                }
            }
        }
    }
    tx.commit().await?;
    Ok(delivered)
}

/// The worker's relay: delivers due events until stopped.
pub async fn relay(pool: PgPool, hub: HubClient, stop: CancellationToken) {
    loop {
        let pause = match deliver_due(&pool, &hub).await {
            Ok(n) if n as i64 == BATCH => Duration::ZERO,
            Ok(_) => Duration::from_millis(500),
            Err(err) => {
                tracing::warn!(error = %err, "hub relay: database error");
                Duration::from_secs(2)
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}
