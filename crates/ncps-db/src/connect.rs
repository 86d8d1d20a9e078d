use std::path::PathBuf;

use crate::DbError;

/// A database URL after checking which engine it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// An embedded SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL server (`postgres://` or `postgresql://`).
    Postgres(String),
    /// A MySQL or MariaDB server (`mysql://`, or `mariadb://` as an alias).
    Mysql(String),
}

/// Parses `--cache-database-url`, so a typo fails at start-up with a clear message instead of
/// when the first request arrives.
pub fn parse_database_url(url: &str) -> Result<DatabaseUrl, DbError> {
    let invalid = |reason: &str| DbError::InvalidUrl {
        url: crate::repo::redact(url),
        reason: reason.to_string(),
    };
    if let Some(rest) = url.strip_prefix("sqlite:") {
        let path = rest.strip_prefix("//").unwrap_or(rest);
        let path = path.split('?').next().unwrap_or_default();
        if path.is_empty() {
            return Err(invalid(
                "sqlite URL needs a file path, e.g. sqlite:/var/lib/ncps/db.sqlite",
            ));
        }
        return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(DatabaseUrl::Postgres(url.to_string()));
    }
    if url.starts_with("mysql://") || url.starts_with("mariadb://") {
        return Ok(DatabaseUrl::Mysql(url.to_string()));
    }
    Err(invalid(
        "expected sqlite:PATH, postgres://…, postgresql://… or mysql://…",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_engine() {
        assert_eq!(
            parse_database_url("sqlite:/var/lib/ncps/db.sqlite").unwrap(),
            DatabaseUrl::Sqlite("/var/lib/ncps/db.sqlite".into())
        );
        assert_eq!(
            parse_database_url("sqlite:///tmp/x.db?mode=rwc").unwrap(),
            DatabaseUrl::Sqlite("/tmp/x.db".into())
        );
        assert!(matches!(
            parse_database_url("postgresql://u@h/db").unwrap(),
            DatabaseUrl::Postgres(_)
        ));
        assert!(matches!(
            parse_database_url("mysql://u@h/db").unwrap(),
            DatabaseUrl::Mysql(_)
        ));
        assert!(matches!(
            parse_database_url("mariadb://u@h/db").unwrap(),
            DatabaseUrl::Mysql(_)
        ));
        assert!(parse_database_url("sqlite:").is_err());
        assert!(parse_database_url("redis://h").is_err());
    }
}
