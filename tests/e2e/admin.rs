//! The admin commands against real caches: `fsck` finds faults injected into a cache a Nix
//! client filled and `--repair` leaves one it can substitute from again; `migrate-narinfo`
//! imports a `nix copy --to file://` directory that ncps then serves with no upstream
//! reachable; `generate-key` writes a key `serve` signs with and Nix accepts; pins round-trip.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::harness::narinfo::{random_store_hash, sha256_nixbase32, store_hash};
use crate::harness::ncps::free_port;
use crate::harness::{
    Closure, Compression, Fixture, FixtureOptions, NcpsConfig, NcpsRun, SigningKey, TestEnv,
    eventually, eventually_within, http, nix, random_bytes, random_hex, unique_dir,
};

/// `ncps fsck` on the fixture's cache with `args`, while its server keeps running.
async fn fsck(fx: &Fixture, args: &[&str]) -> NcpsRun {
    fx.env.ncps_admin("fsck", &fx.config, args).await
}

async fn stored_nar(fx: &Fixture, store_path: &str) -> PathBuf {
    let file = fx.stored_nar_file(store_path).await;
    assert!(file.is_file(), "{} is not stored", file.display());
    file
}

/// Records a narinfo whose NAR was never stored and that names no upstream (what an upload
/// whose NAR got lost leaves behind), through the database layer so the test does not depend
/// on the schema's columns. Returns its store path.
async fn insert_orphan_narinfo(config: &NcpsConfig) -> String {
    use ncps_nix::{Compression as Nc, NarInfo, NarKey, Sha256Hash, StorePath};
    let url = format!("sqlite:{}", config.data_dir.join("db/db.sqlite").display());
    let db = ncps_db::Database::open(&url)
        .await
        .expect("open ncps's database");
    let nar_hash = Sha256Hash::digest(&random_bytes(32));
    let url_key = NarKey::new(nar_hash, Nc::Xz);
    let store_path =
        StorePath::parse_base_name(&format!("{}-e2e-orphan", random_store_hash())).unwrap();
    let absolute = store_path.to_absolute();
    db.insert_narinfo(
        &ncps_db::CachedNarInfo {
            narinfo: NarInfo {
                store_path,
                url: url_key.url(),
                compression: Nc::Xz,
                file_hash: None,
                file_size: None,
                nar_hash,
                nar_size: 1234,
                references: vec![],
                deriver: None,
                sigs: vec![],
                ca: None,
            },
            url_key,
            origin: None,
        },
        None,
    )
    .await
    .expect("insert narinfo");
    absolute
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

fn assert_output(run: &NcpsRun, success: bool, needles: &[&str]) {
    assert_eq!(run.status.success(), success, "unexpected exit:\n{run}");
    for needle in needles {
        assert!(
            run.output.contains(needle),
            "{needle:?} missing from:\n{run}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fsck_finds_injected_faults_and_repair_leaves_a_servable_cache() {
    let fx = Fixture::new(Compression::Xz).await;
    let ncps_key = fx.ncps.pubkey().await;
    fx.env
        .client()
        .substitute_ok(&fx.ncps.url(), &ncps_key, &fx.closure)
        .await;
    eventually("every NAR stored", || async {
        match fx.config.whole_nar_files().len() {
            4 => Ok(()),
            n => Err(format!("{n} NAR files stored")),
        }
    })
    .await;
    assert_output(
        &fsck(&fx, &["--verify-hashes"]).await,
        true,
        &["0 problems found"],
    );

    // A deleted NAR file, a truncated one, one altered in place (same size), a stray file
    // (old enough to be judged) and a narinfo that cannot be served.
    let deleted = stored_nar(&fx, &fx.closure.leaf).await;
    std::fs::remove_file(&deleted).unwrap();
    let truncated = stored_nar(&fx, &fx.closure.blob).await;
    let bytes = std::fs::read(&truncated).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let altered = stored_nar(&fx, &fx.closure.middle).await;
    let mut bytes = std::fs::read(&altered).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&altered, &bytes).unwrap();
    let stray = fx
        .config
        .data_dir
        .join("store/nar")
        .join(format!("{}.nar.xz", sha256_nixbase32(&random_bytes(16))));
    std::fs::write(&stray, random_bytes(1000)).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&stray)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(2 * 3600))
        .unwrap();
    let orphan = insert_orphan_narinfo(&fx.config).await;

    // Without --verify-hashes the altered file goes unnoticed; the young orphan is reported
    // but not counted.
    let found = fsck(&fx, &[]).await;
    assert_output(
        &found,
        false,
        &[
            "missing: NAR",
            &file_name(&deleted),
            "truncated",
            &file_name(&truncated),
            &format!("stray: nar/{}", file_name(&stray)),
            "recent",
            &format!("unservable narinfo: {orphan}"),
            "3 problems found, 3 remaining",
        ],
    );
    assert!(!found.output.contains(&file_name(&altered)), "{found}");
    let deep = fsck(&fx, &["--verify-hashes"]).await;
    assert_output(&deep, false, &[&file_name(&altered), "4 problems found"]);
    assert!(
        stray.exists() && truncated.exists(),
        "fsck without --repair changed storage"
    );

    let repair = fsck(&fx, &["--repair", "--verify-hashes", "--min-age", "0s"]).await;
    assert_output(
        &repair,
        true,
        &[
            &format!("unservable narinfo: {orphan}"),
            "dangling NAR URL",
            "repaired: forgot the whole file; it is fetched again from its upstream on demand",
            "0 remaining",
        ],
    );
    assert!(!stray.exists(), "the stray file survived the repair");
    assert!(
        !truncated.exists() && !altered.exists(),
        "bad files survived"
    );
    let again = fsck(&fx, &["--verify-hashes"]).await;
    assert_output(&again, true, &["0 problems found, 0 remaining"]);
    assert!(!again.output.contains("recent"), "{again}");

    // Clients get the whole closure again, the lost NARs fetched from the upstream once more.
    fx.env
        .client()
        .substitute_ok(&fx.ncps.url(), &ncps_key, &fx.closure)
        .await;
    for path in [&fx.closure.leaf, &fx.closure.blob, &fx.closure.middle] {
        assert!(
            fx.upstream.gets(&fx.upstream.nar_path(path)) >= 2,
            "the NAR of {path} was not fetched again"
        );
    }
    assert_eq!(
        fx.upstream.gets(&fx.upstream.nar_path(&fx.closure.top)),
        1,
        "an intact NAR was fetched again"
    );
    let orphan_url = fx.narinfo_url(&orphan);
    http::get(&orphan_url)
        .await
        .expect_status(404, "the dropped narinfo");
    eventually("every NAR stored again", || async {
        match fx.config.whole_nar_files().len() {
            4 => Ok(()),
            n => Err(format!("{n} NAR files stored")),
        }
    })
    .await;
    assert_output(
        &fsck(&fx, &["--verify-hashes"]).await,
        true,
        &["0 problems found"],
    );
}

