use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::ConnectOptions as _;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::pool::PoolConnectionMetadata;
use sqlx::{Any, AnyConnection, AnyPool, Executor, Row, Transaction};

use crate::columns::{Columns, NamedRow};
use crate::dialect::Dialect;
use crate::direct::{Answer, DirectReader, DirectWriter, Value};
use crate::session::{Session, TransactionWork};
use crate::{DatabaseUrl, DbError, parse_database_url};

/// Migrations embedded in the binary, one set per engine (same versions, same tables), so a
/// fresh machine needs nothing beside it.
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");
/// See [`SQLITE_MIGRATIONS`].
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");
/// See [`SQLITE_MIGRATIONS`].
static MYSQL_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/mysql");

/// How long a writer waits for SQLite's lock before giving up; long enough to ride out a burst
/// of inserts, short enough that a stuck writer shows up as an error instead of a hang.
pub(crate) const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Run on every new SQLite connection (with the busy timeout above): WAL (readers never wait
/// for the writer), `synchronous = NORMAL` (durable at checkpoints; WAL keeps the database
/// consistent after a power cut, and losing the last moments of metadata only means those
/// paths are fetched again), no checkpoint inside a commit (a thread of their own runs them,
/// see [`crate::checkpoint`]) and a log trimmed back to 64 MiB once checkpointed.
pub(crate) const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
     PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 0; \
     PRAGMA journal_size_limit = 67108864;";

/// How long opening the database (and later, getting a connection) may take: a server that is
/// still starting, e.g. next to ncps in the same compose file, gets this long to come up.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a MySQL/MariaDB process waits for another one's migrations (see
/// [`Database::migrate`]) before giving up with an error.
const MYSQL_MIGRATION_LOCK_WAIT_SECS: i64 = 3600;

/// Idle connections above the kept-idle count are closed after this long: sqlx has no hard
/// "max idle" limit, so this is how a burst's extra connections go away again.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Rows per multi-row INSERT: far below the bind-variable limits (SQLite 32766, PostgreSQL and
/// MySQL 65535) for any table here, large enough that a NAR of 100 000 chunks takes a few
/// hundred statements in one transaction.
pub(crate) const ROWS_PER_STATEMENT: usize = 500;

/// Connection-pool sizes (`--cache-database-pool-max-open-conns`,
/// `--cache-database-pool-max-idle-conns`); `None` takes the engine's default.
///
/// Defaults: SQLite 8 open / 2 idle (one writer at a time whatever the pool size, so more
/// connections only queue); PostgreSQL and MySQL 32 open / 8 idle per process (replicas
/// multiply this, and the servers' own limits default to 100 and 151 connections).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolOptions {
    /// Most connections open at once; requests wait for a free one beyond that.
    pub max_open: Option<u32>,
    /// Connections kept open while idle, so a burst does not pay for new connections; extra
    /// idle connections close after a minute. Capped at `max_open`.
    pub max_idle: Option<u32>,
}

impl PoolOptions {
    /// The sizes in force for `dialect`: (max open, kept idle). 0 means the engine's default,
    /// as in the Go ncps (nixpkgs' module writes `max-open-conns: 0`).
    fn resolve(self, dialect: Dialect) -> (u32, u32) {
        let default_max = match dialect {
            Dialect::Sqlite => 8,
            Dialect::Postgres | Dialect::Mysql => 32,
        };
        let max = self.max_open.filter(|&n| n > 0).unwrap_or(default_max);
        let idle = self
            .max_idle
            .filter(|&n| n > 0)
            .unwrap_or(max.div_ceil(4))
            .min(max);
        (max, idle)
    }
}

/// A migration this binary knows, and whether the database has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedMigration {
    /// Its number.
    pub version: i64,
    /// What it does (its file name's words).
    pub description: String,
    /// Whether the database has it already.
    pub applied: bool,
}

/// The cache's metadata store: one pool on one of SQLite, PostgreSQL or MySQL/MariaDB, with
/// every query written once (see the `dialect` module for the few differences).
#[derive(Clone, Debug)]
pub struct Database {
    pub(crate) pool: AnyPool,
    pub(crate) dialect: Dialect,
    /// SQLite only: this process's writers take turns here (see [`WriteTx`]).
    write_gate: Option<Arc<tokio::sync::Mutex<()>>>,
    /// Statements run so far that read every NAR or chunk row (see [`Database::full_scans`]).
    pub(crate) full_scans: Arc<std::sync::atomic::AtomicU64>,
    /// SQLite only: the hot one-row reads, on the caller's thread (see `direct.rs` and
    /// [`Database::optional_row`]).
    pub(crate) direct: Option<Arc<DirectReader>>,
    /// SQLite only: write transactions in one hand-off each (see
    /// [`Database::in_transaction`]).
    pub(crate) writer: Option<Arc<DirectWriter>>,
}

