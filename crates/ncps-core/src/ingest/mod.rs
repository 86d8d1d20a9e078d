//! The ingest side: everything that brings bytes into the cache.
//!
//! Upstream narinfos are checked and recorded; NARs are downloaded once however many clients
//! ask (every client follows the one download while it is written and verified), received from
//! uploads, chunked, and committed to storage and database only after every hash and size
//! matched. Temporary files come from [`TempFiles`]. The reader calls [`Ingest::fetch_narinfo`]
//! and [`Ingest::download`] on a miss; maintenance calls the commit and chunking steps for
//! imports, lazy chunking and migrations; the HTTP layer calls the upload methods.

mod chunking;
mod download;
mod fetch;
mod upload;
mod verify;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ncps_db::{CachedNarInfo, Database, NarOrigin, OwnSignature, WholeFile};
use ncps_nix::{Compression, NarInfo, NarKey, Sha256Hash, StorePathHash};
use ncps_store::BlobStore;
use ncps_upstream::Upstreams;
use tracing::{Instrument, debug, info};

use crate::chunk_queue::ChunkQueue;
use crate::codec::can_decode;
use crate::config::{CacheConfig, CdcConfig};
use crate::locks::{LocalLocks, LockService};
use crate::metrics::Metrics;
use crate::signer::Signer;
use crate::temp::TempFiles;
use crate::{CacheError, defaults};

pub use chunking::ChunkSettings;
pub(crate) use chunking::{Chunked, chunk_verified};
pub(crate) use download::Download;
use download::Downloads;
pub(crate) use upload::UPLOAD_WAITS_FOR_NARINFO;
pub(crate) use upload::file_source;
pub use upload::{MAX_NARINFO_UPLOAD, UploadConfig};
pub(crate) use verify::{Expected, write_verified};

/// What [`Ingest::record_narinfo`] did.
pub(crate) struct Recorded {
    /// Whether this call inserted the row (`false`: the path had one already, which stays).
    pub inserted: bool,
    /// Our signature, as recorded with the row when this call inserted it.
    pub own: Option<OwnSignature>,
}

/// Where a NAR that is not stored comes from.
pub(crate) enum Fetch {
    /// A download in this process (joined or started).
    Local(Arc<Download>),
    /// Another replica stored it while we waited.
    StoredElsewhere,
}

/// Brings bytes in; cheap to clone.
#[derive(Clone)]
pub struct Ingest(Arc<State>);

struct State {
    db: Database,
    store: BlobStore,
    upstreams: Upstreams,
    metrics: Arc<Metrics>,
    temp: TempFiles,
    downloads: Downloads,
    /// The lock service shared by replicas.
    locks: Arc<dyn LockService>,
    /// In-process locks in front of `locks`, so one task per process polls the lock service.
    local_locks: LocalLocks,
    download_lock_ttl: Duration,
    cdc: Option<CdcConfig>,
    uploads: UploadConfig,
    prefetch: bool,
    /// NARs stored whole, for the lazy-chunking workers.
    chunk_queue: ChunkQueue,
    /// Signs each narinfo as it is recorded.
    signer: Signer,
}

impl Ingest {
    pub(crate) fn new(
        config: &CacheConfig,
        signer: Signer,
        db: Database,
        store: BlobStore,
        upstreams: Upstreams,
        metrics: Arc<Metrics>,
        chunk_queue: ChunkQueue,
    ) -> Self {
        let temp = TempFiles::new(config.temp_dir.clone());
        Self(Arc::new(State {
            signer,
            db,
            store,
            upstreams,
            metrics,
            downloads: Downloads::new(temp.clone()),
            temp,
            locks: config.locks.clone(),
            local_locks: LocalLocks::default(),
            download_lock_ttl: config.download_lock_ttl,
            cdc: config.cdc,
            uploads: config.uploads.clone(),
            prefetch: config.prefetch,
            chunk_queue,
        }))
    }

    /// The upstreams, for their health gauges.
    pub(crate) fn upstreams(&self) -> &Upstreams {
        &self.0.upstreams
    }

    /// Temporary files of this cache.
    pub(crate) fn temp(&self) -> &TempFiles {
        &self.0.temp
    }

    /// How long no NAR download has been in flight in this process; `None` while one is (lazy
    /// chunking waits for a quiet moment).
    pub(crate) fn downloads_idle_for(&self) -> Option<Duration> {
        self.0.downloads.idle_for()
    }

