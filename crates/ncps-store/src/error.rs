use std::path::PathBuf;

/// Why a storage operation failed; the cache maps these to 5xx without leaking paths to clients.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage root could not be created or opened.
    #[error("cannot open storage at {path}: {source}")]
    Open {
        /// The directory that was being opened.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// The backend refused or failed an operation.
    #[error("storage backend error: {0}")]
    Backend(#[from] object_store::Error),
    /// Reading a local file that was to be stored failed.
    #[error("reading {path}: {source}")]
    ReadFile {
        /// The file that was being read.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// Writing a file of local storage failed (a full or read-only disk, permissions).
    #[error("writing {path}: {source}")]
    WriteFile {
        /// The file or directory that was being written.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// A chunk could not be made or read back (bad parameters, corrupt frame).
    #[error(transparent)]
    Chunk(#[from] crate::chunk::ChunkError),
}
