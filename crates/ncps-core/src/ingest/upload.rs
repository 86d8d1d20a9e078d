//! Uploads from `nix copy --to http://…`: the NAR arrives first (`PUT /nar/…`), its narinfo
//! after (`PUT /<hash>.narinfo`), possibly at another replica.
//!
//! A NAR upload is streamed to a temporary file while its FileHash (which must match its URL)
//! and the hash and size of the plain NAR are measured. It is then stored like a fetched NAR,
//! and the database records it as waiting for its narinfo under that URL (see
//! [`ncps_db::UploadedNar`]): shared by all replicas, and keeping the NAR from every clean-up.
//! The narinfo is accepted only when it is well formed, signed by a trusted upload key (when
//! required), and describes exactly the uploaded bytes; then the path is published. A refused
//! narinfo ends the wait, and so does an hour without one: the NAR goes unless something else
//! uses it. Nothing of a refused upload is kept.

use std::io;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use ncps_db::{UploadedNar, WholeFile};
use ncps_nix::{NarInfo, NarKey, PublicKey, StorePathHash};
use tracing::{info, warn};

use super::Ingest;
use super::chunking::chunk_verified;
use super::verify::{Expected, write_verified};
use crate::CacheError;
use crate::codec::can_decode;
use crate::defaults;
use crate::metrics::{Metrics, Outcome};
use crate::temp::TempKind;

/// How long an uploaded NAR waits for its narinfo before it is dropped.
pub(crate) const UPLOAD_WAITS_FOR_NARINFO: Duration = Duration::from_secs(3600);
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
    /// The largest NAR file an upload may be (`--cache-max-upload-size`): the HTTP face refuses
    /// a larger declared body before reading a byte of it.
    pub fn max_upload_size(&self) -> u64 {
        self.0.uploads.max_size
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
        let upload = UploadedNar {
            key: *key,
            nar_hash: verified.nar_hash,
            nar_size: verified.nar_size,
            file_size: verified.file_size,
        };
        // The row first: from now on no clean-up takes the NAR for unused.
        self.0.db.record_upload(&upload).await?;
        if let Err(e) = self.store_upload(&upload, &path).await {
            self.end_uploads(&[*key]).await;
            return Err(e);
        }
        info!(nar = %key, size = upload.file_size, "received NAR upload; waiting for its narinfo");
        Ok(())
    }

    /// Stores an uploaded NAR in the form the cache keeps NARs in, unless it is stored already
    /// (its URL then names the stored NAR).
    async fn store_upload(&self, upload: &UploadedNar, file: &Path) -> Result<(), CacheError> {
        if self.0.db.nar(&upload.nar_hash).await?.is_some() {
            return Ok(());
        }
        match self.0.cdc.and_then(|c| c.eager()) {
            Some(settings) => {
                let expected = Expected::exactly(
                    upload.key.compression,
                    Some(upload.key.hash),
                    Some(upload.file_size),
                    upload.nar_hash,
                    upload.nar_size,
                );
                let chunked = chunk_verified(
                    &self.0.store,
                    &self.0.db,
                    file_source(file)?,
                    &expected,
                    settings,
                    None,
                )
                .await?;
                self.commit_chunks(&upload.nar_hash, upload.nar_size, &chunked)
                    .await?;
            }
            None => {
                let whole = WholeFile {
                    key: upload.key,
                    size: upload.file_size,
                };
                self.commit_whole_file(&upload.nar_hash, upload.nar_size, whole, file)
                    .await?;
            }
        }
        Ok(())
    }

    /// Ends the wait of these uploads and deletes whatever of their NARs nothing else uses.
    /// Never fails: what a failure leaves behind, the expiry of uploads finds again.
    pub(crate) async fn end_uploads(&self, keys: &[NarKey]) {
        let removed = match self.0.db.drop_uploads(keys).await {
            Ok(removed) => removed,
            Err(e) => {
                warn!(error = %e, "could not end the wait of uploaded NARs");
                return;
            }
        };
        for whole in removed.iter().filter_map(|r| r.whole) {
            if let Err(e) = self.0.store.delete_nar(&whole.key).await {
                warn!(nar = %whole.key, error = %e, "could not delete an uploaded NAR's file");
            }
        }
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
        let upload = self.0.db.uploaded_nar(&key).await?;
        let result = self.check_and_publish(hash, narinfo, &key, upload).await;
        // Whatever happened, an upload under this URL stops waiting: its NAR is published, or
        // goes with the refused narinfo.
        if upload.is_some() {
            self.end_uploads(&[key]).await;
        }
        result
    }

    async fn check_and_publish(
        &self,
        hash: &StorePathHash,
        narinfo: NarInfo,
        key: &NarKey,
        upload: Option<UploadedNar>,
    ) -> Result<(), CacheError> {
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
        let Some(upload) = upload else {
            // No upload waits under this URL: the narinfo may only name a NAR we already serve
            // under it (a path uploaded again), never claim a URL for other bytes.
            if self.0.db.nar_hash_for_url(key).await? == Some(narinfo.nar_hash)
                && self.0.db.nar(&narinfo.nar_hash).await?.is_some()
            {
                return self.publish_narinfo(narinfo, None).await;
            }
            return Err(bad(format!(
                "{} was not uploaded before its narinfo",
                narinfo.url
            )));
        };
        describes_upload(&narinfo, &upload)?;
        if self.0.db.nar(&upload.nar_hash).await?.is_none() {
            return Err(bad(format!(
                "the NAR uploaded as {} is no longer stored; upload it again",
                narinfo.url
            )));
        }
        self.publish_narinfo(narinfo, Some(upload.key.hash)).await
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
        self.record_narinfo(&cached).await?;
        info!(%store_path, "published uploaded path");
        Ok(())
    }
}

