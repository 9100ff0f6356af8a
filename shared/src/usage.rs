//! Usage and cost: per user, per model, per day (`usage_daily`). Rows are written by the
//! statement that completes a request (and by cache hits), so each request counts exactly
//! once, whatever the deliveries of its job; this module reads them back.

use chrono::{Duration as Days, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

/// Longest range a usage query may cover.
pub const MAX_RANGE_DAYS: i64 = 366;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    #[default]
    Day,
    Model,
}

#[derive(Debug, Clone, Serialize, FromRow)]
pub struct UsageRow {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day: Option<NaiveDate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub requests: i64,
    pub cached_requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_usd: f64,
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

/// The range a query asks for: `to` defaults to today (UTC), `from` to 30 days before `to`.
pub fn range(
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
) -> Result<(NaiveDate, NaiveDate), String> {
    let to = to.unwrap_or_else(|| Utc::now().date_naive());
    let from = from.unwrap_or(to - Days::days(30));
    if from > to {
        return Err("`from` is after `to`".into());
    }
    if (to - from).num_days() > MAX_RANGE_DAYS {
        return Err(format!("the range may cover at most {MAX_RANGE_DAYS} days"));
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
        requests: rows.iter().map(|r| r.requests).sum(),
        cached_requests: rows.iter().map(|r| r.cached_requests).sum(),
        prompt_tokens: rows.iter().map(|r| r.prompt_tokens).sum(),
        completion_tokens: rows.iter().map(|r| r.completion_tokens).sum(),
        cost_usd: rows.iter().map(|r| r.cost_usd).sum(),
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
