use std::collections::HashMap;
use std::str::FromStr;

use ncps_nix::{ChunkHash, Sha256Hash};
use sqlx::Row;

use crate::dialect::{Dialect, placeholders, text, values_rows};
use crate::direct::{Value, texts};
use crate::repo::{ROWS_PER_STATEMENT, WriteTx, corrupt, now_secs, to_i64, to_u64};
use crate::session::{Session, TransactionWork};
use crate::{ChunkRef, Database, DbError, NarRecord};

const T: &str = "chunks";

fn chunk_hash(s: &str) -> Result<ChunkHash, DbError> {
    ChunkHash::from_str(s).map_err(|e| corrupt(T, e))
}

/// Whether `e` is a unique-key violation (any engine, either SQLite path).
fn is_unique_violation(e: &DbError) -> bool {
    match e {
        DbError::Sqlx(sqlx::Error::Database(db)) => db.is_unique_violation(),
        DbError::Sqlite(rusqlite::Error::SqliteFailure(failure, _)) => matches!(
            failure.extended_code,
            rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
        ),
        _ => false,
    }
}

/// Chunks whose reference count has just reached zero (their grace period not started yet).
/// Always combined with a list of chunk hashes: the `+` keeps SQLite, which has no statistics
/// to tell it that almost every chunk has no `unreferenced_since`, from walking that index
/// (every referenced chunk) instead of looking the listed hashes up; PostgreSQL and MySQL read
/// `+x` as `x`.
pub(crate) const LOST_LAST_REFERENCE: &str = "ref_count <= 0 AND +unreferenced_since IS NULL";

/// What [`Database::hold_chunks`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Held {
    /// Chunks the collector has claimed and is deleting: not held; wait and hold them again.
    pub claimed: Vec<ChunkHash>,
    /// Held chunks whose row records a frame at another zstd level than the holder's: if the
    /// holder writes one of these (its object is missing), it writes it at that level.
    pub other_levels: HashMap<ChunkHash, i32>,
}

impl Database {
    /// Records the complete, ordered chunk list of a NAR in one transaction: chunk rows are
    /// created or gain references, the list is written in multi-row statements, and the NAR's
    /// row says it is chunked. Returns `false` (and changes nothing) when the NAR already has a
    /// chunk list, so a repeated or concurrent chunking of the same NAR is harmless (on the
    /// server engines the loser of a race finds out from the list's primary key and rolls
    /// back).
    ///
    /// `spliced_hash` is the SHA-256 of our frames concatenated; it is kept only when the stored
    /// frames are the ones we hashed (a chunk stored earlier may hold another frame of the same
    /// bytes, e.g. at another zstd level), so FileHash is never wrong, only sometimes absent.
    pub async fn commit_chunks(
        &self,
        nar_hash: &Sha256Hash,
        nar_size: u64,
        chunks: &[ChunkRef],
        spliced_hash: Sha256Hash,
    ) -> Result<bool, DbError> {
        crate::repo::retry_deadlocks(|| {
            self.commit_chunk_list(nar_hash, nar_size, chunks, spliced_hash, None)
        })
        .await
    }

    /// [`Database::commit_chunks`] for a NAR stored whole that was chunked afterwards (lazy
    /// chunking, the migration to chunks): in the same transaction its whole file is marked
    /// for deletion at `delete_whole_after` (seconds since the epoch), so no crash can leave
    /// both forms with the whole file kept forever.
    pub async fn commit_chunks_replacing_whole(
        &self,
        nar_hash: &Sha256Hash,
        nar_size: u64,
        chunks: &[ChunkRef],
        spliced_hash: Sha256Hash,
        delete_whole_after: i64,
    ) -> Result<bool, DbError> {
        crate::repo::retry_deadlocks(|| {
            self.commit_chunk_list(
                nar_hash,
                nar_size,
                chunks,
                spliced_hash,
                Some(delete_whole_after),
            )
        })
        .await
    }

    async fn commit_chunk_list(
        &self,
        nar_hash: &Sha256Hash,
        nar_size: u64,
        chunks: &[ChunkRef],
        spliced_hash: Sha256Hash,
        delete_whole_after: Option<i64>,
    ) -> Result<bool, DbError> {
        self.in_transaction(CommitChunkList {
            nar: nar_hash.to_string(),
            nar_size,
            chunks: chunks.to_vec(),
            spliced_hash,
            delete_whole_after,
        })
        .await
    }

