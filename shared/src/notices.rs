//! Completion notices for long-polling clients (`GET /api/v1/generate/{id}?wait=N`).
//!
//! A trigger on `generation_requests` sends `NOTIFY generation_finished, '<id>'` whenever a
//! request reaches a final state, whichever process put it there; for a request stored with
//! [`crate::requests::Notice::Outcome`], `'<id> <outcome>'` (when it fits in a notice), so
//! that its waiter need not read the row. Each process hears it on its one `LISTEN`
//! connection ([`crate::listener`]) and wakes the waiters of that id ([`FinalNotices::heard`]);
//! nothing busy-polls the database.
//!
//! A notice is also counted, so that a subscriber busy elsewhere when it came (a stream sending
//! tokens) still sees it once it looks ([`Subscription::noticed`]). A notice that never came
//! (the listener between connections, a trigger not fired) is made up by the sweep
//! ([`FinalNotices::sweep`]): one read of every awaited request's state, every few seconds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::listener::Heard;

pub const CHANNEL: &str = "generation_finished";

/// How often [`FinalNotices::sweep`] reads the state of the awaited requests: the most a missed
/// notice delays its waiters. One read for them all: 10,000 streams each reading its own row
/// every 5 s were 2,000 reads a second, more than the api kept up with while it also served
/// the streams (`llm-bench --llm-only --open-streams 10000`: 2,212 left open after 120 s).
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Default)]
pub struct FinalNotices {
    waiters: Arc<Mutex<HashMap<Uuid, Weak<Waiters>>>>,
}

/// Everyone in this process waiting for one request.
#[derive(Debug, Default)]
struct Waiters {
    notify: Notify,
    /// Notices received for the request (or re-checks asked for after a reconnection).
    notices: AtomicU64,
    /// The outcome the last notice carried (`None`: it carried only the id, or none came),
    /// unparsed: only a waiter that uses it pays for reading it.
    outcome: Mutex<Option<Arc<str>>>,
}

/// A registration for one request's completion; dropping it unregisters.
pub struct Subscription {
    id: Uuid,
    waiters: Arc<Waiters>,
    /// The count of notices this subscriber has seen.
    seen: AtomicU64,
    completions: FinalNotices,
}

impl Subscription {
    /// Woken by each notice, if waited on (enabled) at that moment.
    pub fn notify(&self) -> &Notify {
        &self.waiters.notify
    }

    /// Whether a notice came since this was last asked (or since the subscription began),
    /// waited on or not. Enable a `notify().notified()` before asking, so that a notice
    /// coming in between is not missed either.
    pub fn noticed(&self) -> bool {
        let notices = self.waiters.notices.load(Ordering::Acquire);
        self.seen.swap(notices, Ordering::AcqRel) != notices
    }

    /// The outcome the request's last notice carried, if it carried one
    /// ([`crate::requests::Notice`]; read by `requests::RequestView::of_notice`).
    pub fn outcome(&self) -> Option<Arc<str>> {
        self.waiters.outcome.lock().ok()?.clone()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Ok(mut map) = self.completions.waiters.lock() {
            // Ours is the last strong reference: nobody else waits for this request.
            if Arc::strong_count(&self.waiters) == 1 {
                map.remove(&self.id);
            }
        }
    }
}

impl Waiters {
    /// A notice came (or a re-check is due), with the outcome it carried, if any: set before
    /// the waiters are woken, so that each finds it.
    fn wake(&self, outcome: Option<&str>) {
        if let Ok(mut last) = self.outcome.lock() {
            *last = outcome.map(Arc::from);
        }
        self.notices.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_waiters();
    }
}

impl FinalNotices {
    pub fn subscribe(&self, id: Uuid) -> Subscription {
        let notify = match self.waiters.lock() {
            Ok(mut map) => match map.get(&id).and_then(Weak::upgrade) {
                Some(existing) => existing,
                None => {
                    let fresh = Arc::new(Waiters::default());
                    map.insert(id, Arc::downgrade(&fresh));
                    fresh
                }
            },
            Err(_) => Arc::new(Waiters::default()),
        };
        let seen = AtomicU64::new(notify.notices.load(Ordering::Acquire));
        Subscription {
            id,
            waiters: notify,
            seen,
            completions: self.clone(),
        }
    }