/// Every path of the fixture's closure is stored (FileHash appears once a NAR is committed).
async fn closure_stored(fx: &Fixture) -> Result<(), String> {
    for path in &fx.closure.paths {
        if fx.ncps_narinfo(path).await.get("FileHash").is_none() {
            return Err(format!("{path} is not stored yet"));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn fsck_finds_lost_and_stray_chunks_and_repair_refetches() {
    let fx =
        Fixture::with(FixtureOptions::new(Compression::Xz).ncps_args(&["--cache-cdc-enabled"]))
            .await;
    let ncps_key = fx.ncps.pubkey().await;
    fx.env
        .client()
        .substitute_ok(&fx.ncps.url(), &ncps_key, &fx.closure)
        .await;
    eventually("every NAR chunked", || closure_stored(&fx)).await;
    assert_output(&fsck(&fx, &[]).await, true, &["0 problems found"]);

    // One chunk of the blob's NAR (the only NAR big enough to have chunks of this size) is
    // lost, and a chunk no NAR knows sits in storage.
    let (lost, _) = fx
        .config
        .chunk_files()
        .into_iter()
        .find(|(_, size)| *size > 10_000)
        .expect("a chunk of the blob");
    std::fs::remove_file(&lost).unwrap();
    let hex = random_hex(32);
    let stray = fx
        .config
        .data_dir
        .join("store/chunks")
        .join(&hex[..2])
        .join(format!("{hex}.zst"));
    std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
    std::fs::write(&stray, random_bytes(100)).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&stray)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(2 * 3600))
        .unwrap();

    let found = fsck(&fx, &[]).await;
    assert_output(
        &found,
        false,
        &[
            "broken chunk list",
            "of its chunks are not in storage",
            &format!(
                "missing: chunk chunks/{}/{}",
                &file_name(&lost)[..2],
                file_name(&lost)
            ),
            &format!("stray: chunk chunks/{}/{hex}.zst", &hex[..2]),
        ],
    );
    let repair = fsck(&fx, &["--repair"]).await;
    assert_output(
        &repair,
        true,
        &[
            "repaired: dropped the chunk list; it is fetched again from its upstream on demand",
            "repaired: forgot the chunk",
            "0 remaining",
        ],
    );
    assert!(!stray.exists(), "the stray chunk survived the repair");
    assert_output(&fsck(&fx, &[]).await, true, &["0 problems found"]);

    fx.env
        .client()
        .substitute_ok(&fx.ncps.url(), &ncps_key, &fx.closure)
        .await;
    assert!(
        fx.upstream.gets(&fx.upstream.nar_path(&fx.closure.blob)) >= 2,
        "the blob's NAR was not fetched again"
    );
    eventually("every NAR chunked again", || closure_stored(&fx)).await;
    assert_output(&fsck(&fx, &[]).await, true, &["0 problems found"]);
}

/// A closure signed by `upstream-1`, written to a `file://` binary cache directory.
async fn file_cache(env: &TestEnv) -> (Closure, SigningKey, PathBuf) {
    let closure = env.closure_with_blob(300_000).await;
    let key = env.key("upstream-1").await;
    key.sign(env.path(), &closure.top).await;
    let dir = unique_dir(env.path(), "file-cache");
    nix::copy_to_file_cache(env.path(), &closure.top, &dir, Compression::Xz).await;
    (closure, key, dir)
}

/// ncps whose only upstream is a closed port, still trusting the upstream's key: everything it
/// serves must come from its own storage.
fn offline_config(env: &TestEnv, key: &SigningKey) -> NcpsConfig {
    let mut config = env.ncps_config(&[], &[&key.public]);
    config.upstreams = vec![format!("http://{}", free_port())];
    config
}

async fn migrate_narinfo(env: &TestEnv, config: &NcpsConfig, dir: &Path, args: &[&str]) -> NcpsRun {
    // An import goes into an existing cache, created as an operator does (admin commands never
    // create one).
    env.ncps_admin("migrate", config, &[])
        .await
        .expect_success();
    let mut all = vec![dir.to_str().unwrap()];
    all.extend(args);
    env.ncps_admin("migrate-narinfo", config, &all).await
}

/// Copies a flat binary cache directory (`*.narinfo`, `nar/*`).
fn copy_cache_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("nar")).unwrap();
    for sub in ["", "nar"] {
        for entry in std::fs::read_dir(from.join(sub)).unwrap().flatten() {
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), to.join(sub).join(entry.file_name())).unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_narinfo_imports_a_file_cache_that_is_then_served_without_upstream() {
    let env = TestEnv::new();
    let (closure, upstream_key, dir) = file_cache(&env).await;
    let config = offline_config(&env, &upstream_key);

    let dry = migrate_narinfo(&env, &config, &dir, &["--dry-run"]).await;
    assert_output(&dry, true, &["would import 4 paths"]);
    assert!(config.whole_nar_files().is_empty(), "a dry run stored NARs");

    let wrong_key = env.key("someone-else-1").await;
    let unsigned = migrate_narinfo(
        &env,
        &config,
        &dir,
        &["--dry-run", "--public-key", &wrong_key.public],
    )
    .await;
    assert_output(&unsigned, false, &["not signed by", "4 skipped"]);

    let import = migrate_narinfo(&env, &config, &dir, &[]).await;
    assert_output(&import, true, &["imported 4 paths", "0 skipped"]);
    assert_eq!(config.whole_nar_files().len(), 4);
    let again = migrate_narinfo(&env, &config, &dir, &[]).await;
    assert_output(&again, true, &["imported 0 paths", "4 already cached"]);
    assert_output(
        &env.ncps_admin("fsck", &config, &["--verify-hashes"]).await,
        true,
        &["0 problems found"],
    );

    let ncps = env.ncps(&config).await;
    let ncps_key = ncps.pubkey().await;
    env.client()
        .substitute_ok(&ncps.url(), &ncps_key, &closure)
        .await;

    // The same cache laid out as the Go ncps stores it: sharded narinfos and NARs.
    let go = unique_dir(env.path(), "go-ncps-data");
    for sub in ["", "nar"] {
        for entry in std::fs::read_dir(dir.join(sub)).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let kind = match (sub, name.ends_with(".narinfo")) {
                ("", true) => "narinfo",
                ("nar", _) => "nar",
                _ => continue,
            };
            let to = go
                .join("store")
                .join(kind)
                .join(&name[..1])
                .join(&name[..2]);
            std::fs::create_dir_all(&to).unwrap();
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
    let from_go = offline_config(&env, &upstream_key);
    assert_output(
        &migrate_narinfo(&env, &from_go, &go, &[]).await,
        true,
        &["imported 4 paths", "0 skipped"],
    );
    assert_output(
        &env.ncps_admin("fsck", &from_go, &["--verify-hashes"]).await,
        true,
        &["0 problems found"],
    );

    // A damaged copy: one NAR file missing, one altered. Those two are reported and skipped,
    // the rest imported, and the command fails.
    let damaged = unique_dir(env.path(), "damaged-cache");
    copy_cache_dir(&dir, &damaged);
    let nar_of = |path: &str| {
        let text =
            std::fs::read_to_string(damaged.join(format!("{}.narinfo", store_hash(path)))).unwrap();
        let url = text
            .lines()
            .find_map(|l| l.strip_prefix("URL: "))
            .unwrap()
            .to_owned();
        damaged.join(url)
    };
    std::fs::remove_file(nar_of(&closure.leaf)).unwrap();
    let blob = nar_of(&closure.blob);
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&blob, &bytes).unwrap();
    let fresh = offline_config(&env, &upstream_key);
    let partial = migrate_narinfo(&env, &fresh, &damaged, &[]).await;
    assert_output(
        &partial,
        false,
        &["SKIPPED", "is missing", "imported 2 paths", "2 skipped"],
    );
    assert_eq!(fresh.whole_nar_files().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn generated_key_is_used_by_serve_and_accepted_by_nix() {
    let keys = TestEnv::new();
    let secret = keys.path().join("keys/secret.key");
    let public = keys.path().join("keys/public.key");
    let args: Vec<OsString> = vec![
        "generate-key".into(),
        "--name".into(),
        "admin-e2e-1".into(),
        "--secret-key-path".into(),
        secret.clone().into(),
        "--public-key-path".into(),
        public.clone().into(),
    ];
    let run = NcpsRun::run(keys.path(), &args).await.expect_success();
    let public_key = std::fs::read_to_string(&public).unwrap().trim().to_owned();
    assert!(public_key.starts_with("admin-e2e-1:"), "{public_key}");
    assert!(run.output.contains(&public_key), "{run}");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&secret).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let secret_text = std::fs::read_to_string(&secret).unwrap();
    let refused = NcpsRun::run(keys.path(), &args).await;
    assert_output(&refused, false, &["refusing to overwrite"]);
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), secret_text);

    let secret_arg = secret.to_str().unwrap();
    let fx = Fixture::with(
        FixtureOptions::new(Compression::Zstd).ncps_args(&["--cache-secret-key-path", secret_arg]),
    )
    .await;
    assert_eq!(fx.ncps.pubkey().await, public_key);
    fx.env
        .client()
        .substitute_ok(&fx.ncps.url(), &public_key, &fx.closure)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pins_round_trip_and_cover_the_closure() {
    let env = TestEnv::new();
    let (closure, upstream_key, dir) = file_cache(&env).await;
    let config = offline_config(&env, &upstream_key);
    assert_output(
        &migrate_narinfo(&env, &config, &dir, &[]).await,
        true,
        &["imported 4 paths"],
    );
    let admin = |command: &'static str, args: Vec<String>| {
        let env = &env;
        let config = &config;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            env.ncps_admin(command, config, &args).await
        }
    };

    let uncached = random_store_hash();
    let pin = admin("pin", vec![closure.top.clone(), uncached.clone()]).await;
    assert_output(
        &pin,
        true,
        &[
            &format!("pinned {}", closure.top),
            &format!("pinned {uncached} (note: not in the cache yet"),
            "5 store paths are protected by pins",
        ],
    );
    let again = admin("pin", vec![closure.top.clone()]).await;
    assert_output(&again, true, &[&format!("already pinned: {}", closure.top)]);
    let list = admin("pins", vec![]).await;
    assert_output(
        &list,
        true,
        &[
            &closure.top,
            &format!("{uncached}  (not cached yet)"),
            "2 pins protecting 5 store paths",
        ],
    );

    // `<hash>-<name>` and `<hash>` forms; a bad argument changes nothing.
    let base = closure.top.strip_prefix("/nix/store/").unwrap().to_owned();
    let bad = admin("unpin", vec![base.clone(), "not-a-path".into()]).await;
    assert_output(&bad, false, &["not a store path"]);
    let unpin = admin("unpin", vec![base, uncached.clone()]).await;
    assert_output(&unpin, true, &["unpinned"]);
    let list = admin("pins", vec![]).await;
    assert_output(&list, true, &["0 pins protecting 0 store paths"]);
    let missing = admin("unpin", vec![uncached.clone()]).await;
    assert_output(&missing, false, &[&format!("not pinned: {uncached}")]);
}

