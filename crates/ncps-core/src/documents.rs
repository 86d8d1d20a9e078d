//! Documents that have no NAR: build logs (`/log/<drv>`) and realisations (`/realisations/…`,
//! `/build-trace-v2/…`). Stored in the database when uploaded, or fetched from an upstream that
//! has them (and then kept). The HTTP layer calls this; nothing else does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use ncps_db::{Database, DocumentKey};
use ncps_nix::SignedJson;
use ncps_upstream::Upstreams;

use crate::CacheError;
use crate::ingest::UploadConfig;

/// Largest build log fetched from an upstream.
const MAX_UPSTREAM_LOG: usize = 64 * 1024 * 1024;

/// Largest realisation or build-trace document accepted (they are small JSON objects).
pub const MAX_REALISATION_UPLOAD: usize = 64 * 1024;

/// Build logs and realisations; cheap to clone.
#[derive(Clone)]
pub struct Documents(Arc<State>);

struct State {
    db: Database,
    upstreams: Upstreams,
    /// The rules uploads follow (size, signatures).
    uploads: UploadConfig,
    /// Documents being fetched from upstream, so each is fetched once however many ask.
    fetching: Fetching,
}

/// One lock per document being fetched: the first request fetches, the others wait for it and
/// then find the document stored (or remembered missing by the upstreams' negative cache).
#[derive(Default)]
struct Fetching(Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>);

impl Fetching {
    fn lock_for(&self, path: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.0.lock().unwrap_or_else(|p| p.into_inner());
        locks.retain(|_, lock| lock.strong_count() > 0);
        if let Some(lock) = locks.get(path).and_then(Weak::upgrade) {
            return lock;
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(path.to_owned(), Arc::downgrade(&lock));
        lock
    }
}

impl Documents {
    pub(crate) fn new(db: Database, upstreams: Upstreams, uploads: UploadConfig) -> Self {
        Self(Arc::new(State {
            db,
            upstreams,
            uploads,
            fetching: Fetching::default(),
        }))
    }

    /// Stores a build log (`PUT /log/<drv>`). A log carries no signature, so a cache that
    /// takes only signed uploads takes none.
    pub async fn put_build_log(&self, drv: &str, content: &[u8]) -> Result<(), CacheError> {
        if self.0.uploads.require_trusted_signature {
            return Err(CacheError::Forbidden(
                "build logs carry no signature, and this cache accepts only uploads signed by \
                 a trusted key (--cache-require-trusted-signature)"
                    .into(),
            ));
        }
        let limit = self.0.uploads.max_size;
        if content.len() as u64 > limit {
            return Err(CacheError::TooLarge { limit });
        }
        Ok(self.0.db.put_build_log(drv, content).await?)
    }

    /// A build log (`GET /log/<drv>`): stored, or fetched from an upstream that has it (and
    /// then kept).
    pub async fn build_log(&self, drv: &str) -> Result<Vec<u8>, CacheError> {
        let key = DocumentKey::BuildLog(drv.to_owned());
        let load = || self.0.db.build_log(drv);
        let keep = |log: String| async move {
            self.0.db.put_build_log(drv, log.as_bytes()).await?;
            Ok(log.into_bytes())
        };
        self.stored_or_fetched(&key, &format!("log/{drv}"), MAX_UPSTREAM_LOG, load, keep)
            .await
    }

    /// Stores a realisation or build-trace document under its (already validated) id; when
    /// uploads must be signed, it must carry a signature by a trusted upload key.
    pub async fn put_realisation(&self, id: &str, content: &str) -> Result<(), CacheError> {
        let document = signed_json(content)?;
        let rules = &self.0.uploads;
        if rules.require_trusted_signature && !document.verify(&rules.trusted_keys) {
            return Err(CacheError::Forbidden(
                "the document carries no valid signature from a trusted upload key".into(),
            ));
        }
        Ok(self.0.db.put_realisation(id, content).await?)
    }

    /// A stored realisation or build-trace document; no upstream is asked (`/upload` reads).
    pub async fn stored_realisation(&self, id: &str) -> Result<String, CacheError> {
        self.0.db.realisation(id).await?.ok_or(CacheError::NotFound)
    }

