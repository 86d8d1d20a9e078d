//! Pins: a pinned store path and its whole reference closure are never evicted.

use ncps_db::Pin;
use ncps_nix::{StorePath, StorePathHash};

use super::Maintenance;
use crate::CacheError;

impl Maintenance {
    /// Pins a store path (and so its closure) against eviction; `false` when it already was.
    pub async fn pin(&self, hash: &StorePathHash) -> Result<bool, CacheError> {
        Ok(self.0.db.pin(hash).await?)
    }

    /// Removes a pin; `NotFound` when there was none.
    pub async fn unpin(&self, hash: &StorePathHash) -> Result<(), CacheError> {
        if self.0.db.unpin(hash).await? {
            Ok(())
        } else {
            Err(CacheError::NotFound)
        }
    }

    /// Every pin.
    pub async fn pins(&self) -> Result<Vec<Pin>, CacheError> {
        Ok(self.0.db.pins().await?)
    }

    /// How many store paths the pins protect (each pin's whole closure).
    pub async fn protected_paths(&self) -> Result<usize, CacheError> {
        Ok(self.0.db.pinned_closure().await?.len())
    }

    /// The store path a hash names, when its narinfo is cached (for messages).
    pub async fn cached_store_path(
        &self,
        hash: &StorePathHash,
    ) -> Result<Option<StorePath>, CacheError> {
        Ok(self.0.db.narinfo(hash).await?.map(|c| c.narinfo.store_path))
    }

    /// Every pin, as one line each: `<hash> <store path or ->`.
    pub async fn pins_text(&self) -> Result<String, CacheError> {
        let pins = self.pins().await?;
        Ok(pins
            .iter()
            .map(|p| format!("{} {}\n", p.hash, p.store_path.as_deref().unwrap_or("-")))
            .collect())
    }
}
