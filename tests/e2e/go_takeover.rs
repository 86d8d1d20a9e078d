//! Taking over a Go ncps's data (issue 16): a data directory and database laid out as the Go
//! ncps leaves them (its schema at v0.10, narinfos in the database, NARs sharded under
//! `store/nar/<a>/<ab>/`, a NAR kept as zstd chunks under `store/chunk/<a>/<ab>/`, an
//! uncompressed NAR kept as `.nar.zst`, its generated signing key in the `config` table, a pin)
//! is built from the Go project's schema and layout facts, then ncps is started on it the way
//! nixpkgs' module and the Helm chart do (`ncps migrate up`, then the import, then `serve`),
//! with an upstream that answers nothing: every path must come from the Go data, signed with
//! the Go key, and the real Nix client must copy the closure trusting that key alone.

use std::io::Read;
use std::path::Path;
use std::process::Command;

use crate::harness::narinfo::store_hash;
use crate::harness::server_db::ServerDatabase;
use crate::harness::{Closure, Compression, NarInfo, NcpsRun, TestEnv, eventually, http};

/// The Go ncps's tables (its v0.10 schema as Ent creates it), with the engine's types put in:
/// `{ID}` primary key, `{TEXT}`, `{INT}`, `{TS}` timestamp, `{NOW}` its default.
const GO_SCHEMA: &str = "
CREATE TABLE schema_migrations (id {ID}, version_id {INT} NOT NULL, is_applied {BOOL} NOT NULL,
  tstamp {TS} DEFAULT {NOW});
CREATE TABLE narinfos (id {ID}, created_at {TS} NOT NULL DEFAULT {NOW}, updated_at {TS} NULL,
  hash {TEXT} NOT NULL, store_path {TEXT} NULL, url {TEXT} NULL, compression {TEXT} NULL,
  file_hash {TEXT} NULL, file_size {INT} NULL, nar_hash {TEXT} NULL, nar_size {INT} NULL,
  deriver {TEXT} NULL, system {TEXT} NULL, ca {TEXT} NULL, last_accessed_at {TS} NULL DEFAULT {NOW},
  upstream_url {TEXT} NULL);
CREATE UNIQUE INDEX narinfo_hash ON narinfos (hash);
CREATE INDEX narinfo_last_accessed_at ON narinfos (last_accessed_at);
CREATE TABLE narinfo_references (id {ID}, reference {TEXT} NOT NULL, narinfo_id {INT} NOT NULL,
  CONSTRAINT narinfo_references_narinfos_references FOREIGN KEY (narinfo_id)
  REFERENCES narinfos (id) ON DELETE CASCADE);
CREATE UNIQUE INDEX narinforeference_narinfo_id_reference ON narinfo_references (narinfo_id, reference);
CREATE TABLE narinfo_signatures (id {ID}, signature {TEXT} NOT NULL, narinfo_id {INT} NOT NULL,
  CONSTRAINT narinfo_signatures_narinfos_signatures FOREIGN KEY (narinfo_id)
  REFERENCES narinfos (id) ON DELETE CASCADE);
CREATE UNIQUE INDEX narinfosignature_narinfo_id_signature ON narinfo_signatures (narinfo_id, signature);
CREATE TABLE nar_files (id {ID}, created_at {TS} NOT NULL DEFAULT {NOW}, updated_at {TS} NULL,
  hash {TEXT} NOT NULL, compression {TEXT} NOT NULL DEFAULT '', file_size {INT} NOT NULL,
  query {TEXT} NOT NULL DEFAULT '', total_chunks {INT} NOT NULL DEFAULT 0,
  chunking_started_at {TS} NULL, verified_at {TS} NULL, bytes_stored_at {TS} NULL,
  dechunk_residue_flagged_at {TS} NULL, last_accessed_at {TS} NULL DEFAULT {NOW});
