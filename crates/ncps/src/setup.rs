//! Opening the cache's parts from the storage flags: shared by `serve` and the admin commands.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ncps_core::{ChunkSettings, Priority, TempFiles};
use ncps_db::{Database, PoolOptions};
use ncps_nix::SecretKey;
use ncps_store::chunk::ChunkParams;
use ncps_store::{AzureConfig, BlobStore, GcsConfig, S3Config};
use tracing::{info, warn};

use crate::cli::{CdcArgs, StorageArgs};
use crate::keys;

/// Temporary files older than this are from a crashed run and are removed at start.
const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);
/// Settings key recording the chunking parameters a cache was built with.
const CDC_PARAMS_SETTING: &str = "cdc.params";

/// The opened parts of a cache.
pub struct Parts {
    /// The cache's name (`--cache-hostname`, else the machine's), as `GET /` reports it.
    pub hostname: String,
    /// Where everything lives.
    pub data_dir: PathBuf,
    /// Temporary files.
    pub temp_dir: PathBuf,
    /// Signing key.
    pub secret_key: SecretKey,
    /// Metadata.
    pub db: Database,
    /// Bytes.
    pub store: BlobStore,
    /// The database URL in force (the PostgreSQL lock backend reuses it).
    pub database_url: String,
}

/// The database URL in force (`--cache-database-url`, else SQLite under the data directory)
/// and the pool sizes.
fn database(args: &StorageArgs, data_dir: &std::path::Path) -> (String, PoolOptions) {
    let url = args
        .cache_database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite:{}", data_dir.join("db").join("db.sqlite").display()));
    let pool = PoolOptions {
        max_open: args.cache_database_pool_max_open_conns,
        max_idle: args.cache_database_pool_max_idle_conns,
    };
    (url, pool)
}

/// Opens the database alone, migrations not applied: for `ncps migrate`, which needs nothing
/// else (no key is generated, no storage opened: a migration job may have only the URL).
pub async fn open_database_unmigrated(args: &StorageArgs) -> Result<(String, Database)> {
    let data_dir = match (&args.cache_database_url, &args.cache_storage_local) {
        (Some(_), _) => PathBuf::new(),
        (None, Some(dir)) => dir.clone(),
        (None, None) => default_data_dir()?,
    };
    let (url, pool) = database(args, &data_dir);
    let db = Database::open_unmigrated(&url, pool)
        .await
        .context("cannot open the database")?;
    Ok((url, db))
}

/// Whether opening a cache may create it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Create {
    /// `serve`: the first start creates the database, the storage and the signing key.
    Yes,
    /// The admin commands: a cache that is not there is an error, never created, so that a
    /// mistyped directory cannot pass for an empty, healthy cache. A missing signing key is
    /// replaced by a throwaway one for the run (they sign nothing that lasts).
    No,
}

