//! `ncps migrate-chunks-to-nar`: rebuilds a verified whole file for every NAR kept only as
//! chunks, then drops its chunk list. Resumable, and safe beside a running server, like
//! `migrate-nar-to-chunks`. Progress on stderr, one line per NAR.
#![allow(clippy::print_stderr)] // progress output is this command's interface

use anyhow::Result;

use crate::cli::MigrateArgs;
use crate::progress::Progress;
use crate::setup;

/// Runs the migration to whole files.
pub async fn run(args: MigrateArgs) -> Result<()> {
    let parts = setup::open(&args.storage, setup::Create::No).await?;
    // The chunking flags must still match the cache's, as for every command that opens it.
    setup::chunk_settings(&parts.db, &args.cdc).await?;
    let (count, bytes) = parts.db.form_migration_backlog().await?.1;
    if args.dry_run {
        eprintln!(
            "{count} NARs ({}) would be rebuilt as whole files; nothing changed (--dry-run)",
            ncps_core::maintenance::format_size(bytes)
        );
        return Ok(());
    }
    let db = parts.db.clone();
    let maintenance = super::maintenance(parts)?;
    let mut progress = Progress::new("migrate-chunks-to-nar", "NARs", Some(count), Some(bytes));
    let done = maintenance
        .migrate_to_whole_files(args.batch_size, |nar, size| {
            progress.item(size, Some(format!("rebuilt {nar}")));
        })
        .await?;
    progress.finish();
    eprintln!("done: {done} NARs rebuilt as whole files");
    let (chunks, bytes) = db.unreferenced_chunk_totals().await?;
    if chunks > 0 {
        eprintln!(
            "{chunks} chunk{} ({}) no NAR uses any more: `ncps serve`'s chunk collector deletes \
             each once it has been unused for --cache-cdc-gc-grace (default 1h), with chunking \
             on or off",
            if chunks == 1 { "" } else { "s" },
            ncps_core::maintenance::format_size(bytes)
        );
    }
    Ok(())
}
