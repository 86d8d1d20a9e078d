//! The `ncps` binary under test, as a child process.

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::http;
use super::unique_dir;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on a one-shot run of the binary (a migration, a start that must fail).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// How to run ncps; reused as is to restart on the same data directory.
#[derive(Clone)]
pub struct NcpsConfig {
    /// Also the name of the signing key ncps generates.
    pub hostname: String,
    pub data_dir: PathBuf,
    pub temp_dir: PathBuf,
    pub upstreams: Vec<String>,
    pub public_keys: Vec<String>,
    /// More `serve` flags, appended after the ones above (e.g. `--cache-cdc-enabled`).
    pub extra_args: Vec<String>,
    /// Give everything above as environment variables (`CACHE_HOSTNAME`, …) instead of flags;
    /// `extra_env` then carries what `extra_args` would.
    pub via_environment: bool,
    /// With `via_environment`: the Go ncps's deprecated variable names where it has them
    /// (`CACHE_DATA_PATH`, `UPSTREAM_CACHES`, `UPSTREAM_PUBLIC_KEYS`).
    pub deprecated_env_names: bool,
    /// More environment variables for `serve`.
    pub extra_env: Vec<(String, String)>,
    /// Start `serve` with this soft limit of open files (the hard limit unchanged), as a
    /// distribution's default of 1,024 would.
    pub soft_fd_limit: Option<u64>,
    /// Start as `ncps --config FILE serve --server-addr ADDR` and nothing else: the whole
    /// configuration comes from the file (as nixpkgs' module starts ncps), but the address a
    /// test must choose.
    pub config_file: Option<PathBuf>,
}

impl NcpsConfig {
    /// The single number `sql` selects from ncps's SQLite database, read with the `sqlite3`
    /// CLI (a missing CLI fails the test).
    pub fn sqlite_count(&self, sql: &str) -> u64 {
        let db = self.data_dir.join("db").join("db.sqlite");
        let output = Command::new(ncps_test_services::tool("sqlite3"))
            .arg(&db)
            .arg(sql)
            .output()
            .unwrap_or_else(|e| panic!("run sqlite3: {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "sqlite3 {} {sql:?} failed: {}",
            db.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("sqlite3 {sql:?} printed {stdout:?}"))
    }

    /// This configuration with `args` appended to its `serve` flags.
    pub fn with_args(&self, args: &[&str]) -> NcpsConfig {
        let mut config = self.clone();
        config
            .extra_args
            .extend(args.iter().map(|a| (*a).to_owned()));
        config
    }

    /// The flags that say where the cache lives; `serve` and the migrations share them.
    pub fn storage_args(&self) -> Vec<OsString> {
        vec![
            "--cache-hostname".into(),
            self.hostname.clone().into(),
            "--cache-storage-local".into(),
            self.data_dir.clone().into(),
            "--cache-temp-path".into(),
            self.temp_dir.clone().into(),
        ]
    }

    /// The environment variables that configure `serve` like [`NcpsConfig::serve_args`]
    /// does with flags, listening on `addr`.
    pub fn serve_env(&self, addr: SocketAddr) -> Vec<(String, String)> {
        let path = |p: &PathBuf| p.to_string_lossy().into_owned();
        let name = |current: &str, deprecated: &str| {
            if self.deprecated_env_names {
                deprecated.to_owned()
            } else {
                current.to_owned()
            }
        };
        let mut env = vec![
            ("CACHE_HOSTNAME".to_owned(), self.hostname.clone()),
            (
                name("CACHE_STORAGE_LOCAL", "CACHE_DATA_PATH"),
                path(&self.data_dir),
            ),
            ("CACHE_TEMP_PATH".to_owned(), path(&self.temp_dir)),
            ("SERVER_ADDR".to_owned(), addr.to_string()),
            (
                name("CACHE_UPSTREAM_URLS", "UPSTREAM_CACHES"),
                self.upstreams.join(","),
            ),
            (
                name("CACHE_UPSTREAM_PUBLIC_KEYS", "UPSTREAM_PUBLIC_KEYS"),
                self.public_keys.join(","),
            ),
        ];
        env.extend(self.extra_env.iter().cloned());
        env
    }

    /// `serve` with every flag of this configuration, listening on `addr`.
    pub fn serve_args(&self, addr: SocketAddr) -> Vec<OsString> {
        if let Some(file) = &self.config_file {
            return vec![
                "--config".into(),
                file.into(),
                "serve".into(),
                "--server-addr".into(),
                addr.to_string().into(),
            ];
        }
        if self.via_environment {
            return vec!["serve".into()];
        }
        let mut args: Vec<OsString> = vec!["serve".into()];
        args.extend(self.storage_args());
        args.extend(["--server-addr".into(), addr.to_string().into()]);
        for url in &self.upstreams {
            args.extend(["--cache-upstream-url".into(), url.into()]);
        }
        for key in &self.public_keys {
            args.extend(["--cache-upstream-public-key".into(), key.into()]);
        }
        args.extend(self.extra_args.iter().map(OsString::from));
        args
    }

    /// Whole NAR files in storage (`<data dir>/store/nar/…`).
    pub fn whole_nar_files(&self) -> Vec<(PathBuf, u64)> {
        files_under(&self.data_dir.join("store").join("nar"))
    }

    /// Chunk files in storage (`<data dir>/store/chunks/…`), with their sizes.
    pub fn chunk_files(&self) -> Vec<(PathBuf, u64)> {
        files_under(&self.data_dir.join("store").join("chunks"))
    }
}

/// Every regular file below `dir` (none when `dir` does not exist), with its size, sorted.
fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            // A file may vanish between listing and stat (a server is running): skip it.
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() {
                files.push((entry.path(), meta.len()));
            }
        }
    }
    files.sort();
    files
}

