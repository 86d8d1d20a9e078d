//! Importing paths from a file binary cache (`ncps migrate-narinfo`) and re-verifying stored
//! whole files (`ncps fsck --verify-hashes`).
//!
//! Both reuse the download path's verifier, so an imported NAR is held to exactly the checks a
//! fetched one is (FileHash, FileSize, NarHash, NarSize, decompression bombs stopped at
//! NarSize), and fsck judges stored bytes by the same rules.

use std::io;
use std::path::Path;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use ncps_db::{CachedNarInfo, WholeFile};
use ncps_nix::{Compression, NarInfo, NarKey, Sha256Hash};

use super::Maintenance;
use crate::CacheError;
use crate::ingest::{Expected, file_source, refuse_undecodable, write_verified};
use crate::temp::TempKind;

/// The bytes of `files` one after the other, for [`Maintenance::import_path`]. Every file is
/// opened first: a missing one is an error before anything is read.
pub fn files_source(
    files: &[impl AsRef<Path>],
) -> io::Result<BoxStream<'static, io::Result<Bytes>>> {
    let sources = files
        .iter()
        .map(|f| file_source(f.as_ref()))
        .collect::<io::Result<Vec<_>>>()?;
    Ok(futures::stream::iter(sources).flatten().boxed())
}

/// What importing one path did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Imported {
    /// The NAR file was verified and stored, and the narinfo recorded.
    Stored {
        /// The stored file (also the URL the narinfo hands out).
        whole: WholeFile,
    },
    /// The NAR was already stored (another path with the same contents); only the narinfo was
    /// recorded, pointing at it.
    NarAlreadyStored {
        /// The URL the narinfo hands out.
        url_key: NarKey,
    },
    /// The cache already has a narinfo for this store path; nothing was changed.
    AlreadyCached,
}

/// What re-reading a stored whole file found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileCheck {
    /// Its bytes hash to its key and decompress to its NarHash and NarSize.
    Intact,
    /// It is not in storage.
    Missing,
    /// Its bytes are wrong; the reason says how.
    Corrupt(String),
}

impl Maintenance {
    /// Imports one store path from a file binary cache: checks `nar_file` against every hash
    /// and size `narinfo` gives, stores it as a whole file, then records the narinfo with no
    /// upstream origin (these bytes are the only copy we know of). Idempotent: a path already
    /// cached is left alone, and a crash between storing and recording is redone by the next
    /// run. The file is verified into a temporary copy and the copy is stored, so bytes that
    /// change under us are never stored unverified.
    ///
    /// `source` is the NAR file's bytes: a file ([`files_source`]), or the chunk objects of a
    /// NAR the Go ncps kept as chunks, one after the other (each a zstd frame; together, a
    /// `.nar.zst`). It is read only when the NAR is not stored yet.
    ///
    /// Bad bytes are [`CacheError::Integrity`]; a source that cannot be read is
    /// [`CacheError::Io`]; anything else is a failure of our own storage.
    pub async fn import_path(
        &self,
        narinfo: &NarInfo,
        source: BoxStream<'static, io::Result<Bytes>>,
    ) -> Result<Imported, CacheError> {
        let db = &self.0.db;
        if db.narinfo(narinfo.store_path.hash()).await?.is_some() {
            return Ok(Imported::AlreadyCached);
        }
        refuse_undecodable(narinfo)?;
        let existing = db.nar(&narinfo.nar_hash).await?.and_then(|record| {
            // Any stored form serves any URL of the NAR; name the form that needs no work.
            match (record.whole, record.chunked) {
                (Some(whole), _) => Some(whole.key),
                (None, Some(_)) => Some(NarKey::new(record.nar_hash, Compression::Zstd)),
                (None, None) => None,
            }
        });
        let (url_key, outcome) = match existing {
            Some(url_key) => (url_key, Imported::NarAlreadyStored { url_key }),
            None => {
                let whole = self.store_verified_file(narinfo, source).await?;
                (whole.key, Imported::Stored { whole })
            }
        };
        let cached = CachedNarInfo {
            narinfo: NarInfo {
                url: url_key.url(),
                compression: url_key.compression,
                file_hash: None,
                file_size: None,
                ..narinfo.clone()
            },
            url_key,
            origin: None,
        };
        self.0.ingest.record_narinfo(&cached).await?;
        Ok(outcome)
    }

    async fn store_verified_file(
        &self,
        narinfo: &NarInfo,
        source: BoxStream<'static, io::Result<Bytes>>,
    ) -> Result<WholeFile, CacheError> {
        let (file, temp) = self.0.ingest.temp().create(TempKind::Import)?;
        let expected = Expected::exactly(
            narinfo.compression,
            narinfo.file_hash,
            narinfo.file_size,
            narinfo.nar_hash,
            narinfo.nar_size,
        );
        let verified = write_verified(file, expected, source, None).await?;
        let whole = WholeFile {
            key: NarKey::new(verified.file_hash, narinfo.compression),
            size: verified.file_size,
        };
        self.0
            .ingest
            .commit_whole_file(&narinfo.nar_hash, narinfo.nar_size, whole, &temp)
            .await?;
        Ok(whole)
    }

