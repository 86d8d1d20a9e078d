//! One module per command, named after it: `serve`, `migrate`, `migrate-narinfo`,
//! `migrate-nar-to-chunks`, `migrate-chunks-to-nar`, `fsck`, `generate-key`, `pin` (with
//! `unpin` and `pins`), and `warm` (which talks to a running server over HTTP instead). Each parses nothing itself (see `cli.rs`): it opens the cache's parts
//! exactly as `serve` does (same storage flags, so it can run beside a live server on the same
//! data), calls the core's components, and prints. Results go to stdout, progress to stderr.

pub mod fsck;
pub mod generate_key;
mod go_import;
pub mod migrate;
pub mod migrate_chunks_to_nar;
pub mod migrate_nar_to_chunks;
pub mod migrate_narinfo;
pub mod pin;
pub mod serve;
pub mod warm;

use anyhow::Result;
use ncps_core::{Cache, CacheConfig, Maintenance};
use ncps_upstream::{UpstreamOptions, Upstreams};

use crate::cli::StorageArgs;
use crate::setup;

/// The maintenance side of the cache named by the storage flags, without upstreams: admin
/// commands work on what is stored and never fetch.
pub async fn open(storage: &StorageArgs) -> Result<Maintenance> {
    maintenance(setup::open(storage, setup::Create::No).await?)
}

/// The maintenance side of a cache whose parts are open.
pub fn maintenance(parts: setup::Parts) -> Result<Maintenance> {
    let upstreams = Upstreams::new(&[], vec![], &UpstreamOptions::default())?;
    let config = CacheConfig::new(parts.secret_key, parts.temp_dir);
    let cache = Cache::new(config, parts.db, parts.store, upstreams);
    Ok(cache.maintenance().clone())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_776_000_000), "2026-04-12 13:20:00 UTC");
    }
}
