//! `DELETE` of narinfos and NARs.

use ncps_nix::{NarKey, StorePathHash};

use super::Maintenance;
use crate::CacheError;

impl Maintenance {
    /// Forgets a narinfo (DELETE); its NAR stays until deleted or evicted.
    pub async fn delete_narinfo(&self, hash: &StorePathHash) -> Result<(), CacheError> {
        self.0.reader.forget_narinfo(hash);
        if self.0.db.delete_narinfo(hash).await? {
            Ok(())
        } else {
            Err(CacheError::NotFound)
        }
    }

    /// Deletes a NAR in every stored form (DELETE); its chunks are released for collection.
    pub async fn delete_nar(&self, key: &NarKey) -> Result<(), CacheError> {
        let nar_hash = self
            .0
            .db
            .nar_hash_for_url(key)
            .await?
            .ok_or(CacheError::NotFound)?;
        let record = self
            .0
            .db
            .delete_nar(&nar_hash)
            .await?
            .ok_or(CacheError::NotFound)?;
        self.0.reader.forget_chunk_list(&nar_hash);
        if let Some(whole) = record.whole {
            self.0.store.delete_nar(&whole.key).await?;
        }
        Ok(())
    }
}
