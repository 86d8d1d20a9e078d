//! Maintenance: everything that changes what is stored without a client waiting for bytes.
//!
//! - [`jobs`]: starting the background jobs (access-time flushes, lazy chunking workers and
//!   their recovery, LRU eviction, chunk garbage collection).
//! - [`lru`]: eviction down to a size limit, never touching pinned closures; [`pins`].
//! - [`gc`]: deleting chunks no NAR has used for the grace period.
//! - [`forms`]: moving NARs between whole files and chunks (lazy chunking, the migration
//!   commands, whole-file expiry).
//! - [`removal`]: `DELETE` of narinfos and NARs.
//! - [`import`]: `migrate-narinfo` from a file binary cache; [`fsck`]: the database against
//!   storage.
//!
//! Maintenance works on the database and storage directly (that is its job) and tells the
//! reader what it changed, so no memo serves something that is gone.

mod forms;
pub mod fsck;
mod gc;
mod human;
pub mod import;
mod jobs;
mod lru;
mod pins;
mod removal;

use std::sync::Arc;

use ncps_db::Database;
use ncps_store::BlobStore;

use crate::CacheError;
use crate::chunk_queue::ChunkQueue;
use crate::config::{CacheConfig, CdcConfig};
use crate::ingest::Ingest;
use crate::locks::LockService;
use crate::metrics::Metrics;
use crate::reader::Reader;

pub use fsck::{FsckOptions, FsckOutput, FsckSummary, NAR_FILES_PER_PASS};
pub use gc::GcReport;
pub use human::{format_age, format_size, plural};
pub use import::{FileCheck, Imported, files_source};
pub use jobs::{JobsConfig, LruConfig};
pub use lru::LruReport;

/// Keeps the store in shape; cheap to clone.
#[derive(Clone)]
pub struct Maintenance(Arc<State>);

struct State {
    db: Database,
    store: BlobStore,
    reader: Reader,
    ingest: Ingest,
    metrics: Arc<Metrics>,
    locks: Arc<dyn LockService>,
    cdc: Option<CdcConfig>,
    /// One eviction at a time in this process.
    lru_running: tokio::sync::Mutex<()>,
    /// NARs the lazy-chunking workers take.
    chunk_queue: ChunkQueue,
    /// When the storage gauges were last measured: scrapes in between reuse the figures.
    gauges_measured: tokio::sync::Mutex<Option<tokio::time::Instant>>,
    /// The figures last measured, for the status page (which never measures itself).
    figures: std::sync::Mutex<Option<StorageFigures>>,
    /// How long the last measurement took: the next waits in proportion.
    measure_took: std::sync::Mutex<std::time::Duration>,
    /// Whether a NAR may have been left unused since the last complete search for them (see
    /// [`Maintenance::reclaim_unused_nars`]).
    unused: UnusedNars,
}

/// Generations of "something may have left a NAR unused": bumped by this process's deletions
/// and evictions, recorded by each complete search. Equal: no search is needed before an
/// eviction (the reclaim job searches every 5 minutes anyway, for what other processes did).
#[derive(Default)]
struct UnusedNars {
    changed: std::sync::atomic::AtomicU64,
    /// The `changed` generation the last complete search started at, plus one (0: none yet).
    searched: std::sync::atomic::AtomicU64,
}

/// What storage held when last measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StorageFigures {
    /// Narinfos, NARs, bytes and chunk figures.
    pub counts: ncps_db::StoreCounts,
    /// When, in seconds since the epoch.
    pub measured_at: i64,
}

/// The longest the storage gauges go unmeasured while `/metrics` is scraped. Measuring sums
/// whole tables; a scraper (or anyone: `/metrics` is open) asking faster gets the last figures.
const GAUGES_FRESH_FOR: std::time::Duration = std::time::Duration::from_secs(15);

/// Measuring storage may take at most one part in this many of the time: after a measurement
/// that took 300 ms (a sum over millions of rows), the next waits at least 30 s, whoever asks.
const MEASURE_DUTY: u32 = 100;

/// How long to wait after a measurement that took `took`, and at least `floor`.
fn measure_interval(floor: std::time::Duration, took: std::time::Duration) -> std::time::Duration {
    floor.max(took.saturating_mul(MEASURE_DUTY))
}

impl Maintenance {
    pub(crate) fn new(
        config: &CacheConfig,
        db: Database,
        store: BlobStore,
        reader: Reader,
        ingest: Ingest,
        metrics: Arc<Metrics>,
        chunk_queue: ChunkQueue,
    ) -> Self {
        Self(Arc::new(State {
            db,
            store,
            reader,
            ingest,
            metrics,
            locks: config.locks.clone(),
            cdc: config.cdc,
            lru_running: tokio::sync::Mutex::new(()),
            chunk_queue,
            gauges_measured: tokio::sync::Mutex::new(None),
            figures: std::sync::Mutex::new(None),
            measure_took: std::sync::Mutex::new(std::time::Duration::ZERO),
            unused: UnusedNars::default(),
        }))
    }