/// A command running the ncps binary in a clean environment: no CACHE_*/SERVER_* settings,
/// proxies or config files leak in.
fn ncps_command(work: &Path) -> Command {
    ncps_command_limited(work, None)
}

/// [`ncps_command`], started under a soft limit of open files when one is given.
fn ncps_command_limited(work: &Path, soft_fd_limit: Option<u64>) -> Command {
    let ncps = env!("CARGO_BIN_EXE_ncps");
    let mut cmd = match soft_fd_limit {
        // prlimit sets the limit and then executes ncps in its own process.
        Some(limit) => {
            let mut cmd = Command::new("prlimit");
            cmd.arg(format!("--nofile={limit}:")).arg("--").arg(ncps);
            cmd
        }
        None => Command::new(ncps),
    };
    cmd.env_clear();
    for keep in ["PATH", "HOME", "TMPDIR", "RUST_LOG"] {
        if let Some(value) = std::env::var_os(keep) {
            cmd.env(keep, value);
        }
    }
    cmd.env("XDG_CONFIG_HOME", unique_dir(work, "ncps-config"))
        .env("LOG_LEVEL", "debug")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null());
    cmd
}

/// What a one-shot run of the ncps binary did.
pub struct NcpsRun {
    pub command: String,
    pub status: ExitStatus,
    /// stdout and stderr, interleaved.
    pub output: String,
}

impl NcpsRun {
    /// Runs the binary with `args` until it exits (killed, and a panic, after a bound).
    pub async fn run(work: &Path, args: &[OsString]) -> NcpsRun {
        let output_file = unique_dir(work, "ncps-run").join("output");
        let output = File::create(&output_file).expect("create ncps output file");
        let command = format!(
            "ncps {}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut child = ncps_command(work)
            .args(args)
            .stdout(output.try_clone().expect("clone output handle"))
            .stderr(output)
            .spawn()
            .expect("spawn ncps");
        let read_output = || std::fs::read_to_string(&output_file).unwrap_or_default();
        let deadline = Instant::now() + RUN_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("poll ncps") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "`{command}` did not exit within {RUN_TIMEOUT:?}; output:\n{}",
                    read_output()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        NcpsRun {
            command,
            status,
            output: read_output(),
        }
    }

    /// Panics with the whole transcript unless the command succeeded.
    pub fn expect_success(self) -> Self {
        assert!(self.status.success(), "ncps command failed:\n{self}");
        self
    }
}

impl fmt::Display for NcpsRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "$ {}\n[{}]\n--- output ---\n{}",
            self.command, self.status, self.output
        )
    }
}

pub struct Ncps {
    child: Option<Child>,
    addr: SocketAddr,
    log_file: PathBuf,
}

