//! Settings of the Go ncps that have no meaning here. A Go configuration carries them (flags,
//! variables, config keys); each is accepted under its Go names, ignored, and named once in a
//! warning that says why, instead of stopping ncps with an unknown-argument error.

use clap::builder::BoolishValueParser;
use clap::{Arg, ArgAction, ArgMatches};

/// The data migration commands.
const MIGRATIONS: [&str; 3] = [
    "migrate-narinfo",
    "migrate-nar-to-chunks",
    "migrate-chunks-to-nar",
];

/// Which command a Go-only setting belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum On {
    /// The top-level command (every subcommand).
    Global,
    /// `serve`.
    Serve,
    /// `fsck`.
    Fsck,
    /// The data migrations (`migrate-narinfo`, `migrate-nar-to-chunks`,
    /// `migrate-chunks-to-nar`).
    Migrations,
    /// `fsck` and the data migrations: the Go ncps gives them its lock settings, which
    /// `serve` has for real here.
    Maintenance,
    /// `serve`, `fsck` and the data migrations.
    Everywhere,
}

impl On {
    /// The subcommands the setting is accepted on (none: the top-level command).
    fn subcommands(self) -> &'static [&'static str] {
        match self {
            On::Global => &[],
            On::Serve => &["serve"],
            On::Fsck => &["fsck"],
            On::Migrations => &MIGRATIONS,
            On::Maintenance => &["fsck", MIGRATIONS[0], MIGRATIONS[1], MIGRATIONS[2]],
            On::Everywhere => &["serve", "fsck", MIGRATIONS[0], MIGRATIONS[1], MIGRATIONS[2]],
        }
    }
}

/// One Go-only setting.
struct GoOnly {
    /// The flag's long name (also its argument id).
    flag: &'static str,
    /// Its environment variable, if the Go ncps reads one.
    env: Option<&'static str>,
    /// Its config-file key, if the Go ncps reads one.
    key: Option<&'static str>,
    /// A boolean switch (`--flag` alone means true) rather than a flag with a value.
    switch: bool,
    /// Where it is accepted.
    on: On,
    /// Why it means nothing here, for the warning.
    why: &'static str,
}

const fn setting(
    flag: &'static str,
    env: Option<&'static str>,
    key: Option<&'static str>,
    switch: bool,
    on: On,
    why: &'static str,
) -> GoOnly {
    GoOnly {
        flag,
        env,
        key,
        switch,
        on,
        why,
    }
}

/// Why the Go ncps's lock settings of fsck and the migrations mean nothing here.
const MIGRATION_LOCKS: &str =
    "fsck and migrations coordinate with running servers through the database, not locks";

const LOCKS_RETRY: &str = "lock operations here fail at once with 503 + Retry-After; clients retry";

