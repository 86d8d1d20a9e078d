//! Background work: lazy chunking (with crash recovery), deleting whole files whose chunks are
//! complete once their delay has passed, and reclaiming chunks no NAR uses any more.

use std::collections::HashSet;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use ncps_db::NarRecord;
use ncps_nix::{Compression, NarKey, Sha256Hash};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::chunking::{ChunkSettings, check_chunked, chunk_nar};
use crate::schedule::{Schedule, spawn_scheduled};
use crate::{Cache, CacheError};

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

/// What a garbage collection removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Chunks deleted.
    pub chunks_deleted: u64,
}

fn now() -> i64 {
    ncps_db::now_secs()
}

impl Cache {
    /// Starts the background jobs on the current runtime; they stop with it.
    pub fn spawn_jobs(&self, jobs: JobsConfig) {
        self.spawn_access_flush();
        if let Some(lru) = jobs.lru.clone() {
            let this = self.clone();
            spawn_scheduled(lru.schedule, move || {
                let this = this.clone();
                async move {
                    match this.evict_lru(lru.max_size).await {
                        Ok(report) => {
                            let freed = report.bytes_before.saturating_sub(report.bytes_after);
                            this.inner.metrics.job_finished(
                                "lru",
                                report.duration,
                                Some(freed),
                                report.narinfos_evicted,
                            );
                            info!(?report, "LRU eviction finished");
                        }
                        Err(e) => error!(error = %e, "LRU eviction failed"),
                    }
                }
            });
        }
        self.spawn_gc(&jobs);
        let Some(cdc) = self.inner.config.cdc else {
            return;
        };
        if cdc.lazy {
            let rx = self
                .inner
                .chunk_queue_rx
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(rx) = rx {
                let rx = Arc::new(tokio::sync::Mutex::new(rx));
                let busy = Arc::new(Mutex::new(HashSet::new()));
                for _ in 0..jobs.chunk_workers.max(1) {
                    tokio::spawn(
                        self.clone()
                            .chunk_worker(rx.clone(), busy.clone(), cdc.chunking),
                    );
                }
            }
        }
        let this = self.clone();
        let batch = jobs.recovery_batch;
        let recover = move || {
            let this = this.clone();
            async move {
                if let Err(e) = this.recover_and_clean(cdc.lazy, batch).await {
                    error!(error = %e, "lazy chunking recovery failed");
                }
            }
        };
        tokio::spawn(recover());
        spawn_scheduled(jobs.recovery_schedule.clone(), recover);
    }

