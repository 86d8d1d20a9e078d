use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ncps_nix::{NarInfo, NarKey, Sha256Hash, StorePath, StorePathHash};
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};

use crate::{CachedNarInfo, DatabaseUrl, DbError, NarFile, NarOrigin, parse_database_url};

/// Migrations embedded in the binary, so a fresh machine needs nothing beside it.
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");

/// How long a writer waits for SQLite's lock before giving up; long enough to ride out a burst
/// of inserts, short enough that a stuck writer shows up as an error instead of a hang.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The cache's metadata store.
#[derive(Clone, Debug)]
pub struct Database {
    pool: SqlitePool,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn corrupt(table: &'static str, reason: impl ToString) -> DbError {
    DbError::CorruptRow {
        table,
        reason: reason.to_string(),
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(table: &'static str, n: i64) -> Result<u64, DbError> {
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

    /// Looks up the narinfo of a store path hash.
    pub async fn narinfo(&self, hash: &StorePathHash) -> Result<Option<CachedNarInfo>, DbError> {
        let row = sqlx::query("SELECT * FROM narinfos WHERE hash = ?")
            .bind(hash.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| narinfo_from_row(&r)).transpose()
    }

    /// Finds a narinfo that points at the given NAR file, to know where to download it from.
    pub async fn narinfo_for_nar(&self, key: &NarKey) -> Result<Option<CachedNarInfo>, DbError> {
        let row = sqlx::query("SELECT * FROM narinfos WHERE nar_key = ? LIMIT 1")
            .bind(key.file_name())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| narinfo_from_row(&r)).transpose()
    }

    /// Records a narinfo. When one for the same store path already exists (a concurrent fetch
    /// won the race) the existing row is kept, so a narinfo once served never changes its URL.
    pub async fn insert_narinfo(&self, info: &CachedNarInfo) -> Result<(), DbError> {
        let n = &info.narinfo;
        let refs: Vec<String> = n.references.iter().map(StorePath::base_name).collect();
        let now = now_secs();
        sqlx::query(
            "INSERT INTO narinfos (hash, store_path, nar_key, file_hash, file_size, nar_hash, \
             nar_size, refs, deriver, sigs, ca, upstream_url, upstream_nar_url, created_at, \
             last_accessed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (hash) DO NOTHING",
        )
        .bind(n.store_path.hash().to_string())
        .bind(n.store_path.to_absolute())
        .bind(info.nar_key.file_name())
        .bind(n.file_hash.map(|h| h.to_string()))
        .bind(n.file_size.map(to_i64))
        .bind(n.nar_hash.to_string())
        .bind(to_i64(n.nar_size))
        .bind(refs.join(" "))
        .bind(n.deriver.clone())
        .bind(n.sigs.join("\n"))
        .bind(n.ca.clone())
        .bind(info.origin.as_ref().map(|o| o.upstream_url.clone()))
        .bind(info.origin.as_ref().map(|o| o.nar_url.clone()))
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Fills in FileHash/FileSize of narinfos pointing at a NAR once its bytes were measured
    /// (upstream narinfos may omit them).
    pub async fn complete_file_info(
        &self,
        file: &NarFile,
        file_hash: &Sha256Hash,
    ) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE narinfos SET file_hash = ?, file_size = ? \
             WHERE nar_key = ? AND (file_hash IS NULL OR file_size IS NULL)",
        )
        .bind(file_hash.to_string())
        .bind(to_i64(file.file_size))
        .bind(file.key.file_name())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Looks up a stored NAR file.
    pub async fn nar_file(&self, key: &NarKey) -> Result<Option<NarFile>, DbError> {
        let row = sqlx::query("SELECT * FROM nar_files WHERE nar_key = ?")
            .bind(key.file_name())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| nar_file_from_row(&r)).transpose()
    }

    /// Records a NAR file that was verified and written to storage. Idempotent.
    pub async fn insert_nar_file(&self, file: &NarFile) -> Result<(), DbError> {
        let now = now_secs();
        sqlx::query(
            "INSERT INTO nar_files (nar_key, file_size, nar_hash, nar_size, created_at, \
             last_accessed_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (nar_key) DO NOTHING",
        )
        .bind(file.key.file_name())
        .bind(to_i64(file.file_size))
        .bind(file.nar_hash.to_string())
        .bind(to_i64(file.nar_size))
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets a NAR file whose bytes turned out to be missing from storage, so the next request
    /// downloads it again instead of failing forever.
    pub async fn delete_nar_file(&self, key: &NarKey) -> Result<(), DbError> {
        sqlx::query("DELETE FROM nar_files WHERE nar_key = ?")
            .bind(key.file_name())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

fn narinfo_from_row(row: &SqliteRow) -> Result<CachedNarInfo, DbError> {
    const T: &str = "narinfos";
    let bad = |e: &dyn std::fmt::Display| corrupt(T, e);
    let nar_key =
        NarKey::parse_file_name(row.try_get::<&str, _>("nar_key")?).map_err(|e| bad(&e))?;
    let store_path =
        StorePath::parse(row.try_get::<&str, _>("store_path")?).map_err(|e| bad(&e))?;
    let file_hash = row
        .try_get::<Option<&str>, _>("file_hash")?
        .map(Sha256Hash::from_str)
        .transpose()
        .map_err(|e| bad(&e))?;
    let file_size = row
        .try_get::<Option<i64>, _>("file_size")?
        .map(|n| to_u64(T, n))
        .transpose()?;
    let nar_hash =
        Sha256Hash::from_str(row.try_get::<&str, _>("nar_hash")?).map_err(|e| bad(&e))?;
    let nar_size = to_u64(T, row.try_get("nar_size")?)?;
    let references = row
        .try_get::<&str, _>("refs")?
        .split_whitespace()
        .map(StorePath::parse_base_name)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    let sigs = row
        .try_get::<&str, _>("sigs")?
        .lines()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let upstream_url: Option<String> = row.try_get("upstream_url")?;
    let upstream_nar_url: Option<String> = row.try_get("upstream_nar_url")?;
    let origin = match (upstream_url, upstream_nar_url) {
        (Some(upstream_url), Some(nar_url)) => Some(NarOrigin {
            upstream_url,
            nar_url,
        }),
        _ => None,
    };
    Ok(CachedNarInfo {
        narinfo: NarInfo {
            store_path,
            url: nar_key.url(),
            compression: nar_key.compression,
            file_hash,
            file_size,
            nar_hash,
            nar_size,
            references,
            deriver: row.try_get("deriver")?,
            sigs,
            ca: row.try_get("ca")?,
        },
        nar_key,
        origin,
    })
}

fn nar_file_from_row(row: &SqliteRow) -> Result<NarFile, DbError> {
    const T: &str = "nar_files";
    Ok(NarFile {
        key: NarKey::parse_file_name(row.try_get::<&str, _>("nar_key")?)
            .map_err(|e| corrupt(T, e))?,
        file_size: to_u64(T, row.try_get("file_size")?)?,
        nar_hash: Sha256Hash::from_str(row.try_get::<&str, _>("nar_hash")?)
            .map_err(|e| corrupt(T, e))?,
        nar_size: to_u64(T, row.try_get("nar_size")?)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ncps_nix::Compression;

    fn sample() -> CachedNarInfo {
        let nar_hash = Sha256Hash::digest(b"nar");
        let file_hash = Sha256Hash::digest(b"file");
        let nar_key = NarKey::new(file_hash, Compression::Xz);
        let path = |s: &str| StorePath::parse_base_name(s).unwrap();
        CachedNarInfo {
            narinfo: NarInfo {
                store_path: path("7rjj86a15146cq1d0ybgnwyqdwgv9lfh-hello-2.12"),
                url: nar_key.url(),
                compression: Compression::Xz,
                file_hash: None,
                file_size: None,
                nar_hash,
                nar_size: 1234,
                references: vec![path("0xyg5hmq2ycg6pbl6n4hppvwfjq9bsy5-glibc-2.37")],
                deriver: Some("11111111111111111111111111111111-hello.drv".into()),
                sigs: vec!["up-1:abc".into(), "up-2:def".into()],
                ca: None,
            },
            nar_key,
            origin: Some(NarOrigin {
                upstream_url: "http://127.0.0.1:1".into(),
                nar_url: "nar/x.nar.xz".into(),
            }),
        }
    }

    #[tokio::test]
    async fn narinfo_and_nar_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("sub/db.sqlite").display());
        let db = Database::open(&url).await.unwrap();
        let info = sample();
        let hash = *info.narinfo.store_path.hash();
        assert!(db.narinfo(&hash).await.unwrap().is_none());
        db.insert_narinfo(&info).await.unwrap();
        db.insert_narinfo(&info).await.unwrap(); // idempotent
        assert_eq!(db.narinfo(&hash).await.unwrap().unwrap(), info);
        assert_eq!(
            db.narinfo_for_nar(&info.nar_key).await.unwrap().unwrap(),
            info
        );

        let file = NarFile {
            key: info.nar_key,
            file_size: 99,
            nar_hash: info.narinfo.nar_hash,
            nar_size: 1234,
        };
        assert!(db.nar_file(&file.key).await.unwrap().is_none());
        db.insert_nar_file(&file).await.unwrap();
        assert_eq!(db.nar_file(&file.key).await.unwrap().unwrap(), file);
        let fh = Sha256Hash::digest(b"file");
        db.complete_file_info(&file, &fh).await.unwrap();
        let updated = db.narinfo(&hash).await.unwrap().unwrap();
        assert_eq!(updated.narinfo.file_hash, Some(fh));
        assert_eq!(updated.narinfo.file_size, Some(99));
        db.delete_nar_file(&file.key).await.unwrap();
        assert!(db.nar_file(&file.key).await.unwrap().is_none());

        // Reopening applies no migration twice and keeps the data.
        drop(db);
        let db = Database::open(&url).await.unwrap();
        assert!(db.narinfo(&hash).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn other_engines_are_refused_clearly() {
        let err = Database::open("postgres://u@127.0.0.1/db")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not supported yet"), "{err}");
    }
}
