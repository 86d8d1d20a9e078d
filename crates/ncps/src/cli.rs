//! The command line: flags, their environment variables, and their config-file keys, with the
//! names and precedence of the Go ncps (flag, then config file, then environment, then default)
//! so that switching implementations needs no configuration change.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use ncps_core::defaults;
use ncps_store::ChunkParams;
use ncps_upstream::{LookupStrategy, UpstreamOptions};

use crate::{config_file, duration, size};

/// Nix binary cache proxy: caches, re-signs and serves store paths from upstream caches.
#[derive(Debug, Parser)]
#[command(name = "ncps", version, about, max_term_width = 100)]
pub struct Cli {
    /// Path to the configuration file (YAML, TOML or JSON, by extension). Loaded when it
    /// exists; default $XDG_CONFIG_HOME/ncps/config.yaml.
    #[arg(long, env = "NCPS_CONFIG_FILE", global = true)]
    pub config: Option<PathBuf>,

    /// Log level: trace, debug, info, warn or error.
    #[arg(
        long,
        env = "LOG_LEVEL",
        value_enum,
        ignore_case = true,
        default_value_t = LogLevel::Info,
        global = true
    )]
    pub log_level: LogLevel,

    /// Serve Prometheus metrics at /metrics.
    #[arg(
        long,
        env = "PROMETHEUS_ENABLED",
        global = true,
        default_value = "false",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new(),
        action = ArgAction::Set
    )]
    pub prometheus_enabled: bool,

    /// Export traces and metrics with OpenTelemetry, over OTLP/gRPC to --otel-grpc-url.
    #[arg(
        long,
        env = "OTEL_ENABLED",
        global = true,
        default_value = "false",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new(),
        action = ArgAction::Set
    )]
    pub otel_enabled: bool,

    /// OpenTelemetry collector (OTLP/gRPC): http://HOST:PORT for plain gRPC, https://HOST:PORT
    /// or HOST:PORT for TLS. Default $OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4317.
    #[arg(long, env = "OTEL_GRPC_URL", global = true, hide_env_values = true)]
    pub otel_grpc_url: Option<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

// The values of these enums carry no doc comments: clap would show each as the value's help,
// which switches the whole of `--help` to its long layout. Their meaning is in the flag's help.

/// `--log-level`: the Go ncps's (zerolog's) level names, so a configuration written for it
/// keeps working; any other value is an error at start-up. `warning`, `fatal`, `panic` and
/// `disabled` (alias `off`) are accepted too but not listed: `fatal` and `panic` log errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    #[value(alias = "warning")]
    Warn,
    #[value(alias = "fatal", alias = "panic")]
    Error,
    #[value(hide = true, alias = "off")]
    Disabled,
}

/// `--cache-lock-backend`: how replicas coordinate (in-process, Redis or PostgreSQL locks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LockBackendKind {
    Local,
    Redis,
    Postgres,
}

/// `--cache-upstream-lookup`: the command-line names of [`LookupStrategy`], which the upstream
/// crate keeps free of clap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum UpstreamLookup {
    Parallel,
    Sequential,
}

impl From<UpstreamLookup> for LookupStrategy {
    fn from(lookup: UpstreamLookup) -> Self {
        match lookup {
            UpstreamLookup::Parallel => Self::Parallel,
            UpstreamLookup::Sequential => Self::Sequential,
        }
    }
}

/// The flag's default is the library's, named the flag's way.
impl From<LookupStrategy> for UpstreamLookup {
    fn from(strategy: LookupStrategy) -> Self {
        match strategy {
            LookupStrategy::Parallel => Self::Parallel,
            LookupStrategy::Sequential => Self::Sequential,
        }
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the Nix binary cache over HTTP.
    #[command(visible_alias = "s")]
    Serve(Box<ServeArgs>),
    /// Store every NAR kept as a whole file as content-defined chunks (resumable; safe while a
    /// server runs on the same data).
    MigrateNarToChunks(Box<MigrateArgs>),
    /// Rebuild a whole file for every NAR kept only as chunks, verifying each against its
    /// NarHash before switching over (resumable; safe while a server runs).
    MigrateChunksToNar(Box<MigrateArgs>),
    /// Apply pending database migrations and print the schema version (every command also
    /// migrates on start; this does it explicitly, e.g. before rolling out new replicas).
    /// `migrate up` is the same (the Go ncps's name); `migrate down` is refused.
    Migrate(Box<MigrateCommand>),
    /// Import a file binary cache (`nix copy --to file://DIR`, or the Go ncps's storage):
    /// every narinfo's NAR is verified and stored (resumable; safe while a server runs).
    MigrateNarinfo(Box<MigrateNarinfoArgs>),
    /// Check the database against storage (missing, truncated and stray files, broken chunk
    /// lists, unservable narinfos); exits 1 while problems remain.
    Fsck(Box<FsckArgs>),
    /// Generate a signing key pair in Nix's format and print the public key.
    GenerateKey(Box<GenerateKeyArgs>),
    /// Pin store paths (and their reference closures) so eviction never removes them.
    Pin(Box<PinArgs>),
    /// Remove pins.
    Unpin(Box<PinArgs>),
    /// List the pinned store paths.
    Pins(Box<AdminArgs>),
    /// Fill a running cache with closures before clients ask for them (e.g. before a fleet
    /// upgrade): fetches every narinfo and NAR of the closures through the cache, over HTTP.
    Warm(Box<WarmArgs>),
}

/// Flags of `ncps warm`.
#[derive(Debug, Args)]
pub struct WarmArgs {
    /// The cache to warm (its URL, as clients use it).
    #[arg(long)]
    pub url: url::Url,

    /// Store paths to warm with their closures (`/nix/store/<hash>-<name>`, `<hash>-<name>` or
    /// `<hash>`); `-` reads them from stdin, one per line (e.g. `nix path-info -r` output).
    pub paths: Vec<String>,

    /// Also read store paths from this file, one per line.
    #[arg(long)]
    pub from_file: Option<PathBuf>,

    /// Paths fetched at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: u32,

    /// Read token of the cache, when it has one (sent as `Authorization: Bearer`).
    #[arg(long, env = "CACHE_GET_TOKEN", hide_env_values = true)]
    pub cache_get_token: Option<String>,
}

/// Where the cache keeps its data: shared by every command that opens it.
#[derive(Debug, Args)]
#[command(next_help_heading = "Storage, database and signing key")]
pub struct StorageArgs {
    /// Name of this cache; also the name of a generated signing key. Default: the machine's
    /// hostname.
    #[arg(long, env = "CACHE_HOSTNAME")]
    pub cache_hostname: Option<String>,

    /// Data directory for storage, the embedded database and the generated key. Default:
    /// $XDG_DATA_HOME/ncps, or /var/lib/ncps when running as root.
    #[arg(long, env = "CACHE_STORAGE_LOCAL", visible_alias = "cache-data-path")]
    pub cache_storage_local: Option<PathBuf>,

    /// Database URL: sqlite:PATH (default sqlite:<data dir>/db/db.sqlite),
    /// postgres://USER:PASSWORD@HOST:PORT/DB (or postgresql://) or
    /// mysql://USER:PASSWORD@HOST:PORT/DB (MySQL 8 and MariaDB). See docs/databases.md.
    #[arg(long, env = "CACHE_DATABASE_URL", hide_env_values = true)]
    pub cache_database_url: Option<String>,

    /// Most database connections a replica opens (default: SQLite 8, PostgreSQL/MySQL 32).
    #[arg(long, env = "CACHE_DATABASE_POOL_MAX_OPEN_CONNS")]
    pub cache_database_pool_max_open_conns: Option<u32>,

    /// Database connections kept open while idle (default: SQLite 2, PostgreSQL/MySQL 8).
    #[arg(long, env = "CACHE_DATABASE_POOL_MAX_IDLE_CONNS")]
    pub cache_database_pool_max_idle_conns: Option<u32>,

    /// Secret key file (Nix format) used to sign narinfos. Default: <data dir>/secret.key,
    /// generated on first start.
    #[arg(long, env = "CACHE_SECRET_KEY_PATH")]
    pub cache_secret_key_path: Option<PathBuf>,

    /// Directory for downloads in progress. Default: <data dir>/tmp (same file system as the
    /// storage, and not a RAM-backed /tmp).
    #[arg(long, env = "CACHE_TEMP_PATH")]
    pub cache_temp_path: Option<PathBuf>,

