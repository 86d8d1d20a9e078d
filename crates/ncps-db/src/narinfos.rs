use std::str::FromStr;

use ncps_nix::{Compression, NarInfo, NarKey, Sha256Hash, StorePath, StorePathHash};

use crate::columns::Columns;
use crate::direct::Value;
use crate::repo::{corrupt, now_secs, to_i64, to_u64};
use crate::{CachedNarInfo, Database, DbError, NarOrigin, NarRecord, OwnSignature};

const T: &str = "narinfos";

/// A narinfo, the record of its NAR when stored, and our stored signature of it.
pub type NarinfoAndNar = (CachedNarInfo, Option<NarRecord>, Option<OwnSignature>);

/// The narinfo of a store path hash joined with its NAR's record (see
/// [`Database::narinfo_and_nar`]); read through the pool and directly, hence one text.
const NARINFO_AND_NAR: &str = "SELECT i.*, n.nar_hash AS stored_nar_hash, n.whole_key, \
     n.whole_size, n.whole_delete_after, n.chunk_count, n.spliced_hash, n.spliced_size \
     FROM narinfos i LEFT JOIN nars n ON n.nar_hash = i.nar_hash WHERE i.hash = ?";

impl Database {
    /// Looks up the narinfo of a store path hash.
    pub async fn narinfo(&self, hash: &StorePathHash) -> Result<Option<CachedNarInfo>, DbError> {
        let row = sqlx::query(&self.sql("SELECT * FROM narinfos WHERE hash = ?"))
            .bind(hash.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| narinfo_from_row(&r)).transpose()
    }

    /// A narinfo with the record of its NAR when that is stored and our stored signature of
    /// it: what rendering a narinfo needs, in one query (a narinfo hit that misses the memo
    /// costs one round trip; on SQLite, one lookup on the caller's thread — see `direct.rs`).
    pub async fn narinfo_and_nar(
        &self,
        hash: &StorePathHash,
    ) -> Result<Option<NarinfoAndNar>, DbError> {
        self.optional_row(NARINFO_AND_NAR, hash.to_string(), |row| {
            narinfo_and_nar_from_row(row)
        })
        .await
    }

    /// A narinfo of this NAR that says where to download it from, if any does (every NAR
    /// download asks).
    pub async fn narinfo_with_origin(
        &self,
        nar_hash: &Sha256Hash,
    ) -> Result<Option<CachedNarInfo>, DbError> {
        self.optional_row(
            "SELECT * FROM narinfos WHERE nar_hash = ? AND upstream_url IS NOT NULL LIMIT 1",
            nar_hash.to_string(),
            |row| narinfo_from_row(row),
        )
        .await
    }

    /// Records a narinfo and the NAR URL it hands out, in one transaction. When one for the same
    /// store path already exists (a concurrent fetch won the race) the existing row is kept, so
    /// a narinfo once served never changes its URL. `own` is our signature of it, stored so a
    /// hit need not sign. `true` when this call inserted it.
    pub async fn insert_narinfo(
        &self,
        info: &CachedNarInfo,
        own: Option<&OwnSignature>,
    ) -> Result<bool, DbError> {
        let n = &info.narinfo;
        let refs: Vec<String> = n.references.iter().map(StorePath::base_name).collect();
        let origin = info.origin.as_ref();
        let now = now_secs();
        let narinfo = vec![
            Value::text(n.store_path.hash()),
            Value::text(n.store_path.to_absolute()),
            Value::text(info.url_key.file_name()),
            Value::text(n.nar_hash),
            Value::int(to_i64(n.nar_size)),
            Value::text(refs.join(" ")),
            Value::Text(n.deriver.clone()),
            Value::text(n.sigs.join("\n")),
            Value::Text(n.ca.clone()),
            Value::Text(origin.map(|o| o.upstream_url.clone())),
            Value::Text(origin.map(|o| o.nar_url.clone())),
            Value::Text(origin.map(|o| o.compression.as_str().to_string())),
            Value::Text(origin.and_then(|o| o.file_hash).map(|h| h.to_string())),
            Value::Int(origin.and_then(|o| o.file_size).map(to_i64)),
            Value::int(now),
            Value::int(now),
            Value::Text(own.map(|o| o.sig.clone())),
            Value::Text(own.map(|o| o.key.clone())),
        ];
        let url = vec![
            Value::text(info.url_key.file_name()),
            Value::text(n.nar_hash),
        ];
        let insert_narinfo = self.dialect.insert_or_ignore(
            "INTO narinfos (hash, store_path, url_key, nar_hash, nar_size, refs, deriver, \
             sigs, ca, upstream_url, upstream_nar_url, upstream_compression, upstream_file_hash, \
             upstream_file_size, created_at, last_accessed_at, own_sig, own_sig_key) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            "hash",
        );
        let insert_url = self
            .dialect
            .insert_or_ignore("INTO nar_urls (url_key, nar_hash) VALUES (?, ?)", "url_key");
        let changed = self
            .write_statements(vec![(insert_narinfo, narinfo), (insert_url, url)])
            .await?;
        Ok(changed[0] > 0)
    }

