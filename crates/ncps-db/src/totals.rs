//! What the cache holds, counted: read from running totals, never summed on the way.
//!
//! Migration 0006 keeps the totals in `store_deltas`: triggers on `narinfos`, `nars`, `chunks`,
//! `build_logs` and `realisations` append one row of changes per changed row, so every write,
//! whoever makes it (this process, another replica, an admin command), is counted in the same
//! transaction, and no writer waits on a shared row. The totals are the sum of those rows;
//! [`Database::fold_totals`] folds them into one now and then so the sum stays short. Reading
//! them costs the same on a cache of a million paths as on a new one; only fsck sums the tables
//! themselves ([`Database::measure_totals`]) to check them.

use sqlx::AnyConnection;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::repo::to_u64;
use crate::{Database, DbError};

/// Rows folded per transaction.
const FOLD_ROWS: usize = 10_000;

/// What the cache holds, counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreCounts {
    /// Narinfos.
    pub narinfos: u64,
    /// NARs (in any form).
    pub nars: u64,
    /// Bytes of the NARs kept as whole files.
    pub whole_bytes: u64,
    /// Chunks some NAR references.
    pub chunks: u64,
    /// References to those chunks (chunk-list entries).
    pub chunk_references: u64,
    /// The plain bytes of those chunks, each counted once.
    pub chunk_plain_bytes: u64,
    /// What those chunks take in storage (compressed), each counted once.
    pub chunk_stored_bytes: u64,
    /// The plain bytes the chunk lists describe (each reference counted): what the chunked
    /// NARs would take unchunked and uncompressed.
    pub chunked_nar_bytes: u64,
    /// Bytes of build logs and realisations.
    pub document_bytes: u64,
}

impl StoreCounts {
    /// Bytes the cache really keeps: whole files, each referenced chunk once (chunks waiting
    /// for garbage collection are already on their way out), and documents.
    pub fn stored_bytes(&self) -> u64 {
        self.whole_bytes + self.chunk_stored_bytes + self.document_bytes
    }

    /// How many times over the chunked NARs' bytes would fill the chunks they share (1: no
    /// chunk shared); `None` without chunks.
    pub fn dedup_ratio(&self) -> Option<f64> {
        (self.chunk_plain_bytes > 0)
            .then(|| self.chunked_nar_bytes as f64 / self.chunk_plain_bytes as f64)
    }

    /// Plain chunk bytes per stored byte; `None` without chunks.
    pub fn compression_ratio(&self) -> Option<f64> {
        (self.chunk_stored_bytes > 0)
            .then(|| self.chunk_plain_bytes as f64 / self.chunk_stored_bytes as f64)
    }
}

/// The running totals' columns, in [`StoreCounts`] order.
const COLUMNS: [&str; 9] = [
    "narinfos",
    "nars",
    "whole_bytes",
    "chunks",
    "chunk_refs",
    "chunk_plain",
    "chunk_stored",
    "chunk_described",
    "document_bytes",
];

fn from_values(v: [i64; 9]) -> Result<StoreCounts, DbError> {
    let n = |i: usize| to_u64("store_deltas", v[i]);
    Ok(StoreCounts {
        narinfos: n(0)?,
        nars: n(1)?,
        whole_bytes: n(2)?,
        chunks: n(3)?,
        chunk_references: n(4)?,
        chunk_plain_bytes: n(5)?,
        chunk_stored_bytes: n(6)?,
        chunked_nar_bytes: n(7)?,
        document_bytes: n(8)?,
    })
}

fn values_of(row: &AnyRow) -> Result<StoreCounts, DbError> {
    let mut values = [0i64; 9];
    for (i, v) in values.iter_mut().enumerate() {
        *v = row.try_get(i)?;
    }
    from_values(values)
}

fn to_values(c: &StoreCounts) -> [i64; 9] {
    [
        c.narinfos,
        c.nars,
        c.whole_bytes,
        c.chunks,
        c.chunk_references,
        c.chunk_plain_bytes,
        c.chunk_stored_bytes,
        c.chunked_nar_bytes,
        c.document_bytes,
    ]
    .map(|n| i64::try_from(n).unwrap_or(i64::MAX))
}

impl Database {
    /// What the cache holds, from the running totals (no table is summed).
    pub async fn store_counts(&self) -> Result<StoreCounts, DbError> {
        let mut conn = self.pool.acquire().await?;
        self.read_totals(&mut conn).await
    }