    /// S3 bucket to keep NARs and chunks in instead of the data directory (which then holds
    /// only the SQLite database, the generated key and temporary files).
    #[arg(long, env = "CACHE_STORAGE_S3_BUCKET")]
    pub cache_storage_s3_bucket: Option<String>,

    /// S3-compatible endpoint URL with scheme (e.g. http://127.0.0.1:3900); AWS when unset.
    #[arg(long, env = "CACHE_STORAGE_S3_ENDPOINT")]
    pub cache_storage_s3_endpoint: Option<String>,

    /// S3 region (default us-east-1).
    #[arg(long, env = "CACHE_STORAGE_S3_REGION")]
    pub cache_storage_s3_region: Option<String>,

    /// S3 access key id.
    #[arg(long, env = "CACHE_STORAGE_S3_ACCESS_KEY_ID")]
    pub cache_storage_s3_access_key_id: Option<String>,

    /// S3 secret access key.
    #[arg(
        long,
        env = "CACHE_STORAGE_S3_SECRET_ACCESS_KEY",
        hide_env_values = true
    )]
    pub cache_storage_s3_secret_access_key: Option<String>,

    /// Path-style S3 addressing (endpoint/bucket/key), needed by MinIO, Garage and most
    /// self-hosted servers.
    #[arg(
        long,
        env = "CACHE_STORAGE_S3_FORCE_PATH_STYLE",
        default_value = "false",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new(),
        action = ArgAction::Set
    )]
    pub cache_storage_s3_force_path_style: bool,

    /// Google Cloud Storage bucket for NARs and chunks (instead of the data directory's store).
    /// Credentials from --cache-storage-gcs-credentials-file or the environment
    /// (`GOOGLE_APPLICATION_CREDENTIALS`, the metadata server).
    #[arg(long, env = "CACHE_STORAGE_GCS_BUCKET")]
    pub cache_storage_gcs_bucket: Option<String>,

    /// Google Cloud service account key file (JSON).
    #[arg(long, env = "CACHE_STORAGE_GCS_CREDENTIALS_FILE")]
    pub cache_storage_gcs_credentials_file: Option<String>,

    /// Azure Blob storage container for NARs and chunks (instead of the data directory's
    /// store). Account and credentials from the flags below or the environment
    /// (`AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`, …).
    #[arg(long, env = "CACHE_STORAGE_AZURE_CONTAINER")]
    pub cache_storage_azure_container: Option<String>,

    /// Azure storage account.
    #[arg(long, env = "CACHE_STORAGE_AZURE_ACCOUNT")]
    pub cache_storage_azure_account: Option<String>,

    /// Azure storage account access key.
    #[arg(long, env = "CACHE_STORAGE_AZURE_ACCESS_KEY", hide_env_values = true)]
    pub cache_storage_azure_access_key: Option<String>,

    /// Azure Blob endpoint URL (default https://<account>.blob.core.windows.net).
    #[arg(long, env = "CACHE_STORAGE_AZURE_ENDPOINT")]
    pub cache_storage_azure_endpoint: Option<String>,
}

/// The zstd levels a chunk may be compressed at, for both chunking levels: zstd's regular
/// levels, 1 to 19 (20 to 22 are its "ultra" levels, slower still for no gain on chunks).
fn zstd_levels() -> clap::builder::RangedI64ValueParser<i32> {
    clap::value_parser!(i32).range(1..=19)
}

/// Content-defined chunking.
#[derive(Debug, Args)]
#[command(next_help_heading = "Chunking")]
pub struct CdcArgs {
    /// Store NARs as content-defined chunks (FastCDC, one zstd frame per chunk, deduplicated
    /// across NARs).
    #[arg(
        long,
        env = "CACHE_CDC_ENABLED",
        default_value = "false",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new(),
        action = ArgAction::Set
    )]
    pub cache_cdc_enabled: bool,

    /// Minimum chunk size in bytes.
    #[arg(long, env = "CACHE_CDC_MIN", default_value_t = ChunkParams::default().min)]
    pub cache_cdc_min: u32,

    /// Average chunk size in bytes.
    #[arg(long, env = "CACHE_CDC_AVG", default_value_t = ChunkParams::default().avg)]
    pub cache_cdc_avg: u32,

    /// Maximum chunk size in bytes.
    #[arg(long, env = "CACHE_CDC_MAX", default_value_t = ChunkParams::default().max)]
    pub cache_cdc_max: u32,

    /// zstd level of each chunk (1 keeps ingest above 300 MB/s per core; higher saves a few
    /// percent of storage for much more CPU).
    #[arg(
        long,
        env = "CACHE_CDC_ZSTD_LEVEL",
        default_value_t = defaults::CDC_ZSTD_LEVEL,
        value_parser = zstd_levels()
    )]
    pub cache_cdc_zstd_level: i32,
}

/// Lazy chunking and the chunk store's background jobs.
#[derive(Debug, Args)]
#[command(next_help_heading = "Chunking jobs")]
pub struct CdcJobArgs {
    /// Store NARs whole first (serving them at once) and chunk them in the background.
    #[arg(
        long,
        env = "CACHE_CDC_LAZY_CHUNKING_ENABLED",
        default_value = "false",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new(),
        action = ArgAction::Set
    )]
    pub cache_cdc_lazy_chunking_enabled: bool,

    /// Background chunking workers (lazy mode).
    #[arg(
        long,
        env = "CACHE_CDC_BACKGROUND_WORKERS",
        default_value_t = defaults::CDC_BACKGROUND_WORKERS
    )]
    pub cache_cdc_background_workers: usize,

    /// zstd level of the chunks lazy chunking makes in the background. No client waits for
    /// them, so the default compresses harder than --cache-cdc-zstd-level: less storage for CPU
    /// spent on at most --cache-cdc-background-workers cores.
    #[arg(
        long,
        env = "CACHE_CDC_LAZY_ZSTD_LEVEL",
        default_value_t = defaults::CDC_LAZY_ZSTD_LEVEL,
        value_parser = zstd_levels()
    )]
    pub cache_cdc_lazy_zstd_level: i32,

    /// How long a whole file is kept after its chunks are complete (Go duration).
    #[arg(
        long,
        env = "CACHE_CDC_DELETE_DELAY",
        default_value = duration::format(defaults::CDC_DELETE_DELAY),
        value_parser = duration::parse
    )]
    pub cache_cdc_delete_delay: Duration,

    /// When to look for interrupted lazy chunking and resume it (cron expression, @hourly-style
    /// descriptor, or @every <duration>).
    #[arg(
        long,
        env = "CACHE_CDC_LAZY_RECOVERY_SCHEDULE",
        default_value = defaults::CDC_LAZY_RECOVERY_SCHEDULE,
        value_parser = duration::parse_schedule
    )]
    pub cache_cdc_lazy_recovery_schedule: String,

    /// NARs resumed per recovery run.
    #[arg(
        long,
        env = "CACHE_CDC_LAZY_RECOVERY_BATCH_SIZE",
        default_value_t = defaults::CDC_LAZY_RECOVERY_BATCH
    )]
    pub cache_cdc_lazy_recovery_batch_size: u32,

    /// How long an unreferenced chunk is kept before it is deleted (Go duration).
    #[arg(
        long,
        env = "CACHE_CDC_GC_GRACE",
        default_value = duration::format(defaults::CDC_GC_GRACE),
        value_parser = duration::parse
    )]
    pub cache_cdc_gc_grace: Duration,
}

