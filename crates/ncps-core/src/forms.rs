//! Serving a stored NAR from whichever form it is stored in.
//!
//! The URL names a compression; the NAR may be stored as a whole file (in that compression or
//! another) and/or as chunks. The cheapest path that yields exactly the named compression wins:
//! the whole file as is, the chunks' zstd frames spliced as they are, and only as a last resort a
//! conversion on the fly.

use std::io;

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use ncps_db::{ChunkRef, NarRecord, WholeFile};
use ncps_nix::{Compression, NarKey};
use ncps_store::{BlobStore, ByteRange, ChunkHash};
use tracing::{error, warn};

use crate::cache::NarBody;
use crate::chunk_memo::ChunkList;
use crate::codec::transcode;
use crate::{Cache, CacheError, RangeRequest};

/// Stored frames read together in one storage call (one blocking call on local disk), and how
/// many such runs are read ahead of the one being sent. Local reads are cheap, so little is read
/// ahead (100 concurrent downloads peaked at 57 MiB resident); a bucket's round trips need more
/// in flight.
const LOCAL_RUN_BYTES: u64 = 256 * 1024;
const LOCAL_RUNS_AHEAD: usize = 1;
const REMOTE_RUN_BYTES: u64 = 512 * 1024;
const REMOTE_RUNS_AHEAD: usize = 4;

/// Part of one stored frame to send: bytes `from..to` of the frame of `hash`, which is
/// `stored_size` bytes long.
struct FramePiece {
    hash: ChunkHash,
    stored_size: u64,
    from: usize,
    to: usize,
}

/// Walks a NAR's frames in order over the byte range `start..end` of the spliced stream, in runs
/// of at most `budget` stored bytes (at least one frame each). Lazy, so a 1 GB NAR's 12 500
/// frames cost no per-request list.
struct FrameRuns {
    chunks: ChunkList,
    next: usize,
    offset: u64,
    start: u64,
    end: u64,
    budget: u64,
}

impl Iterator for FrameRuns {
    type Item = Vec<FramePiece>;

    fn next(&mut self) -> Option<Vec<FramePiece>> {
        let mut run = Vec::new();
        let mut bytes = 0;
        while let Some(c) = self.chunks.get(self.next)
            && self.offset < self.end
            && self.start < self.end
        {
            let c_start = self.offset;
            let c_end = c_start + c.stored_size;
            if c_end > self.start {
                if !run.is_empty() && bytes + c.stored_size > self.budget {
                    break;
                }
                run.push(FramePiece {
                    hash: c.hash,
                    stored_size: c.stored_size,
                    from: self.start.saturating_sub(c_start) as usize,
                    to: (self.end - c_start).min(c.stored_size) as usize,
                });
                bytes += c.stored_size;
            }
            self.offset = c_end;
            self.next += 1;
        }
        (!run.is_empty()).then_some(run)
    }
}

/// Reads one run of frames and cuts out the pieces sent.
async fn read_run(store: &BlobStore, run: Vec<FramePiece>) -> io::Result<Vec<Bytes>> {
    let chunks: Vec<_> = run.iter().map(|p| (p.hash, p.stored_size)).collect();
    let frames = store.read_chunks(&chunks).await.map_err(io::Error::other)?;
    run.into_iter()
        .zip(frames)
        .map(|(piece, frame)| {
            let hash = piece.hash;
            let frame = frame.ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("chunk {hash} vanished"))
            })?;
            if frame.len() < piece.to {
                return Err(io::Error::other(format!(
                    "chunk {hash} is shorter than recorded"
                )));
            }
            Ok(frame.slice(piece.from..piece.to))
        })
        .collect()
}

fn resolve(range: Option<RangeRequest>, size: u64) -> Result<Option<ByteRange>, CacheError> {
    range
        .map(|r| {
            r.resolve(size)
                .ok_or(CacheError::RangeNotSatisfiable { size })
        })
        .transpose()
}

impl Cache {
    /// The NAR from storage, or `None` when no stored form can produce it (then it is fetched).
    #[tracing::instrument(name = "store.read_nar", skip_all, fields(nar = %key))]
    pub(crate) async fn serve_stored(
        &self,
        key: &NarKey,
        record: &NarRecord,
        range: Option<RangeRequest>,
    ) -> Result<Option<NarBody>, CacheError> {
        let db = &self.inner.db;
        let mut whole = record.whole;
        if let Some(w) = whole.filter(|w| w.key == *key) {
            match self.read_whole(w, resolve(range, w.size)?).await? {
                Some(body) => return Ok(Some(body)),
                None => {
                    warn!(nar = %key, "whole file recorded but missing from storage; forgetting it");
                    db.forget_whole_file(&record.nar_hash).await?;
                    whole = None;
                }
            }
        }
        if let Some(form) = record.chunked {
            let checked = self
                .inner
                .chunk_lists
                .get_or_load(
                    record.nar_hash,
                    self.load_servable_chunks(&record.nar_hash, form.chunk_count),
                )
                .await?;
            if let Some(chunks) = checked {
                if key.compression == Compression::Zstd {
                    let range = resolve(range, form.spliced_size)?;
                    return Ok(Some(self.splice(chunks, range, form.spliced_size)));
                }
                let spliced = self.splice(chunks, None, form.spliced_size).stream;
                return Ok(Some(self.converted(
                    spliced,
                    Compression::Zstd,
                    key.compression,
                    record.nar_size,
                )));
            }
            error!(nar = %record.nar_hash, "chunks of a NAR are missing from storage; fetching it again");
            db.drop_chunk_list(&record.nar_hash).await?;
            self.inner.chunk_lists.forget(&record.nar_hash);
        }
        if let Some(w) = whole
            && let Some(body) = self.read_whole(w, None).await?
        {
            return Ok(Some(self.converted(
                body.stream,
                w.key.compression,
                key.compression,
                record.nar_size,
            )));
        }
        Ok(None)
    }

