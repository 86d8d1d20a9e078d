//! `DELETE` of narinfos and NARs, and the end of uploads whose narinfo never came.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ncps_nix::{NarKey, StorePathHash};

use super::Maintenance;
use crate::CacheError;

/// Uploads ended, or unused NARs removed, per round.
const PER_ROUND: u32 = 500;

impl Maintenance {
    /// Forgets a narinfo (DELETE); its NAR stays until deleted, evicted or reclaimed.
    pub async fn delete_narinfo(&self, hash: &StorePathHash) -> Result<(), CacheError> {
        self.note_nars_may_be_unused();
        self.0.reader.forget_narinfo(hash);
        if self.0.db.delete_narinfo(hash).await? {
            Ok(())
        } else {
            Err(CacheError::NotFound)
        }
    }

    /// Deletes a NAR in every stored form (DELETE); its chunks are released for collection.
    pub async fn delete_nar(&self, key: &NarKey) -> Result<(), CacheError> {
        let nar_hash = self
            .0
            .db
            .nar_hash_for_url(key)
            .await?
            .ok_or(CacheError::NotFound)?;
        let record = self
            .0
            .db
            .delete_nar(&nar_hash)
            .await?
            .ok_or(CacheError::NotFound)?;
        self.0.reader.forget_chunk_list(&nar_hash);
        if let Some(whole) = record.whole {
            self.0.store.delete_nar(&whole.key).await?;
        }
        Ok(())
    }

    /// Notes that a NAR may have been left unused (a narinfo deleted, paths evicted while
    /// their downloads may still finish), so the next eviction searches for them first.
    pub(super) fn note_nars_may_be_unused(&self) {
        self.0.unused.changed.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether every NAR this process may have left unused has been searched for since.
    pub(super) fn no_unused_nars_known(&self) -> bool {
        let unused = &self.0.unused;
        unused.searched.load(Ordering::SeqCst) == unused.changed.load(Ordering::SeqCst) + 1
    }

    /// Removes every NAR nothing uses (no narinfo describes it, no upload waits for it) and
    /// deletes its whole file; returns how many went. The search reads every NAR, so it runs
    /// in the reclaim job, and before an eviction only when this process may have left some
    /// since the last search.
    pub async fn reclaim_unused_nars(&self) -> Result<u64, CacheError> {
        let generation = self.0.unused.changed.load(Ordering::SeqCst);
        let mut reclaimed = 0;
        loop {
            let removed = self.0.db.reclaim_unused_nars(PER_ROUND).await?;
            for record in &removed {
                self.0.reader.forget_chunk_list(&record.nar_hash);
            }
            let whole_files: Vec<_> = removed
                .iter()
                .filter_map(|record| record.whole.map(|whole| whole.key))
                .collect();
            self.0.store.delete_nars(&whole_files).await?;
            reclaimed += removed.len() as u64;
            if removed.len() < PER_ROUND as usize {
                self.0
                    .unused
                    .searched
                    .store(generation + 1, Ordering::SeqCst);
                return Ok(reclaimed);
            }
        }
    }

    /// Ends the wait of every upload whose narinfo has not come within `wait`, deleting each
    /// such NAR that nothing else uses; returns how many uploads ended.
    pub async fn expire_uploads(&self, wait: Duration) -> Result<u64, CacheError> {
        let before = ncps_db::now_secs() - i64::try_from(wait.as_secs()).unwrap_or(i64::MAX);
        let mut ended = 0;
        loop {
            let keys = self.0.db.uploads_older_than(before, PER_ROUND).await?;
            if keys.is_empty() {
                return Ok(ended);
            }
            self.0.ingest.end_uploads(&keys).await;
            ended += keys.len() as u64;
            if keys.len() < PER_ROUND as usize {
                return Ok(ended);
            }
        }
    }
}