    fn wake(&self, id: Uuid, outcome: Option<&str>) {
        let notify = self
            .waiters
            .lock()
            .ok()
            .and_then(|map| map.get(&id).and_then(Weak::upgrade));
        if let Some(notify) = notify {
            notify.wake(outcome);
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
            notify.wake(None);
        }
    }

    /// Every [`SWEEP_EVERY`], wakes the waiters of each awaited request that has ended, as its
    /// notice would have, until the process ends. A failed read is tried again at the next turn.
    pub async fn sweep(self, pool: PgPool) {
        let mut turns = tokio::time::interval(SWEEP_EVERY);
        turns.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            turns.tick().await;
            let awaited: Vec<Uuid> = match self.waiters.lock() {
                Ok(map) => map.keys().copied().collect(),
                Err(_) => continue,
            };
            if awaited.is_empty() {
                continue;
            }
            // `completed_at` is set exactly when a request is final (a CHECK constraint).
            let ended: Result<Vec<Uuid>, sqlx::Error> = sqlx::query_scalar(
                "SELECT id FROM generation_requests WHERE id = ANY($1) AND completed_at IS NOT NULL",
            )
            .bind(&awaited)
            .fetch_all(&pool)
            .await;
            match ended {
                Ok(ended) => {
                    for id in ended {
                        self.wake(id, None);
                    }
                }
                Err(err) => tracing::debug!(error = %err, "completion sweep: read failed"),
            }
        }
    }

    /// Takes what the process's listener heard on [`CHANNEL`] ([`crate::listener`]): a
    /// notice wakes its request's waiters; listening again after a lost connection wakes every
    /// waiter, to re-check what may have been missed.
    pub fn heard(&self, heard: &Heard) {
        match heard {
            Heard::Notice(payload) => {
                let (id, outcome) = match payload.split_once(' ') {
                    Some((id, outcome)) => (id, Some(outcome)),
                    None => (payload.as_str(), None),
                };
                if let Ok(id) = id.parse::<Uuid>() {
                    self.wake(id, outcome);
                }
            }
            Heard::Listening => self.wake_all(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTCOME: &str = r#"{"status": "completed", "result": "hi"}"#;

    #[test]
    fn a_notice_with_an_outcome_wakes_its_waiters_with_it() {
        let notices = FinalNotices::default();
        let id = Uuid::now_v7();
        let subscription = notices.subscribe(id);
        notices.heard(&Heard::Notice(format!("{id} {OUTCOME}")));
        assert!(subscription.noticed());
        assert_eq!(subscription.outcome().as_deref(), Some(OUTCOME));
    }

    #[test]
    fn a_notice_of_the_id_alone_leaves_no_outcome() {
        let notices = FinalNotices::default();
        let id = Uuid::now_v7();
        let subscription = notices.subscribe(id);
        notices.heard(&Heard::Notice(format!("{id} {OUTCOME}")));
        // a later notice that carries only the id: what it announced must be read
        notices.heard(&Heard::Notice(id.to_string()));
        assert!(subscription.noticed());
        assert!(subscription.outcome().is_none());
        // listening again: notices may have been missed, the last outcome is not trusted
        notices.heard(&Heard::Notice(format!("{id} {OUTCOME}")));
        notices.heard(&Heard::Listening);
        assert!(subscription.outcome().is_none());
    }

    #[test]
    fn a_notice_of_another_request_or_unreadable_wakes_nobody() {
        let notices = FinalNotices::default();
        let subscription = notices.subscribe(Uuid::now_v7());
        notices.heard(&Heard::Notice(format!("{} {OUTCOME}", Uuid::now_v7())));
        notices.heard(&Heard::Notice("not-an-id {}".into()));
        notices.heard(&Heard::Notice(String::new()));
        assert!(!subscription.noticed());
        assert!(subscription.outcome().is_none());
    }
}
