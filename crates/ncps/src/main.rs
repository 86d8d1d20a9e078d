//! `ncps`: a Nix binary cache proxy.

mod cli;
mod config_file;
mod duration;
mod keys;
mod serve;
mod shutdown;
mod telemetry;

use anyhow::Result;
use tracing::warn;

fn main() -> Result<()> {
    let parsed = cli::parse()?;
    telemetry::init(&parsed.cli.log_level)?;
    for key in &parsed.unknown_config_keys {
        warn!(key, "unknown key in the config file; ignored");
    }
    let runtime = tokio::runtime::Runtime::new()?;
    match parsed.cli.command {
        cli::Command::Serve(args) => runtime.block_on(serve::run(*args)),
    }
}
