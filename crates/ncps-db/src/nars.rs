use std::str::FromStr;

use ncps_nix::{NarKey, Sha256Hash};
use sqlx::Row;

use crate::chunks::LOST_LAST_REFERENCE;
use crate::columns::Columns;
use crate::dialect::placeholders;
use crate::direct::{Value, texts};
use crate::repo::{ROWS_PER_STATEMENT, corrupt, now_secs, to_i64, to_u64};
use crate::session::{Session, TransactionWork};
use crate::{ChunkedForm, Database, DbError, NarRecord, WholeFile};

const T: &str = "nars";

/// The one rule for "nobody needs this NAR" (a condition on a row of `nars`): no narinfo
/// describes it and no upload waits for its narinfo. Eviction, upload expiry and fsck use it.
pub(crate) const NAR_UNUSED: &str = "NOT EXISTS \
    (SELECT 1 FROM narinfos i WHERE i.nar_hash = nars.nar_hash) AND NOT EXISTS \
    (SELECT 1 FROM uploaded_nars u WHERE u.nar_hash = nars.nar_hash)";

/// A NAR stored as a whole file only: what chunking (lazy or by migration) has left to do.
const WHOLE_ONLY: &str = "whole_key IS NOT NULL AND chunk_count IS NULL";

/// A NAR stored as chunks only: what `migrate-chunks-to-nar` has left to do.
const CHUNKS_ONLY: &str = "whole_key IS NULL AND chunk_count IS NOT NULL";

/// Which NARs a storage migration has left to convert ([`Database::nars_to_convert_after`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NarsToConvert {
    /// Stored as a whole file only: the work of `migrate-nar-to-chunks`.
    ToChunks,
    /// Stored as chunks only: the work of `migrate-chunks-to-nar`.
    ToWholeFiles,
}

impl NarsToConvert {
    fn condition(self) -> &'static str {
        match self {
            Self::ToChunks => WHOLE_ONLY,
            Self::ToWholeFiles => CHUNKS_ONLY,
        }
    }
}

/// NARs removed with the last rows that used them, and the bytes that frees.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// The NARs removed: the caller deletes their whole files.
    pub nars: Vec<NarRecord>,
    /// Stored bytes freed: the removed NARs' whole files, and the chunks they held the last
    /// reference to.
    pub freed_bytes: u64,
}

impl Database {
    /// A stored NAR, in whichever forms it is stored.
    pub async fn nar(&self, nar_hash: &Sha256Hash) -> Result<Option<NarRecord>, DbError> {
        self.optional_row(
            "SELECT * FROM nars WHERE nar_hash = ?",
            nar_hash.to_string(),
            |row| nar_from_row(row),
        )
        .await
    }

    /// The NAR a URL we handed out names, with its record when it is stored: what a NAR request
    /// needs, in one query instead of two. `None` for a URL we never handed out.
    pub async fn nar_by_url(
        &self,
        key: &NarKey,
    ) -> Result<Option<(Sha256Hash, Option<NarRecord>)>, DbError> {
        self.optional_row(
            "SELECT u.nar_hash AS url_nar_hash, n.* FROM nar_urls u \
             LEFT JOIN nars n ON n.nar_hash = u.nar_hash WHERE u.url_key = ?",
            key.file_name(),
            |row| {
                let named = row.text("url_nar_hash")?;
                let nar_hash = Sha256Hash::from_str(&named).map_err(|e| corrupt("nar_urls", e))?;
                let record = match row.opt_text("nar_hash")? {
                    Some(_) => Some(nar_from_row(row)?),
                    None => None,
                };
                Ok((nar_hash, record))
            },
        )
        .await
    }