impl Ncps {
    /// Starts ncps on a free port of 127.0.0.1 and waits until `/healthz` answers 200.
    pub async fn start(work: &Path, config: &NcpsConfig) -> Ncps {
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            let mut ncps = Ncps::spawn(work, config);
            match ncps.wait_ready().await {
                Ok(()) => return ncps,
                // Another process may have taken the port between our probe and ncps's bind.
                Err(_) if attempt < ATTEMPTS && ncps.log().contains("in use") => continue,
                // Dropping `ncps` while panicking prints its log.
                Err(why) => panic!("ncps did not become ready: {why}"),
            }
        }
        unreachable!("the last attempt panics or returns")
    }

    fn spawn(work: &Path, config: &NcpsConfig) -> Ncps {
        let addr = free_port();
        let log_file = unique_dir(work, "ncps-log").join("ncps.log");
        let log = File::create(&log_file).expect("create ncps log");
        let mut command = ncps_command_limited(work, config.soft_fd_limit);
        if config.via_environment {
            command.envs(config.serve_env(addr));
        } else {
            command.envs(config.extra_env.iter().cloned());
        }
        let child = command
            .args(config.serve_args(addr))
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn ncps");
        Ncps {
            child: Some(child),
            addr,
            log_file,
        }
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("reqwest client");
        let url = self.url_for("healthz");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child_mut().try_wait().expect("poll ncps") {
                return Err(format!("ncps exited with {status}"));
            }
            match client.get(&url).send().await {
                Ok(resp) if resp.status() == 200 => return Ok(()),
                _ if Instant::now() > deadline => {
                    return Err(format!("GET {url} not 200 within {READY_TIMEOUT:?}"));
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("ncps already terminated")
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `host:port`, for raw requests.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    /// The absolute URL of a path relative to the cache root (as narinfo `URL`s are).
    pub fn url_for(&self, rel: &str) -> String {
        if rel.starts_with("http://") || rel.starts_with("https://") {
            rel.to_owned()
        } else {
            format!("{}/{}", self.url(), rel.trim_start_matches('/'))
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// ncps's public key (`name:base64`), from `GET /pubkey`.
    /// ncps's narinfo for `store_path`, once ncps answers it with 200 (right after start the
    /// upstreams may still be probed).
    pub async fn narinfo_eventually(&self, store_path: &str) -> super::NarInfo {
        let url = self.url_for(&format!(
            "{}.narinfo",
            super::narinfo::store_hash(store_path)
        ));
        super::eventually("the narinfo", || async {
            let resp = http::get(&url).await;
            match resp.status {
                200 => Ok(super::NarInfo::parse(&resp.text())),
                s => Err(format!("status {s}")),
            }
        })
        .await
    }

    pub async fn pubkey(&self) -> String {
        let resp = http::get(&self.url_for("pubkey"))
            .await
            .expect_ok_with_length("GET /pubkey");
        resp.text().trim().to_owned()
    }

    /// The names of the process's threads (`/proc/PID/task/*/comm`).
    pub fn thread_names(&self) -> Vec<String> {
        let pid = self.child.as_ref().expect("ncps already terminated").id();
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("read the process's threads")
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .map(|name| name.trim_end().to_owned())
            .collect()
    }

    /// SIGKILL, as a crash would: nothing is cleaned up. The process is gone afterwards.
    pub fn kill(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("ncps already terminated");
        child.kill().expect("kill -9 ncps");
        child.wait().expect("wait for ncps")
    }

    /// SIGTERM, then waits for the exit (bounded). The process is gone afterwards.
    pub async fn terminate(&mut self) -> ExitStatus {
        let pid = self.child_mut().id().to_string();
        let kill = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(kill.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + TERMINATE_TIMEOUT;
        loop {
            if let Some(status) = self.child_mut().try_wait().expect("poll ncps") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "ncps did not exit within {TERMINATE_TIMEOUT:?} of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Ncps {
    #[expect(clippy::print_stderr, reason = "test diagnostics")]
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "===== ncps {} log ({}) =====\n{}\n===== end of ncps log =====",
                self.addr,
                self.log_file.display(),
                self.log()
            );
        }
    }
}

/// A port that was free a moment ago (bind to port 0, read it, drop the socket).
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("probe a free port")
}