/// A write transaction. On SQLite it also holds this process's writer gate: SQLite lets one
/// writer in at a time and makes the others retry in sleeps of 1, 2, 5, 10 ms and more (its busy
/// handler), which cost a cold closure of a few hundred paths a noticeable part of its time.
/// Writers of one process queue on an async mutex instead and start the moment the previous one
/// commits; other processes (admin commands) still meet the busy timeout.
pub(crate) struct WriteTx {
    tx: Transaction<'static, Any>,
    _gate: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteTx {
    /// Commits, then lets the next writer in.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

impl std::ops::Deref for WriteTx {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }
}

/// Seconds since the Unix epoch, the time unit of every timestamp column.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Attempts of a write transaction the engine aborted to break a deadlock.
const DEADLOCK_ATTEMPTS: u32 = 5;

/// Runs a write transaction again when the engine aborted it to break a deadlock or a
/// serialization conflict (SQLSTATE 40001, which MySQL/MariaDB give for error 1213, or
/// PostgreSQL's 40P01): the other transaction went ahead, and this one, run again, goes through.
/// InnoDB picks such victims among concurrent inserts into neighbouring keys.
pub(crate) async fn retry_deadlocks<T, F, Fut>(mut attempt: F) -> Result<T, DbError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, DbError>>,
{
    let mut tries = 1;
    loop {
        match attempt().await {
            Err(DbError::Sqlx(sqlx::Error::Database(e)))
                if tries < DEADLOCK_ATTEMPTS
                    && matches!(e.code().as_deref(), Some("40001" | "40P01")) =>
            {
                tracing::debug!(error = %e, tries, "transaction aborted by a deadlock; running it again");
                tokio::time::sleep(std::time::Duration::from_millis(5 * u64::from(tries))).await;
                tries += 1;
            }
            other => return other,
        }
    }
}

/// Binds `values` to `query` in order: the values the direct writer binds on SQLite, so both
/// write paths take one list.
pub(crate) fn bind_values<'q>(
    mut query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    values: &'q [Value],
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
    for value in values {
        query = match value {
            Value::Text(text) => query.bind(text.as_deref()),
            Value::Int(n) => query.bind(*n),
        };
    }
    query
}

/// Statements with their values, run in order ([`Database::write_statements`]).
struct Statements(Vec<(String, Vec<Value>)>);

impl TransactionWork for Statements {
    type Output = Vec<u64>;

    async fn run<S: Session>(self, session: &mut S) -> Result<Vec<u64>, DbError> {
        let mut changed = Vec::with_capacity(self.0.len());
        for (sql, values) in &self.0 {
            changed.push(session.execute(sql, values).await?);
        }
        Ok(changed)
    }
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

/// `url` with its password (if any) replaced, for messages that name a database.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split(':').next().unwrap_or_default();
            let password = if user_info.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{password}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

/// The URL the Any driver wants for the SQLite file at `path` (absolute), created when
/// missing. Every byte but unreserved ones is percent-encoded: the driver decodes the path
/// once, and a `%`, `?` or `#` left as is would change it.
fn sqlite_url(path: &std::path::Path) -> String {
    let mut url = String::from("sqlite://");
    for &b in path.as_os_str().as_encoded_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            url.push(char::from(b));
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url.push_str("?mode=rwc");
    url
}

/// What an `after_connect` hook returns.
type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Sets up a new SQLite connection (see [`SQLITE_PRAGMAS`]). The Any driver builds SQLite
/// connections from a URL, which cannot carry these settings, hence a hook.
fn init_sqlite(
    conn: &mut AnyConnection,
    _meta: PoolConnectionMetadata,
) -> BoxFuture<'_, Result<(), sqlx::Error>> {
    Box::pin(async move {
        let busy = format!("PRAGMA busy_timeout = {};", SQLITE_BUSY_TIMEOUT.as_millis());
        conn.execute(&*busy).await?;
        conn.execute(SQLITE_PRAGMAS).await?;
        Ok(())
    })
}

/// Migration 0006 creates triggers (the running totals). With binary logging on, MySQL and
/// MariaDB let only a user with SUPER create them, unless `log_bin_trust_function_creators` is
/// set; a refusal halfway would leave the migration half applied (MySQL commits each DDL
/// statement), so the server is asked first and told what to change, before anything runs.
async fn mysql_trigger_refusal(conn: &mut AnyConnection) -> Result<(), DbError> {
    let pending: i64 = sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS SIGNED) FROM information_schema.TABLES \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'store_deltas'",
    )
    .fetch_one(&mut *conn)
    .await?;
    if pending > 0 {
        return Ok(()); // applied already
    }
    let (log_bin, trusted): (i64, i64) = sqlx::query_as(
        "SELECT CAST(@@log_bin AS SIGNED), CAST(@@log_bin_trust_function_creators AS SIGNED)",
    )
    .fetch_one(&mut *conn)
    .await?;
    if log_bin == 0 || trusted != 0 {
        return Ok(());
    }
    let superuser: i64 = sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS SIGNED) FROM information_schema.USER_PRIVILEGES \
         WHERE PRIVILEGE_TYPE = 'SUPER' \
         AND GRANTEE = CONCAT('''', REPLACE(CURRENT_USER(), '@', '''@'''), '''')",
    )
    .fetch_one(&mut *conn)
    .await?;
    if superuser > 0 {
        return Ok(());
    }
    Err(DbError::MigrationRefused(
        "this version keeps its running totals with triggers, and with binary logging on this \
         server lets only a user with the SUPER privilege create triggers; set \
         log_bin_trust_function_creators = 1 (SET GLOBAL, the server's configuration, or your \
         provider's parameter group) or grant SUPER, then start ncps again (nothing was changed)"
            .into(),
    ))
}

/// Sets up a new MySQL/MariaDB connection. The pinned-closure walk recurses once per
/// reference it visits, and MySQL stops recursive queries after 1000 rounds by default; the
/// walk always ends (every round shortens a row's list), so the limit is lifted, under
/// whichever name this server uses.
fn init_mysql(
    conn: &mut AnyConnection,
    _meta: PoolConnectionMetadata,
) -> BoxFuture<'_, Result<(), sqlx::Error>> {
    Box::pin(async move {
        let version: String = conn.fetch_one("SELECT VERSION()").await?.try_get(0)?;
        let limit = if version.contains("MariaDB") {
            "max_recursive_iterations"
        } else {
            "cte_max_recursion_depth"
        };
        conn.execute(&*format!("SET SESSION {limit} = 4294967295"))
            .await?;
        Ok(())
    })
}