    /// The ordered chunk list of a NAR, with each chunk's sizes as stored.
    pub async fn nar_chunks(&self, nar_hash: &Sha256Hash) -> Result<Vec<ChunkRef>, DbError> {
        let rows = sqlx::query(&self.sql(
            "SELECT c.hash, c.plain_size, c.stored_size FROM nar_chunks n \
             JOIN chunks c ON c.hash = n.chunk_hash WHERE n.nar_hash = ? ORDER BY n.seq",
        ))
        .bind(nar_hash.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ChunkRef {
                    hash: chunk_hash(&text(r, "hash")?)?,
                    plain_size: to_u64(T, r.try_get("plain_size")?)?,
                    stored_size: to_u64(T, r.try_get("stored_size")?)?,
                })
            })
            .collect()
    }

    /// Drops a NAR's chunk list (its chunks lose a reference each; those left with none start
    /// their grace period). The NAR row stays when a whole file remains.
    pub async fn drop_chunk_list(&self, nar_hash: &Sha256Hash) -> Result<(), DbError> {
        let mut tx = self.begin().await?;
        release_chunks(self.dialect, &mut tx, nar_hash).await?;
        sqlx::query(&self.sql(
            "UPDATE nars SET chunk_count = NULL, spliced_hash = NULL, spliced_size = NULL \
             WHERE nar_hash = ?",
        ))
        .bind(nar_hash.to_string())
        .execute(&mut *tx)
        .await?;
        sqlx::query(&self.sql("DELETE FROM nars WHERE nar_hash = ? AND whole_key IS NULL"))
            .bind(nar_hash.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Forgets a NAR in every form and releases its chunks; returns what was stored so the
    /// caller can delete the whole file's bytes.
    pub async fn delete_nar(&self, nar_hash: &Sha256Hash) -> Result<Option<NarRecord>, DbError> {
        let Some(record) = self.nar(nar_hash).await? else {
            return Ok(None);
        };
        let mut tx = self.begin().await?;
        release_chunks(self.dialect, &mut tx, nar_hash).await?;
        sqlx::query(&self.sql("DELETE FROM nars WHERE nar_hash = ?"))
            .bind(nar_hash.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(record))
    }

    /// Holds `chunks` for an ingest that is about to write them or rely on stored copies:
    /// each gets a row (with no reference when new, recording that its frame is compressed at
    /// `zstd_level`) whose grace period starts now, so the collector cannot claim it before the
    /// ingest commits its list (within the grace period). Returns the chunks it could not hold
    /// because the collector has claimed them and is deleting them (the caller waits for that
    /// to finish and holds them again), and the chunks whose row records another level: a
    /// frame of such a chunk must be written at that level, so that whoever writes it writes
    /// the bytes whose size the row records.
    pub async fn hold_chunks(&self, chunks: &[ChunkRef], zstd_level: i32) -> Result<Held, DbError> {
        let distinct = distinct_sorted(chunks);
        crate::repo::retry_deadlocks(|| self.hold_sorted(&distinct, zstd_level)).await
    }

    async fn hold_sorted(&self, chunks: &[ChunkRef], zstd_level: i32) -> Result<Held, DbError> {
        self.in_transaction(HoldChunks {
            chunks: chunks.to_vec(),
            zstd_level,
        })
        .await
    }

    /// Chunks without references since before `before` (seconds since epoch) and not claimed
    /// yet: candidates for [`Database::claim_unreferenced_chunk`].
    pub async fn unreferenced_chunks(
        &self,
        before: i64,
        limit: u32,
    ) -> Result<Vec<ChunkHash>, DbError> {
        let hashes: Vec<String> = sqlx::query_scalar(&self.sql(
            "SELECT hash FROM chunks WHERE ref_count <= 0 AND collecting = 0 \
             AND unreferenced_since IS NOT NULL AND unreferenced_since <= ? LIMIT ?",
        ))
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        hashes.iter().map(|h| chunk_hash(h)).collect()
    }

    /// Claims a chunk for deletion if it still has no reference since before `before` and no
    /// ingest has held it since; `true` when the caller must now delete its object and then
    /// [`Database::forget_collected_chunk`]. While claimed, ingests wait instead of writing it.
    pub async fn claim_unreferenced_chunk(
        &self,
        hash: &ChunkHash,
        before: i64,
    ) -> Result<bool, DbError> {
        let claimed = self
            .claim_unreferenced_chunks(std::slice::from_ref(hash), before)
            .await?;
        Ok(!claimed.is_empty())
    }

    /// [`Database::claim_unreferenced_chunk`] for many chunks in one transaction (the collector
    /// claims a batch, deletes their objects together, then forgets them together); returns
    /// the chunks claimed.
    pub async fn claim_unreferenced_chunks(
        &self,
        hashes: &[ChunkHash],
        before: i64,
    ) -> Result<Vec<ChunkHash>, DbError> {
        let mut claimed = Vec::new();
        for batch in hashes.chunks(ROWS_PER_STATEMENT) {
            let work = ClaimUnreferenced {
                hashes: batch.iter().map(ToString::to_string).collect(),
                before,
            };
            for hash in self.in_transaction(work).await? {
                claimed.push(chunk_hash(&hash)?);
            }
        }
        Ok(claimed)
    }

    /// Claims a chunk object that has no row (a stray) for deletion, with a row that says so;
    /// `false` when a row appeared meanwhile (an ingest holds the chunk: keep it). The caller
    /// deletes the object, then [`Database::forget_collected_chunk`].
    pub async fn claim_stray_chunk(&self, hash: &ChunkHash) -> Result<bool, DbError> {
        let insert = self.dialect.insert_or_ignore(
            "INTO chunks (hash, plain_size, stored_size, ref_count, unreferenced_since, \
             collecting) VALUES (?, 0, 0, 0, ?, 1)",
            "hash",
        );
        let done = sqlx::query(&self.sql(&insert))
            .bind(hash.to_string())
            .bind(now_secs())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Removes the row of a claimed chunk whose object is deleted, ending the claim.
    pub async fn forget_collected_chunk(&self, hash: &ChunkHash) -> Result<(), DbError> {
        self.forget_collected_chunks(std::slice::from_ref(hash))
            .await
    }

    /// [`Database::forget_collected_chunk`] for many chunks, a statement per batch.
    pub async fn forget_collected_chunks(&self, hashes: &[ChunkHash]) -> Result<(), DbError> {
        for batch in hashes.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "DELETE FROM chunks WHERE collecting <> 0 AND hash IN {}",
                placeholders(batch.len())
            );
            self.write_statements(vec![(sql, texts(batch))]).await?;
        }
        Ok(())
    }

    /// Chunks claimed by a collection that never finished (its process died between the
    /// claim and the row's deletion): the next collection finishes them first.
    pub async fn claimed_chunks(&self, limit: u32) -> Result<Vec<ChunkHash>, DbError> {
        let hashes: Vec<String> =
            sqlx::query_scalar(&self.sql("SELECT hash FROM chunks WHERE collecting <> 0 LIMIT ?"))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
        hashes.iter().map(|h| chunk_hash(h)).collect()
    }

    /// Which of `hashes` have a row: chunks in storage without one are leftovers of an ingest
    /// that never committed.
    pub async fn known_chunks(&self, hashes: &[ChunkHash]) -> Result<Vec<ChunkHash>, DbError> {
        let mut known = Vec::new();
        for batch in hashes.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "SELECT hash FROM chunks WHERE hash IN {}",
                placeholders(batch.len())
            );
            let sql = self.sql(&sql);
            let mut q = sqlx::query_scalar(&sql);
            for h in batch {
                q = q.bind(h.to_string());
            }
            let rows: Vec<String> = q.fetch_all(&self.pool).await?;
            for h in rows {
                known.push(chunk_hash(&h)?);
            }
        }
        Ok(known)
    }
}

