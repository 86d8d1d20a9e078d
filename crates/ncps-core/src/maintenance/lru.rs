//! Least-recently-used eviction down to a size limit, never touching pinned closures.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::Maintenance;
use crate::{CacheError, defaults};

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
    /// Build logs and realisations evicted.
    pub documents_evicted: u64,
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
        let Some(global) = self.0.locks.try_lock("lru", defaults::LOCK_LEASE).await? else {
            info!("another replica is evicting; skipping this run");
            return Ok(LruReport::default());
        };
        let started = Instant::now();
        self.0.reader.flush_access_times().await;
        let db = &self.0.db;
        db.fold_totals().await?;
        let bytes_before = db.stored_bytes().await?;
        // NARs nothing uses go before any path does (searched for only when this process may
        // have left some since the reclaim job's last search: the search reads every NAR).
        let unused = if self.no_unused_nars_known() {
            0
        } else {
            self.reclaim_unused_nars().await?
        };
        let mut report = LruReport {
            bytes_before,
            nars_removed: unused,
            ..LruReport::default()
        };
        // Read from the running totals (no table is summed), then each batch subtracts what it
        // freed, so a run costs what it evicts. Bytes clients store meanwhile are the next
        // run's.
        let mut stored = if unused > 0 {
            db.stored_bytes().await?
        } else {
            bytes_before
        };
        if stored > max_size {
            let pinned = db.pinned_closure().await?;
            let mut cursor = None;
            while stored > max_size {
                if global.is_lost() {
                    warn!("lost the eviction lock to another replica; stopping this run");
                    break;
                }
                let page = db.lru_page(cursor.as_ref(), EVICT_BATCH).await?;
                let Some(last) = page.last().cloned() else {
                    // No narinfo left to evict: documents alone, oldest first.
                    match self
                        .evict_documents(i64::MAX, stored - max_size, &mut report)
                        .await?
                    {
                        Some(freed) => stored = stored.saturating_sub(freed),
                        None => break,
                    }
                    continue;
                };
                cursor = Some(last);
                let (keep, evict): (Vec<_>, Vec<_>) =
                    page.into_iter().partition(|e| pinned.contains(&e.hash));
                report.pinned_skipped += keep.len() as u64;
                // Evict in order, no more than the excess needs: take the oldest entries until
                // their NARs add up to the excess, evict them, count what that freed.
                let mut rest = evict.as_slice();
                while !rest.is_empty() && stored > max_size {
                    // Documents used no later than the oldest candidate go first; narinfos
                    // go only while they are older than every document.
                    let oldest = rest[0].last_accessed_at;
                    let documents_from = db
                        .documents_used_before(i64::MAX, 1)
                        .await?
                        .first()
                        .map_or(i64::MAX, |d| d.last_accessed_at);
                    if documents_from <= oldest
                        && let Some(freed) = self
                            .evict_documents(oldest, stored - max_size, &mut report)
                            .await?
                    {
                        stored = stored.saturating_sub(freed);
                        continue;
                    }
                    let excess = stored - max_size;
                    let mut take = 0;
                    let mut sum = 0u64;
                    while take < rest.len()
                        && (take == 0
                            || (sum < excess && rest[take].last_accessed_at < documents_from))
                    {
                        sum += rest[take].stored_size;
                        take += 1;
                    }
                    let hashes: Vec<_> = rest[..take].iter().map(|e| e.hash).collect();
                    rest = &rest[take..];
                    let removed = db.evict(&hashes).await?;
                    let whole_files: Vec<_> = removed
                        .nars
                        .iter()
                        .filter_map(|record| record.whole.map(|whole| whole.key))
                        .collect();
                    self.0.store.delete_nars(&whole_files).await?;
                    report.narinfos_evicted += hashes.len() as u64;
                    report.nars_removed += removed.nars.len() as u64;
                    stored = stored.saturating_sub(removed.freed_bytes);
                }
            }
        }
        if report.narinfos_evicted > 0 {
            // A download of an evicted path that finishes later stores a NAR nothing uses.
            self.note_nars_may_be_unused();
            self.0.reader.forget_all_narinfos();
        }
        report.bytes_after = stored;
        report.duration = started.elapsed();
        if report.narinfos_evicted > 0 || report.documents_evicted > 0 {
            info!(
                evicted = report.narinfos_evicted,
                nars = report.nars_removed,
                documents = report.documents_evicted,
                freed = report.bytes_before - report.bytes_after,
                pinned_skipped = report.pinned_skipped,
                "evicted least recently used paths"
            );
        }
        Ok(report)
    }

    /// Evicts documents (build logs, realisations) last used at or before `at`, oldest first,
    /// until they add up to `excess` bytes; returns the bytes freed, `None` when there were
    /// none.
    async fn evict_documents(
        &self,
        at: i64,
        excess: u64,
        report: &mut LruReport,
    ) -> Result<Option<u64>, CacheError> {
        let page = self.0.db.documents_used_before(at, EVICT_BATCH).await?;
        if page.is_empty() {
            return Ok(None);
        }
        let mut sum = 0u64;
        let taken: Vec<_> = page
            .into_iter()
            .take_while(|d| {
                let more = sum < excess;
                sum += d.stored_size;
                more
            })
            .collect();
        let freed = taken.iter().map(|d| d.stored_size).sum();
        let keys: Vec<_> = taken.into_iter().map(|d| d.key).collect();
        self.0.db.evict_documents(&keys).await?;
        report.documents_evicted += keys.len() as u64;
        Ok(Some(freed))
    }
}