    /// Finds a narinfo upstream, checks it and records it with our NAR URL. Returns it with our
    /// signature as recorded (so the first rendering need not sign again), `None` when another
    /// request recorded the path first.
    #[tracing::instrument(name = "cache.fetch_narinfo", skip_all, fields(hash = %hash))]
    pub(crate) async fn fetch_narinfo(
        &self,
        hash: &StorePathHash,
    ) -> Result<(CachedNarInfo, Option<OwnSignature>), CacheError> {
        let started = std::time::Instant::now();
        let asked = self.0.upstreams.find_narinfo(hash).await;
        self.0
            .metrics
            .go
            .upstream_narinfo_fetch_duration
            .observe(started.elapsed().as_secs_f64());
        let found = asked?.ok_or(CacheError::NotFound)?;
        self.0
            .metrics
            .upstream_answered(&found.upstream_url, started.elapsed());
        let upstream = found.narinfo;
        // Refuse now what could not be verified later, rather than hand out a dead NAR URL.
        refuse_undecodable(&upstream)?;
        let origin = NarOrigin {
            upstream_url: found.upstream_url,
            nar_url: upstream.url.clone(),
            compression: upstream.compression,
            file_hash: upstream.file_hash,
            file_size: upstream.file_size,
        };
        let cached = self.as_served(upstream, Some(origin));
        let recorded = self
            .record_narinfo(&cached)
            .instrument(tracing::info_span!("db.insert_narinfo"))
            .await?;
        info!(store_path = %cached.narinfo.store_path, upstream = %cached.origin.as_ref().map_or("", |o| &o.upstream_url), "cached narinfo");
        // When a concurrent request stored the same path first, its row is what every client
        // must see.
        let (stored, own) = if recorded.inserted {
            (cached, recorded.own)
        } else {
            (self.0.db.narinfo(hash).await?.unwrap_or(cached), None)
        };
        if self.0.prefetch {
            // The client's NAR request usually follows at once: have the download under way.
            let this = self.clone();
            let nar_hash = stored.narinfo.nar_hash;
            tokio::spawn(async move {
                if let Err(e) = this.download(&nar_hash).await {
                    debug!(nar = %nar_hash, error = %e, "prefetch did not start");
                }
            });
        }
        Ok((stored, own))
    }

    /// Records a narinfo (see [`Database::insert_narinfo`]) with our signature of it, so hits
    /// need not sign. Every narinfo this cache stores is recorded here.
    pub(crate) async fn record_narinfo(
        &self,
        cached: &CachedNarInfo,
    ) -> Result<Recorded, CacheError> {
        let own = self.0.signer.for_storage(&cached.narinfo);
        let inserted = self.0.db.insert_narinfo(cached, own.as_ref()).await?;
        Ok(Recorded { inserted, own })
    }

    /// A narinfo as we record it: our NAR URL and its compression, FileHash/FileSize left for
    /// the serve plan to fill in when it is rendered.
    pub(crate) fn as_served(&self, narinfo: NarInfo, origin: Option<NarOrigin>) -> CachedNarInfo {
        let url_key = self.url_for(&narinfo);
        CachedNarInfo {
            narinfo: NarInfo {
                url: url_key.url(),
                compression: url_key.compression,
                file_hash: None,
                file_size: None,
                ..narinfo
            },
            url_key,
            origin,
        }
    }

    /// The NAR URL we hand out for a narinfo: the NAR's own NarHash, the one hash every byte
    /// served under it is verified against, so no narinfo can make a URL name other bytes. (An
    /// upstream's or uploader's FileHash is not signed: naming URLs after it let a narinfo claim
    /// the URL of a NAR it does not describe.) With chunking, in zstd, which we can always
    /// produce (spliced chunks, or recompressed); without, in the file's compression, served
    /// byte for byte.
    fn url_for(&self, narinfo: &NarInfo) -> NarKey {
        let compression = if self.0.cdc.is_some() {
            Compression::Zstd
        } else {
            narinfo.compression
        };
        NarKey::new(narinfo.nar_hash, compression)
    }

