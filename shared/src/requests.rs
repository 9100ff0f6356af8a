//! Generation requests: the `generation_requests` row is the durable record of a request from
//! submit to final state, and `generation_attempts` holds one row per provider call.
//!
//! This module owns both tables. The api creates rows (with their job, in one statement, group-
//! committed with concurrent submits: [`Submitter`], [`insert_many`]) and reads them; the worker claims, completes and fails them through the functions here, each
//! guarded so that a second delivery of the same job can neither run nor finish it twice.
//!
//! The claim and the completing write take a batch ([`claim_many`], [`complete_many`]): a
//! worker group-commits its concurrent jobs' calls, one statement for many rows, each row with
//! its own guard and its own answer. [`claim`] and [`complete`] are the batch of one;
//! [`claim_each`] and [`complete_each`] answer every caller of a batch even when its statement
//! fails (see `answer_each`).
//!
//! BY_ID_ONLY: a statement that takes a batch of requests by id tests their status with a
//! `CASE`, never `status = …`. An equality on `status` lets the planner read the rows through a
//! status index instead of the primary key, and it does whenever the statistics say few rows
//! are pending (a new table, a truncate, a sudden backlog): each statement then walked every
//! pending row and the dead index entries of every finished one, and a 20,000-job drain ran at
//! 416 jobs/s against 983 for 5,000 jobs. A `CASE` is no index condition, so the ids decide
//! (`group_commit::batched_statements_find_their_rows_by_id_whatever_the_statistics` reads
//! their plans).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::postgres::PgArguments;
use sqlx::{Arguments, FromRow, PgConnection, PgPool, Postgres};
use uuid::Uuid;

use crate::cache::{self, CachePolicy, CachedResponse, ResponseCache};
use crate::error::{self, DomainError};
use crate::generation::{
    GenerationOutput, GenerationParams, MockBehaviour, ResponseFormat, TurnRole, estimate_tokens,
};
use crate::group_commit::Batcher;
use crate::json_schema;
use crate::models::{Capability, ModelRegistry, ProviderKind};
use crate::prompts::{OutputFormat, PromptLibrary, RenderError};
use crate::queue;
use crate::usage;

/// Longest prompt accepted, in characters.
pub const MAX_PROMPT_CHARS: usize = 100_000;
/// Output tokens a request without `max_tokens` is assumed to use, for rate limiting.
const DEFAULT_OUTPUT_ESTIMATE: u32 = 1024;
/// Most earlier turns a conversation may carry.
pub const MAX_HISTORY_TURNS: usize = 256;
/// Longest `Idempotency-Key` accepted.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

// Stored in the seed's `status VARCHAR(50)` column, so it decodes from any text type.
impl sqlx::Type<Postgres> for Status {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <String as sqlx::Type<Postgres>>::type_info()
    }
    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <String as sqlx::Type<Postgres>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, Postgres> for Status {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        match <&str as sqlx::Decode<Postgres>>::decode(value)? {
            "pending" => Ok(Self::Pending),
            "running" => Ok(Self::Running),
            "completed" => Ok(Self::Completed),
            "failed" => Ok(Self::Failed),
            "cancelled" => Ok(Self::Cancelled),
            other => Err(format!("unknown request status `{other}`").into()),
        }
    }
}

/// The body of `POST /api/v1/generate`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateBody {
    /// The prompt; or give `template_id` and `params` to render one of `prompts/`.
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub template_id: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub params: Option<Map<String, Value>>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub context: Option<Value>,
    #[serde(default)]
    pub parameters: Option<GenerationParams>,
    #[serde(default)]
    pub metadata: Option<Value>,
    /// Controls of the mock provider (tests, benchmarks); refused for other models.
    #[serde(default)]
    pub mock: Option<MockBehaviour>,
    /// Response cache controls: `no_cache`, `no_store`, `ttl_secs`.
    #[serde(default)]
    pub cache: Option<CachePolicy>,
}

impl GenerateBody {
    /// Renders the body's template, if it names one: the rendered text becomes the prompt, the
    /// template id and version go into the metadata, the template's default model applies when
    /// none is given (and it can run), and its JSON output turns on JSON validation.
    pub fn resolve_template(
        mut self,
        library: &PromptLibrary,
        models: &ModelRegistry,
    ) -> Result<Self, DomainError> {
        let Some(template_id) = self.template_id.take() else {
            if self.params.is_some() {
                return Err(DomainError::validation(
                    "params",
                    "params go with template_id",
                ));
            }
            return Ok(self);
        };
        if self.prompt.is_some() {
            return Err(DomainError::validation(
                "prompt",
                "give either prompt or template_id, not both",
            ));
        }
        let params = self.params.take().unwrap_or_default();
        let rendered = library.render(&template_id, &params).map_err(|e| match e {
            RenderError::UnknownTemplate(_) => {
                DomainError::validation("template_id", e.to_string())
            }
            RenderError::Params(_) | RenderError::Render(_) => {
                DomainError::validation("params", e.to_string())
            }
        })?;
        let mut metadata = match self.metadata.take() {
            Some(Value::Object(map)) => map,
            None | Some(Value::Null) => Map::new(),
            Some(_) => {
                return Err(DomainError::validation(
                    "metadata",
                    "metadata must be a JSON object",
                ));
            }
        };
        metadata.insert(
            "template_id".into(),
            Value::from(rendered.template_id.clone()),
        );
        metadata.insert("template_version".into(), Value::from(rendered.version));
        self.metadata = Some(Value::Object(metadata));
        if self.model.is_none()
            && let Some(default) = rendered.default_model.as_deref()
            && models
                .chain(default)
                .iter()
                .any(|m| models.unavailable_reason(m).is_none())
        {
            self.model = Some(default.to_owned());
        }
        if rendered.output == OutputFormat::Json {
            let params = self
                .parameters
                .get_or_insert_with(GenerationParams::default);
            if params.response_format.is_none() {
                params.response_format = Some(match rendered.output_schema {
                    Some(schema) => ResponseFormat::JsonSchema { schema },
                    None => ResponseFormat::JsonObject,
                });
            }
        }
        self.prompt = Some(rendered.prompt);
        Ok(self)
    }
}

/// A validated request, ready to be stored.
#[derive(Debug, Clone)]
pub struct NewRequest {
    pub id: Uuid,
    pub user_id: Uuid,
    pub prompt: String,
    pub model: String,
    pub context: Value,
    pub parameters: Value,
    pub metadata: Value,
    pub idempotency_key: Option<String>,
    pub max_attempts: i32,
    /// Submitted on the streaming endpoint: the worker relays its tokens.
    pub stream: bool,
    /// `None` when the request neither reads nor writes the cache.
    pub cache_key: Option<String>,
    pub cache_policy: CachePolicy,
    /// Tokens the request may consume (prompt estimate + output limit), for rate limits.
    pub estimated_tokens: i32,
    /// Trace id of the api request that submitted it (W3C trace-context form, 32 hex digits):
    /// the worker's job span carries it too.
    pub trace_id: Option<String>,
}