/// Each chunk once, in hash order: the order every statement that locks several chunk rows
/// takes them in (PostgreSQL and InnoDB lock rows one by one, and opposite orders deadlock).
fn distinct_sorted(chunks: &[ChunkRef]) -> Vec<ChunkRef> {
    let mut distinct: Vec<ChunkRef> = chunks.to_vec();
    distinct.sort_by_cached_key(|c| c.hash.to_string());
    distinct.dedup_by_key(|c| c.hash);
    distinct
}

/// Records a NAR's complete chunk list ([`Database::commit_chunks`]), in one transaction.
struct CommitChunkList {
    nar: String,
    nar_size: u64,
    chunks: Vec<ChunkRef>,
    spliced_hash: Sha256Hash,
    delete_whole_after: Option<i64>,
}

impl TransactionWork for CommitChunkList {
    /// Whether the list was recorded; `false` (rolled back) when the NAR had one already.
    type Output = bool;

    fn keep(recorded: &bool) -> bool {
        *recorded
    }

    async fn run<S: Session>(self, session: &mut S) -> Result<bool, DbError> {
        let nar = Value::text(self.nar);
        let existing = session
            .rows(
                "SELECT chunk_count FROM nars WHERE nar_hash = ?",
                std::slice::from_ref(&nar),
                |row| row.opt_i64("chunk_count"),
            )
            .await?;
        if matches!(existing.first(), Some(Some(_))) {
            return Ok(false);
        }
        require_held(session, &self.chunks).await?;
        upsert_chunks(session, &self.chunks).await?;
        for (batch_no, batch) in self.chunks.chunks(ROWS_PER_STATEMENT).enumerate() {
            let first_seq = batch_no * ROWS_PER_STATEMENT;
            let sql = format!(
                "INSERT INTO nar_chunks (nar_hash, seq, chunk_hash) VALUES {}",
                values_rows(batch.len(), 3)
            );
            let mut values = Vec::with_capacity(batch.len() * 3);
            for (i, c) in batch.iter().enumerate() {
                values.push(nar.clone());
                values.push(Value::int((first_seq + i) as i64));
                values.push(Value::text(c.hash));
            }
            match session.execute(&sql, &values).await {
                Ok(_) => {}
                // A concurrent commit of the same NAR got there first.
                Err(e) if is_unique_violation(&e) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        let ours: u64 = self.chunks.iter().map(|c| c.stored_size).sum();
        let sum = session.dialect().bigint("SUM(c.stored_size)");
        let stored = session
            .rows(
                &format!(
                    "SELECT {sum} AS stored FROM nar_chunks n \
                     JOIN chunks c ON c.hash = n.chunk_hash WHERE n.nar_hash = ?"
                ),
                std::slice::from_ref(&nar),
                |row| row.opt_i64("stored"),
            )
            .await?;
        let stored = to_u64(T, stored.into_iter().flatten().sum())?;
        let spliced_hash = (stored == ours).then(|| self.spliced_hash.to_string());
        let now = now_secs();
        let upsert = session.dialect().upsert(
            "INTO nars (nar_hash, nar_size, chunk_count, spliced_hash, spliced_size, \
             created_at, last_accessed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            "nar_hash",
            &["chunk_count", "spliced_hash", "spliced_size"],
        );
        let values = [
            nar.clone(),
            Value::int(to_i64(self.nar_size)),
            Value::int(self.chunks.len() as i64),
            Value::Text(spliced_hash),
            Value::int(to_i64(stored)),
            Value::int(now),
            Value::int(now),
        ];
        session.execute(&upsert, &values).await?;
        if let Some(at) = self.delete_whole_after {
            session
                .execute(
                    "UPDATE nars SET whole_delete_after = ? \
                     WHERE nar_hash = ? AND whole_key IS NOT NULL",
                    &[Value::int(at), nar],
                )
                .await?;
        }
        Ok(true)
    }
}

/// Claims the chunks of a list that may be collected ([`Database::claim_unreferenced_chunks`]),
/// in one transaction: the rows that qualify are read (locked on the server engines) and
/// marked, so exactly the chunks returned are claimed.
struct ClaimUnreferenced {
    hashes: Vec<String>,
    before: i64,
}

impl TransactionWork for ClaimUnreferenced {
    type Output = Vec<String>;

    async fn run<S: Session>(self, session: &mut S) -> Result<Vec<String>, DbError> {
        let hashes = texts(&self.hashes);
        let sql = format!(
            "SELECT hash FROM chunks WHERE hash IN {} AND ref_count <= 0 AND collecting = 0 \
             AND unreferenced_since IS NOT NULL AND unreferenced_since <= ? ORDER BY hash{}",
            placeholders(hashes.len()),
            session.dialect().lock_selected_rows()
        );
        let find = [hashes, vec![Value::int(self.before)]].concat();
        let claimed = session.rows(&sql, &find, |row| row.text("hash")).await?;
        if !claimed.is_empty() {
            let sql = format!(
                "UPDATE chunks SET collecting = 1 WHERE hash IN {}",
                placeholders(claimed.len())
            );
            session.execute(&sql, &texts(&claimed)).await?;
        }
        Ok(claimed)
    }
}

/// Holds chunks against the collector ([`Database::hold_chunks`]), in one transaction.
struct HoldChunks {
    /// Distinct, in hash order.
    chunks: Vec<ChunkRef>,
    zstd_level: i32,
}

impl TransactionWork for HoldChunks {
    type Output = Held;

    async fn run<S: Session>(self, session: &mut S) -> Result<Held, DbError> {
        let now = now_secs();
        let level = i64::from(self.zstd_level);
        let mut held = Held::default();
        for batch in self.chunks.chunks(ROWS_PER_STATEMENT) {
            let list = placeholders(batch.len());
            let hashes: Vec<Value> = batch.iter().map(|c| Value::text(c.hash)).collect();
            let sql = format!(
                "UPDATE chunks SET unreferenced_since = ? \
                 WHERE ref_count <= 0 AND collecting = 0 AND hash IN {list}"
            );
            let refresh = [vec![Value::int(now)], hashes.clone()].concat();
            session.execute(&sql, &refresh).await?;
            let insert = session.dialect().insert_or_ignore(
                &format!(
                    "INTO chunks (hash, plain_size, stored_size, ref_count, unreferenced_since, \
                     zstd_level) VALUES {}",
                    values_rows(batch.len(), 6)
                ),
                "hash",
            );
            let mut rows = Vec::with_capacity(batch.len() * 6);
            for (c, hash) in batch.iter().zip(&hashes) {
                rows.extend([
                    hash.clone(),
                    Value::int(to_i64(c.plain_size)),
                    Value::int(to_i64(c.stored_size)),
                    Value::int(0),
                    Value::int(now),
                    Value::int(level),
                ]);
            }
            session.execute(&insert, &rows).await?;
            let sql = format!(
                "SELECT hash, collecting, zstd_level FROM chunks WHERE hash IN {list} \
                 AND (collecting <> 0 OR zstd_level <> ?)"
            );
            let find = [hashes, vec![Value::int(level)]].concat();
            let found = session
                .rows(&sql, &find, |row| {
                    Ok((
                        row.text("hash")?,
                        row.i64("collecting")?,
                        row.opt_i64("zstd_level")?,
                    ))
                })
                .await?;
            for (hash, collecting, level) in found {
                let hash = chunk_hash(&hash)?;
                if collecting != 0 {
                    held.claimed.push(hash);
                } else if let Some(level) = level {
                    let level = i32::try_from(level).map_err(|e| corrupt(T, e))?;
                    held.other_levels.insert(hash, level);
                }
            }
        }
        Ok(held)
    }
}

/// Fails unless every chunk of a list about to be committed is held: it has a row that the
/// collector has not claimed. The rows are locked until the commit (the server engines; SQLite
/// writes one transaction at a time), after which their references protect them. A chunk not
/// held was collected while its ingest ran past the grace period: its object may be gone.
async fn require_held<S: Session>(session: &mut S, chunks: &[ChunkRef]) -> Result<(), DbError> {
    let distinct = distinct_sorted(chunks);
    let mut held = 0;
    for batch in distinct.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "SELECT hash FROM chunks WHERE collecting = 0 AND hash IN {} ORDER BY hash{}",
            placeholders(batch.len()),
            session.dialect().lock_selected_rows()
        );
        let hashes: Vec<Value> = batch.iter().map(|c| Value::text(c.hash)).collect();
        held += session
            .rows(&sql, &hashes, |row| row.text("hash"))
            .await?
            .len();
    }
    match distinct.len() - held {
        0 => Ok(()),
        missing => Err(DbError::ChunksNotHeld(missing)),
    }
}

