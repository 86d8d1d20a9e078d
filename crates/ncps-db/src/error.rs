/// Why a metadata operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database URL names an engine this build cannot use (yet).
    #[error("database engine {0:?} is not supported yet; use a sqlite:PATH URL")]
    Unsupported(String),
    /// The database URL could not be understood.
    #[error("invalid database URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given (credentials are not logged by callers).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The engine reported an error.
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A row holds a value that does not parse; the database was edited or corrupted.
    #[error("corrupt row in {table}: {reason}")]
    CorruptRow {
        /// The table the row is in.
        table: &'static str,
        /// What failed to parse.
        reason: String,
    },
}