/// Upstream caches.
#[derive(Debug, Args)]
#[command(next_help_heading = "Upstreams")]
pub struct UpstreamArgs {
    /// Upstream cache URL (repeatable). Asked in the order of the Priority each announces in
    /// its nix-cache-info (then in the order given). Default https://cache.nixos.org; an empty
    /// value (--cache-upstream-url '') means no upstream at all: a cache fed by uploads only.
    /// Credentials may be given as user info (https://user:pass@host) or in the netrc file.
    #[arg(
        long = "cache-upstream-url",
        env = "CACHE_UPSTREAM_URLS",
        hide_env_values = true,
        value_delimiter = ',',
        visible_alias = "upstream-cache"
    )]
    pub cache_upstream_urls: Vec<String>,

    /// Public key trusted for upstream narinfos, as name:base64 (repeatable). Upstream
    /// narinfos without a valid signature from one of these are refused.
    #[arg(
        long = "cache-upstream-public-key",
        env = "CACHE_UPSTREAM_PUBLIC_KEYS",
        value_delimiter = ',',
        visible_alias = "upstream-public-key"
    )]
    pub cache_upstream_public_keys: Vec<String>,

    /// Timeout for connecting to an upstream (Go duration, e.g. 3s).
    #[arg(
        long,
        env = "CACHE_UPSTREAM_DIALER_TIMEOUT",
        default_value = duration::format(UpstreamOptions::default().dialer_timeout),
        value_parser = duration::parse,
        visible_alias = "upstream-dialer-timeout"
    )]
    pub cache_upstream_dialer_timeout: Duration,

    /// Timeout for an upstream's response headers (Go duration, e.g. 3s).
    #[arg(
        long,
        env = "CACHE_UPSTREAM_RESPONSE_HEADER_TIMEOUT",
        default_value = duration::format(UpstreamOptions::default().response_header_timeout),
        value_parser = duration::parse,
        visible_alias = "upstream-response-header-timeout"
    )]
    pub cache_upstream_response_header_timeout: Duration,

    /// Timeout for an upstream body that stops sending (Go duration): a stalled NAR download
    /// is abandoned (and nothing cached) after this long without a byte.
    #[arg(
        long,
        env = "CACHE_UPSTREAM_STALL_TIMEOUT",
        default_value = duration::format(UpstreamOptions::default().stall_timeout),
        value_parser = duration::parse
    )]
    pub cache_upstream_stall_timeout: Duration,

    /// How long a store path that every upstream answered 404 for is remembered, sparing the
    /// upstreams repeated misses (Go duration; 0 disables). At most 100000 paths are kept.
    #[arg(
        long,
        env = "CACHE_UPSTREAM_NEGATIVE_TTL",
        default_value = duration::format(UpstreamOptions::default().negative_ttl),
        value_parser = duration::parse
    )]
    pub cache_upstream_negative_ttl: Duration,

    /// How a narinfo miss asks several upstreams: "parallel" (all healthy ones at once, the
    /// best priority that has the path wins: a miss costs the slowest round trip) or
    /// "sequential" (one after the other: fewest requests, slowest misses).
    #[arg(
        long,
        env = "CACHE_UPSTREAM_LOOKUP",
        value_enum,
        default_value_t = UpstreamLookup::from(LookupStrategy::default())
    )]
    pub cache_upstream_lookup: UpstreamLookup,

    /// Take narinfos from upstreams that no --cache-upstream-public-key applies to without
    /// checking their signatures (the Go ncps's behaviour). Off by default: such an upstream
    /// stops ncps at start, since it would re-sign whatever that upstream (or anyone between)
    /// sends.
    #[arg(
        long,
        env = "CACHE_UPSTREAM_ALLOW_UNVERIFIED",
        default_value = "false",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new(),
        action = ArgAction::Set
    )]
    pub cache_upstream_allow_unverified: bool,

    /// netrc file with credentials for private upstreams, matched by host (and port):
    /// "machine HOST login USER password PASS" for Basic auth, "login bearer" to send the
    /// password as a bearer token. Default ~/.netrc when it exists.
    #[arg(long, env = "NETRC_FILE")]
    pub netrc_file: Option<PathBuf>,
}

/// Flags of `ncps serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Storage, database and key.
    #[command(flatten)]
    pub storage: StorageArgs,

    /// Upstream caches.
    #[command(flatten)]
    pub upstream: UpstreamArgs,

    /// Chunking.
    #[command(flatten)]
    pub cdc: CdcArgs,

    /// Chunking jobs.
    #[command(flatten)]
    pub cdc_jobs: CdcJobArgs,

    /// Start downloading a NAR as soon as its narinfo is fetched from upstream, so the
    /// client's NAR request that follows finds it already arriving.
    #[arg(
        long,
        env = "CACHE_UPSTREAM_PREFETCH",
        default_value_t = defaults::UPSTREAM_PREFETCH,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new(),
        action = ArgAction::Set
    )]
    pub cache_upstream_prefetch: bool,

    /// Sign narinfos with our key (false: pass upstream signatures through unchanged).
    #[arg(
        long,
        env = "CACHE_SIGN_NARINFO",
        default_value_t = defaults::SIGN_NARINFO,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new(),
        action = ArgAction::Set
    )]
    pub cache_sign_narinfo: bool,

    /// Address to listen on, host:port; ":8501" means every interface.
    #[arg(long, env = "SERVER_ADDR", default_value = ":8501")]
    pub server_addr: String,

    /// Uploads, deletions and tokens.
    #[command(flatten)]
    pub access: AccessArgs,

    /// Size limit and eviction.
    #[command(flatten)]
    pub lru: LruArgs,

    /// Locks shared by replicas.
    #[command(flatten)]
    pub locks: LockArgs,
}

/// How replicas coordinate (downloads, eviction, garbage collection).
#[derive(Debug, Args)]
#[command(next_help_heading = "Locks")]
pub struct LockArgs {
    /// Lock backend: local (one replica), redis (distributed, needs --cache-redis-addrs) or
    /// postgres (distributed, advisory locks on the PostgreSQL database).
    #[arg(
        long,
        env = "CACHE_LOCK_BACKEND",
        value_enum,
        default_value_t = LockBackendKind::Local
    )]
    pub cache_lock_backend: LockBackendKind,

    /// Redis address host:port (repeatable; the first is used — Redis Cluster is not supported).
    #[arg(
        long = "cache-redis-addrs",
        env = "CACHE_REDIS_ADDRS",
        value_delimiter = ','
    )]
    pub cache_redis_addrs: Vec<String>,

    /// Redis username (ACL).
    #[arg(long, env = "CACHE_REDIS_USERNAME")]
    pub cache_redis_username: Option<String>,

    /// Redis password.
    #[arg(long, env = "CACHE_REDIS_PASSWORD", hide_env_values = true)]
    pub cache_redis_password: Option<String>,

    /// Redis database number.
    #[arg(long, env = "CACHE_REDIS_DB", default_value = "0")]
    pub cache_redis_db: u32,

    /// Connect to Redis over TLS.
    #[arg(
        long,
        env = "CACHE_REDIS_USE_TLS",
        default_value = "false",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new(),
        action = ArgAction::Set
    )]
    pub cache_redis_use_tls: bool,

    /// Prefix of every Redis lock key.
    #[arg(
        long,
        env = "CACHE_LOCK_REDIS_KEY_PREFIX",
        default_value = defaults::LOCK_KEY_PREFIX
    )]
    pub cache_lock_redis_key_prefix: String,

    /// Prefix hashed into every PostgreSQL advisory lock id.
    #[arg(
        long,
        env = "CACHE_LOCK_POSTGRES_KEY_PREFIX",
        default_value = defaults::LOCK_KEY_PREFIX
    )]
    pub cache_lock_postgres_key_prefix: String,

    /// How long a download lock lives without renewal: a replica that dies mid-download loses
    /// it after this, and another replica takes over.
    #[arg(
        long,
        env = "CACHE_LOCK_DOWNLOAD_TTL",
        default_value = duration::format(defaults::DOWNLOAD_LOCK_TTL),
        value_parser = duration::parse
    )]
    pub cache_lock_download_ttl: Duration,
}

/// Least-recently-used eviction.
#[derive(Debug, Args)]
#[command(next_help_heading = "Eviction")]
pub struct LruArgs {
    /// The most the cache may store (units K, M, G, T); evicted down to it by the LRU job.
    #[arg(long, env = "CACHE_MAX_SIZE", value_parser = size::parse)]
    pub cache_max_size: Option<u64>,

    /// When the LRU job runs: a cron expression (e.g. "0 2 * * *"), an @hourly-style
    /// descriptor, or @every <duration>. Needs --cache-max-size.
    #[arg(long, env = "CACHE_LRU_SCHEDULE", value_parser = duration::parse_schedule)]
    pub cache_lru_schedule: Option<String>,

    /// Time zone of the LRU schedule: Local, UTC, or an IANA name such as Europe/Berlin.
    #[arg(long, env = "CACHE_LRU_SCHEDULE_TZ", default_value = "Local")]
    pub cache_lru_schedule_timezone: String,
}

