//! Pinned store paths: what an operator wants kept whatever eviction decides. A pin protects the
//! path and its whole reference closure, computed from the narinfos' `References`.

use std::collections::HashSet;
use std::str::FromStr;

use ncps_nix::StorePathHash;
use sqlx::Row;

use crate::dialect::{Dialect, opt_text, text};
use crate::repo::{corrupt, now_secs};
use crate::{Database, DbError};

const T: &str = "pins";

/// The hashes of every pinned path and everything they reference, transitively.
///
/// Each row of `walk` is a path of the closure together with the part of its `References`
/// still to visit (`<hash>-<name> ` tokens, each ending in a space). The recursive step either
/// steps into the first reference (whose own references become the rest) or drops it from the
/// rest; `UNION` removes repeated rows, so cycles (a path referring to itself) end. A reference
/// without a narinfo is in the closure with nothing to visit: a pin protects a path that is not
/// cached yet once it is fetched. Refs are `<32-char hash>-<name>` joined by single spaces, as
/// `insert_narinfo` writes them.
///
/// One recursive term (joined with a two-row step table) keeps this valid on all three
/// engines. The differences: PostgreSQL spells `instr` as `strpos`, and `CONCAT` (which all three
/// have, unlike `||` on MySQL) makes the anchor's `hash` text rather than `VARCHAR(32)`, since
/// PostgreSQL wants each column's type equal in both terms. Kept as SQL so eviction can use it
/// as a sub-query.
pub(crate) fn pinned_closure_cte(dialect: Dialect) -> String {
    let space = dialect.strpos("w.rest", "' '");
    format!(
        "WITH RECURSIVE walk(hash, rest) AS ( \
           SELECT CONCAT(p.hash, ''), CONCAT(COALESCE(n.refs, ''), ' ') \
           FROM pins p LEFT JOIN narinfos n ON n.hash = p.hash \
         UNION \
           SELECT CASE WHEN step.k = 0 THEN substr(w.rest, 1, 32) ELSE w.hash END, \
                  CASE WHEN step.k = 0 \
                       THEN CONCAT(COALESCE((SELECT c.refs FROM narinfos c \
                                             WHERE c.hash = substr(w.rest, 1, 32)), ''), ' ') \
                       ELSE substr(w.rest, {space} + 1) END \
           FROM walk w CROSS JOIN (SELECT 0 AS k UNION ALL SELECT 1 AS k) step \
           WHERE length(w.rest) > 32 \
       )"
    )
}

/// A pinned store path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    /// The pinned path's hash.
    pub hash: StorePathHash,
    /// When it was pinned, seconds since the epoch.
    pub created_at: i64,
    /// The full store path, when the cache holds its narinfo (pins may precede the fetch).
    pub store_path: Option<String>,
}

impl Database {
    /// Pins a store path; `false` when it already was (the original pin time is kept).
    pub async fn pin(&self, hash: &StorePathHash) -> Result<bool, DbError> {
        let insert = self
            .dialect
            .insert_or_ignore("INTO pins (hash, created_at) VALUES (?, ?)", "hash");
        let done = sqlx::query(&self.sql(&insert))
            .bind(hash.to_string())
            .bind(now_secs())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Removes a pin; `false` when the path was not pinned.
    pub async fn unpin(&self, hash: &StorePathHash) -> Result<bool, DbError> {
        let done = sqlx::query(&self.sql("DELETE FROM pins WHERE hash = ?"))
            .bind(hash.to_string())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Every pin, oldest first, with the store path when its narinfo is cached.
    pub async fn pins(&self) -> Result<Vec<Pin>, DbError> {
        let rows = sqlx::query(
            "SELECT p.hash, p.created_at, n.store_path FROM pins p \
             LEFT JOIN narinfos n ON n.hash = p.hash ORDER BY p.created_at, p.hash",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Pin {
                    hash: StorePathHash::from_str(&text(r, "hash")?).map_err(|e| corrupt(T, e))?,
                    created_at: r.try_get("created_at")?,
                    store_path: opt_text(r, "store_path")?,
                })
            })
            .collect()
    }

