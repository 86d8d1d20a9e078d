//! `ncps migrate`: apply pending database migrations explicitly and say where the schema is.
//!
//! Every command migrates when it opens the database; running this first lets an operator
//! upgrade the schema at a chosen moment (e.g. before starting new replicas) and see the result.
#![allow(clippy::print_stdout)] // the report is this command's output

use anyhow::{Context, Result};
use ncps_db::now_secs;

use super::format_utc;
use crate::cli::AdminArgs;
use crate::setup;

/// Opens the database (which applies pending migrations), applies again (a no-op that proves
/// nothing is pending), and prints every applied migration, marking those this run applied.
pub async fn run(args: AdminArgs) -> Result<()> {
    let started = now_secs();
    let parts = setup::open(&args.storage).await?;
    parts
        .db
        .migrate()
        .await
        .context("applying database migrations")?;
    let applied = parts.db.applied_migrations().await?;
    let mut fresh = 0;
    for m in &applied {
        let now = m.installed_at >= started;
        fresh += usize::from(now);
        println!(
            "{:04} {}: applied {}{}",
            m.version,
            m.description,
            format_utc(m.installed_at),
            if now { " (by this run)" } else { "" }
        );
    }
    let version = applied.last().map_or(0, |m| m.version);
    println!(
        "database schema at version {version}; {fresh} migration{} applied by this run",
        if fresh == 1 { "" } else { "s" }
    );
    Ok(())
}