/// Resolves defaults, loads (or generates) the key, opens the database and the storage.
pub async fn open(args: &StorageArgs, create: Create) -> Result<Parts> {
    let data_dir = match &args.cache_storage_local {
        Some(dir) => dir.clone(),
        None => default_data_dir()?,
    };
    let hostname = match &args.cache_hostname {
        Some(h) if !h.trim().is_empty() => h.trim().to_string(),
        _ => system_hostname(),
    };
    let (database_url, pool) = database(args, &data_dir);
    if create == Create::No {
        require_existing_cache(&database_url, pool).await?;
    }
    let temp_dir = args
        .cache_temp_path
        .clone()
        .unwrap_or_else(|| data_dir.join("tmp"));
    std::fs::create_dir_all(&temp_dir)
        .with_context(|| format!("cannot create temp directory {}", temp_dir.display()))?;
    TempFiles::new(temp_dir.clone()).sweep(STALE_TEMP_AGE);
    // An empty path means "not set", as in the Go ncps's example configuration.
    let key_path = args
        .cache_secret_key_path
        .as_ref()
        .filter(|p| !p.as_os_str().is_empty());
    let db = Database::open_with(&database_url, pool)
        .await
        .context("cannot open the database")?;
    let secret_key = match key_path {
        Some(path) => keys::load_or_generate(path, None)?,
        None => {
            let path = data_dir.join("secret.key");
            if let Some(go_key) = db.go_secret_key().await? {
                keys::adopt(&path, &go_key)?;
            }
            if create == Create::No && !path.exists() {
                SecretKey::generate(&hostname).context("cannot generate a signing key")?
            } else {
                keys::load_or_generate(&path, Some(&hostname))?
            }
        }
    };
    if args.cache_hostname.is_some() && secret_key.name() != hostname {
        warn!(
            key = secret_key.name(),
            hostname = %hostname,
            "the signing key's name differs from --cache-hostname; clients trust the key by \
             its name: keep it, or generate a new key (ncps generate-key) and share its \
             public key"
        );
    }
    let remote = [
        args.cache_storage_s3_bucket.is_some(),
        args.cache_storage_gcs_bucket.is_some(),
        args.cache_storage_azure_container.is_some(),
    ];
    if remote.iter().filter(|r| **r).count() > 1 {
        bail!(
            "give one of --cache-storage-s3-bucket, --cache-storage-gcs-bucket and \
             --cache-storage-azure-container, not several"
        );
    }
    let store = match &args.cache_storage_s3_bucket {
        None if args.cache_storage_gcs_bucket.is_some() => {
            let config = GcsConfig {
                bucket: args.cache_storage_gcs_bucket.clone().unwrap_or_default(),
                credentials_file: args.cache_storage_gcs_credentials_file.clone(),
            };
            info!(
                bucket = config.bucket,
                "storing NARs in Google Cloud Storage"
            );
            BlobStore::gcs(&config).context("invalid Google Cloud Storage settings")?
        }
        None if args.cache_storage_azure_container.is_some() => {
            let config = AzureConfig {
                container: args
                    .cache_storage_azure_container
                    .clone()
                    .unwrap_or_default(),
                account: args.cache_storage_azure_account.clone(),
                access_key: args.cache_storage_azure_access_key.clone(),
                endpoint: args.cache_storage_azure_endpoint.clone(),
            };
            info!(container = config.container, account = ?config.account, "storing NARs in Azure Blob storage");
            BlobStore::azure(&config).context("invalid Azure storage settings")?
        }
        Some(bucket) => {
            let config = S3Config {
                bucket: bucket.clone(),
                endpoint: args.cache_storage_s3_endpoint.clone(),
                region: args.cache_storage_s3_region.clone(),
                access_key_id: args.cache_storage_s3_access_key_id.clone(),
                secret_access_key: args.cache_storage_s3_secret_access_key.clone(),
                force_path_style: args.cache_storage_s3_force_path_style,
            };
            info!(bucket, endpoint = ?config.endpoint, "storing NARs in S3");
            BlobStore::s3(&config).context("invalid S3 storage settings")?
        }
        None => BlobStore::local(&data_dir.join("store"))?,
    };
    Ok(Parts {
        hostname,
        data_dir,
        temp_dir,
        secret_key,
        db,
        store,
        database_url,
    })
}

/// Fails unless `url` names an existing cache (ours or a Go ncps's), creating nothing: a
/// SQLite file must exist, a server database must hold the schema.
async fn require_existing_cache(url: &str, pool: PoolOptions) -> Result<()> {
    let missing = |what: String| {
        anyhow::anyhow!(
            "no ncps cache here: {what}. Check --cache-storage-local / --cache-database-url; \
             `ncps serve` (or `ncps migrate up`) creates a cache"
        )
    };
    if let Ok(ncps_db::DatabaseUrl::Sqlite(path)) = ncps_db::parse_database_url(url) {
        if !path.is_file() {
            return Err(missing(format!("{} does not exist", path.display())));
        }
        return Ok(());
    }
    let db = Database::open_unmigrated(url, pool)
        .await
        .context("cannot open the database")?;
    if db.holds_cache().await? {
        Ok(())
    } else {
        Err(missing(format!(
            "{} holds no ncps tables",
            ncps_db::redact_url(url)
        )))
    }
}

/// The chunking in force, checked against what the database recorded: changing chunk sizes on
/// an existing cache would silently stop new chunks from matching old ones.
pub async fn chunk_settings(db: &Database, args: &CdcArgs) -> Result<ChunkSettings> {
    let params = ChunkParams {
        min: args.cache_cdc_min,
        avg: args.cache_cdc_avg,
        max: args.cache_cdc_max,
    };
    params
        .validate()
        .context("invalid --cache-cdc-min/avg/max")?;
    let wanted = format!("{}/{}/{}", params.min, params.avg, params.max);
    let recorded = db.setting_or_init(CDC_PARAMS_SETTING, &wanted).await?;
    if recorded != wanted {
        bail!(
            "this cache was chunked with min/avg/max = {recorded} bytes but {wanted} was given; \
             changing chunk sizes would stop deduplication against every stored chunk. Start \
             with --cache-cdc-min/avg/max matching {recorded}"
        );
    }
    Ok(ChunkSettings {
        params,
        zstd_level: args.cache_cdc_zstd_level,
        priority: Priority::Client,
    })
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
