//! Taking over a Go ncps database.
//!
//! The Go ncps keeps its narinfos, NAR files, chunk lists, signing key and pins in tables of its
//! own schema (tracked in `schema_migrations`), some with the names ours use (`narinfos`,
//! `chunks`). When [`Database::migrate`] finds that schema and not ours, it first moves the Go
//! tables aside, untouched (PostgreSQL: into the schema `go_ncps`; SQLite and MySQL: renamed
//! with a `go_ncps_` prefix), then creates ours beside them. What they hold is read from there:
//! the signing key at start-up (clients keep trusting the same key), the rest by
//! `ncps migrate-narinfo`, which verifies and imports every path. Nothing here writes to the
//! Go tables, so an interrupted import is simply run again.

use sqlx::Row;

use crate::dialect::{Dialect, opt_text, text};
use crate::{Database, DbError};

/// Every table of the Go ncps's schemas (v0.9 to v0.10), moved aside together.
const GO_TABLES: &[&str] = &[
    "schema_migrations",
    "narinfos",
    "narinfo_references",
    "narinfo_signatures",
    "nar_files",
    "narinfo_nar_files",
    "chunks",
    "nar_file_chunks",
    "config",
    "pinned_closures",
    "build_trace_entries",
    "build_trace_signatures",
    "staging_states",
    "nars",
];

/// PostgreSQL schema the Go tables are moved into.
const GO_SCHEMA: &str = "go_ncps";
/// Prefix of the Go tables' new names on SQLite and MySQL.
const GO_PREFIX: &str = "go_ncps_";

/// A narinfo the Go ncps stored, with the NAR files it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoNarInfo {
    /// Row id in the Go table (import order, and where a resumed listing continues).
    pub id: i64,
    /// `StorePath:` (absolute).
    pub store_path: String,
    /// `URL:` as the Go ncps recorded it.
    pub url: String,
    /// `Compression:`.
    pub compression: Option<String>,
    /// `FileHash:`, as written.
    pub file_hash: Option<String>,
    /// `FileSize:`.
    pub file_size: Option<i64>,
    /// `NarHash:`, as written.
    pub nar_hash: String,
    /// `NarSize:`.
    pub nar_size: i64,
    /// `Deriver:`.
    pub deriver: Option<String>,
    /// `System:`.
    pub system: Option<String>,
    /// `CA:`.
    pub ca: Option<String>,
    /// `References:`, sorted.
    pub references: Vec<String>,
    /// `Sig:` lines.
    pub signatures: Vec<String>,
    /// The NAR files linked to it (a whole file, chunks, or both while chunking ran).
    pub nar_files: Vec<GoNarFile>,
}

/// A build-trace entry the Go ncps kept (`build_trace_entries`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoBuildTrace {
    /// Row id in the Go table.
    pub id: i64,
    /// `/nix/store/<hash>-<name>.drv`.
    pub drv_path: String,
    /// The output's name.
    pub output_name: String,
    /// The document as it was uploaded.
    pub raw_json: String,
}

/// One NAR file row of the Go ncps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoNarFile {
    /// The hash in its file name (normally the compressed file's SHA-256, nixbase32 or hex).
    pub hash: String,
    /// `none`, `xz`, `zstd`, …
    pub compression: String,
    /// Chunk hashes in order (64 hex digits each) when the NAR is kept as chunks.
    pub chunks: Vec<String>,
}

impl Database {
    /// True when this database holds the Go ncps's schema and not (yet) ours: its migration
    /// table and its `narinfos` table. A `schema_migrations` table alone (Rails, dbmate and
    /// others keep one) is not enough: another application's tables are never touched.
    pub async fn holds_go_schema(&self) -> Result<bool, DbError> {
        Ok(self.table_exists("schema_migrations").await?
            && self.table_exists("narinfos").await?
            && !self.table_exists("_sqlx_migrations").await?)
    }

    /// True when this database holds a cache: ours (migrated at least once) or a Go ncps's.
    pub async fn holds_cache(&self) -> Result<bool, DbError> {
        Ok(self.table_exists("_sqlx_migrations").await? || self.holds_go_schema().await?)
    }

    /// True when Go tables were moved aside here (their data may still be imported).
    pub async fn has_go_data(&self) -> Result<bool, DbError> {
        self.go_table_exists("narinfos").await
    }