    /// Writes the accesses the reader noted since its last flush (at shutdown, so eviction
    /// after a restart still knows them).
    pub async fn flush_access_times(&self) {
        self.0.reader.flush_access_times().await;
    }

    /// The storage figures last measured by [`Self::refresh_gauges`], if any.
    pub fn storage_figures(&self) -> Option<StorageFigures> {
        *self.0.figures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Measures the storage and upstream gauges (called when `/metrics` is scraped), at most
    /// once per [`GAUGES_FRESH_FOR`]; concurrent scrapes wait for one measurement.
    pub async fn refresh_gauges(&self) -> Result<(), CacheError> {
        let mut measured = self.0.gauges_measured.lock().await;
        if measured.is_some_and(|at| at.elapsed() < self.measure_every(GAUGES_FRESH_FOR)) {
            return Ok(());
        }
        self.measure_storage().await?;
        *measured = Some(tokio::time::Instant::now());
        Ok(())
    }

    /// How long to wait before measuring storage again, and at least `floor`: a hundred times
    /// what the last measurement took, so a large cache's sums never take more than 1% of the
    /// database's time.
    pub fn measure_every(&self, floor: std::time::Duration) -> std::time::Duration {
        let took = *self
            .0
            .measure_took
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        measure_interval(floor, took)
    }

    /// Folds the running totals' rows into one, so reading them stays cheap (the status
    /// sampler calls it every 10 s, eviction before each run).
    pub async fn fold_totals(&self) -> Result<(), CacheError> {
        self.0.db.fold_totals().await?;
        Ok(())
    }

    /// Measures storage and the upstreams now, for the gauges and the status page (its
    /// sampler calls this on its own schedule; scrapes go through [`Self::refresh_gauges`]).
    pub async fn measure_storage(&self) -> Result<(), CacheError> {
        let started = std::time::Instant::now();
        let counts = self.0.db.store_counts().await?;
        let stored = counts.stored_bytes();
        *self
            .0
            .measure_took
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = started.elapsed();
        *self.0.figures.lock().unwrap_or_else(|p| p.into_inner()) = Some(StorageFigures {
            counts,
            measured_at: ncps_db::now_secs(),
        });
        let m = &self.0.metrics;
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        m.stored_bytes.set(gauge(stored));
        m.chunks.set(gauge(counts.chunks));
        m.dedup_ratio.set(if counts.chunks == 0 {
            0.0
        } else {
            counts.chunk_references as f64 / counts.chunks as f64
        });
        let health = self.0.ingest.upstreams().health();
        for h in &health {
            let labels = crate::metrics::UpstreamLabels {
                upstream: h.url.clone(),
            };
            m.upstream_healthy
                .get_or_create(&labels)
                .set(i64::from(h.healthy));
        }
        let go = &m.go;
        go.store_total_size.set(gauge(stored));
        go.narinfo_count.set(gauge(counts.narinfos));
        go.nar_file_count.set(gauge(counts.nars));
        go.upstream_count_total.set(gauge(health.len() as u64));
        go.upstream_count_healthy
            .set(gauge(health.iter().filter(|h| h.healthy).count() as u64));
        let limit = go.cache_max_size.get();
        go.cache_utilization.set(if limit > 0 {
            stored as f64 / limit as f64
        } else {
            0.0
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ncps_db::WholeFile;
    use ncps_nix::{Compression, NarKey, Sha256Hash};

    use crate::test_support::local_cache;

    #[test]
    fn a_slow_measurement_waits_a_hundred_times_as_long() {
        let floor = Duration::from_secs(10);
        assert_eq!(
            super::measure_interval(floor, Duration::from_millis(20)),
            floor
        );
        assert_eq!(
            super::measure_interval(floor, Duration::from_millis(300)),
            Duration::from_secs(30)
        );
    }

    /// Scrapes in quick succession cost one measurement; a later one measures again.
    #[tokio::test]
    async fn gauges_are_measured_at_most_once_per_period() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, db) = local_cache(dir.path()).await;
        let m = cache.maintenance();
        let gauge = || m.0.metrics.stored_bytes.get();
        m.refresh_gauges().await.unwrap();
        assert_eq!(gauge(), 0);
        let whole = WholeFile {
            key: NarKey::new(Sha256Hash::digest(b"f"), Compression::Xz),
            size: 1234,
        };
        db.record_whole_file(&Sha256Hash::digest(b"n"), 5000, whole, None)
            .await
            .unwrap();
        m.refresh_gauges().await.unwrap();
        assert_eq!(gauge(), 0, "measured again within the period");
        // The period has passed (the last measurement is made older).
        let long_ago = tokio::time::Instant::now()
            .checked_sub(super::GAUGES_FRESH_FOR)
            .unwrap();
        *m.0.gauges_measured.lock().await = Some(long_ago);
        m.refresh_gauges().await.unwrap();
        assert_eq!(gauge(), 1234);
    }
}
