//! The cache: the lifecycle of a narinfo and its NAR, in three components with one job each.
//!
//! - [`Reader`] answers requests: it resolves a NAR URL, decides with [`plan`](crate::plan)
//!   which stored form serves it, and streams it. It owns the memo of rendered narinfos, the
//!   memo of checked chunk lists and the log of accesses. On a miss it asks the ingest side.
//! - [`Ingest`] brings bytes in: upstream narinfos, single-flight NAR downloads, uploads,
//!   verification, chunking and the commit to storage and database, through temporary files.
//! - [`Maintenance`] keeps the store in shape: background jobs (lazy chunking and its
//!   recovery, LRU eviction, chunk garbage collection), pins, deletions, imports, the
//!   migrations between whole files and chunks, and fsck.
//!
//! [`Documents`] serves build logs and realisations, which have no NAR; [`status`] keeps what
//! the status page shows. [`Cache`] wires them together from one [`CacheConfig`]; the HTTP layer and the admin commands call the
//! components, never the database or storage below them.

mod chunk_queue;
mod codec;
mod config;
mod conversions;
pub mod defaults;
mod documents;
mod error;
mod ingest;
mod job_log;
mod locks;
pub mod maintenance;
mod metrics;
mod plan;
mod priority;
mod range;
mod reader;
mod schedule;
mod signer;
pub mod status;
mod temp;
#[cfg(test)]
mod test_support;

use std::sync::Arc;

use ncps_db::Database;
use ncps_store::BlobStore;
use ncps_upstream::Upstreams;

pub use config::{CacheConfig, CdcConfig};
pub use documents::{Documents, MAX_REALISATION_UPLOAD};
pub use error::CacheError;
pub use ingest::{ChunkSettings, Ingest, MAX_NARINFO_UPLOAD, UploadConfig};
pub use locks::{LocalLocks, LockError, LockGuard, LockService};
pub use maintenance::{GcReport, JobsConfig, LruConfig, LruReport, Maintenance};
pub use metrics::{Metrics, Outcome, RequestLabels};
pub use ncps_store::ByteRange;
/// For the connection writer: stored bytes it may send with `sendfile` (see [`ncps_store::file_behind`]).
pub use ncps_store::{FileSpan, file_behind};
pub use priority::Priority;
pub use range::RangeRequest;
pub use reader::{NarBody, Reader};
pub use schedule::{Schedule, ScheduleError, parse_duration, spawn_scheduled};
pub use temp::TempFiles;

use crate::chunk_queue::ChunkQueue;
use crate::status::Status;

/// The cache's components, wired to one database, one storage and one set of upstreams;
/// shared by every request. A clone is one reference count: the HTTP layer clones it for
/// every request (twice, with the logging middleware), and five counts bouncing between cores
/// cost a tenth of the warm narinfo rate (docs/benchmarks.md).
#[derive(Clone)]
pub struct Cache(Arc<Components>);

struct Components {
    reader: Reader,
    ingest: Ingest,
    maintenance: Maintenance,
    documents: Documents,
    status: Status,
    metrics: Arc<Metrics>,
}

impl Cache {
    /// Wires the components. Nothing runs in the background until
    /// [`Maintenance::spawn_jobs`].
    pub fn new(config: CacheConfig, db: Database, store: BlobStore, upstreams: Upstreams) -> Self {
        let metrics = Arc::new(Metrics::new());
        let config = CacheConfig {
            locks: Arc::new(locks::MeteredLocks::new(
                config.locks.clone(),
                metrics.clone(),
            )),
            ..config
        };
        let queue = ChunkQueue::new(metrics.lazy_chunking_queued.clone());
        let signer = signer::Signer::new(&config);
        let ingest = Ingest::new(
            &config,
            signer.clone(),
            db.clone(),
            store.clone(),
            upstreams.clone(),
            metrics.clone(),
            queue.clone(),
        );
        let reader = Reader::new(
            &config,
            signer,
            db.clone(),
            store.clone(),
            ingest.clone(),
            metrics.clone(),
        );
        let maintenance = Maintenance::new(
            &config,
            db.clone(),
            store,
            reader.clone(),
            ingest.clone(),
            metrics.clone(),
            queue,
        );
        let documents = Documents::new(db, upstreams.clone(), config.uploads.clone());
        let status = Status::new(
            metrics.clone(),
            upstreams,
            maintenance.clone(),
            config.cdc.is_some(),
        );
        Self(Arc::new(Components {
            reader,
            ingest,
            maintenance,
            documents,
            status,
            metrics,
        }))
    }

    /// Answers narinfo and NAR requests.
    pub fn reader(&self) -> &Reader {
        &self.0.reader
    }

    /// Receives uploads.
    pub fn ingest(&self) -> &Ingest {
        &self.0.ingest
    }

    /// Jobs, pins, deletions, imports, migrations and fsck.
    pub fn maintenance(&self) -> &Maintenance {
        &self.0.maintenance
    }

    /// Build logs and realisations.
    pub fn documents(&self) -> &Documents {
        &self.0.documents
    }

    /// The status page's figures and history.
    pub fn status(&self) -> &Status {
        &self.0.status
    }

    /// The metrics, for `/metrics` and for the HTTP layer's request counters.
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }
}
