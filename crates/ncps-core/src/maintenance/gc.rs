//! Chunk garbage collection: a chunk whose last reference went more than the grace period ago
//! (so no reader still streams a list that named it) is claimed, its object deleted, then its
//! row. An ingest that needs the chunk again holds it first: a held chunk cannot be claimed,
//! and a claimed one makes the ingest wait until the row is gone (see `ingest::chunking`).

use std::time::Duration;

use ncps_nix::ChunkHash;
use tracing::warn;

use super::Maintenance;
use crate::{CacheError, defaults};

/// Unreferenced chunks taken per round.
const GC_BATCH: u32 = 1000;

/// What a garbage collection removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Chunks deleted.
    pub chunks_deleted: u64,
}

impl Maintenance {
    /// Deletes chunks that have had no reference for longer than `grace`. One replica collects
    /// at a time; the others return an empty report.
    pub async fn collect_chunks(&self, grace: Duration) -> Result<GcReport, CacheError> {
        let mut report = GcReport::default();
        let Some(global) = self
            .0
            .locks
            .try_lock("chunk-gc", defaults::LOCK_LEASE)
            .await?
        else {
            return Ok(report);
        };
        let before = ncps_db::now_secs() - grace.as_secs() as i64;
        // Claims a collection that died half-way left behind: their objects may be gone.
        loop {
            let leftovers = self.0.db.claimed_chunks(GC_BATCH).await?;
            if leftovers.is_empty() {
                break;
            }
            self.delete_claimed(&leftovers).await?;
            report.chunks_deleted += leftovers.len() as u64;
        }
        loop {
            if global.is_lost() {
                warn!("lost the chunk collection lock to another replica; stopping this run");
                return Ok(report);
            }
            let batch = self.0.db.unreferenced_chunks(before, GC_BATCH).await?;
            if batch.is_empty() {
                return Ok(report);
            }
            let claimed = self.0.db.claim_unreferenced_chunks(&batch, before).await?;
            self.delete_claimed(&claimed).await?;
            report.chunks_deleted += claimed.len() as u64;
        }
    }

    /// Deletes claimed chunks, a batch at a time: objects first, then the rows, whose
    /// disappearance tells waiting ingests that they may write the chunks again.
    async fn delete_claimed(&self, hashes: &[ChunkHash]) -> Result<(), CacheError> {
        self.0.store.delete_chunks(hashes).await?;
        self.0.db.forget_collected_chunks(hashes).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use futures::StreamExt;
    use ncps_nix::Sha256Hash;
    use ncps_store::chunk::ChunkParams;

    use ncps_db::Database;
    use ncps_store::BlobStore;

    use crate::ingest::{ChunkSettings, Chunked, Expected, chunk_verified};
    use crate::test_support::local_cache;

    /// A NAR of `len` pseudo-random bytes seeded by `seed`.
    fn nar(seed: u8, len: usize) -> Vec<u8> {
        crate::test_support::noise(seed, len)
    }

    const SETTINGS: ChunkSettings = ChunkSettings {
        params: ChunkParams {
            min: 64,
            avg: 256,
            max: 1024,
        },
        zstd_level: 1,
        priority: crate::Priority::Client,
    };

    /// Chunks a plain NAR into `store`, as an ingest does (holding its chunks first).
    async fn chunk_bytes(store: BlobStore, db: Database, bytes: Vec<u8>) -> Chunked {
        let expected = Expected::plain_nar(&bytes);
        let source = futures::stream::iter([Ok(Bytes::from(bytes))]).boxed();
        chunk_verified(&store, &db, source, &expected, SETTINGS, None)
            .await
            .unwrap()
    }

    /// Defect 12 of issue 15: an ingest finds its chunks stored while the collector is about
    /// to delete them (claimed, objects still there). The ingest waits for the deletion to
    /// finish, then writes the chunks itself: every chunk its list names is in storage.
    #[tokio::test(flavor = "multi_thread")]
    async fn an_ingest_never_relies_on_a_chunk_being_collected() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, db) = local_cache(dir.path()).await;
        let (ingest, m) = (cache.ingest(), cache.maintenance());
        let store = BlobStore::local(&dir.path().join("store")).unwrap();
        let a = nar(3, 20_000);
        let a_hash = Sha256Hash::digest(&a);
        let first = chunk_bytes(store.clone(), db.clone(), a.clone()).await;
        assert!(ingest.commit_chunks(&a_hash, 20_000, &first).await.unwrap());
        db.drop_chunk_list(&a_hash).await.unwrap();
        let now = ncps_db::now_secs();
        for c in &first.refs {
            db.claim_unreferenced_chunk(&c.hash, now).await.unwrap();
        }
        assert!(
            store
                .all_chunks_present(&first.refs.iter().map(|c| c.hash).collect::<Vec<_>>())
                .await
                .unwrap()
        );

        let again = tokio::spawn(chunk_bytes(store.clone(), db.clone(), a));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !again.is_finished(),
            "the ingest did not wait for the collector"
        );
        // The collector finishes the deletions it claimed (here: the next run does).
        let report = m.collect_chunks(Duration::from_secs(3600)).await.unwrap();
        assert!(report.chunks_deleted > 0);
        let again = again.await.unwrap();
        assert!(ingest.commit_chunks(&a_hash, 20_000, &again).await.unwrap());
        for c in &again.refs {
            assert!(
                store.has_chunk(&c.hash).await.unwrap(),
                "a listed chunk is gone"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn unreferenced_chunks_go_and_chunks_used_again_stay() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, db) = local_cache(dir.path()).await;
        let (ingest, m) = (cache.ingest(), cache.maintenance());
        let store = BlobStore::local(&dir.path().join("store")).unwrap();
        let chunk = |bytes: Vec<u8>| chunk_bytes(store.clone(), db.clone(), bytes);
        let (a, b) = (nar(1, 20_000), nar(2, 20_000));
        let (a_hash, b_hash) = (Sha256Hash::digest(&a), Sha256Hash::digest(&b));
        let a_chunks = chunk(a).await;
        ingest
            .commit_chunks(&a_hash, 20_000, &a_chunks)
            .await
            .unwrap();
        let b_chunks = chunk(b.clone()).await;
        ingest
            .commit_chunks(&b_hash, 20_000, &b_chunks)
            .await
            .unwrap();

        // Both lists dropped; B's NAR is then stored again (another chunker, the same chunks)
        // before the collector runs.
        db.drop_chunk_list(&a_hash).await.unwrap();
        db.drop_chunk_list(&b_hash).await.unwrap();
        let again = chunk(b).await;
        ingest.commit_chunks(&b_hash, 20_000, &again).await.unwrap();

        let report = m.collect_chunks(Duration::ZERO).await.unwrap();
        let a_only: Vec<_> = a_chunks
            .refs
            .iter()
            .filter(|c| !again.refs.iter().any(|b| b.hash == c.hash))
            .collect();
        assert_eq!(report.chunks_deleted, a_only.len() as u64);
        for c in &a_only {
            assert!(!store.has_chunk(&c.hash).await.unwrap(), "A's chunk kept");
        }
        for c in &again.refs {
            assert!(store.has_chunk(&c.hash).await.unwrap(), "B's chunk deleted");
        }
        assert!(db.nar(&b_hash).await.unwrap().unwrap().chunked.is_some());
        // Within the grace period nothing goes.
        db.drop_chunk_list(&b_hash).await.unwrap();
        let report = m.collect_chunks(Duration::from_secs(3600)).await.unwrap();
        assert_eq!(report.chunks_deleted, 0);
    }
}
