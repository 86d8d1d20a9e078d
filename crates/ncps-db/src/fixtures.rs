//! Large generated caches for benchmarks and scale tests (feature `fixtures`): a million
//! narinfos in about a minute, written with multi-row statements in large transactions rather
//! than through an upstream round trip per path.
//!
//! Path `i` is a pure function of `i` and the seed: its store path hash, NAR hash, sizes,
//! references and chunks, so a benchmark can ask for any of them (or a synthetic upstream can
//! answer for paths the database lacks) without keeping a list. Sizes follow a log-normal
//! distribution (most NARs small, a long tail of large ones, as in a real cache); each path
//! refers to up to six of the 2,000 paths before it, so closures reach hundreds to thousands of
//! paths; `last_accessed_at` grows with `i` (path 0 is the least recently used). With chunks,
//! each NAR is cut into pieces of about `average_chunk` bytes, a share of which come from a pool
//! that many NARs share (dedup), and every chunk's reference count is exact.
//!
//! The stored bytes are rows only: no NAR or chunk object is written, so what is measured is the
//! database and the code above it.

use std::time::{Duration, Instant};

use ncps_nix::{
    ChunkHash, Compression, NarKey, SecretKey, Sha256Hash, StorePath, StorePathHash, fingerprint,
};

use crate::dialect::{Dialect, values_rows};
use crate::repo::to_i64;
use crate::{Database, DbError};

/// Rows per INSERT (every engine takes 500 rows of up to 16 columns in one statement).
const ROWS: usize = 500;
/// Paths per transaction.
const PATHS_PER_TRANSACTION: u64 = 10_000;
/// How far back a path's references reach.
const REFERENCE_WINDOW: u64 = 2_000;
/// Chunks in the shared pool, and the share of chunk positions taken from it.
const SHARED_CHUNKS: u64 = 100_000;
const SHARED_PERCENT: u64 = 30;

/// What to generate.
#[derive(Clone, Debug)]
pub struct FixtureSpec {
    /// How many narinfos (each with its own NAR).
    pub paths: u64,
    /// Store NARs as chunk lists (`true`) or as whole files.
    pub chunked: bool,
    /// Mean chunk size, for chunked NARs.
    pub average_chunk: u64,
    /// Varies every hash and size.
    pub seed: u64,
    /// `last_accessed_at` of path 0; path `i` was used at `first_access + i`. By default every
    /// path was last used in the past, as in a real cache, so each hit a benchmark makes is an
    /// access time to write (a time in the future would make the write a no-op).
    pub first_access: i64,
    /// The key whose signature is stored with each narinfo, as a server with that key stores
    /// it (`None`: no stored signature, as in a cache filled before signatures were stored).
    pub signed_by: Option<SecretKey>,
}

impl FixtureSpec {
    /// `paths` whole-file NARs.
    pub fn new(paths: u64) -> Self {
        Self {
            paths,
            chunked: false,
            average_chunk: 16 * 1024,
            seed: 1,
            // The last path a day before now.
            first_access: crate::now_secs() - 86_400 - to_i64(paths),
            signed_by: None,
        }
    }

    /// When path `i` was last used (its narinfo's and its NAR's `last_accessed_at`).
    pub fn last_use(&self, i: u64) -> i64 {
        self.first_access + to_i64(i)
    }
}

/// What was generated, and how long it took.
#[derive(Clone, Debug, Default)]
pub struct FixtureReport {
    /// Narinfos (and NARs) written.
    pub paths: u64,
    /// Chunk rows written.
    pub chunks: u64,
    /// Chunk-list entries written.
    pub chunk_references: u64,
    /// Stored bytes the rows describe.
    pub stored_bytes: u64,
    /// Time taken.
    pub elapsed: Duration,
}

/// splitmix64: a fast, well-mixed sequence from any seed.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A number in [0, 1) drawn for (`seed`, `i`, `what`).
fn unit(seed: u64, i: u64, what: u64) -> f64 {
    (mix(seed ^ mix(i ^ mix(what))) >> 11) as f64 / (1u64 << 53) as f64
}

