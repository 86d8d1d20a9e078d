//! Starting the background jobs: access-time flushes, lazy chunking workers and their recovery
//! (which also deletes whole files whose delay passed), LRU eviction and chunk collection.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ncps_nix::Sha256Hash;
use tracing::{error, info, warn};

use super::human::{format_age, format_size, plural};
use super::{LruReport, Maintenance};
use crate::ingest::{ChunkSettings, UPLOAD_WAITS_FOR_NARINFO};
use crate::schedule::{Schedule, spawn_scheduled};

/// How often accesses noted by the reader are written.
const ACCESS_FLUSH_EVERY: Duration = Duration::from_secs(5);
/// How often uploads whose narinfo never came, NARs nothing uses and staging files of killed
/// writes are looked for.
const RECLAIM_EVERY: Duration = Duration::from_secs(300);
/// How old a storage staging file must be to be taken for a killed write's.
const STAGING_FILES_AGE: Duration = Duration::from_secs(3600);
/// How long NAR downloads must have stopped before background chunking starts on a NAR: a cold
/// closure's downloads follow each other closely, and chunking between them slows them.
const CHUNKING_WAITS_FOR_QUIET: Duration = Duration::from_millis(500);
/// The longest a queued NAR waits for that quiet, so under steady traffic chunking still keeps
/// up with what is stored, only later.
const CHUNKING_WAITS_AT_MOST: Duration = Duration::from_secs(30);
/// How often a waiting worker looks again.
const CHUNKING_QUIET_POLL: Duration = Duration::from_millis(100);

/// How the background jobs run.
#[derive(Clone, Debug)]
pub struct JobsConfig {
    /// Concurrent lazy-chunking workers.
    pub chunk_workers: usize,
    /// When interrupted lazy chunking is looked for (and expired whole files deleted); it also
    /// runs once at start.
    pub recovery_schedule: Schedule,
    /// NARs taken per recovery round.
    pub recovery_batch: u32,
    /// How often unreferenced chunks are collected.
    pub gc_interval: Duration,
    /// How long a chunk stays after its last reference went, so readers that already started
    /// never lose a chunk under them.
    pub gc_grace: Duration,
    /// Least-recently-used eviction: when it runs, and the size it brings the cache under.
    pub lru: Option<LruConfig>,
}

/// When and down to what size least-recently-used eviction runs.
#[derive(Clone, Debug)]
pub struct LruConfig {
    /// When the job runs.
    pub schedule: Schedule,
    /// The most bytes the cache may keep in storage.
    pub max_size: u64,
}

impl Maintenance {
    /// Starts the background jobs on the current runtime; they stop with it.
    pub fn spawn_jobs(&self, jobs: JobsConfig) {
        let log = &self.0.metrics.jobs;
        log.register("reclaim", format!("every {}", format_age(RECLAIM_EVERY)));
        log.register(
            "chunk_gc",
            format!("every {}", format_age(jobs.gc_interval)),
        );
        if let Some(lru) = &jobs.lru {
            log.register(
                "lru",
                format!("{} (limit {})", lru.schedule, format_size(lru.max_size)),
            );
        }
        if self.0.cdc.is_some() {
            log.register(
                "recovery",
                format!("at start, then {}", jobs.recovery_schedule),
            );
        }
        self.spawn_access_flush();
        if let Some(lru) = jobs.lru.clone() {
            self.spawn_lru(lru);
        }
        self.spawn_gc(&jobs);
        self.spawn_reclaim();
        let Some(cdc) = self.0.cdc else {
            return;
        };
        if cdc.lazy {
            let busy = Arc::new(Mutex::new(HashSet::new()));
            for _ in 0..jobs.chunk_workers.max(1) {
                tokio::spawn(self.clone().chunk_worker(busy.clone(), cdc.background()));
            }
        }
        let this = self.clone();
        let batch = jobs.recovery_batch;
        let recover = move || {
            let this = this.clone();
            async move {
                let started = std::time::Instant::now();
                match this.recover_and_clean(cdc.lazy, batch).await {
                    Ok((queued, deleted)) => this.0.metrics.job_finished(
                        "recovery",
                        started.elapsed(),
                        None,
                        queued + deleted,
                        format!(
                            "{} queued for chunking, {} deleted (stored as chunks)",
                            plural(queued, "NAR"),
                            plural(deleted, "whole file"),
                        ),
                    ),
                    Err(e) => {
                        this.0.metrics.job_failed("recovery", started.elapsed(), &e);
                        error!(error = %e, "lazy chunking recovery failed");
                    }
                }
            }
        };
        tokio::spawn(recover());
        spawn_scheduled(jobs.recovery_schedule.clone(), recover);
    }