    /// Deletes the rows of `table` whose `key_column` is one of `keys` (narinfos, waiting
    /// uploads) and, in the same transaction per batch, each NAR they named that is now
    /// [unused](NAR_UNUSED). Returns the NARs removed, so the caller deletes their whole files.
    pub(crate) async fn delete_rows_and_unused_nars(
        &self,
        table: &'static str,
        key_column: &'static str,
        keys: &[String],
    ) -> Result<Removed, DbError> {
        let mut removed = Removed::default();
        for batch in keys.chunks(ROWS_PER_STATEMENT) {
            let work = DeleteRowsAndUnusedNars {
                table,
                key_column,
                keys: batch.to_vec(),
            };
            let unused = self.in_transaction(work).await?;
            removed.nars.extend(unused.nars);
            removed.freed_bytes += unused.freed_bytes;
        }
        Ok(removed)
    }

    /// Removes up to `limit` [unused](NAR_UNUSED) NARs (a narinfo deleted, or a NAR stored
    /// after its narinfo was evicted) the way eviction does; returns them, so the caller
    /// deletes their whole files.
    pub async fn reclaim_unused_nars(&self, limit: u32) -> Result<Vec<NarRecord>, DbError> {
        // Reads every NAR when none is unused: counted, so callers can keep it off paths that
        // must not grow with the cache.
        self.full_scans
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let sql = format!("SELECT nar_hash FROM nars WHERE {NAR_UNUSED} LIMIT ?");
        let unused: Vec<String> = sqlx::query_scalar(&self.sql(&sql))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        // Checked again inside the transaction: a narinfo may have come meanwhile.
        let removed = self.in_transaction(RemoveUnusedNars(unused)).await?;
        Ok(removed.nars)
    }

    /// Records a verified whole file of a NAR. A whole file already recorded is kept.
    ///
    /// A conditional upsert (`DO UPDATE … WHERE whole_key IS NULL`) has no MySQL spelling, so
    /// this is an insert-if-absent followed by an UPDATE of a row without a whole file, in one
    /// transaction: whichever statement finds its case does the work, the other nothing. The
    /// insert comes first: an UPDATE of a row that does not exist yet takes a gap lock in
    /// InnoDB, and two such transactions then deadlock on their inserts.
    pub async fn record_whole_file(
        &self,
        nar_hash: &Sha256Hash,
        nar_size: u64,
        whole: WholeFile,
        delete_after: Option<i64>,
    ) -> Result<(), DbError> {
        crate::repo::retry_deadlocks(|| {
            self.record_whole_file_once(nar_hash, nar_size, whole, delete_after)
        })
        .await
    }

    async fn record_whole_file_once(
        &self,
        nar_hash: &Sha256Hash,
        nar_size: u64,
        whole: WholeFile,
        delete_after: Option<i64>,
    ) -> Result<(), DbError> {
        let now = now_secs();
        let (nar, key, size) = (
            Value::text(nar_hash),
            Value::text(whole.key.file_name()),
            Value::int(to_i64(whole.size)),
        );
        let delete_after = Value::Int(delete_after);
        let insert_values = vec![
            nar.clone(),
            Value::int(to_i64(nar_size)),
            key.clone(),
            size.clone(),
            delete_after.clone(),
            Value::int(now),
            Value::int(now),
        ];
        let update_values = vec![key, size, delete_after, nar];
        let insert = self.dialect.insert_or_ignore(
            "INTO nars (nar_hash, nar_size, whole_key, whole_size, whole_delete_after, \
             created_at, last_accessed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            "nar_hash",
        );
        // A NAR recorded already (its chunks, say) gains the whole file unless it has one.
        let update = "UPDATE nars SET whole_key = ?, whole_size = ?, whole_delete_after = ? \
             WHERE nar_hash = ? AND whole_key IS NULL";
        self.write_statements(vec![
            (insert, insert_values),
            (update.to_string(), update_values),
        ])
        .await?;
        Ok(())
    }

