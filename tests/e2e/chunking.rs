//! Content-defined chunking: NARs stored as deduplicated zstd-framed chunks (eagerly while
//! downloading, or lazily in the background), served spliced, plain or as any URL ever handed
//! out, surviving restarts, crashes, and migrations in both directions.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::narinfo::store_hash;
use crate::harness::{
    Compression, Fixture, FixtureOptions, NarInfo, Ncps, NcpsConfig, NcpsRun, TestEnv, Upstream,
    eventually, eventually_within, http, nix, random_hex, unique_dir,
};

/// Chunking on, eager (the default mode), default chunk sizes.
const CDC: &[&str] = &["--cache-cdc-enabled"];

/// Chunking on, lazy, with background jobs fast enough for a test.
const LAZY_CDC: &[&str] = &[
    "--cache-cdc-enabled",
    "--cache-cdc-lazy-chunking-enabled",
    "--cache-cdc-background-workers",
    "1",
    "--cache-cdc-lazy-recovery-schedule",
    "@every 2s",
    "--cache-cdc-delete-delay",
    "1s",
];

/// The chunk sizes ncps records by default, as its messages write them (min/avg/max).
const DEFAULT_CHUNK_SIZES: &str = "16384/65536/262144";

/// What ncps logs when the background worker finished chunking a NAR.
const CHUNKED_IN_BACKGROUND: &str = "chunked NAR in the background";

/// Bound on background work (lazy chunking, recovery, deleting whole files).
const BACKGROUND_LIMIT: Duration = Duration::from_secs(60);

/// ncps's narinfo for every path of the fixture's closure.
async fn closure_narinfos(fx: &Fixture) -> Vec<NarInfo> {
    let mut narinfos = Vec::new();
    for path in &fx.closure.paths {
        narinfos.push(fx.ncps_narinfo(path).await);
    }
    narinfos
}

/// `Ok` once every narinfo ncps gives for the closure has FileHash and FileSize, which it adds
/// when a NAR is stored as chunks.
async fn closure_is_chunked(fx: &Fixture) -> Result<Vec<NarInfo>, String> {
    let narinfos = closure_narinfos(fx).await;
    match narinfos
        .iter()
        .find(|n| n.get("FileHash").is_none() || n.get("FileSize").is_none())
    {
        Some(n) => Err(format!("no FileHash/FileSize yet:\n{}", n.text)),
        None => Ok(narinfos),
    }
}

/// Checks that every chunk file is named `<2 hex>/<64 hex>.zst` (the 2 hex being the name's
/// start) and returns the total size of the chunk files.
fn chunk_bytes(config: &NcpsConfig) -> u64 {
    let files = config.chunk_files();
    for (path, _) in &files {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let dir = path
            .parent()
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
            .unwrap_or("");
        let hex = name.strip_suffix(".zst").unwrap_or("");
        let is_hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
        assert!(
            hex.len() == 64 && is_hex(hex) && dir.len() == 2 && hex.starts_with(dir),
            "not a chunk's name: {}",
            path.display()
        );
    }
    files.iter().map(|(_, size)| size).sum()
}

/// Whole NAR files in storage, fit for an assertion message.
fn whole_files(config: &NcpsConfig) -> Vec<String> {
    config
        .whole_nar_files()
        .iter()
        .map(|(path, size)| format!("{} ({size} bytes)", path.display()))
        .collect()
}

/// GET `url`: a 200 (Content-Length optional), the whole body.
async fn get_ok(url: &str) -> bytes::Bytes {
    http::get(url)
        .await
        .expect_status(200, &format!("GET {url}"))
        .body
}

/// Single ranges of a stored NAR answer 206 with exactly those bytes of `full`: the start, a
/// span across several chunks, the end, and an open-ended range.
async fn assert_ranges(url: &str, full: &[u8]) {
    let total = full.len();
    let client = http::client();
    let cases = [
        ("bytes=0-99".to_owned(), 0, 99),
        ("bytes=100000-399999".to_owned(), 100_000, 399_999),
        (
            format!("bytes={}-{}", total - 10, total - 1),
            total - 10,
            total - 1,
        ),
        (format!("bytes={}-", total - 1000), total - 1000, total - 1),
    ];
    for (range, start, end) in cases {
        let what = format!("GET {url} with Range: {range}");
        let resp = http::fetch(&client, reqwest::Method::GET, url, &[("Range", &range)])
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"))
            .expect_status(206, &what);
        assert_eq!(
            resp.header("content-range"),
            Some(format!("bytes {start}-{end}/{total}").as_str()),
            "{what}: Content-Range"
        );
        assert_eq!(
            resp.content_length(),
            Some((end - start + 1) as u64),
            "{what}"
        );
        assert!(resp.body[..] == full[start..=end], "{what}: wrong bytes");
    }
}

