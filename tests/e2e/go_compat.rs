//! A Go ncps user's configuration works unchanged (issue 16): each test drives the binary the
//! way a Go set-up does (flags, variables, config files from the Go docs and nixpkgs' module).

use crate::harness::{Compression, Fixture, FixtureOptions, TestEnv, eventually, http};

/// nixpkgs' `services.ncps` writes `max-open-conns: 0` (and the Go ncps reads 0 as "the
/// engine's default"); ncps starts and serves with both pool sizes at 0.
#[tokio::test(flavor = "multi_thread")]
async fn zero_pool_sizes_mean_the_engine_defaults() {
    let fx = Fixture::with(FixtureOptions::new(Compression::Xz).ncps_args(&[
        "--cache-database-pool-max-open-conns",
        "0",
        "--cache-database-pool-max-idle-conns",
        "0",
    ]))
    .await;
    let narinfo = fx.ncps_narinfo(&fx.closure.blob).await;
    let body = http::get(&fx.nar_url(&narinfo))
        .await
        .expect_status(200, "a NAR with pool sizes of 0");
    narinfo.verify_nar(&body.body).expect("the NAR");
}

/// `--cache-upstream-url http://host/?priority=N`, as Go configurations write it: accepted,
/// stripped from the requests, and N orders the upstreams instead of what they announce. Here
/// the upstream announcing the better priority (10) is configured at 90, the other (announcing
/// 50) at 5: the latter's answer is taken and its NAR fetched.
#[tokio::test(flavor = "multi_thread")]
async fn a_priority_in_the_upstream_url_orders_the_upstreams() {
    let env = TestEnv::new();
    let closure = env.closure().await;
    let key = env.key("upstream-1").await;
    key.sign(env.path(), &closure.top).await;
    let (announcing_better, announcing_worse) = (
        env.upstream(&closure, Compression::Xz).await,
        env.upstream(&closure, Compression::Xz).await,
    );
    announcing_better.set_priority(10);
    announcing_worse.set_priority(50);
    let mut config = env.ncps_config(&[], &[&key.public]);
    config.upstreams = vec![
        format!("{}?priority=90", announcing_better.url()),
        format!("{}?priority=5", announcing_worse.url()),
    ];
    let ncps = env.ncps(&config).await;
    // Both are asked at once (the default lookup); the better priority's answer is taken.
    let narinfo = ncps.narinfo_eventually(&closure.top).await;
    http::get(&ncps.url_for(narinfo.field("URL")))
        .await
        .expect_status(200, "the NAR");
    let nar = announcing_worse.nar_path(&closure.top);
    assert_eq!(
        announcing_worse.gets(&nar),
        1,
        "the priority-5 upstream served the NAR"
    );
    assert_eq!(
        announcing_better.gets(&nar),
        0,
        "the priority-90 upstream served it"
    );
    assert!(
        announcing_worse
            .requests()
            .iter()
            .all(|r| !r.contains("priority")),
        "the query reached the upstream: {:?}",
        announcing_worse.requests()
    );
}

/// A Go set-up configured through the deprecated variables (`CACHE_DATA_PATH`,
/// `UPSTREAM_CACHES`, `UPSTREAM_PUBLIC_KEYS`) works as with the current ones, and the log says
/// which names are deprecated.
#[tokio::test(flavor = "multi_thread")]
async fn deprecated_variables_still_configure_the_cache() {
    let env = TestEnv::new();
    let closure = env.closure().await;
    let key = env.key("upstream-1").await;
    key.sign(env.path(), &closure.top).await;
    let upstream = env.upstream(&closure, Compression::Xz).await;
    let mut config = env.ncps_config(&[&upstream], &[&key.public]);
    config.via_environment = true;
    config.deprecated_env_names = true;
    let ncps = env.ncps(&config).await;
    let ncps_key = ncps.pubkey().await;
    env.client()
        .substitute_ok(&ncps.url(), &ncps_key, &closure)
        .await;
    assert!(
        !config.whole_nar_files().is_empty(),
        "nothing stored under CACHE_DATA_PATH"
    );
    let log = ncps.log();
    for name in ["CACHE_DATA_PATH", "UPSTREAM_CACHES", "UPSTREAM_PUBLIC_KEYS"] {
        assert!(
            log.contains(name) && log.contains("deprecated"),
            "no deprecation note for {name}: {log}"
        );
    }
}