/// Refuses a narinfo that does not describe exactly the uploaded NAR.
fn describes_upload(narinfo: &NarInfo, upload: &UploadedNar) -> Result<(), CacheError> {
    let mismatch = |what: &str, said: String, got: String| {
        Err(bad(format!(
            "{what} mismatch: narinfo says {said}, uploaded NAR has {got}"
        )))
    };
    if upload.nar_hash != narinfo.nar_hash {
        return mismatch(
            "NarHash",
            narinfo.nar_hash.to_string(),
            upload.nar_hash.to_string(),
        );
    }
    if upload.nar_size != narinfo.nar_size {
        return mismatch(
            "NarSize",
            narinfo.nar_size.to_string(),
            upload.nar_size.to_string(),
        );
    }
    if let Some(h) = narinfo.file_hash.filter(|h| *h != upload.key.hash) {
        return mismatch("FileHash", h.to_string(), upload.key.hash.to_string());
    }
    if let Some(s) = narinfo.file_size.filter(|s| *s != upload.file_size) {
        return mismatch("FileSize", s.to_string(), upload.file_size.to_string());
    }
    Ok(())
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

    fn files_below(dir: &Path) -> usize {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return 0;
        };
        entries
            .map(|e| e.unwrap().path())
            .map(|p| if p.is_dir() { files_below(&p) } else { 1 })
            .sum()
    }

    /// A NAR compressed with zstd, its URL, and a narinfo describing it for store path `name`.
    fn upload(name: &str) -> (Vec<u8>, NarKey, NarInfo) {
        let nar = format!("nix-archive-1 {name}").repeat(500).into_bytes();
        let file = zstd::encode_all(&nar[..], 3).unwrap();
        let key = NarKey::new(Sha256Hash::digest(&file), Compression::Zstd);
        let hash = StorePathHash::from_bytes(
            Sha256Hash::digest(name.as_bytes()).as_bytes()[..20]
                .try_into()
                .unwrap(),
        );
        let narinfo = NarInfo {
            store_path: StorePath::parse_base_name(&format!("{hash}-{name}")).unwrap(),
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
        (file, key, narinfo)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_upload_is_published_only_when_its_narinfo_matches_and_leaves_nothing_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, db) = local_cache(dir.path()).await;
        let ingest = cache.ingest();
        let (file, key, narinfo) = upload("up");
        let hash = *narinfo.store_path.hash();
        let stored = || files_below(&dir.path().join("store"));
        let temp = || files_below(&dir.path().join("tmp"));

        // A NAR whose bytes do not hash to its URL is refused at once.
        let wrong_url = NarKey::new(Sha256Hash::digest(b"other"), Compression::Zstd);
        let err = ingest
            .upload_nar(&wrong_url, body(&file))
            .await
            .unwrap_err();
        assert!(matches!(err, CacheError::BadRequest(_)), "{err}");
        assert_eq!((temp(), stored()), (0, 0));
        assert_eq!(db.uploaded_nar(&wrong_url).await.unwrap(), None);

        // A narinfo that disagrees with the uploaded NAR is refused; the NAR is dropped.
        ingest.upload_nar(&key, body(&file)).await.unwrap();
        assert!(db.uploaded_nar(&key).await.unwrap().is_some());
        assert_eq!((temp(), stored()), (0, 1));
        let lying = NarInfo {
            nar_size: narinfo.nar_size + 1,
            ..narinfo.clone()
        };
        let err = ingest
            .upload_narinfo(&hash, &lying.render())
            .await
            .unwrap_err();
        assert!(matches!(err, CacheError::BadRequest(_)), "{err}");
        assert_eq!(db.uploaded_nar(&key).await.unwrap(), None);
        assert_eq!((temp(), stored()), (0, 0));
        assert!(db.narinfo(&hash).await.unwrap().is_none());
        assert!(db.nar(&narinfo.nar_hash).await.unwrap().is_none());

        // The NAR again, then the right narinfo: published and stored.
        ingest.upload_nar(&key, body(&file)).await.unwrap();
        ingest
            .upload_narinfo(&hash, &narinfo.render())
            .await
            .unwrap();
        assert_eq!((temp(), stored()), (0, 1));
        assert_eq!(db.uploaded_nar(&key).await.unwrap(), None);
        let cached = db.narinfo(&hash).await.unwrap().expect("published");
        assert_eq!(
            cached.url_key,
            NarKey::new(narinfo.nar_hash, Compression::Zstd)
        );
        let record = db.nar(&narinfo.nar_hash).await.unwrap().expect("stored");
        assert_eq!(record.whole.map(|w| w.key), Some(key));
    }

    /// Replicas share database and storage: the narinfo may reach another one than the NAR.
    #[tokio::test(flavor = "multi_thread")]
    async fn the_narinfo_may_reach_another_replica_than_its_nar() {
        let dir = tempfile::tempdir().unwrap();
        let (first, db) = local_cache(dir.path()).await;
        let (second, _) = local_cache(dir.path()).await;
        let (file, key, narinfo) = upload("elsewhere");
        let hash = *narinfo.store_path.hash();
        first.ingest().upload_nar(&key, body(&file)).await.unwrap();
        second
            .ingest()
            .upload_narinfo(&hash, &narinfo.render())
            .await
            .unwrap();
        let cached = db.narinfo(&hash).await.unwrap().expect("published");
        assert_eq!(
            cached.url_key,
            NarKey::new(narinfo.nar_hash, Compression::Zstd)
        );
        assert_eq!(db.uploaded_nar(&key).await.unwrap(), None);
    }

    /// A narinfo may name a URL only for the bytes uploaded (or served) under it: a stored
    /// NarHash does not let it claim a URL nobody uploaded.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_narinfo_cannot_claim_a_url_for_a_nar_stored_under_another() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, db) = local_cache(dir.path()).await;
        let ingest = cache.ingest();
        let (file, key, narinfo) = upload("claimed");
        ingest.upload_nar(&key, body(&file)).await.unwrap();
        ingest
            .upload_narinfo(narinfo.store_path.hash(), &narinfo.render())
            .await
            .unwrap();

        let (_, _, mut other) = upload("claimer");
        let squatted = NarKey::new(Sha256Hash::digest(b"some victim's file"), Compression::Zstd);
        other.url = squatted.url();
        other.file_hash = Some(squatted.hash);
        other.nar_hash = narinfo.nar_hash;
        other.nar_size = narinfo.nar_size;
        let err = ingest
            .upload_narinfo(other.store_path.hash(), &other.render())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("was not uploaded"), "{err}");
        assert_eq!(db.nar_hash_for_url(&squatted).await.unwrap(), None);

        // Under the URL the cache serves the NAR at, another path may use it.
        let served = NarKey::new(narinfo.nar_hash, Compression::Zstd);
        other.url = served.url();
        other.file_hash = None;
        ingest
            .upload_narinfo(other.store_path.hash(), &other.render())
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_upload_whose_narinfo_never_comes_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, db) = local_cache(dir.path()).await;
        let (file, key, _) = upload("forgotten");
        cache.ingest().upload_nar(&key, body(&file)).await.unwrap();
        let maintenance = cache.maintenance();
        assert_eq!(
            maintenance
                .expire_uploads(UPLOAD_WAITS_FOR_NARINFO)
                .await
                .unwrap(),
            0
        );
        assert!(db.uploaded_nar(&key).await.unwrap().is_some());
        // Timestamps are in seconds: a second later, a wait of zero has passed.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(maintenance.expire_uploads(Duration::ZERO).await.unwrap(), 1);
        assert_eq!(db.uploaded_nar(&key).await.unwrap(), None);
        assert_eq!(files_below(&dir.path().join("store")), 0);
    }
}