    fn spawn_access_flush(&self) {
        let reader = self.0.reader.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ACCESS_FLUSH_EVERY);
            loop {
                tick.tick().await;
                reader.flush_access_times().await;
            }
        });
    }

    fn spawn_lru(&self, lru: LruConfig) {
        self.0
            .metrics
            .go
            .cache_max_size
            .set(i64::try_from(lru.max_size).unwrap_or(i64::MAX));
        let this = self.clone();
        spawn_scheduled(lru.schedule, move || {
            let this = this.clone();
            async move {
                let started = std::time::Instant::now();
                match this.evict_lru(lru.max_size).await {
                    Ok(report) => {
                        let freed = report.bytes_before.saturating_sub(report.bytes_after);
                        this.0.metrics.job_finished(
                            "lru",
                            report.duration,
                            Some(freed),
                            report.narinfos_evicted,
                            lru_summary(&report, lru.max_size),
                        );
                        let go = &this.0.metrics.go;
                        go.lru_cleanup_runs.inc();
                        go.lru_narinfos_evicted.inc_by(report.narinfos_evicted);
                        go.lru_nar_files_evicted.inc_by(report.nars_removed);
                        go.lru_bytes_freed.inc_by(freed);
                        go.lru_cleanup_duration
                            .observe(report.duration.as_secs_f64());
                        info!(
                            bytes_before = report.bytes_before,
                            bytes_after = report.bytes_after,
                            narinfos_evicted = report.narinfos_evicted,
                            nars_removed = report.nars_removed,
                            documents_evicted = report.documents_evicted,
                            pinned_skipped = report.pinned_skipped,
                            duration_ms = report.duration.as_millis() as u64,
                            "LRU eviction finished"
                        );
                    }
                    Err(e) => {
                        this.0.metrics.job_failed("lru", started.elapsed(), &e);
                        error!(error = %e, "LRU eviction failed")
                    }
                }
            }
        });
    }

    /// Drops uploads whose narinfo never came, then removes the NARs nothing uses (a deleted
    /// narinfo's, an expired upload's), with or without a size limit, and the files killed
    /// writes left: staging files in local storage, temporary files (a server that runs for
    /// months must not wait for its next start to sweep them).
    fn spawn_reclaim(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RECLAIM_EVERY);
            loop {
                tick.tick().await;
                let started = std::time::Instant::now();
                let result = async {
                    let ended = this.expire_uploads(UPLOAD_WAITS_FOR_NARINFO).await?;
                    let unused = this.reclaim_unused_nars().await?;
                    let staging = this.0.store.sweep_staging_files(STAGING_FILES_AGE).await?;
                    let temp = this.0.ingest.temp().clone();
                    let temps = tokio::task::spawn_blocking(move || temp.sweep(STAGING_FILES_AGE))
                        .await
                        .map_err(std::io::Error::other)?;
                    Ok::<_, crate::CacheError>((ended, unused, staging + temps as u64))
                }
                .await;
                match result {
                    Ok((ended, unused, staging)) => {
                        let done = ended + unused + staging;
                        let summary = if done == 0 {
                            "nothing to reclaim".to_string()
                        } else {
                            format!(
                                "{} dropped, {} removed, {} of killed writes swept",
                                plural(ended, "expired upload"),
                                plural(unused, "unused NAR"),
                                plural(staging, "file"),
                            )
                        };
                        this.0.metrics.job_finished(
                            "reclaim",
                            started.elapsed(),
                            None,
                            done,
                            summary,
                        );
                        if done > 0 {
                            info!(
                                uploads = ended,
                                nars = unused,
                                leftover_files = staging,
                                "dropped expired uploads, NARs nothing uses and files of killed writes"
                            );
                        }
                    }
                    Err(e) => {
                        this.0.metrics.job_failed("reclaim", started.elapsed(), &e);
                        error!(error = %e, "reclaiming unused NARs failed")
                    }
                }
            }
        });
    }

    fn spawn_gc(&self, jobs: &JobsConfig) {
        let jobs = jobs.clone();
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(jobs.gc_interval);
            loop {
                tick.tick().await;
                let started = std::time::Instant::now();
                match this.collect_chunks(jobs.gc_grace).await {
                    Ok(r) => {
                        this.0.metrics.job_finished(
                            "chunk_gc",
                            started.elapsed(),
                            None,
                            r.chunks_deleted,
                            format!("{} deleted", plural(r.chunks_deleted, "unreferenced chunk")),
                        );
                        if r.chunks_deleted > 0 {
                            info!(chunks = r.chunks_deleted, "collected unreferenced chunks");
                        }
                    }
                    Err(e) => {
                        this.0.metrics.job_failed("chunk_gc", started.elapsed(), &e);
                        error!(error = %e, "chunk garbage collection failed");
                    }
                }
            }
        });
    }

    /// Takes NARs from the queue and chunks them, one at a time per worker; `busy` keeps two
    /// workers off the same NAR.
    async fn chunk_worker(self, busy: Arc<Mutex<HashSet<Sha256Hash>>>, settings: ChunkSettings) {
        loop {
            let (nar_hash, queued) = self.0.chunk_queue.next().await;
            while !may_chunk_now(queued.elapsed(), self.0.ingest.downloads_idle_for()) {
                tokio::time::sleep(CHUNKING_QUIET_POLL).await;
            }
            if !busy
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(nar_hash)
            {
                continue; // another worker has it
            }
            match self.chunk_stored_nar(&nar_hash, settings).await {
                Ok(true) => info!(nar = %nar_hash, "chunked NAR in the background"),
                Ok(false) => {}
                Err(e) => {
                    warn!(nar = %nar_hash, error = %e, "background chunking failed; the recovery job retries it")
                }
            }
            busy.lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&nar_hash);
        }
    }
}