/// Who may upload, delete and read.
#[derive(Debug, Args)]
#[command(next_help_heading = "Uploads and access")]
pub struct AccessArgs {
    /// Accept uploads: `nix copy --to http://…` (PUT of narinfos, NARs and build logs).
    #[arg(
        long,
        env = "CACHE_ALLOW_PUT_VERB",
        visible_alias = "allow-put",
        default_value = "false",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new(),
        action = ArgAction::Set
    )]
    pub cache_allow_put_verb: bool,

    /// Accept DELETE of narinfos and NARs.
    #[arg(
        long,
        env = "CACHE_ALLOW_DELETE_VERB",
        visible_alias = "allow-delete",
        default_value = "false",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new(),
        action = ArgAction::Set
    )]
    pub cache_allow_delete_verb: bool,

    /// Require uploaded narinfos, realisations and build-trace entries to carry a signature
    /// from a --cache-trusted-upload-key (refused with 403 otherwise; with no key configured
    /// every upload is refused). Build logs cannot be signed and are refused.
    #[arg(
        long,
        env = "CACHE_REQUIRE_TRUSTED_SIGNATURE",
        default_value_t = defaults::REQUIRE_TRUSTED_SIGNATURE,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = BoolishValueParser::new(),
        action = ArgAction::Set
    )]
    pub cache_require_trusted_signature: bool,

    /// Public key (name:base64) whose signature makes an uploaded narinfo trusted (repeatable).
    #[arg(
        long = "cache-trusted-upload-key",
        env = "CACHE_TRUSTED_UPLOAD_KEYS",
        value_delimiter = ','
    )]
    pub cache_trusted_upload_keys: Vec<String>,

    /// Largest NAR upload accepted (units K, M, G, T).
    #[arg(
        long,
        env = "CACHE_MAX_UPLOAD_SIZE",
        default_value = size::format(defaults::MAX_UPLOAD_SIZE),
        value_parser = size::parse
    )]
    pub cache_max_upload_size: u64,

    /// Token required to read (Authorization: Bearer, or the password of Basic auth as Nix sends
    /// from a netrc file). /healthz and /metrics stay open.
    #[arg(long, env = "CACHE_GET_TOKEN", hide_env_values = true)]
    pub cache_get_token: Option<String>,

    /// Token required to upload or delete (defaults to the read token when only that is set).
    #[arg(long, env = "CACHE_PUT_TOKEN", hide_env_values = true)]
    pub cache_put_token: Option<String>,
}

/// Flags of the migration commands: the cache to open and the chunking in force.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Storage, database and key.
    #[command(flatten)]
    pub storage: StorageArgs,

    /// Chunking (the parameters must match those the cache was chunked with).
    #[command(flatten)]
    pub cdc: CdcArgs,

    /// NARs taken from the database per round.
    #[arg(long, default_value_t = defaults::MIGRATE_BATCH)]
    pub batch_size: u32,

    /// Only report how many NARs (and bytes) the migration would move; nothing changes.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = BoolishValueParser::new(), action = ArgAction::Set, default_value = "false")]
    pub dry_run: bool,
}

/// Config-file key of each flag, by clap argument id. A test checks every flag has one.
const CONFIG_KEYS: &[(&str, &str)] = &[
    ("log_level", "log.level"),
    ("prometheus_enabled", "prometheus.enabled"),
    ("otel_enabled", "opentelemetry.enabled"),
    ("otel_grpc_url", "opentelemetry.grpc-url"),
    ("cache_hostname", "cache.hostname"),
    ("cache_storage_local", "cache.storage.local"),
    ("cache_storage_s3_bucket", "cache.storage.s3.bucket"),
    ("cache_storage_s3_endpoint", "cache.storage.s3.endpoint"),
    ("cache_storage_s3_region", "cache.storage.s3.region"),
    (
        "cache_storage_s3_access_key_id",
        "cache.storage.s3.access-key-id",
    ),
    (
        "cache_storage_s3_secret_access_key",
        "cache.storage.s3.secret-access-key",
    ),
    (
        "cache_storage_s3_force_path_style",
        "cache.storage.s3.force-path-style",
    ),
    ("cache_storage_gcs_bucket", "cache.storage.gcs.bucket"),
    (
        "cache_storage_gcs_credentials_file",
        "cache.storage.gcs.credentials-file",
    ),
    (
        "cache_storage_azure_container",
        "cache.storage.azure.container",
    ),
    ("cache_storage_azure_account", "cache.storage.azure.account"),
    (
        "cache_storage_azure_access_key",
        "cache.storage.azure.access-key",
    ),
    (
        "cache_storage_azure_endpoint",
        "cache.storage.azure.endpoint",
    ),
    ("cache_database_url", "cache.database-url"),
    (
        "cache_database_pool_max_open_conns",
        "cache.database.pool.max-open-conns",
    ),
    (
        "cache_database_pool_max_idle_conns",
        "cache.database.pool.max-idle-conns",
    ),
    ("cache_upstream_urls", "cache.upstream.urls"),
    ("cache_upstream_public_keys", "cache.upstream.public-keys"),
    ("cache_secret_key_path", "cache.secret-key-path"),
    ("cache_sign_narinfo", "cache.sign-narinfo"),
    ("cache_upstream_prefetch", "cache.upstream.prefetch"),
    ("cache_temp_path", "cache.temp-path"),
    (
        "cache_upstream_dialer_timeout",
        "cache.upstream.dialer-timeout",
    ),
    (
        "cache_upstream_response_header_timeout",
        "cache.upstream.response-header-timeout",
    ),
    ("server_addr", "server.addr"),
    ("cache_lock_backend", "cache.lock.backend"),
    ("cache_redis_addrs", "cache.redis.addrs"),
    ("cache_redis_username", "cache.redis.username"),
    ("cache_redis_password", "cache.redis.password"),
    ("cache_redis_db", "cache.redis.db"),
    ("cache_redis_use_tls", "cache.redis.use-tls"),
    ("cache_lock_redis_key_prefix", "cache.lock.redis.key-prefix"),
    (
        "cache_lock_postgres_key_prefix",
        "cache.lock.postgres.key-prefix",
    ),
    ("cache_lock_download_ttl", "cache.lock.download-lock-ttl"),
    ("cache_max_size", "cache.max-size"),
    ("cache_lru_schedule", "cache.lru.schedule"),
    ("cache_lru_schedule_timezone", "cache.lru.timezone"),
    ("cache_allow_put_verb", "cache.allow-put-verb"),
    ("cache_allow_delete_verb", "cache.allow-delete-verb"),
    (
        "cache_require_trusted_signature",
        "cache.require-trusted-signature",
    ),
    ("cache_trusted_upload_keys", "cache.trusted-upload-keys"),
    ("cache_max_upload_size", "cache.max-upload-size"),
    ("cache_get_token", "cache.get-token"),
    ("cache_put_token", "cache.put-token"),
    ("cache_cdc_enabled", "cache.cdc.enabled"),
    ("cache_cdc_min", "cache.cdc.min"),
    ("cache_cdc_avg", "cache.cdc.avg"),
    ("cache_cdc_max", "cache.cdc.max"),
    ("cache_cdc_zstd_level", "cache.cdc.zstd-level"),
    (
        "cache_cdc_lazy_chunking_enabled",
        "cache.cdc.lazy-chunking-enabled",
    ),
    (
        "cache_cdc_background_workers",
        "cache.cdc.background-workers",
    ),
    ("cache_cdc_lazy_zstd_level", "cache.cdc.lazy-zstd-level"),
    ("cache_cdc_delete_delay", "cache.cdc.delete-delay"),
    (
        "cache_cdc_lazy_recovery_schedule",
        "cache.cdc.lazy-recovery-schedule",
    ),
    (
        "cache_cdc_lazy_recovery_batch_size",
        "cache.cdc.lazy-recovery-batch-size",
    ),
    ("cache_cdc_gc_grace", "cache.cdc.gc-grace"),
    (
        "cache_upstream_stall_timeout",
        "cache.upstream.stall-timeout",
    ),
    ("cache_upstream_negative_ttl", "cache.upstream.negative-ttl"),
    ("cache_upstream_lookup", "cache.upstream.lookup"),
    (
        "cache_upstream_allow_unverified",
        "cache.upstream.allow-unverified",
    ),
    ("netrc_file", "cache.netrc-file"),
];

