//! Moving NARs between their stored forms: chunking whole files (lazily in the background, or
//! all at once by `migrate-nar-to-chunks`), deleting whole files whose chunks are complete once
//! their delay passed, and rebuilding whole files from chunks (`migrate-chunks-to-nar`).
//!
//! A NAR switches form only after the new form verified against its NarHash, and the old form
//! is forgotten before its bytes are deleted, so a server keeps serving throughout.

use std::io;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use ncps_db::{NarRecord, NarsToConvert, WholeFile};
use ncps_nix::{Compression, NarKey, Sha256Hash};
use tracing::{info, warn};

use super::Maintenance;
use crate::CacheError;
use crate::ingest::{ChunkSettings, Expected, chunk_verified, write_verified};
use crate::reader::splice;
use crate::temp::TempKind;

impl Maintenance {
    /// Queues NARs whose chunking never finished (a crash, a restart) and deletes whole files
    /// whose delay has passed; returns how many of each.
    pub(super) async fn recover_and_clean(
        &self,
        lazy: bool,
        batch: u32,
    ) -> Result<(u64, u64), CacheError> {
        let mut queued = 0;
        if lazy {
            for record in self.0.db.nars_to_chunk(batch).await? {
                self.0.chunk_queue.push(record.nar_hash);
                queued += 1;
            }
        }
        let deleted = self.delete_expired_whole_files(batch).await?;
        if deleted > 0 {
            info!(files = deleted, "deleted whole files now stored as chunks");
        }
        Ok((queued, deleted as u64))
    }

    /// Chunks a NAR stored as a whole file, verifying the result against the NAR's hashes
    /// before recording it. Returns `false` when there was nothing to do. The whole file is
    /// marked for deletion after the configured delay (at once when chunking is off, as in the
    /// migration command).
    pub async fn chunk_stored_nar(
        &self,
        nar_hash: &Sha256Hash,
        settings: ChunkSettings,
    ) -> Result<bool, CacheError> {
        let db = &self.0.db;
        let Some(record) = db.nar(nar_hash).await? else {
            return Ok(false);
        };
        let (Some(whole), None) = (record.whole, record.chunked) else {
            return Ok(false);
        };
        let Some(read) = self.0.store.read_nar(&whole.key, None).await? else {
            warn!(nar = %nar_hash, "whole file missing from storage; forgetting it");
            db.forget_whole_file(nar_hash).await?;
            return Ok(false);
        };
        let source = read.stream.map_err(io::Error::other).boxed();
        let expected = Expected::exactly(
            whole.key.compression,
            Some(whole.key.hash),
            Some(whole.size),
            *nar_hash,
            record.nar_size,
        );
        let chunked =
            chunk_verified(&self.0.store, &self.0.db, source, &expected, settings, None).await?;
        let delay = self.0.cdc.map_or(Duration::ZERO, |c| c.delete_delay);
        let delete_whole_after = ncps_db::now_secs() + delay.as_secs() as i64;
        self.0
            .ingest
            .commit_chunks_replacing_whole(nar_hash, record.nar_size, &chunked, delete_whole_after)
            .await
    }

    /// Deletes whole files whose chunks are complete and whose delay has passed.
    pub async fn delete_expired_whole_files(&self, batch: u32) -> Result<usize, CacheError> {
        let expired = self
            .0
            .db
            .nars_with_expired_whole_file(ncps_db::now_secs(), batch)
            .await?;
        for record in &expired {
            self.drop_whole_file(record).await?;
        }
        Ok(expired.len())
    }

    /// Forgets a NAR's whole file, then deletes its bytes (readers that already opened it keep
    /// their stream).
    async fn drop_whole_file(&self, record: &NarRecord) -> Result<(), CacheError> {
        if let Some(whole) = record.whole {
            self.0.db.forget_whole_file(&record.nar_hash).await?;
            self.0.store.delete_nar(&whole.key).await?;
        }
        Ok(())
    }

    /// Rebuilds the whole file of a NAR stored only as chunks (the spliced zstd stream),
    /// verifies it against the NarHash, stores it, and only then drops the chunk list.
    pub async fn unchunk_nar(&self, nar_hash: &Sha256Hash) -> Result<bool, CacheError> {
        let db = &self.0.db;
        let Some(record) = db.nar(nar_hash).await? else {
            return Ok(false);
        };
        let (None, Some(form)) = (record.whole, record.chunked) else {
            return Ok(false);
        };
        let chunks = db.nar_chunks(nar_hash).await?;
        let spliced = splice(&self.0.store, chunks.into(), None, form.spliced_size).stream;
        let (file, path) = self.0.ingest.temp().create(TempKind::Unchunk)?;
        let expected = Expected::exactly(
            Compression::Zstd,
            None,
            Some(form.spliced_size),
            record.nar_hash,
            record.nar_size,
        );
        let verified = write_verified(file, expected, spliced, None).await?;
        let whole = WholeFile {
            key: NarKey::new(verified.file_hash, Compression::Zstd),
            size: verified.file_size,
        };
        self.0
            .ingest
            .commit_whole_file(nar_hash, record.nar_size, whole, &path)
            .await?;
        db.drop_chunk_list(nar_hash).await?;
        self.0.reader.forget_chunk_list(nar_hash);
        Ok(true)
    }

    /// Chunks every NAR stored whole, `batch` at a time, calling `progress` after each; whole
    /// files are deleted once their chunks are recorded. Resumable: work done is not redone.
    pub async fn migrate_to_chunks(
        &self,
        settings: ChunkSettings,
        batch: u32,
        mut progress: impl FnMut(&Sha256Hash, u64),
    ) -> Result<u64, CacheError> {
        let mut done = 0;
        let mut after = None;
        loop {
            let todo = self
                .0
                .db
                .nars_to_convert_after(NarsToConvert::ToChunks, after.as_ref(), batch)
                .await?;
            let Some(last) = todo.last() else {
                return Ok(done);
            };
            after = Some(last.nar_hash);
            for record in todo {
                self.chunk_stored_nar(&record.nar_hash, settings).await?;
                if let Some(fresh) = self.0.db.nar(&record.nar_hash).await? {
                    self.drop_whole_file(&fresh).await?;
                }
                done += 1;
                progress(&record.nar_hash, record.nar_size);
            }
        }
    }

    /// Rebuilds whole files for every NAR stored only as chunks (see
    /// [`Maintenance::unchunk_nar`]).
    pub async fn migrate_to_whole_files(
        &self,
        batch: u32,
        mut progress: impl FnMut(&Sha256Hash, u64),
    ) -> Result<u64, CacheError> {
        let mut done = 0;
        let mut after = None;
        loop {
            let todo = self
                .0
                .db
                .nars_to_convert_after(NarsToConvert::ToWholeFiles, after.as_ref(), batch)
                .await?;
            let Some(last) = todo.last() else {
                return Ok(done);
            };
            after = Some(last.nar_hash);
            for record in todo {
                self.unchunk_nar(&record.nar_hash).await?;
                done += 1;
                progress(&record.nar_hash, record.nar_size);
            }
        }
    }
}