CREATE UNIQUE INDEX narfile_hash_compression_query ON nar_files (hash, compression, query);
CREATE TABLE narinfo_nar_files (id {ID}, nar_file_id {INT} NOT NULL, narinfo_id {INT} NOT NULL,
  CONSTRAINT narinfo_nar_files_nar_files_nar_info_nar_files FOREIGN KEY (nar_file_id)
  REFERENCES nar_files (id) ON DELETE CASCADE,
  CONSTRAINT narinfo_nar_files_narinfos_nar_info_nar_files FOREIGN KEY (narinfo_id)
  REFERENCES narinfos (id) ON DELETE CASCADE);
CREATE UNIQUE INDEX narinfonarfile_narinfo_id_nar_file_id ON narinfo_nar_files (narinfo_id, nar_file_id);
CREATE TABLE chunks (id {ID}, created_at {TS} NOT NULL DEFAULT {NOW}, updated_at {TS} NULL,
  hash {TEXT} NOT NULL, size {INT} NOT NULL, compressed_size {INT} NOT NULL DEFAULT 0);
CREATE UNIQUE INDEX chunk_hash ON chunks (hash);
CREATE TABLE nar_file_chunks (id {ID}, chunk_index {INT} NOT NULL, chunk_id {INT} NOT NULL,
  nar_file_id {INT} NOT NULL,
  CONSTRAINT nar_file_chunks_chunks_nar_file_links FOREIGN KEY (chunk_id)
  REFERENCES chunks (id) ON DELETE CASCADE,
  CONSTRAINT nar_file_chunks_nar_files_chunk_links FOREIGN KEY (nar_file_id)
  REFERENCES nar_files (id) ON DELETE CASCADE);
CREATE UNIQUE INDEX narfilechunk_nar_file_id_chunk_index ON nar_file_chunks (nar_file_id, chunk_index);
CREATE TABLE config (id {ID}, created_at {TS} NOT NULL DEFAULT {NOW}, updated_at {TS} NULL,
  key {TEXT} NOT NULL, value {TEXT} NOT NULL);
CREATE UNIQUE INDEX configentry_key ON config (key);
CREATE TABLE pinned_closures (id {ID}, created_at {TS} NOT NULL DEFAULT {NOW}, updated_at {TS} NULL,
  hash {TEXT} NOT NULL);
CREATE UNIQUE INDEX pinnedclosure_hash ON pinned_closures (hash);
CREATE TABLE build_trace_entries (id {ID}, created_at {TS} NOT NULL DEFAULT {NOW},
  updated_at {TS} NULL, drv_path {TEXT} NOT NULL, output_name {TEXT} NOT NULL,
  out_path {TEXT} NOT NULL, raw_json text NOT NULL);
CREATE UNIQUE INDEX buildtraceentry_drv_path_output_name ON build_trace_entries (drv_path, output_name);
CREATE TABLE build_trace_signatures (id {ID}, key_name {TEXT} NOT NULL, signature {TEXT} NOT NULL,
  build_trace_entry_id {INT} NOT NULL,
  CONSTRAINT build_trace_signatures_build_trace_entries_signatures FOREIGN KEY (build_trace_entry_id)
  REFERENCES build_trace_entries (id) ON DELETE CASCADE);
";

/// The migration versions the Go ncps records at v0.10 (SQLite's list; 0 is goose's own).
const GO_VERSIONS: &[i64] = &[
    0,
    20241210054814,
    20241210054829,
    20241213014846,
    20251230224159,
    20260101000000,
    20260105025735,
    20260105030513,
    20260117195000,
    20260127223000,
    20260131021850,
    20260205063651,
    20260217071237,
    20260301000000,
    20260318053903,
    20260521021523,
    20260525175108,
    20260605021047,
    20260605045447,
    20260605211804,
    20260607034027,
    20260607182925,
];

/// Where the Go database lives.
enum GoDatabase {
    /// `<data dir>/db/db.sqlite`, the path both projects use by default.
    Sqlite(std::path::PathBuf),
    Server(ServerDatabase),
}

