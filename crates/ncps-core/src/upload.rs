//! Uploads from `nix copy --to http://…`: the NAR arrives first (`PUT /nar/…`), its narinfo
//! after (`PUT /<hash>.narinfo`).
//!
//! A NAR upload is streamed to a temporary file while its FileHash (which must match its URL)
//! and the hash and size of the plain NAR are measured; it then waits, unpublished, for its
//! narinfo. The narinfo is accepted only when it is well formed, signed by a trusted upload key
//! (when required), and describes exactly the uploaded bytes; then the NAR enters the store like
//! a fetched one. Nothing of a refused upload is kept.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use ncps_db::{CachedNarInfo, WholeFile};
use ncps_nix::{NarInfo, NarKey, PublicKey, StorePathHash};
use tempfile::TempPath;
use tracing::info;

use crate::chunking::{check_chunked, chunk_nar};
use crate::codec::can_decode;
use crate::metrics::{Metrics, Outcome};
use crate::verify::{Expected, Verified, write_verified};
use crate::{Cache, CacheError};

/// How long an uploaded NAR waits for its narinfo before it is dropped.
const PENDING_TTL: Duration = Duration::from_secs(3600);
/// Largest narinfo accepted (they are a few hundred bytes).
pub const MAX_NARINFO_UPLOAD: usize = 1024 * 1024;

/// Rules for uploads.
#[derive(Clone, Debug)]
pub struct UploadConfig {
    /// Refuse narinfos without a signature from one of `trusted_keys` (fail closed: with no key
    /// configured, every upload is refused).
    pub require_trusted_signature: bool,
    /// Keys whose signatures make an uploaded narinfo trusted.
    pub trusted_keys: Vec<PublicKey>,
    /// Largest NAR file (and plain NAR) accepted, in bytes.
    pub max_size: u64,
}

impl Default for UploadConfig {
    fn default() -> Self {
        Self {
            require_trusted_signature: false,
            trusted_keys: Vec::new(),
            max_size: 32 << 30,
        }
    }
}

/// An uploaded NAR waiting for its narinfo.
struct Pending {
    path: TempPath,
    verified: Verified,
    at: Instant,
}

/// Uploaded NARs by URL, until their narinfo arrives.
#[derive(Default)]
pub(crate) struct PendingUploads(Mutex<HashMap<NarKey, Arc<Pending>>>);

impl PendingUploads {
    fn insert(&self, key: NarKey, pending: Pending) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, p| p.at.elapsed() < PENDING_TTL);
        map.insert(key, Arc::new(pending));
    }

    fn take(&self, key: &NarKey) -> Option<Arc<Pending>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(key)
    }

    fn contains(&self, key: &NarKey) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(key)
    }
}

fn bad(msg: impl Into<String>) -> CacheError {
    CacheError::BadRequest(msg.into())
}

fn file_source(path: &std::path::Path) -> io::Result<BoxStream<'static, io::Result<Bytes>>> {
    let file = std::fs::File::open(path)?;
    Ok(
        tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), 256 * 1024)
            .boxed(),
    )
}

impl Cache {
    /// True when an uploaded NAR with this URL is stored or waiting for its narinfo (so
    /// `HEAD` tells `nix copy` not to send it again).
    pub(crate) fn upload_pending(&self, key: &NarKey) -> bool {
        self.inner.pending.contains(key)
    }

    /// Receives a NAR upload. Its URL names its FileHash, which must match the bytes.
    pub async fn upload_nar(
        &self,
        key: &NarKey,
        body: BoxStream<'static, io::Result<Bytes>>,
    ) -> Result<(), CacheError> {
        if !can_decode(key.compression) {
            return Err(bad(format!(
                "NARs compressed with {} are not accepted",
                key.compression
            )));
        }
        std::fs::create_dir_all(&self.inner.config.temp_dir)?;
        let (file, path) = tempfile::Builder::new()
            .prefix("upload-")
            .tempfile_in(&self.inner.config.temp_dir)?
            .into_parts();
        let expected = Expected {
            compression: key.compression,
            file_hash: Some(key.hash),
            file_size: None,
            nar_hash: None,
            nar_size: None,
            max_size: self.inner.config.uploads.max_size,
        };
        let verified = write_verified(file, expected, body, None)
            .await
            .map_err(|e| match e {
                CacheError::Integrity(m) if m.contains("larger than") => CacheError::TooLarge {
                    limit: self.inner.config.uploads.max_size,
                },
                CacheError::Integrity(m) => bad(format!("uploaded NAR refused: {m}")),
                other => other,
            })?;
        self.inner.pending.insert(
            *key,
            Pending {
                path,
                verified,
                at: Instant::now(),
            },
        );
        info!(nar = %key, size = verified.file_size, "received NAR upload; waiting for its narinfo");
        Ok(())
    }