/// Why no connection to `url` could be opened: the pool reports only its timeout, so one
/// connection is tried directly and its error named.
async fn why_unreachable(url: &str, connect: &AnyConnectOptions) -> DbError {
    use sqlx::ConnectOptions;
    let cause = match tokio::time::timeout(ACQUIRE_TIMEOUT, connect.connect()).await {
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(_)) => "the pool timed out, though a direct connection succeeded".to_owned(),
        Err(_) => format!("no answer within {}s", ACQUIRE_TIMEOUT.as_secs()),
    };
    DbError::Unreachable {
        url: redact(url),
        cause,
    }
}

impl Database {
    /// Opens (creating when missing) the database named by `url` with the default pool sizes
    /// and applies pending migrations.
    pub async fn open(url: &str) -> Result<Self, DbError> {
        Self::open_with(url, PoolOptions::default()).await
    }

    /// Opens the database named by `url` (`sqlite:PATH`, `postgres://…`, `postgresql://…`,
    /// `mysql://…` or `mariadb://…`) with the given pool sizes, and applies pending migrations
    /// (safe when several replicas start at once; see [`Database::migrate`]).
    pub async fn open_with(url: &str, pool: PoolOptions) -> Result<Self, DbError> {
        let db = Self::connect(url, pool, ACQUIRE_TIMEOUT).await?;
        db.migrate().await?;
        Ok(db)
    }

    /// Opens the database like [`Database::open_with`] but applies nothing: for showing what
    /// [`Database::migrate`] would do ([`Database::migration_plan`]) before doing it.
    pub async fn open_unmigrated(url: &str, pool: PoolOptions) -> Result<Self, DbError> {
        Self::connect(url, pool, ACQUIRE_TIMEOUT).await
    }