impl NewRequest {
    /// Checks a submitted body against the rules and the model registry.
    pub fn validate(
        body: GenerateBody,
        user_id: Uuid,
        idempotency_key: Option<String>,
        models: &ModelRegistry,
        max_attempts: u32,
    ) -> Result<Self, DomainError> {
        if body.template_id.is_some() {
            return Err(DomainError::internal(std::io::Error::other(
                "template not rendered before validation",
            )));
        }
        let Some(prompt) = body.prompt else {
            return Err(DomainError::validation(
                "prompt",
                "prompt is required (or template_id with params)",
            ));
        };
        if prompt.trim().is_empty() {
            return Err(DomainError::validation(
                "prompt",
                "prompt must not be empty",
            ));
        }
        if prompt.chars().count() > MAX_PROMPT_CHARS {
            return Err(DomainError::validation(
                "prompt",
                format!("prompt is longer than {MAX_PROMPT_CHARS} characters"),
            ));
        }
        let model_id = body
            .model
            .unwrap_or_else(|| models.default_model().to_owned());
        let Some(model) = models.get(&model_id) else {
            let known: Vec<_> = models.ids().collect();
            return Err(DomainError::validation(
                "model",
                format!(
                    "unknown model `{}`; known models: {}",
                    truncate(&model_id, 60),
                    known.join(", ")
                ),
            ));
        };
        if models
            .chain(&model.id)
            .iter()
            .all(|m| models.unavailable_reason(m).is_some())
        {
            let reason = models.unavailable_reason(model).unwrap_or("unavailable");
            return Err(DomainError::validation(
                "model",
                format!(
                    "model `{}` is unavailable ({reason}) and so is every fallback",
                    model.id
                ),
            ));
        }
        let params = body.parameters.unwrap_or_default();
        validate_params(&params, model.max_output_tokens)?;
        let history_chars = validate_history(&params)?;
        if prompt.chars().count() + history_chars > MAX_PROMPT_CHARS {
            return Err(DomainError::validation(
                "parameters.history",
                format!("prompt and history are longer than {MAX_PROMPT_CHARS} characters"),
            ));
        }
        if let Some(schema) = params.json_output() {
            if !model.supports(Capability::Json) {
                return Err(DomainError::validation(
                    "parameters.response_format",
                    format!("model `{}` does not support JSON output", model.id),
                ));
            }
            if let Some(schema) = schema {
                json_schema::check_schema(schema).map_err(|e| {
                    DomainError::validation(
                        "parameters.response_format.schema",
                        format!("invalid JSON Schema: {e}"),
                    )
                })?;
            }
        }
        let context = object_or_empty(body.context, "context")?;
        let mut metadata = match object_or_empty(body.metadata, "metadata")? {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        if let Some(mock) = body.mock {
            if model.provider != ProviderKind::Mock {
                return Err(DomainError::validation(
                    "mock",
                    "`mock` controls apply only to mock models",
                ));
            }
            metadata.insert(
                "mock".into(),
                serde_json::to_value(mock).map_err(DomainError::internal)?,
            );
        }
        if let Some(key) = &idempotency_key
            && (key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN)
        {
            return Err(DomainError::BadRequest(format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters"
            )));
        }
        let cache_policy = body.cache.unwrap_or_default();
        if cache_policy
            .ttl_secs
            .is_some_and(|t| t == 0 || t > cache::MAX_TTL_SECS)
        {
            return Err(DomainError::validation(
                "cache.ttl_secs",
                format!("ttl_secs must be between 1 and {}", cache::MAX_TTL_SECS),
            ));
        }
        let estimated_tokens = estimate_tokens(&prompt)
            .saturating_add(params.system.as_deref().map_or(0, estimate_tokens))
            .saturating_add(
                params
                    .history
                    .iter()
                    .flatten()
                    .fold(0, |n, t| n.saturating_add(estimate_tokens(&t.content))),
            )
            .saturating_add(
                params
                    .max_tokens
                    .unwrap_or(DEFAULT_OUTPUT_ESTIMATE.min(model.max_output_tokens)),
            );
        let parameters = serde_json::to_value(params).map_err(DomainError::internal)?;
        let cache_key = (!(cache_policy.no_cache && cache_policy.no_store))
            .then(|| cache::cache_key(&model.id, &prompt, &parameters, metadata.get("mock")));
        Ok(Self {
            id: Uuid::now_v7(),
            user_id,
            prompt,
            model: model.id.clone(),
            context,
            parameters,
            metadata: Value::Object(metadata),
            idempotency_key,
            max_attempts: i32::try_from(max_attempts.max(1)).unwrap_or(i32::MAX),
            stream: false,
            cache_key,
            cache_policy,
            estimated_tokens: i32::try_from(estimated_tokens).unwrap_or(i32::MAX),
            trace_id: None,
        })
    }
}

fn validate_params(params: &GenerationParams, max_output: u32) -> Result<(), DomainError> {
    if let Some(n) = params.max_tokens
        && (n == 0 || n > max_output)
    {
        return Err(DomainError::validation(
            "parameters.max_tokens",
            format!("max_tokens must be between 1 and {max_output} for this model"),
        ));
    }
    if let Some(t) = params.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(DomainError::validation(
            "parameters.temperature",
            "temperature must be between 0 and 2",
        ));
    }
    if let Some(p) = params.top_p
        && (!(0.0..=1.0).contains(&p) || p == 0.0)
    {
        return Err(DomainError::validation(
            "parameters.top_p",
            "top_p must be in (0, 1]",
        ));
    }
    if let Some(stop) = &params.stop
        && (stop.len() > 4 || stop.iter().any(|s| s.is_empty() || s.len() > 64))
    {
        return Err(DomainError::validation(
            "parameters.stop",
            "stop takes at most 4 non-empty strings of up to 64 bytes",
        ));
    }
    Ok(())
}

/// Checks the earlier turns of a conversation; answers their length in characters.
fn validate_history(params: &GenerationParams) -> Result<usize, DomainError> {
    let Some(history) = &params.history else {
        return Ok(0);
    };
    if history.len() > MAX_HISTORY_TURNS {
        return Err(DomainError::validation(
            "parameters.history",
            format!("history takes at most {MAX_HISTORY_TURNS} turns"),
        ));
    }
    if let Some(i) = history
        .iter()
        .position(|t| t.role == TurnRole::User && t.content.trim().is_empty())
    {
        return Err(DomainError::validation(
            "parameters.history",
            format!("history[{i}]: a user turn must not be empty"),
        ));
    }
    Ok(history.iter().map(|t| t.content.chars().count()).sum())
}

fn object_or_empty(value: Option<Value>, field: &'static str) -> Result<Value, DomainError> {
    match value {
        None | Some(Value::Null) => Ok(Value::Object(Map::new())),
        Some(v @ Value::Object(_)) => Ok(v),
        Some(_) => Err(DomainError::validation(
            field,
            format!("{field} must be a JSON object"),
        )),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    s.char_indices().nth(max).map_or(s, |(i, _)| &s[..i])
}

/// Outcome of a submit.
#[derive(Debug, Clone, Copy)]
pub struct Submitted {
    pub id: Uuid,
    pub status: Status,
    /// True when an earlier request with the same `Idempotency-Key` was returned instead.
    pub replayed: bool,
    /// Whether the response cache was asked and answered (`None`: not asked).
    pub cache_hit: Option<bool>,
}

/// Stores submits, group-committed: concurrent submits share one statement and one commit
/// (see [`crate::group_commit`]), so under load the database sees a few multi-row inserts instead
/// of one insert per request. Each submit still gets its own answer, only after the commit that
/// made it durable. Cloning shares the writers.
#[derive(Debug, Clone)]
pub struct Submitter {
    cache: Option<ResponseCache>,
    batches: Batcher<(NewRequest, Insert), Result<Submitted, DomainError>>,
    hits: HitRecords,
}

/// Cache hits answered before their row is written. A hit without an `Idempotency-Key` has
/// nothing left to decide: its answer is the cached result, which its response carries. Its
/// row (the request's history, the usage count) follows within milliseconds, written in large
/// batches off the answer's path by one writer, which retries while the database is
/// unreachable. Reads of such an id wait for its row ([`Submitter::written`]). Without this a
/// cache hit waited for a commit like a submit, and the database's share of each hit was the
/// larger part of its cost. The trade: an api process that dies (is killed) in those
/// milliseconds forgets the record of answers it already gave (never a request it accepted for
/// later); one that stops writes them first ([`Submitter::finish_hit_writes`]).
#[derive(Clone)]
struct HitRecords {
    writer: Batcher<(NewRequest, CachedResponse), ()>,
    pending: Arc<PendingHits>,
}

#[derive(Default)]
struct PendingHits {
    ids: Mutex<HashSet<Uuid>>,
    written: tokio::sync::Notify,
}

impl std::fmt::Debug for HitRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HitRecords").finish_non_exhaustive()
    }
}

/// Most cache hits waiting for their rows; past it, a hit is stored before it is answered, so
/// a slow or unreachable database cannot pile them up in memory. With 20,000 (a few KB each,
/// with their tasks), an api that fell behind at 15,000 hits a second kept 63 MB resident.
const MAX_PENDING_HITS: usize = 5_000;
/// Most hit rows in one statement. Encoding a statement holds the runtime thread it runs on,
/// so a bigger batch shows in the p99 of the answers sharing that thread (512 did, at 16
/// clients); a smaller one costs the database more statements (64 did, at 50).
const HIT_BATCH: usize = 256;
/// The hit writer's pause after a batch that was not full, so that the next one is larger
/// (fewer statements for the same rows); a read of a hit's id waits at most about this long.
const HIT_GATHER: Duration = Duration::from_millis(2);
/// How long the hit writer retries a batch while the database is unreachable.
const HIT_RETRY_FOR: Duration = Duration::from_secs(120);
/// How long a stopping api waits for the rows of the hits it answered
/// ([`Submitter::finish_hit_writes`]): milliseconds with a database that answers; bounded so
/// that a stop with the database down ends within compose's 15 s grace.
pub const HIT_ROWS_ON_STOP: Duration = Duration::from_secs(10);

