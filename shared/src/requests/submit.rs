//! Storing submits: the group-committed [`Submitter`] and its statement, [`insert_many`],
//! which stores each request with what goes with it (its job, or its cache hit's usage) and
//! answers a reused `Idempotency-Key` with the earlier request.

use sqlx::postgres::PgArguments;
use sqlx::{PgConnection, PgPool};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

use super::Status;
use super::batch::{answer_each, only};
use super::body::NewRequest;
use super::columns::{InsertColumns, add};
use super::hits::HitRecords;
use crate::cache::{CachedResponse, ResponseCache};
use crate::error::DomainError;
use crate::group_commit::Batcher;

/// Outcome of a submit.
#[derive(Debug, Clone, Copy)]
pub struct Submitted {
    pub id: Uuid,
    pub status: Status,
    /// True when an earlier request with the same `Idempotency-Key` was returned instead.
    pub replayed: bool,
    /// Whether the response cache was asked and answered (`None`: not asked).
    pub cache_hit: Option<bool>,
    /// Whether the row is known to be on disk: its commit waited for it, or a flush followed
    /// ([`Durability`]). A request stored without either is made durable
    /// ([`crate::db::make_durable`]) before an answer names it while unfinished. A cache hit's
    /// row may be written after its answer.
    pub durable: bool,
}

/// When a submit's commit must reach the disk: before its caller is told of the request, which
/// is then never lost. A commit that waits for the disk puts a WAL flush on the path of the
/// call (its round trip 1.44 → 0.84 ms without, `tcpdump -i lo` of `/v1/chat/completions`
/// misses at one client: docs/PERFORMANCE.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Before the submit returns: its caller names the request at once (a `202`, a stream's
    /// first event, a background response). A submit stored while no other is commits without
    /// waiting for the disk, so that its job is announced to the workers at once (PostgreSQL
    /// sends a transaction's notifications only after its flush), and is then flushed
    /// ([`crate::db::make_durable`]) while a worker fetches it: a native miss at one client
    /// 3.28–3.37 → 2.96–3.19 ms p50 (docs/PERFORMANCE.md). Submits stored together commit
    /// waiting for the disk, one flush per batch (a flush statement after each batch cost a
    /// fifth of the submits a second at 50 clients).
    AtSubmit,
    /// With the request's outcome: its caller answers once the request is final, and the
    /// commit of a result or a failure waits for the disk, which carries every commit before it
    /// (the submit's, which came first). Until then a server crash forgets the call and its
    /// caller gets an error, as a client cut off before any answer. An answer naming it
    /// unfinished (a wait that ran out) comes after [`crate::db::make_durable`].
    WithOutcome,
}

/// Stores submits, group-committed: concurrent submits share one statement and one commit
/// (see [`crate::group_commit`]), so under load the database sees a few multi-row inserts instead
/// of one insert per request. Each submit still gets its own answer, only after the commit that
/// made it durable. Cloning shares the writers.
#[derive(Debug, Clone)]
pub struct Submitter {
    cache: Option<ResponseCache>,
    /// Submits stored [`Durability::AtSubmit`] together: their callers are told of them at
    /// once, and may poll them ([`Notice::OutcomeAndAttempts`]).
    batches: SubmitBatcher,
    /// A submit stored [`Durability::AtSubmit`] alone: as `batches`, its commit not waiting
    /// for the disk, then flushed.
    announced: SubmitBatcher,
    /// Submits stored [`Durability::WithOutcome`]: their callers answer with the outcome alone
    /// ([`Notice::Outcome`]).
    awaited: SubmitBatcher,
    /// The flushes that make `announced` submits durable: one for every submit waiting when it
    /// starts.
    flushes: Batcher<(), Result<(), Flush>>,
    /// [`Durability::AtSubmit`] submits being stored.
    storing: Arc<AtomicUsize>,
    hits: HitRecords,
}

type SubmitBatcher = Batcher<(NewRequest, Insert), Result<Submitted, DomainError>>;

/// A flush that failed, as each submit it was for hears of it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("making the submit durable failed: {0}")]
struct Flush(String);

/// Most submits one flush answers: each waits for the next flush that starts after it asked,
/// which covers every commit made before.
const FLUSH_BATCH: usize = 1024;

