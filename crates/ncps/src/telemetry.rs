//! Logging set-up.

use std::io::IsTerminal;

use anyhow::{Context, Result};
use tracing_subscriber::EnvFilter;

/// Logs to stdout: human-readable on a terminal, JSON lines otherwise (for journald and log
/// shippers). `RUST_LOG`, when set, overrides `--log-level` for fine-grained filters.
pub fn init(level: &str) -> Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => EnvFilter::try_new(spec),
        _ => EnvFilter::try_new(level_directive(level)?),
    }
    .context("invalid log filter")?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if std::io::stdout().is_terminal() {
        builder.init();
    } else {
        builder.json().flatten_event(true).init();
    }
    Ok(())
}

/// Accepts the Go ncps level names (zerolog's), mapping them onto tracing's.
fn level_directive(level: &str) -> Result<String> {
    let level = match level.to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warn" | "warning" => "warn",
        "error" | "fatal" | "panic" => "error",
        "disabled" | "off" => "off",
        other => anyhow::bail!("unknown log level {other:?} (trace, debug, info, warn, error)"),
    };
    // Our crates at the chosen level; dependencies one notch quieter unless tracing.
    let deps = if level == "trace" || level == "debug" {
        "info"
    } else {
        level
    };
    Ok(format!(
        "{deps},ncps={level},ncps_core={level},ncps_server={level},ncps_upstream={level},ncps_db={level},ncps_store={level}"
    ))
}
