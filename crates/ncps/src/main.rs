//! `ncps`: a Nix binary cache proxy.

mod admin;
mod cli;
mod config_file;
mod duration;
mod keys;
mod listen;
mod migrate;
mod otel;
mod otel_metrics;
mod serve;
mod setup;
mod shutdown;
mod size;
mod telemetry;

use anyhow::Result;
use tracing::warn;

fn main() -> Result<()> {
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
    let result = runtime.block_on(async {
        match parsed.cli.command {
            cli::Command::Serve(args) => serve::run(*args, parsed.cli.prometheus_enabled).await,
            cli::Command::MigrateNarToChunks(args) => migrate::to_chunks(*args).await,
            cli::Command::MigrateChunksToNar(args) => migrate::to_whole_files(*args).await,
            cli::Command::Migrate(args) => admin::schema::run(*args).await,
            cli::Command::MigrateNarinfo(args) => admin::import::run(*args).await,
            cli::Command::Fsck(args) => admin::fsck::run(*args).await,
            cli::Command::GenerateKey(args) => admin::keygen::run(&args),
            cli::Command::Pin(args) => admin::pins::pin(*args).await,
            cli::Command::Unpin(args) => admin::pins::unpin(*args).await,
            cli::Command::Pins(args) => admin::pins::list(*args).await,
        }
    });
    // Spans of the last requests and the final metric values, before the runtime goes.
    telemetry.shutdown();
    result
}