#[cfg(test)]
mod tests {
    use ncps_db::{CachedNarInfo, Database, WholeFile};
    use ncps_nix::{Compression, NarInfo, NarKey, Sha256Hash, StorePath};

    use crate::Cache;
    use crate::test_support::local_cache_with;

    const FILE_SIZE: u64 = 1000;

    /// When path 0 was last used (2096): later than any write's own "now", so every touch below
    /// takes effect, and fixed, so the set-up and a test agree on it (two reads of the clock a
    /// second apart once made a test's "used with path 2" land on path 3).
    const BASE: i64 = 4_000_000_000;

    /// Store path `i` (0..10), its NAR stored as a whole file of `FILE_SIZE` bytes.
    fn path(i: u8) -> CachedNarInfo {
        let nar_hash = Sha256Hash::digest(&[i]);
        let url_key = NarKey::new(nar_hash, Compression::Zstd);
        let hash = format!("{}{i}", "0".repeat(31));
        CachedNarInfo {
            narinfo: NarInfo {
                store_path: StorePath::parse_base_name(&format!("{hash}-p{i}")).unwrap(),
                url: url_key.url(),
                compression: Compression::Zstd,
                file_hash: None,
                file_size: None,
                nar_hash,
                nar_size: FILE_SIZE,
                references: vec![],
                deriver: None,
                sigs: vec![],
                ca: None,
            },
            url_key,
            origin: None,
        }
    }

    /// Five paths, path 0 used least recently, path 4 most; path 1 pinned.
    async fn cache(dir: &std::path::Path) -> (Cache, Database) {
        cache_with(dir, |_| {}).await
    }

    async fn cache_with(
        dir: &std::path::Path,
        configure: impl FnOnce(&mut crate::CacheConfig),
    ) -> (Cache, Database) {
        let (cache, db) = local_cache_with(dir, configure).await;
        let base = BASE;
        for i in 0..5 {
            let p = path(i);
            db.insert_narinfo(&p, None).await.unwrap();
            let whole = WholeFile {
                key: p.url_key,
                size: FILE_SIZE,
            };
            db.record_whole_file(&p.narinfo.nar_hash, FILE_SIZE, whole, None)
                .await
                .unwrap();
            db.touch_narinfos(&[*p.narinfo.store_path.hash()], base + i64::from(i))
                .await
                .unwrap();
        }
        db.pin(path(1).narinfo.store_path.hash()).await.unwrap();
        (cache, db)
    }

