//! The cache: the lifecycle of a narinfo and its NAR.
//!
//! Lookups go to the database first, then to the upstreams. A NAR that is not stored yet is
//! downloaded once however many clients ask for it; every client streams from that one download
//! while it is written and verified, and the file is committed to storage only after its hashes
//! and sizes matched the narinfo. The HTTP layer above only translates requests and errors.

mod cache;
mod download;
mod error;
mod range;
mod verify;

pub use cache::{Cache, CacheConfig, NarBody};
pub use error::CacheError;
pub use ncps_store::ByteRange;
pub use range::RangeRequest;