impl GoDatabase {
    fn url(&self) -> String {
        match self {
            GoDatabase::Sqlite(path) => format!("sqlite:{}", path.display()),
            GoDatabase::Server(db) => db.url.clone(),
        }
    }

    /// The schema DDL for this engine.
    fn schema(&self) -> String {
        let types: &[(&str, &str)] = match self {
            GoDatabase::Sqlite(_) => &[
                ("{ID}", "integer NOT NULL PRIMARY KEY AUTOINCREMENT"),
                ("{TEXT}", "text"),
                ("{INT}", "integer"),
                ("{BOOL}", "integer"),
                ("{TS}", "datetime"),
                ("{NOW}", "(CURRENT_TIMESTAMP)"),
            ],
            GoDatabase::Server(_) => &[
                (
                    "{ID}",
                    "bigint NOT NULL GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
                ),
                ("{TEXT}", "character varying"),
                ("{INT}", "bigint"),
                ("{BOOL}", "boolean"),
                ("{TS}", "timestamptz"),
                ("{NOW}", "CURRENT_TIMESTAMP"),
            ],
        };
        types.iter().fold(GO_SCHEMA.to_owned(), |sql, (from, to)| {
            sql.replace(from, to)
        })
    }

    fn execute(&self, sql: &str) {
        match self {
            GoDatabase::Sqlite(path) => {
                std::fs::create_dir_all(path.parent().expect("db dir")).expect("mkdir db");
                let out = Command::new(ncps_test_services::tool("sqlite3"))
                    .arg(path)
                    .arg(sql)
                    .output()
                    .expect("run sqlite3");
                assert!(
                    out.status.success(),
                    "sqlite3: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            GoDatabase::Server(db) => {
                db.query(sql);
            }
        }
    }

    fn is_sqlite(&self) -> bool {
        matches!(self, GoDatabase::Sqlite(_))
    }
}

/// `dir/<a>/<ab>/<name>`, the Go ncps's sharding.
fn sharded(dir: &str, name: &str) -> String {
    format!("{dir}/{}/{}/{name}", &name[..1], &name[..2])
}

/// Where the Go ncps kept its files: its data directory, or an S3 bucket (`store/…` keys).
enum GoStorage {
    Local,
    S3 {
        services: crate::replicas::Services,
        bucket: String,
    },
}

impl GoStorage {
    fn s3() -> GoStorage {
        let services = crate::replicas::Services::from_env();
        let bucket = services.bucket();
        GoStorage::S3 { services, bucket }
    }

    /// Stores the Go objects (`store/…` keys) where the Go ncps would have.
    async fn put(&self, data_dir: &Path, objects: Vec<(String, Vec<u8>)>) {
        match self {
            GoStorage::Local => {
                for (key, bytes) in objects {
                    let path = data_dir.join(key);
                    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
                    std::fs::write(path, bytes).expect("write");
                }
            }
            GoStorage::S3 { services, bucket } => {
                use object_store::ObjectStore;
                let s3 = object_store::aws::AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_endpoint(&services.s3_endpoint)
                    .with_allow_http(true)
                    .with_virtual_hosted_style_request(false)
                    .with_region("garage")
                    .with_access_key_id(&services.s3_key_id)
                    .with_secret_access_key(&services.s3_secret)
                    .build()
                    .expect("an S3 client");
                for (key, bytes) in objects {
                    s3.put(&object_store::path::Path::from(key), bytes.into())
                        .await
                        .expect("put a Go object");
                }
            }
        }
    }