/// Path `i`'s store path hash.
pub fn store_path_hash(seed: u64, i: u64) -> StorePathHash {
    let mut bytes = [0u8; 20];
    for (k, piece) in bytes.chunks_mut(8).enumerate() {
        let word = mix(seed ^ mix(i.wrapping_mul(3).wrapping_add(k as u64)));
        piece.copy_from_slice(&word.to_le_bytes()[..piece.len()]);
    }
    StorePathHash::from_bytes(bytes)
}

/// Path `i`'s store path base name.
pub fn store_path_name(seed: u64, i: u64) -> String {
    format!("{}-fixture-{i}", store_path_hash(seed, i))
}

/// Path `i`'s NAR hash.
pub fn nar_hash(seed: u64, i: u64) -> Sha256Hash {
    Sha256Hash::digest(format!("nar {seed} {i}").as_bytes())
}

/// Path `i`'s NAR size: log-normal around 20 kB (median), from 200 B to 2 GB.
pub fn nar_size(seed: u64, i: u64) -> u64 {
    // Box–Muller: a standard normal from two uniform draws.
    let (u1, u2) = (unit(seed, i, 1).max(1e-12), unit(seed, i, 2));
    let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    let size = (20_000f64.ln() + 2.0 * normal).exp();
    size.clamp(200.0, 2e9) as u64
}

/// What path `i`'s whole file weighs in storage (whole-file fixtures).
pub fn whole_file_size(seed: u64, i: u64) -> u64 {
    stored_size(nar_size(seed, i))
}

/// The paths path `i` refers to (up to six among the 2,000 before it).
pub fn references(seed: u64, i: u64) -> Vec<u64> {
    let count = (unit(seed, i, 3) * 7.0) as u64;
    let mut refs: Vec<u64> = (0..count)
        .filter_map(|k| {
            let back = 1 + (unit(seed, i, 10 + k) * REFERENCE_WINDOW as f64) as u64;
            i.checked_sub(back)
        })
        .collect();
    refs.sort_unstable();
    refs.dedup();
    refs
}

/// A chunk of a generated NAR: its hash, plain size, and whether it is from the shared pool.
type FixtureChunk = (ChunkHash, u64, bool);

/// Path `i`'s chunks: their hashes and plain sizes, about `average` bytes each.
fn chunks_of(seed: u64, i: u64, nar_size: u64, average: u64) -> Vec<FixtureChunk> {
    let count = nar_size.div_ceil(average).max(1);
    (0..count)
        .map(|k| {
            let shared = mix(seed ^ mix(i ^ mix(k + 1_000))) % 100 < SHARED_PERCENT;
            // A shared chunk's size must not depend on who uses it: the pool's are `average`;
            // a NAR's own last chunk holds what is left.
            let (name, plain) = if shared {
                (
                    format!("shared {seed} {}", mix(i ^ k) % SHARED_CHUNKS),
                    average,
                )
            } else if k + 1 == count {
                (
                    format!("chunk {seed} {i} {k}"),
                    nar_size - average * (count - 1),
                )
            } else {
                (format!("chunk {seed} {i} {k}"), average)
            };
            (ChunkHash::digest(name.as_bytes()), plain, shared)
        })
        .collect()
}

/// Compressed size of `plain` bytes (a third, as zstd does on typical store contents).
fn stored_size(plain: u64) -> u64 {
    (plain / 3).max(1)
}

