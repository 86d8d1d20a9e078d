//! kill -9 at random moments: during cold downloads, eager and lazy chunking, uploads, eviction
//! and chunk collection. After every kill the restarted server serves only correct bytes and
//! the interrupted work gets done; at the end `fsck`, then `fsck --repair`, leave a store with
//! no problem and no leftover file.
//!
//! Each scenario runs on the embedded default (SQLite and the local disk) and on what replicas
//! run on (PostgreSQL, a bucket of the Garage S3 server, Redis locks).
//!
//! `NCPS_KILLS` sets the kills per scenario: 1 by default (a short pass in the test command);
//! `scripts/kill-soak` runs hundreds and docs/reliability.md records them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;

use crate::harness::narinfo::store_hash;
use crate::harness::upload::{FileCache, send};
use crate::harness::{
    Compression, Fixture, FixtureOptions, NarInfo, eventually_within, http, unique_dir,
};
use crate::replicas::{Services, redis_locks};

/// What the server is busy with when it is killed.
#[derive(Clone, Copy, Debug)]
enum Scenario {
    ColdDownloads,
    EagerChunking,
    LazyChunking,
    Uploads,
    Eviction,
    ChunkCollection,
}

impl Scenario {
    /// The `serve` flags that make the server do this work.
    fn args(self) -> &'static [&'static str] {
        const EVICT_EVERY_SECOND: [&str; 4] = [
            "--cache-max-size",
            "1M",
            "--cache-lru-schedule",
            "@every 1s",
        ];
        match self {
            Scenario::ColdDownloads => &[],
            Scenario::EagerChunking => &["--cache-cdc-enabled"],
            Scenario::LazyChunking => &["--cache-cdc-enabled", "--cache-cdc-lazy-chunking-enabled"],
            Scenario::Uploads => &["--cache-allow-put-verb"],
            Scenario::Eviction => &EVICT_EVERY_SECOND,
            // Eviction frees chunks every second; each start collects them (no grace).
            Scenario::ChunkCollection => &[
                "--cache-cdc-enabled",
                "--cache-cdc-gc-grace",
                "0s",
                "--cache-max-size",
                "1M",
                "--cache-lru-schedule",
                "@every 1s",
            ],
        }
    }
}

/// Where the killed server keeps its cache.
enum Backend {
    /// SQLite and the local disk: the zero-set-up default.
    Embedded,
    /// PostgreSQL, a bucket of the Garage S3 server and Redis locks, as replicas run.
    Shared(Services),
}

impl Backend {
    /// A fresh, empty place for the cache (database and storage flags; nothing for the
    /// embedded default, whose place is the data directory), so every kill lands in cold work.
    fn fresh_place(&self) -> Vec<String> {
        match self {
            Backend::Embedded => Vec::new(),
            Backend::Shared(services) => {
                let mut place = vec!["--cache-database-url".to_owned(), services.database()];
                place.extend(services.s3_args(&services.bucket()));
                place
            }
        }
    }

    /// How figures and failures name it.
    fn name(&self) -> &'static str {
        match self {
            Backend::Embedded => "SQLite and local disk",
            Backend::Shared(_) => "PostgreSQL, S3 and Redis",
        }
    }

    /// The lock service's flags for `serve`.
    fn locks(&self) -> Vec<String> {
        match self {
            Backend::Embedded => Vec::new(),
            Backend::Shared(services) => redis_locks(services),
        }
    }
}

fn kills_per_scenario() -> usize {
    std::env::var("NCPS_KILLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
}

/// A small xorshift generator: kill moments vary between runs, and a failure names its seed.
struct Moments(u64);

impl Moments {
    fn new() -> Moments {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 | 1);
        Moments(seed)
    }

    /// A pause between 50 ms and 1.5 s.
    fn next(&mut self) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(50 + self.0 % 1450)
    }
}

/// GETs a path's narinfo and NAR from ncps. `Ok(true)`: served and correct; `Ok(false)`: not
/// served this time (an error status, a broken transfer: the client retries). A complete 200
/// with wrong bytes is the one thing that must never happen: `Err`.
async fn fetch_and_check(client: &reqwest::Client, base: &str, path: &str) -> Result<bool, String> {
    let narinfo_url = format!("{base}/{}.narinfo", store_hash(path));
    let Ok(resp) = http::fetch(client, Method::GET, &narinfo_url, &[]).await else {
        return Ok(false);
    };
    if resp.status != 200 {
        return Ok(false);
    }
    let narinfo = NarInfo::parse(&resp.text());
    let nar_url = format!("{base}/{}", narinfo.field("URL"));
    let Ok(resp) = http::fetch(client, Method::GET, &nar_url, &[]).await else {
        return Ok(false);
    };
    if resp.status != 200 {
        return Ok(false);
    }
    narinfo
        .verify_nar(&resp.body)
        .map(|()| true)
        .map_err(|e| format!("GET {nar_url}: a complete 200 with wrong bytes: {e}"))
}

