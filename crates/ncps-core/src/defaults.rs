//! The core's defaults, in one place: the library's constructors use them, and the binary's
//! flags take their default values from them, so a default is written exactly once.

use std::time::Duration;

/// Priority announced in `/nix-cache-info` (lower is preferred): the Go ncps's 10, so clients
/// that list us beside cache.nixos.org (40) ask us first, as they did the Go ncps.
pub const PRIORITY: u32 = 10;
/// How long a lock shared by replicas lives without renewal: a replica killed while it holds
/// one (a download, an eviction run, a chunk collection) stops blocking the others after
/// this. Its holder renews it every third of this, so it only has to outlast a missed renewal
/// or two, not the work. (The Go ncps's 5 minutes for downloads, 30 for eviction, made
/// every other replica wait that long for each NAR a killed one was fetching.)
pub const LOCK_LEASE: Duration = Duration::from_secs(15);
/// How long a download lock lives without renewal (`--cache-lock-download-ttl`).
pub const DOWNLOAD_LOCK_TTL: Duration = LOCK_LEASE;
/// How long a request waits for another replica's download of the same NAR before it gives
/// up. The holder renews its lock while it downloads, so this bounds a slow download, not a
/// dead holder (whose lock lapses after its TTL, when a waiter takes over).
pub const DOWNLOAD_WAIT: Duration = Duration::from_secs(5 * 60);
/// How long a whole file is kept after its chunks are complete (lazy chunking).
pub const CDC_DELETE_DELAY: Duration = Duration::from_secs(24 * 3600);
/// zstd level of each chunk's frame: level 1 is the only one that keeps ingest above
/// 300 MB/s per core (see docs/benchmarks.md).
pub const CDC_ZSTD_LEVEL: i32 = 1;
/// zstd level of the chunks lazy chunking makes. No client waits for them (it was served the
/// whole file), so they can afford a level that stores less: 8, attic's level, stores less
/// than attic on the comparison in docs/benchmarks.md, on one core per background worker.
pub const CDC_LAZY_ZSTD_LEVEL: i32 = 8;
/// Concurrent lazy-chunking workers.
pub const CDC_BACKGROUND_WORKERS: usize = 1;
/// When interrupted lazy chunking is looked for (cron or `@every <duration>`).
pub const CDC_LAZY_RECOVERY_SCHEDULE: &str = "@every 5m";
/// NARs taken per recovery round.
pub const CDC_LAZY_RECOVERY_BATCH: u32 = 100;
/// How long an unreferenced chunk is kept, so a reader that resolved a chunk list before it
/// was dropped never loses a chunk under it.
pub const CDC_GC_GRACE: Duration = Duration::from_secs(3600);
/// How often unreferenced chunks are looked for.
pub const CDC_GC_INTERVAL: Duration = Duration::from_secs(3600);
/// Largest NAR (compressed and plain) or build log accepted by upload.
pub const MAX_UPLOAD_SIZE: u64 = 32 << 30;
/// Prefix of every distributed lock's key (the Redis key, or the text hashed into a PostgreSQL
/// advisory lock id): replicas with the same prefix exclude each other, so caches sharing one
/// Redis or database pick different ones.
pub const LOCK_KEY_PREFIX: &str = "ncps:lock:";
/// NARs taken from the database per round by the migrations between whole files and chunks:
/// large enough to keep the database round trips rare, small enough to resume with little lost.
pub const MIGRATE_BATCH: u32 = 100;
/// Whether served narinfos carry our signature: clients then need to trust only our key,
/// whichever upstream a path came from.
pub const SIGN_NARINFO: bool = true;
/// Whether a NAR download starts as soon as its narinfo is fetched: off, since a narinfo that
/// is never followed by its NAR would cost a whole download.
pub const UPSTREAM_PREFETCH: bool = false;
/// Conversions between compressions that may run at once: one per core (at least two). A NAR
/// is served as stored whenever its URL allows; conversions serve old URLs of NARs stored in
/// another form since, and clients asking for another compression.
pub fn max_conversions() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}
/// Whether uploads must be signed by a trusted key: off, so a plain `nix copy --to` works once
/// uploads are allowed.
pub const REQUIRE_TRUSTED_SIGNATURE: bool = false;
