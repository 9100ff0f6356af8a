//! The array parameters of the insert statements: one array per column, one element per row,
//! bound in the order their `unnest` takes them.

use serde_json::Value;
use sqlx::postgres::PgArguments;
use sqlx::{Arguments, Postgres};
use uuid::Uuid;

use super::body::NewRequest;
use super::submit::Insert;
use crate::cache::{CachePolicy, CachedResponse};
use crate::generation::ToolCall;
use crate::queue;

/// The columns of a request row that both insert statements (`sql/insert_many.sql`,
/// `sql/insert_hits.sql`) take, as arrays bound first and in this order (`$1` to `$21`).
#[derive(Default)]
pub(super) struct RowColumns<'a> {
    id: Vec<Uuid>,
    prompt: Vec<&'a str>,
    context: Vec<&'a Value>,
    model: Vec<&'a str>,
    user_id: Vec<Uuid>,
    metadata: Vec<&'a Value>,
    parameters: Vec<&'a Value>,
    job_id: Vec<String>,
    max_attempts: Vec<i32>,
    stream: Vec<bool>,
    cache_key: Vec<Option<&'a str>>,
    cache_policy: Vec<sqlx::types::Json<&'a CachePolicy>>,
    estimated_tokens: Vec<i32>,
    trace_id: Vec<Option<&'a str>>,
    result: Vec<Option<&'a str>>,
    provider: Vec<Option<&'a str>>,
    provider_model: Vec<Option<&'a str>>,
    served_model: Vec<Option<&'a str>>,
    prompt_tokens: Vec<Option<i32>>,
    completion_tokens: Vec<Option<i32>>,
    finish_reason: Vec<Option<&'a str>>,
    tool_calls: ToolCallsColumn<'a>,
}

/// The tool calls of the cached answers rows come with: each statement binds them where it
/// takes them (after its own columns).
pub(super) type ToolCallsColumn<'a> = Vec<Option<sqlx::types::Json<&'a Vec<ToolCall>>>>;

impl<'a> RowColumns<'a> {
    /// A row: the request, its job's id, and the cached answer it comes with, if any.
    pub(super) fn push(
        &mut self,
        new: &'a NewRequest,
        job_id: String,
        hit: Option<&'a CachedResponse>,
    ) {
        self.id.push(new.id);
        self.prompt.push(&new.prompt);
        self.context.push(&new.context);
        self.model.push(&new.model);
        self.user_id.push(new.user_id);
        self.metadata.push(&new.metadata);
        self.parameters.push(&new.parameters);
        self.job_id.push(job_id);
        self.max_attempts.push(new.max_attempts);
        self.stream.push(new.stream);
        self.cache_key.push(new.cache_key.as_deref());
        self.cache_policy.push(sqlx::types::Json(&new.cache_policy));
        self.estimated_tokens.push(new.estimated_tokens);
        self.trace_id.push(new.trace_id.as_deref());
        self.result.push(hit.map(|h| h.response.as_str()));
        self.provider.push(hit.and_then(|h| h.provider.as_deref()));
        self.provider_model
            .push(hit.and_then(|h| h.provider_model.as_deref()));
        self.served_model
            .push(hit.and_then(|h| h.served_model.as_deref()));
        self.prompt_tokens.push(hit.and_then(|h| h.prompt_tokens));
        self.completion_tokens
            .push(hit.and_then(|h| h.completion_tokens));
        self.finish_reason
            .push(hit.and_then(|h| h.finish_reason.as_deref()));
        self.tool_calls.push(
            hit.and_then(|h| h.tool_calls.as_ref())
                .map(sqlx::types::Json),
        );
    }

    /// Binds `$1` to `$21`; answers the tool calls, for the statement to bind where it takes
    /// them.
    pub(super) fn add_to(self, args: &mut PgArguments) -> Result<ToolCallsColumn<'a>, sqlx::Error> {
        add(args, self.id)?;
        add(args, self.prompt)?;
        add(args, self.context)?;
        add(args, self.model)?;
        add(args, self.user_id)?;
        add(args, self.metadata)?;
        add(args, self.parameters)?;
        add(args, self.job_id)?;
        add(args, self.max_attempts)?;
        add(args, self.stream)?;
        add(args, self.cache_key)?;
        add(args, self.cache_policy)?;
        add(args, self.estimated_tokens)?;
        add(args, self.trace_id)?;
        add(args, self.result)?;
        add(args, self.provider)?;
        add(args, self.provider_model)?;
        add(args, self.served_model)?;
        add(args, self.prompt_tokens)?;
        add(args, self.completion_tokens)?;
        add(args, self.finish_reason)?;
        Ok(self.tool_calls)
    }
}

/// Binds the next parameter.
pub(super) fn add<'q, T>(args: &mut PgArguments, value: T) -> Result<(), sqlx::Error>
where
    T: sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres>,
{
    args.add(value).map_err(sqlx::Error::Encode)
}

/// [`super::insert_many`]'s rows, one array per column: the row's own (`$1` to `$21`), then what
/// decides how it is stored and its job's (`$22` to `$26`), then the hit's tool calls (`$27`).
#[derive(Default)]
pub(super) struct InsertColumns<'a> {
    row: RowColumns<'a>,
    idempotency_key: Vec<Option<&'a str>>,
    lookup_key: Vec<Option<&'a str>>,
    job: Vec<Vec<u8>>,
    job_max_attempts: Vec<i32>,
    priority: Vec<i32>,
}

impl<'a> InsertColumns<'a> {
    pub(super) fn push(&mut self, new: &'a NewRequest, how: &'a Insert) -> Result<(), sqlx::Error> {
        let (hit, lookup_key) = match how {
            Insert::Queued => (None, None),
            Insert::CachedOrQueued => (None, new.cache_key.as_deref()),
            Insert::CacheHit(hit) => (Some(hit), None),
        };
        let job = queue::JobRow::new(
            new.id,
            new.max_attempts,
            queue::INTERACTIVE_PRIORITY,
            new.traceparent.as_deref(),
        )?;
        // The request's job id (a column of its row) is its job row's id.
        self.row.push(new, job.id, hit);
        self.idempotency_key.push(new.idempotency_key.as_deref());
        self.lookup_key.push(lookup_key);
        self.job.push(job.job);
        self.job_max_attempts.push(job.max_attempts);
        self.priority.push(job.priority);
        Ok(())
    }

    pub(super) fn add_to(self, args: &mut PgArguments) -> Result<(), sqlx::Error> {
        let tool_calls = self.row.add_to(args)?;
        add(args, self.idempotency_key)?;
        add(args, self.lookup_key)?;
        add(args, self.job)?;
        add(args, self.job_max_attempts)?;
        add(args, self.priority)?;
        add(args, tool_calls)
    }
}
