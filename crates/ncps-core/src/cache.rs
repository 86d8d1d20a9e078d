use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use ncps_db::{CachedNarInfo, Database, NarOrigin, NarRecord};
use ncps_nix::{
    CacheInfo, Compression, NarInfo, NarKey, PublicKey, STORE_DIR, SecretKey, StorePathHash,
};
use ncps_store::{BlobStore, ByteRange};
use ncps_upstream::Upstreams;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info};

use crate::access::AccessLog;
use crate::chunk_memo::ChunkListMemo;
use crate::chunking::ChunkSettings;
use crate::codec::{can_decode, transcode};
use crate::download::{Download, Downloads};
use crate::locks::{LockBackend, Locks};
use crate::memo::{Memoized, NarInfoMemo};
use crate::metrics::{Metrics, Outcome, UpstreamLabels};
use crate::upload::{PendingUploads, UploadConfig};
use crate::{CacheError, RangeRequest};

/// Content-defined chunking settings; `None` in [`CacheConfig`] stores NARs as whole files.
#[derive(Clone, Copy, Debug)]
pub struct CdcConfig {
    /// How chunks are cut and compressed.
    pub chunking: ChunkSettings,
    /// Store the whole file first and chunk it in the background (serving it at once).
    pub lazy: bool,
    /// How long a whole file is kept after its chunks are complete (lazy mode).
    pub delete_delay: Duration,
}

/// Settings of the cache core.
#[derive(Debug)]
pub struct CacheConfig {
    /// The key narinfos are signed with.
    pub secret_key: SecretKey,
    /// Add our signature to narinfos (off: pass upstream signatures through unchanged).
    pub sign_narinfo: bool,
    /// Where downloads are written before they are verified and stored.
    pub temp_dir: PathBuf,
    /// Priority announced in nix-cache-info (lower is preferred by clients).
    pub priority: u32,
    /// Chunk NARs (eagerly or lazily); `None` keeps whole files.
    pub cdc: Option<CdcConfig>,
    /// Rules for uploads.
    pub uploads: UploadConfig,
    /// Which lock service coordinates replicas.
    pub locks: LockBackend,
    /// How long a download lock lives without renewal (a dead replica's lock expires after it).
    pub download_lock_ttl: Duration,
    /// Start downloading a NAR as soon as its narinfo is fetched from upstream.
    pub prefetch: bool,
}

impl CacheConfig {
    /// Defaults for everything but the key and the temporary directory: signing on, priority
    /// 40, whole files, default upload rules, in-process locks with a 5-minute download TTL.
    pub fn new(secret_key: SecretKey, temp_dir: PathBuf) -> Self {
        Self {
            secret_key,
            sign_narinfo: true,
            temp_dir,
            priority: 40,
            cdc: None,
            uploads: UploadConfig::default(),
            locks: LockBackend::Local,
            download_lock_ttl: Duration::from_secs(300),
            prefetch: false,
        }
    }
}

/// A NAR body ready to send: its size is known before the first byte whenever possible.
pub struct NarBody {
    /// Size of the whole file, when known (Content-Length of a full response).
    pub total_size: Option<u64>,
    /// The part being sent, when a range was asked for and honoured.
    pub range: Option<ByteRange>,
    /// The bytes.
    pub stream: BoxStream<'static, io::Result<Bytes>>,
}

impl NarBody {
    /// A body of unknown length that is sent whole.
    pub(crate) fn sized_unknown(stream: BoxStream<'static, io::Result<Bytes>>) -> Self {
        Self {
            total_size: None,
            range: None,
            stream,
        }
    }
}

/// The cache; cheap to clone, shared by every request.
#[derive(Clone)]
pub struct Cache {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub config: CacheConfig,
    pub public_key: PublicKey,
    pub db: Database,
    pub store: BlobStore,
    pub upstreams: Upstreams,
    pub downloads: Downloads,
    pub pending: PendingUploads,
    pub access: AccessLog,
    pub memo: NarInfoMemo,
    pub chunk_lists: ChunkListMemo,
    pub metrics: Metrics,
    pub locks: Locks,
    /// In-process locks in front of `locks`, so one task per process polls the lock service.
    pub local_locks: Locks,
    /// One eviction at a time in this process.
    pub lru_lock: tokio::sync::Mutex<()>,
    /// NARs stored whole that lazy chunking should pick up.
    pub chunk_queue: mpsc::UnboundedSender<ncps_nix::Sha256Hash>,
    pub chunk_queue_rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<ncps_nix::Sha256Hash>>>,
}

