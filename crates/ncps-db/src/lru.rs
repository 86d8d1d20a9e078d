//! What least-recently-used eviction needs: batched access-time updates, the bytes really on
//! storage, and evicting a batch of narinfos (with the NARs no other narinfo uses) in one
//! transaction, or a batch of documents (build logs, realisations).

use std::str::FromStr;

use ncps_nix::{Sha256Hash, StorePathHash};
use sqlx::Row;

use crate::dialect::{bind_all, placeholders, text};
use crate::repo::{ROWS_PER_STATEMENT, corrupt, to_u64};
use crate::{Database, DbError, Removed};

/// Access times recorded per write transaction: a flush of many accesses commits a few times
/// rather than once per statement (each commit makes every other SQLite connection drop its
/// page cache, and pages the statements share are written once per commit), while other
/// writers still get their turn between transactions of a long flush.
const TOUCHES_PER_TRANSACTION: usize = 4 * ROWS_PER_STATEMENT;

/// A narinfo in least-recently-used order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LruEntry {
    /// Its store path hash.
    pub hash: StorePathHash,
    /// When it was last served, in seconds since the epoch.
    pub last_accessed_at: i64,
    /// Bytes its NAR takes in storage (0 when not stored), to evict no more than needed.
    pub stored_size: u64,
}

/// A document eviction can remove: it has no NAR, only its own bytes in the database.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DocumentKey {
    /// A build log, by derivation name.
    BuildLog(String),
    /// A realisation or build-trace document, by id.
    Realisation(String),
}

impl DocumentKey {
    /// The table, key column and kind label of this document.
    fn place(&self) -> (&'static str, &'static str, &str) {
        match self {
            DocumentKey::BuildLog(drv) => ("build_logs", "drv", drv),
            DocumentKey::Realisation(id) => ("realisations", "id", id),
        }
    }
}

/// A document in least-recently-used order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentEntry {
    /// Which document.
    pub key: DocumentKey,
    /// When it was last served or stored, in seconds since the epoch.
    pub last_accessed_at: i64,
    /// Its size in bytes.
    pub stored_size: u64,
}

impl Database {
    /// Records that a document was served at `at`.
    pub async fn touch_document(&self, key: &DocumentKey, at: i64) -> Result<(), DbError> {
        let (table, column, key) = key.place();
        self.touch(table, column, &[key.to_owned()], at).await
    }

