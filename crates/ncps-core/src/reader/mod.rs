//! The reader: answers narinfo and NAR requests.
//!
//! It resolves a NAR URL to the NAR it names, asks [`crate::plan`] which stored form serves it,
//! and streams that form; a NAR not stored yet comes from the ingest side's shared download.
//! It owns the memo of rendered narinfos, the memo of checked chunk lists and the log of
//! accesses: nothing else reads or writes them. [`crate::Maintenance`] may invalidate the memos
//! (after deletions, eviction, a change of form) and flush the access log (before eviction),
//! through the crate-private methods below.

mod access;
mod chunk_memo;
mod memo;
mod splice;

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use ncps_db::{CachedNarInfo, ChunkRef, Database, NarRecord, OwnSignature, WholeFile};
use ncps_nix::{CacheInfo, Compression, NarKey, PublicKey, STORE_DIR, Sha256Hash, StorePathHash};
use ncps_store::{BlobStore, ByteRange, ChunkHash};
use tracing::{Instrument, debug, error, warn};

use crate::config::CacheConfig;
use crate::conversions::{CONVERSION_STALL, Conversions};
use crate::ingest::{Download, Fetch, Ingest};
use crate::metrics::{Metrics, Outcome};
use crate::plan::{Chunking, ServePlan, Source, plan};
use crate::signer::Signer;
use crate::{CacheError, RangeRequest};

use access::AccessLog;
pub(crate) use chunk_memo::ChunkList;
use chunk_memo::ChunkListMemo;
use memo::{Memoized, NarInfoMemo};
pub(crate) use splice::splice;

/// A NAR body ready to send: its size is known before the first byte whenever possible.
pub struct NarBody {
    /// Size of the whole file, when known (Content-Length of a full response).
    pub total_size: Option<u64>,
    /// The part being sent, when a range was asked for and honoured.
    pub range: Option<ByteRange>,
    /// The bytes.
    pub stream: BoxStream<'static, io::Result<Bytes>>,
    /// The transport compression the bytes are in (`Content-Encoding`), when one asked for in
    /// [`Reader::nar`] was used.
    pub encoding: Option<Compression>,
    /// True when the bytes come from storage, false when from an upstream download (what
    /// `X-Cache` tells clients such as `ncps warm`).
    pub stored: bool,
}

/// Answers requests; cheap to clone.
#[derive(Clone)]
pub struct Reader(Arc<State>);

struct State {
    db: Database,
    store: BlobStore,
    ingest: Ingest,
    metrics: Arc<Metrics>,
    public_key: PublicKey,
    signer: Signer,
    priority: u32,
    chunking: Chunking,
    memo: NarInfoMemo,
    chunk_lists: ChunkListMemo,
    access: AccessLog,
    conversions: Conversions,
}

impl Reader {
    pub(crate) fn new(
        config: &CacheConfig,
        signer: Signer,
        db: Database,
        store: BlobStore,
        ingest: Ingest,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self(Arc::new(State {
            db,
            store,
            ingest,
            metrics,
            public_key: config.secret_key.public_key(),
            signer,
            priority: config.priority,
            chunking: config.chunking(),
            memo: NarInfoMemo::default(),
            chunk_lists: ChunkListMemo::default(),
            access: AccessLog::default(),
            conversions: Conversions::new(config.max_conversions, CONVERSION_STALL),
        }))
    }

    /// The public half of our signing key, for clients' `trusted-public-keys`.
    pub fn public_key(&self) -> &PublicKey {
        &self.0.public_key
    }

    /// What `/nix-cache-info` says.
    pub fn cache_info(&self) -> CacheInfo {
        CacheInfo {
            store_dir: STORE_DIR.to_string(),
            want_mass_query: true,
            priority: Some(self.0.priority),
        }
    }

    /// The narinfo text for a store path hash, fetched from upstream when not cached.
    #[tracing::instrument(name = "cache.narinfo", skip_all, fields(hash = %hash))]
    pub async fn narinfo(&self, hash: &StorePathHash) -> Result<Bytes, CacheError> {
        self.narinfo_from(hash, true).await
    }

