//! Reads of an SQLite database on the caller's own thread, for the one-row lookups every request
//! makes: a narinfo hit the memo does not answer, a NAR by the URL asked for or by its hash, a
//! download's origin (see [`crate::Database::optional_row`]).
//!
//! sqlx runs every SQLite statement on a worker thread of its own and hands the query and each
//! row across threads; for a one-row lookup of a few microseconds those hand-offs (two thread
//! wake-ups, the pool's bookkeeping, converting the row for the `Any` driver) cost several times
//! the lookup. Here the statement runs where it is asked for, on a connection kept for this use.
//!
//! What keeps this safe on a runtime thread: the connections only read (`query_only`), and never
//! wait for a lock (busy timeout 0) — whenever SQLite cannot answer at once, or anything else
//! goes wrong in the engine, the caller is told to ask the pool instead ([`Answer::AskThePool`]),
//! which waits and reports errors as every other query does. In WAL mode readers do not wait
//! for writers, so this is rare. What remains is reading the pages of one lookup (an index and
//! two rows), from the page cache on a warm cache and from disk otherwise — the same a file
//! cache such as nginx's does on its event loop.
//!
//! Owned by [`crate::Database`], whose `optional_row` is the one way reads come here (SQLite
//! only).

use std::path::PathBuf;
use std::sync::Mutex;
#[cfg(test)]
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{Connection, OpenFlags};

use crate::DbError;
use crate::checkpoint::Checkpointer;

/// Connections kept between reads; as many reads as run at once get one (one per runtime thread
/// at most, plus admin callers), so more than this only happens in bursts and is not kept.
const KEPT_CONNECTIONS: usize = 8;

/// Statements kept prepared per connection (rusqlite's cache is keyed by the SQL text).
const PREPARED_STATEMENTS: usize = 8;

/// The direct reader of one SQLite database file.
#[derive(Debug)]
pub(crate) struct DirectReader {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// Which way reads went (tests check the path taken).
    #[cfg(test)]
    taken: PathsTaken,
}

/// The connection this process runs its write transactions through on SQLite (see
/// [`crate::Database::in_transaction`]): one, since this process's writers take turns at the
/// write gate anyway. Opened on first use; dropped after an engine error, so a connection left
/// in a bad state is not reused.
#[derive(Debug)]
pub(crate) struct DirectWriter {
    path: PathBuf,
    conn: Mutex<Option<Connection>>,
    /// Checkpoints the log this writer's commits (and the pool's) append to.
    checkpoints: Checkpointer,
    /// Transactions committed here (tests check the path taken).
    #[cfg(test)]
    committed: AtomicU64,
}

/// A value bound to a statement, so one list of values serves the direct writer and the pool.
#[derive(Clone, Debug)]
pub(crate) enum Value {
    Text(Option<String>),
    Int(Option<i64>),
}

impl Value {
    /// A text that is not NULL.
    pub(crate) fn text(text: impl ToString) -> Self {
        Value::Text(Some(text.to_string()))
    }

    /// An integer that is not NULL.
    pub(crate) fn int(n: i64) -> Self {
        Value::Int(Some(n))
    }
}

/// Text values, one per item: the list an `IN (…)` binds.
pub(crate) fn texts<T: std::fmt::Display>(items: &[T]) -> Vec<Value> {
    items.iter().map(Value::text).collect()
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Value::Text(text) => text.to_sql(),
            Value::Int(n) => n.to_sql(),
        }
    }
}

impl DirectWriter {
    /// A writer of the database file at `path` (which the pool has opened and migrated), with
    /// the thread that checkpoints the file's log (see [`crate::checkpoint`]).
    pub(crate) fn new(path: PathBuf) -> std::io::Result<Self> {
        Ok(Self {
            checkpoints: Checkpointer::start(path.clone())?,
            path,
            conn: Mutex::new(None),
            #[cfg(test)]
            committed: AtomicU64::new(0),
        })
    }

