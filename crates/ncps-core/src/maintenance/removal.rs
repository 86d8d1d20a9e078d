//! `DELETE` of narinfos and NARs, and the end of uploads whose narinfo never came.

use std::time::Duration;

use ncps_nix::{NarKey, StorePathHash};

use super::Maintenance;
use crate::CacheError;

/// Uploads ended, or unused NARs removed, per round.
const PER_ROUND: u32 = 500;

impl Maintenance {
    /// Forgets a narinfo (DELETE); its NAR stays until deleted or evicted.
    pub async fn delete_narinfo(&self, hash: &StorePathHash) -> Result<(), CacheError> {
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

    /// Removes every NAR nothing uses (no narinfo describes it, no upload waits for it) and
    /// deletes its whole file; returns how many went. Eviction calls it first, so NARs left by
    /// a deleted narinfo never count against the size limit for long.
    pub async fn reclaim_unused_nars(&self) -> Result<u64, CacheError> {
        let mut reclaimed = 0;
        loop {
            let removed = self.0.db.reclaim_unused_nars(PER_ROUND).await?;
            for record in &removed {
                self.0.reader.forget_chunk_list(&record.nar_hash);
                if let Some(whole) = record.whole {
                    self.0.store.delete_nar(&whole.key).await?;
                }
            }
            reclaimed += removed.len() as u64;
            if removed.len() < PER_ROUND as usize {
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