/// A closure substituted through ncps with chunking on is stored as chunks only; after a
/// restart with the upstream gone it is served from them, spliced (with FileHash/FileSize and
/// Content-Length), plain, and by range.
#[tokio::test(flavor = "multi_thread")]
async fn cdc_eager_closure_substitutes_and_survives_restart() {
    let mut fx = Fixture::with(FixtureOptions::new(Compression::Xz).ncps_args(CDC)).await;
    let ncps_key = fx.ncps.pubkey().await;
    fx.env
        .client()
        .substitute_ok(&fx.ncps.url(), &ncps_key, &fx.closure)
        .await;
    for narinfo in closure_narinfos(&fx).await {
        assert_eq!(
            narinfo.get("Compression"),
            Some("zstd"),
            "with chunking on, NARs are served as zstd:\n{}",
            narinfo.text
        );
        assert!(
            narinfo.field("URL").ends_with(".nar.zst"),
            "with chunking on, NAR URLs end in .nar.zst:\n{}",
            narinfo.text
        );
    }
    // The NARs are stored just after they were streamed; FileHash shows they are.
    eventually("FileHash/FileSize in every narinfo", || {
        closure_is_chunked(&fx)
    })
    .await;
    let stored = chunk_bytes(&fx.config);
    assert!(
        stored >= nix::BLOB_BYTES as u64,
        "{stored} bytes of chunks cannot hold a NAR of {} random bytes",
        nix::BLOB_BYTES
    );
    assert_eq!(
        whole_files(&fx.config),
        Vec::<String>::new(),
        "eager chunking stores no whole files"
    );

    let status = fx.ncps.terminate().await;
    assert!(status.success(), "ncps exited with {status} on SIGTERM");
    fx.upstream.stop().await;
    fx.ncps = fx.env.ncps(&fx.config).await;
    fx.env
        .client()
        .substitute_ok(&fx.ncps.url(), &ncps_key, &fx.closure)
        .await;

    let narinfos = closure_is_chunked(&fx)
        .await
        .unwrap_or_else(|e| panic!("after the restart: {e}"));
    for narinfo in &narinfos {
        let url = fx.nar_url(narinfo);
        let resp = http::get(&url).await.expect_ok_with_length(&url);
        assert_eq!(
            resp.content_length().map(|n| n.to_string()).as_deref(),
            Some(narinfo.field("FileSize")),
            "GET {url}: Content-Length must be the narinfo's FileSize"
        );
        narinfo
            .verify_nar(&resp.body)
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    }

    let blob = fx.ncps_narinfo(&fx.closure.blob).await;
    let blob_url = fx.nar_url(&blob);
    assert_ranges(&blob_url, &get_ok(&blob_url).await).await;

    for narinfo in &narinfos {
        let plain_url = fx
            .ncps
            .url_for(&format!("nar/{}.nar", narinfo.nar_hash_nixbase32()));
        let plain = http::get(&plain_url)
            .await
            .expect_ok_with_length(&plain_url);
        assert_eq!(
            plain.content_length().map(|n| n.to_string()).as_deref(),
            Some(narinfo.field("NarSize")),
            "GET {plain_url}: Content-Length must be the narinfo's NarSize"
        );
        narinfo
            .verify_nar_content("none", &plain.body)
            .unwrap_or_else(|e| panic!("GET {plain_url}: {e}"));
    }
}