/// Writers storing batches at the same time: one batch fills while the other runs. With four,
/// a writer was nearly always free, so batches stayed small (~7 rows at 50 clients) and
/// PostgreSQL paid each statement's fixed cost for few rows: two cut its CPU per submitted job
/// from 100–130 to 66–104 µs in interleaved runs, with no worse p99.
const SUBMIT_WRITERS: usize = 2;
/// Most submits in one statement.
const SUBMIT_BATCH: usize = 64;

impl Submitter {
    /// Starts the writers (inside a tokio runtime). Without `cache`, no submit reads it.
    pub fn new(pool: PgPool, cache: Option<ResponseCache>) -> Self {
        // One more connection than writers: the hit writer's.
        let pool = crate::db::writer_pool(&pool, SUBMIT_WRITERS as u32 + 1);
        let pending = Arc::new(PendingHits::default());
        let writer = {
            let (pool, pending) = (pool.clone(), pending.clone());
            Batcher::new(1, HIT_BATCH, move |batch| {
                let (pool, pending) = (pool.clone(), pending.clone());
                async move { record_hits(&pool, batch, &pending).await }
            })
        };
        let batches = Batcher::new(SUBMIT_WRITERS, SUBMIT_BATCH, move |batch| {
            let pool = pool.clone();
            async move { store_batch(&pool, batch).await }
        });
        Self {
            cache,
            batches,
            hits: HitRecords { writer, pending },
        }
    }

    /// Waits (a few seconds at most) until the row of a cache hit answered by this process is
    /// written ([`HitRecords`]); at once for any other id.
    pub async fn written(&self, id: Uuid) {
        let deadline = Instant::now() + Duration::from_secs(10);
        self.wait_for_hit_rows(deadline, |ids| ids.contains(&id))
            .await;
    }

    /// Waits until every cache hit this process answered has its row ([`HitRecords`]), for at
    /// most `within`: what a graceful stop does after its last answer, so that a deploy
    /// forgets no record. `false` if some rows were still unwritten.
    pub async fn finish_hit_writes(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        !self
            .wait_for_hit_rows(deadline, |ids| !ids.is_empty())
            .await
    }

    /// Waits until `unwritten` is false of the hits whose rows are not written yet, or until
    /// `deadline`; returns what it said last.
    async fn wait_for_hit_rows(
        &self,
        deadline: Instant,
        unwritten: impl Fn(&HashSet<Uuid>) -> bool,
    ) -> bool {
        loop {
            let written = self.hits.pending.written.notified();
            tokio::pin!(written);
            written.as_mut().enable();
            let waiting = self
                .hits
                .pending
                .ids
                .lock()
                .map(|ids| unwritten(&ids))
                .unwrap_or(false);
            let now = Instant::now();
            if !waiting || now >= deadline {
                return waiting;
            }
            let pause = (deadline - now).min(Duration::from_millis(500));
            let _ = tokio::time::timeout(pause, written).await;
        }
    }

    /// Reserves a place among the hits answered before their row is written, if this request
    /// may be one ([`HitRecords`]): a cache hit without an `Idempotency-Key`, room left.
    fn reserve_early_answer(&self, new: &NewRequest) -> bool {
        if new.idempotency_key.is_some() {
            return false;
        }
        let Ok(mut ids) = self.hits.pending.ids.lock() else {
            return false;
        };
        ids.len() < MAX_PENDING_HITS && ids.insert(new.id)
    }

    /// Looks the request up in the response cache's fast copy (unless it says `no_cache`): how
    /// it is to be stored. On a miss, the statement that stores the request looks in the table
    /// as well. (The api reads the fast copy in the rate limiter's round trip instead:
    /// [`Submitter::fast_key`].)
    pub async fn lookup(&self, new: &NewRequest) -> Insert {
        let read = match self.cache_for(new) {
            Some((cache, key)) => Some(cache.get_fast(key).await),
            None => None,
        };
        Self::insert_for(read)
    }

    /// The cache and the request's key, if the cache is to be read for it.
    fn cache_for<'a>(&'a self, new: &'a NewRequest) -> Option<(&'a ResponseCache, &'a str)> {
        match (&self.cache, &new.cache_key) {
            (Some(cache), Some(key)) if !new.cache_policy.no_cache => Some((cache, key)),
            _ => None,
        }
    }

    /// The Redis key of the request's fast cache copy, if the cache is to be read for it: for
    /// a caller that reads it itself (the rate limiter's script does, in its round trip).
    pub fn fast_key(&self, new: &NewRequest) -> Option<String> {
        self.cache_for(new).map(|(cache, key)| cache.redis_key(key))
    }

    /// How to store a request after its fast cache copy was read: `read` is `None` if it was
    /// not read, else the entry found (if any).
    pub fn insert_for(read: Option<Option<CachedResponse>>) -> Insert {
        match read {
            None => Insert::Queued,
            Some(Some(hit)) => Insert::CacheHit(hit),
            Some(None) => Insert::CachedOrQueued,
        }
    }

    /// Stores a request as [`Submitter::lookup`] said and commits: answered from the cache (a
    /// completed row, counted as a cache hit, no job), attached to an identical request already
    /// in flight (no job: that one's completion completes it), or with its job. Once queued for
    /// its batch, the request is stored even if the caller stops waiting (a client disconnect
    /// never cuts a submit halfway).
    pub async fn store(&self, new: NewRequest, how: Insert) -> Result<Submitted, DomainError> {
        let id = new.id;
        let (new, how) = match how {
            Insert::CacheHit(hit) if self.reserve_early_answer(&new) => {
                match self.hits.writer.send((new, hit)) {
                    Ok(()) => {
                        return Ok(Submitted {
                            id,
                            status: Status::Completed,
                            replayed: false,
                            cache_hit: Some(true),
                        });
                    }
                    Err((new, hit)) => {
                        // The writer is gone (the runtime is stopping): stored the ordinary way.
                        if let Ok(mut ids) = self.hits.pending.ids.lock() {
                            ids.remove(&id);
                        }
                        (new, Insert::CacheHit(hit))
                    }
                }
            }
            how => (new, how),
        };
        self.batches
            .call((new, how))
            .await
            .map_err(DomainError::internal)?
    }

    /// [`Submitter::lookup`], then [`Submitter::store`].
    pub async fn submit(&self, new: NewRequest) -> Result<Submitted, DomainError> {
        let how = self.lookup(&new).await;
        self.store(new, how).await
    }
}

/// The hit writer's run ([`HitRecords`], one writer): writes a batch of hits in one
/// statement, then lets the reads waiting for them go on.
async fn record_hits(
    pool: &PgPool,
    batch: Vec<(NewRequest, CachedResponse)>,
    pending: &PendingHits,
) -> Vec<()> {
    write_hits(pool, &batch).await;
    if let Ok(mut ids) = pending.ids.lock() {
        for (new, _) in &batch {
            ids.remove(&new.id);
        }
    }
    pending.written.notify_waiters();
    if batch.len() < HIT_BATCH {
        // Nobody waits for these rows but a read of their id: let the next batch gather.
        tokio::time::sleep(HIT_GATHER).await;
    }
    vec![(); batch.len()]
}

