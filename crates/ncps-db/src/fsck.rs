//! Queries behind `ncps fsck`: walking every stored form in pages, finding rows that point at
//! nothing, and removing them with the condition re-checked in the same statement, so a row
//! that a running server made valid meanwhile is never removed.

use std::collections::HashMap;
use std::str::FromStr;

use ncps_nix::{ChunkHash, NarKey, Sha256Hash, StorePathHash};
use sqlx::Row;

use crate::dialect::{placeholders, text};
use crate::nars::{NAR_UNUSED, nar_from_row};
use crate::repo::{ROWS_PER_STATEMENT, corrupt, now_secs};
use crate::{Database, DbError, NarRecord};

/// A narinfo that cannot be served: no upstream origin is recorded for it or for any other
/// narinfo of the same NAR, and the NAR is not stored.
const UNSERVABLE_NARINFO: &str = "narinfos.upstream_url IS NULL \
     AND NOT EXISTS (SELECT 1 FROM nars s WHERE s.nar_hash = narinfos.nar_hash) \
     AND NOT EXISTS (SELECT 1 FROM narinfos o WHERE o.nar_hash = narinfos.nar_hash \
                     AND o.upstream_url IS NOT NULL)";

/// A NAR URL naming a NAR that is neither stored nor described by any narinfo.
const DANGLING_NAR_URL: &str = "NOT EXISTS (SELECT 1 FROM nars s WHERE s.nar_hash = nar_urls.nar_hash) \
     AND NOT EXISTS (SELECT 1 FROM narinfos n WHERE n.nar_hash = nar_urls.nar_hash)";

/// A narinfo whose NAR is neither stored nor fetchable: every client asking for it would get
/// a narinfo and then a 404 for its NAR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrphanNarInfo {
    /// The store path hash (the narinfo's key).
    pub hash: StorePathHash,
    /// The full store path, for the report.
    pub store_path: String,
    /// The NAR it describes, as recorded.
    pub nar_hash: String,
    /// When the row was written, seconds since the epoch (a young one may be an upload whose
    /// NAR is still arriving).
    pub created_at: i64,
}

/// A handed-out NAR URL that resolves to nothing any more.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DanglingNarUrl {
    /// The URL's file name, as recorded.
    pub url_key: String,
    /// The NAR it named, as recorded.
    pub nar_hash: String,
}

/// A stored NAR that no narinfo describes: it takes space but no client can reach it through
/// a narinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnreferencedNar {
    /// The NAR and its forms.
    pub record: NarRecord,
    /// When it was stored, seconds since the epoch (an upload's NAR arrives before its narinfo).
    pub created_at: i64,
}

/// One chunk row, as fsck checks it against storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRow {
    /// The chunk's address.
    pub hash: ChunkHash,
    /// Chunk-list entries that use it, as recorded.
    pub ref_count: i64,
}

/// One entry of a NAR's chunk list, with whether the chunk it names has a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkListEntry {
    /// The chunk named.
    pub hash: ChunkHash,
    /// Whether `chunks` has a row for it (without one, the chunk's size is unknown and the NAR
    /// cannot be spliced).
    pub has_row: bool,
}

/// A chunk whose recorded reference count disagrees with the chunk lists that use it: too low
/// and the garbage collector may delete a chunk in use, too high and it is never collected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRefMismatch {
    /// The chunk.
    pub hash: ChunkHash,
    /// The count recorded in its row.
    pub recorded: i64,
    /// The number of chunk-list entries naming it.
    pub actual: i64,
}

/// A schema migration applied to the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedMigration {
    /// Its version (the file name's number).
    pub version: i64,
    /// Its description (the file name's rest).
    pub description: String,
    /// When it was applied, seconds since the epoch.
    pub installed_at: i64,
}

/// The text a keyset walk over NARs starts after: every NarHash sorts after the empty one.
pub(crate) fn nar_hash_text(after: Option<&Sha256Hash>) -> String {
    after.map(ToString::to_string).unwrap_or_default()
}

fn chunk_hash(s: &str) -> Result<ChunkHash, DbError> {
    ChunkHash::from_str(s).map_err(|e| corrupt("chunks", e))
}