/// Environment variables the Go ncps still reads under deprecated names, each with the current
/// variable it stands for; used only when the current one is unset.
const DEPRECATED_ENV: &[(&str, &str)] = &[
    ("CACHE_DATA_PATH", "CACHE_STORAGE_LOCAL"),
    ("UPSTREAM_CACHES", "CACHE_UPSTREAM_URLS"),
    ("UPSTREAM_PUBLIC_KEYS", "CACHE_UPSTREAM_PUBLIC_KEYS"),
    ("UPSTREAM_DIALER_TIMEOUT", "CACHE_UPSTREAM_DIALER_TIMEOUT"),
    (
        "UPSTREAM_RESPONSE_HEADER_TIMEOUT",
        "CACHE_UPSTREAM_RESPONSE_HEADER_TIMEOUT",
    ),
];

/// Config-file keys the Go ncps still reads under deprecated names, with the current key.
const DEPRECATED_KEYS: &[(&str, &str)] = &[
    ("cache.data-path", "cache.storage.local"),
    ("cache.upstream.caches", "cache.upstream.urls"),
];

/// The parsed command line, and notes about the config file to log once logging is up.
pub struct Parsed {
    /// The command line with config-file values applied.
    pub cli: Cli,
    /// Config-file keys that mean nothing to this version.
    pub unknown_config_keys: Vec<String>,
    /// Deprecated variables and keys that were used, each with its current name.
    pub deprecated_names: Vec<(String, String)>,
    /// Settings of the Go ncps that were given and mean nothing here, each with the reason.
    pub ignored_go_settings: Vec<(&'static str, &'static str)>,
}

/// The command line: [`Cli`] plus the Go ncps's settings that are accepted and ignored.
fn command() -> clap::Command {
    crate::go_only::add_to(Cli::command())
}

/// Parses the process's arguments; prints help or errors and exits like any CLI.
pub fn parse() -> Result<Parsed> {
    parse_from(std::env::args_os())
}

/// Parses `args`, then re-parses with config-file values (and deprecated variables) as
/// defaults.
pub fn parse_from(args: impl IntoIterator<Item = OsString>) -> Result<Parsed> {
    parse_with_env(args, |name| std::env::var(name).ok())
}

/// [`parse_from`] reading variables through `env` (tests pass their own).
fn parse_with_env(
    args: impl IntoIterator<Item = OsString>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Parsed> {
    let args = help_for_help(args.into_iter().collect());
    let first = command().get_matches_from(&args);
    let explicit = first.get_one::<PathBuf>("config").cloned();
    let mut values = match &explicit {
        Some(path) => config_file::load(path)?,
        None => match config_file::default_path().filter(|p| p.exists()) {
            Some(path) => config_file::load(&path)?,
            None => Default::default(),
        },
    };
    let mut deprecated_names = Vec::new();
    for (old, new) in DEPRECATED_KEYS {
        if let Some(vals) = values.remove(*old) {
            deprecated_names.push(((*old).to_owned(), (*new).to_owned()));
            values.entry((*new).to_owned()).or_insert(vals);
        }
    }
    let keys: Vec<(&str, &str)> = CONFIG_KEYS
        .iter()
        .copied()
        .chain(crate::go_only::config_keys())
        .collect();
    let known: Vec<&str> = keys.iter().map(|(_, k)| *k).collect();
    let unknown_config_keys = values
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .cloned()
        .collect();
    // Defaults by argument id: deprecated variables first, the config file over them.
    let mut defaults: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (old, new) in DEPRECATED_ENV {
        if let (Some(value), None) = (env(old), env(new)) {
            deprecated_names.push(((*old).to_owned(), (*new).to_owned()));
            for (id, delimiter) in args_reading_env(&command(), new) {
                let vals = match delimiter {
                    Some(d) => value.split(d).map(str::to_owned).collect(),
                    None => vec![value.clone()],
                };
                defaults.insert(id, vals);
            }
        }
    }
    for (id, key) in &keys {
        match values.get(*key) {
            // An empty string means "not set", as in the Go ncps (its example configuration
            // writes `secret-key-path: ""`, `get-token: ""`, `password: ""`).
            Some(vals) if vals.iter().all(String::is_empty) && !vals.is_empty() => {}
            Some(vals) => {
                defaults.insert((*id).to_owned(), vals.clone());
            }
            None => {}
        }
    }
    let matches = if defaults.is_empty() {
        first
    } else {
        with_defaults(command(), &defaults).get_matches_from(&args)
    };
    Ok(Parsed {
        cli: Cli::from_arg_matches(&matches)?,
        ignored_go_settings: crate::go_only::used(&matches, &values),
        unknown_config_keys,
        deprecated_names,
    })
}

/// `ncps help --help` (and `-h`) is the top-level help: clap's `help` subcommand takes command
/// names only and would answer with an error.
fn help_for_help(mut args: Vec<OsString>) -> Vec<OsString> {
    let asks_help_of_help =
        args.len() > 2 && args[1] == "help" && args[2..].iter().all(|a| a == "--help" || a == "-h");
    if asks_help_of_help {
        args.truncate(1);
        args.push("--help".into());
    }
    args
}

/// The ids of the arguments (of `command` and its subcommands) that read variable `name`,
/// with the delimiter their values are split on.
fn args_reading_env(command: &clap::Command, name: &str) -> Vec<(String, Option<char>)> {
    let mut found: Vec<(String, Option<char>)> = command
        .get_arguments()
        .filter(|a| a.get_env().is_some_and(|e| e == name))
        .map(|a| (a.get_id().to_string(), a.get_value_delimiter()))
        .collect();
    for sub in command.get_subcommands() {
        for hit in args_reading_env(sub, name) {
            if !found.contains(&hit) {
                found.push(hit);
            }
        }
    }
    found
}

/// `command` with each value of `defaults` as its argument's default (in place of the
/// environment variable, which these override), in every subcommand that has the argument, so
/// the values go through the flags' own parsers: a bad value is an error naming the flag, as on
/// the command line.
fn with_defaults(
    mut command: clap::Command,
    defaults: &BTreeMap<String, Vec<String>>,
) -> clap::Command {
    for (id, vals) in defaults {
        if command.get_arguments().any(|a| a.get_id() == id.as_str()) {
            let vals = vals.clone();
            command = command.mut_arg(id.as_str(), |arg| {
                arg.env(None::<&str>).default_values(vals)
            });
        }
    }
    let names: Vec<String> = command
        .get_subcommands()
        .map(|sub| sub.get_name().to_string())
        .collect();
    for name in names {
        command = command.mut_subcommand(name, |sub| with_defaults(sub, defaults));
    }
    command
}

/// Flags of the admin commands that only open the cache.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Storage, database and key.
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// `ncps migrate [up|down]`: plain `migrate` is `migrate up`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct MigrateCommand {
    /// What to do (`up` when left out).
    #[command(subcommand)]
    pub action: Option<MigrateAction>,
    /// The flags of `up`.
    #[command(flatten)]
    pub up: MigrateUpArgs,
}

/// The subcommands of `ncps migrate`.
#[derive(Debug, Subcommand)]
pub enum MigrateAction {
    /// Apply pending migrations (the Go ncps's `migrate up`, which its Helm chart and docs
    /// run before `serve`).
    Up(MigrateUpArgs),
    /// Refused: ncps's migrations are forward-only. Restore a backup to go back.
    Down(MigrateUpArgs),
}

/// Flags of `ncps migrate up`. Only the database is opened: no key, no storage.
#[derive(Debug, Args)]
pub struct MigrateUpArgs {
    /// The database (and where it lies by default).
    #[command(flatten)]
    pub storage: StorageArgs,

    /// Print every migration with whether it is applied, and change nothing.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = BoolishValueParser::new(), action = ArgAction::Set, default_value = "false")]
    pub dry_run: bool,
}

/// Flags of `ncps fsck`.
#[derive(Debug, Args)]
pub struct FsckArgs {
    /// Storage, database and key.
    #[command(flatten)]
    pub storage: StorageArgs,

    /// Fix what can be fixed: forget rows whose bytes are gone (the NAR is fetched again from
    /// its upstream on demand), delete bad and stray files, drop narinfos that cannot be
    /// served.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = BoolishValueParser::new(), action = ArgAction::Set, default_value = "false")]
    pub repair: bool,

