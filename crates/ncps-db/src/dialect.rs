//! The few places where SQLite, PostgreSQL and MySQL/MariaDB spell the same thing differently.
//!
//! Every query in this crate is written once, with `?` placeholders, and goes through
//! [`Dialect::sql`] before it reaches sqlx's `Any` driver (which passes SQL through untouched).
//! The helpers below produce the fragments that really differ: upserts, integer casts and one
//! string function. Everything else (`||` included: sqlx turns on `PIPES_AS_CONCAT` for MySQL
//! connections, but we use `CONCAT()`, which all three engines have) is shared SQL.

use std::borrow::Cow;

use sqlx::Row;
use sqlx::ValueRef;
use sqlx::any::{AnyRow, AnyTypeInfoKind};

use crate::DbError;
use crate::columns::{Columns, decode_error};

/// Which SQL engine a [`crate::Database`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// SQLite: `?` placeholders, `ON CONFLICT`, `instr`.
    Sqlite,
    /// PostgreSQL: `$1` placeholders, `ON CONFLICT`, `strpos`.
    Postgres,
    /// MySQL and MariaDB: `?` placeholders, `INSERT IGNORE` / `ON DUPLICATE KEY UPDATE`.
    Mysql,
}

impl Dialect {
    /// `sql` with its `?` placeholders in this engine's spelling: `$1, $2, …` for PostgreSQL,
    /// unchanged otherwise. A `?` inside a single-quoted literal is left alone.
    pub(crate) fn sql<'a>(&self, sql: &'a str) -> Cow<'a, str> {
        if *self != Dialect::Postgres || !sql.contains('?') {
            return Cow::Borrowed(sql);
        }
        let mut out = String::with_capacity(sql.len() + 16);
        let mut n = 0;
        let mut in_literal = false;
        for c in sql.chars() {
            match c {
                '\'' => {
                    // An escaped quote ('') toggles twice, which is what we want.
                    in_literal = !in_literal;
                    out.push(c);
                }
                '?' if !in_literal => {
                    n += 1;
                    out.push('$');
                    out.push_str(&n.to_string());
                }
                _ => out.push(c),
            }
        }
        Cow::Owned(out)
    }

    /// `expr` cast to a 64-bit integer. Every `SUM` goes through this: PostgreSQL's
    /// `SUM(bigint)` is `numeric` and MySQL's is `DECIMAL`, which the `Any` driver cannot decode.
    pub(crate) fn bigint(&self, expr: &str) -> String {
        match self {
            Dialect::Mysql => format!("CAST({expr} AS SIGNED)"),
            Dialect::Sqlite | Dialect::Postgres => format!("CAST({expr} AS BIGINT)"),
        }
    }

    /// An insert that does nothing when a row with the same `key` exists. `insert` is the
    /// statement without its leading `INSERT`: `INTO t (a, b) VALUES (?, ?)`.
    ///
    /// MySQL has no `ON CONFLICT … DO NOTHING`; `INSERT IGNORE` is its equivalent and, like
    /// it, reports 0 affected rows when the row existed. (It also turns other errors, such as
    /// an over-long value, into warnings; the values written here are bounded by their types.)
    pub(crate) fn insert_or_ignore(&self, insert: &str, key: &str) -> String {
        match self {
            Dialect::Mysql => format!("INSERT IGNORE {insert}"),
            Dialect::Sqlite | Dialect::Postgres => {
                format!("INSERT {insert} ON CONFLICT ({key}) DO NOTHING")
            }
        }
    }

    /// An insert that, when a row with the same `key` exists, sets each of `columns` to the
    /// value this insert proposed. `insert` is as for [`Dialect::insert_or_ignore`].
    pub(crate) fn upsert(&self, insert: &str, key: &str, columns: &[&str]) -> String {
        let sets: Vec<String> = columns
            .iter()
            .map(|c| format!("{c} = {}", self.excluded(c)))
            .collect();
        format!(
            "INSERT {insert} {} {}",
            self.on_conflict_update(key),
            sets.join(", ")
        )
    }

    /// The clause that starts the update part of an upsert on `key`; the `SET` assignments
    /// follow it (unconditional: MySQL has no `WHERE` here, so a conditional upsert is
    /// written as an UPDATE plus an insert-or-ignore instead).
    pub(crate) fn on_conflict_update(&self, key: &str) -> String {
        match self {
            Dialect::Mysql => "ON DUPLICATE KEY UPDATE".to_string(),
            Dialect::Sqlite | Dialect::Postgres => format!("ON CONFLICT ({key}) DO UPDATE SET"),
        }
    }

    /// In the update part of an upsert, the value the insert proposed for `column`. (MySQL's
    /// `VALUES()` is deprecated in MySQL 8.0.20 in favour of a row alias that MariaDB does not
    /// accept; it still works in both.)
    pub(crate) fn excluded(&self, column: &str) -> String {
        match self {
            Dialect::Mysql => format!("VALUES({column})"),
            Dialect::Sqlite | Dialect::Postgres => format!("excluded.{column}"),
        }
    }

    /// The 1-based position of `needle` in `haystack`, 0 when absent.
    pub(crate) fn strpos(&self, haystack: &str, needle: &str) -> String {
        match self {
            Dialect::Postgres => format!("strpos({haystack}, {needle})"),
            Dialect::Sqlite | Dialect::Mysql => format!("instr({haystack}, {needle})"),
        }
    }

    /// Seconds since the epoch of `_sqlx_migrations.installed_on`, whose type each sqlx
    /// driver chooses (SQLite text, PostgreSQL `timestamptz`, MySQL `TIMESTAMP`).
    pub(crate) fn migration_installed_at(&self) -> String {
        let expr = match self {
            Dialect::Sqlite => "strftime('%s', installed_on)",
            Dialect::Postgres => "EXTRACT(EPOCH FROM installed_on)",
            Dialect::Mysql => "UNIX_TIMESTAMP(installed_on)",
        };
        self.bigint(expr)
    }

    /// The clause that ends a `SELECT` whose rows must stay as read until the transaction
    /// ends. SQLite has none and needs none: one write transaction runs at a time.
    pub(crate) fn lock_selected_rows(&self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres | Dialect::Mysql => " FOR UPDATE",
        }
    }

    /// The statement that starts a read-write transaction. SQLite's default `BEGIN` takes the
    /// write lock only at the first write, and a transaction that read first then fails with
    /// "database is locked" without waiting when another connection wrote meanwhile;
    /// `BEGIN IMMEDIATE` takes the lock up front and waits for it (busy timeout). The server
    /// engines lock rows as they go.
    pub(crate) fn begin_write(&self) -> Option<&'static str> {
        match self {
            Dialect::Sqlite => Some("BEGIN IMMEDIATE"),
            Dialect::Postgres | Dialect::Mysql => None,
        }
    }
}

