//! SQLite checkpoints on a thread of their own, never inside a writer's commit.
//!
//! In WAL mode a commit appends pages to the write-ahead log; a checkpoint copies them back into
//! the database file and syncs it (with `synchronous = NORMAL` that sync is what makes commits
//! durable). Left to SQLite, the commit that takes the log past 1,000 pages runs the checkpoint
//! itself, before it returns: an eviction batch dirties several thousand pages, so every batch
//! paid a full checkpoint and its fsyncs while holding the write lock, half of the batch's time
//! at a million paths. Every connection is therefore opened with `wal_autocheckpoint = 0`
//! ([`crate::repo::SQLITE_PRAGMAS`]) and this thread checkpoints instead: when the direct writer
//! says it committed ([`Checkpointer::committed`]), at most every [`MIN_GAP`], and every
//! [`IDLE_CHECK`] anyway for commits made through the pool, which do not say so. Writers go on
//! appending while it copies; the log is started over once a checkpoint caught up (forced past
//! [`RESTART_AT`] frames), and trimmed to [`crate::repo::SQLITE_PRAGMAS`]'s `journal_size_limit`
//! then.
//!
//! Owned by the [`crate::direct::DirectWriter`] of one database file; the thread ends when the
//! last clone of the [`crate::Database`] is dropped.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

/// Shortest time between two checkpoints: commits in between are copied back together, and a
/// page several of them changed is written to the database file once.
const MIN_GAP: Duration = Duration::from_millis(200);

/// Longest time a commit that did not say so (one of the pool's) waits for its checkpoint.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Frames (pages) in the log after which it is restarted ([`checkpoint`]): 64 MiB of 4 KiB
/// pages, the size a restarted log is trimmed to. Restarting waits for the writer, so not
/// after every checkpoint: an eviction batch logs 20 MB at a million paths (measured: 4,096
/// frames evicted 5,800-7,000 paths/s, 16,384 frames 6,800-7,400).
const RESTART_AT: i64 = 16384;

/// How long a `RESTART` waits for the writer and for readers of the log before it gives up
/// until the next round: writers wait while it is pending, so never long (a reader that reads
/// for minutes, fsck say, would otherwise stall every writer for SQLite's busy timeout).
const RESTART_PATIENCE: Duration = Duration::from_millis(100);

/// How long after a `RESTART` that gave up the next one is tried: a long reader keeps making
/// it give up, and each try holds writers up for [`RESTART_PATIENCE`].
const RESTART_BACKOFF: Duration = Duration::from_secs(5);

/// The name of the thread, as `top -H` and `/proc/<pid>/task/*/comm` show it (15 bytes at most).
const THREAD_NAME: &str = "ncps-checkpoint";

/// The handle of one database file's checkpoint thread.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    wake: SyncSender<()>,
}

impl Checkpointer {
    /// Starts the thread for the database file at `path` (opened when it first checkpoints).
    pub(crate) fn start(path: PathBuf) -> std::io::Result<Self> {
        Self::restarting_at(path, RESTART_AT)
    }

    /// [`Self::start`], restarting the log past `restart_at` frames (tests make it small).
    fn restarting_at(path: PathBuf, restart_at: i64) -> std::io::Result<Self> {
        let (wake, woken) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || run(&path, restart_at, &woken))?;
        Ok(Self { wake })
    }

    /// Tells the thread a commit added to the log. Never waits: a wake-up already pending
    /// covers this commit too.
    pub(crate) fn committed(&self) {
        match self.wake.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) => {}
            Err(TrySendError::Disconnected(())) => {
                warn!("the SQLite checkpoint thread is gone; the write-ahead log will grow")
            }
        }
    }
}

/// The thread: checkpoints when woken or every [`IDLE_CHECK`], until its handle is dropped.
fn run(path: &Path, restart_at: i64, woken: &Receiver<()>) {
    let mut conn: Option<rusqlite::Connection> = None;
    let mut last = Instant::now();
    let mut failing = false;
    let mut restart = Restart {
        at_frames: restart_at,
        not_before: Instant::now(),
    };
    loop {
        match woken.recv_timeout(IDLE_CHECK) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if let Some(wait) = MIN_GAP.checked_sub(last.elapsed()) {
            std::thread::sleep(wait);
        }
        last = Instant::now();
        match checkpoint(path, &mut restart, &mut conn) {
            Ok(()) => failing = false,
            Err(error) => {
                // The connection is opened anew next time. Said once per run of failures:
                // while they last the log grows.
                if !failing {
                    warn!(path = %path.display(), %error, "SQLite checkpoint failed; retrying every second");
                }
                failing = true;
                conn = None;
            }
        }
    }
}