    /// Receives a narinfo upload and, when everything checks out, publishes the path.
    pub async fn upload_narinfo(&self, hash: &StorePathHash, text: &str) -> Result<(), CacheError> {
        let result = self.accept_narinfo(hash, text).await;
        let outcome = if result.is_ok() {
            Outcome::Hit
        } else {
            Outcome::Error
        };
        Metrics::lookup(&self.inner.metrics.uploads, outcome);
        result
    }

    async fn accept_narinfo(&self, hash: &StorePathHash, text: &str) -> Result<(), CacheError> {
        let narinfo = NarInfo::parse(text).map_err(|e| bad(format!("malformed narinfo: {e}")))?;
        let key = NarKey::parse_url(&narinfo.url)
            .map_err(|e| bad(format!("narinfo URL {:?}: {e}", narinfo.url)))?;
        // Whatever happens next, the uploaded NAR leaves the waiting room: published, or
        // dropped with its temporary file when the narinfo is refused.
        let pending = self.inner.pending.take(&key);
        if narinfo.store_path.hash() != hash {
            return Err(bad(format!(
                "narinfo for {} uploaded as {hash}.narinfo",
                narinfo.store_path
            )));
        }
        let rules = &self.inner.config.uploads;
        if rules.require_trusted_signature && !narinfo.verify(&rules.trusted_keys) {
            return Err(CacheError::Forbidden(
                "the narinfo carries no valid signature from a trusted upload key".into(),
            ));
        }
        if key.compression != narinfo.compression {
            return Err(bad(format!(
                "URL says {} but Compression says {}",
                key.compression, narinfo.compression
            )));
        }
        match pending {
            Some(pending) => self.publish_upload(narinfo, &key, &pending).await,
            None if self.inner.db.nar(&narinfo.nar_hash).await?.is_some() => {
                self.publish_narinfo(narinfo, None).await // same NAR stored before: just the path
            }
            None => Err(bad(format!(
                "{} was not uploaded before its narinfo",
                narinfo.url
            ))),
        }
    }

    async fn publish_upload(
        &self,
        narinfo: NarInfo,
        key: &NarKey,
        pending: &Pending,
    ) -> Result<(), CacheError> {
        let v = &pending.verified;
        let mismatch = |what: &str, said: String, got: String| {
            Err(bad(format!(
                "{what} mismatch: narinfo says {said}, uploaded NAR has {got}"
            )))
        };
        if v.nar_hash != narinfo.nar_hash {
            return mismatch(
                "NarHash",
                narinfo.nar_hash.to_string(),
                v.nar_hash.to_string(),
            );
        }
        if v.nar_size != narinfo.nar_size {
            return mismatch(
                "NarSize",
                narinfo.nar_size.to_string(),
                v.nar_size.to_string(),
            );
        }
        if let Some(h) = narinfo.file_hash.filter(|h| *h != v.file_hash) {
            return mismatch("FileHash", h.to_string(), v.file_hash.to_string());
        }
        if let Some(s) = narinfo.file_size.filter(|s| *s != v.file_size) {
            return mismatch("FileSize", s.to_string(), v.file_size.to_string());
        }
        let db = &self.inner.db;
        match self.inner.config.cdc {
            Some(cdc) if !cdc.lazy => {
                let source = file_source(&pending.path)?;
                let chunked = chunk_nar(
                    &self.inner.store,
                    source,
                    key.compression,
                    v.nar_size,
                    cdc.chunking,
                    None,
                )
                .await?;
                check_chunked(
                    &chunked,
                    &v.nar_hash,
                    v.nar_size,
                    Some(v.file_hash),
                    Some(v.file_size),
                )?;
                db.commit_chunks(
                    &v.nar_hash,
                    v.nar_size,
                    &chunked.refs,
                    chunked.summary.file_hash,
                )
                .await?;
            }
            cdc => {
                let whole = WholeFile {
                    key: *key,
                    size: v.file_size,
                };
                self.inner
                    .store
                    .put_nar_from_file(key, &pending.path)
                    .await?;
                db.record_whole_file(&v.nar_hash, v.nar_size, whole, None)
                    .await?;
                if cdc.is_some() {
                    let _ = self.inner.chunk_queue.send(v.nar_hash);
                }
            }
        }
        self.publish_narinfo(narinfo, Some(v.file_hash)).await
    }

