//! Scale-out: several ncps replicas share PostgreSQL, a real S3 server (Garage) and a lock
//! service (Redis, or PostgreSQL advisory locks), and behave like one cache.
//!
//! `scripts/test` starts the servers on 127.0.0.1 and names them in `NCPS_TEST_POSTGRES_URL`,
//! `NCPS_TEST_REDIS_ADDR`, `NCPS_TEST_S3_ENDPOINT`/`_KEY_ID`/`_SECRET` and
//! `NCPS_TEST_GARAGE_CONFIG`. A missing server fails these tests (`ncps-test-services`
//! decides); `cargo nextest run --profile no-services` leaves them out, reported as skipped.

use std::process::Command;
use std::time::Duration;

use reqwest::Method;

use crate::harness::narinfo::store_hash;
use crate::harness::{Compression, Ncps, NcpsConfig, TestEnv, eventually_within, http, random_hex};

/// The shared services, from the environment.
pub(crate) struct Services {
    postgres: String,
    redis: String,
    pub(crate) s3_endpoint: String,
    pub(crate) s3_key_id: String,
    pub(crate) s3_secret: String,
    garage_config: String,
}

impl Services {
    pub(crate) fn from_env() -> Services {
        let s3 = ncps_test_services::s3();
        Services {
            postgres: ncps_test_services::postgres_url(),
            redis: ncps_test_services::redis_addr(),
            s3_endpoint: s3.endpoint,
            s3_key_id: s3.key_id,
            s3_secret: s3.secret,
            garage_config: s3.garage_config,
        }
    }

    /// A fresh PostgreSQL database for one test.
    pub(crate) fn database(&self) -> String {
        let name = format!("ncps_replicas_{}", random_hex(6));
        run(
            "psql",
            &[
                &self.postgres,
                "-q",
                "-c",
                &format!("CREATE DATABASE {name}"),
            ],
        );
        let base = self
            .postgres
            .rsplit_once('/')
            .map_or(self.postgres.as_str(), |(b, _)| b);
        format!("{base}/{name}")
    }

