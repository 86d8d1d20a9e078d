//! How long the LRU job takes to evict part of a cache of N narinfos, on whichever database
//! `NCPS_BENCH_DATABASE_URL` names (default: a SQLite file in a temporary directory).
//!
//! Inserts N narinfos (env `N`, default 100 000), each with its own NAR recorded as a 1000-byte
//! whole file and its own `last_accessed_at`, then times `Maintenance::evict_lru` bringing the
//! cache down by 0.1%, then 1%, then 10% of N (env `FRACTIONS`, comma-separated), each run on
//! what the previous left: the time should follow what is evicted, not N. The whole files are
//! not in storage (deleting a missing file is a no-op), so the time is the database's plus the
//! eviction loop's. On a server database the tables are not emptied: the URL must name an
//! empty (throwaway) database.
//!
//!   cargo bench -p ncps-core --bench lru_evict
//!   N=10000 NCPS_BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!     cargo bench -p ncps-core --bench lru_evict

use std::time::Instant;

use futures::{StreamExt, TryStreamExt, stream};
use ncps_core::{Cache, CacheConfig};
use ncps_db::{CachedNarInfo, Database, WholeFile, now_secs};
use ncps_nix::{Compression, NarInfo, NarKey, SecretKey, Sha256Hash, StorePath, StorePathHash};
use ncps_store::BlobStore;
use ncps_upstream::{UpstreamOptions, Upstreams};

const NAR_FILE_SIZE: u64 = 1000;
const CONCURRENCY: usize = 16;

/// A nix base-32 store path hash (32 characters) made from `i`.
fn store_path(i: u64) -> StorePath {
    const ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let mut n = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i;
    let mut hash = String::with_capacity(32);
    for k in 0..32 {
        if k == 13 {
            n = i; // the low positions spell `i` itself: distinct for distinct `i`
        }
        hash.push(ALPHABET[(n % 32) as usize] as char);
        n /= 32;
    }
    StorePath::parse_base_name(&format!("{hash}-bench-{i}")).expect("valid store path")
}

fn narinfo(i: u64) -> CachedNarInfo {
    let nar_hash = Sha256Hash::digest(format!("nar {i}").as_bytes());
    let url_key = NarKey::new(nar_hash, Compression::Zstd);
    CachedNarInfo {
        narinfo: NarInfo {
            store_path: store_path(i),
            url: url_key.url(),
            compression: Compression::Zstd,
            file_hash: None,
            file_size: None,
            nar_hash,
            nar_size: NAR_FILE_SIZE,
            references: vec![],
            deriver: None,
            sigs: vec!["bench-up-1:abc".into()],
            ca: None,
        },
        url_key,
        origin: None,
    }
}

#[tokio::main]
#[allow(clippy::print_stdout)] // a bench reports on stdout
async fn main() {
    let n: u64 = std::env::var("N")
        .ok()
        .map(|v| v.parse().expect("N is a number"))
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let url = std::env::var("NCPS_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| format!("sqlite:{}", dir.path().join("db.sqlite").display()));
    let engine = url.split(':').next().unwrap_or("?").to_string();

    let db = Database::open(&url).await.expect("open database");
    let store = BlobStore::local(&dir.path().join("store")).expect("blob store");
    let upstreams = Upstreams::new(&[], vec![], &UpstreamOptions::default()).expect("upstreams");
    let cache = Cache::new(
        CacheConfig::new(
            SecretKey::generate("bench").expect("key"),
            dir.path().join("tmp"),
        ),
        db.clone(),
        store,
        upstreams,
    );

    let before = db.stored_bytes().await.expect("stored bytes");
    assert_eq!(
        before, 0,
        "the database already holds NARs; point NCPS_BENCH_DATABASE_URL at an empty database"
    );

    // Distinct access times, oldest first, all after the insert's own `now`.
    let base = now_secs() + 10;
    let started = Instant::now();
    stream::iter(0..n)
        .map(|i| {
            let db = db.clone();
            async move {
                let info = narinfo(i);
                db.insert_narinfo(&info).await?;
                db.record_whole_file(
                    &info.narinfo.nar_hash,
                    NAR_FILE_SIZE,
                    WholeFile {
                        key: info.url_key,
                        size: NAR_FILE_SIZE,
                    },
                    None,
                )
                .await?;
                let hash: StorePathHash = *info.narinfo.store_path.hash();
                db.touch_narinfos(&[hash], base + i as i64).await
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await
        .expect("insert");
    let insert = started.elapsed();
    let stored = db.stored_bytes().await.expect("stored bytes");
    assert_eq!(stored, n * NAR_FILE_SIZE);

    println!(
        "lru_evict engine={engine} N={n} insert={:.2}s",
        insert.as_secs_f64()
    );
    let fractions = std::env::var("FRACTIONS").unwrap_or_else(|_| "0.001,0.01,0.1".into());
    let mut left = n;
    for fraction in fractions.split(',') {
        let fraction: f64 = fraction.trim().parse().expect("FRACTIONS are numbers");
        let evict = ((n as f64) * fraction).round() as u64;
        let sums_before = db.full_table_sums();
        let report = cache
            .maintenance()
            .evict_lru((left - evict) * NAR_FILE_SIZE)
            .await
            .expect("evict");
        assert_eq!(report.narinfos_evicted, evict);
        left -= evict;
        assert_eq!(report.bytes_after, left * NAR_FILE_SIZE);
        let secs = report.duration.as_secs_f64();
        println!(
            "lru_evict engine={engine} N={n} fraction={fraction} evicted={evict} \
             evict={secs:.3}s evicted_per_s={:.0} whole_table_sums={}",
            evict as f64 / secs,
            db.full_table_sums() - sums_before,
        );
    }
}
