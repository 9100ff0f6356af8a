//! apalis' acknowledgements of finished jobs, written together a moment after the first of them
//! instead of one statement as each job ends.
//!
//! A job's acknowledgement is bookkeeping: its request's outcome is committed already, and a job
//! left unacknowledged by a worker that dies is delivered again and finds its request finished.
//! Written as each job ended, it ran beside the api reading the result it had just been told
//! of, on the same two cores. Held a moment (`WORKER_ACK_DELAY_MS`, 50 ms), it goes with those of
//! the jobs that end meanwhile, one statement for all of them, off the path of the next answer
//! most of the time: ~0.2 ms less PostgreSQL CPU and p50 per miss at one client
//! (docs/PERFORMANCE.md, "Acknowledgements written together"). A written acknowledgement
//! matches only a job still locked by its worker, so one that comes late for a job put back
//! meanwhile (a replay) changes nothing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use apalis_postgres::Error;
use apalis_postgres::queries::{self, ResultPayload};
use sqlx::PgPool;

/// The longest wait between two tries of a write the database refused (an outage).
const RETRY_AT_MOST: Duration = Duration::from_secs(5);

/// Acknowledgements not written yet, each with the worker whose lock it releases.
#[derive(Debug)]
pub(super) struct Acks {
    /// How long the first acknowledgement after a write waits for others.
    delay: Duration,
    pending: Mutex<Vec<(String, ResultPayload)>>,
}

impl Acks {
    pub(super) fn new(delay: Duration) -> Self {
        Self {
            delay,
            pending: Mutex::default(),
        }
    }

    /// Queues the acknowledgements `acks` of `worker`; the first queued since the last write
    /// schedules the next, the delay later, on `pool`.
    pub(super) fn queue(self: &Arc<Self>, pool: &PgPool, worker: &str, acks: Vec<ResultPayload>) {
        if acks.is_empty() {
            return;
        }
        let first = {
            let mut pending = self.pending();
            let first = pending.is_empty();
            pending.extend(acks.into_iter().map(|ack| (worker.to_owned(), ack)));
            first
        };
        if first {
            let (acks, pool) = (Arc::clone(self), pool.clone());
            tokio::spawn(async move { acks.write_later(&pool).await });
        }
    }

    /// Writes what is queued after the delay, again after each failure (waiting twice as long
    /// each time, up to [`RETRY_AT_MOST`]) until it is written.
    async fn write_later(&self, pool: &PgPool) {
        let mut wait = self.delay;
        loop {
            tokio::time::sleep(wait).await;
            match self.write(pool).await {
                Ok(()) => return,
                Err(err) => {
                    tracing::warn!(error = %err, "could not acknowledge finished jobs; trying again");
                    wait = (wait * 2).clamp(Duration::from_millis(100), RETRY_AT_MOST);
                }
            }
        }
    }

    /// Writes every queued acknowledgement, one statement per worker. On failure they are all
    /// queued again (writing one twice matches nothing the second time).
    pub(super) async fn write(&self, pool: &PgPool) -> Result<(), Error> {
        let taken = std::mem::take(&mut *self.pending());
        if taken.is_empty() {
            return Ok(());
        }
        let mut by_worker: BTreeMap<&str, Vec<&ResultPayload>> = BTreeMap::new();
        for (worker, ack) in &taken {
            by_worker.entry(worker.as_str()).or_default().push(ack);
        }
        let written: Result<(), Error> = async {
            let mut conn = pool.acquire().await?;
            for (worker, acks) in by_worker {
                queries::handle_results(&mut *conn, &acks, worker).await?;
            }
            Ok(())
        }
        .await;
        if written.is_err() {
            self.pending().extend(taken);
        }
        written
    }

    /// How many are waiting to be written.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.pending().len()
    }

    fn pending(&self) -> MutexGuard<'_, Vec<(String, ResultPayload)>> {
        // A panic while the lock was held cannot leave the list half-changed (a push or a take).
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apalis_core::task::status::Status;
    use apalis_core::task::task_id::TaskId;

    fn ack() -> ResultPayload {
        ResultPayload {
            task_id: TaskId::from_ulid(ulid::Ulid::from(uuid::Uuid::now_v7().as_u128())),
            attempt: 1,
            status: Status::Done,
            result: Ok(serde_json::Value::Null),
        }
    }

    /// A pool to nowhere: every write fails at once.
    fn unreachable_pool() -> PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(200))
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap()
    }

    #[tokio::test]
    async fn acknowledgements_wait_to_be_written_together() {
        let acks = Arc::new(Acks::new(Duration::from_millis(50)));
        let pool = unreachable_pool();
        acks.queue(&pool, "worker-a", vec![ack(), ack()]);
        acks.queue(&pool, "worker-a", vec![ack()]);
        assert_eq!(acks.len(), 3, "none is written as it comes");
    }

    #[tokio::test]
    async fn acknowledgements_that_could_not_be_written_stay_queued() {
        let acks = Arc::new(Acks::new(Duration::from_millis(50)));
        let pool = unreachable_pool();
        acks.pending().extend([
            ("worker-a".to_owned(), ack()),
            ("worker-b".to_owned(), ack()),
        ]);
        assert!(acks.write(&pool).await.is_err());
        assert_eq!(acks.len(), 2, "queued again for the next write");
    }
}
