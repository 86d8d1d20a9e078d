//! `ncps serve`: open the parts, start the jobs, listen.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ncps_core::maintenance::Maintenance;
use ncps_core::{
    Cache, CacheConfig, CdcConfig, JobsConfig, LocalLocks, LockService, LruConfig, Schedule,
    UploadConfig, defaults,
};
use ncps_db::Database;
use ncps_locks::{PostgresLocks, RedisLocks};
use ncps_nix::PublicKey;
use ncps_server::{AccessConfig, ConnectionLimits, ServerOptions};
use ncps_store::BlobStore;
use ncps_upstream::{UpstreamOptions, Upstreams};
use tracing::{debug, info, warn};

use crate::cli::{AccessArgs, LockArgs, LockBackendKind, LruArgs, ServeArgs, UpstreamArgs};
use crate::{listen, open_files, setup, shutdown};

/// The upstream users get when they configure none.
const DEFAULT_UPSTREAM: &str = "https://cache.nixos.org";
/// cache.nixos.org's public key, trusted by default alongside the default upstream.
const DEFAULT_UPSTREAM_KEY: &str = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";
/// How long in-flight requests may take to finish after SIGTERM before the process exits anyway
/// (systemd's default stop timeout is 90 s; finish well before it kills us).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Imports what a Go ncps left in this database and data directory while serving (as
/// `ncps migrate-narinfo` does): paths not imported yet are fetched from upstreams meanwhile.
fn spawn_go_import(maintenance: Maintenance, db: Database, store: BlobStore) {
    tokio::spawn(async move {
        info!("importing the Go ncps's paths in the background");
        let mut report = |skipped: bool, line: String| {
            if skipped {
                warn!(path = %line, "a Go ncps path was not imported");
            } else {
                debug!("{line}");
            }
        };
        match super::go_import::run(&maintenance, &db, &store, &[], false, &mut report).await {
            Ok(t) => info!(
                imported = t.imported,
                already_cached = t.present,
                skipped = t.skipped,
                pins = t.pins,
                build_traces = t.build_traces,
                "imported the Go ncps's paths"
            ),
            Err(e) => warn!(
                error = format!("{e:#}"),
                "importing the Go ncps's paths stopped; `ncps migrate-narinfo` resumes it"
            ),
        }
    });
}

/// Runs the server until SIGTERM/SIGINT, then drains in-flight requests.
pub async fn run(args: ServeArgs, prometheus: bool) -> Result<()> {
    let open_files_limit = open_files::raise_limit();
    // Settings checked before anything is created: a start that fails leaves nothing behind.
    let upstreams = upstreams(&args.upstream)?;
    let parts = setup::open(&args.storage, setup::Create::Yes).await?;
    let cdc = if args.cdc.cache_cdc_enabled {
        Some(CdcConfig {
            chunking: setup::chunk_settings(&parts.db, &args.cdc).await?,
            lazy: args.cdc_jobs.cache_cdc_lazy_chunking_enabled,
            delete_delay: args.cdc_jobs.cache_cdc_delete_delay,
            lazy_zstd_level: args.cdc_jobs.cache_cdc_lazy_zstd_level,
        })
    } else {
        None
    };
    let data_dir = parts.data_dir.clone();
    let hostname = parts.hostname.clone();
    let config = CacheConfig {
        sign_narinfo: args.cache_sign_narinfo,
        priority: defaults::PRIORITY,
        cdc,
        uploads: upload_rules(&args.access)?,
        locks: lock_backend(&args.locks, parts.database_url.as_str())?,
        download_lock_ttl: args.locks.cache_lock_download_ttl,
        prefetch: args.cache_upstream_prefetch,
        ..CacheConfig::new(parts.secret_key, parts.temp_dir)
    };
    let (db, store) = (parts.db.clone(), parts.store.clone());
    let cache = Cache::new(config, parts.db, parts.store, upstreams);
    if super::go_import::pending(&db).await? {
        spawn_go_import(cache.maintenance().clone(), db, store);
    }
    cache.status().spawn_sampler();
    cache.maintenance().spawn_jobs(JobsConfig {
        chunk_workers: args.cdc_jobs.cache_cdc_background_workers,
        recovery_schedule: Schedule::parse(
            &args.cdc_jobs.cache_cdc_lazy_recovery_schedule,
            "Local",
        )?,
        recovery_batch: args.cdc_jobs.cache_cdc_lazy_recovery_batch_size,
        gc_interval: defaults::CDC_GC_INTERVAL,
        gc_grace: args.cdc_jobs.cache_cdc_gc_grace,
        lru: lru_config(&args.lru)?,
    });
    let listener = listen::bind(&args.server_addr).await?;
    info!(
        addr = %listener.local_addr()?,
        data_dir = %data_dir.display(),
        public_key = %cache.reader().public_key().to_nix_string(),
        chunking = cdc.is_some(),
        lazy = cdc.is_some_and(|c| c.lazy),
        "ncps is serving"
    );
    let access = AccessConfig {
        allow_put: args.access.cache_allow_put_verb,
        allow_delete: args.access.cache_allow_delete_verb,
        get_token: args
            .access
            .cache_get_token
            .clone()
            .filter(|t| !t.is_empty()),
        put_token: args
            .access
            .cache_put_token
            .clone()
            .filter(|t| !t.is_empty()),
    };
    let maintenance = cache.maintenance().clone();
    let options = ServerOptions {
        access,
        prometheus,
        hostname,
    };
    let router = ncps_server::router(cache, options);
    let limits = ConnectionLimits {
        drain: DRAIN_TIMEOUT,
        ..ConnectionLimits::new(open_files::max_connections(open_files_limit))
    };
    info!(
        open_files = open_files_limit,
        max_connections = limits.max_connections,
        "connection limits"
    );
    ncps_server::serve(listener, router, limits, shutdown::signal_received()).await;
    // Accesses since the last periodic flush would otherwise be lost to eviction.
    maintenance.flush_access_times().await;
    info!("stopped");
    Ok(())
}