/// A Go set-up that gives `--cache-redis-addrs` and leaves the lock backend at its default
/// gets Redis locks, as in the Go ncps (local locks would let replicas work over each other).
/// Shown with a Redis that cannot be reached: a NAR download needs the lock and answers 503
/// (with local locks it would be served), and the log says why Redis was chosen.
#[tokio::test(flavor = "multi_thread")]
async fn redis_addresses_alone_mean_redis_locks() {
    let dead_redis = crate::harness::ncps::free_port().to_string();
    let fx = Fixture::with(
        FixtureOptions::new(Compression::Xz).ncps_args(&["--cache-redis-addrs", &dead_redis]),
    )
    .await;
    let narinfo = fx.ncps_narinfo(&fx.closure.blob).await;
    http::get(&fx.nar_url(&narinfo))
        .await
        .expect_status(503, "a NAR download with the Redis lock service down");
    let log = fx.ncps.log();
    assert!(
        log.contains("using Redis, as the Go ncps does"),
        "no note on the chosen backend: {log}"
    );
}

/// The Go ncps's example configuration says `secret-key-path: ""`: that means "generate one",
/// not a file named "".
#[tokio::test(flavor = "multi_thread")]
async fn an_empty_secret_key_path_means_generate_one() {
    let env = TestEnv::new();
    let upstream = env.empty_upstream().await;
    let key = env.key("upstream-1").await;
    let file = env.path().join("go-config.yaml");
    std::fs::write(&file, "cache:\n  secret-key-path: \"\"\n").expect("write the config");
    let config = env
        .ncps_config(&[&upstream], &[&key.public])
        .with_args(&["--config", file.to_str().expect("UTF-8 path")]);
    let ncps = env.ncps(&config).await;
    let public = ncps.pubkey().await;
    assert!(
        public.starts_with(&format!("{}:", config.hostname)),
        "{public}"
    );
    assert!(
        config.data_dir.join("secret.key").is_file(),
        "no key generated"
    );
}

/// A netrc file named but missing (Go configurations often name `/etc/ncps/netrc` out of
/// habit) is a warning, as in the Go ncps: ncps starts and serves without its credentials.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_netrc_file_is_a_warning_not_a_failure() {
    let missing = "/nonexistent/ncps/netrc";
    let fx =
        Fixture::with(FixtureOptions::new(Compression::Xz).ncps_args(&["--netrc-file", missing]))
            .await;
    let narinfo = fx.ncps_narinfo(&fx.closure.blob).await;
    http::get(&fx.nar_url(&narinfo))
        .await
        .expect_status(200, "a NAR with the netrc file missing");
    let log = fx.ncps.log();
    assert!(
        log.contains("the netrc file does not exist") && log.contains(missing),
        "no warning about the missing netrc file: {log}"
    );
}