    /// The flags that store NARs in `bucket` of the Garage server.
    pub(crate) fn s3_args(&self, bucket: &str) -> Vec<String> {
        [
            "--cache-storage-s3-bucket",
            bucket,
            "--cache-storage-s3-endpoint",
            &self.s3_endpoint,
            "--cache-storage-s3-region",
            "garage",
            "--cache-storage-s3-access-key-id",
            &self.s3_key_id,
            "--cache-storage-s3-secret-access-key",
            &self.s3_secret,
            "--cache-storage-s3-force-path-style",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }

    /// A fresh bucket for one test, writable with the shared key.
    pub(crate) fn bucket(&self) -> String {
        let name = format!("ncps-replicas-{}", random_hex(6));
        let garage = |args: &[&str]| {
            let mut full = vec!["-c", self.garage_config.as_str()];
            full.extend_from_slice(args);
            run("garage", &full);
        };
        garage(&["bucket", "create", &name]);
        garage(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            &name,
            "--key",
            &self.s3_key_id,
        ]);
        name
    }
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Where replicas keep their NARs and chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SharedStorage {
    /// A bucket of the Garage S3 server.
    S3,
    /// A container of the Azurite Azure Blob storage emulator.
    Azure,
    /// A bucket of a Google Cloud Storage emulator (gcp-storage-emulator).
    Gcs,
}

/// The flags and environment naming a fresh place of `storage` for one test.
fn storage_settings(
    services: &Services,
    storage: SharedStorage,
) -> (Vec<String>, Vec<(String, String)>) {
    match storage {
        SharedStorage::S3 => (services.s3_args(&services.bucket()), Vec::new()),
        SharedStorage::Gcs => {
            let url = ncps_test_services::gcs_emulator();
            let name = format!("ncps-replicas-{}", random_hex(6));
            // The emulator takes unauthenticated JSON API calls: create the bucket with one.
            let out = Command::new("python3")
                .args([
                    "-c",
                    "import sys, urllib.request as u; u.urlopen(u.Request(sys.argv[1] + \
                     '/storage/v1/b?project=ncps', data=('{\"name\":\"' + sys.argv[2] + \
                     '\"}').encode(), headers={'Content-Type': 'application/json'}))",
                    &url,
                    &name,
                ])
                .output()
                .expect("run python3");
            assert!(
                out.status.success(),
                "creating the bucket: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            // A service account key naming the emulator, without OAuth.
            let key = std::env::temp_dir().join(format!("{name}.json"));
            std::fs::write(
                &key,
                format!(
                    r#"{{"gcs_base_url": "{url}", "disable_oauth": true, "client_email": "", "private_key": "", "private_key_id": ""}}"#
                ),
            )
            .expect("write the key file");
            (
                vec![
                    "--cache-storage-gcs-bucket".into(),
                    name,
                    "--cache-storage-gcs-credentials-file".into(),
                    key.display().to_string(),
                ],
                Vec::new(),
            )
        }
        SharedStorage::Azure => {
            let azurite = ncps_test_services::azurite();
            let name = format!("ncps-replicas-{}", random_hex(6));
            // object_store cannot create a container: the Azure SDK (from npm) does.
            let out = Command::new("node")
                .arg(repo_file("scripts/lib/azure-container.js"))
                .args([azurite.url.as_str(), name.as_str()])
                .env("NODE_PATH", &azurite.node_modules)
                .output()
                .expect("run node");
            assert!(
                out.status.success(),
                "creating the container: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            (
                vec!["--cache-storage-azure-container".into(), name],
                vec![
                    ("AZURE_STORAGE_USE_EMULATOR".into(), "true".into()),
                    ("AZURITE_BLOB_STORAGE_URL".into(), azurite.url),
                ],
            )
        }
    }
}

/// A file of the repository.
fn repo_file(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// Flags every replica shares: database, storage, key, locks.
fn shared_args(
    database: &str,
    storage: Vec<String>,
    key_file: &str,
    locks: &[String],
) -> Vec<String> {
    let mut args: Vec<String> = ["--cache-database-url", database]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    args.extend(storage);
    // The locks' default TTL: a replica killed mid-download must hold the others up for
    // seconds, not minutes, as shipped.
    args.extend(
        ["--cache-secret-key-path", key_file]
            .iter()
            .map(|s| (*s).to_owned()),
    );
    args.extend(locks.iter().cloned());
    args
}

/// What every scale-out test starts from: a signed closure served by an upstream, one signing
/// key file for all replicas (clients trust one name), and the flags the replicas share.
struct Fleet {
    env: TestEnv,
    closure: crate::harness::Closure,
    upstream_key: crate::harness::SigningKey,
    upstream: crate::harness::Upstream,
    shared: Vec<String>,
    /// The fleet's PostgreSQL database (also in `shared`).
    database: String,
    /// Environment every replica gets (the Azure emulator's settings).
    shared_env: Vec<(String, String)>,
}

impl Fleet {
    async fn new(services: &Services, compression: Compression, locks: Vec<String>) -> Fleet {
        Fleet::with_blob(services, compression, locks, 3_000_000, SharedStorage::S3).await
    }

    /// Replica settings for `upstream`'s closure: the shared flags and environment.
    fn replica_config(&self) -> NcpsConfig {
        let shared: Vec<&str> = self.shared.iter().map(String::as_str).collect();
        let mut config = self
            .env
            .ncps_config(&[&self.upstream], &[&self.upstream_key.public])
            .with_args(&shared);
        config.extra_env.extend(self.shared_env.iter().cloned());
        config
    }

    /// A fleet whose closure's blob path has `blob_bytes` of random data.
    async fn with_blob(
        services: &Services,
        compression: Compression,
        locks: Vec<String>,
        blob_bytes: usize,
        storage: SharedStorage,
    ) -> Fleet {
        let env = TestEnv::new();
        let closure = env.closure_with_blob(blob_bytes).await;
        let upstream_key = env.key("replicas-upstream-1").await;
        upstream_key.sign(env.path(), &closure.top).await;
        let upstream = env.upstream(&closure, compression).await;
        let key_file = env.path().join("ncps.secret");
        let key_path = key_file.to_str().expect("utf-8 path");
        let argv = [
            "generate-key",
            "--name",
            "replicas",
            "--secret-key-path",
            key_path,
        ]
        .map(Into::into);
        crate::harness::NcpsRun::run(env.path(), &argv)
            .await
            .expect_success();
        let (storage_args, shared_env) = storage_settings(services, storage);
        let database = services.database();
        let shared = shared_args(&database, storage_args, key_path, &locks);
        Fleet {
            database,
            env,
            closure,
            upstream_key,
            upstream,
            shared,
            shared_env,
        }
    }
}

async fn replicas_share_one_cache(locks: fn(&Services) -> Vec<String>, storage: SharedStorage) {
    let services = Services::from_env();
    let fleet = Fleet::with_blob(
        &services,
        Compression::Xz,
        locks(&services),
        3_000_000,
        storage,
    )
    .await;
    let mut replicas: Vec<(Ncps, NcpsConfig)> = Vec::new();
    for _ in 0..3 {
        let config = fleet.replica_config();
        replicas.push((fleet.env.ncps(&config).await, config));
    }
    let Fleet {
        env,
        closure,
        upstream_key,
        mut upstream,
        shared,
        shared_env,
        ..
    } = fleet;
    let shared: Vec<&str> = shared.iter().map(String::as_str).collect();
    let key = replicas[0].0.pubkey().await;
    assert_eq!(
        key,
        replicas[1].0.pubkey().await,
        "replicas must sign with one key"
    );

    // 1. Substitute through replica 1; nothing is kept on replica disks.
    env.client()
        .substitute_ok(&replicas[0].0.url(), &key, &closure)
        .await;
    assert!(
        replicas[0].1.whole_nar_files().is_empty(),
        "NARs must go to S3, not local disk"
    );

    // 2. With the upstream stopped, replica 2 serves the closure from shared storage.
    upstream.stop().await;
    env.client()
        .substitute_ok(&replicas[1].0.url(), &key, &closure)
        .await;
    upstream.restart().await;
    // Each replica keeps a database pool: stop these before starting the next ones.
    drop(replicas);

    // 3. 50 concurrent requests for one uncached NAR, spread over the replicas: one upstream GET.
    let fresh = env.closure_with_blob(2_000_000).await;
    upstream_key.sign(env.path(), &fresh.top).await;
    let fresh_upstream = env.upstream(&fresh, Compression::Xz).await;
    fresh_upstream.throttle_nars(Duration::from_millis(20));
    let mut fresh_replicas = Vec::new();
    for _ in 0..3 {
        let mut config = env
            .ncps_config(&[&fresh_upstream], &[&upstream_key.public])
            .with_args(&shared);
        config.extra_env.extend(shared_env.iter().cloned());
        fresh_replicas.push(env.ncps(&config).await);
    }
    let narinfo = http::get(&fresh_replicas[0].url_for(&format!(
        "{}.narinfo",
        &crate::harness::narinfo::store_hash(&fresh.blob)
    )))
    .await
    .expect_status(200, "narinfo through replica 1");
    let fresh_narinfo = crate::harness::NarInfo::parse(&narinfo.text());
    let nar_url = fresh_narinfo.field("URL").to_owned();
    let client = http::client();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let url = fresh_replicas[i % 3].url_for(&nar_url);
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let r = client.get(&url).send().await.expect("GET");
            let status = r.status().as_u16();
            (status, r.bytes().await.expect("body"))
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, body) = t.await.expect("task");
        assert_eq!(status, 200, "request {i}");
        fresh_narinfo
            .verify_nar(&body)
            .unwrap_or_else(|e| panic!("request {i} got bytes that do not match the narinfo: {e}"));
    }
    assert_eq!(
        fresh_upstream.gets(&fresh_upstream.nar_path(&fresh.blob)),
        1,
        "exactly one upstream GET for a NAR requested through three replicas"
    );

    drop(fresh_replicas);

    // 4. kill -9 a replica while it downloads a NAR (it holds the NAR's lock; the upstream
    // holds the body, so the download is certainly in flight): its client sees a failed
    // transfer, and another replica then fetches and serves the right bytes.
    let third = env.closure_with_blob(4_000_000).await;
    upstream_key.sign(env.path(), &third.top).await;
    let slow = env.upstream(&third, Compression::Xz).await;
    let mut pair: Vec<Ncps> = Vec::new();
    for _ in 0..2 {
        let mut config = env
            .ncps_config(&[&slow], &[&upstream_key.public])
            .with_args(&shared);
        config.extra_env.extend(shared_env.iter().cloned());
        pair.push(env.ncps(&config).await);
    }
    let narinfo_url = pair[0].url_for(&format!(
        "{}.narinfo",
        crate::harness::narinfo::store_hash(&third.blob)
    ));
    let text = http::get(&narinfo_url)
        .await
        .expect_status(200, "narinfo")
        .text();
    let third_narinfo = crate::harness::NarInfo::parse(&text);
    let nar_url = third_narinfo.field("URL").to_owned();
    let upstream_nar = slow.nar_path(&third.blob);
    slow.hold_nars();
    let doomed = http::client()
        .get(pair[0].url_for(&nar_url))
        .send()
        .await
        .expect("the doomed request's response headers");
    assert_eq!(
        doomed.status().as_u16(),
        200,
        "replica 1 answers while downloading"
    );
    assert_eq!(slow.gets(&upstream_nar), 1, "replica 1 is downloading");
    pair[0].kill();
    let doomed_body = doomed.bytes().await;
    assert!(
        doomed_body.is_err(),
        "the killed replica's client must see a failed transfer, not {} bytes",
        doomed_body.map_or(0, |b| b.len())
    );
    slow.release_nars();
    let survivor = pair[1].url_for(&nar_url);
    let body = eventually_within(
        "the surviving replica completes the download",
        Duration::from_secs(60),
        || {
            let url = survivor.clone();
            async move {
                let r = http::client()
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if r.status().as_u16() != 200 {
                    return Err(format!("status {}", r.status()));
                }
                r.bytes().await.map_err(|e| e.to_string())
            }
        },
    )
    .await;
    third_narinfo
        .verify_nar(&body)
        .unwrap_or_else(|e| panic!("the survivor's bytes do not match the narinfo: {e}"));
    assert_eq!(
        slow.gets(&upstream_nar),
        2,
        "one upstream GET by the killed replica, one by the survivor"
    );
}

/// Locks in the Redis server, under a key prefix of their own.
pub(crate) fn redis_locks(s: &Services) -> Vec<String> {
    vec![
        "--cache-lock-backend".into(),
        "redis".into(),
        "--cache-redis-addrs".into(),
        s.redis.clone(),
        "--cache-lock-redis-key-prefix".into(),
        format!("ncps-test-{}:", random_hex(4)),
    ]
}

fn postgres_locks(_: &Services) -> Vec<String> {
    vec!["--cache-lock-backend".into(), "postgres".into()]
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_on_postgres_s3_and_redis() {
    replicas_share_one_cache(redis_locks, SharedStorage::S3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_on_postgres_and_s3_with_advisory_locks() {
    replicas_share_one_cache(postgres_locks, SharedStorage::S3).await;
}

/// GETs a path's narinfo and NAR from `replica`: both must be a 200 at the first attempt, the
/// NAR's bytes those the narinfo describes.
async fn served_at_once(replica: &Ncps, path: &str, why: &str) {
    let narinfo_url = replica.url_for(&format!(
        "{}.narinfo",
        crate::harness::narinfo::store_hash(path)
    ));
    let text = http::get(&narinfo_url)
        .await
        .expect_status(200, &format!("{why}: GET {narinfo_url}"))
        .text();
    let narinfo = crate::harness::NarInfo::parse(&text);
    let nar_url = replica.url_for(narinfo.field("URL"));
    let nar = http::get(&nar_url)
        .await
        .expect_ok_with_length(&format!("{why}: GET {nar_url}"));
    narinfo
        .verify_nar(&nar.body)
        .unwrap_or_else(|e| panic!("{why}: {nar_url}: {e}"));
}

/// PostgreSQL ending every session of the cache's database (a restart, a failover, an
/// administrator) costs no request: stored paths are served and cold ones fetched at the first
/// attempt, over new connections and a new advisory lock session.
#[tokio::test(flavor = "multi_thread")]
async fn serving_goes_on_after_postgresql_ends_every_session() {
    let services = Services::from_env();
    let fleet = Fleet::new(&services, Compression::Xz, postgres_locks(&services)).await;
    let replica = fleet.env.ncps(&fleet.replica_config()).await;
    let (stored, cold) = fleet.closure.paths.split_first().expect("a closure");
    served_at_once(&replica, stored, "before").await;
    let database = fleet.database.rsplit('/').next().expect("a database name");
    let ended = Command::new("psql")
        .args([
            services.postgres.as_str(),
            "-qtA",
            "-c",
            &format!(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = '{database}' AND pid <> pg_backend_pid()) t"
            ),
        ])
        .output()
        .expect("run psql");
    let ended = String::from_utf8_lossy(&ended.stdout).trim().to_owned();
    assert_ne!(ended, "0", "ncps had no session to end");
    served_at_once(&replica, stored, "a stored path, sessions ended").await;
    for path in cold {
        served_at_once(&replica, path, "a cold path, sessions ended").await;
    }
}

/// Chunked NARs in a bucket: the remote paths of chunk storage (frames fetched concurrently,
/// presence checked with HEAD requests) serve a closure through a second replica once the
/// upstream is gone.
#[tokio::test(flavor = "multi_thread")]
async fn chunked_replicas_on_s3() {
    let services = Services::from_env();
    let mut fleet = Fleet::new(&services, Compression::Zstd, postgres_locks(&services)).await;
    fleet.shared.push("--cache-cdc-enabled".into());
    let shared: Vec<&str> = fleet.shared.iter().map(String::as_str).collect();
    let (env, closure) = (&fleet.env, &fleet.closure);
    let trusted = [fleet.upstream_key.public.as_str()];
    let first_config = env
        .ncps_config(&[&fleet.upstream], &trusted)
        .with_args(&shared);
    let first = env.ncps(&first_config).await;
    let key = first.pubkey().await;
    env.client()
        .substitute_ok(&first.url(), &key, closure)
        .await;
    assert!(
        first_config.chunk_files().is_empty() && first_config.whole_nar_files().is_empty(),
        "chunks must go to S3, not local disk"
    );
    drop(first);

    fleet.upstream.stop().await;
    let second_config = env
        .ncps_config(&[&fleet.upstream], &trusted)
        .with_args(&shared);
    let second = env.ncps(&second_config).await;
    env.client()
        .substitute_ok(&second.url(), &key, closure)
        .await;
}

/// Behind a load balancer, `nix copy --to` may send a NAR to one replica and its narinfo to
/// another: the upload waits in the shared database and storage, not in one process. Every NAR
/// of a closure goes to replica 1; replica 2 knows each one is there (HEAD, as `nix copy` asks
/// before sending), accepts the narinfos, and a client substitutes the closure through replica 1.
#[tokio::test(flavor = "multi_thread")]
async fn an_upload_may_reach_two_replicas() {
    let services = Services::from_env();
    let fleet = Fleet::new(&services, Compression::Xz, postgres_locks(&services)).await;
    let env = &fleet.env;
    let closure = env.closure_with_blob(1_000_000).await;
    let uploader = env.key("replicas-uploader-1").await;
    uploader.sign(env.path(), &closure.top).await;
    let files = env.file_cache(&closure.top, Compression::Xz).await;
    let empty = env.empty_upstream().await;
    let mut args: Vec<&str> = fleet.shared.iter().map(String::as_str).collect();
    args.extend([
        "--cache-allow-put-verb",
        "--cache-require-trusted-signature",
        "--cache-trusted-upload-key",
        &uploader.public,
    ]);
    let trusted = [fleet.upstream_key.public.as_str()];
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let config = env.ncps_config(&[&empty], &trusted).with_args(&args);
        replicas.push(env.ncps(&config).await);
    }
    let client = http::client();
    let put = |url: String, body: Vec<u8>| {
        let client = client.clone();
        async move {
            let resp = crate::harness::upload::send(&client, Method::PUT, &url, &[], body)
                .await
                .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
            assert!(
                (200..300).contains(&resp.status),
                "PUT {url}: {} {}",
                resp.status,
                resp.excerpt()
            );
        }
    };
    for path in &closure.paths {
        put(replicas[0].url_for(&files.nar_url(path)), files.nar(path)).await;
    }
    for path in &closure.paths {
        let nar_url = replicas[1].url_for(&files.nar_url(path));
        http::head(&nar_url)
            .await
            .expect_status(200, &format!("HEAD {nar_url}"));
        let narinfo_rel = format!("{}.narinfo", store_hash(path));
        let text = files.narinfo_text(path).into_bytes();
        put(replicas[1].url_for(&narinfo_rel), text).await;
    }
    let key = replicas[0].pubkey().await;
    env.client()
        .substitute_ok(&replicas[0].url(), &key, &closure)
        .await;
}

/// A NAR larger than one S3 part (8 MiB) is written with a multipart upload and read back whole
/// and in ranges (ranged S3 reads) by another replica, with the upstream gone.
#[tokio::test(flavor = "multi_thread")]
async fn large_nars_go_to_s3_in_parts_and_come_back_in_ranges() {
    let services = Services::from_env();
    // Uncompressed random data: the stored file is as large as the NAR.
    let mut fleet = Fleet::with_blob(
        &services,
        Compression::None,
        postgres_locks(&services),
        12 * 1024 * 1024,
        SharedStorage::S3,
    )
    .await;
    let shared: Vec<&str> = fleet.shared.iter().map(String::as_str).collect();
    let (env, closure) = (&fleet.env, &fleet.closure);
    let config = env
        .ncps_config(&[&fleet.upstream], &[&fleet.upstream_key.public])
        .with_args(&shared);
    let writer = env.ncps(&config).await;
    let key = writer.pubkey().await;
    env.client()
        .substitute_ok(&writer.url(), &key, closure)
        .await;
    // The client has its bytes once they are streamed; the upload to S3 is committed just
    // after. An uncompressed NAR's narinfo states FileHash (the NarHash) before it is stored,
    // so the writer is killed below only once its upload-only route, which answers for stored
    // NARs alone, has the NAR.
    let narinfo_url = writer.url_for(&format!(
        "{}.narinfo",
        crate::harness::narinfo::store_hash(&closure.blob)
    ));
    let narinfo = crate::harness::NarInfo::parse(
        &http::get(&narinfo_url)
            .await
            .expect_status(200, "narinfo")
            .text(),
    );
    let stored_url = writer.url_for(&format!("upload/{}", narinfo.field("URL")));
    eventually_within("the blob's NAR stored", Duration::from_secs(30), || async {
        match http::head(&stored_url).await.status {
            200 => Ok(()),
            status => Err(format!("not stored yet: HEAD {stored_url} is {status}")),
        }
    })
    .await;
    let size: u64 = narinfo.field("FileSize").parse().expect("FileSize");
    assert!(
        size > 8 * 1024 * 1024,
        "the blob's NAR ({size} bytes) must exceed one 8 MiB part"
    );
    drop(writer);
    fleet.upstream.stop().await;

    let reader_config = env
        .ncps_config(&[&fleet.upstream], &[&fleet.upstream_key.public])
        .with_args(&shared);
    let reader = env.ncps(&reader_config).await;
    let url = reader.url_for(narinfo.field("URL"));
    let whole = http::get(&url)
        .await
        .expect_ok_with_length("the large NAR from S3");
    let head = http::head(&url)
        .await
        .expect_status(200, "HEAD of the large NAR on S3");
    assert_eq!(
        head.content_length(),
        whole.content_length(),
        "HEAD = GET on S3"
    );
    narinfo
        .verify_nar(&whole.body)
        .unwrap_or_else(|e| panic!("the large NAR read back from S3: {e}"));
    let client = http::client();
    let (start, end) = (8 * 1024 * 1024 - 10, 8 * 1024 * 1024 + 10);
    let part = http::fetch(
        &client,
        reqwest::Method::GET,
        &url,
        &[("Range", &format!("bytes={start}-{}", end - 1))],
    )
    .await
    .expect("ranged GET")
    .expect_status(206, "a range across the first part boundary");
    assert_eq!(part.body, whole.body.slice(start..end));
    env.client()
        .substitute_ok(&reader.url(), &key, closure)
        .await;
}

/// The same on Azure Blob storage (the Azurite emulator): three replicas on PostgreSQL sharing
/// one container, with PostgreSQL locks.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_on_postgres_and_azure() {
    replicas_share_one_cache(postgres_locks, SharedStorage::Azure).await;
}

/// The same on Google Cloud Storage: three replicas on PostgreSQL sharing one bucket, with
/// PostgreSQL locks. Left out of the suite: the emulator from PyPI (gcp-storage-emulator)
/// answers `501 Method not implemented` to the XML API's object upload
/// (`PUT /<bucket>/<object>`) that object_store's GCS client uses, so no NAR can be stored.
/// Run it by hand against an emulator that serves the XML API (or a real bucket) with
/// `NCPS_TEST_GCS_URL` set: `cargo nextest run --run-ignored only -E 'test(gcs)'`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "gcp-storage-emulator answers 501 to the XML API object PUT object_store uploads with"]
async fn replicas_on_postgres_and_gcs() {
    replicas_share_one_cache(postgres_locks, SharedStorage::Gcs).await;
}