    async fn read_totals(&self, conn: &mut AnyConnection) -> Result<StoreCounts, DbError> {
        let sums: Vec<String> = COLUMNS
            .iter()
            .map(|c| self.dialect.bigint(&format!("COALESCE(SUM({c}), 0)")))
            .collect();
        let sql = format!("SELECT {} FROM store_deltas", sums.join(", "));
        let row = sqlx::query(&sql).fetch_one(&mut *conn).await?;
        values_of(&row)
    }

    /// The running totals and the tables' own sums, read in one snapshot so that writes in
    /// between cannot make them differ: what fsck compares.
    pub async fn totals_and_measured(&self) -> Result<(StoreCounts, StoreCounts), DbError> {
        let mut tx = self.pool.begin().await?;
        if self.dialect == crate::dialect::Dialect::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .execute(&mut *tx)
                .await?;
        }
        let totals = self.read_totals(&mut tx).await?;
        let measured = self.measure_on(&mut tx).await?;
        tx.commit().await?;
        Ok((totals, measured))
    }

    /// Bytes the cache really keeps (see [`StoreCounts::stored_bytes`]), from the totals.
    pub async fn stored_bytes(&self) -> Result<u64, DbError> {
        Ok(self.store_counts().await?.stored_bytes())
    }

    /// Folds the running totals' rows into one, 10,000 per transaction so writers are never
    /// held up for long; returns how many rows it folded. Rows another transaction is still
    /// writing are left for the next fold.
    pub async fn fold_totals(&self) -> Result<u64, DbError> {
        let mut folded = 0;
        loop {
            let batch = self.fold_some_totals().await?;
            folded += batch;
            if batch < FOLD_ROWS as u64 {
                return Ok(folded);
            }
        }
    }

    async fn fold_some_totals(&self) -> Result<u64, DbError> {
        let mut tx = self.begin().await?;
        let sql = format!(
            "SELECT id, {} FROM store_deltas ORDER BY id LIMIT {FOLD_ROWS}{}",
            COLUMNS.join(", "),
            self.dialect.lock_selected_rows()
        );
        let rows = sqlx::query(&sql).fetch_all(&mut *tx).await?;
        if rows.len() < 2 {
            return Ok(0);
        }
        let mut sums = [0i64; 9];
        let mut ids = Vec::with_capacity(rows.len());
        for row in &rows {
            ids.push(row.try_get::<i64, _>(0)?);
            for (i, sum) in sums.iter_mut().enumerate() {
                *sum += row.try_get::<i64, _>(i + 1)?;
            }
        }
        for batch in ids.chunks(crate::repo::ROWS_PER_STATEMENT) {
            let sql = format!(
                "DELETE FROM store_deltas WHERE id IN {}",
                crate::dialect::placeholders(batch.len())
            );
            let sql = self.sql(&sql);
            let mut q = sqlx::query(&sql);
            for id in batch {
                q = q.bind(*id);
            }
            q.execute(&mut *tx).await?;
        }
        self.insert_totals(&mut tx, sums).await?;
        tx.commit().await?;
        Ok(ids.len() as u64)
    }

    async fn insert_totals(
        &self,
        tx: &mut crate::repo::WriteTx,
        values: [i64; 9],
    ) -> Result<(), DbError> {
        let sql = format!(
            "INSERT INTO store_deltas ({}) VALUES {}",
            COLUMNS.join(", "),
            crate::dialect::placeholders(COLUMNS.len())
        );
        let sql = self.sql(&sql);
        let mut q = sqlx::query(&sql);
        for v in values {
            q = q.bind(v);
        }
        q.execute(&mut **tx).await?;
        Ok(())
    }

    /// The same figures as [`Self::store_counts`], summed from the tables themselves: every
    /// NAR and chunk row is read, so only fsck asks (counted by [`Self::full_scans`]).
    pub async fn measure_totals(&self) -> Result<StoreCounts, DbError> {
        let mut conn = self.pool.acquire().await?;
        self.measure_on(&mut conn).await
    }

    async fn measure_on(&self, conn: &mut AnyConnection) -> Result<StoreCounts, DbError> {
        self.full_scans
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = self.dialect;
        let sum = |expr: &str| d.bigint(&format!("COALESCE(SUM({expr}), 0)"));
        let count = d.bigint("COUNT(*)");
        let sql = format!(
            "SELECT (SELECT {count} FROM narinfos), (SELECT {count} FROM nars), \
             (SELECT {} FROM nars), \
             c.n, c.refs, c.plain, c.stored, c.described, \
             (SELECT {} FROM build_logs) + (SELECT {} FROM realisations) \
             FROM (SELECT {count} AS n, {} AS refs, {} AS plain, {} AS stored, {} AS described \
                   FROM chunks WHERE ref_count > 0) c",
            sum("whole_size"),
            sum("stored_size"),
            sum("stored_size"),
            sum("ref_count"),
            sum("plain_size"),
            sum("stored_size"),
            sum("ref_count * plain_size"),
        );
        let row = sqlx::query(&sql).fetch_one(&mut *conn).await?;
        values_of(&row)
    }

    /// How many statements this handle has run that read every NAR or chunk row (the tables'
    /// sums of [`Self::measure_totals`], the search of [`Self::reclaim_unused_nars`]): work that
    /// must not grow with the cache (an eviction run, a scrape) is checked against this count.
    pub fn full_scans(&self) -> u64 {
        self.full_scans.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets the running totals to `measured` (fsck's repair of totals that drifted, e.g. after
    /// rows were edited by hand with the triggers off).
    pub async fn reset_totals(&self, measured: &StoreCounts) -> Result<(), DbError> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM store_deltas")
            .execute(&mut *tx)
            .await?;
        self.insert_totals(&mut tx, to_values(measured)).await?;
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChunkRef, WholeFile};
    use ncps_nix::{ChunkHash, Compression, NarKey, Sha256Hash};

    db_test! {
        async fn totals_follow_every_change_and_match_the_tables(db) {
            let chunk = |name: &[u8], plain_size: u64, stored_size: u64| ChunkRef {
                hash: ChunkHash::digest(name),
                plain_size,
                stored_size,
            };
            let (a, b, c) = (chunk(b"a", 100, 40), chunk(b"b", 300, 60), chunk(b"c", 50, 50));
            // NAR 1 uses a twice and b; NAR 2 shares b and adds c.
            let one = Sha256Hash::digest(b"one");
            let two = Sha256Hash::digest(b"two");
            db.commit_held(&one, 500, &[a, b, a], Sha256Hash::digest(b"s1"))
                .await
                .unwrap();
            db.commit_held(&two, 350, &[b, c], Sha256Hash::digest(b"s2"))
                .await
                .unwrap();
            let whole = WholeFile {
                key: NarKey::new(Sha256Hash::digest(b"f"), Compression::Xz),
                size: 1234,
            };
            db.record_whole_file(&Sha256Hash::digest(b"three"), 5000, whole, None)
                .await
                .unwrap();
            db.put_build_log("00000000000000000000000000000000-x.drv", b"log")
                .await
                .unwrap();
            let counts = db.store_counts().await.unwrap();
            assert_eq!(
                counts,
                StoreCounts {
                    narinfos: 0,
                    nars: 3,
                    whole_bytes: 1234,
                    chunks: 3,
                    chunk_references: 5,
                    chunk_plain_bytes: 450,
                    chunk_stored_bytes: 150,
                    chunked_nar_bytes: 850,
                    document_bytes: 3,
                }
            );
            assert_eq!(counts.stored_bytes(), 1234 + 150 + 3);
            assert_eq!(counts.compression_ratio(), Some(3.0));
            assert_eq!(counts.dedup_ratio(), Some(850.0 / 450.0));
            assert_eq!(StoreCounts::default().dedup_ratio(), None);
            assert_eq!(db.measure_totals().await.unwrap(), counts, "the tables agree");
            assert_eq!(db.totals_and_measured().await.unwrap(), (counts, counts));

            // Dropping NAR 1 (unused) takes its references; folding keeps the sum.
            let removed = db.reclaim_unused_nars(10).await.unwrap();
            assert_eq!(removed.len(), 3, "nothing uses any of them");
            let counts = db.store_counts().await.unwrap();
            assert_eq!(counts, db.measure_totals().await.unwrap());
            assert_eq!((counts.nars, counts.chunks, counts.whole_bytes), (0, 0, 0));
            assert!(db.fold_totals().await.unwrap() > 1);
            assert_eq!(db.fold_totals().await.unwrap(), 0, "one row left");
            assert_eq!(db.store_counts().await.unwrap(), counts);

            // Totals that drifted are set right.
            db.reset_totals(&StoreCounts { narinfos: 7, ..counts }).await.unwrap();
            assert_eq!(db.store_counts().await.unwrap().narinfos, 7);
            db.reset_totals(&db.measure_totals().await.unwrap()).await.unwrap();
            assert_eq!(db.store_counts().await.unwrap(), counts);
        }
    }
}