    /// Moves the Go ncps's tables aside in one transaction, so that ours can be created.
    /// Returns false when there is nothing to move (another process did it first).
    pub(crate) async fn set_aside_go_tables(&self) -> Result<bool, DbError> {
        let d = self.dialect;
        let mut tx = self.pool.begin().await?;
        if d == Dialect::Postgres {
            // Replicas starting together: one moves the tables, the others find them gone.
            sqlx::query("SELECT pg_advisory_xact_lock(7235846193)")
                .execute(&mut *tx)
                .await?;
        }
        let mut moved = false;
        for table in GO_TABLES {
            if !self.table_exists(table).await? || self.go_table_exists(table).await? {
                continue;
            }
            let sql = match d {
                Dialect::Postgres => {
                    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {GO_SCHEMA}"))
                        .execute(&mut *tx)
                        .await?;
                    format!("ALTER TABLE {table} SET SCHEMA {GO_SCHEMA}")
                }
                Dialect::Sqlite => format!("ALTER TABLE {table} RENAME TO {GO_PREFIX}{table}"),
                Dialect::Mysql => format!("RENAME TABLE {table} TO {GO_PREFIX}{table}"),
            };
            sqlx::query(&sql).execute(&mut *tx).await?;
            moved = true;
        }
        tx.commit().await?;
        Ok(moved)
    }