/// Every setting of the Go ncps that means nothing here is accepted under its flag, its
/// variable and its config key (never an unknown-argument error) and named in one warning.
#[tokio::test(flavor = "multi_thread")]
async fn go_only_settings_are_accepted_and_named_in_a_warning() {
    let env = TestEnv::new();
    let upstream = env.empty_upstream().await;
    let key = env.key("upstream-1").await;
    let file = env.path().join("go-config.yaml");
    std::fs::write(
        &file,
        "cache:\n  redis:\n    pool-size: 20\n  lock:\n    lru-lock-ttl: 5m\n    allow-degraded-mode: true\n    retry:\n      max-attempts: 4\n      initial-delay: 200ms\n      max-delay: 5s\n      jitter: false\n  cdc:\n    lazy-cleanup-schedule: \"@hourly\"\n    chunk-wait-timeout: 30s\n  download:\n    poll-timeout: 1m\n  inflight-staging:\n    retention: 1h\n    part-size: 1024\nanalytics:\n  reporting:\n    enabled: false\npprof:\n  addr: \":6060\"\nxz-binary-path: /usr/bin/xz\n",
    )
    .expect("write the config");
    let flags = [
        "--analytics-reporting-samples",
        "--log-console-writer-enabled=false",
        "--log-console-writer-prefix=x",
        "--use-xz-binary",
        "--cache-inflight-staging-enabled",
    ];
    let mut args = vec!["--config", file.to_str().expect("UTF-8 path")];
    args.extend(flags);
    let mut config = env
        .ncps_config(&[&upstream], &[&key.public])
        .with_args(&args);
    config
        .extra_env
        .push(("CACHE_LOCK_RETRY_MAX_ATTEMPTS".into(), "5".into()));
    let ncps = env.ncps(&config).await;
    http::get(&ncps.url_for("nix-cache-info"))
        .await
        .expect_status(200, "serving with the Go-only settings");
    let log = ncps.log();
    for setting in [
        "cache-redis-pool-size",
        "cache-lock-lru-ttl",
        "cache-lock-allow-degraded-mode",
        "cache-lock-retry-max-attempts",
        "cache-lock-retry-initial-delay",
        "cache-lock-retry-max-delay",
        "cache-lock-retry-jitter",
        "cache-cdc-lazy-cleanup-schedule",
        "cache-cdc-chunk-wait-timeout",
        "cache-download-poll-timeout",
        "cache-inflight-staging-retention",
        "cache-inflight-staging-part-size",
        "analytics-reporting-enabled",
        "pprof-addr",
        "xz-binary-path",
        "analytics-reporting-samples",
        "log-console-writer-enabled",
        "log-console-writer-prefix",
        "use-xz-binary",
        "cache-inflight-staging-enabled",
    ] {
        let warned = format!("\"setting\":\"{setting}\"");
        assert_eq!(
            log.matches(&warned).count(),
            1,
            "{setting}: want one warning in {log}"
        );
    }
    assert!(!log.contains("unknown key"), "{log}");
}

/// Upstream keys as the Go ncps applies them: a key named after an upstream's host applies to
/// that upstream only. An upstream no key applies to stops ncps at start with an error naming
/// it and the opt-out; with `--cache-upstream-allow-unverified` (the Go ncps's default) its
/// unsigned narinfos are served, re-signed, and the real Nix client substitutes them.
#[tokio::test(flavor = "multi_thread")]
async fn upstream_keys_apply_by_host_and_unverified_upstreams_are_an_explicit_choice() {
    let env = TestEnv::new();
    let closure = env.closure().await;
    // Unsigned: the upstream's narinfos carry no signature at all.
    let upstream = env.upstream(&closure, Compression::Xz).await;
    let named = env.empty_upstream().await;
    // Two host names for two upstreams on 127.0.0.1: the key names the second one's host.
    let localhost_url = upstream.url().replace("127.0.0.1", "localhost");
    let key_for_named = env.key("127.0.0.1-1").await;
    let mut config = env.ncps_config(&[&named], &[&key_for_named.public]);
    config.upstreams.push(localhost_url.clone());
    let refused = env.ncps_expecting_exit(&config).await;
    assert!(
        !refused.status.success()
            && refused.output.contains(localhost_url.trim_end_matches('/'))
            && refused.output.contains("--cache-upstream-allow-unverified"),
        "{refused}"
    );
    let none = env.ncps_config(&[&upstream], &[]);
    let refused = env.ncps_expecting_exit(&none).await;
    assert!(
        refused.output.contains("--cache-upstream-allow-unverified"),
        "{refused}"
    );

    let allowed = none.with_args(&["--cache-upstream-allow-unverified"]);
    let ncps = env.ncps(&allowed).await;
    let ncps_key = ncps.pubkey().await;
    env.client()
        .substitute_ok(&ncps.url(), &ncps_key, &closure)
        .await;
}

