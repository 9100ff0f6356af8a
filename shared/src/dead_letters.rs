//! The outbox's dead letters (`outbox_dead_letters`): message hub events the workers gave up
//! after `OUTBOX_MAX_ATTEMPTS` refusals, so that they stop holding back their requests' later
//! events. This module owns what admins do with them: list them (oldest first, keyset pages)
//! and replay them, which moves them back to `outbox_events` under their own id (receivers
//! deduplicate by id), to be delivered after whatever of their request is still waiting.
//!
//! Both are bounded: a page holds at most [`MAX_PAGE`] events and one replay moves at most
//! [`MAX_REPLAY`].

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

/// Most dead letters one page may hold.
pub const MAX_PAGE: i64 = 200;
/// Most dead letters one replay moves back (and most ids it may name).
pub const MAX_REPLAY: usize = 1000;

/// One event the hub kept refusing.
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
pub struct DeadLetter {
    /// The event's id, as the hub receives it.
    pub id: Uuid,
    pub request_id: Option<Uuid>,
    #[serde(rename = "type")]
    #[sqlx(rename = "type")]
    pub kind: String,
    #[schema(value_type = Object)]
    pub payload: Value,
    pub created_at: DateTime<Utc>,
    /// Tries made before it was given up.
    pub attempts: i32,
    /// Why the last try failed.
    pub last_error: Option<String>,
    pub dead_at: DateTime<Utc>,
    /// Its position, the keyset of the listing.
    #[serde(skip)]
    pub seq: i64,
}

/// A page of dead letters.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetterPage {
    pub dead_letters: Vec<DeadLetter>,
    /// Pass as `cursor` for the next page; absent on the last.
    pub next_cursor: Option<i64>,
}

/// Which dead letters a replay moves back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// These events (unknown ids are skipped).
    Ids(Vec<Uuid>),
    /// The oldest, up to [`MAX_REPLAY`].
    All,
}

/// What a replay did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Replayed {
    /// The events moved back to the outbox, oldest first.
    pub replayed: Vec<Uuid>,
    /// Dead letters remain after this replay.
    pub remaining: bool,
}

/// Dead letters oldest first, after `cursor` (a previous page's `next_cursor`).
pub async fn list(
    pool: &PgPool,
    cursor: Option<i64>,
    limit: i64,
) -> Result<DeadLetterPage, sqlx::Error> {
    let limit = limit.clamp(1, MAX_PAGE);
    let mut dead_letters: Vec<DeadLetter> = sqlx::query_as(
        "SELECT seq, id, request_id, type, payload, created_at, attempts, last_error, dead_at
         FROM outbox_dead_letters WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(cursor.unwrap_or(i64::MIN))
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    let next_cursor = if dead_letters.len() as i64 > limit {
        dead_letters.truncate(usize::try_from(limit).unwrap_or(0));
        dead_letters.last().map(|d| d.seq)
    } else {
        None
    };
    Ok(DeadLetterPage {
        dead_letters,
        next_cursor,
    })
}

/// Moves the selected dead letters back to the outbox, in their original order, in one
/// statement (a concurrent replay skips the rows this one holds).
pub async fn replay(pool: &PgPool, selection: &Selection) -> Result<Replayed, sqlx::Error> {
    let ids: Option<Vec<Uuid>> = match selection {
        Selection::Ids(ids) => Some(ids.iter().take(MAX_REPLAY).copied().collect()),
        Selection::All => None,
    };
    let mut tx = pool.begin().await?;
    let replayed: Vec<Uuid> = sqlx::query_scalar(include_str!("dead_letters/sql/replay.sql"))
        .bind(ids)
        .bind(i64::try_from(MAX_REPLAY).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
    let remaining: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM outbox_dead_letters)")
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Replayed {
        replayed,
        remaining,
    })
}