/// The pin routes: behind the write token, and what they pin shows in `ncps pins`.
#[tokio::test(flavor = "multi_thread")]
async fn pin_routes_need_the_write_token() {
    let env = TestEnv::new();
    let upstream_key = env.key("pin-routes-upstream-1").await;
    let closure = env.closure().await;
    upstream_key.sign(env.path(), &closure.top).await;
    let upstream = env.upstream(&closure, Compression::Zstd).await;
    let config = env
        .ncps_config(&[&upstream], &[&upstream_key.public])
        .with_args(&["--cache-allow-put-verb", "--cache-put-token", "w"]);
    let ncps = env.ncps(&config).await;
    let hash = store_hash(&closure.top).to_owned();
    let url = ncps.url_for(&format!("pin/{hash}.narinfo"));
    let client = reqwest::Client::new();
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(status(client.post(&url).send().await.unwrap()), 401);
    assert_eq!(
        status(client.get(ncps.url_for("pins")).send().await.unwrap()),
        401
    );
    assert_eq!(
        status(client.post(&url).bearer_auth("w").send().await.unwrap()),
        201
    );
    assert_eq!(
        status(client.post(&url).bearer_auth("w").send().await.unwrap()),
        200
    );
    let pins = client
        .get(ncps.url_for("pins"))
        .bearer_auth("w")
        .send()
        .await
        .unwrap();
    assert_eq!(pins.status().as_u16(), 200);
    assert!(pins.text().await.unwrap().contains(&hash));
    let listed = env.ncps_admin("pins", &config, &[]).await.expect_success();
    assert!(
        listed.output.contains(&hash),
        "ncps pins: {}",
        listed.output
    );
    assert_eq!(
        status(client.delete(&url).bearer_auth("w").send().await.unwrap()),
        204
    );
    assert_eq!(
        status(client.delete(&url).bearer_auth("w").send().await.unwrap()),
        404
    );
}

