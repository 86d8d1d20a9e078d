//! Cache metadata over sqlx.
//!
//! The database says which narinfos and NARs the cache holds, in which storage forms (whole file,
//! chunks), which NAR URL names which NAR, and where a NAR that is not stored yet comes from.
//! SQLite is the embedded default; PostgreSQL and MySQL/MariaDB serve shared deployments. One
//! code path serves all three: sqlx's `Any` driver, every query written once, and a small
//! dialect layer for the few spellings that differ (placeholders, upserts, casts). The one
//! exception is the hottest read on SQLite, a narinfo hit, which `direct` runs on the caller's
//! thread and which falls back to the pool whenever SQLite cannot answer at once.

/// Declares a test that runs once per engine: `db_test! { async fn name(db) { … } }` makes
/// `name::sqlite`, `name::postgres` and `name::mysql`, each with a fresh, migrated database
/// (`db: &Database`). See `repo::test_support` for where the servers come from.
#[cfg(test)]
macro_rules! db_test {
    ($(#[$meta:meta])* async fn $name:ident($db:ident) $body:block) => {
        $(#[$meta])*
        async fn $name($db: &$crate::Database) $body

        mod $name {
            db_test!(@engine $name, sqlite, Sqlite);
            db_test!(@engine $name, postgres, Postgres);
            db_test!(@engine $name, mysql, Mysql);
        }
    };
    (@engine $name:ident, $variant:ident, $engine:ident) => {
        #[tokio::test]
        async fn $variant() {
            use $crate::repo::test_support::{Engine, TestDb};
            let db = TestDb::new(Engine::$engine).await;
            super::$name(&db).await;
            db.cleanup().await;
        }
    };
}

mod checkpoint;
mod chunks;
mod columns;
mod connect;
mod dialect;
mod direct;
mod error;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
mod fsck;
mod go_data;
mod logs;
mod lru;
mod narinfos;
mod nars;
mod pins;
mod realisations;
mod records;
mod repo;
mod session;
mod settings;
mod totals;
mod uploads;

pub use chunks::Held;
pub use connect::{DatabaseUrl, parse_database_url};
pub use error::DbError;
pub use fsck::{
    AppliedMigration, ChunkListEntry, ChunkRefMismatch, ChunkRow, DanglingNarUrl, OrphanNarInfo,
    UnreferencedNar,
};
pub use go_data::{GoBuildTrace, GoNarFile, GoNarInfo};
pub use lru::{DocumentEntry, DocumentKey, LruEntry};
pub use narinfos::NarinfoAndNar;
pub use nars::{NarsToConvert, Removed};
pub use pins::Pin;
pub use records::{
    CachedNarInfo, ChunkRef, ChunkedForm, NarOrigin, NarRecord, OwnSignature, WholeFile,
};
pub use repo::{Database, PlannedMigration, PoolOptions, now_secs, redact as redact_url};
pub use totals::StoreCounts;
pub use uploads::UploadedNar;