/// Writers storing batches at the same time: one batch fills while the other runs. With four,
/// a writer was nearly always free, so batches stayed small (~7 rows at 50 clients) and
/// PostgreSQL paid each statement's fixed cost for few rows: two cut its CPU per submitted job
/// from 100–130 to 66–104 µs in interleaved llm-bench runs (5,000 jobs), with no worse p99.
const SUBMIT_WRITERS: usize = 2;
/// Most submits in one statement.
const SUBMIT_BATCH: usize = 64;

impl Submitter {
    /// Starts the writers (inside a tokio runtime). Without `cache`, no submit reads it.
    pub fn new(pool: PgPool, cache: Option<ResponseCache>) -> Self {
        // Two more connections than writers: the hit writer's and the flusher's.
        let durable = crate::db::writer_pool(&pool, SUBMIT_WRITERS as u32 + 2);
        let hits = HitRecords::start(durable.clone());
        let quick = crate::db::async_writer_pool(&pool, 2 * SUBMIT_WRITERS as u32);
        let flusher = durable.clone();
        let flushes = Batcher::new(1, FLUSH_BATCH, move |batch: Vec<()>| {
            let pool = flusher.clone();
            async move {
                let flushed = crate::db::make_durable(&pool)
                    .await
                    .map_err(|err| Flush(err.to_string()));
                vec![flushed; batch.len()]
            }
        });
        Self {
            cache,
            batches: Self::writers(durable, Notice::OutcomeAndAttempts),
            announced: Self::writers(quick.clone(), Notice::OutcomeAndAttempts),
            awaited: Self::writers(quick, Notice::Outcome),
            flushes,
            storing: Arc::default(),
            hits,
        }
    }

    fn writers(pool: PgPool, notice: Notice) -> SubmitBatcher {
        Batcher::new(SUBMIT_WRITERS, SUBMIT_BATCH, move |batch| {
            let pool = pool.clone();
            async move { store_batch(&pool, batch, notice).await }
        })
    }

    /// Waits (a few seconds at most) until the row of a cache hit answered by this process is
    /// written ([`HitRecords`]); at once for any other id.
    pub async fn written(&self, id: Uuid) {
        let deadline = Instant::now() + Duration::from_secs(10);
        self.hits.wait(deadline, |ids| ids.contains(&id)).await;
    }

    /// Waits until every cache hit this process answered has its row ([`HitRecords`]), for at
    /// most `within`: what a graceful stop does after its last answer, so that a deploy
    /// forgets no record. `false` if some rows were still unwritten.
    pub async fn finish_hit_writes(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        !self.hits.wait(deadline, |ids| !ids.is_empty()).await
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
    /// never cuts a submit halfway). `durability`: when its commit reaches the disk.
    pub async fn store(
        &self,
        new: NewRequest,
        how: Insert,
        durability: Durability,
    ) -> Result<Submitted, DomainError> {
        let (new, how) = match how {
            Insert::CacheHit(hit) => match self.hits.answer_early(new, hit) {
                Ok(id) => {
                    return Ok(Submitted {
                        id,
                        status: Status::Completed,
                        replayed: false,
                        cache_hit: Some(true),
                        durable: false,
                    });
                }
                Err(declined) => {
                    let (new, hit) = *declined;
                    (new, Insert::CacheHit(hit))
                }
            },
            how => (new, how),
        };
        let storing = (durability == Durability::AtSubmit).then(|| Storing::enter(&self.storing));
        let writers = match (durability, &storing) {
            (Durability::AtSubmit, Some(storing)) if storing.alone => &self.announced,
            (Durability::AtSubmit, _) => &self.batches,
            (Durability::WithOutcome, _) => &self.awaited,
        };
        let mut submitted = writers
            .call((new, how))
            .await
            .map_err(DomainError::internal)??;
        if durability == Durability::AtSubmit && !submitted.durable {
            self.flushes
                .call(())
                .await
                .map_err(DomainError::internal)?
                .map_err(DomainError::internal)?;
            submitted.durable = true;
        }
        Ok(submitted)
    }

    /// [`Submitter::lookup`], then [`Submitter::store`] durably.
    pub async fn submit(&self, new: NewRequest) -> Result<Submitted, DomainError> {
        let how = self.lookup(&new).await;
        self.store(new, how, Durability::AtSubmit).await
    }
}

/// One [`Durability::AtSubmit`] submit being stored, counted while it is.
struct Storing<'a> {
    count: &'a AtomicUsize,
    /// No other was being stored when it began.
    alone: bool,
}

