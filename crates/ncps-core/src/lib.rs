//! The cache: the lifecycle of a narinfo and its NAR.
//!
//! Lookups go to the database first, then to the upstreams. A NAR that is not stored yet is
//! downloaded once however many clients ask for it; every client streams from that one download
//! while it is written and verified, and the NAR is committed to storage (as a whole file or as
//! content-defined chunks) only after its hashes and sizes matched the narinfo. Stored NARs are
//! served from whichever form can produce the compression their URL names. The HTTP layer above
//! only translates requests and errors.

mod access;
pub mod admin;
mod cache;
mod chunk_memo;
mod chunking;
mod codec;
pub mod defaults;
mod download;
mod error;
mod fetch;
mod forms;
mod jobs;
mod locks;
mod lru;
mod memo;
mod metrics;
mod range;
mod schedule;
mod upload;
mod verify;

pub use cache::{Cache, CacheConfig, CdcConfig, NarBody};
pub use chunking::ChunkSettings;
pub use error::CacheError;
pub use jobs::{GcReport, JobsConfig, LruConfig};
pub use locks::LockBackend;
pub use lru::LruReport;
pub use metrics::{Metrics, Outcome, RequestLabels};
pub use ncps_store::ByteRange;
pub use range::RangeRequest;
pub use schedule::{Schedule, ScheduleError, parse_duration, spawn_scheduled};
pub use upload::{MAX_NARINFO_UPLOAD, MAX_REALISATION_UPLOAD, UploadConfig};