/// Writes hit rows; while the database is unreachable, tries again (backing off) for a while.
async fn write_hits(pool: &PgPool, batch: &[(NewRequest, CachedResponse)]) {
    let give_up_at = Instant::now() + HIT_RETRY_FOR;
    let mut pause = Duration::from_millis(100);
    let answers = loop {
        match insert_hits(pool, batch).await {
            Err(err) if error::is_unavailable(&err) && Instant::now() < give_up_at => {
                tracing::warn!(error = %err, rows = batch.len(), "cache hits' rows not written yet: the database is unavailable; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            stored => {
                let stored = stored.map(|()| batch.iter().map(|_| Ok(())).collect());
                break answer_each(batch, stored, |row| {
                    insert_hits(pool, std::slice::from_ref(row))
                })
                .await;
            }
        }
    };
    for (answer, (new, _)) in answers.iter().zip(batch) {
        if let Err(err) = answer {
            tracing::error!(request.id = %new.id, error = %err, "a cache hit's row could not be written");
        }
    }
}

/// [`insert_hits`]'s statement, built once: the rows as they are, completed, and their usage
/// counted beforehand. A hit answered early has no `Idempotency-Key` (nothing to conflict
/// with), no job and nothing to look up, so none of [`INSERT_MANY`]'s decisions are made here.
/// Without them (no cache lookup, no in-flight lookup, no `ON CONFLICT`, no `RETURNING` rows
/// joined back to the input), PostgreSQL's CPU per hit went from ~21 to ~16.5 µs (wrk, 16
/// connections).
static INSERT_HITS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH stored AS (
             INSERT INTO generation_requests
                 ({columns}, tokens_used, status, cached, cost_usd, completed_at)
             SELECT *, prompt_tokens + completion_tokens, 'completed', true, 0, NOW()
             FROM unnest({arrays}) AS v({columns})
         ), hit_counts AS (
             SELECT * FROM unnest($22::uuid[], $23::text[], $24::int8[]) AS c(user_id, model, n)
         )
         {usage}",
        columns = RowColumns::NAMES,
        arrays = RowColumns::ARRAYS,
        usage = usage::CACHE_HITS_FROM_COUNTS,
    )
});

/// Stores cache hits answered before their rows were written ([`HitRecords`]) and counts
/// them in the usage table, in one statement.
async fn insert_hits(
    pool: &PgPool,
    rows: &[(NewRequest, CachedResponse)],
) -> Result<(), sqlx::Error> {
    let mut columns = RowColumns::default();
    // The usage counters to add to: one per user and model, with its count.
    let (mut users, mut models, mut counts) = (Vec::new(), Vec::<&str>::new(), Vec::<i64>::new());
    for (new, hit) in rows {
        // A hit has no job, but its row names the one it would have had, as every row does.
        columns.push(new, queue::job_id_for(new.id).to_string(), Some(hit));
        match (0..users.len()).find(|&i| users[i] == new.user_id && models[i] == new.model) {
            Some(i) => counts[i] += 1,
            None => {
                users.push(new.user_id);
                models.push(&new.model);
                counts.push(1);
            }
        }
    }
    let mut args = PgArguments::default();
    columns.add_to(&mut args)?;
    add(&mut args, users)?;
    add(&mut args, models)?;
    add(&mut args, counts)?;
    let mut conn = pool.acquire().await?;
    sqlx::query_with(INSERT_HITS.as_str(), args)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The columns of a request row that both insert statements ([`INSERT_MANY`],
/// [`INSERT_HITS`]) take, as arrays bound first and in this order ([`RowColumns::ARRAYS`]).
#[derive(Default)]
struct RowColumns<'a> {
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
}

impl<'a> RowColumns<'a> {
    /// The columns' names, in their order.
    const NAMES: &'static str = "id, prompt, context, model, user_id, metadata, parameters, job_id,
        max_attempts, stream, cache_key, cache_policy, estimated_tokens, trace_id, result,
        provider, provider_model, served_model, prompt_tokens, completion_tokens, finish_reason";
    /// Their parameters, `$1` to `$21`.
    const ARRAYS: &'static str = "$1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::uuid[],
        $6::jsonb[], $7::jsonb[], $8::text[], $9::int4[], $10::bool[], $11::text[], $12::jsonb[],
        $13::int4[], $14::text[], $15::text[], $16::text[], $17::text[], $18::text[],
        $19::int4[], $20::int4[], $21::text[]";

    /// A row: the request, its job's id, and the cached answer it comes with, if any.
    fn push(&mut self, new: &'a NewRequest, job_id: String, hit: Option<&'a CachedResponse>) {
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
    }

    fn add_to(self, args: &mut PgArguments) -> Result<(), sqlx::Error> {
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
        add(args, self.finish_reason)
    }
}

/// Binds the next parameter.
fn add<'q, T>(args: &mut PgArguments, value: T) -> Result<(), sqlx::Error>
where
    T: sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres>,
{
    args.add(value).map_err(sqlx::Error::Encode)
}

/// Stores one batch of submits, answering each in order (a failed batch: see `answer_each`).
async fn store_batch(
    pool: &PgPool,
    batch: Vec<(NewRequest, Insert)>,
) -> Vec<Result<Submitted, DomainError>> {
    let rows: Vec<(&NewRequest, &Insert)> = batch.iter().map(|(new, how)| (new, how)).collect();
    let stored = store(pool, &rows).await;
    answer_stored(pool, &rows, stored).await
}

/// Each row's answer after the batch's statement (see `answer_each`): a failed batch is stored
/// again row by row.
async fn answer_stored(
    pool: &PgPool,
    rows: &[(&NewRequest, &Insert)],
    stored: Result<Vec<Result<Submitted, DomainError>>, sqlx::Error>,
) -> Vec<Result<Submitted, DomainError>> {
    answer_each(rows, stored, |row| async move {
        only(store(pool, std::slice::from_ref(row)).await?)?
    })
    .await
}

async fn store(
    pool: &PgPool,
    rows: &[(&NewRequest, &Insert)],
) -> Result<Vec<Result<Submitted, DomainError>>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    insert_many(&mut conn, rows).await
}

/// How a new request is stored.
#[derive(Debug)]
pub enum Insert {
    /// Pending, with its job.
    Queued,
    /// Completed from the cache table if it holds a live entry (the fast copy did not); else,
    /// if an identical request is in flight, pending as its follower (no job: the leader's
    /// completion completes it); else pending with its job. Decided inside the insert itself.
    CachedOrQueued,
    /// Completed at once from the cache's fast copy.
    CacheHit(CachedResponse),
}

/// Inserts a request and its job (one statement) on the caller's connection, e.g. inside a
/// transaction that writes more.
pub async fn insert_with_job(
    conn: &mut PgConnection,
    new: &NewRequest,
) -> Result<Submitted, DomainError> {
    only(insert_many(conn, &[(new, &Insert::Queued)]).await?)?
}

/// [`insert_many`]'s statement, built once.
static INSERT_MANY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH input AS (
             SELECT * FROM unnest({arrays}, $22::text[], $23::text[], $24::bytea[],
                 $25::int4[], $26::int4[]) WITH ORDINALITY
             AS v({columns}, idempotency_key, lookup_key, job, job_max_attempts, priority, ord)
         ), answered AS (
             -- the answer a request comes with (a fast-copy hit), or the cache table's
             SELECT v.id, v.prompt, v.context, v.model, v.user_id, v.metadata, v.parameters,
                    v.job_id, v.max_attempts, v.idempotency_key, v.stream, v.cache_key,
                    v.cache_policy, v.estimated_tokens, v.lookup_key, v.trace_id, v.ord,
                    COALESCE(v.result, c.response) AS result,
                    COALESCE(v.provider, c.provider) AS provider,
                    COALESCE(v.provider_model, c.provider_model) AS provider_model,
                    COALESCE(v.served_model, c.served_model) AS served_model,
                    COALESCE(v.prompt_tokens, c.prompt_tokens) AS prompt_tokens,
                    COALESCE(v.completion_tokens, c.completion_tokens) AS completion_tokens,
                    COALESCE(v.finish_reason, c.finish_reason) AS finish_reason
             FROM input v LEFT JOIN LATERAL ({live_entry}) c ON true
         ), inserted AS (
         INSERT INTO generation_requests
             (id, prompt, context, model, user_id, metadata, parameters, job_id, max_attempts,
              idempotency_key, stream, cache_key, cache_policy, estimated_tokens, status,
              coalesced_into, result, provider, provider_model, served_model, prompt_tokens,
              completion_tokens, tokens_used, finish_reason, cached, cost_usd, completed_at,
              trace_id)
         SELECT id, prompt, context, model, user_id, metadata, parameters, job_id, max_attempts,
                idempotency_key, stream, cache_key, cache_policy, estimated_tokens,
                CASE WHEN result IS NOT NULL THEN 'completed' ELSE 'pending' END,
                -- unanswered: the identical request in flight, if this one may follow it;
                -- unfinished spelt as the in-flight index spells it, which the age index's
                -- predicate is not implied by (migration 20261205000003)
                CASE WHEN result IS NULL THEN
                    (SELECT f.id FROM generation_requests f
                     WHERE a.lookup_key IS NOT NULL AND f.cache_key = a.lookup_key
                       AND (f.completed_at IS NULL) IS TRUE AND f.coalesced_into IS NULL
                       AND NOT (f.cache_policy @> '{{\"no_store\": true}}')
                     ORDER BY f.created_at LIMIT 1)
                END,
                result, provider, provider_model, served_model, prompt_tokens,
                completion_tokens, prompt_tokens + completion_tokens, finish_reason,
                result IS NOT NULL, CASE WHEN result IS NOT NULL THEN 0 END,
                CASE WHEN result IS NOT NULL THEN NOW() END, trace_id
         -- in the callers' order: of two rows with one Idempotency-Key, the first is stored
         FROM answered a ORDER BY ord
         ON CONFLICT (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
         RETURNING id, coalesced_into, user_id, model, cached
         ), usage AS ({usage}
         ), job AS (
             INSERT INTO {jobs}
             SELECT v.job_id, '{queue}', v.job, 'Pending', 0, v.job_max_attempts, NOW(),
                    v.priority, ''::hstore
             FROM inserted JOIN input v USING (id)
             WHERE NOT inserted.cached AND inserted.coalesced_into IS NULL
         )
         SELECT id, cached FROM inserted",
        arrays = RowColumns::ARRAYS,
        columns = RowColumns::NAMES,
        live_entry = cache::LIVE_ENTRY,
        usage = usage::CACHE_HITS_FROM_INSERTED,
        jobs = queue::INSERT_JOB_COLUMNS,
        queue = queue::QUEUE,
    )
});

