//! `ncps migrate-nar-to-chunks` and `ncps migrate-chunks-to-nar`.
//!
//! Both work through the database in batches, so an interrupted run resumes where it stopped,
//! and both switch a NAR over only after its new form verified, so a server can keep serving
//! the same data meanwhile. Progress goes to stderr, one line per NAR.
#![allow(clippy::print_stderr)] // progress output is this command's interface

use std::time::{Duration, Instant};

use anyhow::Result;
use ncps_core::Cache;

use crate::cli::MigrateArgs;
use crate::{admin, setup};

async fn open_cache(args: &MigrateArgs) -> Result<(Cache, ncps_core::ChunkSettings)> {
    let opened = admin::open(&args.storage).await?;
    let settings = setup::chunk_settings(&opened.db, &args.cdc).await?;
    Ok((opened.cache, settings))
}

/// Reports each migrated NAR with a running count, size and rate.
fn reporter(verb: &'static str) -> impl FnMut(&ncps_nix::Sha256Hash, u64) {
    let started = Instant::now();
    let (mut count, mut bytes) = (0u64, 0u64);
    move |nar, size| {
        count += 1;
        bytes += size;
        let secs = started
            .elapsed()
            .max(Duration::from_millis(1))
            .as_secs_f64();
        eprintln!(
            "{verb} {count} NARs, {:.1} MB ({:.1} MB/s): {nar}",
            bytes as f64 / 1e6,
            bytes as f64 / 1e6 / secs
        );
    }
}

/// Chunks every NAR stored as a whole file, deleting each whole file once its chunks are in.
pub async fn to_chunks(args: MigrateArgs) -> Result<()> {
    let (cache, settings) = open_cache(&args).await?;
    let done = cache
        .migrate_to_chunks(settings, args.batch_size, reporter("chunked"))
        .await?;
    eprintln!("done: {done} NARs chunked");
    Ok(())
}

/// Rebuilds a verified whole file for every NAR kept only as chunks.
pub async fn to_whole_files(args: MigrateArgs) -> Result<()> {
    let (cache, _) = open_cache(&args).await?;
    let done = cache
        .migrate_to_whole_files(args.batch_size, reporter("rebuilt"))
        .await?;
    eprintln!("done: {done} NARs rebuilt as whole files");
    Ok(())
}