    async fn cached(db: &Database) -> Vec<u8> {
        let mut left = Vec::new();
        for i in 0..5 {
            if db
                .narinfo(path(i).narinfo.store_path.hash())
                .await
                .unwrap()
                .is_some()
            {
                left.push(i);
            }
        }
        left
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn evicts_least_recently_used_first_no_more_than_needed_never_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, db) = cache(dir.path()).await;
        let m = cache.maintenance();
        // Under the limit: nothing happens.
        let report = m.evict_lru(5 * FILE_SIZE).await.unwrap();
        assert_eq!(report.narinfos_evicted, 0);
        assert_eq!(report.bytes_before, 5 * FILE_SIZE);
        // Two paths over: the two least recently used that are not pinned (0 and 2).
        let report = m.evict_lru(3 * FILE_SIZE).await.unwrap();
        assert_eq!(cached(&db).await, vec![1, 3, 4]);
        assert_eq!(report.narinfos_evicted, 2);
        assert_eq!(report.nars_removed, 2);
        assert_eq!(report.bytes_before, 5 * FILE_SIZE);
        assert_eq!(report.bytes_after, 3 * FILE_SIZE);
        assert!(report.pinned_skipped >= 1);
        // Down to nothing: everything but the pin goes.
        let report = m.evict_lru(0).await.unwrap();
        assert_eq!(cached(&db).await, vec![1]);
        assert_eq!(report.bytes_after, FILE_SIZE);
    }

    /// Eviction's cost follows what it evicts, not the cache's size (issue 18): a run reads the
    /// stored bytes from the running totals and then counts what each batch freed. Before, it
    /// summed every NAR and chunk after every batch of 500, which made evicting 100,000 paths
    /// quadratic. Nor does it search every NAR for unused ones when the reclaim job has
    /// searched since this process last left any.
    #[tokio::test(flavor = "multi_thread")]
    async fn an_eviction_run_reads_no_whole_table_whatever_it_evicts() {
        use ncps_db::fixtures::{FixtureSpec, store_path_hash, whole_file_size};
        const PATHS: u64 = 10_000;
        let dir = tempfile::tempdir().unwrap();
        let (cache, db) = local_cache_with(dir.path(), |_| {}).await;
        let spec = FixtureSpec::new(PATHS);
        let total = db.fill_fixture(&spec).await.unwrap().stored_bytes;
        let m = cache.maintenance();
        let size = |paths: std::ops::Range<u64>| -> u64 {
            paths.map(|i| whole_file_size(spec.seed, i)).sum()
        };
        // 10% (two pages of candidates), then 1% (part of one).
        for (evicted, paths) in [(1_000, 0..1_000), (100, 1_000..1_100)] {
            let expected_after = total - size(0..paths.end);
            m.reclaim_unused_nars().await.unwrap(); // the reclaim job, between two runs
            let scans_before = db.full_scans();
            let report = m.evict_lru(expected_after).await.unwrap();
            assert_eq!(report.narinfos_evicted, evicted);
            assert_eq!(
                db.full_scans(),
                scans_before,
                "no whole table read: stored bytes from the running totals, no search for \
                 unused NARs the reclaim job has just made"
            );
            assert_eq!(
                report.bytes_after, expected_after,
                "the run's count is exact"
            );
            assert_eq!(
                db.stored_bytes().await.unwrap(),
                expected_after,
                "so are the totals"
            );
            let measured = db.measure_totals().await.unwrap().stored_bytes();
            assert_eq!(measured, expected_after, "and the tables agree");
        }
        // Right after a run that evicted (downloads of its paths may still store NARs), the
        // next one searches again.
        let scans_before = db.full_scans();
        m.evict_lru(total).await.unwrap();
        assert_eq!(db.full_scans(), scans_before + 1);
        // The oldest went first.
        let (gone, kept) = (
            store_path_hash(spec.seed, 1_099),
            store_path_hash(spec.seed, 1_100),
        );
        assert!(db.narinfo(&gone).await.unwrap().is_none());
        assert!(db.narinfo(&kept).await.unwrap().is_some());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_access_moves_a_path_to_the_back_of_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, db) = cache(dir.path()).await;
        // Path 0 was the oldest; used now, the next oldest unpinned (2) goes instead.
        db.touch_narinfos(&[*path(0).narinfo.store_path.hash()], BASE + 100)
            .await
            .unwrap();
        cache.maintenance().evict_lru(4 * FILE_SIZE).await.unwrap();
        assert_eq!(cached(&db).await, vec![0, 1, 3, 4]);
    }

    /// A NAR whose narinfo was deleted counts against the limit; eviction reclaims it before
    /// it evicts any path, even right after the reclaim job's last search.
    #[tokio::test(flavor = "multi_thread")]
    async fn nars_no_narinfo_uses_are_reclaimed_first() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, db) = cache(dir.path()).await;
        let m = cache.maintenance();
        // The reclaim job found nothing; then a narinfo is deleted.
        assert_eq!(m.reclaim_unused_nars().await.unwrap(), 0);
        m.delete_narinfo(path(3).narinfo.store_path.hash())
            .await
            .unwrap();
        assert_eq!(db.stored_bytes().await.unwrap(), 5 * FILE_SIZE);
        let report = m.evict_lru(4 * FILE_SIZE).await.unwrap();
        assert_eq!(report.narinfos_evicted, 0);
        assert_eq!(report.nars_removed, 1);
        assert_eq!(report.bytes_after, 4 * FILE_SIZE);
        assert_eq!(cached(&db).await, vec![0, 1, 2, 4]);
        assert!(db.nar(&path(3).narinfo.nar_hash).await.unwrap().is_none());
    }

    /// Build logs and realisations count against the limit and take their turn in
    /// least-recently-used order with the narinfos (issue 15, defect 4).
    #[tokio::test(flavor = "multi_thread")]
    async fn documents_count_and_are_evicted_in_their_turn() {
        use ncps_db::DocumentKey;
        let dir = tempfile::tempdir().unwrap();
        let (cache, db) = cache(dir.path()).await;
        let base = BASE;
        let drv = "00000000000000000000000000000000-x.drv";
        let id = "realisations/sha256:ab!out.doi";
        db.put_build_log(drv, &[b'l'; FILE_SIZE as usize])
            .await
            .unwrap();
        db.put_realisation(id, &"r".repeat(FILE_SIZE as usize))
            .await
            .unwrap();
        let (log, realisation) = (
            DocumentKey::BuildLog(drv.into()),
            DocumentKey::Realisation(id.into()),
        );
        // The log was last used with path 2, the realisation after every path.
        db.touch_document(&log, base + 2).await.unwrap();
        db.touch_document(&realisation, base + 100).await.unwrap();
        assert_eq!(db.stored_bytes().await.unwrap(), 7 * FILE_SIZE);

        let m = cache.maintenance();
        let report = m.evict_lru(5 * FILE_SIZE).await.unwrap();
        assert_eq!(cached(&db).await, vec![1, 2, 3, 4], "path 0 first");
        assert_eq!(db.build_log(drv).await.unwrap(), None, "then the log");
        assert!(db.realisation(id).await.unwrap().is_some());
        assert_eq!((report.narinfos_evicted, report.documents_evicted), (1, 1));
        assert_eq!(report.bytes_after, 5 * FILE_SIZE);

        let report = m.evict_lru(0).await.unwrap();
        assert_eq!(cached(&db).await, vec![1]);
        assert_eq!(db.realisation(id).await.unwrap(), None);
        assert_eq!(report.bytes_after, FILE_SIZE);
    }

    /// A lock service whose locks are lost as soon as they are taken (a Redis renewal failed).
    struct LosingLocks;

    impl crate::LockService for LosingLocks {
        fn try_lock<'a>(
            &'a self,
            _key: &'a str,
            _ttl: std::time::Duration,
        ) -> futures::future::BoxFuture<'a, Result<Option<crate::LockGuard>, crate::LockError>>
        {
            let lost = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
            Box::pin(async move { Ok(Some(crate::LockGuard::on_drop(|| {}).losable(lost))) })
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_eviction_whose_lock_is_lost_stops() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, db) = cache_with(dir.path(), |c| {
            c.locks = std::sync::Arc::new(LosingLocks);
        })
        .await;
        let report = cache.maintenance().evict_lru(0).await.unwrap();
        assert_eq!(report.narinfos_evicted, 0);
        assert_eq!(cached(&db).await, vec![0, 1, 2, 3, 4]);
    }
}
