//! The negative cache: store paths (or documents) that every upstream definitively said it does not have,
//! remembered briefly so that a client asking for thousands of missing paths (every `nix build`
//! of something not cached does) does not cost thousands of upstream round trips each time.
//!
//! Only definitive 404s go in, never errors. Memory is bounded: at most `capacity` entries,
//! the oldest evicted first. Every entry has the same TTL, so insertion order is also expiry
//! order and one queue serves both eviction and expiry.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Missing keys (store path hashes, document paths) with the time each entry expires.
#[derive(Debug)]
pub(crate) struct NegativeCache<K> {
    ttl: Duration,
    capacity: usize,
    inner: Mutex<Entries<K>>,
}

#[derive(Debug)]
struct Entries<K> {
    expires: HashMap<K, Instant>,
    /// Insertion (= expiry) order; an entry re-inserted later leaves a stale element here,
    /// recognised by its expiry differing from the map's.
    order: VecDeque<(K, Instant)>,
}

impl<K> Default for Entries<K> {
    fn default() -> Self {
        Self {
            expires: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<K: Hash + Eq + Clone> NegativeCache<K> {
    /// A TTL or capacity of zero disables the cache.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            inner: Mutex::default(),
        }
    }

    fn enabled(&self) -> bool {
        !self.ttl.is_zero() && self.capacity > 0
    }

    /// True when `hash` was recorded missing less than the TTL ago.
    pub fn contains(&self, hash: &K, now: Instant) -> bool {
        if !self.enabled() {
            return false;
        }
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.expires.get(hash).is_some_and(|at| *at > now)
    }

    /// Records that no upstream has `hash`.
    pub fn insert(&self, hash: K, now: Instant) {
        if !self.enabled() {
            return;
        }
        let expires_at = now + self.ttl;
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.expires.insert(hash.clone(), expires_at);
        inner.order.push_back((hash, expires_at));
        // Drop what expired, then the oldest beyond the capacity.
        while let Some((_, at)) = inner.order.front() {
            if *at > now && inner.order.len() <= self.capacity {
                break;
            }
            let Some((old, at)) = inner.order.pop_front() else {
                break;
            };
            if inner.expires.get(&old) == Some(&at) {
                inner.expires.remove(&old);
            }
        }
    }

    /// Entries currently held (expired ones may linger until the next insert).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().expires.len()
    }
}

#[cfg(test)]
mod tests {
    use ncps_nix::StorePathHash;

    use super::*;

    fn hash(n: u32) -> StorePathHash {
        let mut b = [0u8; 20];
        b[..4].copy_from_slice(&n.to_le_bytes());
        StorePathHash::from_bytes(b)
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let cache = NegativeCache::new(Duration::from_secs(30), 10);
        let t0 = Instant::now();
        cache.insert(hash(1), t0);
        assert!(cache.contains(&hash(1), t0));
        assert!(cache.contains(&hash(1), t0 + Duration::from_secs(29)));
        assert!(!cache.contains(&hash(1), t0 + Duration::from_secs(30)));
        assert!(!cache.contains(&hash(2), t0));
        // Expired entries are dropped on the next insert.
        cache.insert(hash(2), t0 + Duration::from_secs(31));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn capacity_evicts_the_oldest() {
        let cache = NegativeCache::new(Duration::from_secs(30), 3);
        let t0 = Instant::now();
        for n in 0..5 {
            cache.insert(hash(n), t0 + Duration::from_millis(u64::from(n)));
        }
        assert_eq!(cache.len(), 3);
        let now = t0 + Duration::from_millis(10);
        assert!(!cache.contains(&hash(0), now));
        assert!(!cache.contains(&hash(1), now));
        assert!(cache.contains(&hash(2), now));
        assert!(cache.contains(&hash(4), now));
    }

    #[test]
    fn reinserting_refreshes_without_growing() {
        let cache = NegativeCache::new(Duration::from_secs(30), 2);
        let t0 = Instant::now();
        cache.insert(hash(1), t0);
        cache.insert(hash(2), t0 + Duration::from_secs(1));
        cache.insert(hash(1), t0 + Duration::from_secs(2));
        // The stale first element of hash 1 is what the capacity pushed out, not hash 1 itself.
        assert!(cache.contains(&hash(1), t0 + Duration::from_secs(31)));
        assert!(cache.len() <= 2);
        for n in 0..1000 {
            cache.insert(hash(7), t0 + Duration::from_millis(3000 + n));
        }
        assert!(cache.len() <= 2);
    }

    #[test]
    fn zero_ttl_or_capacity_disables() {
        let t0 = Instant::now();
        for cache in [
            NegativeCache::new(Duration::ZERO, 10),
            NegativeCache::new(Duration::from_secs(1), 0),
        ] {
            cache.insert(hash(1), t0);
            assert!(!cache.contains(&hash(1), t0));
            assert_eq!(cache.len(), 0);
        }
    }
}