/// `ncps fsck` with the Go ncps's flags: `--dry-run` reports and changes nothing even beside
/// `--repair`, `--verify-content` checks content as `--verify-hashes` does, and the flags that
/// mean nothing here (`--verified-since`, `--dechunk-residue-grace`) are accepted with a
/// warning.
#[tokio::test(flavor = "multi_thread")]
async fn fsck_takes_the_go_flags() {
    let fx = Fixture::new(Compression::Xz).await;
    let narinfo = fx.ncps_narinfo(&fx.closure.blob).await;
    http::get(&fx.nar_url(&narinfo))
        .await
        .expect_status(200, "the NAR");
    let stray = fx
        .config
        .data_dir
        .join("store/nar")
        .join(format!("{}.nar.xz", "1".repeat(52)));
    std::fs::create_dir_all(stray.parent().expect("parent")).expect("mkdir");
    std::fs::write(&stray, b"stray").expect("plant a stray NAR file");
    let go_flags = [
        "--repair",
        "--dry-run",
        "--verify-content",
        "--verified-since",
        "1h",
        "--dechunk-residue-grace",
        "24h",
        "--min-age",
        "0s",
    ];
    let run = fx.env.ncps_admin("fsck", &fx.config, &go_flags).await;
    assert!(
        !run.status.success(),
        "problems remain after a dry run:\n{run}"
    );
    assert!(run.output.contains("stray:"), "{run}");
    assert!(stray.exists(), "--dry-run deleted the stray file");
    for ignored in ["verified-since", "dechunk-residue-grace"] {
        assert!(
            run.output.contains(&format!("\"setting\":\"{ignored}\"")),
            "no warning for {ignored}:\n{run}"
        );
    }
    let repair = fx
        .env
        .ncps_admin("fsck", &fx.config, &["--repair", "--min-age", "0s"])
        .await;
    assert!(repair.status.success(), "{repair}");
    assert!(!stray.exists(), "--repair kept the stray file");
}

/// `/nix-cache-info` announces the Go ncps's priority (10): Nix clients that list the cache
/// beside cache.nixos.org (40) keep asking it first.
#[tokio::test(flavor = "multi_thread")]
async fn nix_cache_info_announces_the_go_priority() {
    let fx = Fixture::new(Compression::Xz).await;
    let text = http::get(&fx.ncps.url_for("nix-cache-info"))
        .await
        .expect_status(200, "nix-cache-info")
        .text();
    assert!(text.lines().any(|l| l == "Priority: 10"), "{text}");
}

/// The Go ncps routes NAR URLs spelled with the 64-digit hex form of the hash: a client (or a
/// narinfo written by the Go ncps) asking for one gets the same NAR as the nixbase32 URL.
#[tokio::test(flavor = "multi_thread")]
async fn a_hex_nar_url_names_the_same_nar() {
    let fx = Fixture::new(Compression::Xz).await;
    let narinfo = fx.ncps_narinfo(&fx.closure.blob).await;
    let url = narinfo.field("URL");
    let (nix32, extension) = url
        .strip_prefix("nar/")
        .and_then(|f| f.split_at_checked(52))
        .expect("a nixbase32 NAR URL");
    let hash = ncps_nix::Sha256Hash::parse_nix32(nix32).expect("nixbase32");
    let hex: String = hash.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    let hex_url = fx.ncps.url_for(&format!("nar/{hex}{extension}"));
    let body = http::get(&hex_url)
        .await
        .expect_status(200, "the NAR under its hex URL");
    narinfo.verify_nar(&body.body).expect("the NAR");
    let head = http::head(&hex_url)
        .await
        .expect_status(200, "HEAD of the hex URL");
    assert_eq!(head.content_length(), Some(body.body.len() as u64));
    http::get(
        &fx.ncps
            .url_for(&format!("nar/{}{extension}", hex.to_uppercase())),
    )
    .await
    .expect_status(400, "upper-case hex is no NAR URL");
}