    /// Report what --repair would fix and change nothing, even with --repair (the Go ncps's
    /// flag; without --repair nothing is changed anyway).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = BoolishValueParser::new(), action = ArgAction::Set, default_value = "false")]
    pub dry_run: bool,

    /// Also read every whole NAR file and check its hashes (FileHash from its name, NarHash
    /// after decompression). Reads all storage: slow on a large cache. Alias
    /// `--verify-content` (the Go ncps's name).
    #[arg(long, visible_alias = "verify-content", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = BoolishValueParser::new(), action = ArgAction::Set, default_value = "false")]
    pub verify_hashes: bool,

    /// Stray files and unservable narinfos younger than this are reported but never counted
    /// or repaired: a running server may be writing them right now (Go duration).
    #[arg(long, default_value = "1h", value_parser = duration::parse)]
    pub min_age: Duration,
}

/// Flags of `ncps migrate-narinfo`.
#[derive(Debug, Args)]
pub struct MigrateNarinfoArgs {
    /// Storage, database and key.
    #[command(flatten)]
    pub storage: StorageArgs,

    /// The binary cache directory: `<hash>.narinfo` files beside a `nar/` directory, or the
    /// Go ncps's data directory (sharded `store/narinfo/` and `store/nar/`). Without it, what
    /// a Go ncps left in this cache's own database and storage is imported (its narinfos,
    /// NARs, chunks and pins, and any narinfo files under `store/narinfo/`), as the Go
    /// ncps's `migrate-narinfo` does.
    pub dir: Option<PathBuf>,

    /// Only report what would be imported (checks that NAR files exist and have their
    /// FileSize; hashes are checked on a real run).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = BoolishValueParser::new(), action = ArgAction::Set, default_value = "false")]
    pub dry_run: bool,

    /// Import only narinfos signed by one of these keys (name:base64, repeatable). Without
    /// it the directory is trusted as is: ncps will sign what it imports with its own key.
    #[arg(long = "public-key", value_delimiter = ',')]
    pub public_keys: Vec<String>,
}

/// Flags of `ncps generate-key`.
#[derive(Debug, Args)]
pub struct GenerateKeyArgs {
    /// Name of the key, written into both files and every signature (e.g. cache.example.org-1).
    #[arg(long)]
    pub name: String,

    /// Where to write the secret key (mode 0600; an existing file is never overwritten).
    /// Defaults to the path `serve` reads its key from when that is configured.
    #[arg(
        long = "secret-key-path",
        env = "CACHE_SECRET_KEY_PATH",
        visible_alias = "cache-secret-key-path"
    )]
    pub cache_secret_key_path: Option<PathBuf>,

    /// Where to write the public key as well (it is always printed).
    #[arg(long)]
    pub public_key_path: Option<PathBuf>,
}

/// Flags of `ncps pin` and `ncps unpin`.
#[derive(Debug, Args)]
pub struct PinArgs {
    /// Storage, database and key.
    #[command(flatten)]
    pub storage: StorageArgs,

    /// Store paths: /nix/store/<hash>-<name>, <hash>-<name> or <hash>.
    #[arg(required = true)]
    pub paths: Vec<String>,
}

#[cfg(test)]
mod tests {

    /// The storage and database flags of every Go ncps command that opens a cache.
    const GO_STORAGE_FLAGS: &[&str] = &[
        "cache-temp-path",
        "cache-storage-local",
        "cache-storage-s3-bucket",
        "cache-storage-s3-endpoint",
        "cache-storage-s3-region",
        "cache-storage-s3-access-key-id",
        "cache-storage-s3-secret-access-key",
        "cache-storage-s3-force-path-style",
        "cache-database-url",
        "cache-database-pool-max-open-conns",
        "cache-database-pool-max-idle-conns",
    ];

    /// The Redis and lock flags of `serve`, `fsck` and the Go ncps's migrations.
    const GO_LOCK_FLAGS: &[&str] = &[
        "cache-redis-addrs",
        "cache-redis-username",
        "cache-redis-password",
        "cache-redis-db",
        "cache-redis-use-tls",
        "cache-redis-pool-size",
        "cache-lock-backend",
        "cache-lock-redis-key-prefix",
        "cache-lock-download-ttl",
        "cache-lock-lru-ttl",
        "cache-lock-retry-max-attempts",
        "cache-lock-retry-initial-delay",
        "cache-lock-retry-max-delay",
        "cache-lock-retry-jitter",
        "cache-lock-allow-degraded-mode",
    ];

    /// Every flag the Go ncps's commands define (kalbasit/ncps at 816f637, `pkg/ncps/*.go`),
    /// by command: each must be accepted, under the same command, as a Go user would give it.
    fn go_flags() -> Vec<(&'static str, Vec<&'static str>)> {
        let with_cache = |own: &[&'static str]| [own, GO_STORAGE_FLAGS, GO_LOCK_FLAGS].concat();
        vec![
            (
                "serve",
                with_cache(&[
                    "cache-allow-delete-verb",
                    "cache-allow-put-verb",
                    "cache-get-token",
                    "cache-hostname",
                    "cache-cdc-enabled",
                    "cache-cdc-min",
                    "cache-cdc-avg",
                    "cache-cdc-max",
                    "cache-cdc-lazy-chunking-enabled",
                    "cache-cdc-background-workers",
                    "cache-cdc-delete-delay",
                    "cache-cdc-lazy-recovery-schedule",
                    "cache-cdc-lazy-recovery-batch-size",
                    "cache-cdc-lazy-cleanup-schedule",
                    "cache-max-size",
                    "cache-lru-schedule",
                    "cache-lru-schedule-timezone",
                    "cache-secret-key-path",
                    "cache-sign-narinfo",
                    "cache-require-trusted-signature",
                    "cache-trusted-upload-key",
                    "cache-upstream-url",
                    "cache-upstream-public-key",
                    "cache-upstream-dialer-timeout",
                    "cache-upstream-response-header-timeout",
                    "netrc-file",
                    "server-addr",
                    "pprof-addr",
                    "cache-download-poll-timeout",
                    "cache-cdc-chunk-wait-timeout",
                    "cache-inflight-staging-enabled",
                    "cache-inflight-staging-retention",
                    "cache-inflight-staging-part-size",
                    "cache-data-path",
                    "upstream-cache",
                    "upstream-public-key",
                    "upstream-dialer-timeout",
                    "upstream-response-header-timeout",
                ]),
            ),
            (
                "fsck",
                with_cache(&[
                    "repair",
                    "dry-run",
                    "verified-since",
                    "verify-content",
                    "dechunk-residue-grace",
                ]),
            ),
            ("migrate-narinfo", with_cache(&["dry-run", "concurrency"])),
            (
                "migrate-nar-to-chunks",
                with_cache(&["dry-run", "concurrency"]),
            ),
            (
                "migrate-chunks-to-nar",
                with_cache(&["dry-run", "concurrency", "force-reclaim"]),
            ),
            ("migrate up", vec!["cache-database-url", "dry-run"]),
        ]
    }

    /// The Go ncps's global flags.
    const GO_GLOBAL_FLAGS: &[&str] = &[
        "analytics-reporting-enabled",
        "analytics-reporting-samples",
        "log-level",
        "log-console-writer-enabled",
        "log-console-writer-prefix",
        "otel-enabled",
        "otel-grpc-url",
        "prometheus-enabled",
        "xz-binary-path",
        "use-xz-binary",
    ];

    /// A value of the right shape for a Go flag.
    fn go_sample(flag: &str) -> &'static str {
        const BOOLS: &[&str] = &[
            "repair",
            "dry-run",
            "verify-content",
            "force-reclaim",
            "use-xz-binary",
            "analytics-reporting-samples",
            "cache-sign-narinfo",
            "cache-require-trusted-signature",
        ];
        match flag {
            f if BOOLS.contains(&f)
                || f.ends_with("-enabled")
                || f.ends_with("-verb")
                || f.ends_with("force-path-style")
                || f.ends_with("use-tls")
                || f.ends_with("jitter")
                || f.ends_with("degraded-mode") =>
            {
                "true"
            }
            "cache-cdc-min" => "16384",
            "cache-cdc-avg" => "65536",
            "cache-cdc-max" => "262144",
            f if f.ends_with("-workers")
                || f.ends_with("-batch-size")
                || f.ends_with("-conns")
                || f.ends_with("-db")
                || f.ends_with("-attempts")
                || f.ends_with("-part-size")
                || f.ends_with("-pool-size")
                || f == "concurrency" =>
            {
                "2"
            }
            f if f.ends_with("-schedule") => "@every 1m",
            f if f.ends_with("-timezone") => "UTC",
            f if f.ends_with("-ttl")
                || f.ends_with("-timeout")
                || f.ends_with("-delay")
                || f.ends_with("-grace")
                || f.ends_with("-since")
                || f.ends_with("-retention") =>
            {
                "1m"
            }
            "cache-upstream-url"
            | "upstream-cache"
            | "cache-storage-s3-endpoint"
            | "otel-grpc-url" => "http://127.0.0.1:1",
            "cache-database-url" => "sqlite:/tmp/ncps-go-flags.db",
            "server-addr" | "pprof-addr" => "127.0.0.1:1",
            "cache-upstream-public-key" | "upstream-public-key" | "cache-trusted-upload-key" => {
                "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="
            }
            "cache-max-size" => "10G",
            "log-level" => "info",
            "cache-lock-backend" => "local",
            _ => "x",
        }
    }