impl Database {
    /// Stored NARs in NarHash order, `limit` at a time after `after` (keyset paging, so a
    /// walk over millions of rows holds one page at a time and rows added meanwhile are seen
    /// or not, never twice).
    pub async fn nars_after(
        &self,
        after: Option<&Sha256Hash>,
        limit: u32,
    ) -> Result<Vec<NarRecord>, DbError> {
        let rows = sqlx::query(
            &self.sql("SELECT * FROM nars WHERE nar_hash > ? ORDER BY nar_hash LIMIT ?"),
        )
        .bind(nar_hash_text(after))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(nar_from_row).collect()
    }

    /// How many NARs are stored as whole files: how many files fsck expects under `nar/`,
    /// which decides how many passes it lists them in (one full read of `nars`).
    pub async fn whole_file_count(&self) -> Result<u64, DbError> {
        let count: i64 =
            sqlx::query_scalar(&self.sql("SELECT COUNT(*) FROM nars WHERE whole_key IS NOT NULL"))
                .fetch_one(&self.pool)
                .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Which of `keys` some NAR records as its whole file: a stored file no row names is a
    /// leftover. No index leads from a file to its row, so each statement reads every NAR
    /// (counted by [`Self::full_scans`]): keys are asked [`ROWS_PER_STATEMENT`] at a time, and
    /// a thousand stray files cost two reads of the table, not a thousand.
    pub async fn recorded_whole_files(&self, keys: &[NarKey]) -> Result<Vec<NarKey>, DbError> {
        let mut recorded = Vec::new();
        for batch in keys.chunks(ROWS_PER_STATEMENT) {
            let by_name: HashMap<String, NarKey> =
                batch.iter().map(|k| (k.file_name(), *k)).collect();
            let sql = format!(
                "SELECT whole_key FROM nars WHERE whole_key IN {}",
                placeholders(by_name.len())
            );
            let sql = self.sql(&sql);
            let mut q = sqlx::query_scalar(&sql);
            for name in by_name.keys() {
                q = q.bind(name.as_str());
            }
            self.full_scans
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let names: Vec<String> = q.fetch_all(&self.pool).await?;
            recorded.extend(names.iter().filter_map(|name| by_name.get(name).copied()));
        }
        Ok(recorded)
    }

    /// The chunk lists of `nars` in order, straight from `nar_chunks` (unlike
    /// [`Database::nar_chunks`], entries whose chunk row is missing are kept and flagged): one
    /// statement per page of NARs, so a walk over a million chunk lists is not a million
    /// round trips. A NAR without entries is absent from the map.
    pub async fn chunk_list_entries(
        &self,
        nars: &[Sha256Hash],
    ) -> Result<HashMap<Sha256Hash, Vec<ChunkListEntry>>, DbError> {
        let mut lists: HashMap<Sha256Hash, Vec<ChunkListEntry>> = HashMap::new();
        for batch in nars.chunks(ROWS_PER_STATEMENT) {
            // `IS NOT NULL` is a boolean on PostgreSQL and an integer elsewhere; CASE is an
            // integer everywhere.
            let sql = format!(
                "SELECT n.nar_hash, n.chunk_hash, \
                 CASE WHEN c.hash IS NULL THEN 0 ELSE 1 END AS has_row \
                 FROM nar_chunks n LEFT JOIN chunks c ON c.hash = n.chunk_hash \
                 WHERE n.nar_hash IN {} ORDER BY n.nar_hash, n.seq",
                placeholders(batch.len())
            );
            let sql = self.sql(&sql);
            let mut query = sqlx::query(&sql);
            for nar in batch {
                query = query.bind(nar.to_string());
            }
            for r in query.fetch_all(&self.pool).await? {
                let nar = Sha256Hash::from_str(&text(&r, "nar_hash")?)
                    .map_err(|e| corrupt("nar_chunks", e))?;
                lists.entry(nar).or_default().push(ChunkListEntry {
                    hash: chunk_hash(&text(&r, "chunk_hash")?)?,
                    has_row: r.try_get::<i64, _>("has_row")? != 0,
                });
            }
        }
        Ok(lists)
    }

    /// Chunk rows in hash order, `limit` at a time after `after`.
    pub async fn chunks_after(
        &self,
        after: Option<&ChunkHash>,
        limit: u32,
    ) -> Result<Vec<ChunkRow>, DbError> {
        let rows = sqlx::query(
            &self.sql("SELECT hash, ref_count FROM chunks WHERE hash > ? ORDER BY hash LIMIT ?"),
        )
        .bind(after.map(ToString::to_string).unwrap_or_default())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ChunkRow {
                    hash: chunk_hash(&text(r, "hash")?)?,
                    ref_count: r.try_get("ref_count")?,
                })
            })
            .collect()
    }

    /// The NARs whose chunk list names `chunk`: they break when the chunk is lost.
    pub async fn nars_using_chunk(&self, chunk: &ChunkHash) -> Result<Vec<Sha256Hash>, DbError> {
        let hashes: Vec<String> = sqlx::query_scalar(&self.sql(
            "SELECT DISTINCT nar_hash FROM nar_chunks WHERE chunk_hash = ? ORDER BY nar_hash",
        ))
        .bind(chunk.to_string())
        .fetch_all(&self.pool)
        .await?;
        hashes
            .iter()
            .map(|h| Sha256Hash::from_str(h).map_err(|e| corrupt("nar_chunks", e)))
            .collect()
    }

    /// Narinfos whose NAR is neither stored nor fetchable from an upstream.
    pub async fn orphan_narinfos(&self) -> Result<Vec<OrphanNarInfo>, DbError> {
        let sql = format!(
            "SELECT hash, store_path, nar_hash, created_at FROM narinfos \
             WHERE {UNSERVABLE_NARINFO} ORDER BY hash"
        );
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(OrphanNarInfo {
                    hash: StorePathHash::from_str(&text(r, "hash")?)
                        .map_err(|e| corrupt("narinfos", e))?,
                    store_path: text(r, "store_path")?,
                    nar_hash: text(r, "nar_hash")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// Deletes a narinfo if it still cannot be served (a NAR stored meanwhile keeps it);
    /// `true` when it was deleted.
    ///
    /// MySQL refuses a DELETE whose sub-query reads the table it deletes from, unless that
    /// sub-query is a derived table it must materialise (DISTINCT sees to that). So the NAR
    /// hash is looked up first (a narinfo's never changes) and the "another narinfo of this
    /// NAR is fetchable" test reads a derived table filtered on it.
    pub async fn delete_narinfo_if_orphan(&self, hash: &StorePathHash) -> Result<bool, DbError> {
        let mut tx = self.begin().await?;
        let nar_hash: Option<String> =
            sqlx::query_scalar(&self.sql("SELECT nar_hash FROM narinfos WHERE hash = ?"))
                .bind(hash.to_string())
                .fetch_optional(&mut *tx)
                .await?;
        let Some(nar_hash) = nar_hash else {
            return Ok(false);
        };
        let done = sqlx::query(&self.sql(
            "DELETE FROM narinfos WHERE hash = ? AND upstream_url IS NULL \
             AND NOT EXISTS (SELECT 1 FROM nars s WHERE s.nar_hash = narinfos.nar_hash) \
             AND NOT EXISTS (SELECT 1 FROM (SELECT DISTINCT o.nar_hash FROM narinfos o \
                             WHERE o.nar_hash = ? AND o.upstream_url IS NOT NULL) fetchable)",
        ))
        .bind(hash.to_string())
        .bind(&nar_hash)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    /// NAR URLs whose NAR is neither stored nor described by a narinfo.
    pub async fn dangling_nar_urls(&self) -> Result<Vec<DanglingNarUrl>, DbError> {
        let sql = format!(
            "SELECT url_key, nar_hash FROM nar_urls WHERE {DANGLING_NAR_URL} ORDER BY url_key"
        );
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(DanglingNarUrl {
                    url_key: text(r, "url_key")?,
                    nar_hash: text(r, "nar_hash")?,
                })
            })
            .collect()
    }

    /// Deletes a NAR URL if it still names nothing; `true` when it was deleted.
    pub async fn delete_nar_url_if_dangling(&self, url_key: &str) -> Result<bool, DbError> {
        let sql = format!("DELETE FROM nar_urls WHERE url_key = ? AND {DANGLING_NAR_URL}");
        let done = sqlx::query(&self.sql(&sql))
            .bind(url_key)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Stored NARs no narinfo describes and no upload waits for, oldest first.
    pub async fn unreferenced_nars(&self) -> Result<Vec<UnreferencedNar>, DbError> {
        let sql = format!("SELECT * FROM nars WHERE {NAR_UNUSED} ORDER BY created_at");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(UnreferencedNar {
                    record: nar_from_row(r)?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// Chunks whose recorded reference count differs from the number of chunk-list entries
    /// naming them.
    pub async fn chunk_ref_mismatches(&self) -> Result<Vec<ChunkRefMismatch>, DbError> {
        let rows = sqlx::query(
            "SELECT hash, ref_count, actual FROM (SELECT c.hash, c.ref_count, \
             (SELECT COUNT(*) FROM nar_chunks n WHERE n.chunk_hash = c.hash) AS actual \
             FROM chunks c) counted WHERE ref_count <> actual ORDER BY hash",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ChunkRefMismatch {
                    hash: chunk_hash(&text(r, "hash")?)?,
                    recorded: r.try_get("ref_count")?,
                    actual: r.try_get("actual")?,
                })
            })
            .collect()
    }

    /// Sets a chunk's reference count to the number of chunk-list entries naming it, in one
    /// statement (so a chunk list committed meanwhile is counted); a chunk left at zero starts
    /// its garbage-collection grace period.
    pub async fn recount_chunk_refs(&self, chunk: &ChunkHash) -> Result<(), DbError> {
        let counted = "(SELECT COUNT(*) FROM nar_chunks n WHERE n.chunk_hash = chunks.hash)";
        let sql = format!(
            "UPDATE chunks SET ref_count = {counted}, unreferenced_since = CASE \
             WHEN {counted} = 0 THEN COALESCE(unreferenced_since, ?) ELSE NULL END \
             WHERE hash = ?"
        );
        sqlx::query(&self.sql(&sql))
            .bind(now_secs())
            .bind(chunk.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Removes a chunk's row whatever its reference count (its bytes are gone); the caller
    /// first drops the chunk lists that name it.
    pub async fn forget_lost_chunk(&self, chunk: &ChunkHash) -> Result<bool, DbError> {
        let done = sqlx::query(&self.sql(
            "DELETE FROM chunks WHERE hash = ? AND NOT EXISTS \
             (SELECT 1 FROM nar_chunks n WHERE n.chunk_hash = chunks.hash)",
        ))
        .bind(chunk.to_string())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Migrations applied to this database, oldest first.
    pub async fn applied_migrations(&self) -> Result<Vec<AppliedMigration>, DbError> {
        let sql = format!(
            "SELECT version, description, {} AS installed_at \
             FROM _sqlx_migrations WHERE success ORDER BY version",
            self.dialect.migration_installed_at()
        );
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(AppliedMigration {
                    version: r.try_get("version")?,
                    description: text(r, "description")?,
                    installed_at: r.try_get::<Option<i64>, _>("installed_at")?.unwrap_or(0),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::narinfos::tests::sample;
    use crate::{CachedNarInfo, ChunkRef, WholeFile};
    use ncps_nix::{Compression, StorePath};

    fn narinfo(label: &str, nar: &[u8], upstream: bool) -> CachedNarInfo {
        let mut info = sample();
        let digest = Sha256Hash::digest(label.as_bytes());
        let mut bytes = [0u8; 20];
        bytes.copy_from_slice(&digest.as_bytes()[..20]);
        let hash = StorePathHash::from_bytes(bytes);
        info.narinfo.store_path = StorePath::parse_base_name(&format!("{hash}-{label}")).unwrap();
        info.narinfo.nar_hash = Sha256Hash::digest(nar);
        info.url_key = NarKey::new(info.narinfo.nar_hash, Compression::Zstd);
        info.narinfo.url = info.url_key.url();
        if !upstream {
            info.origin = None;
        }
        info
    }

    fn whole(data: &[u8]) -> WholeFile {
        WholeFile {
            key: NarKey::new(Sha256Hash::digest(data), Compression::Xz),
            size: 7,
        }
    }

    fn chunk(i: u8) -> ChunkRef {
        ChunkRef {
            hash: ChunkHash::digest(&[i]),
            plain_size: 10,
            stored_size: 5,
        }
    }

    db_test! {
        async fn orphans_are_found_and_removed_only_while_orphaned(db) {
            // Fetchable from upstream: fine.
            db.insert_narinfo(&narinfo("fetched", b"a", true), None)
                .await
                .unwrap();
            // Uploaded, NAR stored: fine.
            let stored = narinfo("stored", b"b", false);
            db.insert_narinfo(&stored, None).await.unwrap();
            db.record_whole_file(&stored.narinfo.nar_hash, 1, whole(b"b"), None)
                .await
                .unwrap();
            // Uploaded, NAR lost, but another narinfo of the same NAR has an origin: fine.
            db.insert_narinfo(&narinfo("twin", b"a", false), None)
                .await
                .unwrap();
            // Uploaded, NAR lost: orphans.
            let lost = narinfo("lost", b"c", false);
            db.insert_narinfo(&lost, None).await.unwrap();
            let revived = narinfo("revived", b"d", false);
            db.insert_narinfo(&revived, None).await.unwrap();

            let orphans = db.orphan_narinfos().await.unwrap();
            let mut names: Vec<&str> = orphans.iter().map(|o| o.store_path.as_str()).collect();
            names.sort();
            assert_eq!(names.len(), 2, "{names:?}");
            assert!(names[0].ends_with("-lost") && names[1].ends_with("-revived"));
            assert!(db.dangling_nar_urls().await.unwrap().is_empty());

            // The NAR of "revived" arrives before the repair: it must survive.
            db.record_whole_file(&revived.narinfo.nar_hash, 1, whole(b"d"), None)
                .await
                .unwrap();
            let revived_hash = *revived.narinfo.store_path.hash();
            assert!(!db.delete_narinfo_if_orphan(&revived_hash).await.unwrap());
            let lost_hash = *lost.narinfo.store_path.hash();
            assert!(db.delete_narinfo_if_orphan(&lost_hash).await.unwrap());
            assert!(db.narinfo(&lost_hash).await.unwrap().is_none());
            assert!(db.narinfo(&revived_hash).await.unwrap().is_some());
            assert!(db.orphan_narinfos().await.unwrap().is_empty());

            // The lost narinfo's URL now names nothing.
            let dangling = db.dangling_nar_urls().await.unwrap();
            assert_eq!(dangling.len(), 1);
            assert_eq!(dangling[0].url_key, lost.url_key.file_name());
            assert!(
                db.delete_nar_url_if_dangling(&dangling[0].url_key)
                    .await
                    .unwrap()
            );
            assert!(
                !db.delete_nar_url_if_dangling(&stored.url_key.file_name())
                    .await
                    .unwrap()
            );
            assert!(db.dangling_nar_urls().await.unwrap().is_empty());
        }
    }

    db_test! {
        async fn unreferenced_nars_and_whole_keys(db) {
            let info = narinfo("described", b"a", true);
            db.insert_narinfo(&info, None).await.unwrap();
            db.record_whole_file(&info.narinfo.nar_hash, 1, whole(b"a"), None)
                .await
                .unwrap();
            let loose = Sha256Hash::digest(b"loose");
            db.record_whole_file(&loose, 1, whole(b"loose"), None)
                .await
                .unwrap();
            let unref = db.unreferenced_nars().await.unwrap();
            assert_eq!(unref.len(), 1);
            assert_eq!(unref[0].record.nar_hash, loose);
            assert!(unref[0].created_at > 0);
            // Asked more keys than one statement takes: the recorded ones come back, whichever
            // statement found them.
            let mut asked: Vec<NarKey> = (0..600u32)
                .map(|i| whole(&i.to_le_bytes()).key)
                .collect();
            asked.insert(3, whole(b"a").key);
            asked.push(whole(b"loose").key);
            asked.push(whole(b"loose").key); // asked twice, answered once
            let mut recorded = db.recorded_whole_files(&asked).await.unwrap();
            recorded.sort_by_key(NarKey::file_name);
            let mut expected = vec![whole(b"a").key, whole(b"loose").key];
            expected.sort_by_key(NarKey::file_name);
            assert_eq!(recorded, expected);
            assert_eq!(db.whole_file_count().await.unwrap(), 2);
        }
    }

    db_test! {
        async fn pages_cover_every_row_once(db) {
            let mut expected = Vec::new();
            for i in 0..25u8 {
                let nar = Sha256Hash::digest(&[i]);
                db.record_whole_file(&nar, 1, whole(&[i]), None)
                    .await
                    .unwrap();
                expected.push(nar.to_string());
                db.commit_held(&Sha256Hash::digest(&[i, i]), 1, &[chunk(i)], nar)
                    .await
                    .unwrap();
            }
            expected.sort();
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let page = db.nars_after(after.as_ref(), 7).await.unwrap();
                let Some(last) = page.last() else { break };
                after = Some(last.nar_hash);
                seen.extend(page.iter().map(|r| r.nar_hash));
            }
            // 25 whole-file NARs and 25 chunked ones.
            assert_eq!(seen.len(), 50);
            let mut chunks = Vec::new();
            let mut after = None;
            loop {
                let page = db.chunks_after(after.as_ref(), 4).await.unwrap();
                let Some(last) = page.last() else { break };
                after = Some(last.hash);
                chunks.extend(page);
            }
            assert_eq!(chunks.len(), 25);
            assert!(chunks.iter().all(|c| c.ref_count == 1));
        }
    }

    db_test! {
        async fn chunk_lists_ref_counts_and_lost_chunks(db) {
            let a = Sha256Hash::digest(b"a");
            let b = Sha256Hash::digest(b"b");
            let spliced = Sha256Hash::digest(b"s");
            db.commit_held(&a, 1, &[chunk(1), chunk(2), chunk(1)], spliced)
                .await
                .unwrap();
            db.commit_held(&b, 1, &[chunk(2), chunk(3)], spliced)
                .await
                .unwrap();
            let lists = db.chunk_list_entries(&[a, b, spliced]).await.unwrap();
            assert_eq!(lists.len(), 2, "a NAR without a list is absent");
            let entries = &lists[&a];
            assert_eq!(
                entries.iter().map(|e| e.hash).collect::<Vec<_>>(),
                [chunk(1).hash, chunk(2).hash, chunk(1).hash]
            );
            assert_eq!(lists[&b].len(), 2);
            assert!(entries.iter().all(|e| e.has_row));
            let mut users = db.nars_using_chunk(&chunk(2).hash).await.unwrap();
            users.sort();
            let mut both = vec![a, b];
            both.sort();
            assert_eq!(users, both);
            assert!(db.chunk_ref_mismatches().await.unwrap().is_empty());

            // A lost chunk: its row goes only once no list names it.
            assert!(!db.forget_lost_chunk(&chunk(3).hash).await.unwrap());
            db.drop_chunk_list(&b).await.unwrap();
            assert!(db.forget_lost_chunk(&chunk(3).hash).await.unwrap());
            assert!(db.chunk_ref_mismatches().await.unwrap().is_empty());

            // A chunk row missing under a list is flagged in the list.
            sqlx::query(&db.sql("DELETE FROM chunks WHERE hash = ?"))
                .bind(chunk(2).hash.to_string())
                .execute(&db.pool)
                .await
                .unwrap();
            let entries = db.chunk_list_entries(&[a]).await.unwrap().remove(&a).unwrap();
            assert_eq!(
                entries.iter().map(|e| e.has_row).collect::<Vec<_>>(),
                [true, false, true]
            );

            // A wrong count is found and recounted.
            sqlx::query(&db.sql("UPDATE chunks SET ref_count = 7 WHERE hash = ?"))
                .bind(chunk(1).hash.to_string())
                .execute(&db.pool)
                .await
                .unwrap();
            let wrong = db.chunk_ref_mismatches().await.unwrap();
            assert_eq!(
                wrong,
                [ChunkRefMismatch {
                    hash: chunk(1).hash,
                    recorded: 7,
                    actual: 2
                }]
            );
            db.recount_chunk_refs(&chunk(1).hash).await.unwrap();
            assert!(db.chunk_ref_mismatches().await.unwrap().is_empty());
        }
    }

    db_test! {
        async fn migrations_are_listed(db) {
            let applied = db.applied_migrations().await.unwrap();
            assert_eq!(applied[0].version, 1);
            assert_eq!(applied[0].description, "initial");
            assert!((applied[0].installed_at - now_secs()).abs() < 600);
        }
    }
}
