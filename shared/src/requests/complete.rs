//! Successful runs: [`complete_many`] completes claimed requests in one statement, with their
//! attempts, the identical requests that waited for them, their usage, their outbox events and
//! their cache entries; [`complete`] is its batch of one.

use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::batch::{answer_each, only};
use super::claim::ClaimedRequest;
use super::{StillHeld, millis, to_i32};
use crate::cache::{self, CachedResponse};
use crate::generation::GenerationOutput;

/// Completes the request and records its successful attempt, in one statement. The batch of
/// one of [`complete_many`].
pub async fn complete(
    pool: &PgPool,
    claimed: &ClaimedRequest,
    worker: &str,
    completion: &Success<'_>,
) -> Result<StillHeld, sqlx::Error> {
    let row = SuccessRow::new(claimed, completion);
    only(complete_many(pool, worker, std::slice::from_ref(&row)).await?)
}

/// One completion as the completing statement takes it: owned, so that it can wait in a
/// batch.
#[derive(Debug, Clone)]
pub struct SuccessRow {
    id: Uuid,
    /// The claim's run (`attempts` when claimed): the guard of the write.
    run: i32,
    attempt: i32,
    result: String,
    provider: String,
    provider_model: String,
    prompt_tokens: i32,
    completion_tokens: i32,
    finish_reason: String,
    /// The tools the model called (NULL: none).
    tool_calls: Option<Value>,
    latency_ms: i32,
    served_model: String,
    cost_usd: f64,
    /// What the cache stores the result under, unless the request said `no_store`.
    store_key: Option<String>,
    cache_ttl_secs: f64,
    cache_metadata: Value,
}

impl SuccessRow {
    /// The completion of `claimed`'s run with `completion`.
    pub fn new(claimed: &ClaimedRequest, completion: &Success<'_>) -> Self {
        let output = completion.output;
        Self {
            id: claimed.id,
            run: claimed.attempts,
            attempt: completion.attempt,
            result: output.text.clone(),
            provider: completion.provider.to_owned(),
            provider_model: output.upstream_model.clone(),
            prompt_tokens: to_i32(output.prompt_tokens),
            completion_tokens: to_i32(output.completion_tokens),
            finish_reason: output.finish_reason.clone(),
            tool_calls: (!output.tool_calls.is_empty())
                .then(|| serde_json::to_value(&output.tool_calls).ok())
                .flatten(),
            latency_ms: millis(completion.latency),
            served_model: completion.served_model.to_owned(),
            cost_usd: completion.cost_usd,
            store_key: claimed
                .cache_key
                .clone()
                .filter(|_| !claimed.cache_policy.no_store),
            cache_ttl_secs: completion.cache_ttl.as_secs_f64(),
            cache_metadata: cache::metadata_of(
                &completion.cached_response(),
                claimed.metadata.get("template_id").and_then(Value::as_str),
            ),
        }
    }
}

/// [`complete_many`]'s statement.
pub(super) const COMPLETE_MANY: &str = include_str!("sql/complete_many.sql");

/// Completes the requests of `rows` and records their successful attempts, in one statement
/// (one round trip, one commit), each as [`complete`] would alone: the answers are in the
/// order of `rows`. Each row is guarded by its own claim (`status = 'running' AND claimed_by
/// = worker AND attempts = its run`): a row whose lease was lost answers `false` and writes
/// nothing, the others complete.
///
/// With several rows in one statement, what they share is folded first: an `INSERT … ON
/// CONFLICT DO UPDATE` may not touch a row twice, so the usage rows are summed per
/// `(user_id, day, model, shard)`, and of two results with one cache key the later one is
/// stored. Rows that several workers' statements may touch at once (usage, cache entries) are
/// written in key order, so that two batches never wait for each other in a cycle.
pub async fn complete_many(
    pool: &PgPool,
    worker: &str,
    rows: &[SuccessRow],
) -> Result<Vec<StillHeld>, sqlx::Error> {
    fn column<'a, T>(rows: &'a [SuccessRow], f: impl Fn(&'a SuccessRow) -> T) -> Vec<T> {
        rows.iter().map(f).collect()
    }
    let held: Vec<i64> = sqlx::query_scalar(COMPLETE_MANY)
        .bind(worker)
        .bind(column(rows, |r| r.id))
        .bind(column(rows, |r| r.run))
        .bind(column(rows, |r| r.attempt))
        .bind(column(rows, |r| r.result.as_str()))
        .bind(column(rows, |r| r.provider.as_str()))
        .bind(column(rows, |r| r.provider_model.as_str()))
        .bind(column(rows, |r| r.prompt_tokens))
        .bind(column(rows, |r| r.completion_tokens))
        .bind(column(rows, |r| r.finish_reason.as_str()))
        .bind(column(rows, |r| r.latency_ms))
        .bind(column(rows, |r| r.served_model.as_str()))
        .bind(column(rows, |r| r.cost_usd))
        .bind(column(rows, |r| r.store_key.as_deref()))
        .bind(column(rows, |r| r.cache_ttl_secs))
        .bind(column(rows, |r| &r.cache_metadata))
        .bind(column(rows, |r| r.tool_calls.as_ref()))
        .fetch_all(pool)
        .await?;
    let mut answers = vec![false; rows.len()];
    for ord in held {
        // `WITH ORDINALITY` counts from 1.
        if let Some(answer) = usize::try_from(ord - 1)
            .ok()
            .and_then(|i| answers.get_mut(i))
        {
            *answer = true;
        }
    }
    Ok(answers)
}

/// [`complete_many`] with an answer for each row, whatever happened: what the worker's
/// completion batches run (see `answer_each` for the errors).
pub async fn complete_each(
    pool: &PgPool,
    worker: &str,
    rows: &[SuccessRow],
) -> Vec<Result<StillHeld, sqlx::Error>> {
    let batch = complete_many(pool, worker, rows)
        .await
        .map(|held| held.into_iter().map(Ok).collect());
    answer_each(rows, batch, |row| async move {
        only(complete_many(pool, worker, std::slice::from_ref(row)).await?)
    })
    .await
}

/// What a successful run produced, as [`complete`] records it.
#[derive(Debug)]
pub struct Success<'a> {
    pub attempt: i32,
    pub provider: &'a str,
    pub served_model: &'a str,
    pub output: &'a GenerationOutput,
    pub latency: Duration,
    pub cost_usd: f64,
    /// How long the response cache keeps the result.
    pub cache_ttl: Duration,
}

impl Success<'_> {
    /// The result as a cache entry.
    pub fn cached_response(&self) -> CachedResponse {
        CachedResponse {
            response: self.output.text.clone(),
            provider: Some(self.provider.to_owned()),
            provider_model: Some(self.output.upstream_model.clone()),
            served_model: Some(self.served_model.to_owned()),
            prompt_tokens: Some(to_i32(self.output.prompt_tokens)),
            completion_tokens: Some(to_i32(self.output.completion_tokens)),
            finish_reason: Some(self.output.finish_reason.clone()),
            tool_calls: (!self.output.tool_calls.is_empty())
                .then(|| self.output.tool_calls.clone()),
        }
    }
}
