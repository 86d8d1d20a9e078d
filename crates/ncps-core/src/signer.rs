//! Our signature on the narinfos we serve, and the one place that decides which to serve.
//!
//! Signing took about a sixth of the CPU of a narinfo hit that reads the database, yet what a
//! signature covers (store path, NarHash, NarSize, references) never changes once a narinfo is
//! stored. So a narinfo is signed once, when it is stored, and the signature is kept with the
//! public key that made it. Serving reuses it only while that key is still ours and signs afresh
//! otherwise (a new key or key name, rows stored before signatures were kept, a narinfo stored
//! by another replica or admin command with a different key), so a client never receives a
//! signature our current key did not make. With signing off, nothing is added.

use std::sync::Arc;

use ncps_db::OwnSignature;
use ncps_nix::{NarInfo, SecretKey};

use crate::config::CacheConfig;

/// Signs narinfos for storage and for serving; cheap to clone. Built once by the cache and
/// shared by the ingest (which stores narinfos) and the reader (which serves them).
#[derive(Clone)]
pub(crate) struct Signer(Option<Arc<Key>>);

/// The signing key with its public half, printed once.
struct Key {
    secret: SecretKey,
    public: String,
}

impl Signer {
    /// The signer `config` asks for: its key, or none when `sign_narinfo` is off.
    pub(crate) fn new(config: &CacheConfig) -> Self {
        Self(config.sign_narinfo.then(|| {
            Arc::new(Key {
                public: config.secret_key.public_key().to_nix_string(),
                secret: config.secret_key.clone(),
            })
        }))
    }

    /// Our signature of `narinfo`, to store with it.
    pub(crate) fn for_storage(&self, narinfo: &NarInfo) -> Option<OwnSignature> {
        let key = self.0.as_ref()?;
        Some(OwnSignature {
            sig: key.secret.sign(&narinfo.fingerprint()),
            key: key.public.clone(),
        })
    }

    /// Puts our signature on `narinfo` as it is served: `stored` when our current key made it,
    /// a fresh one otherwise.
    pub(crate) fn sign(&self, narinfo: &mut NarInfo, stored: Option<&OwnSignature>) {
        let Some(key) = &self.0 else { return };
        match stored {
            Some(own) if own.key == key.public => narinfo.put_sig(own.sig.clone()),
            _ => narinfo.sign(&key.secret),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use ncps_nix::{Compression, NarInfo, PublicKey};

    use super::*;

    fn narinfo() -> NarInfo {
        NarInfo::parse(
            "StorePath: /nix/store/7h7qgvs4kgzsn8a6rb273saxyqh4jxlz-hello-2.12\n\
             URL: nar/x.nar.xz\nCompression: xz\n\
             NarHash: sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s\n\
             NarSize: 226560\nReferences: \n\
             Sig: upstream-1:c2lnbmF0dXJl\n",
        )
        .unwrap()
    }

    fn config(key: &SecretKey, sign: bool) -> CacheConfig {
        let mut config = CacheConfig::new(key.clone(), PathBuf::from("/tmp"));
        config.sign_narinfo = sign;
        config
    }

    fn verifies(info: &NarInfo, key: &PublicKey) -> bool {
        info.verify(std::slice::from_ref(key))
    }

    /// A stored signature is served while the key that made it signs; after a key change (same
    /// name, new secret) the narinfo is signed afresh, and the stale signature is gone.
    #[test]
    fn a_stored_signature_is_served_only_while_its_key_signs() {
        let old = SecretKey::generate("cache-1").unwrap();
        let signer = Signer::new(&config(&old, true));
        let stored = signer.for_storage(&narinfo()).unwrap();
        let mut served = narinfo();
        signer.sign(&mut served, Some(&stored));
        assert!(served.sigs.contains(&stored.sig));
        assert!(verifies(&served, &old.public_key()));
        assert_eq!(
            served.sigs.len(),
            2,
            "the upstream's and ours: {:?}",
            served.sigs
        );

        let new = SecretKey::generate("cache-1").unwrap();
        let mut served = narinfo();
        Signer::new(&config(&new, true)).sign(&mut served, Some(&stored));
        assert!(!served.sigs.contains(&stored.sig), "{:?}", served.sigs);
        assert!(verifies(&served, &new.public_key()));
        assert_eq!(served.sigs.len(), 2, "{:?}", served.sigs);
    }

    /// With signing off, nothing is stored and nothing is added, a stored signature included.
    #[test]
    fn with_signing_off_no_signature_of_ours_is_served() {
        let key = SecretKey::generate("cache-1").unwrap();
        let stored = Signer::new(&config(&key, true))
            .for_storage(&narinfo())
            .unwrap();
        let off = Signer::new(&config(&key, false));
        assert_eq!(off.for_storage(&narinfo()), None);
        let mut served = narinfo();
        off.sign(&mut served, Some(&stored));
        assert_eq!(served, narinfo());
        assert_eq!(served.compression, Compression::Xz);
    }
}
