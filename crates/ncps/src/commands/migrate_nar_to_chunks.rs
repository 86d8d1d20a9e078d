//! `ncps migrate-nar-to-chunks`: chunks every NAR stored as a whole file, deleting each whole
//! file once its chunks are in. Works through the database in batches, so an interrupted run
//! resumes where it stopped, and switches a NAR over only after its chunks verified, so a
//! server can keep serving the same data meanwhile. Progress on stderr, one line per NAR.
#![allow(clippy::print_stderr)] // progress output is this command's interface

use anyhow::Result;

use super::migration_progress;
use crate::cli::MigrateArgs;
use crate::setup;

/// Runs the migration to chunks.
pub async fn run(args: MigrateArgs) -> Result<()> {
    let parts = setup::open(&args.storage, setup::Create::No).await?;
    let settings = setup::chunk_settings(&parts.db, &args.cdc).await?;
    if args.dry_run {
        let backlog = parts.db.form_migration_backlog().await?;
        let (count, bytes) = backlog.0;
        eprintln!(
            "{count} NARs ({}) would be chunked; nothing changed (--dry-run)",
            ncps_core::maintenance::format_size(bytes)
        );
        return Ok(());
    }
    let maintenance = super::maintenance(parts)?;
    let done = maintenance
        .migrate_to_chunks(settings, args.batch_size, migration_progress("chunked"))
        .await?;
    eprintln!("done: {done} NARs chunked");
    Ok(())
}