impl Database {
    /// Writes the cache `spec` describes into this (empty) database.
    pub async fn fill_fixture(&self, spec: &FixtureSpec) -> Result<FixtureReport, DbError> {
        let started = Instant::now();
        let mut report = FixtureReport::default();
        let mut shared_refs: std::collections::HashMap<ChunkHash, (u64, u64)> =
            std::collections::HashMap::new();
        let mut start = 0;
        while start < spec.paths {
            let end = (start + PATHS_PER_TRANSACTION).min(spec.paths);
            self.fill_range(spec, start..end, &mut report, &mut shared_refs)
                .await?;
            start = end;
        }
        // The shared pool last, with the references counted over every path.
        let shared: Vec<(ChunkHash, u64, u64)> = shared_refs
            .into_iter()
            .map(|(hash, (plain, refs))| (hash, plain, refs))
            .collect();
        let mut tx = self.begin().await?;
        for rows in shared.chunks(ROWS) {
            self.insert_chunks(&mut tx, rows).await?;
            report.chunks += rows.len() as u64;
            report.stored_bytes += rows.iter().map(|r| stored_size(r.1)).sum::<u64>();
        }
        tx.commit().await?;
        // The triggers counted every row: fold their record, as a server would.
        self.fold_totals().await?;
        // A server's tables that grew while it ran have planner statistics (autovacuum
        // analyzes them as they grow); tables filled in seconds have none yet, and their
        // planner would scan a million rows for a list of keys. SQLite keeps none either way.
        let analyze = match self.dialect {
            Dialect::Postgres => Some("ANALYZE"),
            Dialect::Mysql => Some("ANALYZE TABLE narinfos, nars, nar_urls, nar_chunks, chunks"),
            Dialect::Sqlite => None,
        };
        if let Some(analyze) = analyze {
            sqlx::raw_sql(analyze).execute(&self.pool).await?;
        }
        report.paths = spec.paths;
        report.elapsed = started.elapsed();
        Ok(report)
    }

