use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::{DatabaseUrl, DbError, parse_database_url};

/// Migrations embedded in the binary, so a fresh machine needs nothing beside it.
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");

/// How long a writer waits for SQLite's lock before giving up; long enough to ride out a burst
/// of inserts, short enough that a stuck writer shows up as an error instead of a hang.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Rows per multi-row INSERT: far below SQLite's bind-variable limit (32766) for any table here,
/// large enough that a NAR of 100 000 chunks takes a few hundred statements in one transaction.
pub(crate) const ROWS_PER_STATEMENT: usize = 500;

/// The cache's metadata store.
#[derive(Clone, Debug)]
pub struct Database {
    pub(crate) pool: SqlitePool,
}

/// Seconds since the Unix epoch, the time unit of every timestamp column.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(crate) fn corrupt(table: &'static str, reason: impl ToString) -> DbError {
    DbError::CorruptRow {
        table,
        reason: reason.to_string(),
    }
}

pub(crate) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(table: &'static str, n: i64) -> Result<u64, DbError> {
    u64::try_from(n).map_err(|_| corrupt(table, format!("negative size {n}")))
}

impl Database {
    /// Opens (creating when missing) the database named by `url` and applies pending migrations.
    pub async fn open(url: &str) -> Result<Self, DbError> {
        match parse_database_url(url)? {
            DatabaseUrl::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| DbError::InvalidUrl {
                        url: url.to_string(),
                        reason: format!("cannot create {}: {e}", dir.display()),
                    })?;
                }
                let options = SqliteConnectOptions::new()
                    .filename(&path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(SQLITE_BUSY_TIMEOUT)
                    .foreign_keys(true);
                let pool = SqlitePoolOptions::new()
                    .max_connections(8)
                    .connect_with(options)
                    .await?;
                let db = Self { pool };
                db.migrate().await?;
                Ok(db)
            }
            DatabaseUrl::Postgres(_) => Err(DbError::Unsupported("postgres".into())),
            DatabaseUrl::Mysql(_) => Err(DbError::Unsupported("mysql".into())),
        }
    }

    /// Applies every pending migration; already-applied ones are skipped.
    pub async fn migrate(&self) -> Result<(), DbError> {
        SQLITE_MIGRATIONS.run(&self.pool).await?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::Database;

    /// A fresh database in a temporary directory (kept alive by the returned guard).
    pub async fn temp_db() -> (Database, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("db.sqlite").display());
        (Database::open(&url).await.unwrap(), dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reopening_applies_no_migration_twice() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("sub/db.sqlite").display());
        drop(Database::open(&url).await.unwrap());
        Database::open(&url).await.unwrap();
    }

    #[tokio::test]
    async fn other_engines_are_refused_clearly() {
        let err = Database::open("postgres://u@127.0.0.1/db")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not supported yet"), "{err}");
    }
}
