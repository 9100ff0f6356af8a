//! Reading requests back: a request as its owner sees it, its attempt history, and the
//! recent provider calls of each upstream model drawn from that history.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

use super::Status;
use super::body::NewRequest;
use crate::cache::CachedResponse;
use crate::generation::ToolCall;

/// A request as its owner sees it. Deserialized only from a notice's outcome
/// ([`RequestView::of_notice`]), which leaves out the id and the caller's input.
#[derive(Debug, Clone, Serialize, Deserialize, FromRow, utoipa::ToSchema)]
pub struct RequestView {
    #[serde(default, skip_deserializing)]
    pub id: Uuid,
    pub status: Status,
    pub model: String,
    #[serde(default, skip_deserializing)]
    pub prompt: String,
    #[serde(default, skip_deserializing)]
    pub context: Value,
    #[serde(default, skip_deserializing)]
    pub parameters: Value,
    #[serde(default, skip_deserializing)]
    pub metadata: Value,
    pub result: Option<String>,
    pub provider: Option<String>,
    pub provider_model: Option<String>,
    /// The registry model that answered (the requested one, or a fallback).
    pub served_model: Option<String>,
    pub tokens_used: Option<i32>,
    pub prompt_tokens: Option<i32>,
    pub completion_tokens: Option<i32>,
    pub finish_reason: Option<String>,
    /// The tools the model called (`finish_reason` `tool_calls`), in order.
    #[schema(value_type = Option<Vec<crate::generation::ToolCall>>)]
    pub tool_calls: Option<sqlx::types::Json<Vec<ToolCall>>>,
    /// Estimated cost in USD (registry prices; 0 for cache hits).
    pub cost_usd: Option<f64>,
    /// Answered from the response cache, without a provider call.
    pub cached: bool,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

impl RequestView {
    /// The row of `new`, answered at `at` from the cache with `hit`, as the hit writer stores it
    /// (`sql/insert_hits.sql`): for an answer that carries the result before the row is written.
    pub fn of_cache_hit(new: &NewRequest, hit: &CachedResponse, at: DateTime<Utc>) -> Self {
        Self {
            id: new.id,
            status: Status::Completed,
            model: new.model.clone(),
            prompt: new.prompt.clone(),
            context: new.context.clone(),
            parameters: new.parameters.clone(),
            metadata: new.metadata.clone(),
            result: Some(hit.response.clone()),
            provider: hit.provider.clone(),
            provider_model: hit.provider_model.clone(),
            served_model: hit.served_model.clone(),
            tokens_used: hit
                .prompt_tokens
                .zip(hit.completion_tokens)
                .map(|(p, c)| p.saturating_add(c)),
            prompt_tokens: hit.prompt_tokens,
            completion_tokens: hit.completion_tokens,
            finish_reason: hit.finish_reason.clone(),
            tool_calls: hit.tool_calls.clone().map(sqlx::types::Json),
            cost_usd: Some(0.0),
            cached: true,
            error_code: None,
            error_message: None,
            attempts: 0,
            max_attempts: new.max_attempts,
            created_at: at,
            started_at: None,
            completed_at: Some(at),
            updated_at: at,
        }
    }

    /// The tools the model called (none when it called none).
    pub fn tool_calls(&self) -> &[ToolCall] {
        self.tool_calls.as_ref().map_or(&[], |c| c.0.as_slice())
    }
}

/// A request's input as its caller stored it: what its notice's outcome leaves out.
#[derive(Debug, Clone)]
pub struct RequestInput {
    pub prompt: String,
    pub context: Value,
    pub parameters: Value,
    pub metadata: Value,
}

impl RequestInput {
    /// The input of a request about to be stored.
    pub fn of(new: &NewRequest) -> Self {
        Self {
            prompt: new.prompt.clone(),
            context: new.context.clone(),
            parameters: new.parameters.clone(),
            metadata: new.metadata.clone(),
        }
    }

