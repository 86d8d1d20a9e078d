//! `ncps migrate [up|down] [--dry-run]`: apply pending database migrations explicitly and say
//! where the schema is.
//!
//! Every command migrates when it opens the database; running this first lets an operator
//! upgrade the schema at a chosen moment (e.g. before starting new replicas) and see the result.
//! Only the database is opened (a migration job may be given nothing but its URL, as the Go
//! ncps's Helm chart does). `up` is the Go ncps's name for the same; `down` is refused, as the
//! Go ncps refuses it: migrations are forward-only.
#![allow(clippy::print_stdout)] // the report is this command's output

use super::format_utc;
use crate::cli::{MigrateAction, MigrateCommand, MigrateUpArgs};
use crate::setup;
use anyhow::{Context, Result, bail};

/// Runs `migrate`, `migrate up` or `migrate down`.
pub async fn run(command: MigrateCommand) -> Result<()> {
    match command.action {
        None => up(command.up).await,
        Some(MigrateAction::Up(args)) => up(args).await,
        Some(MigrateAction::Down(_)) => bail!(
            "ncps's database migrations are forward-only, as the Go ncps's are: there is no \
             `migrate down`; to go back, restore the backup taken before the upgrade \
             (docs/operations.md, \"Backups\")"
        ),
    }
}

/// Applies pending migrations and prints every applied one, marking those this run applied;
/// with `--dry-run`, prints what is applied and what is pending and changes nothing.
async fn up(args: MigrateUpArgs) -> Result<()> {
    let (url, db) = setup::open_database_unmigrated(&args.storage).await?;
    let plan = db.migration_plan().await?;
    let go = db.holds_go_schema().await?;
    if go {
        println!(
            "this database holds the Go ncps's tables: {} moved aside untouched (prefix \
             go_ncps_, or schema go_ncps on PostgreSQL), its signing key kept, and its paths \
             imported by `ncps migrate-narinfo` or in the background by `ncps serve`",
            if args.dry_run {
                "they would be"
            } else {
                "they are"
            }
        );
    }
    if args.dry_run {
        let pending = plan.iter().filter(|m| !m.applied).count();
        for m in &plan {
            let state = if m.applied { "applied" } else { "pending" };
            println!("{:04} {}: {state}", m.version, m.description);
        }
        println!(
            "{pending} migration{} pending in {}; nothing changed (--dry-run)",
            if pending == 1 { "" } else { "s" },
            ncps_db::redact_url(&url)
        );
        return Ok(());
    }
    db.migrate().await.context("applying database migrations")?;
    let applied = db.applied_migrations().await?;
    let mut fresh = 0;
    for m in &applied {
        let now = !plan.iter().any(|p| p.version == m.version && p.applied);
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
