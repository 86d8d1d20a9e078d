//! Splicing: a chunked NAR's stored zstd frames sent in order, which together are a valid
//! `.nar.zst`, read ahead in runs with bounded memory.

use std::io;

use bytes::Bytes;
use futures::stream::{self, StreamExt, TryStreamExt};
use ncps_store::{BlobStore, ByteRange, ChunkHash};

use super::NarBody;
use super::chunk_memo::ChunkList;

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

/// The chunks' stored frames, concatenated in order (a valid zstd stream), or the part of that
/// concatenation a range asks for. Frames are read ahead concurrently.
pub(crate) fn splice(
    store: &BlobStore,
    chunks: ChunkList,
    range: Option<ByteRange>,
    total: u64,
) -> NarBody {
    let (start, end) = range.map_or((0, total), |r| (r.start, r.end));
    let store = store.clone();
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
        encoding: None,
        stored: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ncps_db::ChunkRef;

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