/// An uploaded path (no upstream can supply it again) whose stored file is damaged: `fsck
/// --repair` deletes the file and drops the narinfo in the same run, however recent the
/// upload (the narinfo is unservable because of this run's repair, not a write in progress),
/// says so, and a second run finds nothing left.
#[tokio::test(flavor = "multi_thread")]
async fn fsck_repair_of_a_damaged_upload_drops_its_narinfo_at_once() {
    let env = TestEnv::new();
    let path = env.built_path(50_000).await.path;
    let server = env.upload_server(&["--cache-allow-put-verb"]).await;
    server
        .nix_copy_to(&path, Compression::Xz, &[])
        .await
        .expect_success();
    let narinfo_url = server.narinfo_url(&path);
    http::get(&narinfo_url)
        .await
        .expect_status(200, "the uploaded narinfo");
    let stored = server.stored_files();
    assert_eq!(stored.len(), 1, "{stored:?}");
    let bytes = std::fs::read(&stored[0]).expect("read the stored file");
    std::fs::write(&stored[0], &bytes[..bytes.len() / 2]).expect("damage it");

    let repair = env
        .ncps_admin("fsck", &server.config, &["--repair"])
        .await
        .expect_success();
    assert!(repair.output.contains("corrupt: NAR"), "{}", repair.output);
    assert!(
        repair.output.contains("unservable narinfo"),
        "the narinfo must be dropped in the same run: {}",
        repair.output
    );
    assert!(!repair.output.contains("left alone"), "{}", repair.output);
    assert!(
        repair
            .output
            .contains("3 problems found, 3 repaired, 0 remaining"),
        "{}",
        repair.output
    );
    // The server's memo of rendered narinfos lasts seconds; then the drop shows.
    eventually_within(
        "the narinfo of a lost upload is gone",
        Duration::from_secs(20),
        || {
            let url = narinfo_url.clone();
            async move {
                match http::get(&url).await.status {
                    404 => Ok(()),
                    status => Err(format!("status {status}")),
                }
            }
        },
    )
    .await;
    let again = env
        .ncps_admin("fsck", &server.config, &[])
        .await
        .expect_success();
    assert!(
        again.output.contains("0 problems found"),
        "{}",
        again.output
    );
}

