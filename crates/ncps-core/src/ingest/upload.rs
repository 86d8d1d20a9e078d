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
use ncps_db::WholeFile;
use ncps_nix::{NarInfo, NarKey, PublicKey, StorePathHash};
use tempfile::TempPath;
use tracing::info;

use super::Ingest;
use super::chunking::chunk_verified;
use super::verify::{Expected, Verified, write_verified};
use crate::CacheError;
use crate::codec::can_decode;
use crate::defaults;
use crate::metrics::{Metrics, Outcome};
use crate::temp::TempKind;

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
            require_trusted_signature: defaults::REQUIRE_TRUSTED_SIGNATURE,
            trusted_keys: Vec::new(),
            max_size: defaults::MAX_UPLOAD_SIZE,
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

/// A file's bytes as a stream, read in 256 KiB pieces.
pub(crate) fn file_source(
    path: &std::path::Path,
) -> io::Result<BoxStream<'static, io::Result<Bytes>>> {
    let file = std::fs::File::open(path)?;
    Ok(
        tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), 256 * 1024)
            .boxed(),
    )
}

impl Ingest {
    /// True when an uploaded NAR with this URL is stored or waiting for its narinfo (so
    /// `HEAD` tells `nix copy` not to send it again).
    pub(crate) fn upload_pending(&self, key: &NarKey) -> bool {
        self.0.pending.contains(key)
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
        let (file, path) = self.0.temp.create(TempKind::Upload)?;
        let expected = Expected {
            compression: key.compression,
            file_hash: Some(key.hash),
            file_size: None,
            nar_hash: None,
            nar_size: None,
            max_size: self.0.uploads.max_size,
        };
        let verified = write_verified(file, expected, body, None)
            .await
            .map_err(|e| match e {
                CacheError::Integrity(m) if m.contains("larger than") => CacheError::TooLarge {
                    limit: self.0.uploads.max_size,
                },
                CacheError::Integrity(m) => bad(format!("uploaded NAR refused: {m}")),
                other => other,
            })?;
        self.0.pending.insert(
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
        Metrics::lookup(&self.0.metrics.uploads, outcome);
        result
    }

    async fn accept_narinfo(&self, hash: &StorePathHash, text: &str) -> Result<(), CacheError> {
        let narinfo = NarInfo::parse(text).map_err(|e| bad(format!("malformed narinfo: {e}")))?;
        let key = NarKey::parse_url(&narinfo.url)
            .map_err(|e| bad(format!("narinfo URL {:?}: {e}", narinfo.url)))?;
        // Whatever happens next, the uploaded NAR leaves the waiting room: published, or
        // dropped with its temporary file when the narinfo is refused.
        let pending = self.0.pending.take(&key);
        if narinfo.store_path.hash() != hash {
            return Err(bad(format!(
                "narinfo for {} uploaded as {hash}.narinfo",
                narinfo.store_path
            )));
        }
        let rules = &self.0.uploads;
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
            None if self.0.db.nar(&narinfo.nar_hash).await?.is_some() => {
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
        match self.0.cdc.and_then(|c| c.eager()) {
            Some(settings) => {
                let expected = Expected::exactly(
                    key.compression,
                    Some(v.file_hash),
                    Some(v.file_size),
                    v.nar_hash,
                    v.nar_size,
                );
                let source = file_source(&pending.path)?;
                let chunked =
                    chunk_verified(&self.0.store, source, &expected, settings, None).await?;
                self.commit_chunks(&v.nar_hash, v.nar_size, &chunked)
                    .await?;
            }
            None => {
                let whole = WholeFile {
                    key: *key,
                    size: v.file_size,
                };
                self.commit_whole_file(&v.nar_hash, v.nar_size, whole, &pending.path)
                    .await?;
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
        let store_path = with_file_hash.store_path.clone();
        let cached = self.as_served(with_file_hash, None);
        self.0.db.insert_narinfo(&cached).await?;
        info!(%store_path, "published uploaded path");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use futures::stream;
    use ncps_nix::{Compression, Sha256Hash, StorePath};

    use super::*;
    use crate::test_support::local_cache;

    fn body(bytes: &[u8]) -> BoxStream<'static, io::Result<Bytes>> {
        stream::iter(vec![Ok(Bytes::copy_from_slice(bytes))]).boxed()
    }

    fn temp_files(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir.join("tmp")).map_or(0, |d| d.count())
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_upload_is_published_only_when_its_narinfo_matches_and_leaves_nothing_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, db) = local_cache(dir.path()).await;
        let ingest = cache.ingest();
        let nar = b"nix-archive-1 uploaded".repeat(500);
        let file = zstd::encode_all(&nar[..], 3).unwrap();
        let key = NarKey::new(Sha256Hash::digest(&file), Compression::Zstd);
        let narinfo = NarInfo {
            store_path: StorePath::parse_base_name("7rjj86a15146cq1d0ybgnwyqdwgv9lfh-up").unwrap(),
            url: key.url(),
            compression: Compression::Zstd,
            file_hash: Some(key.hash),
            file_size: Some(file.len() as u64),
            nar_hash: Sha256Hash::digest(&nar),
            nar_size: nar.len() as u64,
            references: vec![],
            deriver: None,
            sigs: vec![],
            ca: None,
        };
        let hash = *narinfo.store_path.hash();

        // A NAR whose bytes do not hash to its URL is refused at once.
        let wrong_url = NarKey::new(Sha256Hash::digest(b"other"), Compression::Zstd);
        let err = ingest
            .upload_nar(&wrong_url, body(&file))
            .await
            .unwrap_err();
        assert!(matches!(err, CacheError::BadRequest(_)), "{err}");
        assert_eq!(temp_files(dir.path()), 0);

        // A narinfo that disagrees with the uploaded NAR is refused; the NAR is dropped.
        ingest.upload_nar(&key, body(&file)).await.unwrap();
        assert!(ingest.upload_pending(&key));
        let lying = NarInfo {
            nar_size: narinfo.nar_size + 1,
            ..narinfo.clone()
        };
        let err = ingest
            .upload_narinfo(&hash, &lying.render())
            .await
            .unwrap_err();
        assert!(matches!(err, CacheError::BadRequest(_)), "{err}");
        assert!(!ingest.upload_pending(&key));
        assert_eq!(temp_files(dir.path()), 0);
        assert!(db.narinfo(&hash).await.unwrap().is_none());
        assert!(db.nar(&narinfo.nar_hash).await.unwrap().is_none());

        // The NAR again, then the right narinfo: published and stored.
        ingest.upload_nar(&key, body(&file)).await.unwrap();
        ingest
            .upload_narinfo(&hash, &narinfo.render())
            .await
            .unwrap();
        assert_eq!(temp_files(dir.path()), 0);
        let cached = db.narinfo(&hash).await.unwrap().expect("published");
        assert_eq!(cached.url_key, key);
        let record = db.nar(&narinfo.nar_hash).await.unwrap().expect("stored");
        assert_eq!(record.whole.map(|w| w.key), Some(key));
    }
}
