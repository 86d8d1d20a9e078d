//! Rendered narinfos kept in memory for a few seconds, so a burst of warm hits (every client of
//! a fleet asking for the same closure) costs neither a database query nor a signature each.
//!
//! Entries are refreshed after a short TTL rather than invalidated everywhere, which keeps
//! replicas simple: a narinfo changed elsewhere (new FileHash after chunking, eviction) is seen
//! here within the TTL plus one refresh; deletions made by this process drop their entry at once.
//! The refresh runs in the background while the old rendering is still served, so no client
//! waits for the database when an entry expires (a hot set expiring at once used to stall every
//! connection for the few milliseconds its re-rendering took).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ncps_nix::StorePathHash;

/// How long a rendered narinfo is reused before it is refreshed.
const TTL: Duration = Duration::from_secs(10);
/// Past this age an entry is not served at all, even while its refresh runs (a stuck database
/// must not keep an old answer alive).
const MAX_AGE: Duration = Duration::from_secs(30);
/// Rendered bytes kept at most (about 25,000 narinfos, several closures of a fleet's burst);
/// the map is emptied when full (a burst refills what it needs). A bound in bytes, not entries,
/// so the memo's share of the server's memory is known: under uniform random lookups over a
/// million paths, 100,000 entries had cost about 100 MB.
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
    map: HashMap<StorePathHash, Entry>,
    /// The rendered bytes the map holds.
    bytes: usize,
}

impl Entries {
    fn remove(&mut self, hash: &StorePathHash) {
        if let Some(old) = self.map.remove(hash) {
            self.bytes -= old.text.len();
        }
    }

    fn clear(&mut self) {
        self.map.clear();
        self.bytes = 0;
    }
}

impl NarInfoMemo {
    /// The remembered rendering, unless there is none or it is too old to serve.
    pub fn get(&self, hash: &StorePathHash) -> Option<Memoized> {
        let mut entries = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let entry = entries.map.get_mut(hash)?;
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
        if entries.bytes + text.len() > BUDGET_BYTES {
            entries.clear();
        }
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

    /// Forgets everything (after an eviction run).
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
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

    #[test]
    fn the_memo_holds_at_most_its_budget_of_bytes() {
        let memo = NarInfoMemo::default();
        let text = Bytes::from(vec![b'x'; 1000]);
        let entries = BUDGET_BYTES / 1000;
        for i in 0..=entries as u32 {
            let mut bytes = [0u8; 20];
            bytes[..4].copy_from_slice(&i.to_le_bytes());
            memo.put(StorePathHash::from_bytes(bytes), text.clone());
            // Replacing an entry does not count it twice.
            memo.put(StorePathHash::from_bytes(bytes), text.clone());
            let held = memo.0.lock().unwrap();
            assert!(held.bytes <= BUDGET_BYTES);
            assert_eq!(held.bytes, held.map.len() * 1000);
        }
        assert_eq!(
            memo.0.lock().unwrap().map.len(),
            1,
            "emptied when full, then refilled"
        );
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