    /// The storage flags ncps gets.
    fn args(&self) -> Vec<String> {
        match self {
            GoStorage::Local => Vec::new(),
            GoStorage::S3 { services, bucket } => services.s3_args(bucket),
        }
    }
}

/// The Go rows and files for `closure`, as the upstream's file cache holds it (xz NARs):
/// `top` and `leaf` kept as xz files, `middle` uncompressed as the Go ncps keeps upstream
/// uncompressed NARs (a `.nar.zst` file, compression `none`), `blob` as three zstd chunks
/// named by their BLAKE3. Returns the SQL inserting the rows, and the objects to store.
fn lay_out_go_data(
    closure: &Closure,
    upstream_dir: &Path,
    go_key: &str,
    sqlite: bool,
) -> (String, Vec<(String, Vec<u8>)>) {
    let mut sql = String::new();
    let mut objects = Vec::new();
    let versions: Vec<String> = GO_VERSIONS
        .iter()
        .map(|v| format!("({v}, {})", if sqlite { "1" } else { "true" }))
        .collect();
    sql.push_str(&format!(
        "INSERT INTO schema_migrations (version_id, is_applied) VALUES {};\n",
        versions.join(", ")
    ));
    sql.push_str(&format!(
        "INSERT INTO config (id, key, value) VALUES (1, 'secret_key', '{go_key}'), \
         (2, 'cluster_uuid', '0b0e5bd6-3f5c-4c1a-9c1e-1d1f2a3b4c5d');\n"
    ));
    let mut chunk_id = 0;
    for (id, path) in [&closure.top, &closure.middle, &closure.leaf, &closure.blob]
        .into_iter()
        .enumerate()
    {
        let id = id + 1;
        let hash = store_hash(path);
        let narinfo = NarInfo::parse(
            &std::fs::read_to_string(upstream_dir.join(format!("{hash}.narinfo")))
                .expect("upstream narinfo"),
        );
        let xz = std::fs::read(upstream_dir.join(narinfo.field("URL"))).expect("NAR file");
        let mut nar = Vec::new();
        liblzma::read::XzDecoder::new(&xz[..])
            .read_to_end(&mut nar)
            .expect("xz NAR");
        let file_hash = narinfo
            .field("URL")
            .strip_prefix("nar/")
            .and_then(|f| f.strip_suffix(".nar.xz"))
            .expect("an xz NAR URL")
            .to_owned();
        // Chunk rows name their NAR file row: inserted after it.
        let mut chunk_sql = String::new();
        let (url, compression, file_fields, nar_file_size, total_chunks) =
            if path == &closure.top || path == &closure.leaf {
                objects.push((
                    sharded("store/nar", &format!("{file_hash}.nar.xz")),
                    xz.clone(),
                ));
                (
                    format!("nar/{file_hash}.nar.xz"),
                    "xz",
                    format!(
                        "'{}', {}",
                        narinfo.field("FileHash"),
                        narinfo.field("FileSize")
                    ),
                    xz.len(),
                    0,
                )
            } else if path == &closure.middle {
                let zst = zstd::encode_all(&nar[..], 3).expect("zstd");
                objects.push((
                    sharded("store/nar", &format!("{file_hash}.nar.zst")),
                    zst.clone(),
                ));
                (
                    format!("nar/{file_hash}.nar"),
                    "none",
                    "NULL, NULL".into(),
                    zst.len(),
                    0,
                )
            } else {
                let pieces: Vec<&[u8]> = {
                    let third = nar.len() / 3;
                    vec![&nar[..third], &nar[third..2 * third], &nar[2 * third..]]
                };
                for (index, piece) in pieces.iter().enumerate() {
                    chunk_id += 1;
                    let name = blake3::hash(piece).to_hex().to_string();
                    let frame = zstd::encode_all(*piece, 3).expect("zstd");
                    objects.push((sharded("store/chunk", &name), frame.clone()));
                    chunk_sql.push_str(&format!(
                        "INSERT INTO chunks (id, hash, size, compressed_size) VALUES \
                     ({chunk_id}, '{name}', {}, {});\n\
                     INSERT INTO nar_file_chunks (chunk_index, chunk_id, nar_file_id) VALUES \
                     ({index}, {chunk_id}, {id});\n",
                        piece.len(),
                        frame.len()
                    ));
                }
                (
                    format!("nar/{file_hash}.nar"),
                    "none",
                    "NULL, NULL".into(),
                    nar.len(),
                    3,
                )
            };
        let deriver = narinfo
            .get("Deriver")
            .map_or("NULL".to_owned(), |d| format!("'{d}'"));
        sql.push_str(&format!(
            "INSERT INTO narinfos (id, hash, store_path, url, compression, file_hash, file_size, \
             nar_hash, nar_size, deriver) VALUES ({id}, '{hash}', '{path}', '{url}', \
             '{compression}', {file_fields}, '{}', {}, {deriver});\n\
             INSERT INTO nar_files (id, hash, compression, file_size, total_chunks) VALUES \
             ({id}, '{file_hash}', '{compression}', {nar_file_size}, {total_chunks});\n\
             INSERT INTO narinfo_nar_files (nar_file_id, narinfo_id) VALUES ({id}, {id});\n",
            narinfo.field("NarHash"),
            narinfo.field("NarSize"),
        ));
        sql.push_str(&chunk_sql);
        for reference in narinfo.references() {
            sql.push_str(&format!(
                "INSERT INTO narinfo_references (reference, narinfo_id) VALUES ('{reference}', {id});\n"
            ));
        }
        for sig in narinfo.all("Sig") {
            sql.push_str(&format!(
                "INSERT INTO narinfo_signatures (signature, narinfo_id) VALUES ('{sig}', {id});\n"
            ));
        }
    }
    sql.push_str(&format!(
        "INSERT INTO pinned_closures (hash) VALUES ('{}');\n",
        store_hash(&closure.top)
    ));
    let (drv, json) = build_trace(closure);
    sql.push_str(&format!(
        "INSERT INTO build_trace_entries (drv_path, output_name, out_path, raw_json) VALUES \
         ('/nix/store/{drv}', 'out', '{}', '{json}');\n",
        closure.top
    ));
    (sql, objects)
}

/// The build-trace entry of the fixture (the top path as the output of a made-up derivation):
/// its derivation's name and the document as a client uploaded it.
fn build_trace(closure: &Closure) -> (String, String) {
    let drv = format!("{}-e2e-top.drv", store_hash(&closure.top));
    let json = format!(
        "{{\"key\":{{\"drvPath\":\"/nix/store/{drv}\",\"outputName\":\"out\"}},\
         \"value\":{{\"outPath\":\"{}\",\"signatures\":[]}}}}",
        closure.top
    );
    (drv, json)
}

/// How the takeover is driven.
#[derive(PartialEq)]
enum Steps {
    /// `ncps migrate up`, `ncps migrate-narinfo`, then `serve` (nixpkgs' module, Helm, docs).
    Commands,
    /// Only `serve`, as a user who just changed the package would.
    ServeAlone,
}

async fn takes_over(steps: Steps, storage: GoStorage, make_db: impl FnOnce(&Path) -> GoDatabase) {
    let env = TestEnv::new();
    let closure = env.closure().await;
    let upstream_key = env.key("upstream-1").await;
    upstream_key.sign(env.path(), &closure.top).await;
    let upstream = env.upstream(&closure, Compression::Xz).await;
    let upstream_dir = upstream
        .narinfo_file(&closure.top)
        .parent()
        .expect("upstream dir")
        .to_owned();
    let go_key = ncps_nix::SecretKey::generate("go-cache.example").expect("a Go key");
    let go_public = go_key.public_key().to_nix_string();
    let config = env.ncps_config(&[&upstream], &[&upstream_key.public]);
    let db = make_db(&config.data_dir);
    db.execute(&db.schema());
    let (sql, objects) = lay_out_go_data(
        &closure,
        &upstream_dir,
        &go_key.to_nix_string(),
        db.is_sqlite(),
    );
    db.execute(&sql);
    storage.put(&config.data_dir, objects).await;
    // From here on the upstream answers nothing: what ncps serves comes from the Go data.
    upstream.fail_all(true);
    let url = db.url();
    let mut args = vec!["--cache-database-url".to_owned(), url];
    args.extend(storage.args());
    let db_args: Vec<&str> = args.iter().map(String::as_str).collect();

    if steps == Steps::Commands {
        // As nixpkgs' module and the Helm chart run it before `serve`.
        let mut argv: Vec<std::ffi::OsString> = vec!["migrate".into(), "up".into()];
        argv.extend(config.storage_args());
        argv.extend(db_args.iter().map(Into::into));
        let migrate = NcpsRun::run(env.path(), &argv).await;
        assert!(migrate.status.success(), "{migrate}");
        assert!(
            migrate.output.contains("Go ncps"),
            "no word of the Go tables:\n{migrate}"
        );
        let import = env.ncps_admin("migrate-narinfo", &config, &db_args).await;
        assert!(import.status.success(), "{import}");
        assert!(
            import.output.contains("4 paths imported")
                && import.output.contains("1 pins kept")
                && import.output.contains("1 build traces kept"),
            "{import}"
        );
        let again = env.ncps_admin("migrate-narinfo", &config, &db_args).await;
        assert!(again.status.success(), "{again}");
        assert!(
            again.output.contains("4 already cached"),
            "a second run redid work:\n{again}"
        );
    }
    let ncps = env.ncps(&config.with_args(&db_args)).await;
    if steps == Steps::ServeAlone {
        let blob = format!("{}.narinfo", store_hash(&closure.blob));
        eventually("the background import", || async {
            match http::get(&ncps.url_for(&blob)).await.status {
                200 => Ok(()),
                s => Err(format!("status {s}")),
            }
        })
        .await;
    }
    let pubkey = http::get(&ncps.url_for("pubkey"))
        .await
        .expect_status(200, "pubkey")
        .text();
    assert_eq!(
        pubkey.trim(),
        go_public,
        "clients would need to trust a new key"
    );
    let client = env.client();
    client
        .copy_from(&ncps.url(), &go_public, &closure.top)
        .await
        .expect_success();
    assert_eq!(
        client.closure(&closure.top).await.as_deref(),
        Some(&closure.paths[..])
    );
    let (drv, json) = build_trace(&closure);
    let trace = eventually("the Go build trace", || async {
        let resp = http::get(&ncps.url_for(&format!("build-trace-v2/{drv}/out"))).await;
        match resp.status {
            200 => Ok(resp.text()),
            s => Err(format!("status {s}")),
        }
    })
    .await;
    assert_eq!(trace, json);
    let pins = env.ncps_admin("pins", &config, &db_args).await;
    assert!(
        pins.output.contains(store_hash(&closure.top)),
        "the Go pin was lost:\n{pins}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_go_sqlite_deployment_is_taken_over() {
    takes_over(Steps::Commands, GoStorage::Local, |data_dir| {
        GoDatabase::Sqlite(data_dir.join("db/db.sqlite"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_go_postgres_deployment_is_taken_over() {
    let server = ncps_test_services::postgres_url();
    takes_over(Steps::Commands, GoStorage::Local, |_| {
        GoDatabase::Server(ServerDatabase::create(server))
    })
    .await;
}

/// A user who only changes the package: `serve` alone moves the Go tables aside, keeps the key
/// and imports the paths in the background.
#[tokio::test(flavor = "multi_thread")]
async fn serve_alone_takes_over_a_go_deployment() {
    takes_over(Steps::ServeAlone, GoStorage::Local, |data_dir| {
        GoDatabase::Sqlite(data_dir.join("db/db.sqlite"))
    })
    .await;
}

/// The replica shape of a Go deployment: its database on PostgreSQL, its NARs and chunks in an
/// S3 bucket (`store/nar/…`, `store/chunk/…` keys); ncps on the same database and bucket.
#[tokio::test(flavor = "multi_thread")]
async fn a_go_postgres_and_s3_deployment_is_taken_over_on_s3() {
    let server = ncps_test_services::postgres_url();
    takes_over(Steps::Commands, GoStorage::s3(), |_| {
        GoDatabase::Server(ServerDatabase::create(server))
    })
    .await;
}
