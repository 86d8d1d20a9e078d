//! What unit tests of several components share: a cache on SQLite and local disk below a
//! temporary directory, with no upstream.

use std::path::Path;

use ncps_db::Database;
use ncps_nix::SecretKey;
use ncps_store::BlobStore;
use ncps_upstream::{UpstreamOptions, Upstreams};

use crate::{Cache, CacheConfig};

/// A cache below `dir` (database `db.sqlite`, storage `store/`, temporary files `tmp/`) and
/// its database, for checking what the components recorded.
pub(crate) async fn local_cache(dir: &Path) -> (Cache, Database) {
    local_cache_with(dir, |_| {}).await
}

/// The database and storage of [`local_cache`] below `dir`, without a cache around them.
pub(crate) async fn local_db_and_store(dir: &Path) -> (Database, BlobStore) {
    let db = Database::open(&format!("sqlite:{}", dir.join("db.sqlite").display()))
        .await
        .unwrap();
    (db, BlobStore::local(&dir.join("store")).unwrap())
}

/// [`local_cache`] with its configuration changed by `configure` first.
pub(crate) async fn local_cache_with(
    dir: &Path,
    configure: impl FnOnce(&mut CacheConfig),
) -> (Cache, Database) {
    let (db, store) = local_db_and_store(dir).await;
    let upstreams = Upstreams::new(&[], vec![], &UpstreamOptions::default()).unwrap();
    let mut config = CacheConfig::new(SecretKey::generate("test").unwrap(), dir.join("tmp"));
    configure(&mut config);
    (Cache::new(config, db.clone(), store, upstreams), db)
}

/// `len` pseudo-random bytes (xorshift64 seeded by `seed`), the same on every run: NARs that
/// differ by seed and that no compressor can shrink.
pub(crate) fn noise(seed: u8, len: usize) -> Vec<u8> {
    let mut x = u64::from(seed) + 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `len` bytes of text that zstd shrinks more at a high level than at level 1 (numbered lines
/// of words, each a little different), the same on every run.
pub(crate) fn compressible(len: usize) -> Vec<u8> {
    let words = [
        "store", "path", "narinfo", "chunk", "frame", "closure", "deriver",
    ];
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0usize;
    while out.len() < len {
        let line = format!(
            "{i:>8} {} {} {}\n",
            words[i % 7],
            words[(i / 7) % 7],
            words[(i * 31 / 5) % 7]
        );
        out.extend_from_slice(line.as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}