/// Two store paths sharing a 3 MB blob, each with a note of its own (of different lengths,
/// and sorting before the blob, so the shared bytes sit at different offsets in the NARs).
async fn build_paths_sharing_a_blob(env: &TestEnv) -> [String; 2] {
    let marker = random_hex(16);
    let expr = format!(
        r#"let
  marker = "{marker}";
  mk = name: script: builtins.derivation {{
    inherit name marker;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
    PATH = "/usr/bin:/bin";
  }};
  shared = mk "dedup-shared" "head -c 3000000 /dev/urandom > $out";
  variant = name: noteBytes: mk name
    "mkdir -p $out; head -c ${{toString noteBytes}} /dev/urandom > $out/a-note; cp ${{shared}} $out/blob";
in {{ a = variant "dedup-a" 100; b = variant "dedup-b" 5000; }}
"#
    );
    let file = env.path().join(format!("dedup-{marker}.nix"));
    std::fs::write(&file, expr).expect("write dedup.nix");
    [
        nix::build_attr(env.path(), &file, "a").await,
        nix::build_attr(env.path(), &file, "b").await,
    ]
}

/// Chunks shared by two NARs are stored once.
#[tokio::test(flavor = "multi_thread")]
async fn cdc_dedups_shared_content() {
    let env = TestEnv::new();
    let paths = build_paths_sharing_a_blob(&env).await;
    let upstream_key = env.key("upstream-1").await;
    for path in &paths {
        upstream_key.sign(env.path(), path).await;
    }
    let upstream = env
        .upstream_of(&[&paths[0], &paths[1]], Compression::Xz)
        .await;
    let config = env
        .ncps_config(&[&upstream], &[&upstream_key.public])
        .with_args(CDC);
    let ncps = env.ncps(&config).await;
    let ncps_key = ncps.pubkey().await;

    let client = env.client();
    for path in &paths {
        client
            .copy_from(&ncps.url(), &ncps_key, path)
            .await
            .expect_success();
        assert_eq!(
            client.closure(path).await,
            Some(vec![path.clone()]),
            "{path} did not arrive"
        );
    }
    for path in &paths {
        let url = ncps.url_for(&format!("{}.narinfo", store_hash(path)));
        eventually(&format!("{path} stored as chunks"), || async {
            let narinfo = NarInfo::parse(&http::get(&url).await.text());
            match narinfo.get("FileHash") {
                Some(_) => Ok(()),
                None => Err(format!("no FileHash yet:\n{}", narinfo.text)),
            }
        })
        .await;
    }

    let nar_bytes: u64 = paths
        .iter()
        .map(|p| {
            let size = upstream.narinfo(p).field("NarSize").to_owned();
            size.parse::<u64>().expect("numeric NarSize")
        })
        .sum();
    let stored = chunk_bytes(&config);
    assert!(
        stored >= 3_000_000,
        "{stored} bytes of chunks cannot hold the shared 3 MB of random bytes"
    );
    assert!(
        (stored as f64) < 0.7 * nar_bytes as f64,
        "{stored} bytes of chunks for two NARs of {nar_bytes} bytes in all that share 3 MB: \
         shared chunks are not stored once"
    );
}

fn chunked_in_background(log: &str, nar_hash: &str) -> bool {
    log.lines()
        .any(|l| l.contains(CHUNKED_IN_BACKGROUND) && l.contains(nar_hash))
}

