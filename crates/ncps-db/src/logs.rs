use crate::repo::now_secs;
use crate::{Database, DbError};

impl Database {
    /// Stores (or replaces) the build log of a derivation.
    pub async fn put_build_log(&self, drv: &str, content: &[u8]) -> Result<(), DbError> {
        let upsert = self.dialect.upsert(
            "INTO build_logs (drv, content, created_at, stored_size, last_accessed_at) \
             VALUES (?, ?, ?, ?, ?)",
            "drv",
            &["content", "created_at", "stored_size", "last_accessed_at"],
        );
        let now = now_secs();
        sqlx::query(&self.sql(&upsert))
            .bind(drv)
            .bind(content)
            .bind(now)
            .bind(content.len() as i64)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The build log of a derivation.
    pub async fn build_log(&self, drv: &str) -> Result<Option<Vec<u8>>, DbError> {
        Ok(
            sqlx::query_scalar(&self.sql("SELECT content FROM build_logs WHERE drv = ?"))
                .bind(drv)
                .fetch_optional(&self.pool)
                .await?,
        )
    }
}

#[cfg(test)]
mod tests {
    db_test! {
        async fn logs_round_trip_and_replace(db) {
            let drv = "00000000000000000000000000000000-x.drv";
            assert_eq!(db.build_log(drv).await.unwrap(), None);
            db.put_build_log(drv, b"one").await.unwrap();
            db.put_build_log(drv, b"two").await.unwrap();
            assert_eq!(
                db.build_log(drv).await.unwrap().as_deref(),
                Some(&b"two"[..])
            );
            // Bytes that are not UTF-8 survive every engine.
            let binary: Vec<u8> = (0..=255).collect();
            db.put_build_log(drv, &binary).await.unwrap();
            assert_eq!(db.build_log(drv).await.unwrap(), Some(binary));
        }
    }
}
