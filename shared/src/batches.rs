//! Batches: many generation requests submitted at once. The batch is validated as a whole (one
//! bad item rejects it, naming every bad item's index, and nothing is created); then one
//! transaction creates the batch, every request row and every job (one statement; the jobs at
//! [`queue::BATCH_PRIORITY`] so interactive requests go first, placed by the user's fair share
//! of the batch class so that one user's batches do not hold back another's).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

use crate::cache::CacheScope;
use crate::error::{DomainError, ItemError};
use crate::models::ModelRegistry;
use crate::prompts::PromptLibrary;
use crate::queue;
use crate::requests::{GenerateBody, NewRequest, Status};

/// Most items one batch may hold.
pub const MAX_BATCH_ITEMS: usize = 1000;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// The requests, each a `POST /api/v1/generate` body.
    #[serde(default)]
    pub items: Option<Vec<Value>>,
    /// Another name for `items` (give one of the two).
    #[serde(default)]
    pub requests: Option<Vec<Value>>,
    #[serde(default)]
    pub metadata: Option<Value>,
}

/// A validated batch, ready to be stored.
#[derive(Debug)]
pub struct NewBatch {
    pub id: Uuid,
    pub user_id: Uuid,
    pub metadata: Value,
    pub items: Vec<NewRequest>,
    /// Trace id of the api request that submitted the batch: every item carries it.
    pub trace_id: Option<String>,
    /// Set for a batch made through OpenAI's Batch API (`openai_batches`).
    pub openai: Option<OpenAiInput>,
}

/// What a batch made from an uploaded file keeps beyond a native batch.
#[derive(Debug, Clone)]
pub struct OpenAiInput {
    pub input_file_id: Uuid,
    pub endpoint: String,
    pub completion_window: String,
}

impl NewBatch {
    /// Validates every item (as a single submit would be) and reports all bad ones at once.
    pub fn validate(
        body: BatchBody,
        user_id: Uuid,
        models: &ModelRegistry,
        prompts: &PromptLibrary,
        max_attempts: u32,
        cache_scope: CacheScope,
    ) -> Result<Self, DomainError> {
        let items = match (body.items, body.requests) {
            (Some(items), None) | (None, Some(items)) => items,
            (Some(_), Some(_)) => {
                return Err(DomainError::validation(
                    "requests",
                    "give items or requests (the same list), not both",
                ));
            }
            (None, None) => {
                return Err(DomainError::validation(
                    "items",
                    "items (or requests) is required: the list of generate bodies",
                ));
            }
        };
        if items.is_empty() || items.len() > MAX_BATCH_ITEMS {
            return Err(DomainError::validation(
                "items",
                format!("a batch holds 1 to {MAX_BATCH_ITEMS} items"),
            ));
        }
        let metadata = match body.metadata {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(v @ Value::Object(_)) => v,
            Some(_) => {
                return Err(DomainError::validation(
                    "metadata",
                    "metadata must be a JSON object",
                ));
            }
        };
        let bodies = items.into_iter().map(|raw| {
            serde_json::from_value::<GenerateBody>(raw).map_err(|e| DomainError::Validation {
                field: None,
                message: e.to_string(),
            })
        });
        let items = validate_items(bodies, user_id, models, prompts, max_attempts, cache_scope)?;
        Ok(Self {
            id: Uuid::now_v7(),
            user_id,
            metadata,
            items,
            trace_id: None,
            openai: None,
        })
    }
}

/// Validates every body (as a single submit would be) and reports all bad ones at once, by
/// their index in `bodies`; a body that could not be read is given as its error.
pub fn validate_items(
    bodies: impl Iterator<Item = Result<GenerateBody, DomainError>>,
    user_id: Uuid,
    models: &ModelRegistry,
    prompts: &PromptLibrary,
    max_attempts: u32,
    cache_scope: CacheScope,
) -> Result<Vec<NewRequest>, DomainError> {
    let mut items = Vec::new();
    let mut errors = Vec::new();
    for (index, body) in bodies.enumerate() {
        let parsed = body
            .and_then(|item| item.resolve_template(prompts, models))
            .and_then(|item| {
                NewRequest::validate(item, user_id, None, models, max_attempts, cache_scope)
            });
        match parsed {
            Ok(item) => items.push(item),
            Err(DomainError::Validation { field, message }) => errors.push(ItemError {
                index,
                field,
                message,
            }),
            Err(DomainError::BadRequest(message)) => errors.push(ItemError {
                index,
                field: None,
                message,
            }),
            Err(other) => return Err(other),
        }
    }
    if !errors.is_empty() {
        return Err(DomainError::InvalidItems(errors));
    }
    Ok(items)
}

/// The statement that stores a batch's requests and their jobs.
const INSERT_ITEMS: &str = include_str!("batches/sql/insert_items.sql");