/// Inserts the rows as each one's [`Insert`] says, with what goes with them, in one statement
/// (atomic, one round trip): each row's job (unless it follows an identical request in flight),
/// or a cache hit's usage. Answers each row in order: a row whose `Idempotency-Key` this user
/// used before answers with the earlier request (same body) or a conflict. `Err` is a failure
/// of the whole statement (nothing was stored).
pub async fn insert_many(
    conn: &mut PgConnection,
    rows: &[(&NewRequest, &Insert)],
) -> Result<Vec<Result<Submitted, DomainError>>, sqlx::Error> {
    let mut columns = InsertColumns::default();
    for &(new, how) in rows {
        columns.push(new, how)?;
    }
    let mut args = PgArguments::default();
    columns.add_to(&mut args)?;
    let stored: Vec<(Uuid, bool)> = sqlx::query_as_with(INSERT_MANY.as_str(), args)
        .fetch_all(&mut *conn)
        .await?;

    let mut answers = Vec::with_capacity(rows.len());
    for &(new, how) in rows {
        match stored.iter().find(|(id, _)| *id == new.id) {
            Some(&(id, cached)) => answers.push(Ok(Submitted {
                id,
                status: if cached {
                    Status::Completed
                } else {
                    Status::Pending
                },
                replayed: false,
                cache_hit: match how {
                    Insert::Queued => None,
                    Insert::CachedOrQueued | Insert::CacheHit(_) => Some(cached),
                },
            })),
            None => answers.push(earlier_with_same_key(conn, new).await?),
        }
    }
    Ok(answers)
}

/// The answer to a request whose `Idempotency-Key` its user used before: same request → the
/// earlier one's id and status; a different request → a conflict.
async fn earlier_with_same_key(
    conn: &mut PgConnection,
    new: &NewRequest,
) -> Result<Result<Submitted, DomainError>, sqlx::Error> {
    let (id, status, same): (Uuid, Status, bool) = sqlx::query_as(
        "SELECT id, status, (prompt = $3 AND model = $4 AND parameters = $5 AND context = $6) AS same
         FROM generation_requests WHERE user_id = $1 AND idempotency_key = $2",
    )
    .bind(new.user_id)
    .bind(&new.idempotency_key)
    .bind(&new.prompt)
    .bind(&new.model)
    .bind(&new.parameters)
    .bind(&new.context)
    .fetch_one(&mut *conn)
    .await?;
    if !same {
        return Ok(Err(DomainError::Conflict(
            "this Idempotency-Key was already used for a different request".into(),
        )));
    }
    Ok(Ok(Submitted {
        id,
        status,
        replayed: true,
        cache_hit: None,
    }))
}

/// [`insert_many`]'s rows, one array per column: the row's own, then what decides how it is
/// stored and its job's.
#[derive(Default)]
struct InsertColumns<'a> {
    row: RowColumns<'a>,
    idempotency_key: Vec<Option<&'a str>>,
    lookup_key: Vec<Option<&'a str>>,
    job: Vec<Vec<u8>>,
    job_max_attempts: Vec<i32>,
    priority: Vec<i32>,
}

impl<'a> InsertColumns<'a> {
    fn push(&mut self, new: &'a NewRequest, how: &'a Insert) -> Result<(), sqlx::Error> {
        let (hit, lookup_key) = match how {
            Insert::Queued => (None, None),
            Insert::CachedOrQueued => (None, new.cache_key.as_deref()),
            Insert::CacheHit(hit) => (Some(hit), None),
        };
        let job = queue::JobRow::new(new.id, new.max_attempts, queue::INTERACTIVE_PRIORITY)?;
        // The request's job id (a column of its row) is its job row's id.
        self.row.push(new, job.id, hit);
        self.idempotency_key.push(new.idempotency_key.as_deref());
        self.lookup_key.push(lookup_key);
        self.job.push(job.job);
        self.job_max_attempts.push(job.max_attempts);
        self.priority.push(job.priority);
        Ok(())
    }

    fn add_to(self, args: &mut PgArguments) -> Result<(), sqlx::Error> {
        self.row.add_to(args)?;
        add(args, self.idempotency_key)?;
        add(args, self.lookup_key)?;
        add(args, self.job)?;
        add(args, self.job_max_attempts)?;
        add(args, self.priority)
    }
}

/// A request as its owner sees it.
#[derive(Debug, Clone, Serialize, FromRow, utoipa::ToSchema)]
pub struct RequestView {
    pub id: Uuid,
    pub status: Status,
    pub model: String,
    pub prompt: String,
    pub context: Value,
    pub parameters: Value,
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

/// One provider call, as shown with the request.
#[derive(Debug, Clone, Serialize, FromRow, utoipa::ToSchema)]
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

/// The request if it exists and belongs to `user_id` (another user's request is "not found").
pub async fn find_for_user(
    pool: &PgPool,
    id: Uuid,
    user_id: Uuid,
) -> Result<Option<RequestView>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, status, model, prompt, context, parameters, metadata, result, provider,
                provider_model, served_model, tokens_used, prompt_tokens, completion_tokens,
                finish_reason, cost_usd, cached, error_code, error_message, attempts, max_attempts,
                created_at, started_at, completed_at, updated_at
         FROM generation_requests WHERE id = $1 AND user_id = $2",
    )
    .bind(id)
    .bind(user_id)
    .fetch_optional(pool)
    .await
}

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

// ---- worker side -------------------------------------------------------------------------

/// A request claimed by a worker: what it needs to run it, and the claim's identity.
#[derive(Debug, Clone, FromRow)]
pub struct ClaimedRequest {
    pub id: Uuid,
    /// Claims so far, this one included (the run number).
    pub attempts: i32,
    pub max_attempts: i32,
    pub prompt: String,
    pub model: String,
    pub parameters: Value,
    pub metadata: Value,
    pub fallback_index: i32,
    pub stream: bool,
    pub cache_key: Option<String>,
    pub cache_policy: sqlx::types::Json<CachePolicy>,
    pub user_id: Uuid,
    pub estimated_tokens: Option<i32>,
    pub created_at: DateTime<Utc>,
    /// Trace id of the submitting api request, if it had one.
    pub trace_id: Option<String>,
    /// The attempt row the claim opened for this run's first provider call.
    pub first_attempt: i32,
    /// Times an admin sent it back to the queue.
    pub replays: i32,
}

#[derive(Debug)]
pub enum Claim {
    /// This worker now holds the request: run it.
    Claimed(Box<ClaimedRequest>),
    /// Finished already (a duplicate delivery): nothing to do.
    Finished,
    /// Another live worker holds it until the given time.
    HeldElsewhere {
        until: DateTime<Utc>,
    },
    /// Every attempt was used up (earlier claims died with their workers): now `failed`.
    Exhausted,
    NotFound,
}

/// Takes the request for this worker: `pending` rows, and `running` rows whose holder's lease
/// ran out (its worker died). Each claim is a new attempt; earlier unfinished attempts are
/// marked `abandoned`. The batch of one of [`claim_many`].
pub async fn claim(
    pool: &PgPool,
    id: Uuid,
    worker: &str,
    lease: Duration,
) -> Result<Claim, sqlx::Error> {
    only(claim_many(pool, &[id], worker, lease).await?)?
}

