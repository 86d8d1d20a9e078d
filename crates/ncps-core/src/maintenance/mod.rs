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

pub use fsck::{FsckOptions, FsckOutput, FsckSummary};
pub use gc::GcReport;
pub use human::{format_age, format_size};
pub use import::{FileCheck, Imported};
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
        }))
    }

    /// Writes the accesses the reader noted since its last flush (at shutdown, so eviction
    /// after a restart still knows them).
    pub async fn flush_access_times(&self) {
        self.0.reader.flush_access_times().await;
    }

    /// Measures the storage gauges (called when `/metrics` is scraped).
    pub async fn refresh_gauges(&self) -> Result<(), CacheError> {
        let stored = self.0.db.stored_bytes().await?;
        self.0
            .metrics
            .stored_bytes
            .set(i64::try_from(stored).unwrap_or(i64::MAX));
        Ok(())
    }
}