impl Cache {
    /// Wires the cache to its metadata, storage and upstreams.
    pub fn new(
        config: CacheConfig,
        db: Database,
        store: BlobStore,
        upstreams: Upstreams,
    ) -> Result<Self, CacheError> {
        let locks = Locks::new(&config.locks)?;
        let public_key = config.secret_key.public_key();
        let downloads = Downloads::new(config.temp_dir.clone());
        let (chunk_queue, rx) = mpsc::unbounded_channel();
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                public_key,
                db,
                store,
                upstreams,
                downloads,
                pending: PendingUploads::default(),
                access: AccessLog::default(),
                memo: NarInfoMemo::default(),
                chunk_lists: ChunkListMemo::default(),
                metrics: Metrics::new(),
                locks,
                local_locks: Locks::new(&LockBackend::Local)?,
                lru_lock: tokio::sync::Mutex::new(()),
                chunk_queue,
                chunk_queue_rx: std::sync::Mutex::new(Some(rx)),
            }),
        })
    }

    /// The metrics, for `/metrics` and for the HTTP layer's request counters.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Measures the storage gauges (called when `/metrics` is scraped).
    pub async fn refresh_gauges(&self) -> Result<(), CacheError> {
        let m = &self.inner.metrics;
        let stored = self.inner.db.stored_bytes().await?;
        m.stored_bytes
            .set(i64::try_from(stored).unwrap_or(i64::MAX));
        Ok(())
    }

    /// The public half of our signing key, for clients' `trusted-public-keys`.
    pub fn public_key(&self) -> &PublicKey {
        &self.inner.public_key
    }

    /// What `/nix-cache-info` says.
    pub fn cache_info(&self) -> CacheInfo {
        CacheInfo {
            store_dir: STORE_DIR.to_string(),
            want_mass_query: true,
            priority: Some(self.inner.config.priority),
        }
    }

    /// The narinfo text for a store path hash, fetched from upstream when not cached.
    #[tracing::instrument(name = "cache.narinfo", skip_all, fields(hash = %hash))]
    pub async fn narinfo(&self, hash: &StorePathHash) -> Result<Bytes, CacheError> {
        let result = self.narinfo_counted(hash).await;
        if let Err(e) = &result {
            Metrics::lookup(&self.inner.metrics.narinfo_lookups, outcome_of(e));
        }
        result
    }

    async fn narinfo_counted(&self, hash: &StorePathHash) -> Result<Bytes, CacheError> {
        let lookups = &self.inner.metrics.narinfo_lookups;
        if let Some(memoized) = self.inner.memo.get(hash) {
            Metrics::lookup(lookups, Outcome::Hit);
            self.inner.access.narinfo(*hash);
            return Ok(match memoized {
                Memoized::Fresh(text) => text,
                Memoized::Stale(text) => {
                    let this = self.clone();
                    let hash = *hash;
                    tokio::spawn(async move { this.refresh_memo(hash).await });
                    text
                }
            });
        }
        let cached = match self.inner.db.narinfo(hash).await? {
            Some(cached) => {
                Metrics::lookup(lookups, Outcome::Hit);
                cached
            }
            None => {
                let fetched = self.fetch_narinfo(hash).await?;
                Metrics::lookup(lookups, Outcome::Miss);
                fetched
            }
        };
        self.inner.access.narinfo(*hash);
        self.render(hash, cached).await
    }

    /// Re-renders a memoized narinfo from the database; a narinfo gone (evicted, deleted
    /// elsewhere) or a failing database drops the entry, so the next request takes the full path.
    async fn refresh_memo(&self, hash: StorePathHash) {
        let refreshed = match self.inner.db.narinfo(&hash).await {
            Ok(Some(cached)) => self.render(&hash, cached).await.map(|_| true),
            Ok(None) => Ok(false),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = &refreshed {
            debug!(%hash, error = %e, "could not refresh a remembered narinfo");
        }
        if !matches!(refreshed, Ok(true)) {
            self.inner.memo.forget(&hash);
        }
    }

    /// The narinfo as served: FileHash/FileSize of the stored form, our signature. Only a
    /// narinfo whose NAR form is settled (FileHash known) is remembered; one still being
    /// downloaded or chunked gains FileHash/FileSize soon, and its memo entry is dropped.
    async fn render(
        &self,
        hash: &StorePathHash,
        cached: CachedNarInfo,
    ) -> Result<Bytes, CacheError> {
        let stored = self.inner.db.nar(&cached.narinfo.nar_hash).await?;
        let mut narinfo = cached.narinfo;
        (narinfo.file_hash, narinfo.file_size) = file_info(
            &cached.url_key,
            &narinfo,
            stored.as_ref(),
            cached.origin.as_ref(),
        );
        if self.inner.config.sign_narinfo {
            narinfo.sign(&self.inner.config.secret_key);
        }
        let text = Bytes::from(narinfo.render());
        if narinfo.file_hash.is_some() {
            self.inner.memo.put(*hash, text.clone());
        } else {
            self.inner.memo.forget(hash);
        }
        Ok(text)
    }

    #[tracing::instrument(name = "cache.fetch_narinfo", skip_all, fields(hash = %hash))]
    async fn fetch_narinfo(&self, hash: &StorePathHash) -> Result<CachedNarInfo, CacheError> {
        let started = std::time::Instant::now();
        let found = self
            .inner
            .upstreams
            .find_narinfo(hash)
            .await?
            .ok_or(CacheError::NotFound)?;
        self.inner
            .metrics
            .upstream_latency
            .get_or_create(&UpstreamLabels {
                upstream: found.upstream_url.clone(),
            })
            .observe(started.elapsed().as_secs_f64());
        let upstream = found.narinfo;
        // Refuse now what could not be verified later, rather than hand out a dead NAR URL.
        if !can_decode(upstream.compression) {
            return Err(CacheError::Integrity(format!(
                "{} is compressed with {}, which ncps cannot verify",
                upstream.store_path, upstream.compression
            )));
        }
        let url_key = self.url_for(&upstream);
        let origin = NarOrigin {
            upstream_url: found.upstream_url,
            nar_url: upstream.url.clone(),
            compression: upstream.compression,
            file_hash: upstream.file_hash,
            file_size: upstream.file_size,
        };
        let narinfo = NarInfo {
            url: url_key.url(),
            compression: url_key.compression,
            file_hash: None,
            file_size: None,
            ..upstream
        };
        let cached = CachedNarInfo {
            narinfo,
            url_key,
            origin: Some(origin),
        };
        let inserted = self
            .inner
            .db
            .insert_narinfo(&cached)
            .instrument(tracing::info_span!("db.insert_narinfo"))
            .await?;
        info!(store_path = %cached.narinfo.store_path, upstream = %cached.origin.as_ref().map_or("", |o| &o.upstream_url), "cached narinfo");
        // When a concurrent request stored the same path first, its row is what every client
        // must see.
        let stored = if inserted {
            cached
        } else {
            self.inner.db.narinfo(hash).await?.unwrap_or(cached)
        };
        if self.inner.config.prefetch {
            // The client's NAR request usually follows at once: have the download under way.
            let this = self.clone();
            let nar_hash = stored.narinfo.nar_hash;
            tokio::spawn(async move {
                if let Err(e) = this.download(&nar_hash).await {
                    debug!(nar = %nar_hash, error = %e, "prefetch did not start");
                }
            });
        }
        Ok(stored)
    }

    /// The NAR URL we hand out for an upstream narinfo. With chunking it names the NAR by its
    /// NarHash in zstd, which we can always produce (spliced chunks, or recompressed); without,
    /// it keeps the upstream file's name, served byte for byte.
    pub(crate) fn url_for(&self, upstream: &NarInfo) -> NarKey {
        if self.inner.config.cdc.is_some() {
            NarKey::new(upstream.nar_hash, Compression::Zstd)
        } else {
            NarKey::new(
                upstream.file_hash.unwrap_or(upstream.nar_hash),
                upstream.compression,
            )
        }
    }

    /// The NAR a URL names: one we handed out, or `nar/<NarHash>.nar[.ext]` of any NAR we know,
    /// so a client may ask for the plain NAR (or another compression) by its hash.
    #[tracing::instrument(name = "db.resolve_nar", skip_all, fields(nar = %key))]
    async fn resolve(&self, key: &NarKey) -> Result<ncps_nix::Sha256Hash, CacheError> {
        let db = &self.inner.db;
        if let Some(nar_hash) = db.nar_hash_for_url(key).await? {
            return Ok(nar_hash);
        }
        if db.nar(&key.hash).await?.is_some() || db.narinfo_with_origin(&key.hash).await?.is_some()
        {
            return Ok(key.hash);
        }
        Err(CacheError::NotFound)
    }

    /// The size of a NAR as a HEAD request reports it, without downloading anything.
    #[tracing::instrument(name = "cache.nar_size", skip_all, fields(nar = %key))]
    pub async fn nar_size(&self, key: &NarKey) -> Result<Option<u64>, CacheError> {
        if self.upload_pending(key) {
            return Ok(None);
        }
        let nar_hash = self.resolve(key).await?;
        if let Some(record) = self.inner.db.nar(&nar_hash).await? {
            return Ok(stored_size(key, &record));
        }
        if let Some(download) = self.inner.downloads.join(&nar_hash) {
            return Ok((download.compression() == key.compression)
                .then(|| download.known_size())
                .flatten());
        }
        let cached = self
            .inner
            .db
            .narinfo_with_origin(&nar_hash)
            .await?
            .ok_or(CacheError::NotFound)?;
        let origin = cached.origin.as_ref().ok_or(CacheError::NotFound)?;
        Ok(
            (origin.compression == key.compression && self.inner.config.cdc.is_none())
                .then_some(origin.file_size)
                .flatten(),
        )
    }

    /// A NAR's bytes in the compression its URL names: from storage in whichever form it is
    /// stored, otherwise from the (shared) upstream download.
    #[tracing::instrument(name = "cache.nar", skip_all, fields(nar = %key))]
    pub async fn nar(
        &self,
        key: &NarKey,
        range: Option<RangeRequest>,
    ) -> Result<NarBody, CacheError> {
        let requests = &self.inner.metrics.nar_requests;
        match self.nar_uncounted(key, range).await {
            Ok((body, outcome)) => {
                Metrics::lookup(requests, outcome);
                let served = self.inner.metrics.nar_bytes_served.clone();
                let stream = body
                    .stream
                    .inspect(move |piece| {
                        if let Ok(bytes) = piece {
                            served.inc_by(bytes.len() as u64);
                        }
                    })
                    .boxed();
                Ok(NarBody { stream, ..body })
            }
            Err(e) => {
                Metrics::lookup(requests, outcome_of(&e));
                Err(e)
            }
        }
    }

    async fn nar_uncounted(
        &self,
        key: &NarKey,
        range: Option<RangeRequest>,
    ) -> Result<(NarBody, Outcome), CacheError> {
        // The usual request names a URL we handed out: its NAR and record come in one query.
        let (nar_hash, mut known) = match self.inner.db.nar_by_url(key).await? {
            Some((nar_hash, record)) => (nar_hash, Some(record)),
            None => (self.resolve(key).await?, None),
        };
        self.inner.access.nar(nar_hash);
        let download = loop {
            let record = match known.take() {
                Some(record) => record,
                None => {
                    self.inner
                        .db
                        .nar(&nar_hash)
                        .instrument(tracing::info_span!("db.get_nar"))
                        .await?
                }
            };
            if let Some(record) = record
                && let Some(body) = self.serve_stored(key, &record, range).await?
            {
                return Ok((body, Outcome::Hit));
            }
            match self.download(&nar_hash).await? {
                Fetch::Local(download) => break download,
                // Another replica stored it meanwhile: serve it from the shared storage.
                Fetch::StoredElsewhere => continue,
            }
        };
        let total_size = download.started().await?;
        let from = download.compression();
        // Ranges are not honoured on a NAR still arriving; HTTP allows sending it whole.
        if from == key.compression {
            let body = NarBody {
                total_size,
                range: None,
                stream: download.reader(),
            };
            return Ok((body, Outcome::Miss));
        }
        let stream = transcode(download.reader(), from, key.compression);
        Ok((NarBody::sized_unknown(stream), Outcome::Miss))
    }

    /// Joins or starts the download of a NAR. Across replicas only the holder of the NAR's
    /// download lock fetches it; the others wait until it is stored (or until the holder dies
    /// and its lock expires, when one of them takes over).
    #[tracing::instrument(name = "cache.download", skip_all, fields(nar = %nar_hash))]
    async fn download(&self, nar_hash: &ncps_nix::Sha256Hash) -> Result<Fetch, CacheError> {
        let lock_key = format!("download:{nar_hash}");
        let ttl = self.inner.config.download_lock_ttl;
        let deadline = tokio::time::Instant::now() + ttl;
        let mut delay = Duration::from_millis(25);
        let guard = loop {
            if let Some(download) = self.inner.downloads.join(nar_hash) {
                return Ok(Fetch::Local(download));
            }
            // One task per process asks the (possibly remote) lock service; the others wait
            // here and join its download.
            if let Some(local) = self.inner.local_locks.try_lock(&lock_key, ttl).await? {
                if let Some(guard) = self.inner.locks.try_lock(&lock_key, ttl).await? {
                    break (guard, local);
                }
            }
            if self.inner.db.nar(nar_hash).await?.is_some() {
                return Ok(Fetch::StoredElsewhere);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(CacheError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "another replica's download of this NAR did not finish in time",
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        };
        // The previous holder may have finished just before we got the lock.
        if self.inner.db.nar(nar_hash).await?.is_some() {
            return Ok(Fetch::StoredElsewhere);
        }
        let cached = self
            .inner
            .db
            .narinfo_with_origin(nar_hash)
            .await?
            .ok_or(CacheError::NotFound)?;
        let origin = cached.origin.clone().ok_or(CacheError::NotFound)?;
        let eager_chunks = self
            .inner
            .config
            .cdc
            .filter(|c| !c.lazy)
            .map(|c| c.chunking);
        let output = if eager_chunks.is_some() {
            Compression::Zstd
        } else {
            origin.compression
        };
        let this = self.clone();
        let download = self
            .inner
            .downloads
            .join_or_start(nar_hash, output, |download, file| {
                tokio::spawn(
                    async move {
                        this.run_download(download, file, cached, origin, eager_chunks)
                            .await;
                        drop(guard);
                    }
                    // The download's span is a child of the request that started it.
                    .in_current_span(),
                );
            })?;
        Ok(Fetch::Local(download))
    }
}

/// Where a NAR that is not stored comes from.
enum Fetch {
    /// A download in this process (joined or started).
    Local(Arc<Download>),
    /// Another replica stored it while we waited.
    StoredElsewhere,
}

/// The lookup outcome an error stands for.
fn outcome_of(e: &CacheError) -> Outcome {
    match e {
        CacheError::NotFound => Outcome::NotFound,
        _ => Outcome::Error,
    }
}

/// Content-Length of a stored NAR in the URL's compression, when it can be known up front.
fn stored_size(key: &NarKey, record: &NarRecord) -> Option<u64> {
    if let Some(whole) = record.whole.filter(|w| w.key == *key) {
        return Some(whole.size);
    }
    match (key.compression, record.chunked) {
        (Compression::Zstd, Some(form)) => Some(form.spliced_size),
        (Compression::None, _) => Some(record.nar_size),
        _ => None,
    }
}

/// FileHash/FileSize for a narinfo: they must describe the bytes its URL will deliver, so they
/// are given only when those bytes are fixed (Nix itself does not check them).
fn file_info(
    key: &NarKey,
    narinfo: &NarInfo,
    stored: Option<&NarRecord>,
    origin: Option<&NarOrigin>,
) -> (Option<ncps_nix::Sha256Hash>, Option<u64>) {
    if key.compression == Compression::None {
        return (Some(narinfo.nar_hash), Some(narinfo.nar_size));
    }
    match stored {
        Some(record) => {
            if let Some(whole) = record.whole.filter(|w| w.key == *key) {
                return (Some(whole.key.hash), Some(whole.size));
            }
            match (key.compression, record.chunked) {
                (Compression::Zstd, Some(form)) if form.spliced_hash.is_some() => {
                    (form.spliced_hash, Some(form.spliced_size))
                }
                _ => (None, None),
            }
        }
        None => match origin {
            // Not stored yet: the upstream file is what a download will deliver as is.
            Some(o) if o.compression == key.compression && o.file_hash == Some(key.hash) => {
                (o.file_hash, o.file_size)
            }
            _ => (None, None),
        },
    }
}