/// The statements that take a batch of requests by id (BY_ID_ONLY), by name: for the test
/// that reads their plans.
pub fn by_id_statements() -> Vec<(&'static str, String)> {
    vec![
        ("claim_many", CLAIM_MANY.to_owned()),
        ("complete_many", COMPLETE_MANY.clone()),
        ("renew_leases", RENEW_LEASES.to_owned()),
    ]
}

/// Every statement a group-commit writer runs on its own connections ([`crate::db::writer_pool`]),
/// by name: the by-id ones, the submit's and the cache hits' rows'.
pub fn writer_statements() -> Vec<(&'static str, String)> {
    let mut statements = by_id_statements();
    statements.push(("insert_many", INSERT_MANY.clone()));
    statements.push(("insert_hits", INSERT_HITS.clone()));
    statements
}

const CLAIM_MANY: &str = "WITH claimed AS (
             UPDATE generation_requests r
             SET status = 'running', attempts = r.attempts + 1,
                 started_at = COALESCE(r.started_at, NOW()), updated_at = NOW(), claimed_by = $2,
                 lease_expires_at = NOW() + make_interval(secs => $3)
             FROM unnest($1::uuid[]) AS wanted(id)
             -- found by id (see BY_ID_ONLY): pending, or running on a lease that ran out
             WHERE r.id = wanted.id
               AND CASE r.status WHEN 'pending' THEN true
                                 WHEN 'running' THEN r.lease_expires_at < NOW()
                                 ELSE false END
             RETURNING r.id, r.attempts, r.max_attempts, r.prompt, r.model, r.parameters,
                       r.metadata, r.fallback_index, r.stream, r.cache_key, r.cache_policy,
                       r.user_id, r.estimated_tokens, r.created_at, r.trace_id, r.replays
         ), opened AS (
             INSERT INTO generation_attempts (request_id, attempt, run, worker)
             SELECT c.id,
                    (SELECT COALESCE(MAX(a.attempt), 0) + 1 FROM generation_attempts a
                     WHERE a.request_id = c.id),
                    c.attempts, $2
             FROM claimed c WHERE c.attempts <= c.max_attempts
             RETURNING request_id, attempt
         )
         SELECT claimed.*, COALESCE(opened.attempt, 0) AS first_attempt
         FROM claimed LEFT JOIN opened ON opened.request_id = claimed.id";

/// Closes the attempts that lost workers left running, for the claimed requests that ran
/// before (a first claim has none; the claim statement leaves this out, for inside it the update
/// was planned as a walk over every attempt row, ~80 ms at 20,000 rows, even with nothing to
/// do). Their own new attempt is not touched. The claims stand whatever happens here (they
/// committed): a failure leaves those attempts shown as running, and is logged.
async fn abandon_earlier_runs(pool: &PgPool, claimed: &[ClaimedRequest]) {
    let (ids, opened): (Vec<Uuid>, Vec<i32>) = claimed
        .iter()
        .filter(|c| c.attempts > 1 || c.replays > 0)
        .map(|c| (c.id, c.first_attempt))
        .unzip();
    if ids.is_empty() {
        return;
    }
    let closed = sqlx::query(
        "UPDATE generation_attempts a
         SET outcome = 'abandoned', finished_at = NOW(), error_kind = 'worker_lost',
             error_message = 'the worker running this attempt stopped before finishing it'
         FROM unnest($1::uuid[], $2::int[]) AS c(id, opened)
         WHERE a.request_id = c.id AND a.outcome = 'running'
           AND (c.opened = 0 OR a.attempt < c.opened)",
    )
    .bind(&ids)
    .bind(&opened)
    .execute(pool)
    .await;
    if let Err(err) = closed {
        tracing::warn!(error = %err, requests = ids.len(), "could not mark the attempts of lost workers abandoned");
    }
}

/// Claims the requests `ids` for this worker in one statement (one round trip, one commit),
/// as [`claim`] would claim each alone: the answers are in the order of `ids`.
///
/// An id given twice is claimed once, by its first occurrence; the later ones find it held,
/// as a second claim would. The outer `Err` is the claim statement's: it rolled back, nothing
/// was claimed, so each id may be tried again (see [`claim_each`]). An inner `Err` comes from
/// that id's follow-up after the claim committed (reading why it was not claimed, or failing
/// it when its attempts are used up), so it is that id's alone.
pub async fn claim_many(
    pool: &PgPool,
    ids: &[Uuid],
    worker: &str,
    lease: Duration,
) -> Result<Vec<Result<Claim, sqlx::Error>>, sqlx::Error> {
    let mut distinct = ids.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let claimed: Vec<ClaimedRequest> = sqlx::query_as(CLAIM_MANY)
        .bind(&distinct)
        .bind(worker)
        .bind(lease.as_secs_f64())
        .fetch_all(pool)
        .await?;

    abandon_earlier_runs(pool, &claimed).await;
    let mut claimed: HashMap<Uuid, ClaimedRequest> =
        claimed.into_iter().map(|c| (c.id, c)).collect();
    let mut answers: Vec<Option<Result<Claim, sqlx::Error>>> = Vec::with_capacity(ids.len());
    for &id in ids {
        answers.push(match claimed.remove(&id) {
            None => None,
            Some(claimed) if claimed.attempts > claimed.max_attempts => {
                let message = format!(
                    "gave up after {} attempts: the workers running it stopped before finishing",
                    claimed.max_attempts
                );
                let failed = finish_failed(
                    pool,
                    id,
                    worker,
                    claimed.attempts,
                    "attempts_exhausted",
                    &message,
                )
                .await;
                Some(failed.map(|_| Claim::Exhausted))
            }
            Some(claimed) => Some(Ok(Claim::Claimed(Box::new(claimed)))),
        });
    }
    if answers.iter().any(Option::is_none) {
        // Why the others were not claimed, read after the claim (rare: a duplicate delivery).
        let unclaimed: Vec<Uuid> = ids
            .iter()
            .zip(&answers)
            .filter(|(_, answer)| answer.is_none())
            .map(|(&id, _)| id)
            .collect();
        let rows: Result<Vec<RowState>, sqlx::Error> = sqlx::query_as(
            "SELECT id, status, lease_expires_at FROM generation_requests WHERE id = ANY($1)",
        )
        .bind(&unclaimed)
        .fetch_all(pool)
        .await;
        match rows {
            Ok(rows) => {
                let states: HashMap<Uuid, RowState> = rows.into_iter().map(|r| (r.id, r)).collect();
                for (id, answer) in ids.iter().zip(answers.iter_mut()) {
                    if answer.is_none() {
                        *answer = Some(Ok(match states.get(id) {
                            None => Claim::NotFound,
                            Some(row) if row.status.is_final() => Claim::Finished,
                            Some(row) => Claim::HeldElsewhere {
                                until: row.lease_expires_at.unwrap_or_else(Utc::now),
                            },
                        }));
                    }
                }
            }
            Err(err) => {
                for answer in answers.iter_mut().filter(|a| a.is_none()) {
                    *answer = Some(Err(error::replicate(&err)));
                }
            }
        }
    }
    Ok(answers
        .into_iter()
        .map(|answer| answer.unwrap_or(Err(sqlx::Error::RowNotFound)))
        .collect())
}

/// Where a request that was not claimed stands.
#[derive(FromRow)]
struct RowState {
    id: Uuid,
    status: Status,
    lease_expires_at: Option<DateTime<Utc>>,
}

/// [`claim_many`] with an answer for each id, whatever happened: what the worker's claim
/// batches run (see `answer_each` for the errors).
pub async fn claim_each(
    pool: &PgPool,
    ids: &[Uuid],
    worker: &str,
    lease: Duration,
) -> Vec<Result<Claim, sqlx::Error>> {
    let batch = claim_many(pool, ids, worker, lease).await;
    answer_each(ids, batch, |&id| claim(pool, id, worker, lease)).await
}

/// Whether a finishing write still held the claim. `false` means the lease ran out and another
/// worker took the request: this worker's result is discarded.
pub type StillHeld = bool;

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
    latency_ms: i32,
    served_model: String,
    cost_usd: f64,
    /// What the cache stores the result under, unless the request said `no_store`.
    store_key: Option<String>,
    cache_ttl_secs: f64,
    cache_metadata: Value,
}