    /// The input of a request read back (taken from its row, which is consumed).
    pub fn of_view(view: RequestView) -> Self {
        Self {
            prompt: view.prompt,
            context: view.context,
            parameters: view.parameters,
            metadata: view.metadata,
        }
    }
}

impl RequestView {
    /// The row of request `id` from its caller's `input` and the `outcome` its notice carried
    /// (JSON: the row but its id and input, see [`super::Notice::Outcome`]).
    pub fn of_notice(
        id: Uuid,
        input: RequestInput,
        outcome: &str,
    ) -> Result<Self, serde_json::Error> {
        let view: Self = serde_json::from_str(outcome)?;
        Ok(Self {
            id,
            prompt: input.prompt,
            context: input.context,
            parameters: input.parameters,
            metadata: input.metadata,
            ..view
        })
    }
}

/// One provider call, as shown with the request. Deserialized only from a notice's outcome
/// ([`AttemptView::history_of_notice`]).
#[derive(Debug, Clone, Serialize, Deserialize, FromRow, utoipa::ToSchema)]
pub struct AttemptView {
    pub attempt: i32,
    /// Which claim (run) of the request made this call.
    pub run: Option<i32>,
    pub worker: String,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub latency_ms: Option<i32>,
    pub outcome: String,
    pub error_kind: Option<String>,
    pub http_status: Option<i32>,
    pub error_message: Option<String>,
}

impl AttemptView {
    /// The attempt history a notice's `outcome` carried (a request stored with
    /// [`super::Notice::OutcomeAndAttempts`], whose history fit), in order; `None` if it
    /// carried none.
    pub fn history_of_notice(outcome: &str) -> Result<Option<Vec<Self>>, serde_json::Error> {
        #[derive(Deserialize)]
        struct Told {
            attempt_history: Option<Vec<AttemptView>>,
        }
        Ok(serde_json::from_str::<Told>(outcome)?.attempt_history)
    }
}

/// The request if it exists and belongs to `user_id` (another user's request is "not found").
pub async fn find_for_user(
    pool: &PgPool,
    id: Uuid,
    user_id: Uuid,
) -> Result<Option<RequestView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, status, model, prompt, context, parameters, metadata, result, provider,
                provider_model, served_model, tokens_used, prompt_tokens, completion_tokens,
                finish_reason, tool_calls, cost_usd, cached, error_code, error_message, attempts, max_attempts,
                created_at, started_at, completed_at, updated_at
         FROM generation_requests WHERE id = $1 AND user_id = $2",
    )
    .bind(id)
    .bind(user_id)
    .fetch_optional(pool)
    .await
}

/// The provider calls made for the request, in order.
pub async fn attempts_of(pool: &PgPool, id: Uuid) -> Result<Vec<AttemptView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT attempt, run, worker, provider, model, started_at, finished_at, latency_ms, outcome,
                error_kind, http_status, error_message
         FROM generation_attempts WHERE request_id = $1 ORDER BY attempt",
    )
    .bind(id)
    .fetch_all(pool)
    .await
}

/// Recent provider calls of one upstream model, from the attempt history.
#[derive(Debug, Clone, Serialize, FromRow)]
pub struct CallStats {
    pub provider: String,
    pub model: String,
    pub calls: i64,
    pub failures: i64,
    pub p50_latency_ms: Option<f64>,
    /// Whether the latest calls (as many as the circuit threshold) all failed.
    pub latest_all_failed: bool,
    pub last_call_at: Option<DateTime<Utc>>,
}

/// The statement of [`recent_call_stats`].
pub const RECENT_CALL_STATS: &str = include_str!("sql/recent_call_stats.sql");

/// Per (provider, upstream model): its latest calls finished in the last `window`, at most
/// `per_model` of them (read newest first through an index, so the cost is bounded whatever the
/// history holds), with their failures and median latency, and whether the most recent
/// `streak` calls all failed.
pub async fn recent_call_stats(
    pool: &PgPool,
    window: Duration,
    streak: i64,
    per_model: i64,
) -> Result<Vec<CallStats>, sqlx::Error> {
    sqlx::query_as(RECENT_CALL_STATS)
        .bind(window.as_secs_f64())
        .bind(streak)
        .bind(per_model.max(streak))
        .fetch_all(pool)
        .await
}
