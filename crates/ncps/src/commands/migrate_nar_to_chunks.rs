//! `ncps migrate-nar-to-chunks`: chunks every NAR stored as a whole file, deleting each whole
//! file once its chunks are in. Works through the database in batches, so an interrupted run
//! resumes where it stopped, and switches a NAR over only after its chunks verified, so a
//! server can keep serving the same data meanwhile. Progress on stderr, one line per NAR.
#![allow(clippy::print_stderr)] // progress output is this command's interface

use anyhow::Result;

use crate::cli::MigrateArgs;
use crate::progress::Progress;
use crate::setup;

/// Runs the migration to chunks.
pub async fn run(args: MigrateArgs) -> Result<()> {
    let parts = setup::open(&args.storage, setup::Create::No).await?;
    let settings = setup::chunk_settings(&parts.db, &args.cdc).await?;
    let (count, bytes) = parts.db.form_migration_backlog().await?.0;
    if args.dry_run {
        eprintln!(
            "{count} NARs ({}) would be chunked; nothing changed (--dry-run)",
            ncps_core::maintenance::format_size(bytes)
        );
        return Ok(());
    }
    let maintenance = super::maintenance(parts)?;
    let mut progress = Progress::new("migrate-nar-to-chunks", "NARs", Some(count), Some(bytes));
    let done = maintenance
        .migrate_to_chunks(settings, args.batch_size, |nar, size| {
            progress.item(size, Some(format!("chunked {nar}")));
        })
        .await?;
    progress.finish();
    eprintln!("done: {done} NARs chunked");
    Ok(())
}
