//! Bytes at rest.
//!
//! Everything the cache keeps on disk or in a bucket goes through [`BlobStore`], a thin layer over
//! `object_store` so that local disk today and S3 tomorrow differ only in configuration. Keys are
//! typed ([`ncps_nix::NarKey`]), so no request path ever reaches storage unparsed.

mod blob;
pub mod chunk;
mod error;
mod local;
mod mapped;
mod nowait;

pub use blob::{AzureConfig, BlobRead, BlobStore, ByteRange, GcsConfig, S3Config, StoredObject};
pub use chunk::{ChunkError, ChunkHash, ChunkParams, Chunker, ChunkingSummary};
pub use error::StoreError;
pub use mapped::{FileSpan, file_behind, growing_file_window};
