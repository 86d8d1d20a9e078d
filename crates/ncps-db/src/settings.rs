use crate::{Database, DbError};

impl Database {
    /// A stored setting.
    pub async fn setting(&self, name: &str) -> Result<Option<String>, DbError> {
        Ok(
            sqlx::query_scalar("SELECT value FROM settings WHERE name = ?")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Stores `value` unless the setting already has one; returns the value in force, so a
    /// caller can refuse to run with a different one.
    pub async fn setting_or_init(&self, name: &str, value: &str) -> Result<String, DbError> {
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(value)
        .execute(&self.pool)
        .await?;
        Ok(self
            .setting(name)
            .await?
            .unwrap_or_else(|| value.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use crate::repo::test_support::temp_db;

    #[tokio::test]
    async fn first_value_wins() {
        let (db, _dir) = temp_db().await;
        assert_eq!(db.setting("x").await.unwrap(), None);
        assert_eq!(db.setting_or_init("x", "1").await.unwrap(), "1");
        assert_eq!(db.setting_or_init("x", "2").await.unwrap(), "1");
        assert_eq!(db.setting("x").await.unwrap().as_deref(), Some("1"));
    }
}