/// The lock backend in force: the one named, except that Redis addresses with the backend
/// left at `local` mean Redis, as in the Go ncps (older Go set-ups give only the addresses;
/// silently taking local locks there would let replicas download and evict over each other).
fn effective_backend(args: &LockArgs) -> LockBackendKind {
    let has_redis = args.cache_redis_addrs.iter().any(|a| !a.trim().is_empty());
    if args.cache_lock_backend == LockBackendKind::Local && has_redis {
        warn!(
            "--cache-redis-addrs is set but --cache-lock-backend is local: using Redis, as the \
             Go ncps does; set --cache-lock-backend=redis to say so"
        );
        return LockBackendKind::Redis;
    }
    args.cache_lock_backend
}

/// The lock service `--cache-lock-backend` names.
fn lock_backend(args: &LockArgs, database_url: &str) -> Result<Arc<dyn LockService>> {
    Ok(match effective_backend(args) {
        LockBackendKind::Redis => {
            let Some(addr) = args.cache_redis_addrs.iter().find(|a| !a.trim().is_empty()) else {
                bail!("--cache-lock-backend=redis requires --cache-redis-addrs");
            };
            let scheme = if args.cache_redis_use_tls {
                "rediss"
            } else {
                "redis"
            };
            let auth = match (&args.cache_redis_username, &args.cache_redis_password) {
                (Some(user), Some(password)) => format!("{user}:{password}@"),
                (None, Some(password)) => format!(":{password}@"),
                (Some(user), None) => format!("{user}@"),
                (None, None) => String::new(),
            };
            info!(addr, db = args.cache_redis_db, "using Redis locks");
            let url = format!("{scheme}://{auth}{addr}/{}", args.cache_redis_db);
            Arc::new(RedisLocks::new(&url, &args.cache_lock_redis_key_prefix)?)
        }
        LockBackendKind::Postgres => {
            if !(database_url.starts_with("postgres://")
                || database_url.starts_with("postgresql://"))
            {
                bail!("--cache-lock-backend=postgres needs a postgres:// --cache-database-url");
            }
            info!("using PostgreSQL advisory locks");
            Arc::new(PostgresLocks::new(
                database_url,
                &args.cache_lock_postgres_key_prefix,
            )?)
        }
        LockBackendKind::Local => Arc::new(LocalLocks::default()),
    })
}

fn lru_config(args: &LruArgs) -> Result<Option<LruConfig>> {
    match (&args.cache_lru_schedule, args.cache_max_size) {
        (None, None) => Ok(None),
        (Some(_), None) => {
            bail!("--cache-max-size is required when --cache-lru-schedule is specified")
        }
        (schedule, Some(max_size)) => {
            // A size limit without a schedule is enforced hourly, so it is never ignored.
            let expr = schedule.as_deref().unwrap_or("@hourly");
            let schedule = Schedule::parse(expr, &args.cache_lru_schedule_timezone)?;
            info!(max_size, schedule = expr, timezone = %args.cache_lru_schedule_timezone, "LRU eviction configured");
            Ok(Some(LruConfig { schedule, max_size }))
        }
    }
}

