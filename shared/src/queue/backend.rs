//! The worker's side of the queue: apalis' PostgreSQL queue (`apalis_postgres`' tables,
//! functions and statements) behind a fetch that goes to the database only when a job may be
//! waiting for it.
//!
//! apalis' own backend fetches every time its worker task is polled with nothing in hand: after
//! each job it hands out, on each wake-up, each fetch a transaction of three round trips
//! (`BEGIN`, `get_jobs`, `COMMIT`). At one request at a time that was three fetches per job,
//! two of them empty. Here a fetch goes to the database only when a job was announced since the
//! last one began ([`Wakeups`], which also counts the poll period's ticks, the listener's
//! reconnections and the jobs this worker put back coming due), or when the last one came back
//! full; and `get_jobs` runs alone, one statement being its own transaction. A job announced
//! while a fetch was in flight, which that fetch may have missed, is fetched as soon as it ends.
//!
//! Acknowledgements are written together, a moment after the first of them ([`super::acks`]),
//! and all that remain when the worker stops.
//!
//! The rest is apalis-postgres' persistence as it is: registration, heartbeats (which put the
//! jobs of dead workers back, and announce them), and abandoned jobs put back on shutdown.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_codec::json::JsonCodec;
use apalis_core::backend::finalize::Durable;
use apalis_core::backend::persistence::{Persisted, Persistence, TaskEvent, TaskPersistLayer};
use apalis_core::backend::{Backend, BackendConfig, WireFormatBackend};
use apalis_core::worker::context::WorkerContext;
use apalis_postgres::queries;
use apalis_postgres::{Config, Error, PgTask};
use prometheus::IntCounter;
use serde_json::Value;
use sqlx::PgPool;
use ulid::Ulid;

use super::Wakeups;
use super::acks::Acks;

/// The storage a worker is registered with in `apalis.workers`, as apalis-postgres names its own.
const STORAGE_NAME: &str = "PgStorage";

/// apalis-postgres' queue, fetched as the module docs say. `Args` is the job's type.
pub struct QueueBackend<Args> {
    persistence: Persisted<QueuePersistence>,
    codec: JsonCodec,
    /// Once apalis' persistence has closed: the last write of the acknowledgements.
    closing: Option<futures::future::BoxFuture<'static, Result<(), Error>>>,
    _marker: PhantomData<Args>,
}

impl<Args> QueueBackend<Args> {
    /// The queue `config.queue` on `pool` (apalis' connections: `db::queue_pool`), fetched when
    /// `wakeups` says a job may be waiting; each fetch sent to the database counts in `fetches`.
    /// Acknowledgements wait `ack_delay` to be written together.
    pub fn new(
        pool: &PgPool,
        config: Config,
        wakeups: Wakeups,
        fetches: IntCounter,
        ack_delay: Duration,
    ) -> Self {
        let persistence = QueuePersistence {
            pool: pool.clone(),
            config,
            gate: Arc::new(FetchGate::new(wakeups)),
            fetches,
            acks: Arc::new(Acks::new(ack_delay)),
        };
        Self {
            persistence: Persisted::new(persistence),
            codec: JsonCodec::default(),
            closing: None,
            _marker: PhantomData,
        }
    }
}

impl<Args> Backend for QueueBackend<Args> {
    type Task = PgTask;
    type Error = Error;

    fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        let heartbeat = self.persistence.config.heartbeat_interval;
        self.persistence.poll_ready(cx, worker, heartbeat)
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<PgTask, Self::Error>>> {
        self.persistence.poll_next(cx, worker)
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        if self.closing.is_none() {
            // apalis hands its last acknowledgements over as it closes.
            if let Err(err) = std::task::ready!(self.persistence.poll_close(cx, worker)) {
                return Poll::Ready(Err(err));
            }
            let (acks, pool) = (
                Arc::clone(&self.persistence.acks),
                self.persistence.pool.clone(),
            );
            self.closing = Some(Box::pin(async move { acks.write(&pool).await }));
        }
        let written = match self.closing.as_mut() {
            Some(last) => std::task::ready!(last.as_mut().poll(cx)),
            None => Ok(()),
        };
        // Written (or failed): a later close writes what is queued by then.
        self.closing = None;
        Poll::Ready(written)
    }
}

