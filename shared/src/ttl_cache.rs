//! A bounded in-process cache whose entries expire: at most `max_entries` keys, each trusted
//! for `ttl` after it was stored. Caches keyed by something a caller chooses (a user id from a
//! token) must not grow with the number of callers, so a full cache first drops what has
//! expired and then, if still full, its oldest quarter (amortised: one sweep per quarter of
//! inserts, not one per insert).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Keys to values, each trusted for `ttl`, never more than `max_entries` of them.
#[derive(Debug)]
pub struct TtlCache<K, V> {
    entries: HashMap<K, (V, Instant)>,
    ttl: Duration,
    max_entries: usize,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    /// An empty cache (`max_entries` is at least 1).
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        Self {
            entries: HashMap::new(),
            ttl,
            max_entries: max_entries.max(1),
        }
    }

    /// The value stored for `key` less than `ttl` ago.
    pub fn get(&self, key: &K) -> Option<V> {
        self.get_at(key, Instant::now())
    }

    fn get_at(&self, key: &K, now: Instant) -> Option<V> {
        self.entries
            .get(key)
            .filter(|(_, at)| now.saturating_duration_since(*at) < self.ttl)
            .map(|(value, _)| value.clone())
    }

    /// Stores `value` for `key`, making room first when the cache is full.
    pub fn insert(&mut self, key: K, value: V) {
        self.insert_at(key, value, Instant::now());
    }

    fn insert_at(&mut self, key: K, value: V, now: Instant) {
        if !self.entries.contains_key(&key) && self.entries.len() >= self.max_entries {
            self.make_room(now);
        }
        self.entries.insert(key, (value, now));
    }

    /// Forgets `key`.
    pub fn remove(&mut self, key: &K) {
        self.entries.remove(key);
    }

    /// Entries held (expired ones included until a sweep drops them).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops the expired entries; if that frees nothing worth having, the oldest quarter too.
    fn make_room(&mut self, now: Instant) {
        let ttl = self.ttl;
        self.entries
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < ttl);
        let target = self.max_entries - self.max_entries.div_ceil(4);
        if self.entries.len() <= target {
            return;
        }
        let mut ages: Vec<(Instant, K)> = self
            .entries
            .iter()
            .map(|(key, (_, at))| (*at, key.clone()))
            .collect();
        let excess = ages.len() - target;
        ages.select_nth_unstable_by_key(excess - 1, |(at, _)| *at);
        for (_, key) in ages.into_iter().take(excess) {
            self.entries.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    #[test]
    fn a_cache_never_holds_more_than_its_bound() {
        let mut cache = TtlCache::new(TTL, 100);
        let start = Instant::now();
        for n in 0..10_000u32 {
            cache.insert_at(n, n, start + Duration::from_millis(u64::from(n)));
            assert!(cache.len() <= 100, "{} entries after {n}", cache.len());
        }
        // The newest entries are the ones kept.
        let now = start + Duration::from_millis(10_000);
        assert_eq!(cache.get_at(&9_999, now), Some(9_999));
        assert_eq!(cache.get_at(&0, now), None);
    }

    #[test]
    fn expired_entries_are_dropped_before_live_ones() {
        let mut cache = TtlCache::new(TTL, 4);
        let start = Instant::now();
        cache.insert_at("old-1", 1, start);
        cache.insert_at("old-2", 2, start);
        let later = start + Duration::from_secs(5);
        cache.insert_at("live-1", 3, later);
        cache.insert_at("live-2", 4, later);
        // Full; the old ones have expired by now, the live ones have not.
        let now = start + TTL + Duration::from_secs(1);
        cache.insert_at("new", 5, now);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get_at(&"live-1", now), Some(3));
        assert_eq!(cache.get_at(&"live-2", now), Some(4));
        assert_eq!(cache.get_at(&"new", now), Some(5));
    }

    #[test]
    fn an_entry_is_trusted_for_its_ttl_only_and_can_be_forgotten() {
        let mut cache = TtlCache::new(TTL, 4);
        let start = Instant::now();
        cache.insert_at(1, "a", start);
        assert_eq!(
            cache.get_at(&1, start + TTL - Duration::from_millis(1)),
            Some("a")
        );
        assert_eq!(cache.get_at(&1, start + TTL), None);
        cache.insert_at(2, "b", start);
        cache.remove(&2);
        assert_eq!(cache.get_at(&2, start), None);
        // Storing a key the cache holds replaces it without evicting anything.
        for key in [3, 4, 5] {
            cache.insert_at(key, "c", start);
        }
        cache.insert_at(5, "d", start);
        assert_eq!(cache.len(), 4);
        assert_eq!(cache.get_at(&5, start), Some("d"));
    }
}