/// Towards upstreams ncps asks for transport compression (`Accept-Encoding: zstd`, as the Go
/// ncps does) and decodes what comes back: an uncompressed NAR cache behind a compressing web
/// server costs a third of the bandwidth, and the NAR stored is still the one the narinfo names.
#[tokio::test(flavor = "multi_thread")]
async fn upstream_transfers_are_zstd_compressed_when_offered() {
    let fx = Fixture::new(Compression::None).await;
    fx.upstream.offer_transport_zstd();
    let narinfo = fx.ncps_narinfo(&fx.closure.blob).await;
    let body = http::get(&fx.nar_url(&narinfo))
        .await
        .expect_status(200, "the NAR");
    narinfo.verify_nar(&body.body).expect("the NAR");
    assert!(
        fx.upstream.zstd_responses() >= 2,
        "ncps did not ask for zstd transport of the narinfo and the NAR: {} compressed answers",
        fx.upstream.zstd_responses()
    );
}

/// `Accept-Encoding: zstd` on a plain `.nar` URL, as the Go ncps negotiates it: a NAR kept as
/// chunks goes out as its stored zstd frames with `Content-Encoding: zstd` (cheaper than
/// decompressing them); a client that does not accept zstd (or refuses it with q=0) gets the
/// plain NAR, and a NAR only stored in another compression is sent plain rather than
/// compressed on the fly. Every answer says it varies with `Accept-Encoding`.
#[tokio::test(flavor = "multi_thread")]
async fn plain_nar_urls_negotiate_zstd_transport() {
    let fx =
        Fixture::with(FixtureOptions::new(Compression::Xz).ncps_args(&["--cache-cdc-enabled"]))
            .await;
    let narinfo = fx.ncps_narinfo(&fx.closure.blob).await;
    http::get(&fx.nar_url(&narinfo))
        .await
        .expect_status(200, "the NAR, chunked as it arrives");
    let plain_url = fx
        .ncps
        .url_for(&format!("nar/{}.nar", narinfo.nar_hash_nixbase32()));
    let client = http::client();
    let get = |accept: &'static str| {
        let (client, url) = (client.clone(), plain_url.clone());
        async move {
            http::fetch(
                &client,
                reqwest::Method::GET,
                &url,
                &[("Accept-Encoding", accept)],
            )
            .await
            .expect("GET")
            .expect_status(200, accept)
        }
    };
    let zstd = eventually("the chunks are committed", || async {
        let resp = get("gzip, br, zstd").await;
        match resp.header("content-encoding") {
            Some("zstd") => Ok(resp),
            other => Err(format!("Content-Encoding {other:?}")),
        }
    })
    .await;
    assert_eq!(zstd.header("vary"), Some("Accept-Encoding"));
    assert_eq!(zstd.content_length(), Some(zstd.body.len() as u64));
    narinfo
        .verify_nar_content("zstd", &zstd.body)
        .expect("the zstd transport decodes to the NAR");
    for accept in ["gzip, br", "zstd;q=0, gzip"] {
        let plain = get(accept).await;
        assert_eq!(plain.header("content-encoding"), None, "{accept}");
        assert_eq!(plain.header("vary"), Some("Accept-Encoding"), "{accept}");
        narinfo
            .verify_nar_content("none", &plain.body)
            .expect("the plain NAR");
    }

    let whole = Fixture::new(Compression::Xz).await;
    let narinfo = whole.ncps_narinfo(&whole.closure.blob).await;
    http::get(&whole.nar_url(&narinfo))
        .await
        .expect_status(200, "the xz NAR");
    let url = whole
        .ncps
        .url_for(&format!("nar/{}.nar", narinfo.nar_hash_nixbase32()));
    let resp = http::fetch(
        &client,
        reqwest::Method::GET,
        &url,
        &[("Accept-Encoding", "zstd")],
    )
    .await
    .expect("GET")
    .expect_status(200, "the plain NAR of an xz file");
    assert_eq!(resp.header("content-encoding"), None);
    narinfo
        .verify_nar_content("none", &resp.body)
        .expect("the plain NAR");
}

