//! Content-defined chunks: the storage form that lets two versions of a package share bytes.
//!
//! A plain (uncompressed) NAR is cut with FastCDC into chunks whose boundaries depend on the
//! content, so an edit only changes the chunks around it. Each chunk is addressed by the BLAKE3
//! hash of its plain bytes ([`ChunkHash`]) and kept as one standalone zstd frame; the frames of a
//! NAR, concatenated in order, form a valid zstd stream that Nix downloads as `Compression: zstd`.
//!
//! This module is pure and synchronous (it runs on a blocking thread); the async storage side is
//! in [`BlobStore`](crate::BlobStore)'s `*_chunk` methods.

mod chunker;
mod error;
mod frame;
mod hash;
mod params;
mod pool;

pub use chunker::{Chunk, Chunker, ChunkingSummary, DEFAULT_ZSTD_LEVEL};
pub use error::ChunkError;
pub use frame::{ChunkDecoder, MAX_CHUNK_LEN, compress_chunk, decompress_chunk};
pub(crate) use hash::CHUNK_DIR;
pub use hash::{chunk_from_storage_key, chunk_storage_key};
pub use ncps_nix::ChunkHash;
pub use params::ChunkParams;