    /// The signing key the Go ncps generated and kept in its database (`name:base64`).
    pub async fn go_secret_key(&self) -> Result<Option<String>, DbError> {
        if !self.go_table_exists("config").await? {
            return Ok(None);
        }
        // `key` is a reserved word in MySQL.
        let key = if self.dialect == Dialect::Mysql {
            "`key`"
        } else {
            "key"
        };
        let sql = format!("SELECT value FROM {} WHERE {key} = ?", self.go("config"));
        let value: Option<String> = sqlx::query_scalar(&self.sql(&sql))
            .bind("secret_key")
            .fetch_optional(&self.pool)
            .await?;
        Ok(value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()))
    }

    /// The store path hashes the Go ncps had pinned.
    pub async fn go_pins(&self) -> Result<Vec<String>, DbError> {
        if !self.go_table_exists("pinned_closures").await? {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT hash FROM {} ORDER BY hash",
            self.go("pinned_closures")
        );
        Ok(sqlx::query_scalar(&sql).fetch_all(&self.pool).await?)
    }

    /// Up to `limit` Go narinfos with a row id above `after`, in id order. Rows without a URL
    /// (placeholders of old versions) and schemas older than narinfos-in-the-database (v0.10;
    /// those kept narinfo files, imported from the directory) give nothing.
    pub async fn go_narinfos(&self, after: i64, limit: u32) -> Result<Vec<GoNarInfo>, DbError> {
        if !self.go_column_exists("narinfos", "url").await? {
            return Ok(Vec::new());
        }
        let d = self.dialect;
        let sql = format!(
            "SELECT {id} AS id, store_path, url, compression, file_hash, {file_size} AS file_size, \
             nar_hash, {nar_size} AS nar_size, deriver, system, ca FROM {narinfos} \
             WHERE id > ? AND url IS NOT NULL AND url <> '' AND store_path IS NOT NULL \
             AND nar_hash IS NOT NULL ORDER BY id LIMIT ?",
            id = d.bigint("id"),
            file_size = d.bigint("file_size"),
            nar_size = d.bigint("COALESCE(nar_size, 0)"),
            narinfos = self.go("narinfos"),
        );
        let rows = sqlx::query(&self.sql(&sql))
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id: i64 = row.try_get("id")?;
            out.push(GoNarInfo {
                id,
                store_path: text(&row, "store_path")?,
                url: text(&row, "url")?,
                compression: opt_text(&row, "compression")?,
                file_hash: opt_text(&row, "file_hash")?,
                file_size: row.try_get("file_size")?,
                nar_hash: text(&row, "nar_hash")?,
                nar_size: row.try_get("nar_size")?,
                deriver: opt_text(&row, "deriver")?,
                system: opt_text(&row, "system")?,
                ca: opt_text(&row, "ca")?,
                references: self
                    .go_strings("narinfo_references", "reference", id)
                    .await?,
                signatures: self
                    .go_strings("narinfo_signatures", "signature", id)
                    .await?,
                nar_files: self.go_nar_files(id).await?,
            });
        }
        Ok(out)
    }

    /// Up to `limit` Go build-trace entries with a row id above `after`, in id order.
    pub async fn go_build_traces(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<GoBuildTrace>, DbError> {
        if !self.go_table_exists("build_trace_entries").await? {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {} AS id, drv_path, output_name, raw_json FROM {} WHERE id > ? \
             ORDER BY id LIMIT ?",
            self.dialect.bigint("id"),
            self.go("build_trace_entries"),
        );
        let rows = sqlx::query(&self.sql(&sql))
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(GoBuildTrace {
                    id: row.try_get("id")?,
                    drv_path: text(row, "drv_path")?,
                    output_name: text(row, "output_name")?,
                    raw_json: text(row, "raw_json")?,
                })
            })
            .collect()
    }

    /// One text column of a narinfo's rows in a link table, sorted.
    async fn go_strings(&self, table: &str, column: &str, id: i64) -> Result<Vec<String>, DbError> {
        let sql = format!(
            "SELECT {column} FROM {} WHERE narinfo_id = ? ORDER BY {column}",
            self.go(table)
        );
        Ok(sqlx::query_scalar(&self.sql(&sql))
            .bind(id)
            .fetch_all(&self.pool)
            .await?)
    }

    /// The NAR files linked to a narinfo, each with its chunk list when it is complete.
    async fn go_nar_files(&self, narinfo_id: i64) -> Result<Vec<GoNarFile>, DbError> {
        let d = self.dialect;
        let sql = format!(
            "SELECT {id} AS id, f.hash AS hash, f.compression AS compression, \
             {total} AS total_chunks FROM {files} f JOIN {links} l ON l.nar_file_id = f.id \
             WHERE l.narinfo_id = ? ORDER BY f.id",
            id = d.bigint("f.id"),
            total = d.bigint("f.total_chunks"),
            files = self.go("nar_files"),
            links = self.go("narinfo_nar_files"),
        );
        let rows = sqlx::query(&self.sql(&sql))
            .bind(narinfo_id)
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let total: i64 = row.try_get("total_chunks")?;
            let chunks = if total > 0 {
                let chunks = self.go_chunks(row.try_get("id")?).await?;
                // A list shorter than announced was being written: no chunked form.
                if chunks.len() as i64 == total {
                    chunks
                } else {
                    Vec::new()
                }
            } else {
                Vec::new()
            };
            out.push(GoNarFile {
                hash: text(&row, "hash")?,
                compression: text(&row, "compression")?,
                chunks,
            });
        }
        Ok(out)
    }

    /// A NAR file's chunk hashes in order.
    async fn go_chunks(&self, nar_file_id: i64) -> Result<Vec<String>, DbError> {
        let sql = format!(
            "SELECT c.hash FROM {links} l JOIN {chunks} c ON c.id = l.chunk_id \
             WHERE l.nar_file_id = ? ORDER BY l.chunk_index",
            links = self.go("nar_file_chunks"),
            chunks = self.go("chunks"),
        );
        Ok(sqlx::query_scalar(&self.sql(&sql))
            .bind(nar_file_id)
            .fetch_all(&self.pool)
            .await?)
    }

    /// The name a Go table has once moved aside.
    fn go(&self, table: &str) -> String {
        match self.dialect {
            Dialect::Postgres => format!("{GO_SCHEMA}.{table}"),
            Dialect::Sqlite | Dialect::Mysql => format!("{GO_PREFIX}{table}"),
        }
    }

    /// Whether a Go table was moved aside.
    async fn go_table_exists(&self, table: &str) -> Result<bool, DbError> {
        match self.dialect {
            Dialect::Postgres => self.table_exists_in(Some(GO_SCHEMA), table).await,
            Dialect::Sqlite | Dialect::Mysql => {
                self.table_exists(&format!("{GO_PREFIX}{table}")).await
            }
        }
    }

    /// Whether a moved-aside Go table has a column (the schema changed across Go versions).
    async fn go_column_exists(&self, table: &str, column: &str) -> Result<bool, DbError> {
        if !self.go_table_exists(table).await? {
            return Ok(false);
        }
        let sql = match self.dialect {
            Dialect::Sqlite => format!(
                "SELECT COUNT(*) FROM pragma_table_info('{GO_PREFIX}{table}') WHERE name = ?"
            ),
            Dialect::Postgres => format!(
                "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = \
                 '{GO_SCHEMA}' AND table_name = '{table}' AND column_name = ?"
            ),
            Dialect::Mysql => format!(
                "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = \
                 DATABASE() AND table_name = '{GO_PREFIX}{table}' AND column_name = ?"
            ),
        };
        let count: i64 = sqlx::query_scalar(&self.sql(&format!(
            "SELECT {}",
            self.dialect.bigint(&format!("({sql})"))
        )))
        .bind(column)
        .fetch_one(&self.pool)
        .await?;
        Ok(count > 0)
    }
}