    /// Reads a stored whole file end to end and checks it: its SHA-256 against the FileHash in
    /// its key, its size against the recorded one, and its decompressed bytes against the NAR's
    /// NarHash and NarSize. Storage failures are errors, not verdicts.
    pub async fn verify_whole_file(
        &self,
        nar_hash: &Sha256Hash,
        nar_size: u64,
        whole: &WholeFile,
    ) -> Result<FileCheck, CacheError> {
        let Some(read) = self.0.store.read_nar(&whole.key, None).await? else {
            return Ok(FileCheck::Missing);
        };
        let source = read.stream.map_err(io::Error::other).boxed();
        // The verifier copies what it checks into a file; here the bytes are already stored,
        // so the copy goes nowhere.
        let sink = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
        let expected = Expected::exactly(
            whole.key.compression,
            Some(whole.key.hash),
            Some(whole.size),
            *nar_hash,
            nar_size,
        );
        match write_verified(sink, expected, source, None).await {
            Ok(_) => Ok(FileCheck::Intact),
            Err(CacheError::Integrity(reason)) => Ok(FileCheck::Corrupt(reason)),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use ncps_db::Database;
    use ncps_nix::StorePath;

    use super::*;
    use crate::test_support::local_cache;

    /// A cache's maintenance side and its database.
    async fn cache(dir: &Path) -> (Maintenance, Database) {
        let (cache, db) = local_cache(dir).await;
        (cache.maintenance().clone(), db)
    }

    /// A narinfo and its xz file for `nar`, written to `dir`.
    fn file_cache_entry(dir: &Path, name: &str, nar: &[u8]) -> (NarInfo, std::path::PathBuf) {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
        e.write_all(nar).unwrap();
        let xz = e.finish().unwrap();
        let file_hash = Sha256Hash::digest(&xz);
        let key = NarKey::new(file_hash, Compression::Xz);
        let path = dir.join(key.file_name());
        std::fs::write(&path, &xz).unwrap();
        let narinfo = NarInfo {
            store_path: StorePath::parse_base_name(&format!(
                "{}-{name}",
                "7rjj86a15146cq1d0ybgnwyqdwgv9lfh"
            ))
            .unwrap(),
            url: key.url(),
            compression: Compression::Xz,
            file_hash: Some(file_hash),
            file_size: Some(xz.len() as u64),
            nar_hash: Sha256Hash::digest(nar),
            nar_size: nar.len() as u64,
            references: vec![],
            deriver: None,
            sigs: vec!["other-1:abc".into()],
            ca: None,
        };
        (narinfo, path)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn imports_verified_files_once_and_refuses_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, db) = cache(dir.path()).await;
        let nar = b"nix-archive-1 pretend".repeat(1000);
        let (narinfo, file) = file_cache_entry(dir.path(), "hello", &nar);

        // A file that does not match its narinfo is refused and leaves nothing behind.
        let mut wrong = narinfo.clone();
        wrong.nar_hash = Sha256Hash::digest(b"other");
        let err = cache
            .import_path(&wrong, files_source(&[&file]).unwrap())
            .await
            .unwrap_err();
        assert!(matches!(err, CacheError::Integrity(_)), "{err}");
        let hash = narinfo.store_path.hash();
        assert!(db.narinfo(hash).await.unwrap().is_none());
        assert!(db.nar(&wrong.nar_hash).await.unwrap().is_none());

        let Imported::Stored { whole } = cache
            .import_path(&narinfo, files_source(&[&file]).unwrap())
            .await
            .unwrap()
        else {
            panic!("not stored");
        };
        assert_eq!(Some(whole.key.hash), narinfo.file_hash);
        let cached = db.narinfo(hash).await.unwrap().unwrap();
        assert_eq!(cached.url_key, whole.key);
        assert_eq!(cached.origin, None);
        assert_eq!(cached.narinfo.sigs, narinfo.sigs);
        assert_eq!(
            cache
                .import_path(&narinfo, files_source(&[&file]).unwrap())
                .await
                .unwrap(),
            Imported::AlreadyCached
        );
        assert_eq!(
            cache
                .verify_whole_file(&narinfo.nar_hash, narinfo.nar_size, &whole)
                .await
                .unwrap(),
            FileCheck::Intact
        );
        // Nothing is left in the temp dir.
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );

        // Another path with the same NAR shares the stored file.
        let mut twin = narinfo.clone();
        twin.store_path =
            StorePath::parse_base_name("0xyg5hmq2ycg6pbl6n4hppvwfjq9bsy5-twin").unwrap();
        assert_eq!(
            cache
                .import_path(&twin, futures::stream::empty().boxed())
                .await
                .unwrap(),
            Imported::NarAlreadyStored { url_key: whole.key }
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn verification_finds_missing_truncated_and_altered_files() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, _) = cache(dir.path()).await;
        let nar = b"nix-archive-1 pretend".repeat(1000);
        let (narinfo, file) = file_cache_entry(dir.path(), "hello", &nar);
        let Imported::Stored { whole } = cache
            .import_path(&narinfo, files_source(&[&file]).unwrap())
            .await
            .unwrap()
        else {
            panic!("not stored");
        };
        let stored = dir.path().join("store").join(whole.key.url());
        let bytes = std::fs::read(&stored).unwrap();
        let check = || cache.verify_whole_file(&narinfo.nar_hash, narinfo.nar_size, &whole);

        std::fs::write(&stored, &bytes[..bytes.len() - 5]).unwrap();
        assert!(matches!(check().await.unwrap(), FileCheck::Corrupt(_)));
        let mut altered = bytes.clone();
        altered[bytes.len() / 2] ^= 1;
        std::fs::write(&stored, &altered).unwrap();
        let FileCheck::Corrupt(reason) = check().await.unwrap() else {
            panic!("altered file passed");
        };
        assert!(!reason.is_empty());
        std::fs::remove_file(&stored).unwrap();
        assert_eq!(check().await.unwrap(), FileCheck::Missing);
    }
}
