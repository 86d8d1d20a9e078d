use crate::dialect::text;
use crate::repo::now_secs;
use crate::{Database, DbError};

impl Database {
    /// Stores (or replaces) a realisation or build-trace document.
    pub async fn put_realisation(&self, id: &str, content: &str) -> Result<(), DbError> {
        let upsert = self.dialect.upsert(
            "INTO realisations (id, content, created_at, stored_size, last_accessed_at) \
             VALUES (?, ?, ?, ?, ?)",
            "id",
            &["content", "created_at", "stored_size", "last_accessed_at"],
        );
        let now = now_secs();
        sqlx::query(&self.sql(&upsert))
            .bind(id)
            .bind(content)
            .bind(now)
            .bind(content.len() as i64)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A stored realisation or build-trace document.
    pub async fn realisation(&self, id: &str) -> Result<Option<String>, DbError> {
        let row = sqlx::query(&self.sql("SELECT content FROM realisations WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| text(&r, "content")).transpose()
    }
}

#[cfg(test)]
mod tests {
    db_test! {
        async fn realisations_round_trip(db) {
            assert_eq!(db.realisation("a!out").await.unwrap(), None);
            db.put_realisation("a!out", "{}").await.unwrap();
            db.put_realisation("a!out", "{\"x\":1}").await.unwrap();
            assert_eq!(
                db.realisation("a!out").await.unwrap().as_deref(),
                Some("{\"x\":1}")
            );
            // Keys are compared byte for byte on every engine (MySQL's default collations
            // would make these two one row).
            db.put_realisation("A!out", "upper").await.unwrap();
            assert_eq!(
                db.realisation("a!out").await.unwrap().as_deref(),
                Some("{\"x\":1}")
            );
            assert_eq!(db.realisation("A!out").await.unwrap().as_deref(), Some("upper"));
        }
    }
}
