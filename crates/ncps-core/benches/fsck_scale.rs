//! How fast `ncps fsck` checks a large cache, and how much memory it takes doing it: its
//! memory must not grow with the number of NARs or chunks (issue 18).
//!
//! Fills a SQLite database with N narinfos (env `N`, default 100 000; `ncps_db::fixtures`),
//! whole files or, with `CHUNKED=1`, chunk lists of about ten references each (30% shared),
//! then puts every recorded object into local storage: whole files as sparse files of their
//! recorded size, chunks as empty files (fsck compares presence and whole-file sizes, not chunk
//! contents, without `--verify-hashes`). Then times one fsck without repairs, asserts it found
//! no problem, and reports its rate and its peak RSS (the process's peak from the start of the
//! check, reset after the fill; the baseline RSS before the check is printed beside it).
//!
//! With `FSCK_DATA_DIR` set, the cache is made there (a directory that does not exist yet:
//! `db.sqlite`, `store/`) and kept, so `ncps fsck` itself can be run on it afterwards.
//!
//!   N=100000 CHUNKED=1 cargo bench -p ncps-core --bench fsck_scale

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use ncps_core::maintenance::{FsckOptions, FsckOutput, NAR_FILES_PER_PASS};
use ncps_core::{Cache, CacheConfig};
use ncps_db::Database;
use ncps_db::fixtures::FixtureSpec;
use ncps_nix::SecretKey;
use ncps_store::BlobStore;
use ncps_store::chunk::chunk_storage_key;
use ncps_upstream::{UpstreamOptions, Upstreams};

/// Findings are kept (there should be none); progress goes to stderr.
#[derive(Default)]
struct Findings(Vec<String>);

impl FsckOutput for Findings {
    fn finding(&mut self, line: &str) {
        self.0.push(line.to_owned());
    }
    #[allow(clippy::print_stderr)] // a bench reports progress on stderr
    fn progress(&mut self, line: &str) {
        eprintln!("{line}");
    }
}

#[tokio::main]
#[allow(clippy::print_stdout)] // a bench reports on stdout
async fn main() {
    let n = support::env_number("N", 100_000);
    let chunked = support::env_flag("CHUNKED");
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = match std::env::var_os("FSCK_DATA_DIR") {
        Some(kept) => {
            let kept = std::path::PathBuf::from(kept);
            std::fs::create_dir(&kept).expect("FSCK_DATA_DIR names a directory not made yet");
            kept
        }
        None => temp.path().to_path_buf(),
    };
    let db = Database::open(&format!("sqlite:{}", dir.join("db.sqlite").display()))
        .await
        .expect("open database");
    let root = dir.join("store");
    let store = BlobStore::local(&root).expect("blob store");
    let upstreams = Upstreams::new(&[], vec![], &UpstreamOptions::default()).expect("upstreams");
    let cache = Cache::new(
        CacheConfig::new(SecretKey::generate("bench").expect("key"), dir.join("tmp")),
        db.clone(),
        store,
        upstreams,
    );

    let spec = FixtureSpec {
        chunked,
        ..FixtureSpec::new(n)
    };
    let filled = db.fill_fixture(&spec).await.expect("fill");
    let started = Instant::now();
    let objects = store_every_object(&db, &root).await;
    println!(
        "fsck_scale N={n} chunked={chunked} fill={:.1}s chunks={} chunk_references={} \
         objects={objects} written in {:.1}s",
        filled.elapsed.as_secs_f64(),
        filled.chunks,
        filled.chunk_references,
        started.elapsed().as_secs_f64()
    );

    let baseline = support::status_kib("VmRSS");
    support::reset_peak_rss();
    let mut findings = Findings::default();
    let options = FsckOptions {
        repair: false,
        verify_hashes: false,
        min_age: Duration::ZERO,
        nar_files_per_pass: NAR_FILES_PER_PASS,
    };
    let started = Instant::now();
    let summary = cache
        .maintenance()
        .fsck(options, &mut findings)
        .await
        .expect("fsck");
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(summary.problems, 0, "{:#?}", findings.0);
    println!(
        "fsck_scale N={n} chunked={chunked} fsck={secs:.1}s nars_per_s={:.0} \
         chunk_references_per_s={:.0} rss_before_kib={baseline} peak_rss_kib={}",
        n as f64 / secs,
        filled.chunk_references as f64 / secs,
        support::status_kib("VmHWM")
    );
}

/// Writes every object the database records into local storage under `root`; returns how
/// many.
async fn store_every_object(db: &Database, root: &Path) -> u64 {
    let mut written = 0;
    std::fs::create_dir_all(root.join("nar")).expect("nar directory");
    let mut after = None;
    loop {
        let page = db.nars_after(after.as_ref(), 500).await.expect("NARs");
        let Some(last) = page.last() else { break };
        after = Some(last.nar_hash);
        for whole in page.iter().filter_map(|r| r.whole) {
            let file = std::fs::File::create(root.join("nar").join(whole.key.file_name()));
            file.and_then(|f| f.set_len(whole.size))
                .expect("sparse whole file");
            written += 1;
        }
    }
    let mut after = None;
    loop {
        let page = db.chunks_after(after.as_ref(), 500).await.expect("chunks");
        let Some(last) = page.last() else { break };
        after = Some(last.hash);
        for row in &page {
            let path = root.join(chunk_storage_key(&row.hash));
            if let Err(e) = std::fs::File::create(&path) {
                assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
                std::fs::create_dir_all(path.parent().expect("a directory")).expect("mkdir");
                std::fs::File::create(&path).expect("chunk file");
            }
            written += 1;
        }
    }
    written
}
