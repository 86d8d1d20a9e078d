//! Turning a NAR stream (an upstream body or a stored whole file, in any compression) into
//! stored chunks, in one streaming pass with bounded memory.
//!
//! A blocking thread decompresses and cuts the NAR with FastCDC, compressing each chunk as its
//! own zstd frame; the async side holds the chunks against the collector a batch at a time,
//! writes those storage does not have yet and, when a client is waiting, appends the batch's
//! frames to the download's file so the client receives the NAR as the chunks are produced.
//!
//! Holding comes first ([`ncps_db::Database::hold_chunks`]): a chunk found in storage may be
//! one the collector is about to delete, and a chunk written may be one whose old copy it is
//! deleting. Once held, the collector leaves a chunk alone until the list naming it commits.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use ncps_db::{ChunkRef, Database};
use ncps_nix::{Compression, Sha256Hash};
use ncps_store::chunk::{
    Chunk, ChunkError, ChunkParams, Chunker, ChunkingSummary, compress_chunk, decompress_chunk,
};
use ncps_store::{BlobStore, StoreError};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::download::Download;
use super::verify::Expected;
use crate::CacheError;
use crate::codec::{Codec, StreamReader};
use crate::priority::{Priority, run_blocking};

/// Batches queued between the chunker thread and the uploader.
const BATCH_QUEUE: usize = 2;
/// Most chunks in one batch: held in one database transaction, written in one blocking call.
const HOLD_BATCH: usize = 32;
/// A batch is sent once its frames reach this size (or at `HOLD_BATCH` chunks, or at the end
/// of the NAR), so memory stays bounded whatever the chunk sizes. The chunker thread makes
/// whole batches: sending each chunk as it was cut cost a wake-up, a transaction and two
/// blocking hand-offs per chunk whenever storage kept up with the chunker.
const BATCH_FRAME_BYTES: usize = 1 << 20;
/// A batch is also sent once it has been forming this long (since the chunk before it was
/// cut), so a slow upstream still streams to the client chunk by chunk.
const BATCH_WAIT: Duration = Duration::from_millis(20);
/// How long an ingest waits for the collector to finish deleting a chunk it needs again.
const CLAIMED_CHUNK_WAIT: Duration = Duration::from_secs(30);

/// How chunks are cut and compressed.
#[derive(Clone, Copy, Debug)]
pub struct ChunkSettings {
    /// FastCDC sizes.
    pub params: ChunkParams,
    /// zstd level of each chunk's frame.
    pub zstd_level: i32,
    /// Whether a client waits for the chunks (eager ingest, migrations) or nobody does (lazy
    /// chunking, which then yields every core to serving).
    pub priority: Priority,
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
    pub file: Arc<std::fs::File>,
    pub written: u64,
}

