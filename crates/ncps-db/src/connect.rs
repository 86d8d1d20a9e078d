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
/// when the first request arrives. The Go ncps's spellings are read too: `sqlite3:PATH`,
/// `postgres+unix:///SOCKET_DIR/DB` and `mysql+unix:///SOCKET_PATH/DB` (a Unix socket), and
/// MySQL's `?unix_socket=`.
pub fn parse_database_url(url: &str) -> Result<DatabaseUrl, DbError> {
    let invalid = |reason: &str| DbError::InvalidUrl {
        url: crate::repo::redact(url),
        reason: reason.to_string(),
    };
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("postgres+unix" | "postgresql+unix") => {
            return unix_socket_url(url, "postgresql", "host").map(DatabaseUrl::Postgres);
        }
        Some("mysql+unix" | "mariadb+unix") => {
            return unix_socket_url(url, "mysql", "socket").map(DatabaseUrl::Mysql);
        }
        _ => {}
    }
    if let Some(rest) = url
        .strip_prefix("sqlite:")
        .or_else(|| url.strip_prefix("sqlite3:"))
    {
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
        // The Go ncps (and MySQL's own tools) name the socket `unix_socket`; sqlx `socket`.
        return Ok(DatabaseUrl::Mysql(url.replacen(
            "unix_socket=",
            "socket=",
            1,
        )));
    }
    Err(invalid(
        "expected sqlite:PATH, postgres://…, postgresql://… or mysql://…",
    ))
}

/// `<scheme>+unix://[user[:password]@]/<socket>/<database>[?query]` as the URL sqlx reads:
/// `<scheme>://[user[:password]@]localhost/<database>?<param>=<socket>[&query]`.
fn unix_socket_url(url: &str, scheme: &str, param: &str) -> Result<String, DbError> {
    let invalid = || DbError::InvalidUrl {
        url: crate::repo::redact(url),
        reason: format!(
            "{scheme}+unix URLs name the socket then the database, e.g. \
             {scheme}+unix://user@/run/postgresql/ncps"
        ),
    };
    let rest = url
        .split_once("://")
        .map(|(_, rest)| rest)
        .ok_or_else(invalid)?;
    // No host: the authority is empty or only `user[:password]@`.
    let slash = rest.find('/').ok_or_else(invalid)?;
    let (authority, path_and_query) = rest.split_at(slash);
    let userinfo = match authority {
        "" => "",
        a => a.strip_suffix('@').ok_or_else(invalid)?,
    };
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let (socket, database) = path
        .rsplit_once('/')
        .filter(|(socket, database)| socket.starts_with('/') && !database.is_empty())
        .ok_or_else(invalid)?;
    let socket: String = url::form_urlencoded::byte_serialize(socket.as_bytes()).collect();
    let user = if userinfo.is_empty() {
        String::new()
    } else {
        format!("{userinfo}@")
    };
    let more = if query.is_empty() {
        String::new()
    } else {
        format!("&{query}")
    };
    Ok(format!(
        "{scheme}://{user}localhost/{database}?{param}={socket}{more}"
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

    #[test]
    fn reads_the_go_spellings() {
        assert_eq!(
            parse_database_url("sqlite3:/var/lib/ncps/db/db.sqlite").unwrap(),
            DatabaseUrl::Sqlite("/var/lib/ncps/db/db.sqlite".into())
        );
        assert_eq!(
            parse_database_url("postgres+unix://ncps:p%40ss@/run/postgresql/cache?port=5433")
                .unwrap(),
            DatabaseUrl::Postgres(
                "postgresql://ncps:p%40ss@localhost/cache?host=%2Frun%2Fpostgresql&port=5433"
                    .into()
            )
        );
        assert_eq!(
            parse_database_url("mysql+unix://root@/run/mysqld/mysqld.sock/ncps").unwrap(),
            DatabaseUrl::Mysql(
                "mysql://root@localhost/ncps?socket=%2Frun%2Fmysqld%2Fmysqld.sock".into()
            )
        );
        assert_eq!(
            parse_database_url("mysql://root@localhost/ncps?unix_socket=/run/mysqld/s").unwrap(),
            DatabaseUrl::Mysql("mysql://root@localhost/ncps?socket=/run/mysqld/s".into())
        );
        for bad in [
            "postgres+unix:///ncps",
            "postgres+unix://u@/run/postgresql/",
            "mysql+unix://x",
        ] {
            assert!(parse_database_url(bad).is_err(), "{bad}");
        }
    }
}
