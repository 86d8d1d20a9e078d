use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use ncps_db::{CachedNarInfo, Database, NarFile, NarOrigin};
use ncps_nix::{CacheInfo, NarInfo, NarKey, PublicKey, STORE_DIR, SecretKey, StorePathHash};
use ncps_store::{BlobStore, ByteRange};
use ncps_upstream::Upstreams;
use tracing::{debug, error, info, warn};

use crate::download::{Download, Downloads, Progress};
use crate::verify::{Expected, NarIngest, Verified, can_verify};
use crate::{CacheError, RangeRequest};

/// Bytes queued between the network and the disk writer per download; bounds memory per NAR.
const INGEST_QUEUE: usize = 16;

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

/// The cache; cheap to clone, shared by every request.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    config: CacheConfig,
    public_key: PublicKey,
    db: Database,
    store: BlobStore,
    upstreams: Upstreams,
    downloads: Downloads,
}

impl Cache {
    /// Wires the cache to its metadata, storage and upstreams.
    pub fn new(config: CacheConfig, db: Database, store: BlobStore, upstreams: Upstreams) -> Self {
        let public_key = config.secret_key.public_key();
        let downloads = Downloads::new(config.temp_dir.clone());
        Self {
            inner: Arc::new(Inner {
                config,
                public_key,
                db,
                store,
                upstreams,
                downloads,
            }),
        }
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
    pub async fn narinfo(&self, hash: &StorePathHash) -> Result<String, CacheError> {
        let cached = match self.inner.db.narinfo(hash).await? {
            Some(cached) => cached,
            None => self.fetch_narinfo(hash).await?,
        };
        Ok(self.render(cached.narinfo))
    }

    fn render(&self, mut narinfo: NarInfo) -> String {
        if self.inner.config.sign_narinfo {
            narinfo.sign(&self.inner.config.secret_key);
        }
        narinfo.render()
    }

    async fn fetch_narinfo(&self, hash: &StorePathHash) -> Result<CachedNarInfo, CacheError> {
        let found = self
            .inner
            .upstreams
            .find_narinfo(hash)
            .await?
            .ok_or(CacheError::NotFound)?;
        let upstream = found.narinfo;
        // Refuse now what could not be verified later, rather than hand out a dead NAR URL.
        if !can_verify(upstream.compression) {
            return Err(CacheError::Integrity(format!(
                "{} is compressed with {}, which ncps cannot verify",
                upstream.store_path, upstream.compression
            )));
        }
        let nar_key = NarKey::new(
            upstream.file_hash.unwrap_or(upstream.nar_hash),
            upstream.compression,
        );
        let origin = NarOrigin {
            upstream_url: found.upstream_url,
            nar_url: upstream.url.clone(),
        };
        let narinfo = NarInfo {
            url: nar_key.url(),
            ..upstream
        };
        let cached = CachedNarInfo {
            narinfo,
            nar_key,
            origin: Some(origin),
        };
        self.inner.db.insert_narinfo(&cached).await?;
        info!(store_path = %cached.narinfo.store_path, upstream = %cached.origin.as_ref().map_or("", |o| &o.upstream_url), "cached narinfo");
        // Re-read: when a concurrent request stored the same path first, its row is what every
        // client must see.
        Ok(self.inner.db.narinfo(hash).await?.unwrap_or(cached))
    }

    /// The size of a NAR as a HEAD request reports it, without downloading anything.
    pub async fn nar_size(&self, key: &NarKey) -> Result<Option<u64>, CacheError> {
        if let Some(file) = self.inner.db.nar_file(key).await? {
            return Ok(Some(file.file_size));
        }
        if let Some(download) = self.inner.downloads.join(key) {
            return Ok(download.known_size());
        }
        match self.inner.db.narinfo_for_nar(key).await? {
            Some(cached) if cached.origin.is_some() => Ok(cached.narinfo.file_size),
            _ => Err(CacheError::NotFound),
        }
    }

    /// A NAR's bytes: from storage when stored, otherwise from the (shared) upstream download.
    pub async fn nar(
        &self,
        key: &NarKey,
        range: Option<RangeRequest>,
    ) -> Result<NarBody, CacheError> {
        if let Some(body) = self.stored_nar(key, range).await? {
            return Ok(body);
        }
        let download = self.download(key).await?;
        let total_size = download.started().await?;
        // Ranges are not honoured on a NAR still arriving; HTTP allows sending it whole.
        Ok(NarBody {
            total_size,
            range: None,
            stream: download.reader(),
        })
    }

    async fn stored_nar(
        &self,
        key: &NarKey,
        range: Option<RangeRequest>,
    ) -> Result<Option<NarBody>, CacheError> {
        let Some(file) = self.inner.db.nar_file(key).await? else {
            return Ok(None);
        };
        let range = match range {
            Some(r) => Some(
                r.resolve(file.file_size)
                    .ok_or(CacheError::RangeNotSatisfiable {
                        size: file.file_size,
                    })?,
            ),
            None => None,
        };
        let Some(read) = self.inner.store.read_nar(key, range).await? else {
            warn!(nar = %key, "NAR recorded but missing from storage; fetching it again");
            self.inner.db.delete_nar_file(key).await?;
            return Ok(None);
        };
        Ok(Some(NarBody {
            total_size: Some(read.total_size),
            range,
            stream: read.stream.map(|r| r.map_err(io::Error::other)).boxed(),
        }))
    }

    async fn download(&self, key: &NarKey) -> Result<Arc<Download>, CacheError> {
        if let Some(download) = self.inner.downloads.join(key) {
            return Ok(download);
        }
        let cached = self
            .inner
            .db
            .narinfo_for_nar(key)
            .await?
            .ok_or(CacheError::NotFound)?;
        let Some(origin) = cached.origin.clone() else {
            return Err(CacheError::NotFound);
        };
        let this = self.clone();
        let download = self.inner.downloads.join_or_start(key, |download, file| {
            tokio::spawn(this.run_download(download, file, cached, origin));
        })?;
        Ok(download)
    }

    async fn run_download(
        self,
        download: Arc<Download>,
        file: std::fs::File,
        cached: CachedNarInfo,
        origin: NarOrigin,
    ) {
        let key = cached.nar_key;
        debug!(nar = %key, upstream = %origin.upstream_url, "downloading NAR");
        match self
            .fetch_and_verify(&download, file, &cached, &origin)
            .await
        {
            Ok(verified) => {
                download.set(Progress::Done {
                    size: verified.file_size,
                });
                if let Err(e) = self.commit(&download, &cached, verified).await {
                    error!(nar = %key, error = %e, "verified NAR could not be stored");
                } else {
                    info!(nar = %key, size = verified.file_size, "stored NAR");
                }
            }
            Err(e) => {
                warn!(nar = %key, upstream = %origin.upstream_url, error = %e, "NAR download failed; nothing cached");
                download.fail(e);
            }
        }
        self.inner.downloads.remove(&download);
    }

    async fn fetch_and_verify(
        &self,
        download: &Arc<Download>,
        file: std::fs::File,
        cached: &CachedNarInfo,
        origin: &NarOrigin,
    ) -> Result<Verified, CacheError> {
        let expected = Expected::of(&cached.narinfo);
        let mut response = self
            .inner
            .upstreams
            .fetch_nar(&origin.upstream_url, &origin.nar_url)
            .await?;
        if let (Some(sent), Some(promised)) = (response.content_length, expected.file_size)
            && sent != promised
        {
            return Err(CacheError::Integrity(format!(
                "upstream sends {sent} bytes, FileSize says {promised}"
            )));
        }
        let total = expected.file_size.or(response.content_length);
        download.set(Progress::Running { written: 0, total });

        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(INGEST_QUEUE);
        let writer = download.clone();
        let ingest = tokio::task::spawn_blocking(move || -> io::Result<Verified> {
            let mut ingest = NarIngest::new(file, expected)?;
            let mut written = 0u64;
            while let Some(chunk) = rx.blocking_recv() {
                ingest.write_file(&chunk)?;
                written += chunk.len() as u64;
                writer.advance(written);
                ingest.check(&chunk)?;
            }
            ingest.finish()
        });

        let mut body_error = None;
        while let Some(chunk) = response.body.next().await {
            match chunk {
                Ok(chunk) => {
                    if tx.send(chunk).await.is_err() {
                        break; // the writer stopped; its error says why
                    }
                }
                Err(e) => {
                    body_error = Some(e);
                    break;
                }
            }
        }
        drop(tx);
        let verified = ingest.await.map_err(io::Error::other)?;
        if let Some(e) = body_error {
            return Err(e.into());
        }
        verified.map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::Unsupported => CacheError::Integrity(e.to_string()),
            _ => CacheError::Io(e),
        })
    }

    async fn commit(
        &self,
        download: &Download,
        cached: &CachedNarInfo,
        verified: Verified,
    ) -> Result<(), CacheError> {
        let key = cached.nar_key;
        self.inner
            .store
            .put_nar_from_file(&key, download.path())
            .await?;
        let file = NarFile {
            key,
            file_size: verified.file_size,
            nar_hash: cached.narinfo.nar_hash,
            nar_size: cached.narinfo.nar_size,
        };
        self.inner.db.insert_nar_file(&file).await?;
        self.inner
            .db
            .complete_file_info(&file, &verified.file_hash)
            .await?;
        Ok(())
    }
}