    /// Runs `work` in one immediate transaction, committed when it returns `Ok` with a value
    /// `keep` accepts, rolled back otherwise. Blocks (on SQLite's lock, held by another process,
    /// for up to the busy timeout): run it on the blocking pool, holding the write gate.
    pub(crate) fn transaction<T>(
        &self,
        work: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, DbError>,
        keep: impl FnOnce(&T) -> bool,
    ) -> Result<T, DbError> {
        let mut slot = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let conn = match slot.as_mut() {
            Some(conn) => conn,
            None => slot.insert(open_configured(&self.path)?),
        };
        let outcome = (|| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let value = work(&tx)?;
            if keep(&value) {
                tx.commit()?;
                self.checkpoints.committed();
                #[cfg(test)]
                self.committed.fetch_add(1, Ordering::Relaxed);
            } else {
                tx.rollback()?;
            }
            Ok(value)
        })();
        if let Err(DbError::Sqlite(_)) = &outcome {
            *slot = None;
        }
        outcome
    }

    /// Transactions committed here so far.
    #[cfg(test)]
    pub(crate) fn committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }
}

/// A connection to the database file at `path` set up as the pool's are (busy timeout and
/// [`crate::repo::SQLITE_PRAGMAS`]): the writer's and the checkpoint thread's.
pub(crate) fn open_configured(path: &std::path::Path) -> rusqlite::Result<Connection> {
    let conn = connect(path, crate::repo::SQLITE_BUSY_TIMEOUT)?;
    conn.execute_batch(crate::repo::SQLITE_PRAGMAS)?;
    Ok(conn)
}

/// [`open_configured`], creating the file (tests start from nothing).
#[cfg(test)]
pub(crate) fn open_configured_creating(path: &std::path::Path) -> rusqlite::Result<Connection> {
    Connection::open(path)?.close().map_err(|(_, e)| e)?;
    open_configured(path)
}

/// A connection of this module to the database file at `path` (which the pool created),
/// waiting at most `busy` for another connection's lock, with room for the few statements it
/// runs kept prepared.
fn connect(path: &std::path::Path, busy: std::time::Duration) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(busy)?;
    conn.set_prepared_statement_cache_capacity(PREPARED_STATEMENTS);
    Ok(conn)
}

/// Reads answered with a value here, and reads passed on to the pool.
#[cfg(test)]
#[derive(Debug, Default)]
struct PathsTaken {
    answered: AtomicU64,
    passed_on: AtomicU64,
}

/// What a direct read came to.
pub(crate) enum Answer<T> {
    /// The read's result (a row that does not decode is an error here, as on the pool).
    Done(Result<T, DbError>),
    /// SQLite could not answer at once (busy, or an engine error): ask the pool.
    AskThePool,
}

/// Why a read failed: the engine (then the pool is asked) or a row that does not decode (then
/// that is the answer).
pub(crate) enum ReadFailure {
    /// SQLite refused or failed.
    Engine(rusqlite::Error),
    /// The row's contents are wrong.
    Row(DbError),
}

impl From<rusqlite::Error> for ReadFailure {
    fn from(e: rusqlite::Error) -> Self {
        Self::Engine(e)
    }
}

impl From<DbError> for ReadFailure {
    fn from(e: DbError) -> Self {
        Self::Row(e)
    }
}