    /// Forgets the whole-file form (its bytes are gone or being deleted). A NAR left with no
    /// form at all is forgotten entirely, so the next request fetches it again.
    pub async fn forget_whole_file(&self, nar_hash: &Sha256Hash) -> Result<(), DbError> {
        let mut tx = self.begin().await?;
        sqlx::query(&self.sql(
            "UPDATE nars SET whole_key = NULL, whole_size = NULL, whole_delete_after = NULL \
             WHERE nar_hash = ?",
        ))
        .bind(nar_hash.to_string())
        .execute(&mut *tx)
        .await?;
        sqlx::query(&self.sql(
            "DELETE FROM nars WHERE nar_hash = ? AND whole_key IS NULL AND chunk_count IS NULL",
        ))
        .bind(nar_hash.to_string())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// NARs stored whole but not chunked yet, oldest first: the work list of lazy chunking's
    /// crash recovery, a few at a time now and then (each call reads every NAR).
    pub async fn nars_to_chunk(&self, limit: u32) -> Result<Vec<NarRecord>, DbError> {
        let sql = format!("SELECT * FROM nars WHERE {WHOLE_ONLY} ORDER BY created_at LIMIT ?");
        let rows = sqlx::query(&self.sql(&sql))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(nar_from_row).collect()
    }

    /// NARs whose whole file may now be deleted because their chunks are complete.
    pub async fn nars_with_expired_whole_file(
        &self,
        now: i64,
        limit: u32,
    ) -> Result<Vec<NarRecord>, DbError> {
        let rows = sqlx::query(&self.sql(
            "SELECT * FROM nars WHERE whole_key IS NOT NULL AND chunk_count IS NOT NULL \
             AND whole_delete_after IS NOT NULL AND whole_delete_after <= ? LIMIT ?",
        ))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(nar_from_row).collect()
    }

    /// The NARs a storage migration has left to convert, in NarHash order, `limit` at a time
    /// from the primary key's position after `after`: a walk over every NAR reads the table
    /// once. Asking for the oldest each time read and sorted the whole table per page: 10,000
    /// reads of a million rows for a migration in pages of 100.
    pub async fn nars_to_convert_after(
        &self,
        which: NarsToConvert,
        after: Option<&Sha256Hash>,
        limit: u32,
    ) -> Result<Vec<NarRecord>, DbError> {
        let rows = sqlx::query(&self.nars_to_convert_after_sql(which))
            .bind(crate::fsck::nar_hash_text(after))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(nar_from_row).collect()
    }

    fn nars_to_convert_after_sql(&self, which: NarsToConvert) -> String {
        let form = which.condition();
        self.sql(&format!(
            "SELECT * FROM nars WHERE nar_hash > ? AND {form} ORDER BY nar_hash LIMIT ?"
        ))
        .into_owned()
    }

    /// How many NARs, and how many NAR bytes, each migration between forms has left:
    /// `(to_chunk, to_whole)`, each `(count, bytes)` (what `--dry-run` reports).
    pub async fn form_migration_backlog(&self) -> Result<((u64, u64), (u64, u64)), DbError> {
        let d = self.dialect;
        let count = |condition: &'static str| {
            let sql = format!(
                "SELECT {} AS n, {} AS bytes FROM nars WHERE {condition}",
                d.bigint("COUNT(*)"),
                d.bigint("COALESCE(SUM(nar_size), 0)")
            );
            let pool = self.pool.clone();
            async move {
                let row = sqlx::query(&sql).fetch_one(&pool).await?;
                let n: i64 = row.try_get("n")?;
                let bytes: i64 = row.try_get("bytes")?;
                Ok::<_, DbError>((n.max(0) as u64, bytes.max(0) as u64))
            }
        };
        Ok((count(WHOLE_ONLY).await?, count(CHUNKS_ONLY).await?))
    }
}

/// Deletes rows that name NARs, and the NARs they leave [unused](NAR_UNUSED), in one
/// transaction ([`Database::delete_rows_and_unused_nars`]).
struct DeleteRowsAndUnusedNars {
    table: &'static str,
    key_column: &'static str,
    keys: Vec<String>,
}