    async fn fill_range(
        &self,
        spec: &FixtureSpec,
        range: std::ops::Range<u64>,
        report: &mut FixtureReport,
        shared_refs: &mut std::collections::HashMap<ChunkHash, (u64, u64)>,
    ) -> Result<(), DbError> {
        let seed = spec.seed;
        let now = crate::now_secs();
        let mut tx = self.begin().await?;
        let paths: Vec<u64> = range.collect();
        for batch in paths.chunks(ROWS) {
            // narinfos and their URLs
            let mut sql = String::from(
                "INSERT INTO narinfos (hash, store_path, url_key, nar_hash, nar_size, refs, \
                 sigs, created_at, last_accessed_at, own_sig, own_sig_key) VALUES ",
            );
            sql.push_str(&values_rows(batch.len(), 11));
            let public = spec
                .signed_by
                .as_ref()
                .map(|k| k.public_key().to_nix_string());
            let sql = self.sql(&sql).into_owned();
            let mut q = sqlx::query(&sql);
            for &i in batch {
                let nar = nar_hash(seed, i);
                let refs: Vec<String> = references(seed, i)
                    .into_iter()
                    .map(|r| store_path_name(seed, r))
                    .collect();
                let own_sig = spec.signed_by.as_ref().map(|key| {
                    let path = |name: &str| StorePath::parse_base_name(name).expect("a store path");
                    let refs: Vec<StorePath> = refs.iter().map(|r| path(r)).collect();
                    let own = path(&store_path_name(seed, i));
                    key.sign(&fingerprint(&own, &nar, nar_size(seed, i), &refs))
                });
                q = q
                    .bind(store_path_hash(seed, i).to_string())
                    .bind(format!("/nix/store/{}", store_path_name(seed, i)))
                    .bind(NarKey::new(nar, Compression::Zstd).file_name())
                    .bind(nar.to_string())
                    .bind(to_i64(nar_size(seed, i)))
                    .bind(refs.join(" "))
                    .bind(format!("fixture-upstream-1:{}", "A".repeat(86) + "=="))
                    .bind(now)
                    .bind(spec.last_use(i))
                    .bind(own_sig)
                    .bind(public.clone());
            }
            q.execute(&mut *tx).await?;
            let mut sql = String::from("INSERT INTO nar_urls (url_key, nar_hash) VALUES ");
            sql.push_str(&values_rows(batch.len(), 2));
            let sql = self.sql(&sql).into_owned();
            let mut q = sqlx::query(&sql);
            for &i in batch {
                let nar = nar_hash(seed, i);
                q = q
                    .bind(NarKey::new(nar, Compression::Zstd).file_name())
                    .bind(nar.to_string());
            }
            q.execute(&mut *tx).await?;
            // NARs, whole or chunked
            let mut sql = String::from(
                "INSERT INTO nars (nar_hash, nar_size, whole_key, whole_size, chunk_count, \
                 spliced_hash, spliced_size, created_at, last_accessed_at) VALUES ",
            );
            sql.push_str(&values_rows(batch.len(), 9));
            let sql = self.sql(&sql).into_owned();
            let mut q = sqlx::query(&sql);
            let mut lists = Vec::new();
            for &i in batch {
                let nar = nar_hash(seed, i);
                let size = nar_size(seed, i);
                let last = spec.last_use(i);
                if spec.chunked {
                    let chunks = chunks_of(seed, i, size, spec.average_chunk);
                    let spliced: u64 = chunks.iter().map(|c| stored_size(c.1)).sum();
                    q = q
                        .bind(nar.to_string())
                        .bind(to_i64(size))
                        .bind(None::<String>)
                        .bind(None::<i64>)
                        .bind(to_i64(chunks.len() as u64))
                        .bind(Sha256Hash::digest(format!("spliced {i}").as_bytes()).to_string())
                        .bind(to_i64(spliced))
                        .bind(now)
                        .bind(last);
                    lists.push((nar, chunks));
                } else {
                    let whole = whole_file_size(seed, i);
                    let file = Sha256Hash::digest(format!("file {seed} {i}").as_bytes());
                    q = q
                        .bind(nar.to_string())
                        .bind(to_i64(size))
                        .bind(Some(NarKey::new(file, Compression::Zstd).file_name()))
                        .bind(Some(to_i64(whole)))
                        .bind(None::<i64>)
                        .bind(None::<String>)
                        .bind(None::<i64>)
                        .bind(now)
                        .bind(last);
                    report.stored_bytes += whole;
                }
            }
            q.execute(&mut *tx).await?;
            self.fill_chunk_lists(&mut tx, &lists, report, shared_refs)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn fill_chunk_lists(
        &self,
        tx: &mut crate::repo::WriteTx,
        lists: &[(Sha256Hash, Vec<FixtureChunk>)],
        report: &mut FixtureReport,
        shared_refs: &mut std::collections::HashMap<ChunkHash, (u64, u64)>,
    ) -> Result<(), DbError> {
        let mut entries = Vec::new();
        let mut own = Vec::new();
        for (nar, chunks) in lists {
            for (seq, (hash, plain, shared)) in chunks.iter().enumerate() {
                entries.push((nar.to_string(), seq as i64, hash.to_string()));
                if *shared {
                    shared_refs.entry(*hash).or_insert((*plain, 0)).1 += 1;
                } else {
                    own.push((*hash, *plain, 1u64));
                }
            }
        }
        report.chunk_references += entries.len() as u64;
        for rows in entries.chunks(ROWS) {
            let mut sql =
                String::from("INSERT INTO nar_chunks (nar_hash, seq, chunk_hash) VALUES ");
            sql.push_str(&values_rows(rows.len(), 3));
            let sql = self.sql(&sql).into_owned();
            let mut q = sqlx::query(&sql);
            for (nar, seq, chunk) in rows {
                q = q.bind(nar.as_str()).bind(*seq).bind(chunk.as_str());
            }
            q.execute(&mut **tx).await?;
        }
        for rows in own.chunks(ROWS) {
            self.insert_chunks(tx, rows).await?;
            report.chunks += rows.len() as u64;
            report.stored_bytes += rows.iter().map(|r| stored_size(r.1)).sum::<u64>();
        }
        Ok(())
    }

    /// Chunk rows: (hash, plain size, references).
    async fn insert_chunks(
        &self,
        tx: &mut crate::repo::WriteTx,
        rows: &[(ChunkHash, u64, u64)],
    ) -> Result<(), DbError> {
        let mut sql =
            String::from("INSERT INTO chunks (hash, plain_size, stored_size, ref_count) VALUES ");
        sql.push_str(&values_rows(rows.len(), 4));
        let sql = self.sql(&sql).into_owned();
        let mut q = sqlx::query(&sql);
        for (hash, plain, refs) in rows {
            q = q
                .bind(hash.to_string())
                .bind(to_i64(*plain))
                .bind(to_i64(stored_size(*plain)))
                .bind(to_i64(*refs));
        }
        q.execute(&mut **tx).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_stable_distinct_and_sized_like_a_cache() {
        assert_eq!(store_path_hash(1, 7), store_path_hash(1, 7));
        assert_ne!(store_path_hash(1, 7), store_path_hash(1, 8));
        assert_ne!(store_path_hash(1, 7), store_path_hash(2, 7));
        let mut sizes: Vec<u64> = (0..10_000).map(|i| nar_size(1, i)).collect();
        sizes.sort_unstable();
        let median = sizes[5_000];
        assert!((10_000..40_000).contains(&median), "median {median}");
        assert!(sizes[9_990] > 1_000_000, "a long tail: {}", sizes[9_990]);
        assert!(references(1, 0).is_empty());
        assert!(
            references(1, 5_000)
                .iter()
                .all(|&r| (3_000..5_000).contains(&r))
        );
    }

    #[test]
    fn every_path_of_a_large_fixture_was_last_used_in_the_past() {
        // A benchmark's hits must each have an access time to write, as in a real cache.
        let spec = FixtureSpec::new(1_000_000);
        let last = spec.last_use(999_999);
        assert!(
            last < crate::now_secs(),
            "the last path used {}s from now",
            last - crate::now_secs()
        );
    }

    db_test! {
        async fn a_filled_cache_is_consistent(db) {
            let mut stored = 0;
            for chunked in [false, true] {
                let seed = u64::from(chunked) + 7;
                // One of the two stores our signatures, as a server signing with `key` does.
                let key = ncps_nix::SecretKey::generate("fixture-cache-1").unwrap();
                let signed_by = chunked.then(|| key.clone());
                let spec = FixtureSpec { chunked, seed, signed_by, ..FixtureSpec::new(1_200) };
                let before = db.store_counts().await.unwrap();
                let report = db.fill_fixture(&spec).await.unwrap();
                stored += report.stored_bytes;
                let after = db.store_counts().await.unwrap();
                assert_eq!(after.narinfos - before.narinfos, 1_200);
                assert_eq!(after.nars - before.nars, 1_200);
                if chunked {
                    assert_eq!(after.chunk_references, report.chunk_references);
                    assert_eq!(after.chunks, report.chunks);
                    assert!(after.dedup_ratio().unwrap() > 1.0, "{after:?}");
                }
                // Each path reads back as the functions describe it.
                let i = 1_100;
                let info = db.narinfo(&store_path_hash(seed, i)).await.unwrap().unwrap();
                assert_eq!(info.narinfo.nar_size, nar_size(seed, i));
                assert_eq!(info.narinfo.nar_hash, nar_hash(seed, i));
                assert_eq!(info.narinfo.references.len(), references(seed, i).len());
                let record = db.nar(&nar_hash(seed, i)).await.unwrap().unwrap();
                assert_eq!(record.chunked.is_some(), chunked);
                let (_, _, own) =
                    db.narinfo_and_nar(&store_path_hash(seed, i)).await.unwrap().unwrap();
                match own {
                    Some(own) => {
                        let public = key.public_key();
                        assert_eq!(own.key, public.to_nix_string());
                        assert!(public.verify(&info.narinfo.fingerprint(), &own.sig), "{own:?}");
                    }
                    None => assert!(!chunked, "no stored signature"),
                }
            }
            assert_eq!(db.stored_bytes().await.unwrap(), stored);
        }
    }
}