fn upload_rules(args: &AccessArgs) -> Result<UploadConfig> {
    let trusted_keys = args
        .cache_trusted_upload_keys
        .iter()
        .map(|k| PublicKey::parse(k).with_context(|| format!("invalid trusted upload key {k:?}")))
        .collect::<Result<Vec<_>>>()?;
    if args.cache_require_trusted_signature && trusted_keys.is_empty() {
        warn!(
            "--cache-require-trusted-signature without --cache-trusted-upload-key: every upload will be refused"
        );
    }
    Ok(UploadConfig {
        require_trusted_signature: args.cache_require_trusted_signature,
        trusted_keys,
        max_size: args.cache_max_upload_size,
    })
}

/// Builds the upstreams from the flags and starts their health checks. No flag at all means
/// cache.nixos.org with its key; only empty values (`--cache-upstream-url ''`) mean none.
fn upstreams(args: &UpstreamArgs) -> Result<Upstreams> {
    /// Reads the netrc file: the one given, else `~/.netrc` if present. A file given but
    /// missing is a warning, as in the Go ncps (whose configurations name one out of habit);
    /// one that exists but cannot be read or parsed is an error, never silently ignored.
    fn netrc(given: Option<&std::path::Path>) -> Result<Option<ncps_upstream::Netrc>> {
        let path = match given {
            Some(path) if !path.exists() => {
                warn!(path = %path.display(), "the netrc file does not exist; upstreams get no credentials from it");
                return Ok(None);
            }
            Some(path) => path.to_path_buf(),
            None => {
                match std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".netrc")) {
                    Some(path) if path.is_file() => path,
                    _ => return Ok(None),
                }
            }
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read netrc file {}", path.display()))?;
        let netrc =
            ncps_upstream::Netrc::parse(&text).with_context(|| format!("in {}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path)?.permissions().mode();
            if mode & 0o077 != 0 {
                warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "the netrc file holds passwords but others may read it; chmod 600 it");
            }
        }
        info!(path = %path.display(), "credentials for upstreams read from netrc");
        Ok(Some(netrc))
    }

    let non_empty = |v: &[String]| -> Vec<String> {
        v.iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    };
    let mut urls = non_empty(&args.cache_upstream_urls);
    let mut key_texts = non_empty(&args.cache_upstream_public_keys);
    if args.cache_upstream_urls.is_empty() {
        urls.push(DEFAULT_UPSTREAM.to_string());
        key_texts.push(DEFAULT_UPSTREAM_KEY.to_string());
    }
    let keys = key_texts
        .iter()
        .map(|k| PublicKey::parse(k).with_context(|| format!("invalid upstream public key {k:?}")))
        .collect::<Result<Vec<_>>>()?;
    if keys.is_empty() && !urls.is_empty() && !args.cache_upstream_allow_unverified {
        bail!(
            "no --cache-upstream-public-key given: ncps only re-signs upstream paths whose \
             signature it can check; pass the upstream's public key (name:base64), or \
             --cache-upstream-allow-unverified to take them unchecked"
        );
    }
    let netrc = if urls.is_empty() {
        None
    } else {
        netrc(args.netrc_file.as_deref())?
    };
    let options = UpstreamOptions {
        dialer_timeout: args.cache_upstream_dialer_timeout,
        response_header_timeout: args.cache_upstream_response_header_timeout,
        stall_timeout: args.cache_upstream_stall_timeout,
        negative_ttl: args.cache_upstream_negative_ttl,
        lookup: args.cache_upstream_lookup.into(),
        netrc: netrc.map(std::sync::Arc::new),
        allow_unverified: args.cache_upstream_allow_unverified,
        ..UpstreamOptions::default()
    };
    let upstreams = Upstreams::new(&urls, keys, &options)?;
    for u in upstreams.list() {
        info!(
            upstream = u.url(),
            auth = u.auth_scheme().unwrap_or("none"),
            "upstream configured"
        );
    }
    if upstreams.is_empty() {
        info!("no upstream configured: the cache serves what is uploaded, every miss is a 404");
    }
    upstreams.start();
    Ok(upstreams)
}