impl DirectReader {
    /// A reader of the database file at `path` (which the pool has opened and migrated).
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            idle: Mutex::new(Vec::new()),
            #[cfg(test)]
            taken: PathsTaken::default(),
        }
    }

    /// Runs `read` on one of the kept connections (opening one if none is free).
    pub(crate) fn read<T>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, ReadFailure>,
    ) -> Answer<T> {
        let answer = self.read_on_a_connection(read);
        #[cfg(test)]
        match &answer {
            Answer::Done(Ok(_)) => self.taken.answered.fetch_add(1, Ordering::Relaxed),
            Answer::Done(Err(_)) => 0,
            Answer::AskThePool => self.taken.passed_on.fetch_add(1, Ordering::Relaxed),
        };
        answer
    }

    /// See [`DirectReader::read`].
    fn read_on_a_connection<T>(
        &self,
        read: impl FnOnce(&Connection) -> Result<T, ReadFailure>,
    ) -> Answer<T> {
        let taken = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match taken.map_or_else(|| self.open(), Ok) {
            Ok(conn) => conn,
            Err(e) => {
                tracing::debug!(error = %e, path = %self.path.display(), "direct SQLite read: cannot open; asking the pool");
                return Answer::AskThePool;
            }
        };
        let outcome = read(&conn);
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < KEPT_CONNECTIONS {
            idle.push(conn);
        }
        drop(idle);
        match outcome {
            Ok(value) => Answer::Done(Ok(value)),
            Err(ReadFailure::Row(e)) => Answer::Done(Err(e)),
            Err(ReadFailure::Engine(e)) => {
                tracing::debug!(error = %e, "direct SQLite read failed; asking the pool");
                Answer::AskThePool
            }
        }
    }

    /// Reads answered with a value here so far.
    #[cfg(test)]
    pub(crate) fn answered(&self) -> u64 {
        self.taken.answered.load(Ordering::Relaxed)
    }

    /// Reads passed on to the pool so far.
    #[cfg(test)]
    pub(crate) fn passed_on(&self) -> u64 {
        self.taken.passed_on.load(Ordering::Relaxed)
    }

    /// Opens a connection that only reads and never waits for a lock. The file must exist: the
    /// pool created it. (Opened for writing and told not to write: an SQLite connection opened
    /// read-only cannot always use the WAL's shared-memory index.)
    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = connect(&self.path, std::time::Duration::ZERO)?;
        conn.pragma_update(None, "query_only", true)?;
        Ok(conn)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// A database in WAL mode (as the pool makes it) with one row.
    fn database() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('row');",
        )
        .unwrap();
        (dir, path)
    }

    fn read_row(reader: &DirectReader) -> Answer<String> {
        reader.read(|conn| Ok(conn.query_row("SELECT v FROM t", [], |row| row.get(0))?))
    }

    /// A read never waits for a lock on the caller's thread: while another connection holds
    /// the database exclusively, the reader says at once to ask the pool; afterwards it reads.
    #[test]
    fn a_locked_database_is_not_waited_for() {
        let (_dir, path) = database();
        let reader = DirectReader::new(path.clone());
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; UPDATE t SET v = v;",
            )
            .unwrap();
            locked_tx.send(()).unwrap();
            // Held until the reader has been refused (or 30 s, should it wait after all).
            let _ = done_rx.recv_timeout(Duration::from_secs(30));
            conn.execute_batch("COMMIT").unwrap();
        });
        locked_rx.recv().unwrap();
        let started = Instant::now();
        assert!(matches!(read_row(&reader), Answer::AskThePool));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "waited for the lock"
        );
        done_tx.send(()).unwrap();
        holder.join().unwrap();
        assert!(matches!(read_row(&reader), Answer::Done(Ok(v)) if v == "row"));
        assert_eq!(reader.answered(), 1);
    }

    /// The bundled SQLite is compiled as `.cargo/config.toml` says: without the process-wide
    /// page-cache mutex and allocation statistics. A build that lost those flags (another build
    /// tool, a changed config) fails here.
    #[test]
    fn sqlite_is_built_without_its_process_wide_locks() {
        let conn = Connection::open_in_memory().unwrap();
        let used = |option: &str| -> bool {
            conn.query_row("SELECT sqlite_compileoption_used(?1)", [option], |row| {
                row.get(0)
            })
            .unwrap()
        };
        assert!(!used("ENABLE_MEMORY_MANAGEMENT"));
        assert!(used("DEFAULT_MEMSTATUS=0"));
    }

    /// The reader's connections cannot change the database.
    #[test]
    fn direct_connections_only_read() {
        let (_dir, path) = database();
        let reader = DirectReader::new(path);
        let write = reader.read(|conn| Ok(conn.execute("DELETE FROM t", [])?));
        assert!(matches!(write, Answer::AskThePool));
        assert!(matches!(read_row(&reader), Answer::Done(Ok(v)) if v == "row"));
    }
}
