//! Per-user quotas: how much unfinished work a user may hold in the queue
//! ([`QueuedQuota`], counted in PostgreSQL, so every api process sees the same count) and how
//! many streams or long polls a user may hold open on one api process ([`UserSlots`], counted
//! in memory).
//!
//! The queued count reads `generation_requests_unfinished_by_user_idx` (a partial index over
//! the unfinished rows only) and stops at the quota: its cost follows the user's backlog up
//! to the quota, never the requests they ever made (about 0.03 ms of PostgreSQL time for a
//! few unfinished requests, 1.5 to 4 ms for 10,000), and a user submits at most at their rate
//! limit. Concurrent submits of one user may each see the same count: the quota can be passed
//! by the submits racing in one instant (bounded by the rate limits), never by a steady
//! flood.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use sqlx::PgPool;
use uuid::Uuid;

/// A user's requests that are pending or running may not exceed `max` (0: no quota, and no
/// count on the submit path).
#[derive(Debug, Clone, Copy)]
pub struct QueuedQuota {
    pub max: u32,
}

/// A quota's answer to work of `n` requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueuedDecision {
    Allowed,
    /// Refused: `queued` requests are unfinished (counted up to the quota), `max` allowed.
    Refused {
        queued: u32,
        max: u32,
    },
}

impl QueuedQuota {
    /// Whether `user` may queue `n` more requests (all or nothing).
    pub async fn check(
        &self,
        pool: &PgPool,
        user: Uuid,
        n: u32,
    ) -> Result<QueuedDecision, sqlx::Error> {
        if self.max == 0 {
            return Ok(QueuedDecision::Allowed);
        }
        // Counting stops at the quota: past it, the exact number changes nothing.
        let queued: i64 = sqlx::query_scalar(include_str!("quota/sql/count_unfinished.sql"))
            .bind(user)
            .bind(i64::from(self.max))
            .fetch_one(pool)
            .await?;
        let queued = u32::try_from(queued.max(0)).unwrap_or(u32::MAX);
        if u64::from(queued) + u64::from(n) > u64::from(self.max) {
            Ok(QueuedDecision::Refused {
                queued,
                max: self.max,
            })
        } else {
            Ok(QueuedDecision::Allowed)
        }
    }
}

/// Per-user counts of something held open on this process (streams, long polls), each user
/// at most `max` at once (0: no cap). A [`Slot`] is one of them; dropping it (the answer ended, or its
/// client went away) frees it. Cloning shares the counts.
#[derive(Debug, Clone)]
pub struct UserSlots {
    max: u32,
    held: Arc<Mutex<HashMap<Uuid, u32>>>,
}

/// One held slot of a user; freed on drop.
#[derive(Debug)]
pub struct Slot {
    user: Uuid,
    held: Arc<Mutex<HashMap<Uuid, u32>>>,
}

impl UserSlots {
    pub fn new(max: u32) -> Self {
        Self {
            max,
            held: Arc::default(),
        }
    }

    /// The most slots a user may hold.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// A slot for `user`, unless they already hold `max`.
    pub fn try_take(&self, user: Uuid) -> Option<Slot> {
        // A panic while the map was locked cannot leave a count half-written: the counts stay
        // usable.
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let count = held.entry(user).or_insert(0);
        if self.max > 0 && *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Slot {
            user,
            held: self.held.clone(),
        })
    }

    /// How many slots `user` holds now.
    pub fn held_by(&self, user: Uuid) -> u32 {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(&user).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = held.get_mut(&self.user) {
            *count = count.saturating_sub(1);
            // A user holding nothing takes no memory: the map holds only open slots.
            if *count == 0 {
                held.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_holds_at_most_max_slots_and_a_dropped_one_is_free_again() {
        let slots = UserSlots::new(2);
        let (alice, bob) = (Uuid::now_v7(), Uuid::now_v7());
        let a1 = slots.try_take(alice).expect("first");
        let a2 = slots.try_take(alice).expect("second");
        assert!(slots.try_take(alice).is_none());
        assert!(
            slots.try_take(bob).is_some(),
            "another user is not affected"
        );
        drop(a1);
        let a3 = slots.try_take(alice).expect("freed by the drop");
        drop((a2, a3));
        assert_eq!(slots.held_by(alice), 0);
        assert!(
            slots.held.lock().unwrap().is_empty(),
            "nothing kept per user"
        );
    }

    #[test]
    fn a_cap_of_zero_is_no_cap() {
        let slots = UserSlots::new(0);
        let user = Uuid::now_v7();
        let held: Vec<Slot> = (0..100).filter_map(|_| slots.try_take(user)).collect();
        assert_eq!(held.len(), 100);
        drop(held);
        assert!(slots.held.lock().unwrap().is_empty());
    }
}