impl TransactionWork for DeleteRowsAndUnusedNars {
    type Output = Removed;

    async fn run<S: Session>(self, session: &mut S) -> Result<Removed, DbError> {
        let (table, key_column) = (self.table, self.key_column);
        let list = placeholders(self.keys.len());
        let keys = texts(&self.keys);
        let sql = format!("SELECT DISTINCT nar_hash FROM {table} WHERE {key_column} IN {list}");
        let nar_hashes = session
            .rows(&sql, &keys, |row| row.text("nar_hash"))
            .await?;
        let sql = format!("DELETE FROM {table} WHERE {key_column} IN {list}");
        session.execute(&sql, &keys).await?;
        remove_unused_nars(session, &nar_hashes).await
    }
}

/// Removes the NARs of a list that are [unused](NAR_UNUSED), in one transaction.
struct RemoveUnusedNars(Vec<String>);

impl TransactionWork for RemoveUnusedNars {
    type Output = Removed;

    async fn run<S: Session>(self, session: &mut S) -> Result<Removed, DbError> {
        remove_unused_nars(session, &self.0).await
    }
}

/// Removes, inside the session's transaction, each of `nar_hashes` that is
/// [unused](NAR_UNUSED): its row, its URLs and its chunk list (its chunks lose a reference each
/// and become collectable at zero). Returns the NARs removed, so the caller deletes their whole
/// files once the transaction commits, and the bytes that frees.
async fn remove_unused_nars<S: Session>(
    session: &mut S,
    nar_hashes: &[String],
) -> Result<Removed, DbError> {
    if nar_hashes.is_empty() {
        return Ok(Removed::default());
    }
    let sql = format!(
        "SELECT * FROM nars WHERE {NAR_UNUSED} AND nar_hash IN {}",
        placeholders(nar_hashes.len())
    );
    let unused: Vec<NarRecord> = session
        .rows(&sql, &texts(nar_hashes), |row| nar_from_row(row))
        .await?;
    let gone: Vec<String> = unused.iter().map(|r| r.nar_hash.to_string()).collect();
    if gone.is_empty() {
        return Ok(Removed::default());
    }
    let whole_bytes: u64 = unused.iter().filter_map(|r| r.whole.map(|w| w.size)).sum();
    let gone_list = placeholders(gone.len());
    let gone = texts(&gone);
    let in_gone = format!("(SELECT chunk_hash FROM nar_chunks WHERE nar_hash IN {gone_list})");
    let sql = format!(
        "UPDATE chunks SET ref_count = ref_count - (SELECT COUNT(*) FROM nar_chunks n \
         WHERE n.chunk_hash = chunks.hash AND n.nar_hash IN {gone_list}) \
         WHERE hash IN {in_gone}"
    );
    session
        .execute(&sql, &[gone.clone(), gone.clone()].concat())
        .await?;
    // The chunks these NARs held last: their bytes are freed (the collector deletes the
    // objects after the grace period; stored bytes count referenced chunks only).
    let sql = format!(
        "SELECT {} AS bytes FROM chunks WHERE {LOST_LAST_REFERENCE} AND hash IN {in_gone}",
        session.dialect().bigint("COALESCE(SUM(stored_size), 0)")
    );
    let chunk_bytes = session.rows(&sql, &gone, |row| row.i64("bytes")).await?;
    let sql = format!(
        "UPDATE chunks SET unreferenced_since = ? WHERE {LOST_LAST_REFERENCE} \
         AND hash IN {in_gone}"
    );
    let since = [vec![Value::int(now_secs())], gone.clone()].concat();
    session.execute(&sql, &since).await?;
    for table in ["nar_chunks", "nar_urls", "nars"] {
        let sql = format!("DELETE FROM {table} WHERE nar_hash IN {gone_list}");
        session.execute(&sql, &gone).await?;
    }
    Ok(Removed {
        nars: unused,
        freed_bytes: whole_bytes + to_u64("chunks", chunk_bytes.into_iter().sum())?,
    })
}