impl FrameSink {
    /// Appends a batch of frames in one blocking call (one hand-off per batch, not one write,
    /// flush and hand-off per frame), then tells the readers.
    async fn append(&mut self, frames: Vec<Bytes>) -> io::Result<()> {
        let file = Arc::clone(&self.file);
        let appended: u64 = frames.iter().map(|f| f.len() as u64).sum();
        tokio::task::spawn_blocking(move || {
            frames
                .iter()
                .try_for_each(|frame| (&*file).write_all(frame))
        })
        .await
        .map_err(io::Error::other)??;
        self.written += appended;
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
    db: &Database,
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
    let (batch_tx, batch_rx) = mpsc::channel::<Vec<Chunk>>(BATCH_QUEUE);
    let producer = run_blocking(settings.priority, move || {
        let plain = Codec::require(compression)
            .and_then(|codec| codec.decoder(reader))
            .map_err(CacheError::from_read)?
            .take(nar_size.saturating_add(1));
        cut_in_batches(plain, settings, &batch_tx, BATCH_WAIT)
    });

    let (store, db) = (store.clone(), db.clone());
    let mut uploads = futures::stream::unfold(batch_rx, |mut rx| async move {
        rx.recv().await.map(|batch| (batch, rx))
    })
    .map(move |batch| {
        let (store, db) = (store.clone(), db.clone());
        async move {
            hold_and_store(&store, &db, &batch, settings.zstd_level).await?;
            Ok::<_, CacheError>(batch)
        }
    })
    .buffered(2)
    .boxed();
    let mut refs = Vec::new();
    while let Some(batch) = uploads.next().await {
        let batch = batch?;
        refs.extend(batch.iter().map(chunk_ref));
        if let Some(sink) = sink.as_mut() {
            sink.append(batch.into_iter().map(|c| c.frame).collect())
                .await?;
        }
    }
    drop(uploads);
    let summary = producer.await??;
    let tally = std::mem::take(&mut *tally.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(Chunked {
        refs,
        summary,
        source_hash: Sha256Hash::from_bytes(tally.sha.finalize().into()),
        source_size: tally.len,
    })
}

/// Cuts and compresses `plain` (on the chunker's blocking thread) and sends the chunks in
/// batches of [`HOLD_BATCH`] chunks or [`BATCH_FRAME_BYTES`] of frames; sooner when bytes
/// come slowly (the batch has been forming for `wait`, see [`BATCH_WAIT`]); the rest at the
/// end.
fn cut_in_batches(
    plain: impl Read,
    settings: ChunkSettings,
    batches: &mpsc::Sender<Vec<Chunk>>,
    wait: Duration,
) -> Result<ChunkingSummary, CacheError> {
    let send = |batch: Vec<Chunk>| {
        batches
            .blocking_send(batch)
            .map_err(|_| CacheError::Io(io::Error::other("chunk upload stopped")))
    };
    let mut chunker =
        Chunker::new(plain, settings.params, settings.zstd_level).map_err(chunk_error)?;
    let (mut batch, mut frame_bytes) = (Vec::with_capacity(HOLD_BATCH), 0);
    let mut last_cut = Instant::now();
    let mut forming_since = last_cut;
    while let Some(chunk) = chunker.next_chunk().map_err(chunk_error)? {
        if batch.is_empty() {
            forming_since = last_cut;
        }
        last_cut = Instant::now();
        frame_bytes += chunk.frame.len();
        batch.push(chunk);
        if batch.len() == HOLD_BATCH
            || frame_bytes >= BATCH_FRAME_BYTES
            || last_cut - forming_since >= wait
        {
            send(std::mem::replace(
                &mut batch,
                Vec::with_capacity(HOLD_BATCH),
            ))?;
            frame_bytes = 0;
        }
    }
    if !batch.is_empty() {
        send(batch)?;
    }
    chunker.finish().map_err(chunk_error)
}

/// A chunk as its list records it.
fn chunk_ref(chunk: &Chunk) -> ChunkRef {
    ChunkRef {
        hash: chunk.hash,
        plain_size: u64::from(chunk.plain_len),
        stored_size: chunk.frame.len() as u64,
    }
}

/// Holds `batch` against the collector, waiting while it finishes deleting chunks it had
/// claimed, then writes the chunks storage does not have. A chunk whose row records another
/// zstd level than `zstd_level` (another writer made it first: eager and lazy chunking, a
/// migration beside a server) is written at the row's level, so its object always has the size
/// the row records whoever writes it.
async fn hold_and_store(
    store: &BlobStore,
    db: &Database,
    batch: &[Chunk],
    zstd_level: i32,
) -> Result<(), CacheError> {
    let mut pending: Vec<ChunkRef> = batch.iter().map(chunk_ref).collect();
    let mut other_levels = HashMap::new();
    let give_up = Instant::now() + CLAIMED_CHUNK_WAIT;
    loop {
        let held = db.hold_chunks(&pending, zstd_level).await?;
        other_levels.extend(held.other_levels);
        if held.claimed.is_empty() {
            break;
        }
        if Instant::now() >= give_up {
            return Err(CacheError::Busy(format!(
                "{} chunks of this NAR are being deleted by the chunk collector",
                held.claimed.len()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        pending.retain(|c| held.claimed.contains(&c.hash));
    }
    let mut frames = Vec::with_capacity(batch.len());
    for c in batch {
        let frame = match other_levels.get(&c.hash) {
            Some(&level) if !store.has_chunk(&c.hash).await? => frame_at_level(c, level).await?,
            _ => c.frame.clone(),
        };
        frames.push((c.hash, frame));
    }
    Ok(store.put_missing_chunks(frames).await?)
}

/// `chunk`'s frame compressed at zstd `level` instead of the chunker's (checked against the
/// chunk's address on the way).
async fn frame_at_level(chunk: &Chunk, level: i32) -> Result<Bytes, CacheError> {
    let (hash, frame) = (chunk.hash, chunk.frame.clone());
    tokio::task::spawn_blocking(move || {
        let plain = decompress_chunk(&hash, &frame)?;
        compress_chunk(&plain, level)
    })
    .await
    .map_err(io::Error::other)?
    .map_err(chunk_error)
}

/// Chunks the NAR in `source` (compressed with `expected.compression`), stores every chunk,
/// and checks the result against every promise in `expected` (the source file's hash and size
/// when known, the NAR's hash and size). Nothing is recorded: the caller commits the chunk list
/// once this returned `Ok`.
pub(crate) async fn chunk_verified(
    store: &BlobStore,
    db: &Database,
    source: BoxStream<'static, io::Result<Bytes>>,
    expected: &Expected,
    settings: ChunkSettings,
    sink: Option<FrameSink>,
) -> Result<Chunked, CacheError> {
    let nar_size = expected.nar_size.unwrap_or(expected.max_size);
    let chunked = chunk_nar(
        store,
        db,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{compressible, local_db_and_store, noise};

    /// Chunks of 1/4/16 KiB at `zstd_level`, so small test NARs make many of them.
    fn small_chunks(zstd_level: i32) -> ChunkSettings {
        ChunkSettings {
            params: ChunkParams {
                min: 1024,
                avg: 4096,
                max: 16384,
            },
            zstd_level,
            priority: Priority::Client,
        }
    }

    fn pieces(file: &[u8]) -> BoxStream<'static, io::Result<Bytes>> {
        let pieces: Vec<io::Result<Bytes>> = file
            .chunks(64 * 1024)
            .map(|p| Ok(Bytes::copy_from_slice(p)))
            .collect();
        futures::stream::iter(pieces).boxed()
    }

    /// The chunker thread sends whole batches (a transaction and a blocking hand-off each),
    /// never a chunk at a time: every batch but the last is full by count or by frame bytes,
    /// none goes past its bounds by more than one chunk, and together they are the NAR's
    /// chunks in order.
    #[test]
    fn chunks_leave_the_chunker_in_whole_batches() {
        let settings = small_chunks(1);
        // Compressible (many small frames: batches full by count) then noise (frames as large
        // as their chunks: batches full by bytes).
        let mut nar = compressible(600_000);
        nar.extend(noise(2, 3 << 20));
        let (tx, mut rx) = mpsc::channel(BATCH_QUEUE);
        let cutter = std::thread::spawn({
            let nar = nar.clone();
            // No deadline: a loaded test machine must not make a batch leave early.
            move || cut_in_batches(&nar[..], settings, &tx, Duration::from_secs(3600))
        });
        let mut batches = Vec::new();
        while let Some(batch) = rx.blocking_recv() {
            batches.push(batch);
        }
        let summary = cutter.join().unwrap().expect("the NAR is cut");
        assert_eq!(summary.nar_hash, Sha256Hash::digest(&nar));
        assert!(batches.len() > 4, "{} batches", batches.len());
        let frame_bytes = |b: &[Chunk]| b.iter().map(|c| c.frame.len()).sum::<usize>();
        for batch in &batches[..batches.len() - 1] {
            let bytes = frame_bytes(batch);
            assert!(
                batch.len() == HOLD_BATCH || bytes >= BATCH_FRAME_BYTES,
                "a batch of {} chunks and {bytes} frame bytes left early",
                batch.len()
            );
            let last = batch.last().unwrap().frame.len();
            assert!(batch.len() <= HOLD_BATCH && bytes - last < BATCH_FRAME_BYTES);
        }
        let mut expected = Chunker::new(&nar[..], settings.params, 1).unwrap();
        for chunk in batches.iter().flatten() {
            let next = expected.next_chunk().unwrap().expect("no more chunks");
            assert_eq!(chunk.hash, next.hash);
        }
        assert!(
            expected.next_chunk().unwrap().is_none(),
            "chunks went missing"
        );
    }

    /// Bytes that arrive slowly (a slow upstream) leave the chunker a chunk at a time, so the
    /// client following the download is not held back until a batch fills.
    #[test]
    fn a_slow_source_streams_chunk_by_chunk() {
        struct Slow<'a>(&'a [u8]);
        impl Read for Slow<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                std::thread::sleep(BATCH_WAIT);
                let n = buf.len().min(self.0.len()).min(4096);
                let (head, rest) = self.0.split_at(n);
                buf[..n].copy_from_slice(head);
                self.0 = rest;
                Ok(n)
            }
        }
        let settings = small_chunks(1);
        let nar = noise(3, 64 * 1024);
        let (tx, mut rx) = mpsc::channel(BATCH_QUEUE);
        let cutter = std::thread::spawn({
            let nar = nar.clone();
            move || cut_in_batches(Slow(&nar), settings, &tx, BATCH_WAIT)
        });
        let mut sizes = Vec::new();
        while let Some(batch) = rx.blocking_recv() {
            sizes.push(batch.len());
        }
        cutter.join().unwrap().expect("the NAR is cut");
        assert!(sizes.len() > 2, "batches of {sizes:?} chunks");
        assert!(
            sizes.iter().all(|&n| n == 1),
            "slow bytes waited for other chunks: batches of {sizes:?} chunks"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_nar_is_chunked_and_checked_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (db, store) = local_db_and_store(dir.path()).await;
        // Several batches of chunks, so frames and chunk files are written batch by batch.
        let nar = noise(1, 8 << 20);
        let file = zstd::encode_all(&nar[..], 1).unwrap();
        let expected = Expected::exactly(
            Compression::Zstd,
            Some(Sha256Hash::digest(&file)),
            Some(file.len() as u64),
            Sha256Hash::digest(&nar),
            nar.len() as u64,
        );
        let settings = ChunkSettings {
            params: ChunkParams::default(),
            zstd_level: 1,
            priority: Priority::Client,
        };

        let chunked = chunk_verified(&store, &db, pieces(&file), &expected, settings, None)
            .await
            .expect("a matching NAR is chunked");
        assert_eq!(
            (chunked.source_hash, chunked.source_size),
            (Sha256Hash::digest(&file), file.len() as u64),
            "the source file's tally"
        );
        let mut plain = Vec::with_capacity(nar.len());
        for chunk in &chunked.refs {
            let frame = store
                .read_chunk(&chunk.hash)
                .await
                .unwrap()
                .expect("stored");
            plain.extend_from_slice(&zstd::decode_all(&frame[..]).unwrap());
        }
        assert!(plain == nar, "the stored chunks, in order, are not the NAR");

        let wrong_file = Expected {
            file_hash: Some(Sha256Hash::digest(b"another file")),
            ..expected.clone()
        };
        let refused = chunk_verified(&store, &db, pieces(&file), &wrong_file, settings, None).await;
        assert!(
            matches!(&refused, Err(CacheError::Integrity(m)) if m.contains("FileHash")),
            "{:?}",
            refused.err()
        );
        let mut cut = file.clone();
        cut.truncate(file.len() - 1000);
        let refused = chunk_verified(&store, &db, pieces(&cut), &expected, settings, None).await;
        assert!(refused.is_err(), "a file cut short was accepted");
    }

    /// A writer killed after holding its chunks (rows recorded at its level, objects never
    /// written) is followed by one at another level: the second writes every frame at the level
    /// the rows record, so each object has the size its row says and the spliced NAR is whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunks_recorded_at_another_level_are_written_at_that_level() {
        let dir = tempfile::tempdir().unwrap();
        let (db, store) = local_db_and_store(dir.path()).await;
        let nar = compressible(300_000);
        let expected = Expected::plain_nar(&nar);
        let first = chunk_verified(&store, &db, pieces(&nar), &expected, small_chunks(19), None)
            .await
            .unwrap();
        for c in &first.refs {
            store.delete_chunk(&c.hash).await.unwrap();
        }

        let second = chunk_verified(&store, &db, pieces(&nar), &expected, small_chunks(1), None)
            .await
            .unwrap();
        assert!(
            db.commit_chunks(
                &expected.nar_hash.unwrap(),
                nar.len() as u64,
                &second.refs,
                second.summary.file_hash
            )
            .await
            .unwrap()
        );
        let rows = db.nar_chunks(&expected.nar_hash.unwrap()).await.unwrap();
        assert!(rows.len() > 5, "{} chunks", rows.len());
        for row in &rows {
            let frame = store.read_chunk(&row.hash).await.unwrap().expect("stored");
            let plain = decompress_chunk(&row.hash, &frame).unwrap();
            assert_eq!(
                frame.len() as u64,
                row.stored_size,
                "the object is not the frame its row records"
            );
            assert_eq!(frame, compress_chunk(&plain, 19).unwrap());
        }
    }
}