/// The Go ncps's migration job, as its Helm chart runs it (`ncps migrate up` with nothing but
/// the database URL): `--dry-run` lists the pending migrations and applies none; `up` applies
/// them and creates no key and no storage; `serve` then starts on that database; plain
/// `migrate` finds nothing left to do; `migrate down` is refused with the reason.
#[tokio::test(flavor = "multi_thread")]
async fn go_style_migrate_up_dry_run_and_down() {
    let env = TestEnv::new();
    let dir = env.path().join("migrate-job");
    let url = format!("sqlite:{}", dir.join("db.sqlite").display());
    let run = |args: &[&str]| {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let work = env.path().to_owned();
        async move { NcpsRun::run(&work, &args).await }
    };
    let dry = run(&["migrate", "up", "--dry-run", "--cache-database-url", &url]).await;
    assert_output(
        &dry,
        true,
        &["0001 initial: pending", "nothing changed (--dry-run)"],
    );
    assert!(!dry.output.contains(": applied"), "{dry}");

    let up = run(&["migrate", "up", "--cache-database-url", &url]).await;
    assert_output(&up, true, &["applied by this run", "0001 initial: applied"]);
    let made: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| file_name(&e.unwrap().path()))
        .filter(|name| !name.starts_with("db.sqlite"))
        .collect();
    assert!(
        made.is_empty(),
        "migrate up made more than the database: {made:?}"
    );

    let again = run(&["migrate", "--cache-database-url", &url]).await;
    assert_output(&again, true, &["0 migrations applied by this run"]);
    let dry = run(&["migrate", "up", "--dry-run", "--cache-database-url", &url]).await;
    assert_output(&dry, true, &["0 migrations pending"]);

    let down = run(&["migrate", "down", "--cache-database-url", &url]).await;
    assert_output(&down, false, &["forward-only", "restore the backup"]);

    let upstream = env.empty_upstream().await;
    let key = env.key("upstream-1").await;
    let config = env
        .ncps_config(&[&upstream], &[&key.public])
        .with_args(&["--cache-database-url", &url]);
    let ncps = env.ncps(&config).await;
    http::get(&ncps.url_for("nix-cache-info"))
        .await
        .expect_status(200, "serve on the migrated database");
}