    /// A conversion to the URL's compression. Only a plain NAR has a length known up front.
    fn converted(
        &self,
        input: futures::stream::BoxStream<'static, io::Result<bytes::Bytes>>,
        from: Compression,
        to: Compression,
        nar_size: u64,
    ) -> NarBody {
        NarBody {
            total_size: (to == Compression::None).then_some(nar_size),
            range: None,
            stream: transcode(input, from, to),
        }
    }

    async fn read_whole(
        &self,
        whole: WholeFile,
        range: Option<ByteRange>,
    ) -> Result<Option<NarBody>, CacheError> {
        let Some(read) = self.inner.store.read_nar(&whole.key, range).await? else {
            return Ok(None);
        };
        Ok(Some(NarBody {
            total_size: Some(read.total_size),
            range,
            stream: read.stream.map_err(io::Error::other).boxed(),
        }))
    }

    /// A NAR's chunk list, or `None` when it is not the `chunk_count` chunks its record names
    /// (dropped meanwhile by a request that found a chunk missing) or a chunk is missing from
    /// storage: checked so that a 200 is only sent when the whole body can follow.
    async fn load_servable_chunks(
        &self,
        nar: &ncps_nix::Sha256Hash,
        chunk_count: u64,
    ) -> Result<Option<Vec<ChunkRef>>, CacheError> {
        let chunks = self.inner.db.nar_chunks(nar).await?;
        if chunks.len() as u64 != chunk_count {
            return Ok(None);
        }
        let hashes: Vec<ChunkHash> = chunks.iter().map(|c| c.hash).collect();
        let present = self.inner.store.all_chunks_present(&hashes).await?;
        Ok(present.then_some(chunks))
    }

    /// The chunks' stored frames, concatenated in order (a valid zstd stream), or the part of
    /// that concatenation a range asks for. Frames are read ahead concurrently.
    pub(crate) fn splice(
        &self,
        chunks: ChunkList,
        range: Option<ByteRange>,
        total: u64,
    ) -> NarBody {
        let (start, end) = range.map_or((0, total), |r| (r.start, r.end));
        let store = self.inner.store.clone();
        let (budget, ahead) = if store.is_local() {
            (LOCAL_RUN_BYTES, LOCAL_RUNS_AHEAD)
        } else {
            (REMOTE_RUN_BYTES, REMOTE_RUNS_AHEAD)
        };
        let runs = FrameRuns {
            chunks,
            next: 0,
            offset: 0,
            start,
            end,
            budget,
        };
        let stream = stream::iter(runs)
            .map(move |run| {
                let store = store.clone();
                async move { read_run(&store, run).await }
            })
            .buffered(ahead)
            .map_ok(|pieces| stream::iter(pieces.into_iter().map(Ok)))
            .try_flatten()
            .boxed();
        NarBody {
            total_size: Some(total),
            range,
            stream,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(sizes: &[u64], start: u64, end: u64, budget: u64) -> Vec<Vec<(u8, usize, usize)>> {
        let chunks: ChunkList = sizes
            .iter()
            .enumerate()
            .map(|(i, &stored_size)| ChunkRef {
                hash: ChunkHash::digest(&[i as u8]),
                plain_size: stored_size * 2,
                stored_size,
            })
            .collect();
        let index =
            |h: &ChunkHash| (0..sizes.len()).position(|i| ChunkHash::digest(&[i as u8]) == *h);
        let frame_runs = FrameRuns {
            chunks: chunks.clone(),
            next: 0,
            offset: 0,
            start,
            end,
            budget,
        };
        frame_runs
            .map(|run| {
                run.iter()
                    .map(|p| (index(&p.hash).unwrap() as u8, p.from, p.to))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn frame_runs_cover_exactly_the_range_within_the_budget() {
        // Frames of 10, 20, 30 and 40 bytes: offsets 0, 10, 30, 60; 100 in all.
        let sizes = [10, 20, 30, 40];
        assert_eq!(
            runs(&sizes, 0, 100, 30),
            vec![
                vec![(0, 0, 10), (1, 0, 20)],
                vec![(2, 0, 30)],
                vec![(3, 0, 40)]
            ]
        );
        // A frame larger than the budget still makes a run of its own.
        assert_eq!(runs(&sizes, 0, 100, 5).len(), 4);
        // Bytes 15..65: the end of frame 1, all of frame 2, the start of frame 3.
        assert_eq!(
            runs(&sizes, 15, 65, 1000),
            vec![vec![(1, 5, 20), (2, 0, 30), (3, 0, 5)]]
        );
        assert!(runs(&sizes, 40, 40, 1000).is_empty());
    }
}