    /// The store path hashes eviction must keep: every pinned path and everything reachable
    /// from one through narinfo references, including referenced paths not cached yet.
    pub async fn pinned_closure(&self) -> Result<HashSet<StorePathHash>, DbError> {
        let sql = format!(
            "{} SELECT DISTINCT hash FROM walk",
            pinned_closure_cte(self.dialect)
        );
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| StorePathHash::from_str(&text(r, "hash")?).map_err(|e| corrupt("narinfos", e)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CachedNarInfo;
    use crate::narinfos::tests::sample;
    use ncps_nix::StorePath;

    /// A store path base name for a readable label (the hash is derived from the label).
    fn path(label: &str) -> StorePath {
        let digest = ncps_nix::Sha256Hash::digest(label.as_bytes());
        let mut bytes = [0u8; 20];
        bytes.copy_from_slice(&digest.as_bytes()[..20]);
        let hash = StorePathHash::from_bytes(bytes);
        StorePath::parse_base_name(&format!("{hash}-{label}")).unwrap()
    }

    async fn add(db: &Database, label: &str, refs: &[&str]) {
        let mut info: CachedNarInfo = sample();
        info.narinfo.store_path = path(label);
        info.narinfo.references = refs.iter().map(|r| path(r)).collect();
        db.insert_narinfo(&info, None).await.unwrap();
    }

    fn hashes(labels: &[&str]) -> HashSet<StorePathHash> {
        labels.iter().map(|l| *path(l).hash()).collect()
    }

    db_test! {
        async fn pin_unpin_and_list(db) {
            add(db, "cached", &[]).await;
            let cached = *path("cached").hash();
            let absent = *path("absent").hash();
            assert!(db.pin(&cached).await.unwrap());
            assert!(!db.pin(&cached).await.unwrap());
            assert!(db.pin(&absent).await.unwrap());
            let pins = db.pins().await.unwrap();
            assert_eq!(pins.len(), 2);
            let by_hash = |h| pins.iter().find(|p| p.hash == h).unwrap();
            assert_eq!(
                by_hash(cached).store_path,
                Some(path("cached").to_absolute())
            );
            assert_eq!(by_hash(absent).store_path, None);
            assert!(db.unpin(&absent).await.unwrap());
            assert!(!db.unpin(&absent).await.unwrap());
            assert_eq!(db.pins().await.unwrap().len(), 1);
        }
    }

    db_test! {
        async fn closure_follows_references_transitively(db) {
            assert!(db.pinned_closure().await.unwrap().is_empty());
            // app -> {lib, app (itself)}; lib -> {libc, lib}; libc -> {}; tool -> {libc};
            // uncached -> ? ; app also refers to "missing", which is not cached.
            add(db, "app", &["lib", "app", "missing"]).await;
            add(db, "lib", &["libc", "lib"]).await;
            add(db, "libc", &[]).await;
            add(db, "tool", &["libc"]).await;
            add(db, "other", &["cycle-b"]).await;
            add(db, "cycle-b", &["other"]).await;

            db.pin(path("app").hash()).await.unwrap();
            assert_eq!(
                db.pinned_closure().await.unwrap(),
                hashes(&["app", "lib", "libc", "missing"])
            );

            // A pin of an uncached path is in the closure by itself.
            db.pin(path("uncached").hash()).await.unwrap();
            // A reference cycle between two paths ends.
            db.pin(path("other").hash()).await.unwrap();
            assert_eq!(
                db.pinned_closure().await.unwrap(),
                hashes(&[
                    "app", "lib", "libc", "missing", "uncached", "other", "cycle-b"
                ])
            );

            db.unpin(path("app").hash()).await.unwrap();
            db.unpin(path("other").hash()).await.unwrap();
            assert_eq!(db.pinned_closure().await.unwrap(), hashes(&["uncached"]));
        }
    }

    db_test! {
        async fn closure_of_a_wide_and_deep_graph(db) {
            // A chain of 60 paths, each also referring to 40 shared leaves.
            let leaves: Vec<String> = (0..40).map(|i| format!("leaf{i}")).collect();
            for leaf in &leaves {
                add(db, leaf, &[]).await;
            }
            for i in 0..60 {
                let next = format!("chain{}", i + 1);
                let mut refs: Vec<&str> = leaves.iter().map(String::as_str).collect();
                if i < 59 {
                    refs.push(&next);
                }
                add(db, &format!("chain{i}"), &refs).await;
            }
            add(db, "unrelated", &["leaf0"]).await;
            db.pin(path("chain0").hash()).await.unwrap();
            let closure = db.pinned_closure().await.unwrap();
            assert_eq!(closure.len(), 100);
            assert!(closure.contains(path("chain59").hash()));
            assert!(closure.contains(path("leaf39").hash()));
            assert!(!closure.contains(path("unrelated").hash()));
        }
    }
}