    /// Documents last used at or before `at`, oldest first, at most `limit`.
    pub async fn documents_used_before(
        &self,
        at: i64,
        limit: u32,
    ) -> Result<Vec<DocumentEntry>, DbError> {
        let rows = sqlx::query(&self.sql(
            "SELECT kind, k, last_accessed_at, stored_size FROM ( \
             SELECT 'log' AS kind, drv AS k, last_accessed_at, stored_size FROM build_logs \
             WHERE last_accessed_at <= ? \
             UNION ALL \
             SELECT 'realisation' AS kind, id AS k, last_accessed_at, stored_size \
             FROM realisations WHERE last_accessed_at <= ?) d \
             ORDER BY last_accessed_at, kind, k LIMIT ?",
        ))
        .bind(at)
        .bind(at)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let k = text(r, "k")?;
                let key = match text(r, "kind")?.as_str() {
                    "log" => DocumentKey::BuildLog(k),
                    _ => DocumentKey::Realisation(k),
                };
                Ok(DocumentEntry {
                    key,
                    last_accessed_at: r.try_get("last_accessed_at")?,
                    stored_size: to_u64("documents", r.try_get("stored_size")?)?,
                })
            })
            .collect()
    }

    /// Removes documents (eviction).
    pub async fn evict_documents(&self, keys: &[DocumentKey]) -> Result<(), DbError> {
        for key in keys {
            let (table, column, key) = key.place();
            sqlx::query(&self.sql(&format!("DELETE FROM {table} WHERE {column} = ?")))
                .bind(key)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Records that narinfos were served at `at`, many per statement.
    pub async fn touch_narinfos(&self, hashes: &[StorePathHash], at: i64) -> Result<(), DbError> {
        let keys: Vec<String> = hashes.iter().map(ToString::to_string).collect();
        self.touch("narinfos", "hash", &keys, at).await
    }

    /// Records that NARs were served at `at`, many per statement. Every narinfo of such a NAR
    /// counts as used too: eviction orders narinfos, and a client that remembered a narinfo
    /// (Nix keeps them for days) asks for the NAR alone.
    pub async fn touch_nars(&self, hashes: &[Sha256Hash], at: i64) -> Result<(), DbError> {
        let keys: Vec<String> = hashes.iter().map(ToString::to_string).collect();
        self.touch("nars", "nar_hash", &keys, at).await?;
        self.touch("narinfos", "nar_hash", &keys, at).await
    }

    async fn touch(
        &self,
        table: &str,
        column: &str,
        keys: &[String],
        at: i64,
    ) -> Result<(), DbError> {
        for slice in keys.chunks(TOUCHES_PER_TRANSACTION) {
            let mut tx = self.begin().await?;
            for batch in slice.chunks(ROWS_PER_STATEMENT) {
                let sql = format!(
                    "UPDATE {table} SET last_accessed_at = ? WHERE last_accessed_at < ? \
                     AND {column} IN {}",
                    placeholders(batch.len())
                );
                let sql = self.sql(&sql);
                let q = sqlx::query(&sql).bind(at).bind(at);
                bind_all(q, batch).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        }
        Ok(())
    }

    /// Chunks no NAR uses any more, waiting for the chunk collector: how many, and their
    /// stored bytes.
    pub async fn unreferenced_chunk_totals(&self) -> Result<(u64, u64), DbError> {
        let d = self.dialect;
        let row = sqlx::query(&format!(
            "SELECT {} AS n, {} AS bytes FROM chunks WHERE ref_count = 0",
            d.bigint("COUNT(*)"),
            d.bigint("COALESCE(SUM(stored_size), 0)")
        ))
        .fetch_one(&self.pool)
        .await?;
        let n: i64 = sqlx::Row::try_get(&row, "n")?;
        let bytes: i64 = sqlx::Row::try_get(&row, "bytes")?;
        Ok((to_u64("chunks", n)?, to_u64("chunks", bytes)?))
    }

    /// Narinfos from least to most recently used, `limit` at a time, starting after `after`.
    pub async fn lru_page(
        &self,
        after: Option<&LruEntry>,
        limit: u32,
    ) -> Result<Vec<LruEntry>, DbError> {
        let (at, hash) = after.map_or((i64::MIN, String::new()), |e| {
            (e.last_accessed_at, e.hash.to_string())
        });
        let rows = sqlx::query(&self.lru_page_sql())
            .bind(at)
            .bind(at)
            .bind(at)
            .bind(hash)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(LruEntry {
                    hash: StorePathHash::from_str(&text(r, "hash")?)
                        .map_err(|e| corrupt("narinfos", e))?,
                    last_accessed_at: r.try_get("last_accessed_at")?,
                    stored_size: to_u64("nars", r.try_get("stored_size")?)?,
                })
            })
            .collect()
    }

    /// The query of [`Self::lru_page`] (binds: the cursor's time three times, its hash, the
    /// limit): pages keyed by (last use, hash). Its first condition follows from the others,
    /// but it is the one an engine can start its range of the access-time index with: without
    /// it SQLite and PostgreSQL read that index from its start on every page, past every path
    /// kept there (pinned ones), or gathered and sorted every later row (SQLite's plan with
    /// a literal limit: 2.7 s a page at a million paths).
    fn lru_page_sql(&self) -> String {
        let stored_size = self
            .dialect
            .bigint("COALESCE(n.whole_size, 0) + COALESCE(n.spliced_size, 0)");
        self.sql(&format!(
            "SELECT i.hash, i.last_accessed_at, {stored_size} AS stored_size \
             FROM narinfos i LEFT JOIN nars n ON n.nar_hash = i.nar_hash \
             WHERE i.last_accessed_at >= ? \
             AND (i.last_accessed_at > ? OR (i.last_accessed_at = ? AND i.hash > ?)) \
             ORDER BY i.last_accessed_at, i.hash LIMIT ?"
        ))
        .into_owned()
    }

    /// Evicts narinfos and, in the same transaction, every NAR no remaining narinfo uses: its
    /// row, its URLs and its chunk list (chunks lose their references and become collectable).
    /// Returns the NARs removed, so the caller deletes their whole files, and the bytes freed.
    pub async fn evict(&self, hashes: &[StorePathHash]) -> Result<Removed, DbError> {
        let keys: Vec<String> = hashes.iter().map(ToString::to_string).collect();
        self.delete_rows_and_unused_nars("narinfos", "hash", &keys)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::narinfos::tests::sample;
    use crate::{ChunkRef, WholeFile};
    use ncps_nix::{ChunkHash, Compression, NarKey, StorePath};

    fn path(i: u32) -> StorePath {
        let digest = Sha256Hash::digest(&i.to_le_bytes());
        let mut bytes = [0u8; 20];
        bytes.copy_from_slice(&digest.as_bytes()[..20]);
        StorePath::parse_base_name(&format!("{}-p{i}", StorePathHash::from_bytes(bytes))).unwrap()
    }

    /// Stores path `i` whose NAR `nar_hash` is kept as a 1,000-byte whole file; returns the
    /// path's hash.
    async fn store_path_with_whole_file(
        db: &Database,
        i: u32,
        nar_hash: Sha256Hash,
    ) -> StorePathHash {
        let mut info = sample();
        info.narinfo.store_path = path(i);
        info.narinfo.nar_hash = nar_hash;
        info.url_key = NarKey::new(nar_hash, Compression::Zstd);
        db.insert_narinfo(&info, None).await.unwrap();
        let whole = WholeFile {
            key: NarKey::new(nar_hash, Compression::Xz),
            size: 1000,
        };
        db.record_whole_file(&nar_hash, 5000, whole, None)
            .await
            .unwrap();
        *info.narinfo.store_path.hash()
    }

    db_test! {
        async fn eviction_follows_access_order_and_frees_shared_nars_last(db) {
            let shared = Sha256Hash::digest(b"shared");
            let mut hashes = Vec::new();
            for i in 0..4u32 {
                // paths 0 and 1 share one NAR; 2 and 3 have their own
                let nar_hash = if i < 2 {
                    shared
                } else {
                    Sha256Hash::digest(&i.to_le_bytes())
                };
                hashes.push(store_path_with_whole_file(db, i, nar_hash).await);
            }
            let chunk = ChunkRef {
                hash: ChunkHash::digest(b"c"),
                plain_size: 10,
                stored_size: 7,
            };
            db.commit_held(&shared, 5000, &[chunk], Sha256Hash::digest(b"s"))
                .await
                .unwrap();
            assert_eq!(db.stored_bytes().await.unwrap(), 3 * 1000 + 7);

            // Access order: 3 oldest, then 0, 1, 2.
            for (i, h) in [3usize, 0, 1, 2].iter().enumerate() {
                db.touch_narinfos(&[hashes[*h]], 10_000_000_000 + i as i64)
                    .await
                    .unwrap();
            }
            let page = db.lru_page(None, 2).await.unwrap();
            assert_eq!(
                page.iter().map(|e| e.hash).collect::<Vec<_>>(),
                vec![hashes[3], hashes[0]]
            );
            let next = db.lru_page(page.last(), 10).await.unwrap();
            assert_eq!(
                next.iter().map(|e| e.hash).collect::<Vec<_>>(),
                vec![hashes[1], hashes[2]]
            );

            // Evicting 3 and 0 frees 3's NAR only: 1 still uses the shared one. The caller
            // deletes the whole file it is told about.
            let removed = db.evict(&[hashes[3], hashes[0]]).await.unwrap();
            assert_eq!(removed.nars.len(), 1);
            assert_eq!(
                removed.nars[0].whole.map(|w| w.size),
                Some(1000),
                "the evicted NAR's whole file is reported: {removed:?}"
            );
            assert_eq!(removed.freed_bytes, 1000);
            assert_eq!(db.stored_bytes().await.unwrap(), 2 * 1000 + 7);
            let removed = db.evict(&[hashes[1]]).await.unwrap();
            assert_eq!(removed.nars.len(), 1);
            assert!(removed.nars[0].chunked.is_some());
            assert_eq!(removed.freed_bytes, 1000 + 7, "its whole file and its last chunk");
            assert_eq!(db.stored_bytes().await.unwrap(), 1000);
            assert_eq!(
                db.unreferenced_chunks(i64::MAX, 10).await.unwrap(),
                vec![chunk.hash]
            );
            assert!(
                db.nar_hash_for_url(&NarKey::new(shared, Compression::Zstd))
                    .await
                    .unwrap()
                    .is_none()
            );
        }
    }

    db_test! {
        async fn a_nar_served_alone_makes_its_paths_recent(db) {
            let mut hashes = Vec::new();
            for i in 10..12u32 {
                let mut info = sample();
                info.narinfo.store_path = path(i);
                info.narinfo.nar_hash = Sha256Hash::digest(&i.to_le_bytes());
                info.url_key = NarKey::new(info.narinfo.nar_hash, Compression::Zstd);
                db.insert_narinfo(&info, None).await.unwrap();
                db.record_whole_file(
                    &info.narinfo.nar_hash,
                    10,
                    WholeFile {
                        key: info.url_key,
                        size: 10,
                    },
                    None,
                )
                .await
                .unwrap();
                hashes.push((*info.narinfo.store_path.hash(), info.narinfo.nar_hash));
            }
            let base = 20_000_000_000;
            db.touch_narinfos(&[hashes[0].0], base).await.unwrap();
            db.touch_narinfos(&[hashes[1].0], base + 1).await.unwrap();
            // Path 0 was used first; then only its NAR is asked for.
            db.touch_nars(&[hashes[0].1], base + 2).await.unwrap();
            let page = db.lru_page(None, 10).await.unwrap();
            assert_eq!(
                page.iter().map(|e| e.hash).collect::<Vec<_>>(),
                vec![hashes[1].0, hashes[0].0]
            );
        }
    }

    db_test! {
        async fn documents_are_counted_ordered_by_use_and_evicted(db) {
            let before = db.stored_bytes().await.unwrap();
            db.put_build_log("a.drv", &[0u8; 300]).await.unwrap();
            db.put_realisation("realisations/b!out.doi", &"é".repeat(100)).await.unwrap();
            assert_eq!(db.stored_bytes().await.unwrap(), before + 300 + 200, "bytes, not chars");
            let (log, realisation) = (
                DocumentKey::BuildLog("a.drv".into()),
                DocumentKey::Realisation("realisations/b!out.doi".into()),
            );
            let now = crate::now_secs();
            db.touch_document(&log, now + 50).await.unwrap();
            db.touch_document(&realisation, now + 20).await.unwrap();
            let order: Vec<_> = db
                .documents_used_before(i64::MAX, 10)
                .await
                .unwrap()
                .into_iter()
                .map(|d| (d.key, d.stored_size))
                .collect();
            assert_eq!(order, vec![(realisation.clone(), 200), (log.clone(), 300)]);
            assert_eq!(db.documents_used_before(now + 49, 10).await.unwrap().len(), 1);
            db.evict_documents(&[realisation]).await.unwrap();
            assert_eq!(db.realisation("realisations/b!out.doi").await.unwrap(), None);
            assert_eq!(db.stored_bytes().await.unwrap(), before + 300);
        }
    }

    /// On SQLite a batch of evictions (its reads of which NARs went unused included) is one
    /// transaction of the direct writer, not a statement at a time through sqlx's worker.
    #[tokio::test]
    async fn sqlite_evicts_a_batch_in_one_direct_transaction() {
        use crate::repo::test_support::{Engine, TestDb};

        let db = TestDb::new(Engine::Sqlite).await;
        let writer = db.writer.clone().expect("SQLite writes directly");
        let mut hashes = Vec::new();
        for i in 0..3u32 {
            let nar_hash = Sha256Hash::digest(&i.to_le_bytes());
            hashes.push(store_path_with_whole_file(&db, i, nar_hash).await);
        }
        let before = writer.committed();
        let removed = db.evict(&hashes[..2]).await.unwrap();
        assert_eq!(writer.committed(), before + 1, "one direct transaction");
        assert_eq!(removed.nars.len(), 2);
        assert_eq!(removed.freed_bytes, 2000);
        assert_eq!(db.stored_bytes().await.unwrap(), 1000);
        assert!(db.narinfo(&hashes[0]).await.unwrap().is_none());
        assert!(db.narinfo(&hashes[2]).await.unwrap().is_some());
    }

    db_test! {
        /// Paths used in the same second are paged by hash: a page that ends inside such a
        /// group goes on with the rest of it, none twice and none skipped.
        async fn pages_split_inside_a_second_lose_and_repeat_nothing(db) {
            let mut hashes = Vec::new();
            for i in 0..6u32 {
                let nar_hash = Sha256Hash::digest(&i.to_le_bytes());
                hashes.push(store_path_with_whole_file(db, i, nar_hash).await);
            }
            db.touch_narinfos(&hashes[..1], 10_000_000_000).await.unwrap();
            db.touch_narinfos(&hashes[1..], 10_000_000_001).await.unwrap();
            let mut in_order = hashes[1..].to_vec();
            in_order.sort_by_key(ToString::to_string);
            in_order.insert(0, hashes[0]);

            let mut paged = Vec::new();
            let mut cursor: Option<LruEntry> = None;
            loop {
                let page = db.lru_page(cursor.as_ref(), 2).await.unwrap();
                let Some(last) = page.last().cloned() else { break };
                paged.extend(page.iter().map(|e| e.hash));
                cursor = Some(last);
            }
            assert_eq!(paged, in_order);
        }
    }

    /// A page starts its range of the access-time index at the cursor: read from the index's
    /// start, every page of an eviction read again every path kept before the cursor (pinned
    /// ones; at a million paths 19 ms a page 300,000 entries in, against 2 ms), and a plan
    /// that gathered every later row and sorted it took seconds a page.
    #[tokio::test]
    async fn a_page_starts_reading_the_access_times_at_its_cursor() {
        use crate::repo::test_support::{Engine, TestDb};

        for engine in [Engine::Sqlite, Engine::Postgres] {
            let db = TestDb::new(engine).await;
            let mut conn = db.pool.acquire().await.unwrap();
            let explain = if engine == Engine::Sqlite {
                "EXPLAIN QUERY PLAN"
            } else {
                // An empty table is read whole however the query is written; the plan an
                // index allows is what is checked.
                sqlx::raw_sql("SET enable_seqscan = off")
                    .execute(&mut *conn)
                    .await
                    .unwrap();
                "EXPLAIN"
            };
            let sql = format!("{explain} {}", db.lru_page_sql());
            let rows = sqlx::query(&sql)
                .bind(5i64)
                .bind(5i64)
                .bind(5i64)
                .bind("h")
                .bind(10i64)
                .fetch_all(&mut *conn)
                .await
                .unwrap();
            let plan: Vec<String> = rows
                .iter()
                .map(|r| {
                    let column = if engine == Engine::Sqlite {
                        "detail"
                    } else {
                        "QUERY PLAN"
                    };
                    sqlx::Row::try_get::<String, _>(r, column).unwrap()
                })
                .collect();
            let seeks = |line: &String| match engine {
                Engine::Sqlite => line.contains(
                    "SEARCH i USING INDEX narinfos_last_accessed_at (last_accessed_at>?)",
                ),
                _ => line.contains("Index Cond: (last_accessed_at >="),
            };
            assert!(plan.iter().any(seeks), "{engine:?}: {plan:#?}");
            drop(conn);
            db.cleanup().await;
        }
    }
}