/// Uploads `path` from `cache` (NAR, then narinfo); `true` once both were accepted.
async fn upload(client: &reqwest::Client, base: &str, cache: &FileCache, path: &str) -> bool {
    let nar_url = format!("{base}/{}", cache.nar_url(path));
    let narinfo_url = format!("{base}/{}.narinfo", store_hash(path));
    let nar = send(client, Method::PUT, &nar_url, &[], cache.nar(path)).await;
    if !nar.is_ok_and(|r| (200..300).contains(&r.status)) {
        return false;
    }
    let narinfo = cache.narinfo_text(path).into_bytes();
    let sent = send(client, Method::PUT, &narinfo_url, &[], narinfo).await;
    sent.is_ok_and(|r| (200..300).contains(&r.status))
}

/// The work a scenario keeps the server busy with, until it is killed: four clients that
/// download the closure over and over (or upload a path), checking every complete body.
fn spawn_workload(
    fx: &Fixture,
    uploaded: Option<&(FileCache, String)>,
    violations: &Arc<Mutex<Vec<String>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..4)
        .map(|i| {
            let base = fx.ncps.url();
            let paths = fx.closure.paths.clone();
            let violations = violations.clone();
            let upload_this = uploaded
                .filter(|_| i % 2 == 0)
                .map(|(c, p)| (FileCache { dir: c.dir.clone() }, p.clone()));
            tokio::spawn(async move {
                let client = http::client();
                loop {
                    if let Some((cache, path)) = &upload_this {
                        upload(&client, &base, cache, path).await;
                        continue;
                    }
                    for path in &paths {
                        if let Err(e) = fetch_and_check(&client, &base, path).await {
                            violations.lock().expect("lock").push(e);
                        }
                    }
                }
            })
        })
        .collect()
}

/// After a restart: every path is served with the right bytes (within 30 s: eviction may
/// race the check), an interrupted upload can be completed.
async fn check_served(fx: &Fixture, uploaded: Option<&(FileCache, String)>, why: &str) {
    let client = http::client();
    let base = fx.ncps.url();
    if let Some((cache, path)) = uploaded {
        eventually_within(
            &format!("{why}: an upload completes"),
            Duration::from_secs(30),
            || async {
                if upload(&client, &base, cache, path).await {
                    Ok(())
                } else {
                    Err("upload refused or broken".to_owned())
                }
            },
        )
        .await;
    }
    let mut paths = fx.closure.paths.clone();
    paths.extend(uploaded.map(|(_, p)| p.clone()));
    for path in &paths {
        eventually_within(
            &format!("{why}: {path} served"),
            Duration::from_secs(30),
            || async {
                match fetch_and_check(&client, &base, path).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err("not served yet".to_owned()),
                    Err(wrong) => panic!("{why}: {wrong}"),
                }
            },
        )
        .await;
    }
}

/// `fsck` of the cache at `place` with `args` (and `--min-age 0s`: the server is stopped,
/// nothing is in progress).
async fn fsck(fx: &Fixture, place: &[String], args: &[&str]) -> crate::harness::ncps::NcpsRun {
    let mut all = vec!["--min-age", "0s"];
    all.extend(place.iter().map(String::as_str));
    all.extend(args);
    fx.env.ncps_admin("fsck", &fx.config, &all).await
}

/// The `serve` flags of `scenario` on the cache at `place`.
fn serve_args(scenario: Scenario, place: &[String], backend: &Backend) -> Vec<String> {
    let mut args: Vec<String> = scenario.args().iter().map(|a| (*a).to_owned()).collect();
    args.extend(place.iter().cloned());
    args.extend(backend.locks());
    args
}