/// The Go flags of the migrations between forms: `--dry-run` reports and changes nothing;
/// `--concurrency`, `--force-reclaim` and the lock settings are accepted and named in a
/// warning.
#[tokio::test(flavor = "multi_thread")]
async fn form_migrations_take_the_go_flags() {
    let fx = Fixture::new(Compression::Xz).await;
    let narinfo = fx.ncps_narinfo(&fx.closure.blob).await;
    http::get(&fx.nar_url(&narinfo))
        .await
        .expect_status(200, "the NAR");
    let to_chunks = fx
        .env
        .ncps_admin(
            "migrate-nar-to-chunks",
            &fx.config,
            &[
                "--dry-run",
                "--concurrency",
                "4",
                "--cache-lock-backend",
                "redis",
                "--cache-redis-addrs",
                "127.0.0.1:1",
            ],
        )
        .await;
    assert!(to_chunks.status.success(), "{to_chunks}");
    assert!(
        to_chunks.output.contains("1 NARs (") && to_chunks.output.contains("would be chunked"),
        "{to_chunks}"
    );
    for ignored in ["concurrency", "cache-lock-backend", "cache-redis-addrs"] {
        assert!(
            to_chunks
                .output
                .contains(&format!("\"setting\":\"{ignored}\"")),
            "no warning for {ignored}:\n{to_chunks}"
        );
    }
    // Nothing was chunked: the dry run left the whole file, so the real run still has it.
    let real = fx
        .env
        .ncps_admin("migrate-nar-to-chunks", &fx.config, &[])
        .await;
    assert!(real.status.success(), "{real}");
    assert!(real.output.contains("done: 1 NARs chunked"), "{real}");
    let back = fx
        .env
        .ncps_admin(
            "migrate-chunks-to-nar",
            &fx.config,
            &["--dry-run", "--force-reclaim"],
        )
        .await;
    assert!(back.status.success(), "{back}");
    assert!(
        back.output.contains("1 NARs (") && back.output.contains("would be rebuilt"),
        "{back}"
    );
}