/// Copies what the log holds back into the database file, as far as readers allow, without
/// waiting for anyone (`PASSIVE`). A log that still holds `restart.at_frames` frames or more after
/// that is checkpointed once more with `RESTART`, which waits for the writer and for readers of
/// the log (at most [`RESTART_PATIENCE`]) so that the next commit starts the log from its
/// beginning: under back-to-back commits a passive checkpoint never finds the quiet moment in
/// which a log restarts, and the log would grow without end. A `RESTART` that gave up (a
/// reader still on the log) is tried again after [`RESTART_BACKOFF`].
fn checkpoint(
    path: &Path,
    restart: &mut Restart,
    conn: &mut Option<rusqlite::Connection>,
) -> rusqlite::Result<()> {
    let conn = match conn {
        Some(conn) => conn,
        None => {
            let opened = crate::direct::open_configured(path)?;
            opened.busy_timeout(RESTART_PATIENCE)?;
            conn.insert(opened)
        }
    };
    let (busy, logged, copied) = run_checkpoint(conn, "PASSIVE")?;
    if logged > 0 {
        debug!(path = %path.display(), busy, logged, copied, "SQLite checkpoint");
    }
    if logged >= restart.at_frames && Instant::now() >= restart.not_before {
        let (busy, logged, copied) = run_checkpoint(conn, "RESTART")?;
        debug!(path = %path.display(), busy, logged, copied, "SQLite log restart");
        if busy {
            restart.not_before = Instant::now() + RESTART_BACKOFF;
        }
    }
    Ok(())
}

/// When the checkpoint thread restarts the log.
struct Restart {
    /// Frames in the log from which on.
    at_frames: i64,
    /// Not before this (see [`RESTART_BACKOFF`]).
    not_before: Instant,
}

/// Runs `PRAGMA wal_checkpoint(<mode>)`: whether it gave up waiting, the frames in the log and
/// the frames copied back.
fn run_checkpoint(conn: &rusqlite::Connection, mode: &str) -> rusqlite::Result<(bool, i64, i64)> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
        Ok((row.get::<_, i64>(0)? != 0, row.get(1)?, row.get(2)?))
    })
}

#[cfg(test)]
mod tests {
    use crate::Database;

    /// Threads of this process named like the checkpoint thread (nextest runs each test in a
    /// process of its own, so they are this test's).
    fn checkpoint_threads() -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .filter(|name| name.trim() == super::THREAD_NAME)
            .count()
    }

    /// A database file at `path` with one table, on a connection set up as ours are (no
    /// automatic checkpoint).
    fn database_with_a_table(path: &std::path::Path) -> rusqlite::Connection {
        let conn = crate::direct::open_configured_creating(path).unwrap();
        conn.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT)")
            .unwrap();
        conn
    }

    /// Commits about a megabyte (256 rows of 4 KB), the `n`th such commit.
    fn commit_a_megabyte(conn: &mut rusqlite::Connection, n: usize) {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        for r in 0..256 {
            tx.execute(
                "INSERT INTO t (k, v) VALUES (?, ?)",
                (format!("{n}-{r}"), "x".repeat(4000)),
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }

    #[test]
    fn the_log_stays_bounded_under_commits_that_do_not_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let mut conn = database_with_a_table(&path);
        let checkpoints = super::Checkpointer::restarting_at(path.clone(), 1024).unwrap();
        // Forty commits of a megabyte each, back to back, on a connection that never
        // checkpoints (as every connection of ours): 40 MB of log unless the thread copies
        // them back and restarts it.
        for n in 0..40 {
            commit_a_megabyte(&mut conn, n);
            checkpoints.committed();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let size = std::fs::metadata(dir.path().join("db.sqlite-wal"))
            .unwrap()
            .len();
        assert!(
            size < 12_000_000,
            "the log grew to {size} bytes: nothing checkpointed and restarted it"
        );
    }

    #[test]
    fn a_long_reader_never_holds_writers_up_for_long() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let mut conn = database_with_a_table(&path);
        // A reader in the middle of a long read (fsck, say): its snapshot keeps the log in use.
        let reader = crate::direct::open_configured(&path).unwrap();
        reader
            .execute_batch("BEGIN; SELECT COUNT(*) FROM t;")
            .unwrap();
        let checkpoints = super::Checkpointer::restarting_at(path.clone(), 1024).unwrap();
        let mut slowest = std::time::Duration::ZERO;
        for n in 0..20 {
            let started = std::time::Instant::now();
            commit_a_megabyte(&mut conn, n);
            slowest = slowest.max(started.elapsed());
            checkpoints.committed();
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // A RESTART waiting for the reader with SQLite's busy timeout would hold a commit up
        // for 10 s.
        assert!(
            slowest < std::time::Duration::from_secs(2),
            "a commit waited {slowest:?} for the checkpoint thread"
        );
        reader.execute_batch("COMMIT").unwrap();
    }

    #[tokio::test]
    async fn the_thread_ends_with_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(&format!(
            "sqlite:{}",
            dir.path().join("db.sqlite").display()
        ))
        .await
        .unwrap();
        assert_eq!(checkpoint_threads(), 1);
        let clone = db.clone();
        drop(db);
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        assert_eq!(checkpoint_threads(), 1, "a clone keeps it");
        drop(clone);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while checkpoint_threads() > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(checkpoint_threads(), 0, "the thread outlived its database");
    }
}