    /// Forgets a narinfo; `false` when there was none.
    pub async fn delete_narinfo(&self, hash: &StorePathHash) -> Result<bool, DbError> {
        let done = sqlx::query(&self.sql("DELETE FROM narinfos WHERE hash = ?"))
            .bind(hash.to_string())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The NAR a URL we handed out names.
    pub async fn nar_hash_for_url(&self, key: &NarKey) -> Result<Option<Sha256Hash>, DbError> {
        let hash: Option<String> =
            sqlx::query_scalar(&self.sql("SELECT nar_hash FROM nar_urls WHERE url_key = ?"))
                .bind(key.file_name())
                .fetch_optional(&self.pool)
                .await?;
        hash.map(|h| Sha256Hash::from_str(&h).map_err(|e| corrupt("nar_urls", e)))
            .transpose()
    }
}

/// Decodes a row of [`NARINFO_AND_NAR`].
fn narinfo_and_nar_from_row(row: &(impl Columns + ?Sized)) -> Result<NarinfoAndNar, DbError> {
    let cached = narinfo_from_row(row)?;
    // The NAR's columns share the narinfo's `nar_hash` and `nar_size` (the join's key, and
    // a size verified equal when the NAR was stored).
    let nar = match row.opt_text("stored_nar_hash")? {
        Some(_) => Some(crate::nars::nar_from_row(row)?),
        None => None,
    };
    let own = match (row.opt_text("own_sig")?, row.opt_text("own_sig_key")?) {
        (Some(sig), Some(key)) => Some(OwnSignature { sig, key }),
        _ => None,
    };
    Ok((cached, nar, own))
}

fn narinfo_from_row(row: &(impl Columns + ?Sized)) -> Result<CachedNarInfo, DbError> {
    let bad = |e: &dyn std::fmt::Display| corrupt(T, e);
    let hash = |col: &str| -> Result<Option<Sha256Hash>, DbError> {
        row.opt_text(col)?
            .map(|h| Sha256Hash::from_str(&h))
            .transpose()
            .map_err(|e| bad(&e))
    };
    let url_key = NarKey::parse_file_name(&row.text("url_key")?).map_err(|e| bad(&e))?;
    let store_path = StorePath::parse(&row.text("store_path")?).map_err(|e| bad(&e))?;
    let nar_hash = hash("nar_hash")?.ok_or_else(|| bad(&"missing nar_hash"))?;
    let nar_size = to_u64(T, row.i64("nar_size")?)?;
    let references = row
        .text("refs")?
        .split_whitespace()
        .map(StorePath::parse_base_name)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    let sigs = row
        .text("sigs")?
        .lines()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let upstream_url = row.opt_text("upstream_url")?;
    let upstream_nar_url = row.opt_text("upstream_nar_url")?;
    let upstream_compression = row.opt_text("upstream_compression")?;
    let origin = match (upstream_url, upstream_nar_url, upstream_compression) {
        (Some(upstream_url), Some(nar_url), Some(compression)) => Some(NarOrigin {
            upstream_url,
            nar_url,
            compression: Compression::parse(&compression).map_err(|e| bad(&e))?,
            file_hash: hash("upstream_file_hash")?,
            file_size: row
                .opt_i64("upstream_file_size")?
                .map(|n| to_u64(T, n))
                .transpose()?,
        }),
        _ => None,
    };
    Ok(CachedNarInfo {
        narinfo: NarInfo {
            store_path,
            url: url_key.url(),
            compression: url_key.compression,
            file_hash: None,
            file_size: None,
            nar_hash,
            nar_size,
            references,
            deriver: row.opt_text("deriver")?,
            sigs,
            ca: row.opt_text("ca")?,
        },
        url_key,
        origin,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::repo::test_support::{Engine, TestDb};

    pub fn sample() -> CachedNarInfo {
        let nar_hash = Sha256Hash::digest(b"nar");
        let url_key = NarKey::new(nar_hash, Compression::Zstd);
        let path = |s: &str| StorePath::parse_base_name(s).unwrap();
        CachedNarInfo {
            narinfo: NarInfo {
                store_path: path("7rjj86a15146cq1d0ybgnwyqdwgv9lfh-hello-2.12"),
                url: url_key.url(),
                compression: Compression::Zstd,
                file_hash: None,
                file_size: None,
                nar_hash,
                nar_size: 1234,
                references: vec![path("0xyg5hmq2ycg6pbl6n4hppvwfjq9bsy5-glibc-2.37")],
                deriver: Some("11111111111111111111111111111111-hello.drv".into()),
                sigs: vec!["up-1:abc".into(), "up-2:def".into()],
                ca: None,
            },
            url_key,
            origin: Some(NarOrigin {
                upstream_url: "http://127.0.0.1:1/".into(),
                nar_url: "nar/x.nar.xz".into(),
                compression: Compression::Xz,
                file_hash: Some(Sha256Hash::digest(b"file")),
                file_size: Some(99),
            }),
        }
    }

    /// Another path with every optional field empty: no references, deriver, signatures or
    /// origin.
    fn bare() -> CachedNarInfo {
        let mut bare = sample();
        bare.narinfo.store_path =
            StorePath::parse_base_name("0xyg5hmq2ycg6pbl6n4hppvwfjq9bsy5-bare").unwrap();
        bare.narinfo.references.clear();
        bare.narinfo.deriver = None;
        bare.narinfo.sigs.clear();
        bare.origin = None;
        bare
    }

    db_test! {
        async fn narinfo_round_trip_and_url_resolution(db) {
            let info = sample();
            let hash = *info.narinfo.store_path.hash();
            assert!(db.narinfo(&hash).await.unwrap().is_none());
            assert!(db.insert_narinfo(&info, None).await.unwrap());
            assert!(!db.insert_narinfo(&info, None).await.unwrap()); // idempotent
            assert_eq!(db.narinfo(&hash).await.unwrap().unwrap(), info);
            let nar_hash = info.narinfo.nar_hash;
            assert_eq!(
                db.narinfo_with_origin(&nar_hash).await.unwrap().unwrap(),
                info
            );
            assert_eq!(
                db.nar_hash_for_url(&info.url_key).await.unwrap(),
                Some(nar_hash)
            );
            let other = NarKey::new(Sha256Hash::digest(b"other"), Compression::Xz);
            assert_eq!(db.nar_hash_for_url(&other).await.unwrap(), None);

            // The one-query forms: a narinfo with its NAR's record once stored; a NAR request's
            // URL with the NAR it names and that record.
            assert_eq!(
                db.narinfo_and_nar(&hash).await.unwrap(),
                Some((info.clone(), None, None))
            );
            assert_eq!(db.nar_by_url(&other).await.unwrap(), None);
            assert_eq!(
                db.nar_by_url(&info.url_key).await.unwrap(),
                Some((nar_hash, None))
            );
            let whole = crate::WholeFile {
                key: info.url_key,
                size: 1234,
            };
            db.record_whole_file(&nar_hash, info.narinfo.nar_size, whole, None)
                .await
                .unwrap();
            let record = db.nar(&nar_hash).await.unwrap().unwrap();
            assert_eq!(record.whole, Some(whole));
            assert_eq!(
                db.nar_by_url(&info.url_key).await.unwrap(),
                Some((nar_hash, Some(record.clone())))
            );
            assert_eq!(
                db.narinfo_and_nar(&hash).await.unwrap(),
                Some((info.clone(), Some(record), None))
            );
            let unknown = StorePathHash::from_bytes([9; 20]);
            assert_eq!(db.narinfo_and_nar(&unknown).await.unwrap(), None);
        }
    }

    db_test! {
        /// Our signature is stored with the narinfo, with the key that made it, and read back
        /// with it; the narinfo's own signatures stay the upstream's.
        async fn our_signature_is_stored_with_its_key(db) {
            let info = sample();
            let hash = *info.narinfo.store_path.hash();
            let own = OwnSignature {
                sig: "ours-1:c2lnbmF0dXJl".to_owned(),
                key: "ours-1:cHVibGlj".to_owned(),
            };
            assert!(db.insert_narinfo(&info, Some(&own)).await.unwrap());
            let (cached, _, stored) = db.narinfo_and_nar(&hash).await.unwrap().unwrap();
            assert_eq!(cached, info, "the upstream's signatures only");
            assert_eq!(stored, Some(own));
        }
    }

    db_test! {
        /// Long text columns (thousands of references) and empty optional fields.
        async fn large_and_minimal_narinfos(db) {
            let mut info = sample();
            info.narinfo.references = (0..2000u32)
                .map(|i| {
                    let digest = Sha256Hash::digest(&i.to_le_bytes());
                    let mut bytes = [0u8; 20];
                    bytes.copy_from_slice(&digest.as_bytes()[..20]);
                    let hash = StorePathHash::from_bytes(bytes);
                    StorePath::parse_base_name(&format!("{hash}-dependency-number-{i}")).unwrap()
                })
                .collect();
            db.insert_narinfo(&info, None).await.unwrap();
            let hash = *info.narinfo.store_path.hash();
            assert_eq!(db.narinfo(&hash).await.unwrap().unwrap(), info);

            let bare = bare();
            db.insert_narinfo(&bare, None).await.unwrap();
            let hash = *bare.narinfo.store_path.hash();
            assert_eq!(db.narinfo(&hash).await.unwrap().unwrap(), bare);
        }
    }

    db_test! {
        async fn a_deleted_narinfo_is_gone_and_says_so_once(db) {
            let info = sample();
            let hash = *info.narinfo.store_path.hash();
            db.insert_narinfo(&info, None).await.unwrap();
            let mut other = sample();
            other.narinfo.store_path =
                StorePath::parse_base_name("0xyg5hmq2ycg6pbl6n4hppvwfjq9bsy5-other").unwrap();
            db.insert_narinfo(&other, None).await.unwrap();
            assert!(db.delete_narinfo(&hash).await.unwrap());
            assert!(db.narinfo(&hash).await.unwrap().is_none());
            assert!(!db.delete_narinfo(&hash).await.unwrap());
            let kept = other.narinfo.store_path.hash();
            assert!(db.narinfo(kept).await.unwrap().is_some());
        }
    }

    /// Every narinfo of a database and its NAR, read directly and through the pool by every
    /// read a request makes (the narinfo hit; the NAR by URL, by hash, and its origin): the two
    /// agree, and the direct reads were answered directly.
    async fn direct_and_pool_reads_agree(db: &Database, hashes: &[StorePathHash]) {
        let direct = db.direct.as_ref().expect("SQLite reads directly");
        let pool = db.pool_only();
        let before = direct.answered();
        let mut reads = 0;
        for hash in hashes {
            let read = db.narinfo_and_nar(hash).await.unwrap();
            assert_eq!(read, pool.narinfo_and_nar(hash).await.unwrap(), "{hash}");
            reads += 1;
            let Some((cached, _, _)) = read else { continue };
            let nar_hash = cached.narinfo.nar_hash;
            let by_url = db.nar_by_url(&cached.url_key).await.unwrap();
            assert_eq!(by_url, pool.nar_by_url(&cached.url_key).await.unwrap());
            assert_eq!(by_url.map(|(named, _)| named), Some(nar_hash), "{hash}");
            let nar = db.nar(&nar_hash).await.unwrap();
            assert_eq!(nar, pool.nar(&nar_hash).await.unwrap(), "{hash}");
            let origin = db.narinfo_with_origin(&nar_hash).await.unwrap();
            assert_eq!(origin, pool.narinfo_with_origin(&nar_hash).await.unwrap());
            reads += 3;
        }
        assert_eq!(direct.answered() - before, reads);
    }

    /// SQLite answers narinfo hits and NAR lookups on the caller's thread, with the same answer
    /// as the pool for every shape of row: whole file, chunked, our signature or none, an upstream origin or
    /// none, optional fields empty, unknown paths; a row that does not decode is an error, given
    /// directly (not passed on to the pool, which would read it again).
    #[tokio::test]
    async fn sqlite_hits_are_read_directly_with_the_pools_answer() {
        use crate::fixtures::{FixtureSpec, store_path_hash};
        let db = TestDb::new(Engine::Sqlite).await;
        let key = ncps_nix::SecretKey::generate("direct-1").unwrap();
        let mut hashes = Vec::new();
        for (chunked, seed) in [(false, 3), (true, 4)] {
            let signed_by = chunked.then(|| key.clone());
            let spec = FixtureSpec {
                chunked,
                seed,
                signed_by,
                ..FixtureSpec::new(200)
            };
            db.fill_fixture(&spec).await.unwrap();
            hashes.extend((0..200).map(|i| store_path_hash(seed, i)));
        }
        let full = sample();
        let mut bare = bare();
        bare.narinfo.ca =
            Some("fixed:r:sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s".into());
        for info in [&full, &bare] {
            db.insert_narinfo(info, None).await.unwrap();
            hashes.push(*info.narinfo.store_path.hash());
        }
        hashes.push(StorePathHash::from_bytes([9; 20]));
        direct_and_pool_reads_agree(&db, &hashes).await;
        let (cached, nar, own) = db.narinfo_and_nar(&hashes[250]).await.unwrap().unwrap();
        assert!(
            nar.unwrap().chunked.is_some() && own.is_some(),
            "{cached:?}"
        );

        let broken = *full.narinfo.store_path.hash();
        sqlx::query("UPDATE narinfos SET store_path = 'not a store path' WHERE hash = ?")
            .bind(broken.to_string())
            .execute(&db.pool)
            .await
            .unwrap();
        let passed_on = db.direct.as_ref().unwrap().passed_on();
        let err = db.narinfo_and_nar(&broken).await.unwrap_err();
        assert!(
            matches!(
                err,
                DbError::CorruptRow {
                    table: "narinfos",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            db.direct.as_ref().unwrap().passed_on(),
            passed_on,
            "a corrupt row is the answer, not a reason to ask the pool"
        );
        db.cleanup().await;
    }

    /// On SQLite a cold path's rows (its narinfo with its URL, then its NAR's whole file) are
    /// written by the direct writer, one transaction each, and read back the same through the
    /// pool; another process holding SQLite's write lock is waited for, not an error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_writes_a_cold_path_directly_and_waits_for_other_writers() {
        use std::time::{Duration, Instant};

        use crate::WholeFile;

        let db = TestDb::new(Engine::Sqlite).await;
        let writer = db.writer.clone().expect("SQLite writes directly");
        let file: String =
            sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
                .fetch_one(&db.pool)
                .await
                .unwrap();
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(&file).unwrap();
            conn.execute_batch("BEGIN IMMEDIATE").unwrap();
            held_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(500));
            conn.execute_batch("COMMIT").unwrap();
        });
        held_rx.recv().unwrap();
        let info = sample();
        let started = Instant::now();
        assert!(db.insert_narinfo(&info, None).await.unwrap());
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "wrote while another process held the lock"
        );
        holder.join().unwrap();
        let n = &info.narinfo;
        let whole = WholeFile {
            key: NarKey::new(Sha256Hash::digest(b"file"), Compression::Xz),
            size: 99,
        };
        db.record_whole_file(&n.nar_hash, n.nar_size, whole, None)
            .await
            .unwrap();
        assert_eq!(writer.committed(), 2);

        let pool = db.pool_only();
        let (read, nar, own) = pool
            .narinfo_and_nar(n.store_path.hash())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((read, own), (info.clone(), None));
        assert_eq!(nar.unwrap().whole, Some(whole));
        let by_url = pool.nar_by_url(&info.url_key).await.unwrap();
        assert_eq!(by_url.map(|(named, _)| named), Some(n.nar_hash));
        // Again: the row stays as it is, and says so.
        assert!(!db.insert_narinfo(&bare_as(&info), None).await.unwrap());
        let (kept, _, _) = pool
            .narinfo_and_nar(n.store_path.hash())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(kept, info);
        db.cleanup().await;
    }

    /// `info`'s path with every optional field empty (a second fetch that lost the race).
    fn bare_as(info: &CachedNarInfo) -> CachedNarInfo {
        let mut other = bare();
        other.narinfo.store_path = info.narinfo.store_path.clone();
        other
    }

    /// When the direct reader cannot answer (here it cannot even open the file), the pool
    /// answers instead.
    #[tokio::test]
    async fn the_pool_answers_what_sqlite_cannot_answer_directly() {
        let db = TestDb::new(Engine::Sqlite).await;
        let info = sample();
        let hash = *info.narinfo.store_path.hash();
        db.insert_narinfo(&info, None).await.unwrap();
        let missing = tempfile::tempdir().unwrap().path().join("gone.sqlite");
        let unreadable = db.reading_directly_from(missing);
        let read = unreadable.narinfo_and_nar(&hash).await.unwrap();
        assert_eq!(read, Some((info, None, None)));
        assert_eq!(unreadable.direct.as_ref().unwrap().answered(), 0);
        db.cleanup().await;
    }
}
