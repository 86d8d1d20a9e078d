//! Rendered narinfos kept in memory for a few seconds, so a burst of warm hits (every client of
//! a fleet asking for the same closure) costs neither a database query nor a signature each.
//!
//! Entries are refreshed after a short TTL rather than invalidated everywhere, which keeps
//! replicas simple: a narinfo changed elsewhere (new FileHash after chunking, eviction) is seen
//! here within the TTL plus one refresh; deletions made by this process drop their entry at once.
//! The refresh runs in the background while the old rendering is still served, so no client
//! waits for the database when an entry expires (a hot set expiring at once used to stall every
//! connection for the few milliseconds its re-rendering took).
//!
//! When full, the memo lets go of its least recently used entries, one per entry added: a
//! stream of paths asked for once (a new closure, a scan) does not push out the hot set, and no
//! single request pays for emptying the whole memo (dropping tens of thousands of entries at
//! once, under the lock every hit takes, was a millisecond stall every few seconds under
//! uniform load).

use std::hash::RandomState;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hashlink::LinkedHashMap;
use ncps_nix::StorePathHash;

/// How long a rendered narinfo is reused before it is refreshed.
const TTL: Duration = Duration::from_secs(10);
/// Past this age an entry is not served at all, even while its refresh runs (a stuck database
/// must not keep an old answer alive).
const MAX_AGE: Duration = Duration::from_secs(30);
/// Rendered bytes kept at most (about 25,000 narinfos, several closures of a fleet's burst).
/// A bound in bytes, not entries, so the memo's share of the server's memory is known: under
/// uniform random lookups over a million paths, 100,000 entries had cost about 100 MB.
const BUDGET_BYTES: usize = 16 << 20;

struct Entry {
    text: Bytes,
    at: Instant,
    refreshing: bool,
}

/// What the memo holds for a narinfo.
pub(crate) enum Memoized {
    /// Serve this.
    Fresh(Bytes),
    /// Serve this, and refresh the entry: this caller is the one asked to.
    Stale(Bytes),
}

/// Recently rendered narinfos.
#[derive(Default)]
pub(crate) struct NarInfoMemo(Mutex<Entries>);

#[derive(Default)]
struct Entries {
    /// From least to most recently used (hashed as `std`'s maps are: the keys come from
    /// clients).
    map: LinkedHashMap<StorePathHash, Entry, RandomState>,
    /// The rendered bytes the map holds.
    bytes: usize,
}

impl Entries {
    fn remove(&mut self, hash: &StorePathHash) {
        if let Some(old) = self.map.remove(hash) {
            self.bytes -= old.text.len();
        }
    }

    /// Lets go of the least recently used entries until `more` bytes fit in the budget.
    fn make_room(&mut self, more: usize) {
        while self.bytes + more > BUDGET_BYTES {
            let Some((_, oldest)) = self.map.pop_front() else {
                return;
            };
            self.bytes -= oldest.text.len();
        }
    }
}

impl NarInfoMemo {
    /// The remembered rendering, unless there is none or it is too old to serve.
    pub fn get(&self, hash: &StorePathHash) -> Option<Memoized> {
        let mut entries = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let entry = entries.map.to_back(hash)?;
        let age = entry.at.elapsed();
        if age < TTL || (entry.refreshing && age < MAX_AGE) {
            return Some(Memoized::Fresh(entry.text.clone()));
        }
        if age < MAX_AGE {
            entry.refreshing = true;
            return Some(Memoized::Stale(entry.text.clone()));
        }
        None
    }

    /// Remembers a rendering.
    pub fn put(&self, hash: StorePathHash, text: Bytes) {
        let mut entries = self.0.lock().unwrap_or_else(|p| p.into_inner());
        entries.remove(&hash);
        entries.make_room(text.len());
        entries.bytes += text.len();
        let entry = Entry {
            text,
            at: Instant::now(),
            refreshing: false,
        };
        entries.map.insert(hash, entry);
    }

    /// Forgets a narinfo this process deleted or evicted.
    pub fn forget(&self, hash: &StorePathHash) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(hash);
    }

    /// Forgets everything (after an eviction run). The entries are dropped after the lock is
    /// released, so hits go on meanwhile.
    pub fn clear(&self) {
        let held = std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()));
        drop(held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(memo: &NarInfoMemo, h: &StorePathHash) -> Option<Bytes> {
        match memo.get(h)? {
            Memoized::Fresh(text) => Some(text),
            Memoized::Stale(_) => panic!("expected a fresh entry"),
        }
    }

    #[test]
    fn remembers_then_forgets() {
        let memo = NarInfoMemo::default();
        let h = StorePathHash::from_bytes([1; 20]);
        assert!(memo.get(&h).is_none());
        memo.put(h, Bytes::from_static(b"text"));
        assert_eq!(fresh(&memo, &h).as_deref(), Some(&b"text"[..]));
        memo.forget(&h);
        assert!(memo.get(&h).is_none());
        memo.put(h, Bytes::from_static(b"text"));
        memo.clear();
        assert!(memo.get(&h).is_none());
    }

    fn hash(i: u32) -> StorePathHash {
        let mut bytes = [0u8; 20];
        bytes[..4].copy_from_slice(&i.to_le_bytes());
        StorePathHash::from_bytes(bytes)
    }

    #[test]
    fn a_full_memo_lets_go_of_its_least_recently_used_entries_one_at_a_time() {
        let memo = NarInfoMemo::default();
        let text = Bytes::from(vec![b'x'; 1000]);
        let fits = BUDGET_BYTES / 1000;
        let hot = hash(0);
        memo.put(hot, text.clone());
        // Twice as many paths asked for once as the memo holds, while one path stays in use.
        for i in 1..=2 * fits as u32 {
            memo.put(hash(i), text.clone());
            // Replacing an entry does not count it twice.
            memo.put(hash(i), text.clone());
            assert!(
                fresh(&memo, &hot).is_some(),
                "the path in use was let go at {i}"
            );
            let held = memo.0.lock().unwrap();
            assert!(held.bytes <= BUDGET_BYTES);
            assert_eq!(held.bytes, held.map.len() * 1000);
        }
        let held = memo.0.lock().unwrap().map.len();
        assert_eq!(held, fits, "a full memo keeps a budget's worth, not a few");
        let newest = 2 * fits as u32;
        assert!(fresh(&memo, &hash(newest)).is_some());
        assert!(
            fresh(&memo, &hash(newest - fits as u32 + 1)).is_none(),
            "the least recently used went first"
        );
        assert!(fresh(&memo, &hash(newest - fits as u32 + 2)).is_some());
    }

    #[test]
    fn an_expired_entry_is_refreshed_by_one_caller_while_served() {
        let memo = NarInfoMemo::default();
        let h = StorePathHash::from_bytes([2; 20]);
        memo.put(h, Bytes::from_static(b"old"));
        let age = |memo: &NarInfoMemo, by: Duration| {
            let mut entries = memo.0.lock().unwrap();
            let entry = entries.map.get_mut(&h).unwrap();
            entry.at = Instant::now() - by;
        };
        age(&memo, TTL + Duration::from_secs(1));
        assert!(matches!(memo.get(&h), Some(Memoized::Stale(t)) if t == "old"));
        // Others keep getting the old text without refreshing it again.
        assert_eq!(fresh(&memo, &h).as_deref(), Some(&b"old"[..]));
        memo.put(h, Bytes::from_static(b"new"));
        assert_eq!(fresh(&memo, &h).as_deref(), Some(&b"new"[..]));
        // Too old to serve, refresh or not.
        age(&memo, MAX_AGE);
        assert!(memo.get(&h).is_none());
    }
}