    #[test]
    fn help_of_help_is_the_top_level_help() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            help_for_help(args(&["ncps", "help", "--help"])),
            args(&["ncps", "--help"])
        );
        assert_eq!(
            help_for_help(args(&["ncps", "help", "serve"])),
            args(&["ncps", "help", "serve"])
        );
    }

    #[test]
    fn help_groups_flags_shows_aliases_and_keeps_serve_flags_to_serve() {
        let mut cmd = command();
        let serve = cmd
            .find_subcommand_mut("serve")
            .expect("serve")
            .render_long_help()
            .to_string();
        for heading in [
            "Storage, database and signing key:",
            "Upstreams:",
            "Chunking:",
            "Locks:",
        ] {
            assert!(serve.contains(heading), "no {heading} in serve --help");
        }
        assert!(serve.contains("--upstream-cache"), "aliases are not shown");
        let fsck = cmd
            .find_subcommand_mut("fsck")
            .expect("fsck")
            .render_long_help()
            .to_string();
        assert!(
            !fsck.contains("--cache-upstream-url"),
            "fsck --help lists serve's flags"
        );
    }

    #[test]
    fn boolean_global_flags_go_before_the_command() {
        let matches = command()
            .try_get_matches_from(["ncps", "--prometheus-enabled", "serve"])
            .expect("a switch before the command");
        assert_eq!(matches.subcommand_name(), Some("serve"));
        assert_eq!(matches.get_one::<bool>("prometheus_enabled"), Some(&true));
        let matches = command()
            .try_get_matches_from(["ncps", "--prometheus-enabled=false", "serve"])
            .expect("an explicit value");
        assert_eq!(matches.get_one::<bool>("prometheus_enabled"), Some(&false));
    }

    #[test]
    fn every_go_flag_is_accepted_where_the_go_ncps_takes_it() {
        for (commands, flags) in go_flags() {
            for flag in flags {
                let mut args = vec!["ncps".to_owned()];
                args.extend(commands.split(' ').map(str::to_owned));
                args.push(format!("--{flag}={}", go_sample(flag)));
                if let Err(e) = command().try_get_matches_from(&args) {
                    panic!("{commands} --{flag}: {e}");
                }
            }
        }
        for flag in GO_GLOBAL_FLAGS {
            let args = [
                "ncps".to_owned(),
                format!("--{flag}={}", go_sample(flag)),
                "serve".into(),
            ];
            if let Err(e) = command().try_get_matches_from(&args) {
                panic!("--{flag}: {e}");
            }
        }
    }
    use super::*;

    fn serve_args(args: &[&str]) -> ServeArgs {
        let argv = std::iter::once("ncps")
            .chain(args.iter().copied())
            .map(OsString::from);
        match parse_from(argv).unwrap().cli.command {
            Command::Serve(a) => *a,
            other => panic!("not serve: {other:?}"),
        }
    }

    #[test]
    fn every_flag_has_a_config_key() {
        let command = Cli::command();
        let serve = command.find_subcommand("serve").unwrap();
        for arg in serve.get_arguments().chain(command.get_arguments()) {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version" | "config" | "batch_size") {
                continue;
            }
            assert!(
                CONFIG_KEYS.iter().any(|(k, _)| *k == id),
                "{id} has no config key"
            );
        }
        Cli::command().debug_assert();
    }

    /// `--help` shows each variable's value from the environment: never for a secret (tokens,
    /// passwords, keys) or a URL, which may carry credentials.
    #[test]
    fn help_never_prints_a_secret_from_the_environment() {
        let sensitive = ["TOKEN", "PASSWORD", "SECRET", "URL"];
        let command = Cli::command();
        let mut checked = 0;
        for sub in std::iter::once(&command).chain(command.get_subcommands()) {
            for arg in sub.get_arguments() {
                let Some(env) = arg.get_env().and_then(|e| e.to_str()) else {
                    continue;
                };
                // A path to a secret is not one.
                let path = env.ends_with("_PATH") || env.ends_with("_FILE");
                if sensitive.iter().any(|s| env.contains(s)) && !path {
                    checked += 1;
                    assert!(
                        arg.is_hide_env_values_set(),
                        "`{}` prints ${env} in --help",
                        arg.get_id()
                    );
                }
            }
        }
        assert!(checked >= 6, "only {checked} sensitive variables found");
    }

    #[test]
    fn config_file_fills_in_flags_and_the_command_line_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(
            &path,
            "cache:\n  hostname: from-file\n  sign-narinfo: false\n  upstream:\n    urls:\n      - http://a\n      - http://b\n    dialer-timeout: 5s\nserver:\n  addr: 127.0.0.1:9\n",
        )
        .unwrap();
        let config = path.to_str().unwrap();
        let a = serve_args(&["--config", config, "serve"]);
        assert_eq!(a.storage.cache_hostname.as_deref(), Some("from-file"));
        assert!(!a.cache_sign_narinfo);
        assert_eq!(a.upstream.cache_upstream_urls, ["http://a", "http://b"]);
        assert_eq!(
            a.upstream.cache_upstream_dialer_timeout,
            Duration::from_secs(5)
        );
        assert_eq!(a.server_addr, "127.0.0.1:9");
        let b = serve_args(&["serve", "--config", config, "--cache-hostname", "flag"]);
        assert_eq!(b.storage.cache_hostname.as_deref(), Some("flag"));
    }

    /// The Go ncps's deprecated names still work, through variables, config keys and flags;
    /// a current name set beside a deprecated one wins; each use is reported.
    #[test]
    fn deprecated_go_names_work_through_variables_keys_and_flags() {
        let parse = |args: &[&str], vars: &[(&str, &str)]| {
            let argv = std::iter::once("ncps")
                .chain(args.iter().copied())
                .map(OsString::from);
            let vars: Vec<(String, String)> = vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            parse_with_env(argv, move |name| {
                vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
            })
            .unwrap()
        };
        let serve = |p: Parsed| match p.cli.command {
            Command::Serve(a) => *a,
            other => panic!("not serve: {other:?}"),
        };
        let p = parse(
            &["serve"],
            &[
                ("UPSTREAM_CACHES", "http://a,http://b"),
                ("UPSTREAM_PUBLIC_KEYS", "k:1,k:2"),
                ("CACHE_DATA_PATH", "/srv/ncps"),
                ("UPSTREAM_DIALER_TIMEOUT", "7s"),
            ],
        );
        assert_eq!(p.deprecated_names.len(), 4, "{:?}", p.deprecated_names);
        let a = serve(p);
        assert_eq!(a.upstream.cache_upstream_urls, ["http://a", "http://b"]);
        assert_eq!(a.upstream.cache_upstream_public_keys, ["k:1", "k:2"]);
        assert_eq!(
            a.storage.cache_storage_local,
            Some(PathBuf::from("/srv/ncps"))
        );
        assert_eq!(
            a.upstream.cache_upstream_dialer_timeout,
            Duration::from_secs(7)
        );

        let p = parse(
            &["serve"],
            &[
                ("UPSTREAM_CACHES", "http://old"),
                ("CACHE_UPSTREAM_URLS", "http://new"),
            ],
        );
        // The current variable is read by clap itself (not from this test's table): what
        // matters here is that the deprecated one was left alone.
        assert!(p.deprecated_names.is_empty());
        assert_ne!(serve(p).upstream.cache_upstream_urls, ["http://old"]);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(
            &path,
            "cache:\n  data-path: /srv/old\n  upstream:\n    caches:\n      - http://c\n",
        )
        .unwrap();
        let p = parse(&["--config", path.to_str().unwrap(), "serve"], &[]);
        assert!(
            p.unknown_config_keys.is_empty(),
            "{:?}",
            p.unknown_config_keys
        );
        assert_eq!(p.deprecated_names.len(), 2);
        let a = serve(p);
        assert_eq!(
            a.storage.cache_storage_local,
            Some(PathBuf::from("/srv/old"))
        );
        assert_eq!(a.upstream.cache_upstream_urls, ["http://c"]);

        let a = serve(parse(
            &["serve", "--upstream-response-header-timeout", "9s"],
            &[],
        ));
        assert_eq!(
            a.upstream.cache_upstream_response_header_timeout,
            Duration::from_secs(9)
        );
    }

    /// `ncps migrate up` (a subcommand of a subcommand) takes its database from the config
    /// file like every other command.
    #[test]
    fn nested_subcommands_read_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "cache:\n  database-url: sqlite:/x/db.sqlite\n").unwrap();
        let argv = ["ncps", "--config", path.to_str().unwrap(), "migrate", "up"]
            .into_iter()
            .map(OsString::from);
        let Command::Migrate(m) = parse_from(argv).unwrap().cli.command else {
            panic!("not migrate")
        };
        let Some(MigrateAction::Up(up)) = m.action else {
            panic!("not migrate up")
        };
        assert_eq!(
            up.storage.cache_database_url.as_deref(),
            Some("sqlite:/x/db.sqlite")
        );
    }

    #[test]
    fn defaults_without_config() {
        let a = serve_args(&[
            "serve",
            "--cache-sign-narinfo=false",
            "--cache-upstream-url",
            "http://x,http://y",
        ]);
        assert!(!a.cache_sign_narinfo);
        assert_eq!(a.upstream.cache_upstream_urls, ["http://x", "http://y"]);
        assert_eq!(a.server_addr, ":8501");
        assert!(!a.cdc.cache_cdc_enabled);
        assert_eq!(a.cdc_jobs.cache_cdc_lazy_recovery_schedule, "@every 5m");
    }

    /// Parses with clap alone: no config file is read.
    fn try_parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ncps").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_are_the_libraries() {
        let cli = try_parse(&["serve"]).unwrap();
        assert_eq!(cli.log_level, LogLevel::Info);
        let Command::Serve(a) = cli.command else {
            panic!("not serve")
        };
        let chunks = ChunkParams {
            min: a.cdc.cache_cdc_min,
            avg: a.cdc.cache_cdc_avg,
            max: a.cdc.cache_cdc_max,
        };
        assert_eq!(chunks, ChunkParams::default());
        assert_eq!(a.cdc.cache_cdc_zstd_level, defaults::CDC_ZSTD_LEVEL);
        let jobs = &a.cdc_jobs;
        assert_eq!(
            jobs.cache_cdc_background_workers,
            defaults::CDC_BACKGROUND_WORKERS
        );
        assert_eq!(jobs.cache_cdc_delete_delay, defaults::CDC_DELETE_DELAY);
        assert_eq!(
            jobs.cache_cdc_lazy_zstd_level,
            defaults::CDC_LAZY_ZSTD_LEVEL
        );
        assert_eq!(
            jobs.cache_cdc_lazy_recovery_schedule,
            defaults::CDC_LAZY_RECOVERY_SCHEDULE
        );
        assert_eq!(
            jobs.cache_cdc_lazy_recovery_batch_size,
            defaults::CDC_LAZY_RECOVERY_BATCH
        );
        assert_eq!(jobs.cache_cdc_gc_grace, defaults::CDC_GC_GRACE);
        let upstream = UpstreamOptions::default();
        let u = &a.upstream;
        assert_eq!(u.cache_upstream_dialer_timeout, upstream.dialer_timeout);
        assert_eq!(
            u.cache_upstream_response_header_timeout,
            upstream.response_header_timeout
        );
        assert_eq!(u.cache_upstream_stall_timeout, upstream.stall_timeout);
        assert_eq!(u.cache_upstream_negative_ttl, upstream.negative_ttl);
        assert_eq!(
            LookupStrategy::from(u.cache_upstream_lookup),
            upstream.lookup
        );
        assert_eq!(a.cache_sign_narinfo, defaults::SIGN_NARINFO);
        assert_eq!(a.cache_upstream_prefetch, defaults::UPSTREAM_PREFETCH);
        assert_eq!(
            a.access.cache_require_trusted_signature,
            defaults::REQUIRE_TRUSTED_SIGNATURE
        );
        assert_eq!(a.access.cache_max_upload_size, defaults::MAX_UPLOAD_SIZE);
        let l = &a.locks;
        assert_eq!(l.cache_lock_backend, LockBackendKind::Local);
        assert_eq!(l.cache_lock_download_ttl, defaults::DOWNLOAD_LOCK_TTL);
        assert_eq!(l.cache_lock_redis_key_prefix, defaults::LOCK_KEY_PREFIX);
        assert_eq!(l.cache_lock_postgres_key_prefix, defaults::LOCK_KEY_PREFIX);
        let Command::MigrateNarToChunks(m) = try_parse(&["migrate-nar-to-chunks"]).unwrap().command
        else {
            panic!("not migrate-nar-to-chunks")
        };
        assert_eq!(m.batch_size, defaults::MIGRATE_BATCH);
    }

    /// Each flag with a fixed set of values, a typo of one of them, and the list its error shows.
    const TYPOS: [(&str, &str, &str, &str); 3] = [
        (
            "--log-level",
            "log.level",
            "infos",
            "[possible values: trace, debug, info, warn, error]",
        ),
        (
            "--cache-lock-backend",
            "cache.lock.backend",
            "rdis",
            "[possible values: local, redis, postgres]",
        ),
        (
            "--cache-upstream-lookup",
            "cache.upstream.lookup",
            "paralel",
            "[possible values: parallel, sequential]",
        ),
    ];

    #[test]
    fn a_typo_in_a_value_list_flag_is_an_error_listing_the_values() {
        for (flag, key, typo, values) in TYPOS {
            let err = try_parse(&["serve", flag, typo]).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue, "{flag}");
            let text = err.to_string();
            assert!(text.contains(flag) && text.contains(values), "{text}");
            // The same from the config file, whose values go through the same parsers.
            let id = CONFIG_KEYS.iter().find(|(_, k)| *k == key).unwrap().0;
            let file = BTreeMap::from([(id.to_string(), vec![typo.to_string()])]);
            let err = with_defaults(command(), &file)
                .try_get_matches_from(["ncps", "serve"])
                .unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::InvalidValue, "{key}");
            let text = err.to_string();
            assert!(text.contains(flag) && text.contains(values), "{text}");
        }
    }

    #[test]
    fn value_list_flags_accept_their_values_and_the_go_level_names() {
        let level = |name: &str| {
            try_parse(&["--log-level", name, "serve"])
                .unwrap()
                .log_level
        };
        for (name, expected) in [
            ("trace", LogLevel::Trace),
            ("debug", LogLevel::Debug),
            ("INFO", LogLevel::Info),
            ("warn", LogLevel::Warn),
            ("Warning", LogLevel::Warn),
            ("error", LogLevel::Error),
            ("fatal", LogLevel::Error),
            ("panic", LogLevel::Error),
            ("disabled", LogLevel::Disabled),
            ("off", LogLevel::Disabled),
        ] {
            assert_eq!(level(name), expected, "{name}");
        }
        let Command::Serve(a) = try_parse(&[
            "serve",
            "--cache-lock-backend",
            "postgres",
            "--cache-upstream-lookup",
            "sequential",
        ])
        .unwrap()
        .command
        else {
            panic!("not serve")
        };
        assert_eq!(a.locks.cache_lock_backend, LockBackendKind::Postgres);
        assert_eq!(
            LookupStrategy::from(a.upstream.cache_upstream_lookup),
            LookupStrategy::Sequential
        );
    }
}