/// Inserts chunk rows or adds references to existing ones, in multi-row statements. Rows go
/// in hash order, so two transactions upserting overlapping chunks lock them in the same
/// order (PostgreSQL and InnoDB lock rows one by one, and opposite orders deadlock).
async fn upsert_chunks<S: Session>(session: &mut S, chunks: &[ChunkRef]) -> Result<(), DbError> {
    let mut counts: HashMap<ChunkHash, (ChunkRef, i64)> = HashMap::new();
    for c in chunks {
        counts.entry(c.hash).or_insert((*c, 0)).1 += 1;
    }
    let mut distinct: Vec<(String, ChunkRef, i64)> = counts
        .into_values()
        .map(|(c, n)| (c.hash.to_string(), c, n))
        .collect();
    distinct.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let dialect = session.dialect();
    for batch in distinct.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO chunks (hash, plain_size, stored_size, ref_count, unreferenced_since) \
             VALUES {} {} ref_count = chunks.ref_count + {}, unreferenced_since = NULL",
            values_rows(batch.len(), 5),
            dialect.on_conflict_update("hash"),
            dialect.excluded("ref_count"),
        );
        let mut values = Vec::with_capacity(batch.len() * 5);
        for (hash, c, n) in batch {
            values.extend([
                Value::text(hash),
                Value::int(to_i64(c.plain_size)),
                Value::int(to_i64(c.stored_size)),
                Value::int(*n),
                Value::Int(None),
            ]);
        }
        session.execute(&sql, &values).await?;
    }
    Ok(())
}

