//! Cache hits answered before their rows are written ([`HitRecords`]): one writer stores
//! them in large batches off the answers' path ([`insert_hits`]), and reads of their ids
//! wait for their rows.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::PgArguments;
use uuid::Uuid;

use super::batch::answer_each;
use super::body::NewRequest;
use super::columns::{RowColumns, add};
use crate::cache::CachedResponse;
use crate::error;
use crate::group_commit::Batcher;
use crate::queue;

/// Cache hits answered before their row is written. A hit without an `Idempotency-Key` has
/// nothing left to decide: its answer is the cached result, which its response carries. Its
/// row (the request's history, the usage count) follows within milliseconds, written in large
/// batches off the answer's path by one writer, which retries while the database is
/// unreachable. Reads of such an id wait for its row ([`super::Submitter::written`]). Without
/// this a cache hit waited for a commit like a submit, and the database's share of each hit
/// was the larger part of its cost. The trade: an api process that dies (is killed) in those
/// milliseconds forgets the record of answers it already gave (never a request it accepted
/// for later); one that stops writes them first ([`super::Submitter::finish_hit_writes`]).
#[derive(Clone)]
pub(super) struct HitRecords {
    writer: Batcher<(NewRequest, CachedResponse), ()>,
    pending: Arc<PendingHits>,
}

/// The hits answered whose rows are not written yet, and the signal that some were.
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

impl HitRecords {
    /// Starts the hit writer (inside a tokio runtime), writing on `pool`.
    pub(super) fn start(pool: PgPool) -> Self {
        let pending = Arc::new(PendingHits::default());
        let writer = {
            let pending = pending.clone();
            Batcher::new(1, HIT_BATCH, move |batch| {
                let (pool, pending) = (pool.clone(), pending.clone());
                async move { record_hits(&pool, batch, &pending).await }
            })
        };
        Self { writer, pending }
    }

    /// Takes a cache hit to be answered now and written later, if it may be: no
    /// `Idempotency-Key`, room left, the writer running. Answers its id; else gives the hit
    /// back, to be stored the ordinary way.
    pub(super) fn answer_early(
        &self,
        new: NewRequest,
        hit: CachedResponse,
    ) -> Result<Uuid, Box<(NewRequest, CachedResponse)>> {
        let id = new.id;
        if !self.reserve(&new) {
            return Err(Box::new((new, hit)));
        }
        self.writer.send((new, hit)).map(|()| id).map_err(|row| {
            // The writer is gone (the runtime is stopping).
            if let Ok(mut ids) = self.pending.ids.lock() {
                ids.remove(&id);
            }
            Box::new(row)
        })
    }

    /// Reserves a place among the hits answered before their row is written, if this request
    /// may be one: a cache hit without an `Idempotency-Key`, room left.
    fn reserve(&self, new: &NewRequest) -> bool {
        if new.idempotency_key.is_some() {
            return false;
        }
        let Ok(mut ids) = self.pending.ids.lock() else {
            return false;
        };
        ids.len() < MAX_PENDING_HITS && ids.insert(new.id)
    }

    /// Waits until `unwritten` is false of the hits whose rows are not written yet, or until
    /// `deadline`; returns what it said last.
    pub(super) async fn wait(
        &self,
        deadline: Instant,
        unwritten: impl Fn(&HashSet<Uuid>) -> bool,
    ) -> bool {
        loop {
            let written = self.pending.written.notified();
            tokio::pin!(written);
            written.as_mut().enable();
            let waiting = self
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
}

/// Most cache hits waiting for their rows; past it, a hit is stored before it is answered, so
/// a slow or unreachable database cannot pile them up in memory. With 20,000 (a few KB each,
/// with their tasks), an api that fell behind at 15,000 hits a second kept 63 MB resident.
const MAX_PENDING_HITS: usize = 5_000;
/// Most hit rows in one statement. Encoding a statement holds the runtime thread it runs on,
/// so a bigger batch shows in the p99 of the answers sharing that thread (512 did, wrk at 16
/// connections); a smaller one costs the database more statements (64 did, at 50).
const HIT_BATCH: usize = 256;
/// The hit writer's pause after a batch that was not full, so that the next one is larger
/// (fewer statements for the same rows); a read of a hit's id waits at most about this long.
const HIT_GATHER: Duration = Duration::from_millis(2);
/// How long the hit writer retries a batch while the database is unreachable.
const HIT_RETRY_FOR: Duration = Duration::from_secs(120);
/// How long a stopping api waits for the rows of the hits it answered
/// ([`super::Submitter::finish_hit_writes`]): milliseconds with a database that answers; bounded so
/// that a stop with the database down ends within compose's 15 s grace.
pub const HIT_ROWS_ON_STOP: Duration = Duration::from_secs(10);

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

/// [`insert_hits`]'s statement: the rows as they are, completed, and their usage counted
/// beforehand (none of `insert_many.sql`'s decisions; its header says why).
pub(super) const INSERT_HITS: &str = include_str!("sql/insert_hits.sql");

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
    let tool_calls = columns.add_to(&mut args)?;
    add(&mut args, tool_calls)?;
    add(&mut args, users)?;
    add(&mut args, models)?;
    add(&mut args, counts)?;
    let mut conn = pool.acquire().await?;
    sqlx::query_with(INSERT_HITS, args)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
