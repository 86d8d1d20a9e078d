//! Serving a stored NAR from whichever form it is stored in.
//!
//! The URL names a compression; the NAR may be stored as a whole file (in that compression or
//! another) and/or as chunks. The cheapest path that yields exactly the named compression wins:
//! the whole file as is, the chunks' zstd frames spliced as they are, and only as a last resort a
//! conversion on the fly.

use std::io;

use futures::stream::{self, StreamExt, TryStreamExt};
use ncps_db::{ChunkRef, NarRecord, WholeFile};
use ncps_nix::{Compression, NarKey};
use ncps_store::ByteRange;
use tracing::{error, warn};

use crate::cache::NarBody;
use crate::codec::transcode;
use crate::{Cache, CacheError, RangeRequest};

/// Chunk reads in flight ahead of the one being sent: hides storage latency (a local disk
/// needs few, an object store more).
const CHUNK_READ_AHEAD: usize = 16;
/// Concurrent existence checks when making sure every chunk is there before answering 200.
const PRESENCE_CHECKS: usize = 32;
/// How long a NAR whose chunks were all found is trusted to still have them. Chunks are only
/// deleted a grace period (1 h by default) after their last reference went, so a minute is safe,
/// and it spares a burst of clients one existence check per chunk each (53 ms for a 300 MB NAR).
const PRESENCE_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// NARs whose chunks were recently all found in storage.
#[derive(Default)]
pub(crate) struct PresenceMemo(
    std::sync::Mutex<std::collections::HashMap<ncps_nix::Sha256Hash, std::time::Instant>>,
);

impl PresenceMemo {
    fn recently_checked(&self, nar: &ncps_nix::Sha256Hash) -> bool {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(nar).is_some_and(|at| at.elapsed() < PRESENCE_TTL)
    }

    fn checked(&self, nar: ncps_nix::Sha256Hash) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, at| at.elapsed() < PRESENCE_TTL);
        map.insert(nar, std::time::Instant::now());
    }
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
            let chunks = db.nar_chunks(&record.nar_hash).await?;
            if self.inner.presence.recently_checked(&record.nar_hash)
                || self.all_chunks_present(&chunks).await?
            {
                self.inner.presence.checked(record.nar_hash);
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

    /// Checks every chunk is in storage, so a 200 is only sent when the whole body can follow.
    async fn all_chunks_present(&self, chunks: &[ChunkRef]) -> Result<bool, CacheError> {
        let hashes: Vec<_> = chunks.iter().map(|c| c.hash).collect();
        let store = self.inner.store.clone();
        let mut checks = stream::iter(hashes)
            .map(move |hash| {
                let store = store.clone();
                async move { store.has_chunk(&hash).await }
            })
            .buffer_unordered(PRESENCE_CHECKS)
            .boxed();
        while let Some(present) = checks.next().await {
            if !present? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The chunks' stored frames, concatenated in order (a valid zstd stream), or the part of
    /// that concatenation a range asks for. Frames are read ahead concurrently.
    pub(crate) fn splice(
        &self,
        chunks: Vec<ChunkRef>,
        range: Option<ByteRange>,
        total: u64,
    ) -> NarBody {
        let (start, end) = range.map_or((0, total), |r| (r.start, r.end));
        let mut pieces = Vec::new();
        let mut offset = 0u64;
        for c in chunks {
            let c_end = offset + c.stored_size;
            if c_end > start && offset < end {
                let from = start.saturating_sub(offset) as usize;
                let to = (end - offset).min(c.stored_size) as usize;
                pieces.push((c.hash, from, to));
            }
            offset = c_end;
        }
        let store = self.inner.store.clone();
        let stream = stream::iter(pieces)
            .map(move |(hash, from, to)| {
                let store = store.clone();
                async move {
                    let frame = store
                        .read_chunk(&hash)
                        .await
                        .map_err(io::Error::other)?
                        .ok_or_else(|| {
                            io::Error::new(
                                io::ErrorKind::NotFound,
                                format!("chunk {hash} vanished"),
                            )
                        })?;
                    if frame.len() < to {
                        return Err(io::Error::other(format!(
                            "chunk {hash} is shorter than recorded"
                        )));
                    }
                    Ok(frame.slice(from..to))
                }
            })
            .buffered(CHUNK_READ_AHEAD)
            .boxed();
        NarBody {
            total_size: Some(total),
            range,
            stream,
        }
    }
}