/// Our package under nixpkgs' own `services.ncps` module, unchanged: its pre-start runs
/// `dbmate-ncps up` with `DATABASE_URL` (nix/dbmate-ncps.sh, installed by nix/package.nix), then
/// `ncps --config <generated JSON> serve`. The JSON is the one the module writes for a cache
/// with its defaults (every default it does not filter out is written, Go-only ones included).
/// ncps starts and serves from the configured upstream; the Go-only values the module writes
/// are the Go ncps's defaults, so none is worth a warning (a differing one is, see above).
#[tokio::test(flavor = "multi_thread")]
async fn nixpkgs_module_files_start_ncps() {
    let env = TestEnv::new();
    let closure = env.closure().await;
    let key = env.key("upstream-1").await;
    key.sign(env.path(), &closure.top).await;
    let upstream = env.upstream(&closure, Compression::Xz).await;
    let mut config = env.ncps_config(&[&upstream], &[&key.public]);
    let data = config.data_dir.display().to_string();
    let database_url = format!("sqlite:{data}/db/db.sqlite");
    let settings = serde_json::json!({
        "analytics": {"reporting": {"enabled": true, "samples": false}},
        "cache": {
            "allow-delete-verb": false,
            "allow-put-verb": false,
            "cdc": {"avg": 65536, "enabled": false, "max": 262144, "min": 16384},
            "database": {"pool": {"max-idle-conns": 0, "max-open-conns": 0}},
            "database-url": database_url,
            "hostname": "cache.example.lan",
            "lock": {
                "allow-degraded-mode": false,
                "backend": "local",
                "download-lock-ttl": "5m0s",
                "lru-lock-ttl": "30m0s",
                "redis": {"key-prefix": "ncps:lock:"},
                "retry": {"initial-delay": "100ms", "jitter": true, "max-attempts": 3, "max-delay": "2s"}
            },
            "lru": {"timezone": "Local"},
            "sign-narinfo": true,
            "storage": {"local": data},
            "temp-path": config.temp_dir,
            "upstream": {"public-keys": [key.public], "urls": [upstream.url()]}
        },
        "log": {"level": "info"},
        "server": {"addr": ":8501"}
    });
    let file = config.temp_dir.join("ncps-config.json");
    std::fs::create_dir_all(&config.temp_dir).expect("mkdir");
    std::fs::write(&file, settings.to_string()).expect("write the config");

    let pre_start = std::process::Command::new(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../nix/dbmate-ncps.sh"),
    )
    .arg("up")
    .env("DATABASE_URL", &database_url)
    .env("NCPS", env!("CARGO_BIN_EXE_ncps"))
    .output()
    .expect("run dbmate-ncps");
    let said = String::from_utf8_lossy(&pre_start.stdout).into_owned()
        + &String::from_utf8_lossy(&pre_start.stderr);
    assert!(pre_start.status.success(), "dbmate-ncps up: {said}");
    assert!(said.contains("database schema at version"), "{said}");

    config.config_file = Some(file);
    let ncps = env.ncps(&config).await;
    let narinfo = ncps.narinfo_eventually(&closure.top).await;
    assert!(narinfo.field("StorePath").ends_with("-e2e-top"));
    let pubkey = ncps.pubkey().await;
    assert!(pubkey.starts_with("cache.example.lan:"), "{pubkey}");
    let log = ncps.log();
    assert!(
        !log.contains("unknown key"),
        "a key the module writes is unknown:\n{log}"
    );
    // Every Go-only value the module writes is the Go ncps's default: nothing to warn about.
    assert!(
        !log.contains("a setting of the Go ncps"),
        "warnings about defaults:\n{log}"
    );
}

/// The Go ncps's database URLs over a Unix socket: `postgres+unix://user@/<socket dir>/<db>`
/// and `mysql+unix://user@/<socket>/<db>` reach the same servers `scripts/test` starts.
mod unix_socket_urls {
    use crate::harness::server_db::ServerDatabase;
    use crate::harness::{NcpsRun, TestEnv};

    /// `ncps migrate up` on `url`, then the number of migrations recorded in `db`.
    async fn migrate(url: &str, db: &ServerDatabase) -> u64 {
        let env = TestEnv::new();
        let run = NcpsRun::run(
            env.path(),
            &[
                "migrate".into(),
                "up".into(),
                "--cache-database-url".into(),
                url.into(),
            ],
        )
        .await;
        assert!(run.status.success(), "{run}");
        db.count("SELECT COUNT(*) FROM _sqlx_migrations")
    }

