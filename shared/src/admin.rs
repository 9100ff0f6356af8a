//! Operators' tools: listing requests across users (keyset pagination, newest first) with
//! their attempt history, replaying failed or cancelled requests (one, or many by filter with a
//! dry run), and retention of finished queue jobs.
//!
//! A replay puts the request back to `pending` with a fresh attempt budget and runs its job
//! again; its earlier attempts stay in the history, and `replays` counts how often it was done.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::error::DomainError;
use crate::queue;
use crate::requests::{AttemptView, Status};

/// Most rows one page may hold.
pub const MAX_PAGE: i64 = 200;
/// Most requests one bulk replay may touch.
pub const MAX_BULK_REPLAY: i64 = 10_000;

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestFilter {
    pub status: Option<Status>,
    pub model: Option<String>,
    pub provider: Option<String>,
    pub user_id: Option<Uuid>,
    /// Created at or after.
    pub from: Option<DateTime<Utc>>,
    /// Created before.
    pub to: Option<DateTime<Utc>>,
}

impl RequestFilter {
    /// Whether it names no field (and so would match every request).
    pub fn is_empty(&self) -> bool {
        let Self {
            status,
            model,
            provider,
            user_id,
            from,
            to,
        } = self;
        status.is_none()
            && model.is_none()
            && provider.is_none()
            && user_id.is_none()
            && from.is_none()
            && to.is_none()
    }

    fn push_where(&self, query: &mut QueryBuilder<Postgres>) {
        query.push(" WHERE TRUE");
        if let Some(status) = self.status {
            query.push(" AND status = ").push_bind(status.as_str());
            // The same rows, named as the partial indexes name them, so that they are read
            // through those (the table's CHECKs make these follow from the status).
            query.push(match status {
                Status::Pending | Status::Running => " AND completed_at IS NULL",
                Status::Failed | Status::Cancelled => " AND error_code IS NOT NULL",
                Status::Completed => "",
            });
        }
        if let Some(model) = &self.model {
            query.push(" AND model = ").push_bind(model.clone());
        }
        if let Some(provider) = &self.provider {
            query.push(" AND provider = ").push_bind(provider.clone());
        }
        if let Some(user) = self.user_id {
            query.push(" AND user_id = ").push_bind(user);
        }
        if let Some(from) = self.from {
            query.push(" AND created_at >= ").push_bind(from);
        }
        if let Some(to) = self.to {
            query.push(" AND created_at < ").push_bind(to);
        }
    }
}

#[derive(Debug, Serialize, FromRow)]
pub struct AdminRequest {
    pub id: Uuid,
    pub user_id: Uuid,
    pub status: Status,
    pub model: String,
    pub provider: Option<String>,
    pub served_model: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub attempts: i32,
    pub replays: i32,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    #[sqlx(skip)]
    pub attempt_history: Vec<AttemptView>,
}

#[derive(Debug, Serialize)]
pub struct Page {
    pub requests: Vec<AdminRequest>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<Uuid>,
}