    async fn publish_narinfo(
        &self,
        uploaded: NarInfo,
        file_hash: Option<ncps_nix::Sha256Hash>,
    ) -> Result<(), CacheError> {
        let with_file_hash = NarInfo {
            file_hash: uploaded.file_hash.or(file_hash),
            ..uploaded
        };
        let url_key = self.url_for(&with_file_hash);
        let store_path = with_file_hash.store_path.clone();
        let narinfo = NarInfo {
            url: url_key.url(),
            compression: url_key.compression,
            file_hash: None,
            file_size: None,
            ..with_file_hash
        };
        self.inner
            .db
            .insert_narinfo(&CachedNarInfo {
                narinfo,
                url_key,
                origin: None,
            })
            .await?;
        info!(%store_path, "published uploaded path");
        Ok(())
    }

    /// Forgets a narinfo (DELETE); its NAR stays until deleted or evicted.
    pub async fn delete_narinfo(&self, hash: &StorePathHash) -> Result<(), CacheError> {
        self.inner.memo.forget(hash);
        if self.inner.db.delete_narinfo(hash).await? {
            Ok(())
        } else {
            Err(CacheError::NotFound)
        }
    }

    /// Deletes a NAR in every stored form (DELETE); its chunks are released for collection.
    pub async fn delete_nar(&self, key: &NarKey) -> Result<(), CacheError> {
        let nar_hash = self
            .inner
            .db
            .nar_hash_for_url(key)
            .await?
            .ok_or(CacheError::NotFound)?;
        let record = self
            .inner
            .db
            .delete_nar(&nar_hash)
            .await?
            .ok_or(CacheError::NotFound)?;
        if let Some(whole) = record.whole {
            self.inner.store.delete_nar(&whole.key).await?;
        }
        Ok(())
    }

    /// Stores a build log (`PUT /log/<drv>`).
    pub async fn put_build_log(&self, drv: &str, content: &[u8]) -> Result<(), CacheError> {
        if content.len() as u64 > self.inner.config.uploads.max_size {
            return Err(CacheError::TooLarge {
                limit: self.inner.config.uploads.max_size,
            });
        }
        Ok(self.inner.db.put_build_log(drv, content).await?)
    }

    /// A build log (`GET /log/<drv>`): stored, or fetched from an upstream that has it (and
    /// then kept).
    pub async fn build_log(&self, drv: &str) -> Result<Vec<u8>, CacheError> {
        if let Some(log) = self.inner.db.build_log(drv).await? {
            return Ok(log);
        }
        let path = format!("log/{drv}");
        let log = self
            .inner
            .upstreams
            .find_document(&path, MAX_UPSTREAM_LOG)
            .await?
            .ok_or(CacheError::NotFound)?;
        self.inner.db.put_build_log(drv, log.as_bytes()).await?;
        Ok(log.into_bytes())
    }
}

/// Largest build log fetched from an upstream.
const MAX_UPSTREAM_LOG: usize = 64 * 1024 * 1024;

/// Largest realisation or build-trace document accepted (they are small JSON objects).
pub const MAX_REALISATION_UPLOAD: usize = 64 * 1024;

impl Cache {
    /// Stores a realisation or build-trace document under its (already validated) id.
    pub async fn put_realisation(&self, id: &str, content: &str) -> Result<(), CacheError> {
        serde_json_check(content)?;
        Ok(self.inner.db.put_realisation(id, content).await?)
    }

    /// A realisation or build-trace document: stored, or fetched from an upstream that has it
    /// (the id is its path on the upstream) and then kept.
    pub async fn realisation(&self, id: &str) -> Result<String, CacheError> {
        if let Some(document) = self.inner.db.realisation(id).await? {
            return Ok(document);
        }
        let document = self
            .inner
            .upstreams
            .find_document(id, MAX_REALISATION_UPLOAD)
            .await?
            .ok_or(CacheError::NotFound)?;
        serde_json_check(&document)?;
        self.inner.db.put_realisation(id, &document).await?;
        Ok(document)
    }
}

/// Realisations are JSON objects; refuse anything else rather than serve garbage to clients.
fn serde_json_check(content: &str) -> Result<(), CacheError> {
    let trimmed = content.trim_start();
    if trimmed.starts_with('{') && content.trim_end().ends_with('}') {
        Ok(())
    } else {
        Err(bad("a realisation must be a JSON object"))
    }
}
