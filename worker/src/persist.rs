//! Storing a run's outcome through database blips.
//!
//! Once a provider has answered, the answer has been paid for: if the write that records it
//! fails (a connection dropped, a failover, a statement refused for a moment) and the job simply
//! gave up, the request would run again later and call the provider a second time. So the
//! final write of a run is retried with backoff for up to `WORKER_RESULT_RETRY_SECS`, while the
//! job keeps its place among the requests this process runs, so that its lease goes on being
//! renewed. Each write is guarded by the run's claim: retrying it can never finish a request
//! twice, and once another worker holds the request the guard answers "not held" and the loop
//! ends.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

/// First wait between two tries; doubled each time up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(2);

/// Runs `write` until it succeeds or `bound` has passed; the last error is returned then.
pub(crate) async fn retrying<T, F, Fut>(
    request_id: Uuid,
    what: &'static str,
    bound: Duration,
    mut write: F,
) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let give_up_at = Instant::now() + bound;
    let mut delay = FIRST_DELAY;
    loop {
        let err = match write().await {
            Ok(done) => return Ok(done),
            Err(err) => err,
        };
        let now = Instant::now();
        if now >= give_up_at {
            return Err(err);
        }
        let wait = delay.min(give_up_at - now);
        tracing::warn!(
            request.id = %request_id,
            error = %err,
            retry_in_ms = wait.as_millis() as u64,
            "could not store the {what}; trying again while holding the request"
        );
        tokio::time::sleep(wait).await;
        delay = (delay * 2).min(MAX_DELAY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[tokio::test]
    async fn a_write_is_tried_again_until_it_succeeds_or_the_bound_passes() {
        let tries = Cell::new(0);
        let stored = retrying(Uuid::nil(), "result", Duration::from_secs(30), || {
            tries.set(tries.get() + 1);
            let n = tries.get();
            async move {
                if n < 4 {
                    Err(sqlx::Error::PoolTimedOut)
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(stored.ok(), Some(4));

        let started = Instant::now();
        let never = retrying(
            Uuid::nil(),
            "result",
            Duration::from_millis(500),
            || async { Err::<(), _>(sqlx::Error::PoolTimedOut) },
        )
        .await;
        assert!(never.is_err());
        assert!(started.elapsed() >= Duration::from_millis(500));
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
