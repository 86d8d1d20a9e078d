//! Pure Nix binary-cache formats, with no I/O and no async.
//!
//! Everything that has to agree byte for byte with what the real `nix` client reads or writes
//! lives here, so the crates that do I/O never hand-roll a Nix format: nixbase32, hashes,
//! store paths, NAR file names, `.narinfo` and `nix-cache-info` files, and ed25519 signing.
//! The crate is kept free of I/O so it can be fuzzed and tested against recorded vectors.

pub mod cache_info;
pub mod chunk_hash;
pub mod compression;
pub mod hash;
mod kv;
pub mod nar_url;
pub mod narinfo;
pub mod nixbase32;
pub mod realisation;
pub mod signing;
pub mod store_path;

pub use cache_info::{CacheInfo, CacheInfoError};
pub use chunk_hash::{ChunkHash, ChunkHashError};
pub use compression::{Compression, CompressionError};
pub use hash::{HashError, Sha256Hash};
pub use nar_url::{NarKey, NarKeyError};
pub use narinfo::{NarInfo, NarInfoError, fingerprint};
pub use nixbase32::Nixbase32Error;
pub use realisation::{SignedJson, SignedJsonError};
pub use signing::{PublicKey, SecretKey, SigningError};
pub use store_path::{STORE_DIR, StorePath, StorePathError, StorePathHash};

/// Largest text file (`.narinfo`, `nix-cache-info`) we agree to parse.
///
/// Real narinfos are a few hundred bytes (a few KiB with many references); the cap keeps a
/// hostile upstream or client from making us scan huge inputs.
pub const MAX_TEXT_LEN: usize = 1024 * 1024;