/// `(?, ?, …)` with `columns` placeholders, for one row of a multi-row `VALUES` or an `IN`
/// list. (`QueryBuilder<Any>` always writes `?`, which PostgreSQL does not accept, so lists
/// are written with this and bound in a loop; [`Dialect::sql`] numbers them afterwards.)
pub(crate) fn placeholders(columns: usize) -> String {
    let mut s = String::with_capacity(2 + columns * 3);
    s.push('(');
    for i in 0..columns {
        if i > 0 {
            s.push_str(", ");
        }
        s.push('?');
    }
    s.push(')');
    s
}

/// `(?, ?), (?, ?), …`: `rows` rows of `columns` placeholders, for a multi-row `VALUES`.
pub(crate) fn values_rows(rows: usize, columns: usize) -> String {
    let row = placeholders(columns);
    vec![row; rows].join(", ")
}

/// A text column as a `String`, whatever the engine calls it on the wire: MySQL sends `TEXT`
/// columns with the BLOB type code, which the `Any` driver passes on as bytes.
pub(crate) fn opt_text(row: &AnyRow, column: &str) -> Result<Option<String>, DbError> {
    let raw = row.try_get_raw(column)?;
    if raw.is_null() {
        return Ok(None);
    }
    if raw.type_info().kind() == AnyTypeInfoKind::Blob {
        let bytes: Vec<u8> = row.try_get(column)?;
        return String::from_utf8(bytes)
            .map(Some)
            .map_err(|e| decode_error(column, Box::new(e)));
    }
    Ok(Some(row.try_get(column)?))
}

/// A non-null text column (see [`opt_text`]).
pub(crate) fn text(row: &AnyRow, column: &str) -> Result<String, DbError> {
    Columns::text(row, column)
}

/// Binds each of `items`, in order (the SQL has a `?` for each, from [`placeholders`]).
pub(crate) fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    items: &'q [String],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for item in items {
        q = q.bind(item);
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres_only() {
        let q = "SELECT '?' FROM t WHERE a = ? AND b IN (?, ?) AND c = 'it''s ?'";
        assert_eq!(Dialect::Sqlite.sql(q), q);
        assert_eq!(Dialect::Mysql.sql(q), q);
        assert_eq!(
            Dialect::Postgres.sql(q),
            "SELECT '?' FROM t WHERE a = $1 AND b IN ($2, $3) AND c = 'it''s ?'"
        );
    }

    #[test]
    fn lists_and_upserts() {
        assert_eq!(placeholders(3), "(?, ?, ?)");
        assert_eq!(values_rows(2, 2), "(?, ?), (?, ?)");
        let ins = "INTO t (k, v) VALUES (?, ?)";
        assert_eq!(
            Dialect::Postgres.upsert(ins, "k", &["v"]),
            "INSERT INTO t (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v"
        );
        assert_eq!(
            Dialect::Mysql.upsert(ins, "k", &["v"]),
            "INSERT INTO t (k, v) VALUES (?, ?) ON DUPLICATE KEY UPDATE v = VALUES(v)"
        );
        assert_eq!(
            Dialect::Mysql.insert_or_ignore(ins, "k"),
            "INSERT IGNORE INTO t (k, v) VALUES (?, ?)"
        );
        assert_eq!(
            Dialect::Sqlite.insert_or_ignore(ins, "k"),
            "INSERT INTO t (k, v) VALUES (?, ?) ON CONFLICT (k) DO NOTHING"
        );
    }
}