impl SuccessRow {
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

/// [`complete_many`]'s statement, built once.
static COMPLETE_MANY: std::sync::LazyLock<String> = std::sync::LazyLock::new(complete_many_sql);

fn complete_many_sql() -> String {
    format!(
        "WITH v AS (
             SELECT * FROM unnest($2::uuid[], $3::int[], $4::int[], $5::text[], $6::text[],
                                  $7::text[], $8::int[], $9::int[], $10::text[], $11::int[],
                                  $12::text[], $13::float8[], $14::text[], $15::float8[],
                                  $16::jsonb[])
                 WITH ORDINALITY AS v(id, run, attempt, result, provider, provider_model,
                                      prompt_tokens, completion_tokens, finish_reason, latency_ms,
                                      served_model, cost_usd, store_key, ttl_secs, metadata, ord)
         ), done AS (
             UPDATE generation_requests r
             SET status = 'completed', result = v.result, provider = v.provider,
                 provider_model = v.provider_model, prompt_tokens = v.prompt_tokens,
                 completion_tokens = v.completion_tokens,
                 tokens_used = v.prompt_tokens + v.completion_tokens,
                 finish_reason = v.finish_reason, served_model = v.served_model,
                 cost_usd = v.cost_usd, error_code = NULL, error_message = NULL,
                 completed_at = NOW(), updated_at = NOW(), claimed_by = NULL, lease_expires_at = NULL
             FROM v
             -- found by id (see BY_ID_ONLY), still held by this claim
             WHERE r.id = v.id AND CASE r.status WHEN 'running' THEN true ELSE false END
               AND r.claimed_by = $1 AND r.attempts = v.run
             RETURNING v.*, r.user_id, r.prompt, r.model
         ), followers AS (
             -- identical requests that waited for one of these: answered with it, as cache hits
             UPDATE generation_requests f
             SET status = 'completed', result = v.result, provider = v.provider,
                 provider_model = v.provider_model, prompt_tokens = v.prompt_tokens,
                 completion_tokens = v.completion_tokens,
                 tokens_used = v.prompt_tokens + v.completion_tokens,
                 finish_reason = v.finish_reason, served_model = v.served_model, cost_usd = 0,
                 cached = true, completed_at = NOW(), updated_at = NOW()
             FROM done v
             WHERE f.coalesced_into = v.id AND CASE f.status WHEN 'pending' THEN true ELSE false END
             RETURNING f.user_id, f.model, v.id AS leader
         ), usage AS (
             -- one row per key: a statement may not update a row twice
             INSERT INTO usage_daily AS u
                 (user_id, day, model, shard, requests, cached_requests, prompt_tokens,
                  completion_tokens, cost_usd)
             SELECT user_id, (NOW() AT TIME ZONE 'UTC')::date, model, {shard},
                    SUM(requests), SUM(cached), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost)
             FROM (SELECT v.user_id, v.served_model::varchar AS model, 1 AS requests,
                          0 AS cached, v.prompt_tokens::bigint AS prompt_tokens,
                          v.completion_tokens::bigint AS completion_tokens, v.cost_usd AS cost
                   FROM done v
                   UNION ALL
                   SELECT user_id, model, 1, 1, 0, 0, 0
                   FROM followers) counted
             GROUP BY user_id, model
             ORDER BY user_id, model
             ON CONFLICT (user_id, day, model, shard) DO UPDATE
             SET requests = u.requests + EXCLUDED.requests,
                 cached_requests = u.cached_requests + EXCLUDED.cached_requests,
                 prompt_tokens = u.prompt_tokens + EXCLUDED.prompt_tokens,
                 completion_tokens = u.completion_tokens + EXCLUDED.completion_tokens,
                 cost_usd = u.cost_usd + EXCLUDED.cost_usd
         ), events AS (
             -- for the message hub, in this transaction: a completion is never lost; per
             -- request, `generation.completed` before `usage.updated`
             INSERT INTO outbox_events (id, request_id, type, payload)
             SELECT gen_random_uuid(), id, kind, payload FROM (
                 SELECT v.ord, v.id, 'generation.completed' AS kind, 1 AS nth,
                        jsonb_build_object('request_id', v.id, 'user_id', v.user_id,
                            'model', v.served_model, 'provider', v.provider,
                            'prompt_tokens', v.prompt_tokens,
                            'completion_tokens', v.completion_tokens,
                            'cost_usd', v.cost_usd) AS payload
                 FROM done v
                 UNION ALL
                 SELECT v.ord, v.id, 'usage.updated', 2,
                        jsonb_build_object('user_id', v.user_id, 'model', v.served_model,
                            'day', (NOW() AT TIME ZONE 'UTC')::date, 'requests', 1,
                            'prompt_tokens', v.prompt_tokens,
                            'completion_tokens', v.completion_tokens, 'cost_usd', v.cost_usd)
                 FROM done v
             ) e ORDER BY ord, nth
         ), stored AS (
             -- one entry per key (a statement may not update a row twice): the later result
             INSERT INTO response_cache (cache_key, response, prompt, model, expires_at, metadata)
             SELECT DISTINCT ON (v.store_key) v.store_key, v.result, v.prompt, v.model,
                    NOW() + make_interval(secs => v.ttl_secs), v.metadata
             FROM done v
             WHERE v.store_key IS NOT NULL
             ORDER BY v.store_key, v.ord DESC
             ON CONFLICT (cache_key) DO UPDATE
             SET response = EXCLUDED.response, expires_at = EXCLUDED.expires_at,
                 metadata = EXCLUDED.metadata, created_at = NOW()
         )
         UPDATE generation_attempts a
         SET outcome = 'succeeded', finished_at = NOW(), latency_ms = v.latency_ms,
             provider = v.provider, model = v.provider_model, prompt_tokens = v.prompt_tokens,
             completion_tokens = v.completion_tokens
         FROM done v
         WHERE a.request_id = v.id AND a.attempt = v.attempt
         RETURNING v.ord",
        shard = usage::STATEMENT_SHARD,
    )
}

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
    let held: Vec<i64> = sqlx::query_scalar(COMPLETE_MANY.as_str())
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

/// What each caller of a group-committed statement gets: its own answer from `batch`, or, when
/// the batch's statement failed, an error of its own (`sqlx::Error` is not `Clone`). A failed
/// statement rolled back as a whole (one statement is atomic): nothing of the batch took
/// effect, so every caller may be answered as if it had run alone, and must get an error or
/// its own answer (an error lets apalis deliver its job again).
///
/// - A connection-level failure ([`error::is_unavailable`]: pool timeout, broken connection,
///   server shutting down) would meet every one of them alike: each gets a copy of it, with
///   the same classification and message ([`error::replicate`]), and the database that is not
///   answering is not asked again.
/// - Any other failure (a row the statement refuses, a deadlock with another worker's batch, a
///   bug) may concern one caller only: each item runs again alone, in turn, so a bad row fails
///   only its own job and the others get their true answers.
async fn answer_each<'a, T, R, E, F, Fut>(
    items: &'a [T],
    batch: Result<Vec<Result<R, E>>, sqlx::Error>,
    alone: F,
) -> Vec<Result<R, E>>
where
    E: From<sqlx::Error>,
    F: Fn(&'a T) -> Fut,
    Fut: Future<Output = Result<R, E>>,
{
    let err = match batch {
        Ok(answers) => return answers,
        Err(err) if items.len() == 1 => return vec![Err(err.into())],
        Err(err) => err,
    };
    if error::is_unavailable(&err) {
        return items
            .iter()
            .map(|_| Err(error::replicate(&err).into()))
            .collect();
    }
    tracing::warn!(error = %err, items = items.len(), "a batched statement failed; running its items one by one");
    let mut answers = Vec::with_capacity(items.len());
    for item in items {
        answers.push(alone(item).await);
    }
    answers
}

/// The one answer of a batch of one.
fn only<T>(answers: Vec<T>) -> Result<T, sqlx::Error> {
    answers.into_iter().next().ok_or(sqlx::Error::RowNotFound)
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
        }
    }
}

/// A failed provider call, as recorded in the attempt history.
#[derive(Debug)]
pub struct AttemptFailure<'a> {
    /// The error's kind (`timeout`, `rate_limited`, ...: the provider error's own word).
    pub kind: &'static str,
    /// The upstream's HTTP status, when it answered one.
    pub http_status: Option<u16>,
    /// What went wrong, already redacted of secrets.
    pub message: &'a str,
    pub latency: Duration,
    pub provider: Option<&'a str>,
    pub upstream_model: Option<&'a str>,
}

