//! Cache metadata over sqlx.
//!
//! The database says which narinfos and NAR files the cache holds, and where a NAR that is not
//! downloaded yet comes from. SQLite is the embedded default; the queries stick to SQL that
//! PostgreSQL and MySQL also accept, so adding those engines means adding a pool, not a rewrite.

mod connect;
mod error;
mod records;
mod repo;

pub use connect::{DatabaseUrl, parse_database_url};
pub use error::DbError;
pub use records::{CachedNarInfo, NarFile, NarOrigin};
pub use repo::Database;
