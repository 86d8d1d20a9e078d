//! Access times without a database write per request: hits are noted in memory and written in
//! batches every few seconds, so a warm hit costs no write on the hot path while LRU eviction
//! still sees (nearly) current access order.

use std::collections::HashSet;
use std::sync::Mutex;

use ncps_db::Database;
use ncps_nix::{Sha256Hash, StorePathHash};
use tracing::warn;

/// Accesses noted since the last flush.
#[derive(Default)]
pub(crate) struct AccessLog {
    narinfos: Mutex<HashSet<StorePathHash>>,
    nars: Mutex<HashSet<Sha256Hash>>,
}

impl AccessLog {
    /// Notes a narinfo hit.
    pub fn narinfo(&self, hash: StorePathHash) {
        self.narinfos
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash);
    }

    /// Notes a NAR request.
    pub fn nar(&self, hash: Sha256Hash) {
        self.nars
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash);
    }

    fn take(&self) -> (Vec<StorePathHash>, Vec<Sha256Hash>) {
        let narinfos =
            std::mem::take(&mut *self.narinfos.lock().unwrap_or_else(|p| p.into_inner()));
        let nars = std::mem::take(&mut *self.nars.lock().unwrap_or_else(|p| p.into_inner()));
        (narinfos.into_iter().collect(), nars.into_iter().collect())
    }
}

impl AccessLog {
    /// Writes the accesses noted so far; a failed write is logged and those accesses are lost
    /// (the next ones are recorded as usual).
    pub async fn flush(&self, db: &Database) {
        let (narinfos, nars) = self.take();
        let now = ncps_db::now_secs();
        if !narinfos.is_empty()
            && let Err(e) = db.touch_narinfos(&narinfos, now).await
        {
            warn!(error = %e, count = narinfos.len(), "could not record narinfo access times");
        }
        if !nars.is_empty()
            && let Err(e) = db.touch_nars(&nars, now).await
        {
            warn!(error = %e, count = nars.len(), "could not record NAR access times");
        }
    }
}
