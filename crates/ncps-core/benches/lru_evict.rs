//! How long the LRU job takes to evict part of a cache of N narinfos, on whichever database
//! `NCPS_BENCH_DATABASE_URL` names (default: a SQLite file in a temporary directory).
//!
//! Fills the database with N narinfos (env `N`, default 100 000; `ncps_db::fixtures`: each with
//! its own NAR as a whole file, sizes log-normal, its own `last_accessed_at`), then times
//! `Maintenance::evict_lru` bringing the cache down by 0.1%, then 1%, then 10% of N (env
//! `FRACTIONS`, comma-separated), each run on what the previous left: the time should follow
//! what is evicted, not N. The whole files are not in storage (deleting a missing file is a
//! no-op), so the time is the database's plus the eviction loop's. Before each run the reclaim
//! job's search for unused NARs runs, timed apart (it reads every NAR; eviction itself no
//! longer does). With `CHUNKED=1` the NARs are chunk lists (about 10 references each, 30%
//! shared), and each run frees that share of the stored bytes instead (a path's share of
//! shared chunks has no exact size); after the runs the chunk collector deletes every chunk
//! the evictions left unreferenced (grace period zero), timed, with the peak RSS of that
//! collection alone (its memory must not grow with the number of chunks). On a server
//! database the tables are not emptied: the URL must name an empty (throwaway) database.
//!
//!   cargo bench -p ncps-core --bench lru_evict
//!   N=10000 NCPS_BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!     cargo bench -p ncps-core --bench lru_evict

mod support;

use ncps_core::{Cache, CacheConfig};
use ncps_db::Database;
use ncps_db::fixtures::{FixtureSpec, whole_file_size};
use ncps_nix::SecretKey;
use ncps_store::BlobStore;
use ncps_upstream::{UpstreamOptions, Upstreams};

#[tokio::main]
#[allow(clippy::print_stdout)] // a bench reports on stdout
async fn main() {
    let n = support::env_number("N", 100_000);
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
    let chunked = support::env_flag("CHUNKED");
    let spec = FixtureSpec {
        chunked,
        ..FixtureSpec::new(n)
    };
    let filled = db.fill_fixture(&spec).await.expect("fill");
    println!(
        "lru_evict engine={engine} N={n} chunked={chunked} fill={:.2}s stored={} bytes",
        filled.elapsed.as_secs_f64(),
        filled.stored_bytes
    );
    let fractions = std::env::var("FRACTIONS").unwrap_or_else(|_| "0.001,0.01,0.1".into());
    let mut first = 0;
    let mut stored = filled.stored_bytes;
    for fraction in fractions.split(',') {
        let fraction: f64 = fraction.trim().parse().expect("FRACTIONS are numbers");
        let evict = ((n as f64) * fraction).round() as u64;
        let bytes: u64 = if chunked {
            (filled.stored_bytes as f64 * fraction) as u64
        } else {
            (first..first + evict)
                .map(|i| whole_file_size(spec.seed, i))
                .sum()
        };
        // The reclaim job (every 5 minutes) searches for unused NARs between two runs; timed
        // apart, since it reads every NAR.
        let searched = std::time::Instant::now();
        cache
            .maintenance()
            .reclaim_unused_nars()
            .await
            .expect("reclaim");
        let search = searched.elapsed().as_secs_f64();
        let sums_before = db.full_scans();
        let report = cache
            .maintenance()
            .evict_lru(stored.saturating_sub(bytes))
            .await
            .expect("evict");
        if !chunked {
            assert_eq!(report.narinfos_evicted, evict);
            assert_eq!(report.bytes_after, stored - bytes);
        }
        let evict = report.narinfos_evicted;
        first += evict;
        stored = report.bytes_after;
        let secs = report.duration.as_secs_f64();
        println!(
            "lru_evict engine={engine} N={n} chunked={chunked} fraction={fraction} evicted={evict} \
             evict={secs:.3}s evicted_per_s={:.0} whole_table_reads={} \
             (reclaim job's search before it: {search:.3}s)",
            evict as f64 / secs,
            db.full_scans() - sums_before,
        );
    }
    if chunked {
        let (waiting, _) = db.unreferenced_chunk_totals().await.expect("chunk totals");
        support::reset_peak_rss();
        let started = std::time::Instant::now();
        let report = cache
            .maintenance()
            .collect_chunks(std::time::Duration::ZERO)
            .await
            .expect("collect chunks");
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(
            report.chunks_deleted, waiting,
            "every unreferenced chunk collected"
        );
        println!(
            "chunk_gc engine={engine} N={n} deleted={} gc={secs:.3}s deleted_per_s={:.0} \
             peak_rss_during_gc_kib={}",
            report.chunks_deleted,
            report.chunks_deleted as f64 / secs,
            support::status_kib("VmHWM")
        );
    }
}