impl<'a> Storing<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        let alone = count.fetch_add(1, Ordering::AcqRel) == 0;
        Self { count, alone }
    }
}

impl Drop for Storing<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Stores one batch of submits, answering each in order (a failed batch: see `answer_each`).
async fn store_batch(
    pool: &PgPool,
    batch: Vec<(NewRequest, Insert)>,
    notice: Notice,
) -> Vec<Result<Submitted, DomainError>> {
    let rows: Vec<(&NewRequest, &Insert)> = batch.iter().map(|(new, how)| (new, how)).collect();
    let stored = store(pool, &rows, notice).await;
    answer_stored(pool, &rows, stored, notice).await
}

/// Each row's answer after the batch's statement (see `answer_each`): a failed batch is stored
/// again row by row.
async fn answer_stored(
    pool: &PgPool,
    rows: &[(&NewRequest, &Insert)],
    stored: Result<Vec<Result<Submitted, DomainError>>, sqlx::Error>,
    notice: Notice,
) -> Vec<Result<Submitted, DomainError>> {
    answer_each(rows, stored, |row| async move {
        only(store(pool, std::slice::from_ref(row), notice).await?)?
    })
    .await
}

async fn store(
    pool: &PgPool,
    rows: &[(&NewRequest, &Insert)],
    notice: Notice,
) -> Result<Vec<Result<Submitted, DomainError>>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    insert_many(&mut conn, rows, notice).await
}

/// What a stored request's completion notice carries (`notices`), to whoever waits for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// Its id: a waiter reads the row. For a request stored inside its caller's own
    /// transaction (`insert_with_job`: the hub's inbox), which no caller is waiting on.
    Id,
    /// Its id and its outcome ([`super::RequestView::of_notice`]), when they fit in a notice:
    /// a waiter that holds the request's input (a door's call, which sent it; a `GET ?wait=`,
    /// which read it) answers without reading the row again. A door's call, whose answer
    /// shows no attempt history. Not a batch's items, which are followed through their batch.
    Outcome,
    /// [`Notice::Outcome`] and the request's attempt history
    /// ([`super::AttemptView::history_of_notice`]), which a long poll answers with: a submit
    /// answered `202`, whose caller polls it.
    OutcomeAndAttempts,
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
    only(insert_many(conn, &[(new, &Insert::Queued)], Notice::Id).await?)?
}

/// [`insert_many`]'s statement.
pub(super) const INSERT_MANY: &str = include_str!("sql/insert_many.sql");

/// Inserts the rows as each one's [`Insert`] says, with what goes with them, in one statement
/// (atomic, one round trip): each row's job (unless it follows an identical request in flight),
/// or a cache hit's usage; `notice`: what the rows' completion notices carry. Answers each row
/// in order: a row whose `Idempotency-Key` this user used before answers with the earlier
/// request (same body) or a conflict. `Err` is a failure of the whole statement (nothing was
/// stored).
pub async fn insert_many(
    conn: &mut PgConnection,
    rows: &[(&NewRequest, &Insert)],
    notice: Notice,
) -> Result<Vec<Result<Submitted, DomainError>>, sqlx::Error> {
    let mut columns = InsertColumns::default();
    for &(new, how) in rows {
        columns.push(new, how)?;
    }
    let mut args = PgArguments::default();
    columns.add_to(&mut args)?;
    add(&mut args, notice != Notice::Id)?;
    add(&mut args, notice == Notice::OutcomeAndAttempts)?;
    let stored: Vec<(Uuid, bool, bool)> = sqlx::query_as_with(INSERT_MANY, args)
        .fetch_all(&mut *conn)
        .await?;

    let mut answers = Vec::with_capacity(rows.len());
    for &(new, how) in rows {
        match stored.iter().find(|(id, ..)| *id == new.id) {
            Some(&(id, cached, durable)) => answers.push(Ok(Submitted {
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
                durable,
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
        // stored by an earlier commit, which may not have waited for the disk
        durable: false,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_go_to_the_generation_queue() {
        let queue = format!("'{}'", crate::queue::QUEUE);
        assert!(
            INSERT_MANY.contains(&queue),
            "insert_many.sql names another queue"
        );
    }
}
