//! Group commit: many callers' small writes folded into one statement.
//!
//! A [`Batcher`] hands each call to one of a few writer tasks. A writer takes the first call
//! waiting plus every call already queued behind it (up to its batch size), runs them together
//! — one statement, one commit — and answers each caller with its own result. Under light load
//! a batch is a single call and nothing waits for company; under load, the calls that arrive
//! while a batch runs form the next one, so the database sees fewer, larger statements.
//!
//! A queued call runs even if its caller stops waiting (axum drops a handler's future when the
//! client disconnects): the write is never cut halfway, as with a spawned task.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};

/// The writers stopped (the runtime is shutting down) or a batch ended without answering this
/// call (its run panicked).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the batch writer ended without answering")]
pub struct Unanswered;

struct Call<Req, Resp> {
    request: Req,
    reply: oneshot::Sender<Resp>,
}

/// Runs calls in batches; see the module docs. Cloning shares the writers.
pub struct Batcher<Req, Resp> {
    queue: mpsc::UnboundedSender<Call<Req, Resp>>,
}

impl<Req, Resp> Clone for Batcher<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<Req, Resp> std::fmt::Debug for Batcher<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

impl<Req, Resp> Batcher<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// Starts `writers` writer tasks (so that one batch fills while others run), each running
    /// at most `max_batch` calls at a time with `run`, which answers the calls in their order.
    /// Must be called inside a tokio runtime.
    pub fn new<F, Fut>(writers: usize, max_batch: usize, run: F) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Resp>> + Send + 'static,
    {
        let (queue, calls) = mpsc::unbounded_channel();
        let calls = Arc::new(Mutex::new(calls));
        let run = Arc::new(run);
        for _ in 0..writers.max(1) {
            tokio::spawn(write_batches(calls.clone(), run.clone(), max_batch.max(1)));
        }
        Self { queue }
    }

    /// Queues `request` without waiting for its answer (the run still gets it, in a batch):
    /// for writes nobody waits on. `Err` gives it back if the writers are gone.
    pub fn send(&self, request: Req) -> Result<(), Req> {
        let (reply, _) = oneshot::channel();
        self.queue
            .send(Call { request, reply })
            .map_err(|refused| refused.0.request)
    }

    /// Queues `request` and waits for its answer.
    pub async fn call(&self, request: Req) -> Result<Resp, Unanswered> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Call { request, reply })
            .map_err(|_| Unanswered)?;
        answer.await.map_err(|_| Unanswered)
    }
}

async fn write_batches<Req, Resp, F, Fut>(
    calls: Arc<Mutex<mpsc::UnboundedReceiver<Call<Req, Resp>>>>,
    run: Arc<F>,
    max_batch: usize,
) where
    Req: Send + 'static,
    Resp: Send + 'static,
    F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<Resp>> + Send + 'static,
{
    loop {
        let batch = {
            let mut calls = calls.lock().await;
            let Some(first) = calls.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < max_batch {
                match calls.try_recv() {
                    Ok(call) => batch.push(call),
                    Err(_) => break,
                }
            }
            batch
        };
        let (requests, replies): (Vec<Req>, Vec<oneshot::Sender<Resp>>) = batch
            .into_iter()
            .map(|call| (call.request, call.reply))
            .unzip();
        // In a task of its own, so that a panicking run drops only this batch's replies (its
        // callers get `Unanswered`) and the writer goes on.
        let answers = tokio::spawn((run)(requests)).await.unwrap_or_default();
        for (reply, answer) in replies.into_iter().zip(answers) {
            let _ = reply.send(answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn concurrent_calls_share_batches_and_each_gets_its_own_answer() {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = sizes.clone();
        let batcher = Batcher::new(1, 8, move |batch: Vec<u32>| {
            let seen = seen.clone();
            async move {
                seen.lock().map(|mut s| s.push(batch.len())).ok();
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                batch.into_iter().map(|n| n * 2).collect::<Vec<_>>()
            }
        });
        let calls: Vec<_> = (0..20)
            .map(|n| {
                let batcher = batcher.clone();
                tokio::spawn(async move { batcher.call(n).await })
            })
            .collect();
        for (n, call) in calls.into_iter().enumerate() {
            assert_eq!(call.await.ok().and_then(Result::ok), Some(n as u32 * 2));
        }
        let sizes = sizes.lock().map(|s| s.clone()).unwrap_or_default();
        assert_eq!(sizes.iter().sum::<usize>(), 20);
        assert!(
            sizes.len() < 20,
            "calls waiting together must share a batch: {sizes:?}"
        );
        assert!(
            sizes.iter().all(|&s| s <= 8),
            "a batch never exceeds its size: {sizes:?}"
        );
    }

    #[tokio::test]
    async fn a_panicking_batch_answers_unanswered_and_the_writer_goes_on() {
        let batcher = Batcher::new(1, 4, |batch: Vec<u32>| async move {
            assert!(batch[0] != 0, "boom");
            batch
        });
        assert!(batcher.call(0).await.is_err());
        assert_eq!(batcher.call(7).await.ok(), Some(7));
    }

    #[tokio::test]
    async fn sent_requests_run_in_batches_without_a_caller_waiting() {
        let (tx, mut ran) = mpsc::unbounded_channel();
        let batcher = Batcher::new(1, 8, move |batch: Vec<u32>| {
            let tx = tx.clone();
            async move {
                let answers = vec![(); batch.len()];
                let _ = tx.send(batch);
                answers
            }
        });
        for n in 0..5 {
            assert!(batcher.send(n).is_ok());
        }
        let mut seen = Vec::new();
        while seen.len() < 5 {
            seen.extend(ran.recv().await.unwrap_or_default());
        }
        assert_eq!(seen, vec![0, 1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn a_call_whose_caller_left_still_runs() {
        let ran = Arc::new(tokio::sync::Notify::new());
        let signal = ran.clone();
        let batcher = Batcher::new(1, 4, move |batch: Vec<u32>| {
            let signal = signal.clone();
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                signal.notify_one();
                batch
            }
        });
        let call = batcher.call(1);
        // Poll once so the call is queued, then drop it.
        let _ = tokio::time::timeout(std::time::Duration::from_millis(1), call).await;
        tokio::time::timeout(std::time::Duration::from_secs(2), ran.notified())
            .await
            .expect("the dropped call's batch ran");
    }
}
