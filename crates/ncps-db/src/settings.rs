use crate::dialect::text;
use crate::{Database, DbError};

impl Database {
    /// A stored setting.
    pub async fn setting(&self, name: &str) -> Result<Option<String>, DbError> {
        let row = sqlx::query(&self.sql("SELECT value FROM settings WHERE name = ?"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| text(&r, "value")).transpose()
    }

    /// Stores `value` unless the setting already has one; returns the value in force, so a
    /// caller can refuse to run with a different one.
    pub async fn setting_or_init(&self, name: &str, value: &str) -> Result<String, DbError> {
        let insert = self
            .dialect
            .insert_or_ignore("INTO settings (name, value) VALUES (?, ?)", "name");
        sqlx::query(&self.sql(&insert))
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
    db_test! {
        async fn first_value_wins(db) {
            assert_eq!(db.setting("x").await.unwrap(), None);
            assert_eq!(db.setting_or_init("x", "1").await.unwrap(), "1");
            assert_eq!(db.setting_or_init("x", "2").await.unwrap(), "1");
            assert_eq!(db.setting("x").await.unwrap().as_deref(), Some("1"));
        }
    }
}
