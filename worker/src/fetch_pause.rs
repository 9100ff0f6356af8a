//! Pausing this worker's fetch of new batch jobs while the batch items it fetches are being
//! sent back to the queue for want of provider budget: fetching one only to send it back costs
//! the database a claim and a release, and a worker with free slots and a backlog of thousands
//! would do little else. Interactive jobs, and batch jobs coming back at the time promised to
//! them, are still fetched (`apalis.get_jobs` reads the pause: `queue::pause_fetch`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use llm_shared::queue::{self, Wakeups};
use sqlx::PgPool;

/// The longest pause: a batch for another endpoint, which may have budget, waits this long at
/// most for its next fetch.
const MAX_PAUSE: Duration = Duration::from_secs(5);
/// A pause is written again only when it would end at least this much later (one write per
/// second or so, not one per item sent back).
const EXTEND_BY: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub struct FetchPause {
    pool: PgPool,
    worker: String,
    /// Told when a pause ends, so that the held-back jobs are fetched then.
    wakeups: Wakeups,
    /// When the pause written last ends.
    until: Mutex<Option<Instant>>,
}

impl FetchPause {
    pub fn new(pool: PgPool, worker: String, wakeups: Wakeups) -> Self {
        Self {
            pool,
            worker,
            wakeups,
            until: Mutex::new(None),
        }
    }

    /// A batch item went back to the queue for `wait`: new batch jobs are not fetched for that
    /// long (at most [`MAX_PAUSE`]). A failed write only leaves the fetch unpaused.
    pub async fn batch_item_sent_back(&self, wait: Duration) {
        let pause = wait.min(MAX_PAUSE);
        let until = Instant::now() + pause;
        {
            let Ok(mut current) = self.until.lock() else {
                return;
            };
            if current.is_some_and(|current| until < current + EXTEND_BY) {
                return;
            }
            *current = Some(until);
        }
        let below = i32::try_from(queue::returning(queue::BATCH_PRIORITY)).unwrap_or(1);
        match queue::pause_fetch(&self.pool, &self.worker, below, pause).await {
            Ok(()) => self.wakeups.due_in(pause),
            Err(err) => {
                tracing::debug!(error = %err, "could not pause the fetch of new batch jobs")
            }
        }
    }
}
