//! Access times without a database write per request: each hit notes, in memory, the second it
//! happened, and the notes are written in batches every few seconds. A warm hit costs no write
//! on the hot path, and eviction still sees the exact order of use (to the second): a path used
//! 4 s before a flush keeps that time, not the flush's.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Mutex;

use ncps_db::Database;
use ncps_nix::{Sha256Hash, StorePathHash};
use tracing::warn;

/// Accesses noted since the last flush: the last second each key was used.
#[derive(Default)]
pub(crate) struct AccessLog {
    narinfos: Mutex<HashMap<StorePathHash, i64>>,
    nars: Mutex<HashMap<Sha256Hash, i64>>,
}

/// Notes that `key` was used at `at` (the later of two notes wins).
fn note<K: Hash + Eq>(map: &Mutex<HashMap<K, i64>>, key: K, at: i64) {
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    let seen = map.entry(key).or_insert(at);
    *seen = (*seen).max(at);
}

/// Takes the notes, grouped by second, oldest first.
fn take_by_second<K: Copy>(map: &Mutex<HashMap<K, i64>>) -> BTreeMap<i64, Vec<K>> {
    let notes = std::mem::take(&mut *map.lock().unwrap_or_else(|p| p.into_inner()));
    let mut by_second: BTreeMap<i64, Vec<K>> = BTreeMap::new();
    for (key, at) in notes {
        by_second.entry(at).or_default().push(key);
    }
    by_second
}

impl AccessLog {
    /// Notes a narinfo hit now.
    pub fn narinfo(&self, hash: StorePathHash) {
        note(&self.narinfos, hash, ncps_db::now_secs());
    }

    /// Notes a NAR request now.
    pub fn nar(&self, hash: Sha256Hash) {
        note(&self.nars, hash, ncps_db::now_secs());
    }

    /// Writes the accesses noted so far, each with its own time (one statement per second
    /// that saw accesses, oldest first); a failed write is logged and those accesses are lost
    /// (the next ones are recorded as usual).
    pub async fn flush(&self, db: &Database) {
        for (at, narinfos) in take_by_second(&self.narinfos) {
            if let Err(e) = db.touch_narinfos(&narinfos, at).await {
                warn!(error = %e, count = narinfos.len(), "could not record narinfo access times");
            }
        }
        for (at, nars) in take_by_second(&self.nars) {
            if let Err(e) = db.touch_nars(&nars, at).await {
                warn!(error = %e, count = nars.len(), "could not record NAR access times");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_keeps_its_last_second_and_flushes_oldest_first() {
        let log: Mutex<HashMap<u8, i64>> = Mutex::default();
        note(&log, 1, 100);
        note(&log, 2, 104);
        note(&log, 1, 103);
        note(&log, 3, 104);
        note(&log, 2, 101); // an older note never moves a key back
        let by_second = take_by_second(&log);
        let mut flat: Vec<(i64, Vec<u8>)> = by_second
            .into_iter()
            .map(|(at, mut keys)| {
                keys.sort();
                (at, keys)
            })
            .collect();
        flat.sort();
        assert_eq!(flat, vec![(103, vec![1]), (104, vec![2, 3])]);
        assert!(take_by_second(&log).is_empty(), "taken notes are gone");
    }
}
