//! Access times without a database write per request: each hit notes, in memory, the second it
//! happened, and the notes are written in batches every few seconds (a batch the database
//! refuses is kept for the next). A warm hit costs no write on the hot path, and eviction still
//! sees the exact order of use (to the second): a path used 4 s before a flush keeps that
//! time, not the flush's.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Mutex;

use futures::future::BoxFuture;
use ncps_db::{Database, DbError};
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
    /// that saw accesses, oldest first). Notes a write could not record are kept for the next
    /// flush (see [`write_back`]).
    pub async fn flush(&self, db: &Database) {
        write_back(&self.narinfos, "narinfo", |keys, at| {
            Box::pin(async move { db.touch_narinfos(&keys, at).await })
        })
        .await;
        write_back(&self.nars, "NAR", |keys, at| {
            Box::pin(async move { db.touch_nars(&keys, at).await })
        })
        .await;
    }
}

/// Writes the notes of `map` with `write`, oldest second first. When a write fails, its notes
/// and those of every later second go back into `map` (a newer note of the same key still
/// wins), so the next flush writes them: a database that cannot be written for a while (a
/// restart, a failover, a lock held long) loses no access time, and eviction does not take
/// paths used meanwhile for old ones.
async fn write_back<'a, K: Copy + Hash + Eq>(
    map: &Mutex<HashMap<K, i64>>,
    kind: &str,
    write: impl Fn(Vec<K>, i64) -> BoxFuture<'a, Result<(), DbError>>,
) {
    let mut pending = take_by_second(map).into_iter();
    while let Some((at, keys)) = pending.next() {
        if let Err(e) = write(keys.clone(), at).await {
            let mut kept = 0;
            for (at, keys) in std::iter::once((at, keys)).chain(pending) {
                kept += keys.len();
                for key in keys {
                    note(map, key, at);
                }
            }
            warn!(error = %e, kind, kept, "could not record access times; kept for the next flush");
            return;
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

    #[tokio::test]
    async fn notes_a_failed_write_missed_are_written_by_the_next_flush() {
        let log: Mutex<HashMap<u8, i64>> = Mutex::default();
        note(&log, 1, 100);
        note(&log, 2, 101);
        note(&log, 3, 102);
        let written: Mutex<Vec<(i64, Vec<u8>)>> = Mutex::default();
        let record = |keys: &[u8], at| {
            let mut keys = keys.to_vec();
            keys.sort();
            written.lock().unwrap().push((at, keys));
        };
        // The database refuses the write of second 101.
        write_back(&log, "test", |keys, at| {
            if at == 101 {
                return Box::pin(async { Err(DbError::ChunksNotHeld(0)) });
            }
            record(&keys, at);
            Box::pin(async { Ok(()) })
        })
        .await;
        assert_eq!(*written.lock().unwrap(), vec![(100, vec![1])]);
        note(&log, 3, 105); // used again meanwhile: the newer second wins
        write_back(&log, "test", |keys, at| {
            record(&keys, at);
            Box::pin(async { Ok(()) })
        })
        .await;
        assert_eq!(
            *written.lock().unwrap(),
            vec![(100, vec![1]), (101, vec![2]), (105, vec![3])],
            "the notes the failed flush missed, each with its own second"
        );
        assert!(take_by_second(&log).is_empty());
    }
}
