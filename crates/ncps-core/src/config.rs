//! The settings of the cache core, with defaults from [`crate::defaults`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ncps_nix::SecretKey;

use crate::defaults;
use crate::ingest::{ChunkSettings, UploadConfig};
use crate::locks::{LocalLocks, LockService};
use crate::priority::Priority;

/// Content-defined chunking settings; `None` in [`CacheConfig`] stores NARs as whole files.
#[derive(Clone, Copy, Debug)]
pub struct CdcConfig {
    /// How chunks are cut and compressed.
    pub chunking: ChunkSettings,
    /// Store the whole file first and chunk it in the background (serving it at once).
    pub lazy: bool,
    /// How long a whole file is kept after its chunks are complete (lazy mode).
    pub delete_delay: Duration,
    /// zstd level of the chunks lazy chunking makes: no client waits for them, so it may be
    /// higher than the eager level (`chunking`), storing less for more background CPU.
    pub lazy_zstd_level: i32,
}

impl CdcConfig {
    /// The chunking applied while a NAR arrives, when chunking is eager.
    pub(crate) fn eager(&self) -> Option<ChunkSettings> {
        (!self.lazy).then_some(self.chunking)
    }

    /// The chunking of NARs already stored whole, done in the background (lazy mode): the same
    /// cut points, so chunks dedup against eagerly made ones, at the lazy level, on threads
    /// that only take a core nothing else wants.
    pub(crate) fn background(&self) -> ChunkSettings {
        ChunkSettings {
            zstd_level: self.lazy_zstd_level,
            priority: Priority::Idle,
            ..self.chunking
        }
    }
}

/// Settings of the cache core.
pub struct CacheConfig {
    /// The key narinfos are signed with.
    pub secret_key: SecretKey,
    /// Add our signature to narinfos (off: pass upstream signatures through unchanged).
    pub sign_narinfo: bool,
    /// Where downloads and uploads are written before they are verified and stored.
    pub temp_dir: PathBuf,
    /// Priority announced in nix-cache-info (lower is preferred by clients).
    pub priority: u32,
    /// Chunk NARs (eagerly or lazily); `None` keeps whole files.
    pub cdc: Option<CdcConfig>,
    /// Rules for uploads.
    pub uploads: UploadConfig,
    /// The lock service that coordinates replicas.
    pub locks: Arc<dyn LockService>,
    /// How long a download lock lives without renewal (a dead replica's lock expires after it).
    pub download_lock_ttl: Duration,
    /// Start downloading a NAR as soon as its narinfo is fetched from upstream.
    pub prefetch: bool,
    /// Conversions between compressions that may run at once (each takes a core while it runs).
    pub max_conversions: usize,
}

impl CacheConfig {
    /// Defaults for everything but the key and the temporary directory: signing on, the
    /// default priority, whole files, default upload rules, in-process locks.
    pub fn new(secret_key: SecretKey, temp_dir: PathBuf) -> Self {
        Self {
            secret_key,
            sign_narinfo: defaults::SIGN_NARINFO,
            temp_dir,
            priority: defaults::PRIORITY,
            cdc: None,
            uploads: UploadConfig::default(),
            locks: Arc::new(LocalLocks::default()),
            download_lock_ttl: defaults::DOWNLOAD_LOCK_TTL,
            prefetch: defaults::UPSTREAM_PREFETCH,
            max_conversions: defaults::max_conversions(),
        }
    }

    /// Whether and when NARs are chunked, as the serve plan needs it.
    pub(crate) fn chunking(&self) -> crate::plan::Chunking {
        use crate::plan::Chunking;
        match self.cdc {
            None => Chunking::Off,
            Some(cdc) if cdc.eager().is_some() => Chunking::Eager,
            Some(_) => Chunking::Lazy,
        }
    }
}

#[cfg(test)]
mod tests {
    use ncps_store::chunk::ChunkParams;

    use super::*;

    #[test]
    fn only_background_chunking_yields_the_cores_to_clients() {
        let cdc = CdcConfig {
            chunking: ChunkSettings {
                params: ChunkParams::default(),
                zstd_level: 1,
                priority: Priority::Client,
            },
            lazy: false,
            delete_delay: Duration::ZERO,
            lazy_zstd_level: 8,
        };
        let eager = cdc.eager().expect("chunking is eager");
        assert_eq!(
            eager.priority,
            Priority::Client,
            "a client waits for eager chunks"
        );
        let background = CdcConfig { lazy: true, ..cdc }.background();
        assert_eq!(
            background.priority,
            Priority::Idle,
            "lazy chunking competes with clients"
        );
        assert_eq!(background.zstd_level, 8);
    }
}
