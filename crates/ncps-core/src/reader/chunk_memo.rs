//! Chunk lists of NARs served recently, with their chunks known to be in storage.
//!
//! Before the first byte of a chunked NAR goes out, ncps needs its chunk list (about 12 500 rows
//! for 1 GB) and proof that every chunk is stored, so that a 200 is only sent when the whole body
//! can follow. Both cost far more than sending the first byte, and a fleet updating at once would
//! pay them once per client. This memo pays them once per NAR per minute: the first request loads
//! and checks, requests arriving meanwhile wait for that result, later ones reuse it. A minute is
//! safe because chunks are deleted only a grace period (1 h by default) after their last
//! reference went, and a chunk list never changes once committed (it is dropped, never edited).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ncps_db::ChunkRef;
use ncps_nix::Sha256Hash;

/// How long a checked chunk list is trusted.
const TTL: Duration = Duration::from_secs(60);
/// Chunk references kept at most over all lists (48 bytes each: ~19 MiB, the lists of ~30 GB
/// of NARs); older lists are dropped to make room.
const MAX_REFS: usize = 400_000;

/// A checked chunk list, shared by every response that splices it.
pub(crate) type ChunkList = Arc<[ChunkRef]>;

#[derive(Default)]
struct Lists {
    by_nar: HashMap<Sha256Hash, (ChunkList, Instant)>,
    refs: usize,
}

impl Lists {
    fn fresh(&self, nar: &Sha256Hash) -> Option<ChunkList> {
        self.by_nar
            .get(nar)
            .filter(|(_, at)| at.elapsed() < TTL)
            .map(|(list, _)| list.clone())
    }

    fn insert(&mut self, nar: Sha256Hash, list: ChunkList) {
        if list.len() > MAX_REFS {
            return;
        }
        if self.refs + list.len() > MAX_REFS {
            self.by_nar.retain(|_, (_, at)| at.elapsed() < TTL);
            self.refs = self.by_nar.values().map(|(l, _)| l.len()).sum();
        }
        if self.refs + list.len() > MAX_REFS {
            self.by_nar.clear();
            self.refs = 0;
        }
        self.refs += list.len();
        if let Some((old, _)) = self.by_nar.insert(nar, (list, Instant::now())) {
            self.refs -= old.len();
        }
    }

    fn remove(&mut self, nar: &Sha256Hash) {
        if let Some((old, _)) = self.by_nar.remove(nar) {
            self.refs -= old.len();
        }
    }
}

/// Recently checked chunk lists, and the loads in progress.
#[derive(Default)]
pub(crate) struct ChunkListMemo {
    lists: Mutex<Lists>,
    loading: Mutex<HashMap<Sha256Hash, Arc<tokio::sync::Mutex<()>>>>,
}

impl ChunkListMemo {
    /// The checked chunk list of `nar`: remembered, or produced by `load` (which yields `None`
    /// when a chunk is missing). Concurrent callers for one NAR run one `load`; the others'
    /// futures are dropped unpolled.
    pub async fn get_or_load<E>(
        &self,
        nar: Sha256Hash,
        load: impl Future<Output = Result<Option<Vec<ChunkRef>>, E>>,
    ) -> Result<Option<ChunkList>, E> {
        if let Some(list) = self.lock_lists().fresh(&nar) {
            return Ok(Some(list));
        }
        let gate = self
            .loading
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(nar)
            .or_default()
            .clone();
        let _turn = gate.lock().await;
        if let Some(list) = self.lock_lists().fresh(&nar) {
            return Ok(Some(list));
        }
        let loaded = load.await;
        self.loading
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&nar);
        let Some(list) = loaded? else {
            return Ok(None);
        };
        let list: ChunkList = list.into();
        self.lock_lists().insert(nar, list.clone());
        Ok(Some(list))
    }

    /// Forgets a NAR whose chunk list this process dropped.
    pub fn forget(&self, nar: &Sha256Hash) {
        self.lock_lists().remove(nar);
    }

    fn lock_lists(&self) -> std::sync::MutexGuard<'_, Lists> {
        self.lists.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ncps_store::ChunkHash;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn list(n: usize) -> Vec<ChunkRef> {
        let chunk = ChunkRef {
            hash: ChunkHash::digest(b"chunk"),
            plain_size: 10,
            stored_size: 5,
        };
        vec![chunk; n]
    }

    #[tokio::test]
    async fn concurrent_callers_load_once_and_missing_chunks_are_not_remembered() {
        let memo = Arc::new(ChunkListMemo::default());
        let loads = Arc::new(AtomicUsize::new(0));
        let nar = Sha256Hash::digest(b"nar");
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (memo, loads) = (memo.clone(), loads.clone());
            tasks.push(tokio::spawn(async move {
                memo.get_or_load(nar, async {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok::<_, ()>(Some(list(3)))
                })
                .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().unwrap().len(), 3);
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);

        memo.forget(&nar);
        let missing = memo
            .get_or_load(nar, async { Ok::<_, ()>(None) })
            .await
            .unwrap();
        assert!(missing.is_none());
        let again = memo
            .get_or_load(nar, async { Ok::<_, ()>(Some(list(2))) })
            .await
            .unwrap();
        assert_eq!(again.unwrap().len(), 2);
        assert_eq!(memo.lists.lock().unwrap().refs, 2);
    }

    #[test]
    fn stays_within_its_reference_budget() {
        let mut lists = Lists::default();
        for i in 0..10u8 {
            lists.insert(Sha256Hash::digest(&[i]), list(MAX_REFS / 4).into());
            assert!(lists.refs <= MAX_REFS);
            assert_eq!(
                lists.refs,
                lists.by_nar.values().map(|(l, _)| l.len()).sum::<usize>()
            );
        }
        lists.insert(Sha256Hash::digest(b"huge"), list(MAX_REFS + 1).into());
        assert!(lists.fresh(&Sha256Hash::digest(b"huge")).is_none());
    }
}
