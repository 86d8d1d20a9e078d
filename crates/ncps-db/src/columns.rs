//! A result row's columns by name, whoever read the row: the row decoders a hot read shares
//! (narinfo and NAR records) take any [`Columns`], so sqlx's rows and the direct SQLite reader's
//! rows (`direct.rs`) decode by the same rules.

use rusqlite::types::ValueRef;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::DbError;
use crate::dialect;

/// Named columns of one row, as the decoders need them.
pub(crate) trait Columns {
    /// A text column; `None` when NULL.
    fn opt_text(&self, column: &str) -> Result<Option<String>, DbError>;

    /// An integer column; `None` when NULL.
    fn opt_i64(&self, column: &str) -> Result<Option<i64>, DbError>;

    /// A text column that must not be NULL.
    fn text(&self, column: &str) -> Result<String, DbError> {
        self.opt_text(column)?
            .ok_or_else(|| decode_error(column, "unexpected NULL".into()))
    }

    /// An integer column that must not be NULL.
    fn i64(&self, column: &str) -> Result<i64, DbError> {
        self.opt_i64(column)?
            .ok_or_else(|| decode_error(column, "unexpected NULL".into()))
    }
}

/// A column that does not hold what its decoder expects, reported the way sqlx reports it.
pub(crate) fn decode_error(column: &str, source: sqlx::error::BoxDynError) -> DbError {
    DbError::Sqlx(sqlx::Error::ColumnDecode {
        index: column.to_string(),
        source,
    })
}

impl Columns for AnyRow {
    fn opt_text(&self, column: &str) -> Result<Option<String>, DbError> {
        dialect::opt_text(self, column)
    }

    fn opt_i64(&self, column: &str) -> Result<Option<i64>, DbError> {
        Ok(self.try_get(column)?)
    }
}

/// A row of the direct SQLite reader (`direct.rs`) with its columns' names, asked of SQLite
/// once per row: rusqlite's lookup by name asks for every column's name again on every lookup,
/// which costs more than the lookup's data on a hot read.
pub(crate) struct NamedRow<'r> {
    row: &'r rusqlite::Row<'r>,
    names: Vec<&'r str>,
}

impl<'r> NamedRow<'r> {
    /// `row`, with its statement's column names.
    pub(crate) fn new(row: &'r rusqlite::Row<'r>) -> Self {
        let names = row.as_ref().column_names();
        Self { row, names }
    }

    /// The value of `column`.
    fn value(&self, column: &str) -> Result<ValueRef<'r>, DbError> {
        let index = self
            .names
            .iter()
            .position(|&name| name == column)
            .ok_or_else(|| decode_error(column, "no such column".into()))?;
        self.row
            .get_ref(index)
            .map_err(|e| decode_error(column, Box::new(e)))
    }
}

impl Columns for NamedRow<'_> {
    fn opt_text(&self, column: &str) -> Result<Option<String>, DbError> {
        match self.value(column)? {
            ValueRef::Null => Ok(None),
            // SQLite stores what it is given; a text column written as a blob reads as one.
            ValueRef::Text(bytes) | ValueRef::Blob(bytes) => std::str::from_utf8(bytes)
                .map(|s| Some(s.to_string()))
                .map_err(|e| decode_error(column, Box::new(e))),
            other => Err(decode_error(
                column,
                format!("expected text, found {:?}", other.data_type()).into(),
            )),
        }
    }

    fn opt_i64(&self, column: &str) -> Result<Option<i64>, DbError> {
        match self.value(column)? {
            ValueRef::Null => Ok(None),
            ValueRef::Integer(n) => Ok(Some(n)),
            other => Err(decode_error(
                column,
                format!("expected an integer, found {:?}", other.data_type()).into(),
            )),
        }
    }
}
