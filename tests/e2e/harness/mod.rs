//! Shared set-up: Nix helpers, the upstream cache, the ncps process, HTTP and narinfo helpers.
//!
//! Every test owns a [`TestEnv`] (its own temp dir, ports, store paths and processes), so tests
//! run in parallel. Processes are killed on drop; when a test panics, the ncps log and the
//! upstream's request log are printed.

pub mod browser;
pub mod http;
pub mod narinfo;
pub mod ncps;
pub mod nix;
pub mod server_db;
pub mod upload;
pub mod upstream;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tempfile::TempDir;

pub use self::narinfo::NarInfo;
pub use self::ncps::{Ncps, NcpsConfig, NcpsRun};
pub use self::nix::{Closure, Compression, NixClient, SigningKey};
pub use self::server_db::ServerDatabase;
pub use self::upstream::Upstream;

/// The name ncps signs with (it is also its `--cache-hostname`).
pub const NCPS_HOSTNAME: &str = "ncps-e2e.test";

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    bytes
}

pub fn random_hex(n: usize) -> String {
    random_bytes(n).iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates and returns a new directory `parent/prefix-N`.
pub fn unique_dir(parent: &Path, prefix: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = parent.join(format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&dir).expect("create dir");
    dir
}

/// Retries `attempt` until it succeeds (at most 50 times, 100 ms apart), for effects that may
/// trail the response that caused them: a NAR is stored just after its download has been
/// streamed to the client, and a download that started before the upstream was fixed still
/// ends broken. Panics with the errors if it never succeeds.
pub async fn eventually<T, F, Fut>(what: &str, attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    eventually_within(what, Duration::from_secs(5), attempt).await
}

/// Like [`eventually`], for effects of background work: retries `attempt` every 100 ms until it
/// succeeds, for at most `limit`.
pub async fn eventually_within<T, F, Fut>(what: &str, limit: Duration, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = std::time::Instant::now() + limit;
    let mut errors = Vec::new();
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(error) => errors.push(error),
        }
        if std::time::Instant::now() > deadline {
            panic!(
                "{what}: failed {} times within {limit:?}; first: {}; last: {}",
                errors.len(),
                errors[0],
                errors[errors.len() - 1]
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One test's private world, rooted in a temp dir removed at the end.
pub struct TestEnv {
    dir: TempDir,
}

impl TestEnv {
    pub fn new() -> TestEnv {
        TestEnv {
            dir: tempfile::Builder::new()
                .prefix("ncps-e2e-")
                .disable_cleanup(std::env::var_os("NCPS_KEEP").is_some())
                .tempdir()
                .expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub async fn closure(&self) -> Closure {
        Closure::build(self.path()).await
    }

    /// A fresh closure whose blob holds `blob_bytes` random bytes.
    pub async fn closure_with_blob(&self, blob_bytes: usize) -> Closure {
        Closure::build_with_blob(self.path(), blob_bytes).await
    }

    pub async fn key(&self, name: &str) -> SigningKey {
        SigningKey::generate(self.path(), name).await
    }

    /// Writes `closure` as a binary-cache directory with `nix copy --to file://` and serves it.
    pub async fn upstream(&self, closure: &Closure, compression: Compression) -> Upstream {
        self.upstream_of(&[&closure.top], compression).await
    }

    /// Writes the closures of `tops` into one binary-cache directory and serves it.
    pub async fn upstream_of(&self, tops: &[&str], compression: Compression) -> Upstream {
        let dir = unique_dir(self.path(), "upstream-cache");
        for top in tops {
            nix::copy_to_file_cache(self.path(), top, &dir, compression).await;
        }
        Upstream::serve(&dir).await
    }

    /// ncps in front of `upstreams`, trusting narinfos signed by one of `keys`.
    pub fn ncps_config(&self, upstreams: &[&Upstream], keys: &[&str]) -> NcpsConfig {
        NcpsConfig {
            hostname: NCPS_HOSTNAME.to_owned(),
            data_dir: unique_dir(self.path(), "ncps-data"),
            temp_dir: unique_dir(self.path(), "ncps-tmp"),
            upstreams: upstreams.iter().map(|u| u.url()).collect(),
            public_keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            extra_args: Vec::new(),
            via_environment: false,
            deprecated_env_names: false,
            extra_env: Vec::new(),
            soft_fd_limit: None,
            config_file: None,
        }
    }

    pub async fn ncps(&self, config: &NcpsConfig) -> Ncps {
        Ncps::start(self.path(), config).await
    }

    /// Runs `ncps serve` with `config` where it is expected to refuse to start: returns once
    /// the process exited (it is killed, and the test fails, if it keeps running).
    pub async fn ncps_expecting_exit(&self, config: &NcpsConfig) -> NcpsRun {
        NcpsRun::run(self.path(), &config.serve_args(ncps::free_port())).await
    }

    /// Runs an admin command (`migrate-nar-to-chunks`, …) on `config`'s storage, with `args`
    /// after the storage flags, until it exits.
    pub async fn ncps_admin(&self, command: &str, config: &NcpsConfig, args: &[&str]) -> NcpsRun {
        let mut argv = vec![command.into()];
        argv.extend(config.storage_args());
        argv.extend(args.iter().map(Into::into));
        NcpsRun::run(self.path(), &argv).await
    }

    /// A Nix client with a fresh, empty store.
    pub fn client(&self) -> NixClient {
        NixClient::new(self.path())
    }
}

/// The usual set-up: a fresh closure signed by the upstream's key, served by the upstream,
/// and ncps in front of it trusting that key.
// Fields drop in order: processes stop before the temp dir goes.
pub struct Fixture {
    pub ncps: Ncps,
    pub upstream: Upstream,
    pub config: NcpsConfig,
    pub upstream_key: SigningKey,
    pub closure: Closure,
    pub env: TestEnv,
}

/// Variations on the usual set-up.
pub struct FixtureOptions {
    pub compression: Compression,
    /// Size of the closure's random blob.
    pub blob_bytes: usize,
    /// Extra `serve` flags.
    pub ncps_args: Vec<String>,
}

impl FixtureOptions {
    pub fn new(compression: Compression) -> FixtureOptions {
        FixtureOptions {
            compression,
            blob_bytes: nix::BLOB_BYTES,
            ncps_args: Vec::new(),
        }
    }

    pub fn blob_bytes(mut self, blob_bytes: usize) -> FixtureOptions {
        self.blob_bytes = blob_bytes;
        self
    }

    pub fn ncps_args(mut self, args: &[&str]) -> FixtureOptions {
        self.ncps_args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }
}

impl Fixture {
    pub async fn new(compression: Compression) -> Fixture {
        Fixture::with(FixtureOptions::new(compression)).await
    }

    pub async fn with(options: FixtureOptions) -> Fixture {
        let env = TestEnv::new();
        let closure = env.closure_with_blob(options.blob_bytes).await;
        let upstream_key = env.key("upstream-1").await;
        upstream_key.sign(env.path(), &closure.top).await;
        let upstream = env.upstream(&closure, options.compression).await;
        let mut config = env.ncps_config(&[&upstream], &[&upstream_key.public]);
        config.extra_args = options.ncps_args;
        let ncps = env.ncps(&config).await;
        Fixture {
            ncps,
            upstream,
            config,
            upstream_key,
            closure,
            env,
        }
    }

    /// What the upstream's NAR files of the closure weigh (the sum of their FileSize): the bytes
    /// a cold substitution fetches.
    pub fn upstream_file_bytes(&self) -> u64 {
        self.closure
            .paths
            .iter()
            .map(|p| {
                self.upstream
                    .narinfo(p)
                    .field("FileSize")
                    .parse::<u64>()
                    .expect("FileSize")
            })
            .sum()
    }

    /// GET ncps's narinfo for `store_path`, which must be a 200.
    pub async fn ncps_narinfo(&self, store_path: &str) -> NarInfo {
        let url = self.narinfo_url(store_path);
        let resp = http::get(&url)
            .await
            .expect_ok_with_length(&format!("GET {url}"));
        NarInfo::parse(&resp.text())
    }

    /// Where ncps keeps `store_path`'s NAR as a whole file: named by the FileHash its narinfo
    /// gives, in the compression of its URL (it need not exist).
    pub async fn stored_nar_file(&self, store_path: &str) -> std::path::PathBuf {
        let narinfo = self.ncps_narinfo(store_path).await;
        let file_hash = narinfo
            .field("FileHash")
            .strip_prefix("sha256:")
            .expect("a sha256 FileHash")
            .to_owned();
        let url = narinfo.field("URL");
        let extension = &url[url.find(".nar").expect("a NAR URL")..];
        self.config
            .data_dir
            .join("store/nar")
            .join(format!("{file_hash}{extension}"))
    }

    pub fn narinfo_url(&self, store_path: &str) -> String {
        self.ncps
            .url_for(&format!("{}.narinfo", narinfo::store_hash(store_path)))
    }

    /// The absolute URL of the NAR a narinfo from ncps points at.
    pub fn nar_url(&self, narinfo: &NarInfo) -> String {
        self.ncps.url_for(narinfo.field("URL"))
    }
}
