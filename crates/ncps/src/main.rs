//! `ncps`: a Nix binary cache proxy.

mod allocator;
mod cli;
mod commands;
mod config_file;
mod duration;
mod go_only;
mod keys;
mod listen;
mod open_files;
mod otel;
mod otel_metrics;
mod progress;
mod setup;
mod shutdown;
mod size;
mod telemetry;

use anyhow::Result;
use tracing::warn;

fn main() -> Result<()> {
    allocator::configure();
    let parsed = cli::parse()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let otel = otel::OtelConfig {
        enabled: parsed.cli.otel_enabled,
        grpc_url: parsed.cli.otel_grpc_url.clone(),
    };
    // Inside the runtime: the OTLP exporters' gRPC channel lives there.
    let telemetry = runtime.block_on(async { telemetry::init(parsed.cli.log_level, &otel) })?;
    for key in &parsed.unknown_config_keys {
        warn!(key, "unknown key in the config file; ignored");
    }
    for (setting, why) in &parsed.ignored_go_settings {
        warn!(
            setting,
            why, "a setting of the Go ncps that has no effect here; ignored"
        );
    }
    for (old, new) in &parsed.deprecated_names {
        warn!(
            deprecated = old,
            current = new,
            "a deprecated name was used; it still works"
        );
    }
    let result = runtime.block_on(async {
        match parsed.cli.command {
            cli::Command::Serve(args) => {
                commands::serve::run(*args, parsed.cli.prometheus_enabled).await
            }
            cli::Command::MigrateNarToChunks(args) => {
                commands::migrate_nar_to_chunks::run(*args).await
            }
            cli::Command::MigrateChunksToNar(args) => {
                commands::migrate_chunks_to_nar::run(*args).await
            }
            cli::Command::Migrate(args) => commands::migrate::run(*args).await,
            cli::Command::MigrateNarinfo(args) => commands::migrate_narinfo::run(*args).await,
            cli::Command::Fsck(args) => commands::fsck::run(*args).await,
            cli::Command::GenerateKey(args) => commands::generate_key::run(&args),
            cli::Command::Pin(args) => commands::pin::pin(*args).await,
            cli::Command::Unpin(args) => commands::pin::unpin(*args).await,
            cli::Command::Pins(args) => commands::pin::list(*args).await,
            cli::Command::Warm(args) => commands::warm::run(*args).await,
        }
    });
    // Spans of the last requests and the final metric values, before the runtime goes.
    telemetry.shutdown();
    result
}
