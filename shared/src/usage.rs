//! Usage and cost: per user, per model, per day (`usage_daily`). Rows are written by the
//! statement that completes a request (and by cache hits), so each request counts exactly
//! once, whatever the deliveries of its job; this module reads them back: one user's
//! ([`report`]), or every user's for an admin ([`all_users`], paged).

use chrono::{Duration as Days, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

/// Longest range a usage query of one user may cover.
pub const MAX_RANGE_DAYS: i64 = 366;
/// Longest range a query of every user's usage may cover: each page reads the whole range.
pub const MAX_ALL_USERS_RANGE_DAYS: i64 = 92;
/// Most rows a page of every user's usage holds (and the default).
pub const MAX_ALL_USERS_LIMIT: i64 = 1000;
pub const DEFAULT_ALL_USERS_LIMIT: i64 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    #[default]
    Day,
    Model,
}

/// What a row of usage counts: requests, cache hits among them, tokens and cost.
#[derive(Debug, Clone, Default, Serialize, FromRow)]
pub struct UsageCounts {
    pub requests: i64,
    pub cached_requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_usd: f64,
}

#[derive(Debug, Clone, Serialize, FromRow)]
pub struct UsageRow {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day: Option<NaiveDate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub counts: UsageCounts,
}

#[derive(Debug, Clone, Serialize)]
pub struct UsageReport {
    pub user_id: Uuid,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub group_by: GroupBy,
    pub rows: Vec<UsageRow>,
    pub totals: UsageRow,
}

/// The range a query asks for: `to` defaults to today (UTC), `from` to 30 days before `to`
/// (or `max_days` before, if fewer), and it covers at most `max_days` days after `from`.
pub fn range(
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
    max_days: i64,
) -> Result<(NaiveDate, NaiveDate), String> {
    let to = to.unwrap_or_else(|| Utc::now().date_naive());
    let from = from.unwrap_or(to - Days::days(30.min(max_days)));
    if from > to {
        return Err("`from` is after `to`".into());
    }
    if (to - from).num_days() > max_days {
        return Err(format!("the range may cover at most {max_days} days"));
    }
    Ok((from, to))
}

/// `user_id`'s usage from `from` to `to` (inclusive), by day or by model, with its totals.
pub async fn report(
    pool: &PgPool,
    user_id: Uuid,
    from: NaiveDate,
    to: NaiveDate,
    group_by: GroupBy,
) -> Result<UsageReport, sqlx::Error> {
    let sql = match group_by {
        GroupBy::Day => {
            "SELECT day, NULL::varchar AS model, SUM(requests)::bigint AS requests,
                    SUM(cached_requests)::bigint AS cached_requests,
                    SUM(prompt_tokens)::bigint AS prompt_tokens,
                    SUM(completion_tokens)::bigint AS completion_tokens,
                    SUM(cost_usd)::float8 AS cost_usd
             FROM usage_daily WHERE user_id = $1 AND day BETWEEN $2 AND $3
             GROUP BY day ORDER BY day"
        }
        GroupBy::Model => {
            "SELECT NULL::date AS day, model, SUM(requests)::bigint AS requests,
                    SUM(cached_requests)::bigint AS cached_requests,
                    SUM(prompt_tokens)::bigint AS prompt_tokens,
                    SUM(completion_tokens)::bigint AS completion_tokens,
                    SUM(cost_usd)::float8 AS cost_usd
             FROM usage_daily WHERE user_id = $1 AND day BETWEEN $2 AND $3
             GROUP BY model ORDER BY model"
        }
    };
    let rows: Vec<UsageRow> = sqlx::query_as(sql)
        .bind(user_id)
        .bind(from)
        .bind(to)
        .fetch_all(pool)
        .await?;
    let totals = UsageRow {
        day: None,
        model: None,
        counts: UsageCounts {
            requests: rows.iter().map(|r| r.counts.requests).sum(),
            cached_requests: rows.iter().map(|r| r.counts.cached_requests).sum(),
            prompt_tokens: rows.iter().map(|r| r.counts.prompt_tokens).sum(),
            completion_tokens: rows.iter().map(|r| r.counts.completion_tokens).sum(),
            cost_usd: rows.iter().map(|r| r.counts.cost_usd).sum(),
        },
    };
    Ok(UsageReport {
        user_id,
        from,
        to,
        group_by,
        rows,
        totals,
    })
}

/// One user's usage of one model on one day (every user's listing).
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct UserUsageRow {
    pub day: NaiveDate,
    pub user_id: Uuid,
    pub model: String,
    #[serde(flatten)]
    #[sqlx(flatten)]
    pub counts: UsageCounts,
}

/// A page of every user's usage; `next_cursor` continues it (absent on the last page).
#[derive(Debug, Clone, Serialize)]
pub struct AllUsersPage {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub rows: Vec<UserUsageRow>,
    pub next_cursor: Option<String>,
}

/// Where a page of every user's usage starts: after this row of the previous page. Written
/// as `day/user_id/model` (the model last, as it is the one part that may hold a `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageCursor {
    pub day: NaiveDate,
    pub user_id: Uuid,
    pub model: String,
}

impl UsageCursor {
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.splitn(3, '/');
        let day = parts.next()?.parse().ok()?;
        let user_id = Uuid::parse_str(parts.next()?).ok()?;
        let model = parts.next()?.to_owned();
        Some(Self {
            day,
            user_id,
            model,
        })
    }

    fn after(row: &UserUsageRow) -> String {
        format!("{}/{}/{}", row.day, row.user_id, row.model)
    }
}

const ALL_USERS: &str = include_str!("usage/sql/all_users.sql");

/// Every user's usage from `from` to `to` (inclusive) per day, user and model, in that order:
/// at most `limit` rows after `cursor`.
pub async fn all_users(
    pool: &PgPool,
    from: NaiveDate,
    to: NaiveDate,
    cursor: Option<&UsageCursor>,
    limit: i64,
) -> Result<AllUsersPage, sqlx::Error> {
    // One row more than the page: whether there is a next one.
    let mut rows: Vec<UserUsageRow> = sqlx::query_as(ALL_USERS)
        .bind(from)
        .bind(to)
        .bind(cursor.map(|c| c.day))
        .bind(cursor.map(|c| c.user_id))
        .bind(cursor.map(|c| c.model.as_str()))
        .bind(limit.saturating_add(1))
        .fetch_all(pool)
        .await?;
    let next_cursor = if rows.len() > usize::try_from(limit).unwrap_or(usize::MAX) {
        rows.pop();
        rows.last().map(UsageCursor::after)
    } else {
        None
    };
    Ok(AllUsersPage {
        from,
        to,
        rows,
        next_cursor,
    })
}