/// Whether background chunking may start on a NAR queued `queued_for` ago, given how long this
/// process's downloads have been idle (`None`: one is in flight). The one place that decides
/// when lazy chunking gives way to cold downloads.
fn may_chunk_now(queued_for: Duration, downloads_idle_for: Option<Duration>) -> bool {
    queued_for >= CHUNKING_WAITS_AT_MOST
        || downloads_idle_for.is_some_and(|idle| idle >= CHUNKING_WAITS_FOR_QUIET)
}

/// What an eviction run did, in words, for the job log.
fn lru_summary(report: &LruReport, max_size: u64) -> String {
    if report.narinfos_evicted == 0 && report.documents_evicted == 0 {
        return format!(
            "nothing to evict: {} stored of {}",
            format_size(report.bytes_after),
            format_size(max_size)
        );
    }
    format!(
        "freed {}: {}, {}, {} evicted; {} stored of {}",
        format_size(report.bytes_before.saturating_sub(report.bytes_after)),
        plural(report.narinfos_evicted, "narinfo"),
        plural(report.nars_removed, "NAR"),
        plural(report.documents_evicted, "document"),
        format_size(report.bytes_after),
        format_size(max_size)
    )
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use ncps_db::WholeFile;
    use ncps_nix::{Compression, NarInfo, NarKey, Sha256Hash, StorePath};
    use ncps_store::BlobStore;
    use ncps_store::chunk::{ChunkParams, compress_chunk, decompress_chunk};

    use super::JobsConfig;
    use crate::CdcConfig;
    use crate::ingest::ChunkSettings;
    use crate::schedule::Schedule;
    use crate::test_support::{compressible, local_cache_with};

    use super::{CHUNKING_WAITS_AT_MOST, CHUNKING_WAITS_FOR_QUIET, may_chunk_now};
    use crate::Cache;

    /// A cache in lazy chunking mode (small chunks, eager level 1, lazy level `lazy_level`)
    /// holding one path whose NAR is stored whole and queued for the workers, which are not
    /// started yet. (The narinfo keeps the reclaim job, which starts with them, off the NAR.)
    async fn lazy_cache_with_a_queued_nar(
        dir: &std::path::Path,
        lazy_level: i32,
    ) -> (Cache, ncps_db::Database, Sha256Hash) {
        let cdc = CdcConfig {
            chunking: ChunkSettings {
                params: ChunkParams {
                    min: 1024,
                    avg: 4096,
                    max: 16384,
                },
                zstd_level: 1,
                priority: crate::Priority::Client,
            },
            lazy: true,
            delete_delay: Duration::from_secs(3600),
            lazy_zstd_level: lazy_level,
        };
        let (cache, db) = local_cache_with(dir, |c| c.cdc = Some(cdc)).await;
        // A NAR stored whole (uncompressed) by an ingest in lazy mode, which queues it for
        // the background workers.
        let nar = compressible(200_000);
        let nar_hash = Sha256Hash::digest(&nar);
        let key = NarKey::new(nar_hash, Compression::None);
        let file = dir.join("whole.nar");
        std::fs::write(&file, &nar).unwrap();
        let whole = WholeFile {
            key,
            size: nar.len() as u64,
        };
        let narinfo = NarInfo {
            store_path: StorePath::parse_base_name(&format!("{}-lazy", "0".repeat(32))).unwrap(),
            url: key.url(),
            compression: Compression::None,
            file_hash: None,
            file_size: None,
            nar_hash,
            nar_size: nar.len() as u64,
            references: vec![],
            deriver: None,
            sigs: vec![],
            ca: None,
        };
        let ingest = cache.ingest();
        ingest
            .record_narinfo(&ingest.as_served(narinfo, None))
            .await
            .unwrap();
        ingest
            .commit_whole_file(&nar_hash, nar.len() as u64, whole, &file)
            .await
            .unwrap();
        (cache, db, nar_hash)
    }

    /// Starts the background jobs with one lazy-chunking worker.
    fn spawn_one_chunk_worker(cache: &Cache) {
        cache.maintenance().spawn_jobs(JobsConfig {
            chunk_workers: 1,
            recovery_schedule: Schedule::parse("@every 1h", "UTC").unwrap(),
            recovery_batch: 10,
            gc_interval: Duration::from_secs(3600),
            gc_grace: Duration::from_secs(3600),
            lru: None,
        });
    }

    async fn is_chunked(db: &ncps_db::Database, nar_hash: &Sha256Hash) -> bool {
        db.nar(nar_hash)
            .await
            .unwrap()
            .and_then(|r| r.chunked)
            .is_some()
    }

    async fn wait_until_chunked(db: &ncps_db::Database, nar_hash: &Sha256Hash) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !is_chunked(db, nar_hash).await {
            assert!(Instant::now() < deadline, "the NAR was never chunked");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The background workers chunk at the lazy level, not at the eager one: every frame
    /// they store is the chunk compressed at `lazy_zstd_level`, smaller than at level 1.
    #[tokio::test(flavor = "multi_thread")]
    async fn lazy_chunking_compresses_at_the_lazy_level() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, db, nar_hash) = lazy_cache_with_a_queued_nar(dir.path(), 19).await;
        spawn_one_chunk_worker(&cache);
        wait_until_chunked(&db, &nar_hash).await;

        let store = BlobStore::local(&dir.path().join("store")).unwrap();
        let chunks = db.nar_chunks(&nar_hash).await.unwrap();
        assert!(chunks.len() > 5, "{} chunks", chunks.len());
        let (mut stored, mut at_level_1) = (0, 0);
        for c in &chunks {
            let frame = store
                .read_chunk(&c.hash)
                .await
                .unwrap()
                .expect("chunk stored");
            let plain = decompress_chunk(&c.hash, &frame).unwrap();
            assert_eq!(
                frame,
                compress_chunk(&plain, 19).unwrap(),
                "a frame not at the lazy level"
            );
            stored += frame.len();
            at_level_1 += compress_chunk(&plain, 1).unwrap().len();
        }
        assert!(
            stored < at_level_1,
            "{stored} bytes stored, {at_level_1} at level 1: the lazy level saved nothing"
        );
    }

    /// A NAR queued for lazy chunking waits while a download is in flight (a cold closure's
    /// downloads are not slowed by chunking between them) and is chunked once downloads stop.
    #[tokio::test(flavor = "multi_thread")]
    async fn lazy_chunking_waits_until_downloads_stop() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, db, nar_hash) = lazy_cache_with_a_queued_nar(dir.path(), 3).await;
        let slow = cache
            .ingest()
            .download_in_flight(Sha256Hash::digest(b"a slow upstream"));
        spawn_one_chunk_worker(&cache);
        tokio::time::sleep(CHUNKING_WAITS_FOR_QUIET * 3).await;
        assert!(
            !is_chunked(&db, &nar_hash).await,
            "chunked while a download was in flight"
        );
        cache.ingest().end_download(&slow);
        wait_until_chunked(&db, &nar_hash).await;
    }

    #[test]
    fn lazy_chunking_waits_for_quiet_downloads_but_not_for_ever() {
        let just_queued = Duration::ZERO;
        assert!(!may_chunk_now(just_queued, None), "a download is in flight");
        let brief_gap = CHUNKING_WAITS_FOR_QUIET / 2;
        assert!(
            !may_chunk_now(just_queued, Some(brief_gap)),
            "a gap between downloads"
        );
        assert!(may_chunk_now(just_queued, Some(CHUNKING_WAITS_FOR_QUIET)));
        assert!(
            may_chunk_now(CHUNKING_WAITS_AT_MOST, None),
            "steady traffic starves chunking"
        );
    }
}