/// Stores the batch, its requests and their jobs in one transaction (in a task of its own, so
/// a client that disconnects cannot cancel it halfway).
pub async fn create(pool: &PgPool, batch: NewBatch) -> Result<Vec<Uuid>, DomainError> {
    let pool = pool.clone();
    tokio::spawn(async move {
        let mut tx = pool.begin().await?;
        let openai = batch.openai.as_ref();
        sqlx::query(
            "INSERT INTO generation_batches
                 (id, user_id, item_count, metadata, input_file_id, endpoint, completion_window,
                  expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, NOW() + make_interval(secs => $8))",
        )
        .bind(batch.id)
        .bind(batch.user_id)
        .bind(i32::try_from(batch.items.len()).unwrap_or(i32::MAX))
        .bind(&batch.metadata)
        .bind(openai.map(|o| o.input_file_id))
        .bind(openai.map(|o| o.endpoint.as_str()))
        .bind(openai.map(|o| o.completion_window.as_str()))
        .bind(
            openai
                .and_then(|o| crate::openai_batches::completion_window(&o.completion_window))
                .map(|window| window.as_secs_f64()),
        )
        .execute(&mut *tx)
        .await?;
        let items = &batch.items;
        let ids: Vec<Uuid> = items.iter().map(|i| i.id).collect();
        let jobs = items
            .iter()
            .map(|i| {
                queue::JobRow::new(
                    i.id,
                    i.max_attempts,
                    queue::BATCH_PRIORITY,
                    i.traceparent.as_deref(),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let json =
            |f: fn(&NewRequest) -> &Value| items.iter().map(f).cloned().collect::<Vec<Value>>();
        sqlx::query(INSERT_ITEMS)
            .bind(&ids)
            .bind(items.iter().map(|i| i.prompt.clone()).collect::<Vec<_>>())
            .bind(json(|i| &i.context))
            .bind(items.iter().map(|i| i.model.clone()).collect::<Vec<_>>())
            .bind(json(|i| &i.metadata))
            .bind(json(|i| &i.parameters))
            .bind(jobs.iter().map(|j| j.id.clone()).collect::<Vec<_>>())
            .bind(items.iter().map(|i| i.max_attempts).collect::<Vec<_>>())
            .bind(
                items
                    .iter()
                    .map(|i| i.cache_key.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(
                items
                    .iter()
                    .map(|i| serde_json::to_value(&i.cache_policy).unwrap_or(Value::Null))
                    .collect::<Vec<_>>(),
            )
            .bind(items.iter().map(|i| i.estimated_tokens).collect::<Vec<_>>())
            .bind(batch.user_id)
            .bind(batch.id)
            .bind(&batch.trace_id)
            .bind(jobs.iter().map(|j| j.job.clone()).collect::<Vec<_>>())
            .bind(jobs.iter().map(|j| j.max_attempts).collect::<Vec<_>>())
            .bind(i32::try_from(queue::BATCH_PRIORITY).unwrap_or_default())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ids)
    })
    .await
    .map_err(DomainError::internal)?
}

/// One item of a batch, as its owner sees it.
#[derive(Debug, Serialize, FromRow)]
pub struct BatchItem {
    pub index: i32,
    pub request_id: Uuid,
    pub status: Status,
    pub result: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub tokens_used: Option<i32>,
}

#[derive(Debug, Serialize)]
pub struct BatchView {
    pub batch_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub metadata: Value,
    pub total: i64,
    pub counts: Map<String, Value>,
    /// Finished items (completed, failed or cancelled) over all items.
    pub progress: f64,
    pub done: bool,
    pub items: Vec<BatchItem>,
}

/// The batch if it exists and belongs to `user_id`.
pub async fn find_for_user(
    pool: &PgPool,
    id: Uuid,
    user_id: Uuid,
) -> Result<Option<BatchView>, sqlx::Error> {
    let batch: Option<(DateTime<Utc>, Value, i32)> = sqlx::query_as(
        "SELECT created_at, metadata, item_count FROM generation_batches WHERE id = $1 AND user_id = $2",
    )
    .bind(id)
    .bind(user_id)
    .fetch_optional(pool)
    .await?;
    let Some((created_at, metadata, item_count)) = batch else {
        return Ok(None);
    };
    let items: Vec<BatchItem> = sqlx::query_as(
        "SELECT batch_index AS index, id AS request_id, status, result, error_code, error_message, tokens_used
         FROM generation_requests WHERE batch_id = $1 ORDER BY batch_index",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let mut counts = Map::new();
    for status in ["pending", "running", "completed", "failed", "cancelled"] {
        let n = items.iter().filter(|i| i.status.as_str() == status).count();
        counts.insert(status.to_owned(), Value::from(n));
    }
    let finished = items.iter().filter(|i| i.status.is_final()).count();
    let total = i64::from(item_count);
    Ok(Some(BatchView {
        batch_id: id,
        created_at,
        metadata,
        total,
        counts,
        progress: if total == 0 {
            1.0
        } else {
            finished as f64 / total as f64
        },
        done: finished as i64 == total,
        items,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_jobs_go_to_the_generation_queue() {
        let queue = format!("'{}'", queue::QUEUE);
        assert!(
            INSERT_ITEMS.contains(&queue),
            "insert_items.sql names another queue"
        );
    }
}