    /// The database name at the end of a server URL.
    fn name(db: &ServerDatabase) -> String {
        db.url
            .rsplit('/')
            .next()
            .expect("a database name")
            .to_owned()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn postgres() {
        let db = ServerDatabase::create(ncps_test_services::postgres_url());
        let socket = ncps_test_services::postgres_socket();
        let (dir, file) = socket.rsplit_once('/').expect("a socket path");
        let port = file
            .rsplit('.')
            .next()
            .expect("the port in the socket name");
        let url = format!("postgres+unix://postgres@{dir}/{}?port={port}", name(&db));
        assert!(migrate(&url, &db).await >= 5);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn mysql() {
        let db = ServerDatabase::create(ncps_test_services::mysql_url());
        let socket = ncps_test_services::mysql_socket();
        let url = format!("mysql+unix://root@{socket}/{}", name(&db));
        assert!(migrate(&url, &db).await >= 5);
    }
}

/// An upstream serving lzip NARs (`Compression: lzip`, `nar/<hash>.nar.lzip`, Nix's names):
/// ncps verifies the NAR by decoding it, stores it, hands out its `.nar.lzip` URL, and serves the
/// plain NAR (decoded) to a client asking for `.nar`.
#[tokio::test(flavor = "multi_thread")]
async fn lzip_nars_from_an_upstream_are_verified_and_served() {
    use std::io::Read;

    let fx = Fixture::new(Compression::Xz).await;
    let store_path = &fx.closure.blob;
    let upstream_narinfo = fx.upstream.narinfo(store_path);
    let xz = std::fs::read(fx.upstream.nar_file(store_path)).expect("the xz NAR");
    let mut nar = Vec::new();
    liblzma::read::XzDecoder::new(&xz[..])
        .read_to_end(&mut nar)
        .expect("xz");
    let lz = lzip(&nar);
    let hash = ncps_nix::Sha256Hash::digest(&lz);
    let file = format!("{}.nar.lzip", hash.to_nix32());
    let dir = fx.upstream.narinfo_file(store_path);
    let dir = dir.parent().expect("the upstream directory");
    std::fs::write(dir.join("nar").join(&file), &lz).expect("write the lzip NAR");
    // URL, Compression and FileHash are outside the signed fingerprint: the signature holds.
    let text = upstream_narinfo
        .text
        .lines()
        .map(|line| match line.split_once(": ") {
            Some(("URL", _)) => format!("URL: nar/{file}"),
            Some(("Compression", _)) => "Compression: lzip".into(),
            Some(("FileHash", _)) => format!("FileHash: {hash}"),
            Some(("FileSize", _)) => format!("FileSize: {}", lz.len()),
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    std::fs::write(fx.upstream.narinfo_file(store_path), text).expect("rewrite the narinfo");

    let narinfo = fx.ncps_narinfo(store_path).await;
    assert_eq!(narinfo.field("Compression"), "lzip", "{}", narinfo.text);
    assert!(
        narinfo.field("URL").ends_with(".nar.lzip"),
        "{}",
        narinfo.text
    );
    let body = http::get(&fx.nar_url(&narinfo))
        .await
        .expect_status(200, "the lzip NAR");
    assert_eq!(body.body.as_ref(), &lz[..], "not the upstream's lzip file");
    let plain = http::get(
        &fx.ncps
            .url_for(&format!("nar/{}.nar", narinfo.nar_hash_nixbase32())),
    )
    .await
    .expect_status(200, "the plain NAR, decoded from lzip");
    narinfo
        .verify_nar_content("none", &plain.body)
        .expect("the decoded NAR");
}

/// One lzip member holding `data`: the header (`LZIP`, version 1, a 1 MiB dictionary), a raw
/// LZMA stream with its end marker (lc=3, lp=0, pb=2, as lzip requires), and the trailer
/// (CRC-32 of the data, its size, the member's size).
fn lzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;

    let mut options = liblzma::stream::LzmaOptions::new_preset(6).expect("preset");
    options
        .dict_size(1 << 20)
        .literal_context_bits(3)
        .literal_position_bits(0)
        .position_bits(2);
    let mut filters = liblzma::stream::Filters::new();
    filters.lzma1(&options);
    let stream = liblzma::stream::Stream::new_raw_encoder(&filters).expect("LZMA1 encoder");
    let mut encoder = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
    encoder.write_all(data).expect("compress");
    let raw = encoder.finish().expect("finish");
    let mut member = b"LZIP\x01\x14".to_vec();
    member.extend_from_slice(&raw);
    member.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    member.extend_from_slice(&(data.len() as u64).to_le_bytes());
    let size = member.len() as u64 + 8;
    member.extend_from_slice(&size.to_le_bytes());
    member
}
