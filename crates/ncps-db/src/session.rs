//! One write transaction's statements, written once for both kinds of connection.
//!
//! A transaction that reads what it writes (eviction: which NARs did these deletions leave
//! unused?) is an async function over a [`Session`]. On SQLite it runs on the direct writer
//! (`direct.rs`), the whole transaction in one blocking call: sqlx hands every statement, and
//! every few rows of a result, between the caller's task and its worker thread, which left an
//! eviction batch waiting on thread wake-ups more than on SQLite. On PostgreSQL and MySQL it
//! runs through the pool. [`Database::in_transaction`] decides which; the work does not know.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use crate::columns::{Columns, NamedRow};
use crate::dialect::Dialect;
use crate::direct::Value;
use crate::repo::{WriteTx, bind_values};
use crate::{Database, DbError};

/// The statements of one write transaction, with SQL written with `?` placeholders.
pub(crate) trait Session {
    /// The engine's dialect, for the few expressions that differ (see [`Dialect`]).
    fn dialect(&self) -> Dialect;

    /// Runs a statement; returns how many rows it changed.
    fn execute(
        &mut self,
        sql: &str,
        values: &[Value],
    ) -> impl Future<Output = Result<u64, DbError>>;

    /// Runs a query; returns its rows, each decoded by `decode`.
    fn rows<T>(
        &mut self,
        sql: &str,
        values: &[Value],
        decode: impl Fn(&dyn Columns) -> Result<T, DbError>,
    ) -> impl Future<Output = Result<Vec<T>, DbError>>;
}

/// Work done in one write transaction: committed when it returns `Ok` (and [`Self::keep`]
/// agrees), rolled back otherwise.
pub(crate) trait TransactionWork: Send + 'static {
    /// What the work returns.
    type Output: Send + 'static;

    /// Runs the statements.
    fn run<S: Session>(
        self,
        session: &mut S,
    ) -> impl Future<Output = Result<Self::Output, DbError>>;

    /// Whether what the work returned is to be committed (rolled back when not: the work found
    /// it had nothing to do, or lost a race, after writing).
    fn keep(_output: &Self::Output) -> bool {
        true
    }
}

/// A transaction of sqlx's pool.
struct PoolSession<'t> {
    tx: &'t mut WriteTx,
    dialect: Dialect,
}

impl Session for PoolSession<'_> {
    fn dialect(&self) -> Dialect {
        self.dialect
    }

    async fn execute(&mut self, sql: &str, values: &[Value]) -> Result<u64, DbError> {
        let sql = self.dialect.sql(sql);
        let done = bind_values(sqlx::query(&sql), values)
            .execute(&mut **self.tx)
            .await?;
        Ok(done.rows_affected())
    }

    async fn rows<T>(
        &mut self,
        sql: &str,
        values: &[Value],
        decode: impl Fn(&dyn Columns) -> Result<T, DbError>,
    ) -> Result<Vec<T>, DbError> {
        let sql = self.dialect.sql(sql);
        let rows = bind_values(sqlx::query(&sql), values)
            .fetch_all(&mut **self.tx)
            .await?;
        rows.iter().map(|row| decode(row)).collect()
    }
}

/// A transaction of the direct SQLite writer: every call is done when it returns.
struct DirectSession<'t, 'c> {
    tx: &'t rusqlite::Transaction<'c>,
}

impl Session for DirectSession<'_, '_> {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    async fn execute(&mut self, sql: &str, values: &[Value]) -> Result<u64, DbError> {
        let mut statement = self.tx.prepare_cached(sql)?;
        Ok(statement.execute(rusqlite::params_from_iter(values))? as u64)
    }

    async fn rows<T>(
        &mut self,
        sql: &str,
        values: &[Value],
        decode: impl Fn(&dyn Columns) -> Result<T, DbError>,
    ) -> Result<Vec<T>, DbError> {
        let mut statement = self.tx.prepare_cached(sql)?;
        let mut rows = statement.query(rusqlite::params_from_iter(values))?;
        let mut decoded = Vec::new();
        while let Some(row) = rows.next()? {
            decoded.push(decode(&NamedRow::new(row))?);
        }
        Ok(decoded)
    }
}

/// Runs a future that never waits (work over a [`DirectSession`]) to its end.
fn run_to_end<T>(work: impl Future<Output = Result<T, DbError>>) -> Result<T, DbError> {
    match pin!(work).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => result,
        Poll::Pending => Err(DbError::Sqlite(rusqlite::Error::InvalidQuery)),
    }
}

impl Database {
    /// Runs `work` in one write transaction: on SQLite on the direct writer, on the blocking
    /// pool and holding the write gate, to its end even if the caller stops waiting; on the
    /// server engines through the pool.
    pub(crate) async fn in_transaction<W: TransactionWork>(
        &self,
        work: W,
    ) -> Result<W::Output, DbError> {
        let Some(writer) = self.writer.clone() else {
            let mut tx = self.begin().await?;
            let mut session = PoolSession {
                tx: &mut tx,
                dialect: self.dialect,
            };
            let output = work.run(&mut session).await?;
            if W::keep(&output) {
                tx.commit().await?;
            }
            // Dropped uncommitted otherwise: sqlx rolls it back.
            return Ok(output);
        };
        let gate = self.take_write_gate().await;
        let done = tokio::task::spawn_blocking(move || {
            let _gate = gate;
            writer.transaction(
                |tx| run_to_end(work.run(&mut DirectSession { tx })),
                W::keep,
            )
        })
        .await;
        match done {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only when the runtime shuts down before the task ran.
            Err(_) => Err(DbError::Sqlx(sqlx::Error::PoolClosed)),
        }
    }
}
