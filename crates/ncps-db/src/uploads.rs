//! NARs uploaded by `PUT /nar/…` and waiting for their narinfo, in the database so that the
//! narinfo may reach any replica. The NAR is stored before its narinfo comes; its row here keeps
//! it [in use](crate::nars::NAR_UNUSED) meanwhile, and names the URL it was verified against.

use std::str::FromStr;

use ncps_nix::{NarKey, Sha256Hash};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::dialect::text;
use crate::repo::{corrupt, now_secs, to_i64, to_u64};
use crate::{Database, DbError, NarRecord};

const T: &str = "uploaded_nars";

/// An uploaded NAR waiting for its narinfo: what its bytes were measured to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UploadedNar {
    /// The URL it was uploaded under; its hash is the file's verified SHA-256 (FileHash).
    pub key: NarKey,
    /// SHA-256 of the plain NAR.
    pub nar_hash: Sha256Hash,
    /// Size of the plain NAR.
    pub nar_size: u64,
    /// Size of the uploaded file (FileSize).
    pub file_size: u64,
}

impl Database {
    /// Records an upload, or renews its time when the same file is uploaded again. Called
    /// before the NAR is stored, so no clean-up ever sees the new NAR unused.
    pub async fn record_upload(&self, upload: &UploadedNar) -> Result<(), DbError> {
        let sql = self.dialect.upsert(
            "INTO uploaded_nars (url_key, nar_hash, nar_size, file_size, uploaded_at) \
             VALUES (?, ?, ?, ?, ?)",
            "url_key",
            &["uploaded_at"],
        );
        sqlx::query(&self.sql(&sql))
            .bind(upload.key.file_name())
            .bind(upload.nar_hash.to_string())
            .bind(to_i64(upload.nar_size))
            .bind(to_i64(upload.file_size))
            .bind(now_secs())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The upload waiting under this URL, if any.
    pub async fn uploaded_nar(&self, key: &NarKey) -> Result<Option<UploadedNar>, DbError> {
        let row = sqlx::query(&self.sql("SELECT * FROM uploaded_nars WHERE url_key = ?"))
            .bind(key.file_name())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| upload_from_row(&r)).transpose()
    }

    /// Uploads that have waited since before `before` (seconds since the epoch), oldest first.
    pub async fn uploads_older_than(
        &self,
        before: i64,
        limit: u32,
    ) -> Result<Vec<NarKey>, DbError> {
        let keys: Vec<String> = sqlx::query_scalar(&self.sql(
            "SELECT url_key FROM uploaded_nars WHERE uploaded_at < ? \
             ORDER BY uploaded_at LIMIT ?",
        ))
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        keys.iter()
            .map(|k| NarKey::parse_file_name(k).map_err(|e| corrupt(T, e)))
            .collect()
    }

    /// Ends the wait of these uploads (their narinfo was published, refused, or never came)
    /// and, in the same transaction, removes each of their NARs nothing uses any more. Returns
    /// the NARs removed, so the caller deletes their whole files.
    pub async fn drop_uploads(&self, keys: &[NarKey]) -> Result<Vec<NarRecord>, DbError> {
        let keys: Vec<String> = keys.iter().map(NarKey::file_name).collect();
        Ok(self
            .delete_rows_and_unused_nars("uploaded_nars", "url_key", &keys)
            .await?
            .nars)
    }
}

fn upload_from_row(row: &AnyRow) -> Result<UploadedNar, DbError> {
    Ok(UploadedNar {
        key: NarKey::parse_file_name(&text(row, "url_key")?).map_err(|e| corrupt(T, e))?,
        nar_hash: Sha256Hash::from_str(&text(row, "nar_hash")?).map_err(|e| corrupt(T, e))?,
        nar_size: to_u64(T, row.try_get("nar_size")?)?,
        file_size: to_u64(T, row.try_get("file_size")?)?,
    })
}