/// Takes one reference per list entry off the chunks of a NAR and deletes the list.
async fn release_chunks(
    dialect: Dialect,
    tx: &mut WriteTx,
    nar_hash: &Sha256Hash,
) -> Result<(), DbError> {
    let nar = nar_hash.to_string();
    sqlx::query(&dialect.sql(
        "UPDATE chunks SET ref_count = ref_count - (SELECT COUNT(*) FROM nar_chunks n \
         WHERE n.nar_hash = ? AND n.chunk_hash = chunks.hash) \
         WHERE hash IN (SELECT chunk_hash FROM nar_chunks WHERE nar_hash = ?)",
    ))
    .bind(&nar)
    .bind(&nar)
    .execute(&mut **tx)
    .await?;
    sqlx::query(&dialect.sql(&format!(
        "UPDATE chunks SET unreferenced_since = ? WHERE {LOST_LAST_REFERENCE} \
         AND hash IN (SELECT chunk_hash FROM nar_chunks WHERE nar_hash = ?)"
    )))
    .bind(now_secs())
    .bind(&nar)
    .execute(&mut **tx)
    .await?;
    sqlx::query(&dialect.sql("DELETE FROM nar_chunks WHERE nar_hash = ?"))
        .bind(&nar)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
impl Database {
    /// Holds a list's chunks, then commits it: what every ingest does.
    pub(crate) async fn commit_held(
        &self,
        nar_hash: &Sha256Hash,
        nar_size: u64,
        chunks: &[ChunkRef],
        spliced_hash: Sha256Hash,
    ) -> Result<bool, DbError> {
        let claimed = self.hold_chunks(chunks, 1).await?.claimed;
        assert!(
            claimed.is_empty(),
            "chunks claimed by the collector: {claimed:?}"
        );
        self.commit_chunks(nar_hash, nar_size, chunks, spliced_hash)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(i: u32) -> ChunkRef {
        ChunkRef {
            hash: ChunkHash::digest(&i.to_le_bytes()),
            plain_size: 100 + u64::from(i),
            stored_size: 50 + u64::from(i),
        }
    }

    /// Releasing a NAR's chunks looks its chunks up by hash: SQLite, without statistics, would
    /// otherwise walk the index of chunks with no `unreferenced_since` (every referenced chunk:
    /// millions in a large cache) for each NAR evicted (issue 18).
    #[tokio::test]
    async fn chunks_losing_their_last_reference_are_found_by_hash() {
        use crate::repo::test_support::{Engine, TestDb};
        let db = TestDb::new(Engine::Sqlite).await;
        let sql = format!(
            "EXPLAIN QUERY PLAN SELECT 1 FROM chunks WHERE {LOST_LAST_REFERENCE} \
             AND hash IN (SELECT chunk_hash FROM nar_chunks WHERE nar_hash = 'x')"
        );
        let rows = sqlx::query(&sql).fetch_all(&db.pool).await.unwrap();
        let detail: Vec<String> = rows
            .iter()
            .map(|r| sqlx::Row::try_get::<String, _>(r, "detail").unwrap())
            .collect();
        assert!(
            detail
                .iter()
                .any(|d| d.contains("chunks USING") && d.contains("(hash=?)")),
            "{detail:?}"
        );
        assert!(
            !detail
                .iter()
                .any(|d| d.contains("chunks_unreferenced_since")),
            "{detail:?}"
        );
        db.cleanup().await;
    }

    /// A failure while the list is written is an error, not taken for a concurrent commit
    /// of the same NAR (which is the one failure answered with `false`): otherwise the caller
    /// would believe the list stored. The failure is injected with a trigger.
    #[tokio::test]
    async fn a_failed_list_insert_is_an_error_not_a_lost_race() {
        use crate::repo::test_support::{Engine, TestDb};
        let db = TestDb::new(Engine::Sqlite).await;
        sqlx::query(
            "CREATE TRIGGER injected BEFORE INSERT ON nar_chunks \
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
        )
        .execute(&db.pool)
        .await
        .unwrap();
        let nar = Sha256Hash::digest(b"nar");
        let result = db
            .commit_held(&nar, 100, &[chunk(1)], Sha256Hash::digest(b"s"))
            .await;
        assert!(result.is_err(), "{result:?}");
        assert!(db.nar(&nar).await.unwrap().is_none());
        db.cleanup().await;
    }

    db_test! {
        async fn a_chunk_referenced_again_is_not_claimed(db) {
            // The collector found `c` unreferenced; before it claimed the chunk, another NAR
            // committed a list naming `c` again. The claim re-checks and leaves it.
            let c = chunk(7);
            let (a, b) = (Sha256Hash::digest(b"nar a"), Sha256Hash::digest(b"nar b"));
            db.commit_held(&a, 100, &[c], Sha256Hash::digest(b"s"))
                .await
                .unwrap();
            db.drop_chunk_list(&a).await.unwrap();
            assert_eq!(db.unreferenced_chunks(i64::MAX, 10).await.unwrap(), vec![c.hash]);
            db.commit_held(&b, 100, &[c], Sha256Hash::digest(b"s"))
                .await
                .unwrap();
            assert!(!db.claim_unreferenced_chunk(&c.hash, i64::MAX).await.unwrap());
            assert_eq!(db.known_chunks(&[c.hash]).await.unwrap(), vec![c.hash]);
            db.drop_chunk_list(&b).await.unwrap();
            assert!(db.claim_unreferenced_chunk(&c.hash, i64::MAX).await.unwrap());
            assert_eq!(db.claimed_chunks(10).await.unwrap(), vec![c.hash]);
            db.forget_collected_chunk(&c.hash).await.unwrap();
            assert!(db.known_chunks(&[c.hash]).await.unwrap().is_empty());
            assert!(db.claimed_chunks(10).await.unwrap().is_empty());
        }
    }

    db_test! {
        async fn a_held_chunk_is_not_claimed_and_a_claimed_one_is_not_held(db) {
            // The race of issue 15 (defect 12): an ingest finds chunk `c` stored while the
            // collector is about to delete it. Whichever acts first, the other sees it.
            let (c, d) = (chunk(8), chunk(9));
            let (a, b) = (Sha256Hash::digest(b"nar a"), Sha256Hash::digest(b"nar b"));
            db.commit_held(&a, 100, &[c, d], Sha256Hash::digest(b"s"))
                .await
                .unwrap();
            db.drop_chunk_list(&a).await.unwrap();
            let long_ago = now_secs() - 3600;
            sqlx::query(&db.sql("UPDATE chunks SET unreferenced_since = ?"))
                .bind(long_ago)
                .execute(&db.pool)
                .await
                .unwrap();
            let before = now_secs() - 60;
            assert_eq!(db.unreferenced_chunks(before, 10).await.unwrap().len(), 2);

            // The ingest holds c first: its grace period starts again, the claim fails.
            assert!(db.hold_chunks(&[c], 1).await.unwrap().claimed.is_empty());
            assert!(!db.claim_unreferenced_chunk(&c.hash, before).await.unwrap());
            assert_eq!(db.unreferenced_chunks(before, 10).await.unwrap(), vec![d.hash]);

            // The collector claims d first: the ingest is told to wait, and its list naming d
            // cannot be committed while d is being deleted.
            assert!(db.claim_unreferenced_chunk(&d.hash, before).await.unwrap());
            assert_eq!(db.hold_chunks(&[c, d], 1).await.unwrap().claimed, vec![d.hash]);
            let refused = db.commit_chunks(&b, 100, &[c, d], Sha256Hash::digest(b"s")).await;
            assert!(matches!(refused, Err(DbError::ChunksNotHeld(1))), "{refused:?}");
            assert!(db.nar(&b).await.unwrap().is_none());

            // Once the collector deleted d, holding it again makes a fresh row: the ingest
            // writes d's object itself and commits.
            db.forget_collected_chunk(&d.hash).await.unwrap();
            assert!(db.hold_chunks(&[c, d], 1).await.unwrap().claimed.is_empty());
            assert!(db.commit_chunks(&b, 100, &[c, d], Sha256Hash::digest(b"s")).await.unwrap());
            assert_eq!(db.nar_chunks(&b).await.unwrap(), vec![c, d]);
        }
    }

    db_test! {
        async fn a_batch_claims_exactly_the_collectable_chunks_and_forgets_only_claimed_ones(db) {
            // e: collectable. f: unreferenced too recently. g: referenced. h: claimed already.
            // i: no row at all.
            let (e, f, g, h, i) = (chunk(30), chunk(31), chunk(32), chunk(33), chunk(34));
            let (a, b) = (Sha256Hash::digest(b"nar a"), Sha256Hash::digest(b"nar b"));
            db.commit_held(&a, 100, &[e, f, h], Sha256Hash::digest(b"s"))
                .await
                .unwrap();
            db.commit_held(&b, 100, &[g], Sha256Hash::digest(b"s"))
                .await
                .unwrap();
            db.drop_chunk_list(&a).await.unwrap();
            let long_ago = now_secs() - 3600;
            sqlx::query(&db.sql("UPDATE chunks SET unreferenced_since = ? WHERE hash <> ?"))
                .bind(long_ago)
                .bind(f.hash.to_string())
                .execute(&db.pool)
                .await
                .unwrap();
            let before = now_secs() - 60;
            assert!(db.claim_unreferenced_chunk(&h.hash, before).await.unwrap());
            let all = [e.hash, f.hash, g.hash, h.hash, i.hash];
            assert_eq!(db.claim_unreferenced_chunks(&all, before).await.unwrap(), vec![e.hash]);
            assert!(db.claim_unreferenced_chunks(&all, before).await.unwrap().is_empty());
            let mut claimed = db.claimed_chunks(10).await.unwrap();
            claimed.sort_by_key(ToString::to_string);
            let mut expected = vec![e.hash, h.hash];
            expected.sort_by_key(ToString::to_string);
            assert_eq!(claimed, expected);
            // Forgetting a batch removes the claimed rows in it, never a row that is not claimed.
            db.forget_collected_chunks(&all).await.unwrap();
            assert!(db.claimed_chunks(10).await.unwrap().is_empty());
            let mut known = db.known_chunks(&all).await.unwrap();
            known.sort_by_key(ToString::to_string);
            let mut expected = vec![f.hash, g.hash];
            expected.sort_by_key(ToString::to_string);
            assert_eq!(known, expected);
        }
    }

    db_test! {
        async fn holding_a_chunk_recorded_at_another_level_names_that_level(db) {
            let (c, d) = (chunk(20), chunk(21));
            let held = db.hold_chunks(&[c], 8).await.unwrap();
            assert_eq!(held, Held::default(), "a new row is the holder's");
            // Another writer at level 1 holds c (recorded at 8) and a new chunk d.
            let held = db.hold_chunks(&[c, d], 1).await.unwrap();
            assert!(held.claimed.is_empty());
            assert_eq!(held.other_levels, HashMap::from([(c.hash, 8)]));
            // d is recorded at 1 now; a writer at 1 finds nothing to change.
            assert_eq!(db.hold_chunks(&[d], 1).await.unwrap(), Held::default());
            // Rows from before levels were recorded say nothing.
            sqlx::query(&db.sql("UPDATE chunks SET zstd_level = NULL"))
                .execute(&db.pool)
                .await
                .unwrap();
            assert_eq!(db.hold_chunks(&[c, d], 3).await.unwrap(), Held::default());
        }
    }

    db_test! {
        async fn a_stray_is_claimed_only_while_no_ingest_holds_it(db) {
            let (c, d) = (chunk(10), chunk(11));
            assert!(db.hold_chunks(&[c], 1).await.unwrap().claimed.is_empty());
            assert!(!db.claim_stray_chunk(&c.hash).await.unwrap(), "a held chunk is no stray");
            assert!(db.claim_stray_chunk(&d.hash).await.unwrap());
            assert_eq!(db.hold_chunks(&[d], 1).await.unwrap().claimed, vec![d.hash]);
            db.forget_collected_chunk(&d.hash).await.unwrap();
            assert!(db.known_chunks(&[d.hash]).await.unwrap().is_empty());
        }
    }

    db_test! {
        async fn a_list_of_chunks_never_held_is_refused(db) {
            let a = Sha256Hash::digest(b"nar a");
            let refused = db
                .commit_chunks(&a, 100, &[chunk(1), chunk(2), chunk(1)], Sha256Hash::digest(b"s"))
                .await;
            assert!(matches!(refused, Err(DbError::ChunksNotHeld(2))), "{refused:?}");
            assert!(db.nar(&a).await.unwrap().is_none());
            assert!(db.known_chunks(&[chunk(1).hash]).await.unwrap().is_empty());
        }
    }

    db_test! {
        async fn chunk_lists_share_chunks_and_release_them(db) {
            let a = Sha256Hash::digest(b"a");
            let b = Sha256Hash::digest(b"b");
            // 1200 chunks: several statements per list; chunk 0 repeats inside list a.
            let mut list_a: Vec<ChunkRef> = (0..1200).map(chunk).collect();
            list_a.push(chunk(0));
            let list_b: Vec<ChunkRef> = (1000..1300).map(chunk).collect();
            let spliced = Sha256Hash::digest(b"s");
            assert!(db.commit_held(&a, 1, &list_a, spliced).await.unwrap());
            assert!(!db.commit_held(&a, 1, &list_a, spliced).await.unwrap());
            assert!(db.commit_held(&b, 2, &list_b, spliced).await.unwrap());
            assert_eq!(db.nar_chunks(&a).await.unwrap(), list_a);
            let rec = db.nar(&a).await.unwrap().unwrap();
            let form = rec.chunked.unwrap();
            assert_eq!(form.chunk_count, 1201);
            assert_eq!(form.spliced_hash, Some(spliced));
            assert_eq!(
                form.spliced_size,
                list_a.iter().map(|c| c.stored_size).sum::<u64>()
            );

            // Dropping a releases chunks 0..1000 only; b keeps 1000..1200 alive.
            db.delete_nar(&a).await.unwrap().unwrap();
            assert!(db.nar(&a).await.unwrap().is_none());
            let free = db
                .unreferenced_chunks(now_secs() + 1, 10_000)
                .await
                .unwrap();
            assert_eq!(free.len(), 1000);
            assert!(free.contains(&chunk(0).hash));
            assert!(!free.contains(&chunk(1000).hash));
            assert!(
                db.unreferenced_chunks(now_secs() - 100, 10)
                    .await
                    .unwrap()
                    .is_empty()
            );
            let all: Vec<ChunkHash> = (0..1300).map(|i| chunk(i).hash).collect();
            assert_eq!(db.known_chunks(&all).await.unwrap().len(), 1300);

            // A chunk picked up again by a new NAR is no longer collectable.
            let c = Sha256Hash::digest(b"c");
            db.commit_held(&c, 3, &[chunk(5)], spliced).await.unwrap();
            assert!(!db.claim_unreferenced_chunk(&chunk(5).hash, i64::MAX).await.unwrap());
            assert!(db.claim_unreferenced_chunk(&chunk(6).hash, i64::MAX).await.unwrap());

            // A stored frame of another size than ours: FileHash is withheld, never wrong.
            let d = Sha256Hash::digest(b"d");
            let resized = ChunkRef {
                stored_size: 1,
                ..chunk(1100)
            };
            db.commit_held(&d, 4, &[resized], spliced).await.unwrap();
            let form = db.nar(&d).await.unwrap().unwrap().chunked.unwrap();
            assert_eq!(form.spliced_hash, None);
            assert_eq!(form.spliced_size, chunk(1100).stored_size);

            db.drop_chunk_list(&b).await.unwrap();
            assert!(db.nar(&b).await.unwrap().is_none());
        }
    }

    db_test! {
        /// Two processes chunking the same NAR at once: one wins, the other changes nothing.
        /// NARs sharing chunks, listed in opposite orders, commit side by side without a
        /// deadlock. Reference counts stay exact throughout.
        async fn concurrent_commits(db) {
            let spliced = Sha256Hash::digest(b"s");
            let list: Vec<ChunkRef> = (0..700).map(chunk).collect();
            let reversed: Vec<ChunkRef> = list.iter().rev().copied().collect();
            let (one, two) = (db.clone(), db.clone());
            let a = Sha256Hash::digest(b"a");
            let (r1, r2) = tokio::join!(
                one.commit_held(&a, 1, &list, spliced),
                two.commit_held(&a, 1, &list, spliced)
            );
            let won = [r1.unwrap(), r2.unwrap()];
            assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");

            let (b, c) = (Sha256Hash::digest(b"b"), Sha256Hash::digest(b"c"));
            let (r1, r2) = tokio::join!(
                one.commit_held(&b, 1, &list, spliced),
                two.commit_held(&c, 1, &reversed, spliced)
            );
            assert!(r1.unwrap() && r2.unwrap());
            assert!(db.chunk_ref_mismatches().await.unwrap().is_empty());
            let first = db.chunks_after(None, 1).await.unwrap();
            assert_eq!(first[0].ref_count, 3);
            assert_eq!(db.nar_chunks(&c).await.unwrap(), reversed);
        }
    }
}