/// Every Go-only setting.
const SETTINGS: &[GoOnly] = &[
    setting(
        "analytics-reporting-enabled",
        Some("ANALYTICS_REPORTING_ENABLED"),
        Some("analytics.reporting.enabled"),
        true,
        On::Global,
        "this ncps reports no analytics anywhere",
    ),
    setting(
        "analytics-reporting-samples",
        None,
        Some("analytics.reporting.samples"),
        true,
        On::Global,
        "this ncps reports no analytics anywhere",
    ),
    setting(
        "log-console-writer-enabled",
        None,
        None,
        true,
        On::Global,
        "logs are JSON lines on stderr",
    ),
    setting(
        "log-console-writer-prefix",
        None,
        None,
        false,
        On::Global,
        "logs are JSON lines on stderr",
    ),
    setting(
        "use-xz-binary",
        Some("USE_XZ_BINARY"),
        Some("use-xz-binary"),
        true,
        On::Global,
        "xz is decoded and encoded in process",
    ),
    setting(
        "xz-binary-path",
        Some("XZ_BINARY_PATH"),
        Some("xz-binary-path"),
        false,
        On::Global,
        "xz is decoded and encoded in process",
    ),
    setting(
        "pprof-addr",
        Some("PPROF_ADDR"),
        Some("pprof.addr"),
        false,
        On::Serve,
        "there is no Go profiler; use perf or the OpenTelemetry traces",
    ),
    setting(
        "cache-download-poll-timeout",
        Some("CACHE_DOWNLOAD_POLL_TIMEOUT"),
        Some("cache.download.poll-timeout"),
        false,
        On::Serve,
        "a replica waits for another's download through its lock, not by polling storage",
    ),
    setting(
        "cache-cdc-lazy-cleanup-schedule",
        Some("CACHE_CDC_LAZY_CLEANUP_SCHEDULE"),
        Some("cache.cdc.lazy-cleanup-schedule"),
        false,
        On::Serve,
        "whole files replaced by chunks are deleted by the lazy-recovery job",
    ),
    setting(
        "cache-cdc-chunk-wait-timeout",
        Some("CACHE_CDC_CHUNK_WAIT_TIMEOUT"),
        Some("cache.cdc.chunk-wait-timeout"),
        false,
        On::Serve,
        "clients follow chunks as they are written, without a wait timeout",
    ),
    setting(
        "cache-inflight-staging-enabled",
        Some("CACHE_INFLIGHT_STAGING_ENABLED"),
        Some("cache.inflight-staging.enabled"),
        true,
        On::Serve,
        "downloads in flight are shared through local temporary files",
    ),
    setting(
        "cache-inflight-staging-retention",
        Some("CACHE_INFLIGHT_STAGING_RETENTION"),
        Some("cache.inflight-staging.retention"),
        false,
        On::Serve,
        "downloads in flight are shared through local temporary files",
    ),
    setting(
        "cache-inflight-staging-part-size",
        Some("CACHE_INFLIGHT_STAGING_PART_SIZE"),
        Some("cache.inflight-staging.part-size"),
        false,
        On::Serve,
        "downloads in flight are shared through local temporary files",
    ),
    setting(
        "cache-lock-lru-ttl",
        Some("CACHE_LOCK_LRU_TTL"),
        Some("cache.lock.lru-lock-ttl"),
        false,
        On::Everywhere,
        "the eviction lock is renewed while eviction runs",
    ),
    setting(
        "cache-lock-retry-max-attempts",
        Some("CACHE_LOCK_RETRY_MAX_ATTEMPTS"),
        Some("cache.lock.retry.max-attempts"),
        false,
        On::Everywhere,
        LOCKS_RETRY,
    ),
    setting(
        "cache-lock-retry-initial-delay",
        Some("CACHE_LOCK_RETRY_INITIAL_DELAY"),
        Some("cache.lock.retry.initial-delay"),
        false,
        On::Everywhere,
        LOCKS_RETRY,
    ),
    setting(
        "cache-lock-retry-max-delay",
        Some("CACHE_LOCK_RETRY_MAX_DELAY"),
        Some("cache.lock.retry.max-delay"),
        false,
        On::Everywhere,
        LOCKS_RETRY,
    ),
    setting(
        "cache-lock-retry-jitter",
        Some("CACHE_LOCK_RETRY_JITTER"),
        Some("cache.lock.retry.jitter"),
        true,
        On::Everywhere,
        LOCKS_RETRY,
    ),
    setting(
        "cache-lock-allow-degraded-mode",
        Some("CACHE_LOCK_ALLOW_DEGRADED_MODE"),
        Some("cache.lock.allow-degraded-mode"),
        true,
        On::Everywhere,
        "with the lock service down, downloads answer 503 and everything stored is still served",
    ),
    setting(
        "verified-since",
        None,
        None,
        false,
        On::Fsck,
        "fsck keeps no verification times: it checks everything each run",
    ),
    setting(
        "dechunk-residue-grace",
        Some("CACHE_FSCK_DECHUNK_RESIDUE_GRACE"),
        Some("cache.fsck.dechunk-residue-grace"),
        false,
        On::Fsck,
        "chunk lists are committed whole, so no half-converted NAR is left to reclaim",
    ),
    setting(
        "concurrency",
        Some("CONCURRENCY"),
        Some("concurrency"),
        false,
        On::Migrations,
        "NARs are migrated one at a time, each verified as it streams",
    ),
    setting(
        "force-reclaim",
        None,
        None,
        true,
        On::Migrations,
        "chunks a migration leaves unused are collected by the chunk GC after its grace period",
    ),
    setting(
        "cache-redis-addrs",
        Some("CACHE_REDIS_ADDRS"),
        None,
        false,
        On::Maintenance,
        MIGRATION_LOCKS,
    ),
    setting(
        "cache-redis-username",
        Some("CACHE_REDIS_USERNAME"),
        None,
        false,
        On::Maintenance,
        MIGRATION_LOCKS,
    ),
    setting(
        "cache-redis-password",
        Some("CACHE_REDIS_PASSWORD"),
        None,
        false,
        On::Maintenance,
        MIGRATION_LOCKS,
    ),
    setting(
        "cache-redis-db",
        Some("CACHE_REDIS_DB"),
        None,
        false,
        On::Maintenance,
        MIGRATION_LOCKS,
    ),
    setting(
        "cache-redis-use-tls",
        Some("CACHE_REDIS_USE_TLS"),
        None,
        true,
        On::Maintenance,
        MIGRATION_LOCKS,
    ),
    setting(
        "cache-lock-backend",
        Some("CACHE_LOCK_BACKEND"),
        None,
        false,
        On::Maintenance,
        MIGRATION_LOCKS,
    ),
    setting(
        "cache-lock-redis-key-prefix",
        Some("CACHE_LOCK_REDIS_KEY_PREFIX"),
        None,
        false,
        On::Maintenance,
        MIGRATION_LOCKS,
    ),
    setting(
        "cache-lock-download-ttl",
        Some("CACHE_LOCK_DOWNLOAD_TTL"),
        None,
        false,
        On::Maintenance,
        MIGRATION_LOCKS,
    ),
    setting(
        "cache-redis-pool-size",
        Some("CACHE_REDIS_POOL_SIZE"),
        Some("cache.redis.pool-size"),
        false,
        On::Everywhere,
        "locks use one multiplexed Redis connection",
    ),
];