#[expect(clippy::print_stderr, reason = "figures for docs/reliability.md")]
async fn kill_at_random_moments(scenario: Scenario, backend: Backend) {
    let mut place = backend.fresh_place();
    let args = serve_args(scenario, &place, &backend);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut fx = Fixture::with(
        FixtureOptions::new(Compression::Xz)
            .blob_bytes(2_000_000)
            .ncps_args(&args),
    )
    .await;
    // Each NAR takes a while to arrive, so kills land in the middle of ingests.
    fx.upstream.throttle_nars(Duration::from_millis(5));
    let uploaded = match scenario {
        Scenario::Uploads => {
            let path = fx.env.built_path(1_000_000).await.path;
            Some((fx.env.file_cache(&path, Compression::Xz).await, path))
        }
        _ => None,
    };
    let violations = Arc::new(Mutex::new(Vec::new()));
    let mut moments = Moments::new();
    let seed = moments.0;
    let kills = kills_per_scenario();
    let started = Instant::now();
    let mut found_before_repair = std::collections::BTreeMap::<String, usize>::new();
    for kill in 1..=kills {
        if kill > 1 {
            // A fresh store each time, so every kill lands in cold work.
            fx.config.data_dir = unique_dir(fx.env.path(), "ncps-data");
            fx.config.temp_dir = unique_dir(fx.env.path(), "ncps-tmp");
            place = backend.fresh_place();
            fx.config.extra_args = serve_args(scenario, &place, &backend);
            fx.ncps = fx.env.ncps(&fx.config).await;
        }
        let workload = spawn_workload(&fx, uploaded.as_ref(), &violations);
        tokio::time::sleep(moments.next()).await;
        fx.ncps.kill();
        for task in &workload {
            task.abort();
        }
        fx.ncps = fx.env.ncps(&fx.config).await;
        let why = format!(
            "{scenario:?} on {}, after kill {kill} of {kills} (seed {seed})",
            backend.name()
        );
        check_served(&fx, uploaded.as_ref(), &why).await;
        let wrong = violations.lock().expect("lock").clone();
        assert!(wrong.is_empty(), "{why}: wrong bytes served: {wrong:?}");

        fx.ncps.terminate().await;
        let found = fsck(&fx, &place, &[]).await;
        for kind in problem_kinds(&found.output) {
            *found_before_repair.entry(kind).or_default() += 1;
        }
        let repair = fsck(&fx, &place, &["--repair"]).await;
        assert!(
            repair.status.success() && repair.output.contains("0 remaining"),
            "{why}: fsck --repair did not end clean:\n{repair}"
        );
        let after = fsck(&fx, &place, &[]).await;
        assert!(
            after.status.success() && after.output.contains("0 problems found"),
            "{why}: fsck after the repair:\n{after}\n(before the repair:\n{found})"
        );
    }
    eprintln!(
        "KILL-FIGURES {scenario:?} on {}: {kills} kills in {:?}; no wrong byte served; every path \
         served after each restart; problems fsck found before repairing, by kind: \
         {found_before_repair:?}; clean after every repair",
        backend.name(),
        started.elapsed()
    );
}

/// The kind of each problem fsck reported (`leftover`, `stray`, `missing`, …): its finding
/// lines are `<kind>: <what>`; repairs, notes and progress are indented or start otherwise.
fn problem_kinds(output: &str) -> Vec<String> {
    output
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with("fsck") && !l.starts_with("recent"))
        .filter(|l| !l.starts_with("Error"))
        .filter_map(|l| l.split_once(": ").map(|(kind, _)| kind.to_owned()))
        .filter(|kind| {
            !kind.contains(' ') || kind.starts_with("broken") || kind.starts_with("wrong")
        })
        .collect()
}

/// Each scenario's test on each backend: `killed_during_<scenario>` on the embedded default,
/// `killed_during_<scenario>_on_postgres_s3_and_redis` on the shared services.
macro_rules! kill_tests {
    ($($embedded:ident, $shared:ident: $scenario:expr;)*) => {$(
        #[tokio::test(flavor = "multi_thread")]
        async fn $embedded() {
            kill_at_random_moments($scenario, Backend::Embedded).await;
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn $shared() {
            kill_at_random_moments($scenario, Backend::Shared(Services::from_env())).await;
        }
    )*};
}

kill_tests! {
    killed_during_cold_downloads, killed_during_cold_downloads_on_postgres_s3_and_redis:
        Scenario::ColdDownloads;
    killed_during_eager_chunking, killed_during_eager_chunking_on_postgres_s3_and_redis:
        Scenario::EagerChunking;
    killed_during_lazy_chunking, killed_during_lazy_chunking_on_postgres_s3_and_redis:
        Scenario::LazyChunking;
    killed_during_uploads, killed_during_uploads_on_postgres_s3_and_redis: Scenario::Uploads;
    killed_during_eviction, killed_during_eviction_on_postgres_s3_and_redis: Scenario::Eviction;
    killed_during_chunk_collection, killed_during_chunk_collection_on_postgres_s3_and_redis:
        Scenario::ChunkCollection;
}