impl<Args> BackendConfig for QueueBackend<Args> {
    type Args = Args;
    type Kind = Durable;
    type Id = Ulid;
    type Config = Config;
    type Layer = TaskPersistLayer<JsonCodec<Value>, Value>;

    fn config(&self) -> &Self::Config {
        &self.persistence.config
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Self::Layer {
        let config = self.persistence.config.clone();
        self.persistence
            .layer(JsonCodec::<Value>::default(), config.batch_size)
            .persist_results(config.persist_results)
            .lock_tasks(config.lock_tasks)
    }
}

impl<Args> WireFormatBackend for QueueBackend<Args> {
    type Codec = JsonCodec;
    type Compact = Vec<u8>;

    fn codec(&self) -> &Self::Codec {
        &self.codec
    }
}

/// When a fetch may find a job: the announcements it covers, and whether the last fetch came
/// back full.
#[derive(Debug)]
struct FetchGate {
    wakeups: Wakeups,
    /// The announcement count when the last fetch began.
    taken: AtomicU64,
    /// The last fetch brought a full batch: more may be waiting.
    full: AtomicBool,
}

impl FetchGate {
    /// A gate whose first fetch goes to the database.
    fn new(wakeups: Wakeups) -> Self {
        Self {
            taken: AtomicU64::new(wakeups.heard()),
            wakeups,
            full: AtomicBool::new(true),
        }
    }

    /// The announcement count a fetch beginning now covers, or `None` when every job announced
    /// was there for an earlier fetch to take (a job is announced after its commit, so a fetch
    /// begun after the announcement sees it).
    fn open(&self) -> Option<u64> {
        let heard = self.wakeups.heard();
        let taken = self.taken.swap(heard, Ordering::SeqCst);
        (heard != taken || self.full.load(Ordering::SeqCst)).then_some(heard)
    }

    /// After a fetch that began at the count `heard` and brought `got` jobs of at most `batch`:
    /// whether to fetch again at once (it found none, and a job was announced while it ran,
    /// whose commit it may have missed).
    fn again(&self, heard: u64, got: usize, batch: usize) -> bool {
        self.full.store(got >= batch, Ordering::SeqCst);
        got == 0 && self.wakeups.heard() != heard
    }
}

#[derive(Debug, Clone)]
struct QueuePersistence {
    pool: PgPool,
    config: Config,
    gate: Arc<FetchGate>,
    fetches: IntCounter,
    acks: Arc<Acks>,
}

impl Persistence for QueuePersistence {
    type Compact = Vec<u8>;
    type Error = Error;
    type Response = Value;

