//! When a worker looks for jobs: the announcements of new jobs heard on the process's listener
//! ([`Wakeups`]), the times at which jobs this process put back come due, and a fixed tick for
//! the rest ([`WakeStrategy`]). Each counts as an announcement, after which the worker's next
//! fetch goes to the database ([`super::QueueBackend`]).

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use apalis::prelude::{PollSnapshot, PollStrategy};
use futures::task::AtomicWaker;
use serde::Deserialize;
use tokio::time::Instant;

use super::QUEUE;
use crate::listener::Heard;

/// apalis' channel announcing new jobs (its trigger's, and ours:
/// `migrations/queue/20261206100001_one_wake_up_per_insert.sql`).
pub const CHANNEL: &str = "apalis::job::insert";

/// New jobs of [`QUEUE`] announced on [`CHANNEL`], as the process's listener hears them
/// ([`crate::listener`]), and the other reasons to look for jobs (jobs put back coming due,
/// [`WakeStrategy`]'s tick): what wakes the worker and lets its [`super::QueueBackend`] fetch.
/// Cloning shares them.
#[derive(Debug, Clone, Default)]
pub struct Wakeups(Arc<Announced>);

#[derive(Debug, Default)]
struct Announced {
    /// Announcements heard (and reconnections, after which one may have been missed, and
    /// ticks of the poll period).
    heard: AtomicU64,
    /// The task of the strategy that waits for them.
    waker: AtomicWaker,
    /// When jobs this process put back come due ([`Wakeups::due_in`]), earliest first.
    due: Mutex<BTreeSet<Instant>>,
}

impl Announced {
    fn announce(&self) {
        self.heard.fetch_add(1, Ordering::SeqCst);
        self.waker.wake();
    }
}

/// The part of apalis' payload a worker reads.
#[derive(Deserialize)]
struct Announcement {
    job_type: String,
}

impl Wakeups {
    /// The handler of [`CHANNEL`] for the process's listener: a job of [`QUEUE`] announced, or
    /// the listener listening again (an announcement may have been missed meanwhile), wakes the
    /// strategy.
    pub fn handler(&self) -> impl Fn(&Heard) + Send + Sync + 'static {
        let announced = self.0.clone();
        move |heard: &Heard| {
            let wake = match heard {
                Heard::Notice(payload) => serde_json::from_str::<Announcement>(payload)
                    .is_ok_and(|announcement| announcement.job_type == QUEUE),
                Heard::Listening => true,
            };
            if wake {
                announced.announce();
            }
        }
    }

    /// A job may be waiting (one this process put back just now, which nothing else
    /// announces): the next fetch goes to the database.
    pub fn announce(&self) {
        self.0.announce();
    }

    /// Jobs this process put back (a rescheduled run, batch jobs held back by a fetch pause, a
    /// rescued job) can be fetched in `delay`: the worker looks then, not at its next tick.
    pub fn due_in(&self, delay: Duration) {
        if let Ok(mut due) = self.0.due.lock() {
            due.insert(Instant::now() + delay);
        }
        // The strategy arms its timer for the earliest on its next poll.
        self.0.waker.wake();
    }

    /// The earliest due time still to come, the ones passed taken (announced).
    fn next_due(&self) -> Option<Instant> {
        let Ok(mut due) = self.0.due.lock() else {
            return None;
        };
        let now = Instant::now();
        let mut passed = false;
        while due.first().is_some_and(|&at| at <= now) {
            due.pop_first();
            passed = true;
        }
        if passed {
            self.0.announce();
        }
        due.first().copied()
    }

    pub(super) fn heard(&self) -> u64 {
        self.0.heard.load(Ordering::SeqCst)
    }
}

/// When a worker looks for jobs: on every announcement of a new job ([`Wakeups`], ~ms), when a
/// job it put back comes due (a rescheduled run, a fetch pause's end, a rescued job, a dead
/// worker's job its heartbeat put back), and on a fixed tick for what none of these covers
/// (jobs another worker put back), each of which counts as an announcement. The tick re-arms
/// itself every time it fires (the built-in interval strategy does not, and loses wake-ups).
pub struct WakeStrategy {
    wakeups: Wakeups,
    /// The count of announcements already taken.
    seen: u64,
    tick: Pin<Box<tokio::time::Sleep>>,
    period: Duration,
    /// Armed for the earliest due time ([`Wakeups::due_in`]).
    due: Pin<Box<tokio::time::Sleep>>,
}

impl WakeStrategy {
    pub fn new(wakeups: Wakeups, period: Duration) -> Self {
        Self {
            seen: wakeups.heard(),
            wakeups,
            tick: Box::pin(tokio::time::sleep(period)),
            period,
            due: Box::pin(tokio::time::sleep(period)),
        }
    }
}

impl Clone for WakeStrategy {
    fn clone(&self) -> Self {
        Self::new(self.wakeups.clone(), self.period)
    }
}

impl PollStrategy for WakeStrategy {
    fn poll_drive(&mut self, cx: &mut Context<'_>, _: &PollSnapshot) -> Poll<Option<()>> {
        if self.tick.as_mut().poll(cx).is_ready() {
            let next = Instant::now() + self.period;
            self.tick.as_mut().reset(next);
            // Poll the re-armed timer once so that it registers this task's waker.
            let _ = self.tick.as_mut().poll(cx);
            self.wakeups.announce();
        }
        // Due times passed are announced; the timer waits for the next one.
        if let Some(at) = self.wakeups.next_due() {
            if self.due.deadline() != at {
                self.due.as_mut().reset(at);
            }
            if self.due.as_mut().poll(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
        }
        // Registered before the count is read: an announcement after the read wakes the task.
        self.wakeups.0.waker.register(cx.waker());
        let heard = self.wakeups.heard();
        if heard != self.seen {
            self.seen = heard;
            Poll::Ready(Some(()))
        } else {
            Poll::Pending
        }
    }
}