#[cfg(test)]
mod tests {
    use ncps_nix::Compression;

    use super::*;
    use crate::narinfos::tests::sample;
    use crate::{ChunkRef, WholeFile};

    fn upload(nar: &[u8]) -> UploadedNar {
        UploadedNar {
            key: NarKey::new(Sha256Hash::digest(&[nar, b".xz"].concat()), Compression::Xz),
            nar_hash: Sha256Hash::digest(nar),
            nar_size: nar.len() as u64,
            file_size: 3,
        }
    }

    /// Stores `u`'s NAR whole and in one chunk, as an upload does.
    async fn store(db: &Database, u: &UploadedNar) {
        let whole = WholeFile {
            key: u.key,
            size: u.file_size,
        };
        db.record_whole_file(&u.nar_hash, u.nar_size, whole, None)
            .await
            .unwrap();
        let chunk = ChunkRef {
            hash: ncps_nix::ChunkHash::digest(u.nar_hash.as_bytes()),
            plain_size: u.nar_size,
            stored_size: 2,
        };
        db.commit_held(&u.nar_hash, u.nar_size, &[chunk], u.nar_hash)
            .await
            .unwrap();
    }

    db_test! {
        async fn an_upload_is_found_by_its_url_and_ages(db) {
            let u = upload(b"nar one");
            assert_eq!(db.uploaded_nar(&u.key).await.unwrap(), None);
            db.record_upload(&u).await.unwrap();
            db.record_upload(&u).await.unwrap(); // again: renewed, not duplicated
            assert_eq!(db.uploaded_nar(&u.key).await.unwrap(), Some(u));
            assert_eq!(db.uploads_older_than(now_secs() - 60, 10).await.unwrap(), vec![]);
            assert_eq!(db.uploads_older_than(now_secs() + 1, 10).await.unwrap(), vec![u.key]);
        }
    }

    db_test! {
        async fn a_waiting_upload_keeps_its_nar_from_every_clean_up(db) {
            let u = upload(b"nar two");
            db.record_upload(&u).await.unwrap();
            store(db, &u).await;
            // Neither eviction of another path nor fsck's list counts it as unused.
            let mut other = sample();
            other.narinfo.nar_hash = u.nar_hash;
            db.insert_narinfo(&other, None).await.unwrap();
            let evicted = db.evict(&[*other.narinfo.store_path.hash()]).await.unwrap();
            assert_eq!(evicted, crate::Removed::default());
            assert!(db.nar(&u.nar_hash).await.unwrap().is_some());
            assert!(db.unreferenced_nars().await.unwrap().is_empty());
        }
    }

    db_test! {
        async fn dropping_an_upload_removes_its_nar_unless_a_narinfo_uses_it(db) {
            let published = upload(b"published");
            let refused = upload(b"refused");
            for u in [&published, &refused] {
                db.record_upload(u).await.unwrap();
                store(db, u).await;
            }
            let mut info = sample();
            info.narinfo.nar_hash = published.nar_hash;
            db.insert_narinfo(&info, None).await.unwrap();

            let removed = db.drop_uploads(&[published.key, refused.key]).await.unwrap();
            assert_eq!(removed.len(), 1);
            assert_eq!(removed[0].nar_hash, refused.nar_hash);
            assert_eq!(removed[0].whole.map(|w| w.key), Some(refused.key));
            assert!(db.nar(&refused.nar_hash).await.unwrap().is_none());
            assert!(db.nar(&published.nar_hash).await.unwrap().is_some());
            for u in [&published, &refused] {
                assert_eq!(db.uploaded_nar(&u.key).await.unwrap(), None);
            }
            // The refused NAR's chunk lost its only reference: collectable.
            let chunk = ncps_nix::ChunkHash::digest(refused.nar_hash.as_bytes());
            let collectable = db.unreferenced_chunks(now_secs() + 1, 10).await.unwrap();
            assert_eq!(collectable, vec![chunk]);
        }
    }
}