    /// A realisation or build-trace document: stored, or fetched from an upstream that has it
    /// (the id is its path on the upstream) and then kept.
    pub async fn realisation(&self, id: &str) -> Result<String, CacheError> {
        let key = DocumentKey::Realisation(id.to_owned());
        let load = || self.0.db.realisation(id);
        let keep = |document: String| async move {
            signed_json(&document)?;
            self.0.db.put_realisation(id, &document).await?;
            Ok(document)
        };
        self.stored_or_fetched(&key, id, MAX_REALISATION_UPLOAD, load, keep)
            .await
    }

    /// A document as `load` finds it stored (then its use is recorded for eviction), or else
    /// the upstreams' copy of `path` (at most `max_bytes`) as `keep` checks and stores it. One request per document fetches and keeps
    /// it while holding the document's lock; the others wait for it and then find the document
    /// stored (or remembered missing by the upstreams' negative cache).
    async fn stored_or_fetched<T, F, Fut, K, KeepFut>(
        &self,
        key: &DocumentKey,
        path: &str,
        max_bytes: usize,
        load: F,
        keep: K,
    ) -> Result<T, CacheError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, ncps_db::DbError>>,
        K: FnOnce(String) -> KeepFut,
        KeepFut: std::future::Future<Output = Result<T, CacheError>>,
    {
        if let Some(stored) = load().await? {
            self.0.db.touch_document(key, ncps_db::now_secs()).await?;
            return Ok(stored);
        }
        let lock = self.0.fetching.lock_for(path);
        let _fetching = lock.lock().await;
        if let Some(stored) = load().await? {
            return Ok(stored); // fetched by the request this one waited for
        }
        let fetched = self
            .0
            .upstreams
            .find_document(path, max_bytes)
            .await?
            .ok_or(CacheError::NotFound)?;
        // Kept before the lock is released, so the requests waiting for it find it stored.
        keep(fetched).await
    }
}

/// Realisations are JSON objects; refuse anything else rather than serve garbage to clients.
fn signed_json(content: &str) -> Result<SignedJson, CacheError> {
    SignedJson::parse(content)
        .map_err(|e| CacheError::BadRequest(format!("a realisation must be a JSON object: {e}")))
}

#[cfg(test)]
mod tests {
    use ncps_nix::SecretKey;

    use super::*;
    use crate::test_support::local_cache_with;

    #[test]
    fn realisations_must_be_json_objects() {
        assert!(signed_json(r#" {"id": "x"} "#).is_ok());
        assert!(signed_json("[1]").is_err());
        assert!(signed_json("{ unterminated").is_err());
        assert!(signed_json("").is_err());
    }

    /// With `--cache-require-trusted-signature`, documents follow the rule narinfos follow.
    #[tokio::test(flavor = "multi_thread")]
    async fn signed_uploads_only_means_signed_documents_only() {
        let dir = tempfile::tempdir().unwrap();
        let trusted = SecretKey::generate("builder-1").unwrap();
        let (cache, db) = local_cache_with(dir.path(), |c| {
            c.uploads.require_trusted_signature = true;
            c.uploads.trusted_keys = vec![trusted.public_key()];
        })
        .await;
        let documents = cache.documents();
        let unsigned = r#"{"dependentRealisations":{},"id":"sha256:ab!out","outPath":"x-y"}"#;
        let id = "realisations/sha256:ab!out.doi";
        let err = documents.put_realisation(id, unsigned).await.unwrap_err();
        assert!(matches!(err, CacheError::Forbidden(_)), "{err}");
        let sig = trusted.sign(&SignedJson::parse(unsigned).unwrap().fingerprint);
        let signed = format!(
            r#"{{"dependentRealisations":{{}},"id":"sha256:ab!out","outPath":"x-y","signatures":["{sig}"]}}"#
        );
        documents.put_realisation(id, &signed).await.unwrap();
        assert_eq!(
            db.realisation(id).await.unwrap().as_deref(),
            Some(signed.as_str())
        );
        let err = documents
            .put_build_log("00000000000000000000000000000000-x.drv", b"log")
            .await
            .unwrap_err();
        assert!(matches!(err, CacheError::Forbidden(_)), "{err}");
    }
}
