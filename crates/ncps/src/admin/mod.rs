//! The admin commands: `migrate`, `migrate-narinfo`, `fsck`, `generate-key`, `pin`, `unpin`
//! and `pins`. Each opens the cache exactly as `serve` does (same storage flags), so it can
//! run beside a live server on the same data; long work reports progress on stderr.

pub mod fsck;
pub mod import;
pub mod keygen;
pub mod pins;
pub mod schema;

use std::time::Duration;

use anyhow::Result;
use ncps_core::{Cache, CacheConfig};
use ncps_db::Database;
use ncps_store::BlobStore;
use ncps_upstream::{UpstreamOptions, Upstreams};

use crate::cli::StorageArgs;
use crate::setup;

/// An opened cache, with its database and storage at hand for checks below the cache's API.
pub struct Opened {
    /// The cache (no upstream: admin commands never fetch).
    pub cache: Cache,
    /// Its metadata.
    pub db: Database,
    /// Its bytes.
    pub store: BlobStore,
}

/// Opens the cache named by the storage flags, without upstreams: admin commands work on what
/// is stored and never fetch.
pub async fn open(storage: &StorageArgs) -> Result<Opened> {
    let parts = setup::open(storage).await?;
    let db = parts.db.clone();
    let store = parts.store.clone();
    let upstreams = Upstreams::new(&[], vec![], &UpstreamOptions::default())?;
    let config = CacheConfig::new(parts.secret_key, parts.temp_dir);
    let cache = Cache::new(config, parts.db, parts.store, upstreams)?;
    Ok(Opened { cache, db, store })
}

/// `YYYY-MM-DD HH:MM:SS UTC` for seconds since the epoch (no time zone database needed).
pub fn format_utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A rough human age: `45s`, `12m`, `3h`, `2d`.
pub fn format_age(age: Duration) -> String {
    let s = age.as_secs();
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Bytes in decimal units, as progress lines show them.
pub fn format_size(bytes: u64) -> String {
    match bytes {
        0..1_000 => format!("{bytes} B"),
        1_000..1_000_000 => format!("{:.1} kB", bytes as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", bytes as f64 / 1e6),
        _ => format!("{:.2} GB", bytes as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_dates_ages_and_sizes() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_776_000_000), "2026-04-12 13:20:00 UTC");
        assert_eq!(format_age(Duration::from_secs(59)), "59s");
        assert_eq!(format_age(Duration::from_secs(3600)), "60m");
        assert_eq!(format_age(Duration::from_secs(7200)), "2h");
        assert_eq!(format_age(Duration::from_secs(3 * 86_400)), "3d");
        assert_eq!(format_size(999), "999 B");
        assert_eq!(format_size(4_000_000), "4.0 MB");
    }
}
