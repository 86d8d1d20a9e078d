//! Cache metadata over sqlx.
//!
//! The database says which narinfos and NARs the cache holds, in which storage forms (whole file,
//! chunks), which NAR URL names which NAR, and where a NAR that is not stored yet comes from.
//! SQLite is the embedded default; the queries stick to SQL that PostgreSQL also accepts (and
//! MySQL with its upsert spelling), so other engines mean another pool, not a rewrite.

mod chunks;
mod connect;
mod error;
mod fsck;
mod logs;
mod lru;
mod narinfos;
mod nars;
mod pins;
mod realisations;
mod records;
mod repo;
mod settings;

pub use connect::{DatabaseUrl, parse_database_url};
pub use error::DbError;
pub use fsck::{
    AppliedMigration, ChunkListEntry, ChunkRefMismatch, ChunkRow, DanglingNarUrl, OrphanNarInfo,
    UnreferencedNar,
};
pub use lru::LruEntry;
pub use pins::Pin;
pub use records::{CachedNarInfo, ChunkRef, ChunkedForm, NarOrigin, NarRecord, WholeFile};
pub use repo::{Database, now_secs};