    /// The narinfo text only if this cache stores it; no upstream is asked (`/upload` reads:
    /// a client about to upload must not be told an upstream's path is already here).
    #[tracing::instrument(name = "cache.stored_narinfo", skip_all, fields(hash = %hash))]
    pub async fn stored_narinfo(&self, hash: &StorePathHash) -> Result<Bytes, CacheError> {
        self.narinfo_from(hash, false).await
    }

    async fn narinfo_from(&self, hash: &StorePathHash, fetch: bool) -> Result<Bytes, CacheError> {
        let result = self.narinfo_text(hash, fetch).await;
        let outcome = match &result {
            Ok((_, outcome)) => *outcome,
            Err(e) => outcome_of(e),
        };
        self.0.metrics.narinfo_served(outcome);
        result.map(|(text, _)| text)
    }

    /// The narinfo text, and whether it was a hit or had to be fetched (only when `fetch`).
    async fn narinfo_text(
        &self,
        hash: &StorePathHash,
        fetch: bool,
    ) -> Result<(Bytes, Outcome), CacheError> {
        if let Some(memoized) = self.0.memo.get(hash) {
            self.0.access.narinfo(*hash);
            let text = match memoized {
                Memoized::Fresh(text) => text,
                Memoized::Stale(text) => {
                    let this = self.clone();
                    let hash = *hash;
                    tokio::spawn(async move { this.refresh_memo(hash).await });
                    text
                }
            };
            return Ok((text, Outcome::Hit));
        }
        let ((cached, stored, own), outcome) = match self.0.db.narinfo_and_nar(hash).await? {
            Some(found) => (found, Outcome::Hit),
            None if fetch => {
                let (cached, own) = self.0.ingest.fetch_narinfo(hash).await?;
                let stored = self.0.db.nar(&cached.narinfo.nar_hash).await?;
                ((cached, stored, own), Outcome::Miss)
            }
            None => return Err(CacheError::NotFound),
        };
        self.0.access.narinfo(*hash);
        Ok((
            self.render(hash, cached, stored.as_ref(), own.as_ref()),
            outcome,
        ))
    }