    /// Connects to the database named by `url`, with the acquire timeout as a parameter
    /// (tests shorten it).
    async fn connect(
        url: &str,
        pool: PoolOptions,
        acquire_timeout: Duration,
    ) -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        let invalid = |reason: String| DbError::InvalidUrl {
            url: redact(url),
            reason,
        };
        let mut direct = None;
        let mut writer = None;
        let (dialect, connect) = match parse_database_url(url)? {
            DatabaseUrl::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| invalid(format!("cannot create {}: {e}", dir.display())))?;
                }
                let path = std::path::absolute(&path)
                    .map_err(|e| invalid(format!("cannot resolve {}: {e}", path.display())))?;
                let connect = AnyConnectOptions::from_str(&sqlite_url(&path))
                    .map_err(|e| invalid(e.to_string()))?;
                direct = Some(Arc::new(DirectReader::new(path.clone())));
                writer = Some(Arc::new(DirectWriter::new(path).map_err(sqlx::Error::Io)?));
                (Dialect::Sqlite, connect)
            }
            DatabaseUrl::Postgres(url) => (
                Dialect::Postgres,
                AnyConnectOptions::from_str(&url).map_err(|e| invalid(e.to_string()))?,
            ),
            DatabaseUrl::Mysql(url) => (
                Dialect::Mysql,
                AnyConnectOptions::from_str(&url).map_err(|e| invalid(e.to_string()))?,
            ),
        };
        // sqlx decides per statement whether to log it by asking the subscriber, then logs
        // nothing when it is filtered out; with per-layer filters (ours) that unanswered
        // question makes the next event of the same thread disappear (sqlx issue #3751): on
        // PostgreSQL and MySQL, whose queries run on our threads, request and eviction log
        // lines went missing. ncps never logs statements, so sqlx is told not to ask.
        let connect = connect.disable_statement_logging();
        let (max_open, max_idle) = pool.resolve(dialect);
        let mut options = AnyPoolOptions::new()
            .max_connections(max_open)
            .min_connections(max_idle)
            .acquire_timeout(acquire_timeout)
            .idle_timeout(IDLE_TIMEOUT)
            // sqlx pings a connection before every use by default: one more round trip per
            // query. An SQLite connection is a file handle on a thread of ours and does not go
            // stale (a cold narinfo + NAR costs about ten queries); a server connection can.
            .test_before_acquire(dialect != Dialect::Sqlite);
        match dialect {
            Dialect::Sqlite => options = options.after_connect(init_sqlite),
            Dialect::Mysql => options = options.after_connect(init_mysql),
            Dialect::Postgres => {}
        }
        let pool = match options.connect_with(connect.clone()).await {
            Ok(pool) => pool,
            Err(sqlx::Error::PoolTimedOut) => return Err(why_unreachable(url, &connect).await),
            Err(e) => return Err(e.into()),
        };
        let write_gate = (dialect == Dialect::Sqlite).then(Default::default);
        Ok(Self {
            pool,
            dialect,
            write_gate,
            full_scans: Arc::default(),
            direct,
            writer,
        })
    }

    /// This database read through the pool only, never directly (tests compare the two).
    #[cfg(test)]
    pub(crate) fn pool_only(&self) -> Self {
        Self {
            direct: None,
            ..self.clone()
        }
    }

    /// This database with its direct reads from the file at `path` (tests make them fail).
    #[cfg(test)]
    pub(crate) fn reading_directly_from(&self, path: std::path::PathBuf) -> Self {
        Self {
            direct: Some(Arc::new(DirectReader::new(path))),
            ..self.clone()
        }
    }

    /// The migrations this binary knows, each with whether it is applied: what `ncps migrate
    /// --dry-run` prints. A fresh database (no migration table yet) has none applied.
    pub async fn migration_plan(&self) -> Result<Vec<PlannedMigration>, DbError> {
        let applied: std::collections::HashSet<i64> = if self.migrations_table_exists().await? {
            self.applied_migrations()
                .await?
                .into_iter()
                .map(|m| m.version)
                .collect()
        } else {
            Default::default()
        };
        Ok(self
            .migrator()
            .iter()
            .filter(|m| !m.migration_type.is_down_migration())
            .map(|m| PlannedMigration {
                version: m.version,
                description: m.description.to_string(),
                applied: applied.contains(&m.version),
            })
            .collect())
    }

    /// The migrations of this database's engine.
    fn migrator(&self) -> &'static sqlx::migrate::Migrator {
        match self.dialect {
            Dialect::Sqlite => &SQLITE_MIGRATIONS,
            Dialect::Postgres => &POSTGRES_MIGRATIONS,
            Dialect::Mysql => &MYSQL_MIGRATIONS,
        }
    }

    /// Whether sqlx's migration table exists (it is created by the first migration run).
    async fn migrations_table_exists(&self) -> Result<bool, DbError> {
        self.table_exists("_sqlx_migrations").await
    }

    /// Whether a table exists in the connection's own schema.
    pub(crate) async fn table_exists(&self, table: &str) -> Result<bool, DbError> {
        self.table_exists_in(None, table).await
    }

    /// Whether a table exists, in `schema` (PostgreSQL) or the connection's own.
    pub(crate) async fn table_exists_in(
        &self,
        schema: Option<&str>,
        table: &str,
    ) -> Result<bool, DbError> {
        let sql = match self.dialect {
            Dialect::Sqlite => {
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?".to_owned()
            }
            Dialect::Postgres => format!(
                "SELECT COUNT(*) FROM information_schema.tables \
                 WHERE table_schema = {} AND table_name = ?",
                schema.map_or("current_schema()".to_owned(), |s| format!("'{s}'"))
            ),
            Dialect::Mysql => "SELECT COUNT(*) FROM information_schema.tables \
                 WHERE table_schema = DATABASE() AND table_name = ?"
                .to_owned(),
        };
        let count: i64 = sqlx::query_scalar(&self.sql(&format!(
            "SELECT {}",
            self.dialect.bigint(&format!("({sql})"))
        )))
        .bind(table)
        .fetch_one(&self.pool)
        .await?;
        Ok(count > 0)
    }

    /// Applies every pending migration; already-applied ones are skipped, and a database
    /// that has migrations this binary does not know (a newer version ran) is refused.
    ///
    /// Several processes may call this at once; one applies the migrations while the others
    /// wait, then find nothing left to do:
    /// - PostgreSQL: sqlx's migrator holds a session-level `pg_advisory_lock` while it works.
    /// - MySQL/MariaDB: sqlx's migrator calls `GET_LOCK(name, -1)`, which waits forever on
    ///   MySQL but returns NULL at once on MariaDB (a negative timeout is invalid there), and
    ///   sqlx ignores the result. So we take our own `GET_LOCK` with a real timeout first, on
    ///   the connection that runs the migrations.
    /// - SQLite: the migrator has no lock, so the whole run happens inside one
    ///   `BEGIN IMMEDIATE` transaction: the database's write lock serialises the processes.
    pub async fn migrate(&self) -> Result<(), DbError> {
        if self.holds_go_schema().await? && self.set_aside_go_tables().await? {
            tracing::warn!(
                "this database held the Go ncps's tables: they were moved aside, untouched, \
                 and its signing key is kept; `ncps migrate-narinfo` imports its paths"
            );
        }
        match self.dialect {
            Dialect::Sqlite => {
                let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
                SQLITE_MIGRATIONS.run_direct(&mut *tx).await?;
                tx.commit().await?;
            }
            Dialect::Postgres => {
                let mut conn = self.pool.acquire().await?;
                if let Err(e) = POSTGRES_MIGRATIONS.run_direct(&mut *conn).await {
                    // The migrator does not release its advisory lock on failure; closing
                    // the session does, so other replicas are not left waiting forever.
                    let _ = conn.close().await;
                    return Err(e.into());
                }
            }
            Dialect::Mysql => {
                let mut conn = self.pool.acquire().await?;
                let lock = "CONCAT('ncps_migrate_', SHA1(COALESCE(DATABASE(), '')))";
                let got: Option<i64> = sqlx::query_scalar(&format!("SELECT GET_LOCK({lock}, ?)"))
                    .bind(MYSQL_MIGRATION_LOCK_WAIT_SECS)
                    .fetch_one(&mut *conn)
                    .await?;
                if got != Some(1) {
                    let _ = conn.close().await;
                    return Err(DbError::MigrationLock(format!(
                        "another process held the migration lock for \
                         {MYSQL_MIGRATION_LOCK_WAIT_SECS} s"
                    )));
                }
                let refused = mysql_trigger_refusal(&mut conn).await;
                if let Err(e) = refused {
                    let _ = conn.close().await;
                    return Err(e);
                }
                if let Err(e) = MYSQL_MIGRATIONS.run_direct(&mut *conn).await {
                    // Ending the session releases the lock.
                    let _ = conn.close().await;
                    return Err(e.into());
                }
                sqlx::query(&format!("SELECT RELEASE_LOCK({lock})"))
                    .execute(&mut *conn)
                    .await?;
            }
        }
        Ok(())
    }

    /// `sql` (written with `?` placeholders) in this engine's spelling.
    pub(crate) fn sql<'a>(&self, sql: &'a str) -> std::borrow::Cow<'a, str> {
        self.dialect.sql(sql)
    }

    /// The row `sql` selects by one text `key` (the first row, if several), decoded. The reads
    /// every request makes (narinfo hits, a NAR's URL and record, a download's origin) come
    /// here: on SQLite they run on the caller's thread whenever SQLite answers at once (see
    /// `direct.rs`), otherwise through the pool. `decode` takes either kind of row, so both
    /// paths decode by the same rules.
    pub(crate) async fn optional_row<T>(
        &self,
        sql: &str,
        key: String,
        decode: impl Fn(&dyn Columns) -> Result<T, DbError>,
    ) -> Result<Option<T>, DbError> {
        if let Some(direct) = &self.direct {
            let answer = direct.read(|conn| {
                let mut statement = conn.prepare_cached(sql)?;
                let mut rows = statement.query([&key])?;
                match rows.next()? {
                    Some(row) => Ok(Some(decode(&NamedRow::new(row))?)),
                    None => Ok(None),
                }
            });
            if let Answer::Done(result) = answer {
                return result;
            }
        }
        let row = sqlx::query(&self.sql(sql))
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(|row| decode(row)).transpose()
    }

    /// Runs `statements` (SQL written with `?` placeholders, and the values bound to it) in one
    /// write transaction, and returns how many rows each changed: one hand-off for the whole
    /// transaction on SQLite (see [`Database::in_transaction`]; a cold path records its narinfo
    /// and its NAR this way).
    pub(crate) async fn write_statements(
        &self,
        statements: Vec<(String, Vec<Value>)>,
    ) -> Result<Vec<u64>, DbError> {
        self.in_transaction(Statements(statements)).await
    }

    /// This process's turn to write (SQLite only; see [`WriteTx`]), held until dropped.
    pub(crate) async fn take_write_gate(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        match &self.write_gate {
            Some(gate) => Some(gate.clone().lock_owned().await),
            None => None,
        }
    }

    /// Starts a transaction that will write (see [`Dialect::begin_write`] and [`WriteTx`]).
    pub(crate) async fn begin(&self) -> Result<WriteTx, DbError> {
        let gate = self.take_write_gate().await;
        let tx = match self.dialect.begin_write() {
            Some(statement) => self.pool.begin_with(statement).await?,
            None => self.pool.begin().await?,
        };
        Ok(WriteTx { tx, _gate: gate })
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Every test runs once per engine: SQLite in a temporary directory, and a fresh database
    //! on the PostgreSQL and MySQL/MariaDB servers named by `NCPS_TEST_POSTGRES_URL` and
    //! `NCPS_TEST_MYSQL_URL` (`scripts/test` starts throwaway ones). A missing server fails the
    //! test (`ncps-test-services` decides); leave those variants out with
    //! `cargo nextest run --profile no-services`.

    use std::sync::atomic::{AtomicU32, Ordering};

    use sqlx::Connection;

    use super::{Database, PoolOptions};

    /// The engines every test runs on.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Engine {
        Sqlite,
        Postgres,
        Mysql,
    }

    impl Engine {
        /// The administrator URL of the engine's test server (SQLite has none).
        pub fn server_url(self) -> String {
            match self {
                Engine::Sqlite => unreachable!("SQLite needs no server"),
                Engine::Postgres => ncps_test_services::postgres_url(),
                Engine::Mysql => ncps_test_services::mysql_url(),
            }
        }
    }

    /// A database name no other test (or test process) uses.
    pub fn unique_name() -> String {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        format!(
            "ncps_test_{}_{}_{}",
            std::process::id(),
            nanos,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// A database URL nobody has opened yet, and what removes it afterwards.
    pub struct FreshUrl {
        pub engine: Engine,
        pub url: String,
        _dir: Option<tempfile::TempDir>,
        server: Option<(String, String)>,
    }

    impl FreshUrl {
        /// A fresh database of `engine` (a missing server fails the test).
        pub async fn new(engine: Engine) -> Self {
            sqlx::any::install_default_drivers();
            if engine == Engine::Sqlite {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite:{}", dir.path().join("db/db.sqlite").display());
                return Self {
                    engine,
                    url,
                    _dir: Some(dir),
                    server: None,
                };
            }
            let admin_url = engine.server_url();
            let name = unique_name();
            let mut admin = sqlx::AnyConnection::connect(&admin_url)
                .await
                .unwrap_or_else(|e| panic!("cannot connect to the {engine:?} test server: {e}"));
            sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
                .execute(&mut admin)
                .await
                .unwrap_or_else(|e| panic!("cannot create a {engine:?} test database: {e}"));
            let _ = admin.close().await;
            let mut url = url::Url::parse(&admin_url).expect("test server URL");
            url.set_path(&format!("/{name}"));
            Self {
                engine,
                url: url.to_string(),
                _dir: None,
                server: Some((admin_url, name)),
            }
        }

        /// Drops the server database (a failed test leaves it behind for inspection; the
        /// throwaway servers of scripts/test go away anyway).
        pub async fn cleanup(self) {
            let Some((admin_url, name)) = &self.server else {
                return;
            };
            let drop = match self.engine {
                Engine::Postgres => format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                _ => format!("DROP DATABASE IF EXISTS {name}"),
            };
            if let Ok(mut admin) = sqlx::AnyConnection::connect(admin_url).await {
                let _ = sqlx::raw_sql(&drop).execute(&mut admin).await;
                let _ = admin.close().await;
            }
        }
    }

    /// A freshly migrated database of one engine.
    pub struct TestDb {
        pub db: Database,
        pub fresh: FreshUrl,
    }

    impl std::ops::Deref for TestDb {
        type Target = Database;
        fn deref(&self) -> &Database {
            &self.db
        }
    }

    impl TestDb {
        /// A migrated database of `engine` (a missing server fails the test).
        pub async fn new(engine: Engine) -> Self {
            let fresh = FreshUrl::new(engine).await;
            // Small pools: many test processes share one server.
            let options = PoolOptions {
                max_open: Some(4),
                max_idle: Some(0),
            };
            let db = Database::open_with(&fresh.url, options)
                .await
                .unwrap_or_else(|e| panic!("cannot open the {engine:?} test database: {e}"));
            Self { db, fresh }
        }

        /// Closes the pool and drops the server database.
        pub async fn cleanup(self) {
            self.db.pool.close().await;
            self.fresh.cleanup().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{Engine, FreshUrl};
    use super::*;

    #[test]
    fn pool_defaults_per_engine() {
        let d = PoolOptions::default();
        assert_eq!(d.resolve(Dialect::Sqlite), (8, 2));
        assert_eq!(d.resolve(Dialect::Postgres), (32, 8));
        assert_eq!(d.resolve(Dialect::Mysql), (32, 8));
        let custom = PoolOptions {
            max_open: Some(5),
            max_idle: Some(9),
        };
        assert_eq!(custom.resolve(Dialect::Postgres), (5, 5));
        let zero = PoolOptions {
            max_open: Some(0),
            max_idle: Some(0),
        };
        assert_eq!(zero.resolve(Dialect::Sqlite), (8, 2));
        assert_eq!(zero.resolve(Dialect::Postgres), (32, 8));
    }

    /// The schema of one migration file, types left out: per table its columns with their
    /// `NOT NULL` / `PRIMARY KEY` attributes and its composite key, every column added later
    /// with its default, plus every index.
    fn schema_shape(sql: &str) -> Vec<String> {
        let sql: String = sql
            .lines()
            .map(|l| l.split("--").next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join(" ");
        // PostgreSQL's function bodies go; SQLite's trigger bodies are joined to their trigger.
        let sql: String = sql
            .split("$$")
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, s)| s)
            .collect();
        let mut statements: Vec<String> = Vec::new();
        let mut open_trigger = false;
        for piece in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            if open_trigger {
                open_trigger = piece != "END";
                continue;
            }
            open_trigger = piece.starts_with("CREATE TRIGGER") && piece.contains(" BEGIN ");
            statements.push(piece.to_string());
        }
        let mut shape = Vec::new();
        for statement in statements.iter().map(String::as_str) {
            let words: Vec<&str> = statement.split_whitespace().collect();
            match words.as_slice() {
                // What a trigger does is the engine's own spelling; that it exists is shared.
                ["CREATE", "TRIGGER", name, ..] => shape.push(format!("trigger {name}")),
                ["CREATE", "FUNCTION", ..] => {}
                ["INSERT", "INTO", table, ..] => shape.push(format!("insert {table}")),
                ["CREATE", "TABLE", table, ..] => {
                    let open = statement.find('(').unwrap();
                    let close = statement.rfind(')').unwrap();
                    let mut depth = 0;
                    let mut part = String::new();
                    let mut parts = Vec::new();
                    for c in statement[open + 1..close].chars() {
                        match c {
                            '(' => depth += 1,
                            ')' => depth -= 1,
                            ',' if depth == 0 => {
                                parts.push(std::mem::take(&mut part));
                                continue;
                            }
                            _ => {}
                        }
                        part.push(c);
                    }
                    parts.push(part);
                    for part in parts {
                        let part = part.split_whitespace().collect::<Vec<_>>().join(" ");
                        if let Some(key) = part.strip_prefix("PRIMARY KEY") {
                            shape.push(format!("{table} key{}", key.trim()));
                        } else {
                            let column = part.split(' ').next().unwrap();
                            shape.push(format!(
                                "{table}.{column} not_null={} pk={}",
                                part.contains("NOT NULL"),
                                part.contains("PRIMARY KEY")
                            ));
                        }
                    }
                }
                ["CREATE", "INDEX", ..] => shape.push(words.join(" ")),
                // MySQL has no `IF EXISTS` here, and names the table.
                ["DROP", "INDEX", "IF", "EXISTS", name] | ["DROP", "INDEX", name, "ON", _] => {
                    shape.push(format!("drop index {name}"))
                }
                // Data written once by a migration: its expressions are the engine's own.
                ["UPDATE", table, ..] => shape.push(format!("update {table}")),
                ["ALTER", "TABLE", table, "ADD", "COLUMN", column, rest @ ..] => {
                    let rest = rest.join(" ");
                    shape.push(format!(
                        "{table}.{column} not_null={} default={}",
                        rest.contains("NOT NULL"),
                        rest.split("DEFAULT").nth(1).unwrap_or_default().trim()
                    ));
                }
                _ => panic!("unexpected statement in a migration: {statement}"),
            }
        }
        shape
    }

    #[test]
    fn migrations_mirror_each_other() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations");
        let files = |dialect: &str| -> Vec<(String, String)> {
            let mut files: Vec<(String, String)> = std::fs::read_dir(root.join(dialect))
                .unwrap()
                .map(|e| {
                    let path = e.unwrap().path();
                    let name = path.file_name().unwrap().to_string_lossy().into_owned();
                    (name, std::fs::read_to_string(&path).unwrap())
                })
                .collect();
            files.sort();
            files
        };
        let sqlite = files("sqlite");
        assert!(!sqlite.is_empty());
        for dialect in ["postgres", "mysql"] {
            let other = files(dialect);
            let names =
                |f: &[(String, String)]| f.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
            assert_eq!(
                names(&other),
                names(&sqlite),
                "{dialect}: migration files differ"
            );
            for ((name, theirs), (_, ours)) in other.iter().zip(&sqlite) {
                assert_eq!(
                    schema_shape(theirs),
                    schema_shape(ours),
                    "{dialect}/{name} does not mirror sqlite/{name}"
                );
            }
        }
    }

    /// Every SQLite connection is in WAL mode with the busy timeout, `synchronous = NORMAL` and
    /// no automatic checkpoint, whatever characters the path holds.
    #[tokio::test]
    async fn sqlite_connections_are_configured() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a dir #1/db %20.sqlite");
        let db = Database::open(&format!("sqlite:{}", path.display()))
            .await
            .unwrap();
        assert!(path.exists(), "{}", path.display());
        let mut conns = Vec::new();
        for _ in 0..3 {
            let mut conn = db.pool.acquire().await.unwrap();
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            let autocheckpoint: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            assert_eq!((mode.as_str(), busy, sync), ("wal", 10_000, 1));
            assert_eq!(autocheckpoint, 0, "a commit must not checkpoint");
            conns.push(conn); // keep it, so the next acquire opens another connection
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db?sslmode=require"),
            "postgres://u:***@h:5432/db?sslmode=require"
        );
        assert_eq!(redact("mysql://u@h/db"), "mysql://u@h/db");
        assert_eq!(redact("sqlite:/x/y"), "sqlite:/x/y");
    }

    /// Reopening applies nothing twice, and several processes starting at once on a fresh
    /// database all succeed (one applies the migrations, the others wait and find them done).
    async fn concurrent_opens_and_reopening(engine: Engine) {
        let fresh = FreshUrl::new(engine).await;
        let opens: Vec<_> = (0..4)
            .map(|_| {
                let url = fresh.url.clone();
                tokio::spawn(async move { Database::open(&url).await })
            })
            .collect();
        for open in opens {
            let db = open
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("{engine:?}: {e}"));
            db.pool.close().await;
        }
        let db = Database::open(&fresh.url).await.unwrap();
        db.migrate().await.unwrap();
        let applied = db.applied_migrations().await.unwrap();
        // Every migration this binary knows, each once.
        let known: Vec<i64> = SQLITE_MIGRATIONS.iter().map(|m| m.version).collect();
        assert!(known.len() >= 3, "{known:?}");
        assert_eq!(applied.iter().map(|m| m.version).collect::<Vec<_>>(), known);
        db.pool.close().await;
        fresh.cleanup().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_opens_sqlite() {
        concurrent_opens_and_reopening(Engine::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_opens_postgres() {
        concurrent_opens_and_reopening(Engine::Postgres).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_opens_mysql() {
        concurrent_opens_and_reopening(Engine::Mysql).await;
    }

    /// With binary logging on (as on MySQL 8 and managed servers), a user without SUPER may
    /// not create triggers unless `log_bin_trust_function_creators` is set: the migrations say
    /// so before changing anything, and go through once it is set.
    #[tokio::test]
    async fn trigger_privileges_mysql() {
        let fresh = FreshUrl::new(Engine::Mysql).await;
        let mut admin =
            <sqlx::AnyConnection as sqlx::Connection>::connect(&Engine::Mysql.server_url())
                .await
                .unwrap();
        let log_bin: i64 = sqlx::query_scalar("SELECT CAST(@@log_bin AS SIGNED)")
            .fetch_one(&mut admin)
            .await
            .unwrap();
        assert_eq!(
            log_bin, 1,
            "this test needs a server with binary logging on (scripts/test starts one)"
        );
        let user = super::test_support::unique_name();
        let database = fresh.url.rsplit('/').next().unwrap().to_string();
        // At every host form: MariaDB's anonymous `''@'localhost'` would otherwise win for a
        // connection from 127.0.0.1.
        let hosts = ["%", "localhost", "127.0.0.1"];
        for host in hosts {
            for statement in [
                format!("CREATE USER '{user}'@'{host}' IDENTIFIED BY 'pw'"),
                format!("GRANT ALL ON {database}.* TO '{user}'@'{host}'"),
            ] {
                sqlx::raw_sql(&statement).execute(&mut admin).await.unwrap();
            }
        }
        sqlx::raw_sql("SET GLOBAL log_bin_trust_function_creators = 0")
            .execute(&mut admin)
            .await
            .unwrap();
        let url = fresh.url.replacen("root@", &format!("{user}:pw@"), 1);
        let refused = Database::open(&url).await.map(|_| ()).unwrap_err();
        let message = refused.to_string();
        assert!(
            matches!(refused, DbError::MigrationRefused(_))
                && message.contains("log_bin_trust_function_creators")
                && message.contains("nothing was changed"),
            "{message}"
        );
        let tables: i64 = sqlx::query_scalar(&format!(
            "SELECT CAST(COUNT(*) AS SIGNED) FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = '{database}'"
        ))
        .fetch_one(&mut admin)
        .await
        .unwrap();
        assert_eq!(tables, 0, "nothing was created");
        sqlx::raw_sql("SET GLOBAL log_bin_trust_function_creators = 1")
            .execute(&mut admin)
            .await
            .unwrap();
        let opened = Database::open(&url).await;
        sqlx::raw_sql("SET GLOBAL log_bin_trust_function_creators = 0")
            .execute(&mut admin)
            .await
            .unwrap();
        let db = opened.expect("the migrations go through once triggers are allowed");
        assert_eq!(
            db.store_counts().await.unwrap(),
            crate::StoreCounts::default()
        );
        db.pool.close().await;
        for host in hosts {
            sqlx::raw_sql(&format!("DROP USER '{user}'@'{host}'"))
                .execute(&mut admin)
                .await
                .unwrap();
        }
        let _ = sqlx::Connection::close(admin).await;
        fresh.cleanup().await;
    }

    /// `ncps migrate --dry-run`'s plan: on a fresh database every migration is pending and
    /// nothing is created by asking; after migrating every one is applied.
    async fn migration_plan_before_and_after(engine: Engine) {
        let fresh = FreshUrl::new(engine).await;
        let db = Database::open_unmigrated(&fresh.url, PoolOptions::default())
            .await
            .unwrap();
        let before = db.migration_plan().await.unwrap();
        let known: Vec<i64> = db.migrator().iter().map(|m| m.version).collect();
        assert_eq!(before.iter().map(|m| m.version).collect::<Vec<_>>(), known);
        assert!(before.iter().all(|m| !m.applied), "{engine:?}: {before:?}");
        assert!(
            !db.migrations_table_exists().await.unwrap(),
            "asking created the table"
        );
        db.migrate().await.unwrap();
        let after = db.migration_plan().await.unwrap();
        assert!(after.iter().all(|m| m.applied), "{engine:?}: {after:?}");
        db.pool.close().await;
        fresh.cleanup().await;
    }

    #[tokio::test]
    async fn migration_plan_sqlite() {
        migration_plan_before_and_after(Engine::Sqlite).await;
    }

    #[tokio::test]
    async fn migration_plan_postgres() {
        migration_plan_before_and_after(Engine::Postgres).await;
    }

    #[tokio::test]
    async fn migration_plan_mysql() {
        migration_plan_before_and_after(Engine::Mysql).await;
    }

    /// Another application's `schema_migrations` and `config` tables in the same database are
    /// never moved; a Go ncps's (with its `narinfos`) are, untouched, and its key is read.
    async fn go_tables_moved_only_when_they_are_the_go_ncps(engine: Engine) {
        let fresh = FreshUrl::new(engine).await;
        let db = Database::open_unmigrated(&fresh.url, PoolOptions::default())
            .await
            .unwrap();
        // `key` is a reserved word in MySQL.
        let key = if engine == Engine::Mysql {
            "`key`"
        } else {
            "key"
        };
        for sql in [
            "CREATE TABLE schema_migrations (version VARCHAR(64) NOT NULL)".to_owned(),
            format!(
                "CREATE TABLE config ({key} VARCHAR(64) NOT NULL, value VARCHAR(200) NOT NULL)"
            ),
            format!("INSERT INTO config ({key}, value) VALUES ('secret_key', 'other-app:x')"),
        ] {
            sqlx::raw_sql(&sql).execute(&db.pool).await.unwrap();
        }
        db.migrate().await.unwrap();
        assert!(
            !db.has_go_data().await.unwrap(),
            "{engine:?}: another app's tables moved"
        );
        assert!(db.table_exists("config").await.unwrap());
        assert_eq!(db.go_secret_key().await.unwrap(), None);
        db.pool.close().await;
        fresh.cleanup().await;

        let fresh = FreshUrl::new(engine).await;
        let db = Database::open_unmigrated(&fresh.url, PoolOptions::default())
            .await
            .unwrap();
        for sql in [
            "CREATE TABLE schema_migrations (version VARCHAR(64) NOT NULL)".to_owned(),
            "CREATE TABLE narinfos (id BIGINT NOT NULL, hash VARCHAR(64) NOT NULL)".to_owned(),
            format!(
                "CREATE TABLE config ({key} VARCHAR(64) NOT NULL, value VARCHAR(200) NOT NULL)"
            ),
            format!("INSERT INTO config ({key}, value) VALUES ('secret_key', 'go-cache-1:abc')"),
        ] {
            sqlx::raw_sql(&sql).execute(&db.pool).await.unwrap();
        }
        assert!(db.holds_go_schema().await.unwrap());
        db.migrate().await.unwrap();
        assert!(
            db.has_go_data().await.unwrap(),
            "{engine:?}: the Go tables stayed"
        );
        assert_eq!(
            db.go_secret_key().await.unwrap().as_deref(),
            Some("go-cache-1:abc")
        );
        // Ours are in place under the names the Go ncps used.
        assert!(
            db.narinfo(&"7rjj86a15146cq1d0ybgnwyqdwgv9lfh".parse().unwrap())
                .await
                .unwrap()
                .is_none()
        );
        db.pool.close().await;
        fresh.cleanup().await;
    }

    #[tokio::test]
    async fn go_tables_moved_only_when_they_are_the_go_ncps_sqlite() {
        go_tables_moved_only_when_they_are_the_go_ncps(Engine::Sqlite).await;
    }

    #[tokio::test]
    async fn go_tables_moved_only_when_they_are_the_go_ncps_postgres() {
        go_tables_moved_only_when_they_are_the_go_ncps(Engine::Postgres).await;
    }

    #[tokio::test]
    async fn go_tables_moved_only_when_they_are_the_go_ncps_mysql() {
        go_tables_moved_only_when_they_are_the_go_ncps(Engine::Mysql).await;
    }

    /// Two processes writing one SQLite file at once (a server and an admin command): each
    /// write transaction takes the write lock when it starts (`BEGIN IMMEDIATE`), so they wait
    /// for each other instead of one failing with "database is locked" when its read turns into
    /// a write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_processes_write_one_sqlite_file_without_failing() {
        use ncps_nix::{ChunkHash, Sha256Hash};

        use crate::ChunkRef;

        let fresh = FreshUrl::new(Engine::Sqlite).await;
        let (a, b) = (
            Database::open(&fresh.url).await.unwrap(),
            Database::open(&fresh.url).await.unwrap(),
        );
        let writes = |db: Database, side: u32| {
            tokio::spawn(async move {
                for i in 0..40u32 {
                    // A read, then writes, in one transaction.
                    let n = side * 1000 + i;
                    let chunk = ChunkRef {
                        hash: ChunkHash::digest(&n.to_le_bytes()),
                        plain_size: 10,
                        stored_size: 5,
                    };
                    let nar = Sha256Hash::digest(&n.to_le_bytes());
                    db.commit_held(&nar, 10, &[chunk], Sha256Hash::digest(b"s"))
                        .await
                        .unwrap_or_else(|e| panic!("write {n}: {e}"));
                }
            })
        };
        let (x, y) = (writes(a.clone(), 1), writes(b.clone(), 2));
        x.await.unwrap();
        y.await.unwrap();
        a.pool.close().await;
        b.pool.close().await;
    }

    #[tokio::test]
    async fn unreachable_servers_fail_clearly() {
        for url in [
            "postgres://u:pw@127.0.0.1:1/db",
            "mysql://u:pw@127.0.0.1:1/db",
        ] {
            let options = PoolOptions {
                max_open: Some(1),
                max_idle: Some(0),
            };
            let err = Database::connect(url, options, Duration::from_millis(300))
                .await
                .unwrap_err();
            assert!(matches!(err, DbError::Unreachable { .. }), "{url}: {err}");
            let said = err.to_string();
            assert!(
                said.contains("127.0.0.1:1") && said.contains("refused"),
                "names neither the server nor the cause: {said}"
            );
            assert!(!said.contains("pw"), "{said}");
        }
    }
}