/// Opens the attempt row of another provider call of the current run; returns its number.
pub async fn start_attempt(
    pool: &PgPool,
    id: Uuid,
    run: i32,
    worker: &str,
) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO generation_attempts (request_id, attempt, run, worker)
         SELECT $1, COALESCE(MAX(attempt), 0) + 1, $2, $3 FROM generation_attempts WHERE request_id = $1
         RETURNING attempt",
    )
    .bind(id)
    .bind(run)
    .bind(worker)
    .fetch_one(pool)
    .await
}

/// Records the failure of one provider call.
pub async fn fail_attempt(
    pool: &PgPool,
    id: Uuid,
    attempt: i32,
    failure: &AttemptFailure<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE generation_attempts
         SET outcome = 'failed', finished_at = NOW(), latency_ms = $3, error_kind = $4,
             http_status = $5, error_message = $6, provider = $7, model = $8
         WHERE request_id = $1 AND attempt = $2 AND outcome = 'running'",
    )
    .bind(id)
    .bind(attempt)
    .bind(millis(failure.latency))
    .bind(failure.kind)
    .bind(failure.http_status.map(i32::from))
    .bind(failure.message)
    .bind(failure.provider)
    .bind(failure.upstream_model)
    .execute(pool)
    .await?;
    Ok(())
}

/// Ends the request `failed` (its attempts are already recorded).
pub async fn fail(
    pool: &PgPool,
    claimed: &ClaimedRequest,
    worker: &str,
    code: &str,
    message: &str,
) -> Result<StillHeld, sqlx::Error> {
    finish_failed(pool, claimed.id, worker, claimed.attempts, code, message).await
}

/// Hands the request back to the queue: `pending` again, its job rescheduled after `delay`,
/// resuming at `fallback_index` of its chain. One transaction.
///
/// A run that called no provider (every circuit of its chain was open) was no attempt: the
/// attempt row its claim opened goes, and the run is not counted against `max_attempts`,
/// which is the budget of runs that die with their worker. (Counted, a few waits for a
/// circuit failed the request as `attempts_exhausted` with a history of "lost" workers.)
pub async fn release_for_retry(
    pool: &PgPool,
    claimed: &ClaimedRequest,
    worker: &str,
    delay: Duration,
    fallback_index: i32,
    code: &str,
    message: &str,
) -> Result<StillHeld, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let released = sqlx::query(
        "WITH unused AS (
             DELETE FROM generation_attempts
             WHERE request_id = $1 AND run = $3 AND worker = $2 AND outcome = 'running'
               AND provider IS NULL
             RETURNING 1
         )
         UPDATE generation_requests
         SET status = 'pending', claimed_by = NULL, lease_expires_at = NULL, fallback_index = $4,
             error_code = $5, error_message = $6, updated_at = NOW(),
             attempts = attempts - (SELECT COUNT(*) FROM unused)::int
         WHERE id = $1 AND status = 'running' AND claimed_by = $2 AND attempts = $3",
    )
    .bind(claimed.id)
    .bind(worker)
    .bind(claimed.attempts)
    .bind(fallback_index)
    .bind(code)
    .bind(message)
    .execute(&mut *tx)
    .await?;
    if released.rows_affected() != 1 {
        tx.rollback().await?;
        return Ok(false);
    }
    queue::reschedule(&mut tx, claimed.id, delay).await?;
    tx.commit().await?;
    Ok(true)
}

async fn finish_failed(
    pool: &PgPool,
    id: Uuid,
    worker: &str,
    attempt: i32,
    code: &str,
    message: &str,
) -> Result<StillHeld, sqlx::Error> {
    let done = sqlx::query(
        "WITH failed AS (
             UPDATE generation_requests
             SET status = 'failed', error_code = $4, error_message = $5, completed_at = NOW(),
                 updated_at = NOW(), claimed_by = NULL, lease_expires_at = NULL
             WHERE id = $1 AND status = 'running' AND claimed_by = $2 AND attempts = $3
             RETURNING id, user_id, model
         )
         INSERT INTO outbox_events (id, request_id, type, payload)
         SELECT gen_random_uuid(), id, 'generation.failed',
                jsonb_build_object('request_id', id, 'user_id', user_id, 'model', model,
                                   'error_code', $4::text, 'error_message', $5::text)
         FROM failed",
    )
    .bind(id)
    .bind(worker)
    .bind(attempt)
    .bind(code)
    .bind(message)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Outcome of a cancellation.
#[derive(Debug)]
pub enum Cancelled {
    Done(Box<RequestView>),
    AlreadyFinished(Status),
    NotFound,
}

/// Cancels a pending or running request of `user_id`. A pending one never runs (its claim will
/// find it final); a running one's worker is told through the completion notice and stops.
/// `user_id` is the owner, or `None` for an admin (any owner).
pub async fn cancel(
    pool: &PgPool,
    id: Uuid,
    user_id: Option<Uuid>,
) -> Result<Cancelled, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE generation_requests
         SET status = 'cancelled', completed_at = NOW(), updated_at = NOW(), error_code = 'cancelled',
             error_message = 'the request was cancelled', claimed_by = NULL, lease_expires_at = NULL
         WHERE id = $1 AND ($2::uuid IS NULL OR user_id = $2) AND status IN ('pending', 'running')
         RETURNING user_id",
    )
    .bind(id)
    .bind(user_id)
    .fetch_optional(pool)
    .await?;
    let owner: Option<Uuid> = match user_id {
        Some(user) => Some(user),
        None => {
            sqlx::query_scalar("SELECT user_id FROM generation_requests WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
        }
    };
    let view = match owner {
        Some(owner) => find_for_user(pool, id, owner).await?,
        None => None,
    };
    Ok(match view {
        None => Cancelled::NotFound,
        Some(view) if updated.is_some() => Cancelled::Done(Box::new(view)),
        Some(view) => Cancelled::AlreadyFinished(view.status),
    })
}

/// Closes the running attempt rows of a request that was cancelled under its worker.
pub async fn close_cancelled_attempts(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE generation_attempts
         SET outcome = 'failed', finished_at = NOW(), error_kind = 'cancelled',
             error_message = 'the request was cancelled while this call ran'
         WHERE request_id = $1 AND outcome = 'running'",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

const RENEW_LEASES: &str = "UPDATE generation_requests r
     SET lease_expires_at = NOW() + make_interval(secs => $3)
     -- found by id (see BY_ID_ONLY), joined rather than `id = ANY(…)`: on a near-empty table
     -- the planner took that as a condition on the status index's second column, a full scan
     FROM unnest($1::uuid[]) AS wanted(id)
     WHERE r.id = wanted.id AND r.claimed_by = $2
       AND CASE r.status WHEN 'running' THEN true ELSE false END";

/// Extends the leases of the requests this worker is running (its liveness signal).
pub async fn renew_leases(
    pool: &PgPool,
    worker: &str,
    ids: &[Uuid],
    lease: Duration,
) -> Result<u64, sqlx::Error> {
    let renewed = sqlx::query(RENEW_LEASES)
        .bind(ids)
        .bind(worker)
        .bind(lease.as_secs_f64())
        .execute(pool)
        .await?;
    Ok(renewed.rows_affected())
}

fn to_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
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

/// Per (provider, upstream model): calls finished in the last `window`, with their failures
/// and median latency, and whether the most recent `streak` calls all failed.
pub async fn recent_call_stats(
    pool: &PgPool,
    window: Duration,
    streak: i64,
) -> Result<Vec<CallStats>, sqlx::Error> {
    sqlx::query_as(
        "WITH recent AS (
             SELECT provider, model, outcome, latency_ms, finished_at,
                    ROW_NUMBER() OVER (PARTITION BY provider, model ORDER BY finished_at DESC) AS nth
             FROM generation_attempts
             WHERE finished_at > NOW() - make_interval(secs => $1)
               AND outcome IN ('succeeded', 'failed') AND provider IS NOT NULL AND model IS NOT NULL
         )
         SELECT provider, model, COUNT(*) AS calls,
                COUNT(*) FILTER (WHERE outcome = 'failed') AS failures,
                percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms)::float8 AS p50_latency_ms,
                (COUNT(*) FILTER (WHERE nth <= $2) >= $2
                 AND BOOL_AND(outcome = 'failed') FILTER (WHERE nth <= $2)) AS latest_all_failed,
                MAX(finished_at) AS last_call_at
         FROM recent GROUP BY provider, model",
    )
    .bind(window.as_secs_f64())
    .bind(streak)
    .fetch_all(pool)
    .await
}