/// stdout is a command's result, logs go to stderr: `PUB=$(ncps generate-key …)` captures the
/// public key alone, and `ncps pins` lists pins without a log line among them.
#[test]
fn results_on_stdout_logs_on_stderr() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ncps"))
        .args(["--log-level", "debug", "generate-key", "--name", "split-1"])
        .arg("--secret-key-path")
        .arg(dir.path().join("key"))
        .output()
        .expect("run generate-key");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "stdout: {stdout}");
    assert!(stdout.starts_with("split-1:"), "stdout: {stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("generated a new signing key"),
        "the log line went missing: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A mistyped data directory is no cache: every admin command says so and creates nothing
/// (no database, no key), instead of reporting an empty, healthy cache. A `serve` whose
/// settings are wrong stops before creating anything either.
#[tokio::test(flavor = "multi_thread")]
async fn admin_commands_never_create_a_cache() {
    let env = TestEnv::new();
    let upstream_key = env.key("typo-upstream-1").await;
    let mut config = offline_config(&env, &upstream_key);
    config.data_dir = env.path().join("no-such-cache");
    let file_cache = env.path().join("empty-file-cache");
    std::fs::create_dir_all(&file_cache).expect("mkdir");
    let file_cache = file_cache.to_str().expect("UTF-8 path");
    for (command, args) in [
        ("fsck", vec![]),
        ("pins", vec![]),
        ("pin", vec!["/nix/store/7rjj86a15146cq1d0ybgnwyqdwgv9lfh-x"]),
        ("migrate-narinfo", vec![file_cache, "--dry-run"]),
        ("migrate-nar-to-chunks", vec!["--dry-run"]),
        ("migrate-chunks-to-nar", vec![]),
    ] {
        let run = env.ncps_admin(command, &config, &args).await;
        assert!(
            !run.status.success(),
            "{command} on no cache succeeded:\n{run}"
        );
        assert!(
            run.output.contains("no ncps cache here"),
            "{command}:\n{run}"
        );
        assert!(
            !config.data_dir.exists(),
            "{command} created {}",
            config.data_dir.display()
        );
    }
    // serve with an upstream no key applies to: refused before anything is created.
    config.public_keys.clear();
    let run = env.ncps_expecting_exit(&config).await;
    assert!(!run.status.success(), "{run}");
    assert!(
        !config.data_dir.exists(),
        "a failed start left {} behind",
        config.data_dir.display()
    );
}

/// A signing key named otherwise than `--cache-hostname` is worth a warning: clients trust a
/// key by its name, and a renamed cache still signs with the old one.
#[tokio::test(flavor = "multi_thread")]
async fn serve_warns_when_the_key_is_named_otherwise_than_the_cache() {
    let env = TestEnv::new();
    let upstream_key = env.key("named-upstream-1").await;
    let key_file = env.path().join("other.key");
    let generated = std::process::Command::new(env!("CARGO_BIN_EXE_ncps"))
        .args(["generate-key", "--name", "old-name-1", "--secret-key-path"])
        .arg(&key_file)
        .output()
        .expect("generate a key");
    assert!(generated.status.success());
    let config = offline_config(&env, &upstream_key)
        .with_args(&["--cache-secret-key-path", key_file.to_str().expect("UTF-8")]);
    let ncps = env.ncps(&config).await;
    let log = ncps.log();
    assert!(
        log.contains("differs from --cache-hostname") && log.contains("old-name-1"),
        "{log}"
    );
}
