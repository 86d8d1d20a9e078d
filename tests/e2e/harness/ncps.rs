//! The `ncps` binary under test, as a child process.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::http;
use super::unique_dir;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(20);

/// How to run ncps; reused as is to restart on the same data directory.
#[derive(Clone)]
pub struct NcpsConfig {
    /// Also the name of the signing key ncps generates.
    pub hostname: String,
    pub data_dir: PathBuf,
    pub temp_dir: PathBuf,
    pub upstreams: Vec<String>,
    pub public_keys: Vec<String>,
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
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ncps"));
        cmd.arg("serve")
            .arg("--cache-hostname")
            .arg(&config.hostname)
            .arg("--cache-storage-local")
            .arg(&config.data_dir)
            .arg("--cache-temp-path")
            .arg(&config.temp_dir)
            .arg("--server-addr")
            .arg(addr.to_string());
        for url in &config.upstreams {
            cmd.arg("--cache-upstream-url").arg(url);
        }
        for key in &config.public_keys {
            cmd.arg("--cache-upstream-public-key").arg(key);
        }
        // A clean environment: no CACHE_*/SERVER_* settings, proxies or config files leak in.
        cmd.env_clear();
        for keep in ["PATH", "HOME", "TMPDIR", "RUST_LOG"] {
            if let Some(value) = std::env::var_os(keep) {
                cmd.env(keep, value);
            }
        }
        cmd.env("XDG_CONFIG_HOME", unique_dir(work, "ncps-config"))
            .env("LOG_LEVEL", "debug")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        let child = cmd.spawn().expect("spawn ncps");
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
    pub async fn pubkey(&self) -> String {
        let resp = http::get(&self.url_for("pubkey"))
            .await
            .expect_ok_with_length("GET /pubkey");
        resp.text().trim().to_owned()
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
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("probe a free port")
}