    /// Joins or starts the download of a NAR. Across replicas only the holder of the NAR's
    /// download lock fetches it; the others wait until it is stored (or until the holder dies
    /// and its lock lapses, when one of them takes over), [`defaults::DOWNLOAD_WAIT`] at most.
    #[tracing::instrument(name = "cache.download", skip_all, fields(nar = %nar_hash))]
    pub(crate) async fn download(&self, nar_hash: &Sha256Hash) -> Result<Fetch, CacheError> {
        let s = &self.0;
        let lock_key = format!("download:{nar_hash}");
        let ttl = s.download_lock_ttl;
        let deadline = tokio::time::Instant::now() + defaults::DOWNLOAD_WAIT;
        let mut delay = Duration::from_millis(25);
        let guard = loop {
            if let Some(download) = s.downloads.join(nar_hash) {
                return Ok(Fetch::Local(download));
            }
            // One task per process asks the (possibly remote) lock service; the others wait
            // here and join its download.
            if let Some(local) = s.local_locks.try_lock_now(&lock_key)
                && let Some(guard) = s.locks.try_lock(&lock_key, ttl).await?
            {
                break (guard, local);
            }
            if s.db.nar(nar_hash).await?.is_some() {
                return Ok(Fetch::StoredElsewhere);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(CacheError::WaitedTooLong);
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        };
        // The previous holder may have finished just before we got the lock.
        if s.db.nar(nar_hash).await?.is_some() {
            return Ok(Fetch::StoredElsewhere);
        }
        let cached =
            s.db.narinfo_with_origin(nar_hash)
                .await?
                .ok_or(CacheError::NotFound)?;
        let origin = cached.origin.clone().ok_or(CacheError::NotFound)?;
        let eager = s.cdc.and_then(|c| c.eager());
        let output = if eager.is_some() {
            Compression::Zstd
        } else {
            origin.compression
        };
        let this = self.clone();
        let nar = (cached.narinfo.nar_hash, cached.narinfo.nar_size);
        let download = s
            .downloads
            .join_or_start(nar, output, origin, |download, file| {
                tokio::spawn(
                    async move {
                        this.run_download(download, file, eager).await;
                        drop(guard);
                    }
                    // The download's span is a child of the request that started it.
                    .in_current_span(),
                );
            })?;
        Ok(Fetch::Local(download))
    }

    /// Stores a verified file as a NAR's whole file, then records it: the row is written only
    /// once the bytes are in storage.
    #[tracing::instrument(name = "store.put_nar", skip_all, fields(nar = %nar_hash, size = whole.size))]
    pub(crate) async fn commit_whole_file(
        &self,
        nar_hash: &Sha256Hash,
        nar_size: u64,
        whole: WholeFile,
        file: &Path,
    ) -> Result<(), CacheError> {
        self.0.store.put_nar_from_file(&whole.key, file).await?;
        self.0
            .db
            .record_whole_file(nar_hash, nar_size, whole, None)
            .await?;
        if self.0.cdc.is_some_and(|c| c.lazy) {
            self.0.chunk_queue.push(*nar_hash);
        }
        Ok(())
    }

    /// Records a chunking result as the NAR's chunk list, once its chunks are durable;
    /// `false` when it already had one.
    pub(crate) async fn commit_chunks(
        &self,
        nar_hash: &Sha256Hash,
        nar_size: u64,
        chunked: &Chunked,
    ) -> Result<bool, CacheError> {
        self.commit_chunks_then(nar_hash, nar_size, chunked, None)
            .await
    }

    /// [`Ingest::commit_chunks`] for a NAR stored whole and chunked afterwards: the same
    /// commit marks its whole file for deletion at `delete_whole_after` (seconds since epoch).
    pub(crate) async fn commit_chunks_replacing_whole(
        &self,
        nar_hash: &Sha256Hash,
        nar_size: u64,
        chunked: &Chunked,
        delete_whole_after: i64,
    ) -> Result<bool, CacheError> {
        self.commit_chunks_then(nar_hash, nar_size, chunked, Some(delete_whole_after))
            .await
    }

    async fn commit_chunks_then(
        &self,
        nar_hash: &Sha256Hash,
        nar_size: u64,
        chunked: &Chunked,
        delete_whole_after: Option<i64>,
    ) -> Result<bool, CacheError> {
        // The chunks are durable before the row names them (and the whole file may go).
        self.0.store.sync_written().await?;
        let (refs, spliced) = (&chunked.refs, chunked.summary.file_hash);
        let db = &self.0.db;
        Ok(match delete_whole_after {
            None => db.commit_chunks(nar_hash, nar_size, refs, spliced).await?,
            Some(at) => {
                db.commit_chunks_replacing_whole(nar_hash, nar_size, refs, spliced, at)
                    .await?
            }
        })
    }
}

/// Refuses a narinfo whose NAR ncps could never verify.
pub(crate) fn refuse_undecodable(narinfo: &NarInfo) -> Result<(), CacheError> {
    if can_decode(narinfo.compression) {
        return Ok(());
    }
    Err(CacheError::Integrity(format!(
        "{} is compressed with {}, which ncps cannot verify",
        narinfo.store_path, narinfo.compression
    )))
}

#[cfg(test)]
impl Ingest {
    /// Registers a download of `nar` that never progresses, as if its upstream were slow, until
    /// [`Ingest::end_download`] is called with it.
    pub(crate) fn download_in_flight(&self, nar: Sha256Hash) -> Arc<Download> {
        let origin = NarOrigin {
            upstream_url: "http://127.0.0.1:9".into(),
            nar_url: "nar/slow.nar".into(),
            compression: Compression::None,
            file_hash: None,
            file_size: None,
        };
        self.0
            .downloads
            .join_or_start((nar, 1), Compression::None, origin, |_, _| {})
            .expect("a temporary file for the download")
    }

    /// Ends a download registered by [`Ingest::download_in_flight`].
    pub(crate) fn end_download(&self, download: &Download) {
        self.0.downloads.remove(download);
    }
}