/// SIGKILLs ncps as soon as the background worker has written some of the blob's chunks, and
/// fails the test unless the blob's chunking was really cut short (not reported done).
#[expect(clippy::print_stderr, reason = "test diagnostics")]
async fn kill_while_chunking_the_blob(fx: &mut Fixture, blob_nar_hash: &str) {
    // Each of the other paths' NARs is smaller than the minimum chunk: one chunk file each.
    let others = fx.closure.paths.len() - 1;
    let deadline = Instant::now() + BACKGROUND_LIMIT;
    loop {
        let blob_started = fx.config.chunk_files().len() > others;
        let blob_done = chunked_in_background(&fx.ncps.log(), blob_nar_hash);
        if blob_started || blob_done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    fx.ncps.kill();
    let chunk_files = fx.config.chunk_files().len();
    eprintln!("killed ncps with {chunk_files} chunk files on disk");
    assert!(
        chunk_files > others,
        "the kill came before the blob's chunking started"
    );
    assert!(
        !chunked_in_background(&fx.ncps.log(), blob_nar_hash),
        "the kill came after the blob's chunking finished: nothing was interrupted"
    );
}

/// Lazy chunking killed by SIGKILL halfway: after a restart the whole files still serve, the
/// recovery job finishes the chunking, the whole files are deleted after their delay, and the
/// closure is then served from chunks.
#[tokio::test(flavor = "multi_thread")]
async fn lazy_chunking_recovers_after_kill_9() {
    // A large, incompressible NAR at zstd level 19 keeps the background worker busy for seconds:
    // the kill lands while it chunks. A zstd upstream keeps writing it quick (xz needs ~20 s
    // for 48 MB). The restart chunks at level 1, which takes level 19's half a minute (more on
    // a loaded machine) off the recovery; the chunks the killed run held stay recorded at 19
    // and any it never wrote is written at 19 (unit test
    // `chunks_recorded_at_another_level_are_written_at_that_level`; random bytes make the same
    // frame at every level, so here the GETs below only check that nothing else broke).
    let options = FixtureOptions::new(Compression::Zstd)
        .blob_bytes(48_000_000)
        .ncps_args(LAZY_CDC)
        .ncps_args(&["--cache-cdc-lazy-zstd-level", "19"]);
    let mut fx = Fixture::with(options).await;
    let ncps_key = fx.ncps.pubkey().await;
    let blob_nar_hash = fx
        .upstream
        .narinfo(&fx.closure.blob)
        .field("NarHash")
        .to_owned();
    fx.env
        .client()
        .substitute_ok(&fx.ncps.url(), &ncps_key, &fx.closure)
        .await;

    kill_while_chunking_the_blob(&mut fx, &blob_nar_hash).await;
    fx.upstream.stop().await;
    let level = fx
        .config
        .extra_args
        .iter()
        .position(|a| a == "--cache-cdc-lazy-zstd-level")
        .expect("the lazy level is given")
        + 1;
    fx.config.extra_args[level] = "1".into();
    fx.ncps = fx.env.ncps(&fx.config).await;
    fx.env
        .client()
        .substitute_ok(&fx.ncps.url(), &ncps_key, &fx.closure)
        .await;

    // The blob's list may mix frames the killed run stored at level 19 with the restart's at
    // level 1. Their sizes can differ, and then ncps leaves FileHash out of the blob's narinfo
    // rather than vouch for a splice it did not hash (never wrong, only absent:
    // `chunks::tests::chunk_lists_share_chunks_and_release_them`). So the blob counts as
    // chunked once the restarted ncps logged chunking it and its whole file is gone; every
    // other NAR (one chunk, written by one run) still gets FileHash/FileSize, and the GETs
    // below check every body.
    let narinfos = eventually_within(
        "every NAR chunked and its whole file deleted",
        BACKGROUND_LIMIT,
        || async {
            if !chunked_in_background(&fx.ncps.log(), &blob_nar_hash) {
                return Err(format!(
                    "the restarted ncps has not logged {CHUNKED_IN_BACKGROUND:?} for the blob"
                ));
            }
            let narinfos = closure_narinfos(&fx).await;
            let unsettled = narinfos.iter().find(|n| {
                n.field("NarHash") != blob_nar_hash
                    && (n.get("FileHash").is_none() || n.get("FileSize").is_none())
            });
            if let Some(n) = unsettled {
                return Err(format!("no FileHash/FileSize yet:\n{}", n.text));
            }
            match whole_files(&fx.config) {
                files if files.is_empty() => Ok(narinfos),
                files => Err(format!("whole files remain: {files:?}")),
            }
        },
    )
    .await;
    for narinfo in &narinfos {
        let url = fx.nar_url(narinfo);
        let resp = http::get(&url).await.expect_ok_with_length(&url);
        narinfo
            .verify_nar(&resp.body)
            .unwrap_or_else(|e| panic!("GET {url} once chunked: {e}"));
    }
    fx.env
        .client()
        .substitute_ok(&fx.ncps.url(), &ncps_key, &fx.closure)
        .await;
    // Nothing the kill interrupted is left behind: fsck finds the store clean (chunks the
    // killed run wrote and the restart reused are referenced; none is a stray).
    let fsck = fx
        .env
        .ncps_admin("fsck", &fx.config, &["--min-age", "0s"])
        .await
        .expect_success();
    assert!(
        fsck.output.contains("fsck: 0 problems found"),
        "{}",
        fsck.output
    );
}

/// A binary cache holding copies of narinfos ncps handed out earlier, as a Nix client that kept
/// them would use them: their `URL`s, made absolute, point at `ncps` as it runs now.
async fn cache_of_old_narinfos(env: &TestEnv, ncps: &Ncps, old: &[NarInfo]) -> Upstream {
    let dir = unique_dir(env.path(), "old-narinfos");
    std::fs::write(
        dir.join("nix-cache-info"),
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n",
    )
    .expect("write nix-cache-info");
    for narinfo in old {
        let url = narinfo.field("URL");
        let text = narinfo.text.replace(
            &format!("URL: {url}\n"),
            &format!("URL: {}\n", ncps.url_for(url)),
        );
        let name = format!("{}.narinfo", store_hash(narinfo.field("StorePath")));
        std::fs::write(dir.join(name), text).expect("write narinfo");
    }
    Upstream::serve(&dir).await
}

/// Every NAR URL in `old` (narinfos handed out with chunking off) answers with xz bytes of
/// the right NAR, and a Nix client holding those narinfos substitutes the closure through
/// them; a client asking ncps afresh does too.
async fn old_urls_work(fx: &Fixture, ncps_key: &str, old: &[NarInfo]) {
    for narinfo in old {
        let url = fx.nar_url(narinfo);
        narinfo
            .verify_nar_content("xz", &get_ok(&url).await)
            .unwrap_or_else(|e| panic!("GET {url} (an old URL): {e}"));
    }
    let mut old_cache = cache_of_old_narinfos(&fx.env, &fx.ncps, old).await;
    fx.env
        .client()
        .substitute_ok(&old_cache.url(), ncps_key, &fx.closure)
        .await;
    old_cache.stop().await;
    fx.env
        .client()
        .substitute_ok(&fx.ncps.url(), ncps_key, &fx.closure)
        .await;
}

async fn migrate(fx: &Fixture, command: &str) -> NcpsRun {
    let run = fx.env.ncps_admin(command, &fx.config, &[]).await;
    run.expect_success()
}

/// URLs handed out with chunking off keep working after `migrate-nar-to-chunks` (served from
/// chunks with chunking on) and after `migrate-chunks-to-nar` (from rebuilt whole files with
/// chunking off again), the upstream gone all along.
#[tokio::test(flavor = "multi_thread")]
async fn old_urls_keep_working_after_migration_to_chunks() {
    let mut fx = Fixture::new(Compression::Xz).await;
    let ncps_key = fx.ncps.pubkey().await;
    let old = closure_narinfos(&fx).await;
    for narinfo in &old {
        assert!(
            narinfo.field("URL").ends_with(".nar.xz"),
            "with chunking off, an xz upstream's NARs keep their URL:\n{}",
            narinfo.text
        );
    }
    fx.env
        .client()
        .substitute_ok(&fx.ncps.url(), &ncps_key, &fx.closure)
        .await;
    let paths = fx.closure.paths.len();
    eventually("every NAR stored as a whole file", || async {
        match whole_files(&fx.config) {
            files if files.len() == paths => Ok(()),
            files => Err(format!("whole files: {files:?}")),
        }
    })
    .await;
    let status = fx.ncps.terminate().await;
    assert!(status.success(), "ncps exited with {status} on SIGTERM");
    fx.upstream.stop().await;

    let run = migrate(&fx, "migrate-nar-to-chunks").await;
    assert_eq!(
        whole_files(&fx.config),
        Vec::<String>::new(),
        "whole files left after migrate-nar-to-chunks:\n{run}"
    );
    assert!(
        chunk_bytes(&fx.config) >= nix::BLOB_BYTES as u64,
        "too few chunks after migrate-nar-to-chunks:\n{run}"
    );
    let cdc_config = fx.config.with_args(CDC);
    fx.ncps = fx.env.ncps(&cdc_config).await;
    old_urls_work(&fx, &ncps_key, &old).await;

    let status = fx.ncps.terminate().await;
    assert!(status.success(), "ncps exited with {status} on SIGTERM");
    let run = migrate(&fx, "migrate-chunks-to-nar").await;
    assert_eq!(
        fx.config.whole_nar_files().len(),
        paths,
        "migrate-chunks-to-nar must rebuild a whole file per NAR:\n{run}"
    );
    // The chunks left unused are reported with when their space comes back, by the migration
    // and by fsck.
    assert!(run.output.contains("no NAR uses any more"), "{run}");
    let fsck = fx.env.ncps_admin("fsck", &fx.config, &[]).await;
    assert!(
        fsck.output.contains("no NAR uses any more")
            && fsck.output.contains("--cache-cdc-gc-grace"),
        "{fsck}"
    );
    fx.ncps = fx.env.ncps(&fx.config).await;
    old_urls_work(&fx, &ncps_key, &old).await;
}

/// Chunk sizes are recorded: starting (or migrating) with other sizes is refused with a message
/// naming the recorded ones, and leaves the cache usable with them.
#[tokio::test(flavor = "multi_thread")]
async fn changing_chunk_sizes_is_refused() {
    let mut fx = Fixture::with(FixtureOptions::new(Compression::Xz).ncps_args(CDC)).await;
    let ncps_key = fx.ncps.pubkey().await;
    fx.env
        .client()
        .substitute_ok(&fx.ncps.url(), &ncps_key, &fx.closure)
        .await;
    // The client has its bytes once they are streamed; the chunk lists are committed just
    // after. Stopped before that, the restart below would have nothing stored to serve.
    eventually("FileHash/FileSize in every narinfo", || {
        closure_is_chunked(&fx)
    })
    .await;
    let status = fx.ncps.terminate().await;
    assert!(status.success(), "ncps exited with {status} on SIGTERM");

    let other_sizes = ["--cache-cdc-avg", "131072"];
    let serve = fx
        .env
        .ncps_expecting_exit(&fx.config.with_args(&other_sizes))
        .await;
    let migrate = fx
        .env
        .ncps_admin("migrate-nar-to-chunks", &fx.config, &other_sizes)
        .await;
    for run in [serve, migrate] {
        assert!(
            !run.status.success(),
            "other chunk sizes must be refused:\n{run}"
        );
        assert!(
            run.output.contains(DEFAULT_CHUNK_SIZES),
            "the refusal must name the recorded sizes {DEFAULT_CHUNK_SIZES}:\n{run}"
        );
    }

    fx.ncps = fx.env.ncps(&fx.config).await;
    fx.upstream.stop().await;
    fx.env
        .client()
        .substitute_ok(&fx.ncps.url(), &ncps_key, &fx.closure)
        .await;
}

/// A long command shows its progress: a live bar on a terminal (run here under a
/// pseudo-terminal by `script`), plain summary lines in a log.
#[tokio::test(flavor = "multi_thread")]
async fn migrations_show_progress_on_a_terminal_and_in_logs() {
    let fx = Fixture::new(Compression::Xz).await;
    let key = fx.ncps.pubkey().await;
    fx.env
        .client()
        .substitute_ok(&fx.ncps.url(), &key, &fx.closure)
        .await;
    let paths = fx.closure.paths.len();
    // In a log: the per-NAR lines and a plain line with the figures.
    let plain = fx
        .env
        .ncps_admin("migrate-nar-to-chunks", &fx.config, &[])
        .await;
    assert!(plain.status.success(), "{plain}");
    assert!(
        plain
            .output
            .contains(&format!("migrate-nar-to-chunks: {paths}/{paths} NARs")),
        "{plain}"
    );
    // On a terminal: the bar, and no plain summary line.
    let terminal = under_a_terminal(&fx, "migrate-chunks-to-nar", &[]);
    assert!(
        terminal.contains("migrate-chunks-to-nar [")
            && terminal.contains(&format!("{paths}/{paths}")),
        "no progress bar on the terminal:\n{terminal}"
    );
    assert!(
        !terminal.contains("migrate-chunks-to-nar: "),
        "plain lines on a terminal:\n{terminal}"
    );
    // fsck too: a bar over the NAR walk, its result line beside it.
    let terminal = under_a_terminal(&fx, "fsck", &["--verify-hashes"]);
    assert!(
        terminal.contains("fsck [") && terminal.contains("0 problems found"),
        "no fsck progress bar on the terminal:\n{terminal}"
    );
}

/// What `ncps <command> <storage flags> <args>` shows on a pseudo-terminal (`script`).
fn under_a_terminal(fx: &Fixture, command: &str, args: &[&str]) -> String {
    let mut argv = vec![env!("CARGO_BIN_EXE_ncps").to_owned(), command.to_owned()];
    argv.extend(
        fx.config
            .storage_args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned()),
    );
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    let line = argv
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ");
    let out = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .output()
        .expect("run under script(1)");
    let terminal = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{command}: {terminal}");
    terminal
}
