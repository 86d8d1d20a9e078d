//! Turning a NAR stream (an upstream body or a stored whole file, in any compression) into
//! stored chunks, in one streaming pass with bounded memory.
//!
//! A blocking thread decompresses and cuts the NAR with FastCDC, compressing each chunk as its
//! own zstd frame; the async side uploads the chunks that storage does not have yet (a few at a
//! time, in order) and, when a client is waiting, appends each frame to the download's file so
//! the client receives the NAR as the chunks are produced.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use ncps_db::ChunkRef;
use ncps_nix::{Compression, Sha256Hash};
use ncps_store::chunk::{Chunk, ChunkError, ChunkParams, Chunker, ChunkingSummary};
use ncps_store::{BlobStore, StoreError};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::download::Download;
use super::verify::Expected;
use crate::CacheError;
use crate::codec::{Codec, StreamReader};

/// Chunk uploads in flight at once per NAR: enough to hide a remote store's latency.
const UPLOAD_CONCURRENCY: usize = 8;
/// Chunks queued between the chunker thread and the uploader.
const CHUNK_QUEUE: usize = 8;

/// How chunks are cut and compressed.
#[derive(Clone, Copy, Debug)]
pub struct ChunkSettings {
    /// FastCDC sizes.
    pub params: ChunkParams,
    /// zstd level of each chunk's frame.
    pub zstd_level: i32,
}

/// What chunking a NAR produced.
pub(crate) struct Chunked {
    /// The NAR's chunks, in order, with their frame sizes.
    pub refs: Vec<ChunkRef>,
    /// Hashes and sizes of the plain NAR and of our frames concatenated.
    pub summary: ChunkingSummary,
    /// SHA-256 and size of the source stream as it came in (the compressed file).
    pub source_hash: Sha256Hash,
    /// Size of the source stream.
    pub source_size: u64,
}

/// A client-visible copy of the frames: the download's file, followed by its readers.
pub(crate) struct FrameSink {
    pub download: Arc<Download>,
    pub file: tokio::fs::File,
    pub written: u64,
}

impl FrameSink {
    async fn append(&mut self, frame: &[u8]) -> io::Result<()> {
        self.file.write_all(frame).await?;
        // tokio's File finishes writes in the background; flush so readers can see the bytes.
        self.file.flush().await?;
        self.written += frame.len() as u64;
        self.download.advance(self.written);
        Ok(())
    }
}

#[derive(Default)]
struct Tally {
    sha: Sha256,
    len: u64,
}

/// Counts and hashes the bytes read through it (the source file's FileHash/FileSize).
struct TallyReader<R> {
    inner: R,
    tally: Arc<Mutex<Tally>>,
}

impl<R: Read> Read for TallyReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut t = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        t.sha.update(&buf[..n]);
        t.len += n as u64;
        Ok(n)
    }
}

fn chunk_error(e: ChunkError) -> CacheError {
    match e {
        ChunkError::Read(io) => CacheError::from_read(io),
        other => CacheError::Storage(StoreError::Chunk(other)),
    }
}

/// Chunks the NAR in `source` (compressed with `compression`) and stores every chunk. Reads at
/// most `nar_size + 1` plain bytes, so a source larger than its narinfo says is caught without
/// reading it all. The caller checks the summary against the narinfo before committing.
async fn chunk_nar(
    store: &BlobStore,
    source: BoxStream<'static, io::Result<Bytes>>,
    compression: Compression,
    nar_size: u64,
    settings: ChunkSettings,
    mut sink: Option<FrameSink>,
) -> Result<Chunked, CacheError> {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let reader = TallyReader {
        inner: StreamReader::spawn(source),
        tally: tally.clone(),
    };
    let (chunk_tx, chunk_rx) = mpsc::channel::<Chunk>(CHUNK_QUEUE);
    let producer = tokio::task::spawn_blocking(move || -> Result<ChunkingSummary, CacheError> {
        let plain = Codec::require(compression)
            .and_then(|codec| codec.decoder(reader))
            .map_err(CacheError::from_read)?
            .take(nar_size.saturating_add(1));
        let mut chunker =
            Chunker::new(plain, settings.params, settings.zstd_level).map_err(chunk_error)?;
        while let Some(chunk) = chunker.next_chunk().map_err(chunk_error)? {
            if chunk_tx.blocking_send(chunk).is_err() {
                return Err(CacheError::Io(io::Error::other("chunk upload stopped")));
            }
        }
        chunker.finish().map_err(chunk_error)
    });

    let store = store.clone();
    let mut uploads = futures::stream::unfold(chunk_rx, |mut rx| async move {
        rx.recv().await.map(|c| (c, rx))
    })
    .map(move |chunk| {
        let store = store.clone();
        async move {
            if !store.has_chunk(&chunk.hash).await? {
                store.put_chunk(&chunk.hash, chunk.frame.clone()).await?;
            }
            Ok::<_, CacheError>(chunk)
        }
    })
    .buffered(UPLOAD_CONCURRENCY)
    .boxed();
    let mut refs = Vec::new();
    while let Some(chunk) = uploads.next().await {
        let chunk = chunk?;
        if let Some(sink) = sink.as_mut() {
            sink.append(&chunk.frame).await?;
        }
        refs.push(ChunkRef {
            hash: chunk.hash,
            plain_size: u64::from(chunk.plain_len),
            stored_size: chunk.frame.len() as u64,
        });
    }
    drop(uploads);
    let summary = producer.await.map_err(io::Error::other)??;
    let tally = std::mem::take(&mut *tally.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(Chunked {
        refs,
        summary,
        source_hash: Sha256Hash::from_bytes(tally.sha.finalize().into()),
        source_size: tally.len,
    })
}

/// Chunks the NAR in `source` (compressed with `expected.compression`), stores every chunk,
/// and checks the result against every promise in `expected` (the source file's hash and size
/// when known, the NAR's hash and size). Nothing is recorded: the caller commits the chunk list
/// once this returned `Ok`.
pub(crate) async fn chunk_verified(
    store: &BlobStore,
    source: BoxStream<'static, io::Result<Bytes>>,
    expected: &Expected,
    settings: ChunkSettings,
    sink: Option<FrameSink>,
) -> Result<Chunked, CacheError> {
    let nar_size = expected.nar_size.unwrap_or(expected.max_size);
    let chunked = chunk_nar(
        store,
        source,
        expected.compression,
        nar_size,
        settings,
        sink,
    )
    .await?;
    let s = &chunked.summary;
    let fail = |m: String| Err(CacheError::Integrity(m));
    if let Some(size) = expected.file_size.filter(|&z| z != chunked.source_size) {
        return fail(format!(
            "got {} bytes, FileSize says {size}",
            chunked.source_size
        ));
    }
    if let Some(hash) = expected.file_hash.filter(|h| *h != chunked.source_hash) {
        return fail(format!(
            "FileHash mismatch: narinfo says {hash}, got {}",
            chunked.source_hash
        ));
    }
    if let Some(size) = expected.nar_size.filter(|&z| z != s.nar_size) {
        return fail(format!(
            "NarSize mismatch: narinfo says {size}, got {}",
            s.nar_size
        ));
    }
    if let Some(hash) = expected.nar_hash.filter(|h| *h != s.nar_hash) {
        return fail(format!(
            "NarHash mismatch: narinfo says {hash}, got {}",
            s.nar_hash
        ));
    }
    Ok(chunked)
}
