//! Chunk garbage collection: a chunk whose last reference went more than the grace period ago
//! is deleted, row first, then object, so a reader that resolved a chunk list before the drop
//! never loses a chunk under it.

use std::time::Duration;

use super::Maintenance;
use crate::CacheError;

/// How long the collection lock lives without renewal.
const GC_LOCK_TTL: Duration = Duration::from_secs(30 * 60);
/// Unreferenced chunks taken per round.
const GC_BATCH: u32 = 1000;

/// What a garbage collection removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Chunks deleted.
    pub chunks_deleted: u64,
}

impl Maintenance {
    /// Deletes chunks that have had no reference for longer than `grace`. One replica collects
    /// at a time; the others return an empty report.
    pub async fn collect_chunks(&self, grace: Duration) -> Result<GcReport, CacheError> {
        let mut report = GcReport::default();
        let Some(_global) = self.0.locks.try_lock("chunk-gc", GC_LOCK_TTL).await? else {
            return Ok(report);
        };
        let before = ncps_db::now_secs() - grace.as_secs() as i64;
        loop {
            let batch = self.0.db.unreferenced_chunks(before, GC_BATCH).await?;
            if batch.is_empty() {
                return Ok(report);
            }
            for hash in batch {
                if self.0.db.forget_unreferenced_chunk(&hash).await? {
                    self.0.store.delete_chunk(&hash).await?;
                    report.chunks_deleted += 1;
                }
            }
        }
    }
}