/// Requests matching the filter, newest first, after `cursor` (ids are time-ordered UUIDv7).
pub async fn list(
    pool: &PgPool,
    filter: &RequestFilter,
    cursor: Option<Uuid>,
    limit: i64,
) -> Result<Page, sqlx::Error> {
    let limit = limit.clamp(1, MAX_PAGE);
    let mut query = QueryBuilder::new(
        "SELECT id, user_id, status, model, provider, served_model, error_code, error_message,
                attempts, replays, created_at, completed_at FROM generation_requests",
    );
    filter.push_where(&mut query);
    if let Some(cursor) = cursor {
        query.push(" AND id < ").push_bind(cursor);
    }
    query.push(" ORDER BY id DESC LIMIT ").push_bind(limit + 1);
    let mut requests: Vec<AdminRequest> = query.build_query_as().fetch_all(pool).await?;
    let next_cursor = if requests.len() as i64 > limit {
        requests.truncate(limit as usize);
        requests.last().map(|r| r.id)
    } else {
        None
    };
    let ids: Vec<Uuid> = requests.iter().map(|r| r.id).collect();
    let attempts: Vec<(Uuid, AttemptRow)> = sqlx::query_as::<_, AttemptRow>(
        "SELECT request_id, attempt, run, worker, provider, model, started_at, finished_at, latency_ms,
                outcome, error_kind, http_status, error_message
         FROM generation_attempts WHERE request_id = ANY($1) ORDER BY request_id, attempt",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| (row.request_id, row))
    .collect();
    let mut by_request: HashMap<Uuid, Vec<AttemptView>> = HashMap::new();
    for (id, row) in attempts {
        by_request.entry(id).or_default().push(row.into());
    }
    for request in &mut requests {
        request.attempt_history = by_request.remove(&request.id).unwrap_or_default();
    }
    Ok(Page {
        requests,
        next_cursor,
    })
}

#[derive(Debug, FromRow)]
struct AttemptRow {
    request_id: Uuid,
    attempt: i32,
    run: Option<i32>,
    worker: String,
    provider: Option<String>,
    model: Option<String>,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    latency_ms: Option<i32>,
    outcome: String,
    error_kind: Option<String>,
    http_status: Option<i32>,
    error_message: Option<String>,
}

impl From<AttemptRow> for AttemptView {
    fn from(r: AttemptRow) -> Self {
        Self {
            attempt: r.attempt,
            run: r.run,
            worker: r.worker,
            provider: r.provider,
            model: r.model,
            started_at: r.started_at,
            finished_at: r.finished_at,
            latency_ms: r.latency_ms,
            outcome: r.outcome,
            error_kind: r.error_kind,
            http_status: r.http_status,
            error_message: r.error_message,
        }
    }
}

#[derive(Debug)]
pub enum Replay {
    Replayed,
    /// Only failed or cancelled requests can be replayed.
    NotReplayable(Status),
    NotFound,
}

/// Sends one failed or cancelled request back to the queue.
pub async fn replay(pool: &PgPool, id: Uuid) -> Result<Replay, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let replayed = reset_requests(&mut tx, &[id]).await?;
    if replayed.is_empty() {
        tx.rollback().await?;
        let status: Option<Status> =
            sqlx::query_scalar("SELECT status FROM generation_requests WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?;
        return Ok(status.map_or(Replay::NotFound, Replay::NotReplayable));
    }
    tx.commit().await?;
    Ok(Replay::Replayed)
}

/// Replays every failed or cancelled request that matches (or, with `dry_run`, only counts
/// them). Returns the ids.
pub async fn replay_matching(
    pool: &PgPool,
    filter: &RequestFilter,
    dry_run: bool,
) -> Result<Vec<Uuid>, DomainError> {
    if filter.is_empty() {
        return Err(DomainError::validation(
            "filter",
            "name the requests to replay (status, model, provider, user_id, from, to)",
        ));
    }
    let mut query = QueryBuilder::new("SELECT id FROM generation_requests");
    filter.push_where(&mut query);
    // Failed requests, unless the filter asks for cancelled ones by name: a request its user
    // cancelled runs again only when an operator means it.
    let replayable = match filter.status {
        Some(Status::Cancelled) => " AND status = 'cancelled'",
        _ => " AND status = 'failed'",
    };
    query
        .push(" AND error_code IS NOT NULL")
        .push(replayable)
        .push(" ORDER BY id LIMIT ")
        .push_bind(MAX_BULK_REPLAY);
    let ids: Vec<Uuid> = query.build_query_scalar().fetch_all(pool).await?;
    if dry_run || ids.is_empty() {
        return Ok(ids);
    }
    let mut tx = pool.begin().await?;
    let replayed = reset_requests(&mut tx, &ids).await?;
    tx.commit().await?;
    Ok(replayed)
}

/// Back to `pending` with a fresh budget, and their jobs queued again (reset, or pushed anew
/// if retention removed them). Only failed or cancelled rows are touched.
async fn reset_requests(
    tx: &mut sqlx::Transaction<'static, Postgres>,
    ids: &[Uuid],
) -> Result<Vec<Uuid>, sqlx::Error> {
    let reset: Vec<(Uuid, i32)> = sqlx::query_as(
        "UPDATE generation_requests
         SET status = 'pending', attempts = 0, replays = replays + 1, fallback_index = 0,
             error_code = NULL, error_message = NULL, completed_at = NULL, claimed_by = NULL,
             lease_expires_at = NULL, coalesced_into = NULL, updated_at = NOW()
         WHERE id = ANY($1) AND status IN ('failed', 'cancelled')
         RETURNING id, max_attempts",
    )
    .bind(ids)
    .fetch_all(&mut **tx)
    .await?;
    let reset_ids: Vec<Uuid> = reset.iter().map(|(id, _)| *id).collect();
    let job_ids: Vec<String> = reset_ids
        .iter()
        .map(|id| queue::job_id_for(*id).to_string())
        .collect();
    let requeued: Vec<String> = sqlx::query_scalar(
        "UPDATE apalis.jobs
         SET status = 'Pending', attempts = 0, run_at = NOW(), lock_by = NULL, lock_at = NULL,
             done_at = NULL, last_result = NULL
         WHERE id = ANY($1)
         RETURNING id",
    )
    .bind(&job_ids)
    .fetch_all(&mut **tx)
    .await?;
    let missing: Vec<(Uuid, i32)> = reset
        .iter()
        .filter(|(id, _)| !requeued.contains(&queue::job_id_for(*id).to_string()))
        .copied()
        .collect();
    if !missing.is_empty() {
        queue::push_generations(tx, &missing, queue::INTERACTIVE_PRIORITY).await?;
    }
    // Reset jobs are updates, which apalis' insert trigger does not announce: wake the workers.
    for job_id in &requeued {
        let payload =
            serde_json::json!({"job_type": queue::QUEUE, "id": job_id, "run_at": Utc::now()});
        sqlx::query("SELECT pg_notify('apalis::job::insert', $1)")
            .bind(payload.to_string())
            .execute(&mut **tx)
            .await?;
    }
    Ok(reset_ids)
}

/// Deletes queue jobs of requests that ended more than `keep` ago (the request rows stay: they
/// are the record). Returns how many.
pub async fn purge_finished_jobs(pool: &PgPool, keep: Duration) -> Result<u64, sqlx::Error> {
    let purged = sqlx::query(
        "DELETE FROM apalis.jobs j
         USING generation_requests r
         WHERE r.job_id = j.id
           AND r.status IN ('completed', 'failed', 'cancelled')
           AND r.completed_at < NOW() - make_interval(secs => $1)
           AND j.status IN ('Done', 'Failed', 'Killed')",
    )
    .bind(keep.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(purged.rows_affected())
}
