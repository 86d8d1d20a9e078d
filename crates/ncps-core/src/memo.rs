//! Rendered narinfos kept in memory for a few seconds, so a burst of warm hits (every client of
//! a fleet asking for the same closure) costs neither a database query nor a signature each.
//!
//! Entries expire after a short TTL rather than being invalidated everywhere, which keeps
//! replicas simple: a narinfo changed elsewhere (new FileHash after chunking, eviction) is seen
//! here within the TTL; deletions made by this process drop their entry at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ncps_nix::StorePathHash;

/// How long a rendered narinfo is reused.
const TTL: Duration = Duration::from_secs(10);
/// Entries kept at most; the map is emptied when full (a burst refills what it needs).
const CAPACITY: usize = 100_000;

/// Recently rendered narinfos.
#[derive(Default)]
pub(crate) struct NarInfoMemo(Mutex<HashMap<StorePathHash, (Arc<str>, Instant)>>);

impl NarInfoMemo {
    /// A rendering younger than the TTL.
    pub fn get(&self, hash: &StorePathHash) -> Option<Arc<str>> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(hash)
            .filter(|(_, at)| at.elapsed() < TTL)
            .map(|(text, _)| text.clone())
    }

    /// Remembers a rendering.
    pub fn put(&self, hash: StorePathHash, text: Arc<str>) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= CAPACITY {
            map.clear();
        }
        map.insert(hash, (text, Instant::now()));
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

    #[test]
    fn remembers_then_forgets() {
        let memo = NarInfoMemo::default();
        let h = StorePathHash::from_bytes([1; 20]);
        assert!(memo.get(&h).is_none());
        memo.put(h, Arc::from("text"));
        assert_eq!(memo.get(&h).as_deref(), Some("text"));
        memo.forget(&h);
        assert!(memo.get(&h).is_none());
        memo.put(h, Arc::from("text"));
        memo.clear();
        assert!(memo.get(&h).is_none());
    }
}
