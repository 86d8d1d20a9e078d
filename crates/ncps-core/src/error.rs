use ncps_db::DbError;
use ncps_store::StoreError;
use ncps_upstream::UpstreamError;

/// What went wrong serving a request. Each variant maps to exactly one HTTP status in the server.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Neither we nor any upstream has it (every upstream definitively said 404).
    #[error("not found")]
    NotFound,
    /// An upstream could not be asked or gave something we refuse; the client should retry later
    /// or elsewhere, and must not remember this as a miss.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The upstream's NAR did not match its narinfo (hash, size, or compression).
    #[error("upstream NAR failed verification: {0}")]
    Integrity(String),
    /// The client sent something malformed or inconsistent (an upload that does not check out).
    #[error("{0}")]
    BadRequest(String),
    /// The client may not do this (an upload without a trusted signature).
    #[error("{0}")]
    Forbidden(String),
    /// An upload is larger than allowed.
    #[error("upload larger than the limit of {limit} bytes")]
    TooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// The requested byte range lies outside the NAR.
    #[error("range not satisfiable for a NAR of {size} bytes")]
    RangeNotSatisfiable {
        /// Size of the NAR file.
        size: u64,
    },
    /// Our own metadata store failed.
    #[error(transparent)]
    Database(#[from] DbError),
    /// Our own blob storage failed.
    #[error(transparent)]
    Storage(#[from] StoreError),
    /// The lock service that coordinates replicas could not be asked; the request may succeed
    /// once it is back.
    #[error(transparent)]
    Lock(#[from] crate::LockError),
    /// Another replica kept downloading this NAR for longer than a request waits
    /// ([`crate::defaults::DOWNLOAD_WAIT`]).
    #[error("another replica's download of this NAR did not finish in time")]
    WaitedTooLong,
    /// The server runs as much of this kind of work as it may; the request may succeed shortly.
    #[error("{0}")]
    Busy(String),
    /// A failure shared by every client of one download.
    #[error("{0}")]
    Shared(std::sync::Arc<CacheError>),
    /// Local I/O (temporary files) failed.
    #[error("local I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// ENOSPC or EDQUOT.
fn is_full(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{QuotaExceeded, StorageFull};
    matches!(e.kind(), StorageFull | QuotaExceeded)
}

impl CacheError {
    /// Classifies a failure to read or decode NAR bytes: bad bytes (truncated, corrupt, wrong
    /// size or hash) are the source's fault, anything else is ours.
    pub(crate) fn from_read(e: std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        match e.kind() {
            InvalidData | UnexpectedEof | Unsupported | ConnectionAborted | TimedOut => {
                Self::Integrity(e.to_string())
            }
            _ => Self::Io(e),
        }
    }

    /// True when our own storage (a file system, the database's disk, a quota) is full: the
    /// request may succeed once space is freed (507 rather than 500). The cause may be nested
    /// anywhere in the error's chain of sources.
    pub fn is_storage_full(&self) -> bool {
        if let Self::Shared(inner) = self {
            return inner.is_storage_full();
        }
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cause {
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && is_full(io)
            {
                return true;
            }
            if e.downcast_ref::<DbError>()
                .is_some_and(DbError::is_disk_full)
            {
                return true;
            }
            cause = e.source();
        }
        false
    }

    /// True when an upstream timed out (504 rather than 502).
    pub fn is_upstream_timeout(&self) -> bool {
        match self {
            Self::Upstream(e) => e.is_timeout(),
            Self::Shared(e) => e.is_upstream_timeout(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    /// A full disk is recognised wherever it sits in the chain: our temporary files, a store
    /// write, a shared download's failure; other errors are not taken for it.
    #[test]
    fn a_full_disk_is_recognised_through_the_error_chain() {
        let full = || io::Error::from(io::ErrorKind::StorageFull);
        assert!(CacheError::Io(full()).is_storage_full());
        let read = StoreError::ReadFile {
            path: "x".into(),
            source: full(),
        };
        assert!(CacheError::Storage(read).is_storage_full());
        let backend = StoreError::Backend(object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(io::Error::from_raw_os_error(28)),
        });
        assert!(CacheError::Storage(backend).is_storage_full());
        let shared = CacheError::Shared(std::sync::Arc::new(CacheError::Io(full())));
        assert!(shared.is_storage_full());
        assert!(!CacheError::Io(io::Error::from(io::ErrorKind::NotFound)).is_storage_full());
        assert!(!CacheError::NotFound.is_storage_full());
    }
}