    /// Re-renders a memoized narinfo from the database; a narinfo gone (evicted, deleted
    /// elsewhere) or a failing database drops the entry, so the next request takes the full path.
    async fn refresh_memo(&self, hash: StorePathHash) {
        let refreshed: Result<bool, CacheError> = match self.0.db.narinfo_and_nar(&hash).await {
            Ok(Some((cached, stored, own))) => {
                self.render(&hash, cached, stored.as_ref(), own.as_ref());
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = &refreshed {
            debug!(%hash, error = %e, "could not refresh a remembered narinfo");
        }
        if !matches!(refreshed, Ok(true)) {
            self.0.memo.forget(&hash);
        }
    }

    /// The narinfo as served: FileHash/FileSize from the serve plan of its URL, our signature
    /// (`own`, the one stored with it, when our current key made it).
    /// Only a narinfo whose NAR form is settled (FileHash known) is remembered; one still being
    /// downloaded or chunked gains FileHash/FileSize soon, and its memo entry is dropped.
    fn render(
        &self,
        hash: &StorePathHash,
        cached: CachedNarInfo,
        stored: Option<&NarRecord>,
        own: Option<&OwnSignature>,
    ) -> Bytes {
        let mut narinfo = cached.narinfo;
        let plan = plan(
            &cached.url_key,
            (narinfo.nar_hash, narinfo.nar_size),
            stored,
            cached.origin.as_ref(),
            self.0.chunking,
        );
        (narinfo.file_hash, narinfo.file_size) = plan.file_info();
        self.0.signer.sign(&mut narinfo, own);
        let text = Bytes::from(narinfo.render());
        if narinfo.file_hash.is_some() {
            self.0.memo.put(*hash, text.clone());
        } else {
            self.0.memo.forget(hash);
        }
        text
    }

    /// The NAR a URL names: one we handed out, one an upload waiting for its narinfo was
    /// verified against, or `nar/<NarHash>.nar[.ext]` of any NAR we know, so a client may ask
    /// for the plain NAR (or another compression) by its hash.
    #[tracing::instrument(name = "db.resolve_nar", skip_all, fields(nar = %key))]
    async fn resolve(&self, key: &NarKey) -> Result<Sha256Hash, CacheError> {
        let db = &self.0.db;
        if let Some(nar_hash) = db.nar_hash_for_url(key).await? {
            return Ok(nar_hash);
        }
        if let Some(upload) = db.uploaded_nar(key).await? {
            return Ok(upload.nar_hash);
        }
        if db.nar(&key.hash).await?.is_some() || db.narinfo_with_origin(&key.hash).await?.is_some()
        {
            return Ok(key.hash);
        }
        Err(CacheError::NotFound)
    }

    /// Whether the NAR a URL names is stored here (in any form); no upstream is asked.
    pub async fn nar_is_stored(&self, key: &NarKey) -> Result<bool, CacheError> {
        let nar_hash = match self.resolve(key).await {
            Ok(nar_hash) => nar_hash,
            Err(CacheError::NotFound) => return Ok(false),
            Err(e) => return Err(e),
        };
        Ok(self.0.db.nar(&nar_hash).await?.is_some())
    }

    /// The size of a NAR as a HEAD request reports it, from the same plan a GET follows,
    /// without downloading anything. `None`: the NAR exists but its size is not known up front.
    #[tracing::instrument(name = "cache.nar_size", skip_all, fields(nar = %key))]
    pub async fn nar_size(&self, key: &NarKey) -> Result<Option<u64>, CacheError> {
        let nar_hash = self.resolve(key).await?;
        if let Some(record) = self.0.db.nar(&nar_hash).await? {
            return Ok(self.stored_plan(key, &record).size);
        }
        let cached = self
            .0
            .db
            .narinfo_with_origin(&nar_hash)
            .await?
            .ok_or(CacheError::NotFound)?;
        let origin = cached.origin.as_ref().ok_or(CacheError::NotFound)?;
        let n = &cached.narinfo;
        Ok(plan(
            key,
            (n.nar_hash, n.nar_size),
            None,
            Some(origin),
            self.0.chunking,
        )
        .size)
    }

    /// A NAR's bytes in the compression its URL names: from storage in whichever form the plan
    /// picks, otherwise from the (shared) upstream download.
    ///
    /// `transport` is a compression the client accepts for HTTP transport (`Accept-Encoding`).
    /// A URL naming the plain NAR (`.nar`) is then answered in it, but only when a stored form
    /// is already in it (a NAR kept as chunks goes out as its stored zstd frames, a `.nar.zst`
    /// file as is): that costs less than decompressing, while compressing on the fly would
    /// take a conversion slot from clients that need one. [`NarBody::encoding`] says which.
    /// `range` applies to the bytes sent.
    #[tracing::instrument(name = "cache.nar", skip_all, fields(nar = %key))]
    pub async fn nar(
        &self,
        key: &NarKey,
        range: Option<RangeRequest>,
        transport: Option<Compression>,
    ) -> Result<NarBody, CacheError> {
        let transport = transport
            .filter(|_| key.compression == Compression::None)
            .map(|compression| NarKey::new(key.hash, compression));
        match self.open_nar(key, transport, range).await {
            Ok((body, outcome)) => {
                self.0.metrics.nar_served(outcome);
                let served = self.0.metrics.nar_bytes_served.clone();
                let stream = body
                    .stream
                    .inspect(move |piece| {
                        if let Ok(bytes) = piece {
                            served.inc_by(bytes.len() as u64);
                        }
                    })
                    .boxed();
                Ok(NarBody {
                    stream,
                    stored: outcome == Outcome::Hit,
                    ..body
                })
            }
            Err(e) => {
                self.0.metrics.nar_served(outcome_of(&e));
                Err(e)
            }
        }
    }

    /// The body of a NAR request (the URL `key`, or `transport` when a stored form is already
    /// in it), and whether it came from storage or from upstream.
    async fn open_nar(
        &self,
        key: &NarKey,
        transport: Option<NarKey>,
        range: Option<RangeRequest>,
    ) -> Result<(NarBody, Outcome), CacheError> {
        // The usual request names a URL we handed out: its NAR and record come in one query.
        let (nar_hash, mut known) = match self.0.db.nar_by_url(key).await? {
            Some((nar_hash, record)) => (nar_hash, Some(record)),
            None => (self.resolve(key).await?, None),
        };
        self.0.access.nar(nar_hash);
        let download = loop {
            let record = match known.take() {
                Some(record) => record,
                None => {
                    self.0
                        .db
                        .nar(&nar_hash)
                        .instrument(tracing::info_span!("db.get_nar"))
                        .await?
                }
            };
            if let Some(record) = record {
                let served = transport
                    .filter(|t| self.stored_plan(t, &record).source.is_stored_copy())
                    .unwrap_or(*key);
                if let Some(mut body) = self.serve_stored(&served, &record, range).await? {
                    body.encoding = (served != *key).then_some(served.compression);
                    return Ok((body, Outcome::Hit));
                }
            }
            match self.0.ingest.download(&nar_hash).await? {
                Fetch::Local(download) => break download,
                // Another replica stored it meanwhile: serve it from the shared storage.
                Fetch::StoredElsewhere => continue,
            }
        };
        Ok((self.serve_download(key, download).await?, Outcome::Miss))
    }

    /// The plan for a stored NAR.
    fn stored_plan(&self, key: &NarKey, record: &NarRecord) -> ServePlan {
        plan(
            key,
            (record.nar_hash, record.nar_size),
            Some(record),
            None,
            self.0.chunking,
        )
    }

    /// A NAR arriving from upstream, as its plan says: as it arrives, or converted. Ranges are
    /// not honoured on a NAR still arriving; HTTP allows sending it whole.
    async fn serve_download(
        &self,
        key: &NarKey,
        download: Arc<Download>,
    ) -> Result<NarBody, CacheError> {
        let announced = download.started().await?;
        let plan = plan(
            key,
            download.nar(),
            None,
            Some(download.origin()),
            self.0.chunking,
        );
        let from = download.compression();
        Ok(match plan.source {
            Source::Fetch { as_is: true } => NarBody {
                // The upstream may announce a length its narinfo did not give.
                total_size: plan.size.or(announced),
                range: None,
                stream: download.reader(),
                encoding: None,
                stored: false,
            },
            _ => NarBody {
                total_size: plan.size,
                range: None,
                stream: self
                    .0
                    .conversions
                    .convert(download.reader(), from, key.compression)?,
                encoding: None,
                stored: false,
            },
        })
    }

    /// The NAR from storage, or `None` when no stored form can produce it (then it is fetched).
    /// A form the plan picked but storage lost is forgotten, and the next form is tried.
    #[tracing::instrument(name = "store.read_nar", skip_all, fields(nar = %key))]
    async fn serve_stored(
        &self,
        key: &NarKey,
        record: &NarRecord,
        range: Option<RangeRequest>,
    ) -> Result<Option<NarBody>, CacheError> {
        let mut record = record.clone();
        loop {
            let plan = self.stored_plan(key, &record);
            let opened = match plan.source {
                Source::Fetch { .. } => return Ok(None),
                Source::Whole(whole) => {
                    let range = resolve_range(range, whole.size)?;
                    self.read_whole(whole, range).await?
                }
                Source::WholeConverted(whole) => self
                    .read_whole(whole, None)
                    .await?
                    .map(|body| self.converted(body.stream, whole.key.compression, key, plan))
                    .transpose()?,
                Source::Spliced(form) => {
                    let range = resolve_range(range, form.spliced_size)?;
                    self.servable_chunks(&record, form.chunk_count)
                        .await?
                        .map(|chunks| splice(&self.0.store, chunks, range, form.spliced_size))
                }
                Source::ChunksConverted(form) => self
                    .servable_chunks(&record, form.chunk_count)
                    .await?
                    .map(|chunks| {
                        let spliced = splice(&self.0.store, chunks, None, form.spliced_size);
                        self.converted(spliced.stream, Compression::Zstd, key, plan)
                    })
                    .transpose()?,
            };
            if let Some(body) = opened {
                return Ok(Some(body));
            }
            self.forget_lost_form(&mut record, plan.source).await?;
        }
    }

    /// Records that a stored form is gone from storage, so it is fetched again (or served from
    /// another form) instead of failing every request.
    async fn forget_lost_form(
        &self,
        record: &mut NarRecord,
        source: Source,
    ) -> Result<(), CacheError> {
        let nar = record.nar_hash;
        match source {
            Source::Whole(_) | Source::WholeConverted(_) => {
                warn!(%nar, "whole file recorded but missing from storage; forgetting it");
                self.0.db.forget_whole_file(&nar).await?;
                record.whole = None;
            }
            Source::Spliced(_) | Source::ChunksConverted(_) => {
                error!(%nar, "chunks of a NAR are missing from storage; fetching it again");
                self.0.db.drop_chunk_list(&nar).await?;
                self.0.chunk_lists.forget(&nar);
                record.chunked = None;
            }
            Source::Fetch { .. } => {}
        }
        Ok(())
    }

    async fn read_whole(
        &self,
        whole: WholeFile,
        range: Option<ByteRange>,
    ) -> Result<Option<NarBody>, CacheError> {
        let Some(read) = self.0.store.read_nar(&whole.key, range).await? else {
            return Ok(None);
        };
        // The size is what can be checked on every open: a file cut short or grown on disk is
        // damaged, and goes the way of a missing one (another form, or fetched again).
        if read.total_size != whole.size {
            error!(
                nar = %whole.key,
                recorded = whole.size,
                found = read.total_size,
                "stored NAR file is damaged (wrong size); deleting it"
            );
            drop(read);
            self.0.store.delete_nar(&whole.key).await?;
            return Ok(None);
        }
        Ok(Some(NarBody {
            total_size: Some(read.total_size),
            range,
            stream: read.stream.map_err(io::Error::other).boxed(),
            encoding: None,
            stored: true,
        }))
    }

    /// A chunked NAR's list, checked once a minute per NAR (see [`chunk_memo`]).
    async fn servable_chunks(
        &self,
        record: &NarRecord,
        chunk_count: u64,
    ) -> Result<Option<ChunkList>, CacheError> {
        self.0
            .chunk_lists
            .get_or_load(
                record.nar_hash,
                self.load_servable_chunks(&record.nar_hash, chunk_count),
            )
            .await
    }

    /// A NAR's chunk list, or `None` when it is not the `chunk_count` chunks its record names
    /// (dropped meanwhile by a request that found a chunk missing) or a chunk is missing from
    /// storage: checked so that a 200 is only sent when the whole body can follow.
    async fn load_servable_chunks(
        &self,
        nar: &Sha256Hash,
        chunk_count: u64,
    ) -> Result<Option<Vec<ChunkRef>>, CacheError> {
        let chunks = self.0.db.nar_chunks(nar).await?;
        if chunks.len() as u64 != chunk_count {
            return Ok(None);
        }
        let hashes: Vec<ChunkHash> = chunks.iter().map(|c| c.hash).collect();
        let present = self.0.store.all_chunks_present(&hashes).await?;
        Ok(present.then_some(chunks))
    }

    /// A stored body converted to the URL's compression; its size is what the plan knows.
    fn converted(
        &self,
        input: BoxStream<'static, io::Result<Bytes>>,
        from: Compression,
        key: &NarKey,
        plan: ServePlan,
    ) -> Result<NarBody, CacheError> {
        Ok(NarBody {
            total_size: plan.size,
            range: None,
            stream: self.0.conversions.convert(input, from, key.compression)?,
            encoding: None,
            stored: true,
        })
    }

    /// Forgets a narinfo's rendering (it was deleted or changed here).
    pub(crate) fn forget_narinfo(&self, hash: &StorePathHash) {
        self.0.memo.forget(hash);
    }

    /// Forgets every rendering (after an eviction run).
    pub(crate) fn forget_all_narinfos(&self) {
        self.0.memo.clear();
    }

    /// Forgets a NAR's checked chunk list (its chunks were dropped).
    pub(crate) fn forget_chunk_list(&self, nar: &Sha256Hash) {
        self.0.chunk_lists.forget(nar);
    }

    /// Writes the accesses noted so far (batched; eviction flushes first).
    pub(crate) async fn flush_access_times(&self) {
        self.0.access.flush(&self.0.db).await;
    }
}

fn resolve_range(range: Option<RangeRequest>, size: u64) -> Result<Option<ByteRange>, CacheError> {
    range
        .map(|r| {
            r.resolve(size)
                .ok_or(CacheError::RangeNotSatisfiable { size })
        })
        .transpose()
}

/// The lookup outcome an error stands for.
fn outcome_of(e: &CacheError) -> Outcome {
    match e {
        CacheError::NotFound => Outcome::NotFound,
        _ => Outcome::Error,
    }
}
