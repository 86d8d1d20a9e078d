/// Why a metadata operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database URL could not be understood.
    #[error("invalid database URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given, its password (if any) replaced by `***`.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No connection to the database server could be opened in time. The pool only says it
    /// timed out; `cause` is what one direct attempt reported (refused, unknown host, bad
    /// password, no such database, …), so the operator reads why.
    #[error("cannot connect to the database {url}: {cause}")]
    Unreachable {
        /// The URL as given, its password (if any) replaced by `***`.
        url: String,
        /// The failure of a direct connection attempt.
        cause: String,
    },
    /// The engine reported an error.
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    /// SQLite reported an error to this process's direct writer (see `direct.rs`).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Applying migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A migration needs something of the server it lacks; nothing was applied.
    #[error("cannot apply the database migrations: {0}")]
    MigrationRefused(String),
    /// Another process kept the migration lock too long (MySQL/MariaDB).
    #[error("cannot take the database migration lock: {0}")]
    MigrationLock(String),
    /// A chunk list named chunks that were not held when it was committed: never held, or
    /// collected while an ingest outlived the collection grace period. Nothing was recorded;
    /// the NAR must be chunked again.
    #[error("{0} chunk(s) of the list were not held (collected meanwhile?); nothing was recorded")]
    ChunksNotHeld(usize),
    /// A row holds a value that does not parse; the database was edited or corrupted.
    #[error("corrupt row in {table}: {reason}")]
    CorruptRow {
        /// The table the row is in.
        table: &'static str,
        /// What failed to parse.
        reason: String,
    },
}

impl DbError {
    /// True when the engine failed because its disk is full (SQLite's `SQLITE_FULL`; the
    /// server engines report their own disks as ordinary errors).
    pub fn is_disk_full(&self) -> bool {
        /// SQLite's primary result code for a full disk.
        const SQLITE_FULL: &str = "13";
        match self {
            DbError::Sqlx(sqlx::Error::Database(db)) => db.code().as_deref() == Some(SQLITE_FULL),
            DbError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::DiskFull
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full disk is recognised whichever way SQLite was written to (the pool, or the
    /// direct writer), and nothing else is taken for one.
    #[test]
    fn a_full_disk_is_recognised_from_either_sqlite_path() {
        let failure = |code| {
            DbError::Sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(code),
                None,
            ))
        };
        assert!(failure(rusqlite::ffi::SQLITE_FULL).is_disk_full());
        assert!(!failure(rusqlite::ffi::SQLITE_BUSY).is_disk_full());
        assert!(!DbError::ChunksNotHeld(1).is_disk_full());
    }
}
