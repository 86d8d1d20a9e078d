use crate::repo::now_secs;
use crate::{Database, DbError};

impl Database {
    /// Stores (or replaces) a realisation or build-trace document.
    pub async fn put_realisation(&self, id: &str, content: &str) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO realisations (id, content, created_at) VALUES (?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET content = excluded.content, created_at = excluded.created_at",
        )
        .bind(id)
        .bind(content)
        .bind(now_secs())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A stored realisation or build-trace document.
    pub async fn realisation(&self, id: &str) -> Result<Option<String>, DbError> {
        Ok(
            sqlx::query_scalar("SELECT content FROM realisations WHERE id = ?")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::repo::test_support::temp_db;

    #[tokio::test]
    async fn realisations_round_trip() {
        let (db, _dir) = temp_db().await;
        assert_eq!(db.realisation("a!out").await.unwrap(), None);
        db.put_realisation("a!out", "{}").await.unwrap();
        db.put_realisation("a!out", "{\"x\":1}").await.unwrap();
        assert_eq!(
            db.realisation("a!out").await.unwrap().as_deref(),
            Some("{\"x\":1}")
        );
    }
}
