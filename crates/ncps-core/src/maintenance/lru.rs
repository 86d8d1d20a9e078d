//! Least-recently-used eviction down to a size limit, never touching pinned closures.

use std::time::{Duration, Instant};

use tracing::info;

use super::Maintenance;
use crate::CacheError;

/// How long the eviction lock lives without renewal.
const LRU_LOCK_TTL: Duration = Duration::from_secs(30 * 60);

/// Narinfos considered per round; the stored size is re-measured after each.
const EVICT_BATCH: u32 = 500;

/// What an eviction run did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LruReport {
    /// Bytes in storage before the run.
    pub bytes_before: u64,
    /// Bytes in storage after the run (chunks freed are counted as gone; their objects are
    /// deleted by the chunk collector after its grace period).
    pub bytes_after: u64,
    /// Narinfos evicted.
    pub narinfos_evicted: u64,
    /// NARs removed with them.
    pub nars_removed: u64,
    /// Narinfos kept because a pin protects them.
    pub pinned_skipped: u64,
    /// How long the run took.
    pub duration: Duration,
}

impl Maintenance {
    /// Evicts least recently used narinfos (and the NARs only they use) until the stored bytes
    /// are at most `max_size`. Paths in the closure of a pin are never evicted.
    pub async fn evict_lru(&self, max_size: u64) -> Result<LruReport, CacheError> {
        let _running = self.0.lru_running.lock().await;
        // One replica evicts at a time; the others skip this round.
        let Some(_global) = self.0.locks.try_lock("lru", LRU_LOCK_TTL).await? else {
            info!("another replica is evicting; skipping this run");
            return Ok(LruReport::default());
        };
        let started = Instant::now();
        self.0.reader.flush_access_times().await;
        let db = &self.0.db;
        let mut report = LruReport {
            bytes_before: db.stored_bytes().await?,
            ..LruReport::default()
        };
        let mut stored = report.bytes_before;
        if stored > max_size {
            let pinned = db.pinned_closure().await?;
            let mut cursor = None;
            while stored > max_size {
                let page = db.lru_page(cursor.as_ref(), EVICT_BATCH).await?;
                let Some(last) = page.last().cloned() else {
                    break;
                };
                cursor = Some(last);
                let (keep, evict): (Vec<_>, Vec<_>) =
                    page.into_iter().partition(|e| pinned.contains(&e.hash));
                report.pinned_skipped += keep.len() as u64;
                // Evict in order, no more than the excess needs: take the oldest entries until
                // their NARs add up to the excess, evict them, measure again.
                let mut rest = evict.as_slice();
                while !rest.is_empty() && stored > max_size {
                    let excess = stored - max_size;
                    let mut take = 0;
                    let mut sum = 0u64;
                    while take < rest.len() && (take == 0 || sum < excess) {
                        sum += rest[take].stored_size;
                        take += 1;
                    }
                    let hashes: Vec<_> = rest[..take].iter().map(|e| e.hash).collect();
                    rest = &rest[take..];
                    let removed = db.evict(&hashes).await?;
                    for record in &removed {
                        if let Some(whole) = record.whole {
                            self.0.store.delete_nar(&whole.key).await?;
                        }
                    }
                    report.narinfos_evicted += hashes.len() as u64;
                    report.nars_removed += removed.len() as u64;
                    stored = db.stored_bytes().await?;
                }
            }
        }
        if report.narinfos_evicted > 0 {
            self.0.reader.forget_all_narinfos();
        }
        report.bytes_after = stored;
        report.duration = started.elapsed();
        if report.narinfos_evicted > 0 {
            info!(
                evicted = report.narinfos_evicted,
                nars = report.nars_removed,
                freed = report.bytes_before - report.bytes_after,
                pinned_skipped = report.pinned_skipped,
                "evicted least recently used paths"
            );
        }
        Ok(report)
    }
}
