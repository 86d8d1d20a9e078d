//! `ncps serve`: resolve settings, open the parts, listen.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use ncps_core::{Cache, CacheConfig};
use ncps_db::Database;
use ncps_nix::PublicKey;
use ncps_store::BlobStore;
use ncps_upstream::{UpstreamOptions, Upstreams};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::cli::ServeArgs;
use crate::{keys, shutdown};

/// The upstream users get when they configure none.
const DEFAULT_UPSTREAM: &str = "https://cache.nixos.org";
/// cache.nixos.org's public key, trusted by default alongside the default upstream.
const DEFAULT_UPSTREAM_KEY: &str = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";
/// Priority we announce: the same as cache.nixos.org, which clients usually list beside us.
const PRIORITY: u32 = 40;
/// How long in-flight requests may take to finish after SIGTERM before the process exits anyway
/// (systemd's default stop timeout is 90 s; finish well before it kills us).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Leftover downloads older than this are from a crashed run and are removed at start.
const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);

/// Runs the server until SIGTERM/SIGINT, then drains in-flight requests.
pub async fn run(args: ServeArgs) -> Result<()> {
    let data_dir = match &args.cache_storage_local {
        Some(dir) => dir.clone(),
        None => default_data_dir()?,
    };
    let hostname = match &args.cache_hostname {
        Some(h) if !h.trim().is_empty() => h.trim().to_string(),
        _ => system_hostname(),
    };
    let temp_dir = args
        .cache_temp_path
        .clone()
        .unwrap_or_else(|| data_dir.join("tmp"));
    std::fs::create_dir_all(&temp_dir)
        .with_context(|| format!("cannot create temp directory {}", temp_dir.display()))?;
    remove_stale_downloads(&temp_dir);

    let secret_key = match &args.cache_secret_key_path {
        Some(path) => keys::load_or_generate(path, None)?,
        None => keys::load_or_generate(&data_dir.join("secret.key"), Some(&hostname))?,
    };
    let database_url = args
        .cache_database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite:{}", data_dir.join("db").join("db.sqlite").display()));
    let db = Database::open(&database_url)
        .await
        .context("cannot open the database")?;
    let store = BlobStore::local(&data_dir.join("store"))?;
    let upstreams = upstreams(&args)?;

    let cache = Cache::new(
        CacheConfig {
            secret_key,
            sign_narinfo: args.cache_sign_narinfo,
            temp_dir,
            priority: PRIORITY,
        },
        db,
        store,
        upstreams,
    );
    let listener = bind(&args.server_addr).await?;
    info!(
        addr = %listener.local_addr()?,
        data_dir = %data_dir.display(),
        public_key = %cache.public_key().to_nix_string(),
        "ncps is serving"
    );
    let stopping = std::sync::Arc::new(tokio::sync::Notify::new());
    let notify = stopping.clone();
    let server =
        axum::serve(listener, ncps_server::router(cache)).with_graceful_shutdown(async move {
            shutdown::signal_received().await;
            notify.notify_one();
        });
    tokio::select! {
        result = server => result.context("server failed")?,
        () = async {
            stopping.notified().await;
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        } => warn!(timeout = ?DRAIN_TIMEOUT, "requests still in flight after the drain timeout; exiting"),
    }
    info!("stopped");
    Ok(())
}

fn upstreams(args: &ServeArgs) -> Result<Upstreams> {
    let mut urls = args.cache_upstream_urls.clone();
    let mut key_texts = args.cache_upstream_public_keys.clone();
    if urls.is_empty() {
        urls.push(DEFAULT_UPSTREAM.to_string());
        key_texts.push(DEFAULT_UPSTREAM_KEY.to_string());
    }
    let keys = key_texts
        .iter()
        .map(|k| PublicKey::parse(k).with_context(|| format!("invalid upstream public key {k:?}")))
        .collect::<Result<Vec<_>>>()?;
    if keys.is_empty() {
        bail!(
            "no --cache-upstream-public-key given: ncps only re-signs upstream paths whose \
             signature it can check; pass the upstream's public key (name:base64)"
        );
    }
    let options = UpstreamOptions {
        dialer_timeout: args.cache_upstream_dialer_timeout,
        response_header_timeout: args.cache_upstream_response_header_timeout,
        ..UpstreamOptions::default()
    };
    let upstreams = Upstreams::new(&urls, keys, &options)?;
    for u in upstreams.list() {
        info!(upstream = u.url(), "upstream configured");
    }
    Ok(upstreams)
}

/// `$XDG_DATA_HOME/ncps`, or `/var/lib/ncps` for root (a system service's usual place).
fn default_data_dir() -> Result<PathBuf> {
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("ncps"));
    }
    if is_root() {
        return Ok(PathBuf::from("/var/lib/ncps"));
    }
    let home = std::env::var_os("HOME")
        .context("cannot find a data directory: set --cache-storage-local")?;
    Ok(PathBuf::from(home).join(".local/share/ncps"))
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ncps".to_string())
}

/// Binds `host:port`; the Go form `:port` listens on every interface (IPv6 and IPv4 where the
/// system allows, IPv4 otherwise).
async fn bind(addr: &str) -> Result<TcpListener> {
    if let Some(port) = addr.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .with_context(|| format!("invalid --server-addr {addr:?}"))?;
        let any6 = SocketAddr::from(([0u16; 8], port));
        return match TcpListener::bind(any6).await {
            Ok(l) => Ok(l),
            Err(_) => TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port)))
                .await
                .with_context(|| format!("cannot listen on {addr}")),
        };
    }
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// Deletes temporary download files a crashed run left behind.
fn remove_stale_downloads(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("nar-") {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > STALE_TEMP_AGE);
        if old {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => info!(file = %entry.path().display(), "removed stale download"),
                Err(e) => {
                    warn!(file = %entry.path().display(), error = %e, "cannot remove stale download")
                }
            }
        }
    }
}