    fn spawn_gc(&self, jobs: &JobsConfig) {
        let jobs = jobs.clone();
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(jobs.gc_interval);
            loop {
                tick.tick().await;
                let started = std::time::Instant::now();
                let result = this.collect_chunks(jobs.gc_grace).await;
                if let Ok(r) = &result {
                    this.inner.metrics.job_finished(
                        "chunk_gc",
                        started.elapsed(),
                        None,
                        r.chunks_deleted,
                    );
                }
                match result {
                    Ok(r) if r.chunks_deleted > 0 => {
                        info!(chunks = r.chunks_deleted, "collected unreferenced chunks")
                    }
                    Ok(_) => {}
                    Err(e) => error!(error = %e, "chunk garbage collection failed"),
                }
            }
        });
    }

    async fn chunk_worker(
        self,
        rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Sha256Hash>>>,
        busy: Arc<Mutex<HashSet<Sha256Hash>>>,
        settings: ChunkSettings,
    ) {
        loop {
            let Some(nar_hash) = rx.lock().await.recv().await else {
                return;
            };
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

    /// Queues NARs whose chunking never finished (a crash, a restart) and deletes whole files
    /// whose delay has passed.
    async fn recover_and_clean(&self, lazy: bool, batch: u32) -> Result<(), CacheError> {
        if lazy {
            for record in self.inner.db.nars_to_chunk(batch).await? {
                let _ = self.inner.chunk_queue.send(record.nar_hash);
            }
        }
        let deleted = self.delete_expired_whole_files(batch).await?;
        if deleted > 0 {
            info!(files = deleted, "deleted whole files now stored as chunks");
        }
        Ok(())
    }

    /// Chunks a NAR stored as a whole file, verifying the result against the NAR's hash before
    /// recording it. Returns `false` when there was nothing to do. The whole file stays until
    /// the configured delay has passed (or is kept when `keep_whole` is `None`... see callers).
    pub async fn chunk_stored_nar(
        &self,
        nar_hash: &Sha256Hash,
        settings: ChunkSettings,
    ) -> Result<bool, CacheError> {
        let Some(record) = self.inner.db.nar(nar_hash).await? else {
            return Ok(false);
        };
        let (Some(whole), None) = (record.whole, record.chunked) else {
            return Ok(false);
        };
        let Some(read) = self.inner.store.read_nar(&whole.key, None).await? else {
            warn!(nar = %nar_hash, "whole file missing from storage; forgetting it");
            self.inner.db.forget_whole_file(nar_hash).await?;
            return Ok(false);
        };
        let source = read.stream.map_err(io::Error::other).boxed();
        let chunked = chunk_nar(
            &self.inner.store,
            source,
            whole.key.compression,
            record.nar_size,
            settings,
            None,
        )
        .await?;
        check_chunked(
            &chunked,
            nar_hash,
            record.nar_size,
            Some(whole.key.hash),
            Some(whole.size),
        )?;
        let committed = self
            .inner
            .db
            .commit_chunks(
                nar_hash,
                record.nar_size,
                &chunked.refs,
                chunked.summary.file_hash,
            )
            .await?;
        let delay = self
            .inner
            .config
            .cdc
            .map_or(Duration::ZERO, |c| c.delete_delay);
        self.inner
            .db
            .set_whole_delete_after(nar_hash, Some(now() + delay.as_secs() as i64))
            .await?;
        Ok(committed)
    }

    /// Deletes whole files whose chunks are complete and whose delay has passed.
    pub async fn delete_expired_whole_files(&self, batch: u32) -> Result<usize, CacheError> {
        let expired = self
            .inner
            .db
            .nars_with_expired_whole_file(now(), batch)
            .await?;
        for record in &expired {
            self.drop_whole_file(record).await?;
        }
        Ok(expired.len())
    }

    /// Forgets a NAR's whole file, then deletes its bytes (readers that already opened it keep
    /// their stream).
    pub(crate) async fn drop_whole_file(&self, record: &NarRecord) -> Result<(), CacheError> {
        if let Some(whole) = record.whole {
            self.inner.db.forget_whole_file(&record.nar_hash).await?;
            self.inner.store.delete_nar(&whole.key).await?;
        }
        Ok(())
    }

    /// Deletes chunks that have had no reference for longer than `grace`.
    pub async fn collect_chunks(&self, grace: Duration) -> Result<GcReport, CacheError> {
        let mut report = GcReport::default();
        // One replica collects at a time.
        let Some(_global) = self
            .inner
            .locks
            .try_lock("chunk-gc", Duration::from_secs(30 * 60))
            .await?
        else {
            return Ok(report);
        };
        let before = now() - grace.as_secs() as i64;
        loop {
            let batch = self.inner.db.unreferenced_chunks(before, 1000).await?;
            if batch.is_empty() {
                return Ok(report);
            }
            for hash in batch {
                if self.inner.db.forget_unreferenced_chunk(&hash).await? {
                    self.inner.store.delete_chunk(&hash).await?;
                    report.chunks_deleted += 1;
                }
            }
        }
    }

    /// Rebuilds the whole file of a NAR stored only as chunks (the spliced zstd stream),
    /// verifies it against the NarHash, stores it, and only then drops the chunk list.
    pub async fn unchunk_nar(&self, nar_hash: &Sha256Hash) -> Result<bool, CacheError> {
        let Some(record) = self.inner.db.nar(nar_hash).await? else {
            return Ok(false);
        };
        let (None, Some(form)) = (record.whole, record.chunked) else {
            return Ok(false);
        };
        let chunks = self.inner.db.nar_chunks(nar_hash).await?;
        let spliced = self.splice(chunks.into(), None, form.spliced_size).stream;
        let (file, path) = tempfile::Builder::new()
            .prefix("unchunk-")
            .tempfile_in(&self.inner.config.temp_dir)?
            .into_parts();
        let expected = crate::verify::Expected::exactly(
            Compression::Zstd,
            None,
            Some(form.spliced_size),
            record.nar_hash,
            record.nar_size,
        );
        let verified = crate::verify::write_verified(file, expected, spliced, None).await?;
        let whole = ncps_db::WholeFile {
            key: NarKey::new(verified.file_hash, Compression::Zstd),
            size: verified.file_size,
        };
        self.inner
            .store
            .put_nar_from_file(&whole.key, &path)
            .await?;
        self.inner
            .db
            .record_whole_file(nar_hash, record.nar_size, whole, None)
            .await?;
        self.inner.db.drop_chunk_list(nar_hash).await?;
        self.inner.chunk_lists.forget(nar_hash);
        Ok(true)
    }

    /// Chunks every NAR stored whole, `batch` at a time, calling `progress` after each; whole
    /// files are deleted once their chunks are recorded. Resumable: work done is not redone.
    pub async fn migrate_to_chunks(
        &self,
        settings: ChunkSettings,
        batch: u32,
        mut progress: impl FnMut(&Sha256Hash, u64),
    ) -> Result<u64, CacheError> {
        let mut done = 0;
        loop {
            let todo = self.inner.db.nars_to_chunk(batch).await?;
            if todo.is_empty() {
                return Ok(done);
            }
            for record in todo {
                self.chunk_stored_nar(&record.nar_hash, settings).await?;
                if let Some(fresh) = self.inner.db.nar(&record.nar_hash).await? {
                    self.drop_whole_file(&fresh).await?;
                }
                done += 1;
                progress(&record.nar_hash, record.nar_size);
            }
        }
    }

    /// Rebuilds whole files for every NAR stored only as chunks (see [`Cache::unchunk_nar`]).
    pub async fn migrate_to_whole_files(
        &self,
        batch: u32,
        mut progress: impl FnMut(&Sha256Hash, u64),
    ) -> Result<u64, CacheError> {
        let mut done = 0;
        loop {
            let todo = self.inner.db.nars_without_whole_file(batch).await?;
            if todo.is_empty() {
                return Ok(done);
            }
            for record in todo {
                self.unchunk_nar(&record.nar_hash).await?;
                done += 1;
                progress(&record.nar_hash, record.nar_size);
            }
        }
    }
}