/// The argument for `s`: hidden from `--help` (they do nothing), reading the Go variable.
fn arg(s: &GoOnly) -> Arg {
    let mut arg = Arg::new(s.flag)
        .long(s.flag)
        .hide(true)
        .global(s.on == On::Global);
    if let Some(env) = s.env {
        arg = arg.env(env);
    }
    if s.switch {
        arg.num_args(0..=1)
            .require_equals(true)
            .default_missing_value("true")
            .value_parser(BoolishValueParser::new())
            .action(ArgAction::Set)
    } else {
        arg.action(ArgAction::Set)
    }
}

/// `command` with every Go-only setting: global ones on the command itself, the others on
/// their subcommand.
pub fn add_to(mut command: clap::Command) -> clap::Command {
    for s in SETTINGS {
        if s.on == On::Global {
            command = command.arg(arg(s));
        }
        for name in s.on.subcommands() {
            command = command.mut_subcommand(name, |sub| sub.arg(arg(s)));
        }
    }
    command
}

/// The config-file key of each Go-only setting that has one, by argument id.
pub fn config_keys() -> impl Iterator<Item = (&'static str, &'static str)> {
    SETTINGS.iter().filter_map(|s| s.key.map(|k| (s.flag, k)))
}

/// Values of Go-only settings that are the Go ncps's defaults (nixpkgs' module and the Go
/// chart write them whether or not the user chose them): given so, a setting is not worth a
/// warning, since leaving it out here changes nothing the user asked for.
const GO_DEFAULTS: &[(&str, &[&str])] = &[
    ("analytics-reporting-enabled", &["true"]),
    ("analytics-reporting-samples", &["false"]),
    ("use-xz-binary", &["false"]),
    ("cache-download-poll-timeout", &["30s"]),
    ("cache-cdc-lazy-cleanup-schedule", &["@every 1h"]),
    ("cache-inflight-staging-enabled", &["false"]),
    ("cache-inflight-staging-retention", &["5m", "5m0s"]),
    ("cache-inflight-staging-part-size", &["8388608"]),
    ("cache-lock-lru-ttl", &["30m", "30m0s"]),
    ("cache-lock-retry-max-attempts", &["3"]),
    ("cache-lock-retry-initial-delay", &["100ms"]),
    ("cache-lock-retry-max-delay", &["2s"]),
    ("cache-lock-retry-jitter", &["true"]),
    ("cache-lock-allow-degraded-mode", &["false"]),
    ("cache-redis-pool-size", &["10"]),
];

/// True when `values` are the Go ncps's default for `flag`.
fn is_go_default(flag: &str, values: &[String]) -> bool {
    let [value] = values else { return false };
    GO_DEFAULTS.iter().any(|(f, defaults)| {
        *f == flag
            && defaults
                .iter()
                .any(|d| d.eq_ignore_ascii_case(value.trim()))
    })
}

/// The Go-only settings given on the command line, in a variable or in the config file
/// (`config`: its values by key) with a value other than the Go ncps's default, each with why
/// it is ignored.
pub fn used(
    matches: &ArgMatches,
    config: &std::collections::BTreeMap<String, Vec<String>>,
) -> Vec<(&'static str, &'static str)> {
    let mut levels = vec![matches];
    if let Some((_, sub)) = matches.subcommand() {
        levels.push(sub);
    }
    SETTINGS
        .iter()
        .filter(|s| {
            let from_command_line = levels.iter().find_map(|m| {
                let given = m.try_contains_id(s.flag).unwrap_or(false)
                    && m.value_source(s.flag)
                        .is_some_and(|v| v != clap::parser::ValueSource::DefaultValue);
                given.then(|| {
                    m.get_raw(s.flag)
                        .map(|vals| {
                            vals.map(|v| v.to_string_lossy().into_owned())
                                .collect::<Vec<_>>()
                        })
                        .unwrap_or_default()
                })
            });
            let given = from_command_line.or_else(|| s.key.and_then(|k| config.get(k).cloned()));
            given.is_some_and(|values| !is_go_default(s.flag, &values))
        })
        .map(|s| (s.flag, s.why))
        .collect()
}
