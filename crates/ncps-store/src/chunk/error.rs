use crate::chunk::ChunkHash;

/// Why chunking, or turning a stored chunk back into bytes, failed. Corruption is always an
/// error: a chunk is never returned with bytes that do not match its hash.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// Chunk sizes outside what FastCDC accepts, or not ordered `min <= avg <= max`.
    #[error("invalid chunk parameters: {0}")]
    InvalidParams(String),
    /// Reading the plain NAR failed.
    #[error("reading the NAR to chunk: {0}")]
    Read(std::io::Error),
    /// zstd refused to compress a chunk (bad level or out of memory).
    #[error("compressing a chunk: {0}")]
    Compress(std::io::Error),
    /// A stored frame is not one valid zstd frame of at most [`MAX_CHUNK_LEN`] bytes.
    ///
    /// [`MAX_CHUNK_LEN`]: crate::chunk::MAX_CHUNK_LEN
    #[error("chunk {hash}: not a valid zstd frame: {reason}")]
    BadFrame {
        /// The chunk the frame was stored as.
        hash: ChunkHash,
        /// What was wrong with it.
        reason: String,
    },
    /// A frame decompressed fine but to bytes of another hash: storage corruption.
    #[error("chunk {expected} is corrupt: its bytes hash to {actual}")]
    Corrupt {
        /// The hash the chunk is stored under.
        expected: ChunkHash,
        /// The hash of what the frame decompressed to.
        actual: ChunkHash,
    },
    /// [`Chunker::finish`](crate::chunk::Chunker::finish) was called before every chunk was
    /// taken, so the totals would not describe the whole NAR.
    #[error("chunking summary requested before the input was exhausted")]
    NotExhausted,
}