    async fn register(&mut self, worker: &WorkerContext) -> Result<(), Error> {
        let queue = self.config.queue.as_ref();
        let mut tx = self.pool.begin().await?;
        let dead_for = self.config.orphaned_duration().as_secs();
        queries::reenqueue_orphaned(&mut *tx, queue, dead_for).await?;
        let registered = sqlx::query(include_str!("sql/register_worker.sql"))
            .bind(worker.name())
            .bind(queue)
            .bind(STORAGE_NAME)
            .bind(worker.get_service())
            .execute(&mut *tx)
            .await?;
        if registered.rows_affected() == 0 {
            return Err(Error::WorkerAlreadyExists(worker.name().to_owned()));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn heartbeat(&mut self, worker: &WorkerContext) -> Result<(), Error> {
        let queue = self.config.queue.as_ref();
        let dead_for = self.config.orphaned_duration().as_secs();
        let mut tx = self.pool.begin().await?;
        queries::keep_alive(&mut *tx, queue, worker).await?;
        let orphaned = queries::reenqueue_orphaned(&mut *tx, queue, dead_for).await?;
        tx.commit().await?;
        if orphaned > 0 {
            // The jobs of dead workers, put back without an announcement.
            self.gate.wakeups.announce();
        }
        Ok(())
    }

    async fn fetch_next(&mut self, worker: &WorkerContext) -> Result<Vec<PgTask>, Error> {
        loop {
            let Some(heard) = self.gate.open() else {
                return Ok(Vec::new());
            };
            self.fetches.inc();
            let mut conn = self.pool.acquire().await?;
            let jobs = queries::fetch_next(&mut *conn, &self.config, worker).await?;
            drop(conn);
            if !self.gate.again(heard, jobs.len(), self.config.batch_size) {
                return Ok(jobs);
            }
        }
    }

    async fn reenqueue_abandoned(
        &mut self,
        tasks: Vec<PgTask>,
        worker: &WorkerContext,
    ) -> Result<u64, Error> {
        let ids: Vec<String> = tasks
            .iter()
            .filter_map(|task| task.task_id().map(ToString::to_string))
            .collect();
        let queue = self.config.queue.as_ref();
        let mut tx = self.pool.begin().await?;
        let count = queries::reenqueue_abandoned(&mut *tx, queue, worker.name(), &ids).await?;
        if count as usize != tasks.len() {
            return Err(Error::ReenqueueMismatch {
                queued: tasks.len(),
                abandoned: count as usize,
            });
        }
        tx.commit().await?;
        Ok(count)
    }

    /// Acknowledgements queued to be written together ([`super::acks`]); locks (when the worker
    /// asks for them) written at once.
    async fn handle_events(
        &mut self,
        events: Vec<TaskEvent<Value>>,
        worker: &WorkerContext,
    ) -> Result<(), Error> {
        let mut acks = Vec::new();
        let mut locks = Vec::new();
        for event in events {
            match event {
                TaskEvent::Complete(result) => acks.push(result),
                TaskEvent::Lock { task_id } => locks.push(task_id.to_string()),
                _ => {}
            }
        }
        let acked: std::collections::HashSet<String> =
            acks.iter().map(|ack| ack.task_id().to_string()).collect();
        locks.retain(|id| !acked.contains(id));
        self.acks.queue(&self.pool, worker.name(), acks);
        if !locks.is_empty() {
            let mut conn = self.pool.acquire().await?;
            queries::lock_tasks(&mut *conn, &locks, worker.name()).await?;
        }
        Ok(())
    }

    async fn push_tasks(&mut self, tasks: Vec<PgTask>) -> Result<(), Error> {
        let queue = self.config.queue.as_ref();
        let mut tx = self.pool.begin().await?;
        queries::push_tasks(&mut *tx, queue, tasks).await?;
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_fetch_goes_to_the_database() {
        let gate = FetchGate::new(Wakeups::default());
        assert!(gate.open().is_some());
    }

    #[test]
    fn a_fetch_goes_to_the_database_only_after_an_announcement() {
        let wakeups = Wakeups::default();
        let gate = FetchGate::new(wakeups.clone());
        let heard = gate.open().unwrap();
        assert!(!gate.again(heard, 1, 8));
        assert_eq!(gate.open(), None, "nothing announced since");
        assert_eq!(gate.open(), None);
        wakeups.announce();
        assert!(gate.open().is_some());
        assert_eq!(gate.open(), None, "the announcement is taken");
    }

    #[test]
    fn a_full_batch_is_followed_by_another_fetch() {
        let gate = FetchGate::new(Wakeups::default());
        let heard = gate.open().unwrap();
        assert!(!gate.again(heard, 8, 8));
        let heard = gate.open().expect("more may be waiting");
        assert!(!gate.again(heard, 3, 8));
        assert_eq!(gate.open(), None);
    }

    #[test]
    fn an_empty_fetch_during_which_a_job_was_announced_is_done_again() {
        let wakeups = Wakeups::default();
        let gate = FetchGate::new(wakeups.clone());
        let heard = gate.open().unwrap();
        wakeups.announce();
        assert!(
            gate.again(heard, 0, 8),
            "the fetch may have begun before the commit"
        );
        let heard = gate.open().expect("the announcement is not taken yet");
        assert!(!gate.again(heard, 1, 8));
        assert_eq!(gate.open(), None);
    }

    #[test]
    fn a_fetch_that_found_jobs_leaves_an_announcement_during_it_to_the_next() {
        let wakeups = Wakeups::default();
        let gate = FetchGate::new(wakeups.clone());
        let heard = gate.open().unwrap();
        wakeups.announce();
        assert!(!gate.again(heard, 2, 8), "its jobs are handed out first");
        assert!(gate.open().is_some());
    }
}
