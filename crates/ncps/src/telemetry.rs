//! Logging set-up, and OpenTelemetry export when enabled (see [`crate::otel`]).

use std::io::IsTerminal;

use anyhow::{Context, Result};
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, fmt};

use crate::cli::LogLevel;
use crate::otel::{Otel, OtelConfig};

/// What [`init`] started; [`Telemetry::shutdown`] flushes it before the process exits.
pub struct Telemetry {
    otel: Option<Otel>,
}

impl Telemetry {
    /// Flushes and stops the OpenTelemetry exporters (bounded); nothing to do without them.
    /// Call it while the Tokio runtime [`init`] ran in is still alive.
    pub fn shutdown(self) {
        if let Some(otel) = self.otel {
            otel.shutdown();
        }
    }
}

/// Logs to stderr (stdout is every command's result: `PUB=$(ncps generate-key …)` captures the
/// key alone): human-readable on a terminal, JSON lines otherwise (for journald and log
/// shippers). `RUST_LOG`, when set, overrides `--log-level` for fine-grained filters. With
/// `--otel-enabled`, spans are also exported over OTLP/gRPC, whatever the log level; this must
/// then run inside a Tokio runtime.
pub fn init(level: LogLevel, otel: &OtelConfig) -> Result<Telemetry> {
    // Log lines are events only: the spans the crates open (for OpenTelemetry) are not part
    // of them, so without `--otel-enabled` no layer wants a span and every span callsite is
    // disabled outright (nothing is allocated or formatted for it).
    let events = filter_fn(|meta| meta.is_event()).with_max_level_hint(LevelFilter::TRACE);
    let filter = log_filter(level)?.and(events);
    let logs = if std::io::stderr().is_terminal() {
        fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed()
    } else {
        fmt::layer()
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_filter(filter)
            .boxed()
    };
    let started = Otel::start(otel)?;
    let registry = tracing_subscriber::registry().with(logs);
    // Not an `Option` layer: even a `None` one would declare interest in every span.
    match &started {
        Some(otel) => registry.with(otel.layer()).try_init(),
        None => registry.try_init(),
    }
    .context("installing the log subscriber")?;
    if let Some(otel) = &started {
        tracing::info!(
            traces = otel.traces_endpoint(),
            metrics = otel.metrics_endpoint(),
            "OpenTelemetry: exporting traces and metrics over OTLP/gRPC"
        );
    }
    Ok(Telemetry { otel: started })
}

fn log_filter(level: LogLevel) -> Result<EnvFilter> {
    match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => EnvFilter::try_new(spec),
        _ => EnvFilter::try_new(level_directive(level)),
    }
    .context("invalid log filter")
}

/// Maps the Go ncps level names (zerolog's, checked by the flag's parser) onto tracing's.
fn level_directive(level: LogLevel) -> String {
    let level = match level {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
        LogLevel::Disabled => "off",
    };
    // Our crates at the chosen level; dependencies one notch quieter unless tracing.
    let deps = if level == "trace" || level == "debug" {
        "info"
    } else {
        level
    };
    format!(
        "{deps},ncps={level},ncps_core={level},ncps_server={level},ncps_upstream={level},ncps_db={level},ncps_store={level}"
    )
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum as _;
    use tracing::level_filters::LevelFilter;

    use super::*;

    #[test]
    fn otel_disabled_installs_only_logging() {
        // The only subscriber of this test process. With OTel off nothing is exported, no
        // runtime is needed (none exists here), and spans are not even created: the log
        // layer takes events only, even at a level it logs.
        let telemetry = init(LogLevel::Error, &OtelConfig::default()).unwrap();
        assert!(telemetry.otel.is_none());
        assert!(tracing::error_span!("probe").is_disabled());
        // The level still bounds everything (a cheap global check for disabled levels).
        assert_eq!(LevelFilter::current(), LevelFilter::ERROR);
        telemetry.shutdown();
    }

    #[test]
    fn go_level_names_are_accepted() {
        // As the flag parses them (ignoring case).
        let level_directive = |name| LogLevel::from_str(name, true).map(level_directive);
        assert!(level_directive("warning").unwrap().starts_with("warn,"));
        assert!(level_directive("fatal").unwrap().starts_with("error,"));
        assert!(level_directive("loud").is_err());
    }
}
