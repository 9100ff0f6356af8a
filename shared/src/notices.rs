//! Completion notices for long-polling clients (`GET /api/v1/generate/{id}?wait=N`).
//!
//! A trigger on `generation_requests` sends `NOTIFY generation_finished, '<id>'` whenever a
//! request reaches a final state, whichever process put it there. Each api process keeps one
//! `LISTEN` connection and wakes the waiters of that id; nothing busy-polls the database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use uuid::Uuid;

pub const CHANNEL: &str = "generation_finished";

#[derive(Debug, Clone, Default)]
pub struct FinalNotices {
    waiters: Arc<Mutex<HashMap<Uuid, Weak<Notify>>>>,
}

/// A registration for one request's completion; dropping it unregisters.
pub struct Subscription {
    id: Uuid,
    notify: Arc<Notify>,
    completions: FinalNotices,
}

impl Subscription {
    pub fn notify(&self) -> &Notify {
        &self.notify
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Ok(mut map) = self.completions.waiters.lock() {
            // Ours is the last strong reference: nobody else waits for this request.
            if Arc::strong_count(&self.notify) == 1 {
                map.remove(&self.id);
            }
        }
    }
}

impl FinalNotices {
    pub fn subscribe(&self, id: Uuid) -> Subscription {
        let notify = match self.waiters.lock() {
            Ok(mut map) => match map.get(&id).and_then(Weak::upgrade) {
                Some(existing) => existing,
                None => {
                    let fresh = Arc::new(Notify::new());
                    map.insert(id, Arc::downgrade(&fresh));
                    fresh
                }
            },
            Err(_) => Arc::new(Notify::new()),
        };
        Subscription {
            id,
            notify,
            completions: self.clone(),
        }
    }

    fn wake(&self, id: Uuid) {
        let notify = self
            .waiters
            .lock()
            .ok()
            .and_then(|map| map.get(&id).and_then(Weak::upgrade));
        if let Some(notify) = notify {
            notify.notify_waiters();
        }
    }

    /// After the listener lost its connection notices may have been missed: everyone re-checks.
    fn wake_all(&self) {
        let all: Vec<_> = self
            .waiters
            .lock()
            .map(|map| map.values().filter_map(Weak::upgrade).collect())
            .unwrap_or_default();
        for notify in all {
            notify.notify_waiters();
        }
    }

    /// Listens for completion notices until the process ends. Reconnects on its own.
    pub async fn listen(self, pool: PgPool) {
        loop {
            match PgListener::connect_with(&pool).await {
                Ok(mut listener) => {
                    if let Err(err) = listener.listen(CHANNEL).await {
                        tracing::warn!(error = %err, "could not LISTEN for completions");
                    } else {
                        self.wake_all();
                        loop {
                            match listener.recv().await {
                                Ok(notice) => {
                                    if let Ok(id) = notice.payload().parse::<Uuid>() {
                                        self.wake(id);
                                    }
                                }
                                Err(err) => {
                                    tracing::warn!(error = %err, "completion listener lost its connection");
                                    break;
                                }
                            }
                        }
                    }
                }
                Err(err) => tracing::warn!(error = %err, "completion listener cannot connect"),
            }
            self.wake_all();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