pub(crate) fn nar_from_row(row: &(impl Columns + ?Sized)) -> Result<NarRecord, DbError> {
    let bad = |e: &dyn std::fmt::Display| corrupt(T, e);
    let hash = |col: &str| -> Result<Option<Sha256Hash>, DbError> {
        row.opt_text(col)?
            .map(|h| Sha256Hash::from_str(&h))
            .transpose()
            .map_err(|e| bad(&e))
    };
    let size = |col: &str| -> Result<Option<u64>, DbError> {
        row.opt_i64(col)?.map(|n| to_u64(T, n)).transpose()
    };
    let whole = match (row.opt_text("whole_key")?, size("whole_size")?) {
        (Some(key), Some(size)) => Some(WholeFile {
            key: NarKey::parse_file_name(&key).map_err(|e| bad(&e))?,
            size,
        }),
        _ => None,
    };
    let chunked = match (size("chunk_count")?, size("spliced_size")?) {
        (Some(chunk_count), Some(spliced_size)) => Some(ChunkedForm {
            chunk_count,
            spliced_hash: hash("spliced_hash")?,
            spliced_size,
        }),
        _ => None,
    };
    Ok(NarRecord {
        nar_hash: hash("nar_hash")?.ok_or_else(|| bad(&"missing nar_hash"))?,
        nar_size: size("nar_size")?.unwrap_or(0),
        whole,
        whole_delete_after: row.opt_i64("whole_delete_after")?,
        chunked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ncps_nix::Compression;

    db_test! {
        async fn whole_file_lifecycle(db) {
            let nar_hash = Sha256Hash::digest(b"n");
            assert!(db.nar(&nar_hash).await.unwrap().is_none());
            let whole = WholeFile {
                key: NarKey::new(Sha256Hash::digest(b"f"), Compression::Xz),
                size: 10,
            };
            db.record_whole_file(&nar_hash, 100, whole, Some(5))
                .await
                .unwrap();
            let other = WholeFile { size: 11, ..whole };
            db.record_whole_file(&nar_hash, 100, other, None)
                .await
                .unwrap(); // first one kept
            let rec = db.nar(&nar_hash).await.unwrap().unwrap();
            assert_eq!(rec.whole, Some(whole));
            assert_eq!(rec.whole_delete_after, Some(5));
            assert_eq!(rec.chunked, None);
            assert_eq!(db.nars_to_chunk(10).await.unwrap().len(), 1);
            assert!(left_to_whole_files(db).await.is_empty());
            db.forget_whole_file(&nar_hash).await.unwrap();
            assert!(db.nar(&nar_hash).await.unwrap().is_none());

            // A NAR stored as chunks first gains its whole file; the chunks stay recorded.
            let chunked = Sha256Hash::digest(b"c");
            let chunk = crate::ChunkRef {
                hash: ncps_nix::ChunkHash::digest(b"x"),
                plain_size: 3,
                stored_size: 2,
            };
            db.commit_held(&chunked, 3, &[chunk], Sha256Hash::digest(b"s"))
                .await
                .unwrap();
            assert_eq!(left_to_whole_files(db).await.len(), 1);
            db.record_whole_file(&chunked, 3, whole, None).await.unwrap();
            let rec = db.nar(&chunked).await.unwrap().unwrap();
            assert_eq!(rec.whole, Some(whole));
            assert_eq!(rec.chunked.unwrap().chunk_count, 1);
            assert!(left_to_whole_files(db).await.is_empty());
        }
    }

    db_test! {
        async fn a_whole_file_expires_only_once_its_chunks_are_complete_and_its_time_came(db) {
            let chunk = crate::ChunkRef {
                hash: ncps_nix::ChunkHash::digest(b"x"),
                plain_size: 3,
                stored_size: 2,
            };
            let (due, later, unchunked, kept) = (
                Sha256Hash::digest(b"due"),
                Sha256Hash::digest(b"later"),
                Sha256Hash::digest(b"unchunked"),
                Sha256Hash::digest(b"kept"),
            );
            for nar in [&due, &later, &kept] {
                db.record_whole_file(nar, 3, whole_file(nar.as_bytes()), None)
                    .await
                    .unwrap();
            }
            // Not chunked: never expires, whatever its mark says.
            db.record_whole_file(&unchunked, 3, whole_file(b"unchunked"), Some(100))
                .await
                .unwrap();
            // Chunked after being stored whole: the whole file is marked in the same commit.
            assert!(db.hold_chunks(&[chunk], 1).await.unwrap().claimed.is_empty());
            for (nar, at) in [(&due, 100), (&later, 300)] {
                db.commit_chunks_replacing_whole(nar, 3, &[chunk], Sha256Hash::digest(b"s"), at)
                    .await
                    .unwrap();
                assert_eq!(db.nar(nar).await.unwrap().unwrap().whole_delete_after, Some(at));
            }
            // Chunked by a plain commit (eager chunking, which kept its whole file): no mark.
            db.commit_held(&kept, 3, &[chunk], Sha256Hash::digest(b"s"))
                .await
                .unwrap();
            assert_eq!(db.nar(&kept).await.unwrap().unwrap().whole_delete_after, None);
            let expired = db.nars_with_expired_whole_file(200, 10).await.unwrap();
            assert_eq!(expired.iter().map(|r| r.nar_hash).collect::<Vec<_>>(), vec![due]);
            assert_eq!(db.nars_with_expired_whole_file(300, 10).await.unwrap().len(), 2);
        }
    }

    db_test! {
        async fn only_nars_nothing_uses_are_reclaimed(db) {
            let mut described = crate::narinfos::tests::sample();
            let (loose, uploaded) = (Sha256Hash::digest(b"loose"), Sha256Hash::digest(b"up"));
            let used = described.narinfo.nar_hash;
            for nar in [&loose, &uploaded, &used] {
                db.record_whole_file(nar, 3, whole_file(nar.as_bytes()), None)
                    .await
                    .unwrap();
            }
            described.narinfo.nar_hash = used;
            db.insert_narinfo(&described, None).await.unwrap();
            let upload = crate::UploadedNar {
                key: whole_file(b"up-file").key,
                nar_hash: uploaded,
                nar_size: 3,
                file_size: 10,
            };
            db.record_upload(&upload).await.unwrap();
            let removed = db.reclaim_unused_nars(10).await.unwrap();
            assert_eq!(removed.iter().map(|r| r.nar_hash).collect::<Vec<_>>(), vec![loose]);
            assert!(db.nar(&loose).await.unwrap().is_none());
            assert!(db.nar(&uploaded).await.unwrap().is_some());
            assert!(db.nar(&used).await.unwrap().is_some());
            assert!(db.reclaim_unused_nars(10).await.unwrap().is_empty());
        }
    }

    db_test! {
        /// Downloads finishing at once record their whole files at once: none may fail (on
        /// InnoDB, an UPDATE of a missing row before the insert deadlocked such transactions).
        async fn concurrent_whole_files_are_all_recorded(db) {
            let nars: Vec<Sha256Hash> =
                (0..40u8).map(|i| Sha256Hash::digest(&[i, 1])).collect();
            let mut records = tokio::task::JoinSet::new();
            for nar in nars.clone() {
                let db = db.clone();
                let whole = WholeFile {
                    key: NarKey::new(Sha256Hash::digest(nar.as_bytes()), Compression::Xz),
                    size: 10,
                };
                records.spawn(async move { db.record_whole_file(&nar, 3, whole, None).await });
            }
            for result in records.join_all().await {
                result.unwrap();
            }
            for nar in &nars {
                assert!(db.nar(nar).await.unwrap().is_some_and(|r| r.whole.is_some()));
            }
        }
    }

    /// A 10-byte whole file named after `name`.
    fn whole_file(name: &[u8]) -> WholeFile {
        WholeFile {
            key: NarKey::new(Sha256Hash::digest(name), Compression::Xz),
            size: 10,
        }
    }

    /// Every NAR the migration walk for `which` returns, asked two at a time from the start.
    async fn walk(db: &Database, which: NarsToConvert) -> Vec<Sha256Hash> {
        let mut walked = Vec::new();
        let mut after = None;
        loop {
            let page = db
                .nars_to_convert_after(which, after.as_ref(), 2)
                .await
                .unwrap();
            let Some(last) = page.last() else {
                return walked;
            };
            after = Some(last.nar_hash);
            walked.extend(page.iter().map(|r| r.nar_hash));
        }
    }

    /// The first ten NARs `migrate-chunks-to-nar` has left to convert.
    async fn left_to_whole_files(db: &Database) -> Vec<NarRecord> {
        db.nars_to_convert_after(NarsToConvert::ToWholeFiles, None, 10)
            .await
            .unwrap()
    }

    db_test! {
        /// The migrations' walks page through each form's NARs in hash order from a cursor:
        /// every NAR of the form once, none of the other.
        async fn migration_walks_page_through_each_form_once(db) {
            let chunk = crate::ChunkRef {
                hash: ncps_nix::ChunkHash::digest(b"x"),
                plain_size: 3,
                stored_size: 2,
            };
            let nar = |i: u8| Sha256Hash::digest(&[i]);
            let mut whole_only: Vec<Sha256Hash> = (0..5).map(nar).collect();
            let mut chunks_only: Vec<Sha256Hash> = (5..8).map(nar).collect();
            for n in &whole_only {
                db.record_whole_file(n, 3, whole_file(n.as_bytes()), None).await.unwrap();
            }
            for n in chunks_only.iter().chain([&nar(8)]) {
                db.commit_held(n, 3, &[chunk], Sha256Hash::digest(b"s")).await.unwrap();
            }
            db.record_whole_file(&nar(8), 3, whole_file(b"both"), None).await.unwrap();
            whole_only.sort_by_key(ToString::to_string);
            chunks_only.sort_by_key(ToString::to_string);

            let to_chunk = walk(db, NarsToConvert::ToChunks).await;
            let to_whole = walk(db, NarsToConvert::ToWholeFiles).await;
            assert_eq!((to_chunk, to_whole), (whole_only, chunks_only));
        }
    }

    /// Each page of a migration's walk starts at its cursor in the primary key: asking for
    /// the oldest NARs each time read and sorted the whole table per page, 10,000 reads of a
    /// million rows for a migration in pages of 100.
    #[tokio::test]
    async fn a_migration_page_starts_at_its_cursor() {
        use crate::repo::test_support::{Engine, TestDb};

        let db = TestDb::new(Engine::Sqlite).await;
        for which in [NarsToConvert::ToChunks, NarsToConvert::ToWholeFiles] {
            let sql = format!("EXPLAIN QUERY PLAN {}", db.nars_to_convert_after_sql(which));
            let rows = sqlx::query(&sql)
                .bind("h")
                .bind(10i64)
                .fetch_all(&db.pool)
                .await
                .unwrap();
            let plan: Vec<String> = rows
                .iter()
                .map(|r| sqlx::Row::try_get::<String, _>(r, "detail").unwrap())
                .collect();
            assert!(
                plan.iter()
                    .any(|d| d
                        .contains("SEARCH nars USING INDEX sqlite_autoindex_nars_1 (nar_hash>?)")),
                "{plan:#?}"
            );
            assert!(!plan.iter().any(|d| d.contains("TEMP B-TREE")), "{plan:#?}");
        }
        db.cleanup().await;
    }
}
