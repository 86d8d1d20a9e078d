//! Lock services shared by replicas, behind the core's [`LockService`] trait.
//!
//! [`RedisLocks`] are fenced, expiring keys (`SET NX PX` with a random token; renewed while
//! held; released only by their owner), so a replica that dies loses its locks after the TTL.
//! [`PostgresLocks`] are session advisory locks on a dedicated connection, released by the server
//! when that connection closes, so they need no extra service when the database is PostgreSQL
//! already. The binary picks one from `--cache-lock-backend`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use ncps_core::{LockError, LockGuard, LockService};
use tokio::sync::oneshot;
use tracing::{debug, warn};

/// Renews a Redis lock only while its token still owns it.
const REDIS_RENEW: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end";
/// Releases a Redis lock only when its token still owns it (fencing).
const REDIS_RELEASE: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

/// Connections used to try advisory locks (held locks keep their own, outside this pool).
const PG_LOCK_CONNECTIONS: u32 = 4;

/// Locks in Redis.
pub struct RedisLocks {
    client: redis::Client,
    /// One multiplexed connection shared by every lock operation of this process.
    conn: tokio::sync::OnceCell<redis::aio::MultiplexedConnection>,
    prefix: String,
}

impl RedisLocks {
    /// Locks in the Redis at `url` (`redis://[user:password@]host:port/db`, `rediss://` for
    /// TLS; credentials are never logged), every key starting with `prefix` so several caches
    /// can share one Redis. Connects on first use.
    pub fn new(url: &str, prefix: &str) -> Result<Self, LockError> {
        Ok(Self {
            client: redis::Client::open(url).map_err(LockError::new)?,
            conn: tokio::sync::OnceCell::new(),
            prefix: prefix.to_string(),
        })
    }

    async fn lock(&self, key: &str, ttl: Duration) -> Result<Option<LockGuard>, LockError> {
        let mut conn = self
            .conn
            .get_or_try_init(|| self.client.get_multiplexed_async_connection())
            .await
            .map_err(LockError::new)?
            .clone();
        let key = format!("{}{key}", self.prefix);
        let token = random_token();
        let ttl_ms = ttl.as_millis().max(1000) as u64;
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut conn)
            .await
            .map_err(LockError::new)?;
        if set.is_none() {
            return Ok(None);
        }
        let (tx, mut rx) = oneshot::channel::<()>();
        let lost = Arc::new(AtomicBool::new(false));
        let report_loss = lost.clone();
        tokio::spawn(async move {
            let renew = redis::Script::new(REDIS_RENEW);
            let release = redis::Script::new(REDIS_RELEASE);
            let mut tick = tokio::time::interval(Duration::from_millis(ttl_ms / 3));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = &mut rx => break,
                    _ = tick.tick() => {
                        let renewed: Result<i64, _> = renew.key(&key).arg(&token).arg(ttl_ms).invoke_async(&mut conn).await;
                        if !matches!(renewed, Ok(1)) {
                            warn!(key, "lost a lock before releasing it (renewal failed); its holder stops");
                            report_loss.store(true, Ordering::SeqCst);
                            return;
                        }
                    }
                }
            }
            let released: Result<i64, _> =
                release.key(&key).arg(&token).invoke_async(&mut conn).await;
            debug!(key, ?released, "released lock");
        });
        Ok(Some(LockGuard::new(tx).losable(lost)))
    }
}

impl LockService for RedisLocks {
    fn try_lock<'a>(
        &'a self,
        key: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<LockGuard>, LockError>> {
        Box::pin(self.lock(key, ttl))
    }
}

/// A random token naming one holder of a Redis lock.
fn random_token() -> String {
    let mut bytes = [0u8; 16];
    // Without entropy the token is still unique enough per process; never fail a lock for it.
    let _ = getrandom::getrandom(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// PostgreSQL session advisory locks.
pub struct PostgresLocks {
    /// A few connections to try locks on; a connection that takes a lock leaves the pool and
    /// holds the lock until it closes.
    pool: sqlx::PgPool,
    prefix: String,
}

impl PostgresLocks {
    /// Advisory locks in the database at `url`, each id hashed from `prefix` and the lock's
    /// name. Connects on first use.
    pub fn new(url: &str, prefix: &str) -> Result<Self, LockError> {
        Ok(Self {
            pool: sqlx::postgres::PgPoolOptions::new()
                .max_connections(PG_LOCK_CONNECTIONS)
                .connect_lazy(url)
                .map_err(LockError::new)?,
            prefix: prefix.to_string(),
        })
    }

    async fn lock(&self, key: &str) -> Result<Option<LockGuard>, LockError> {
        use sqlx::Connection;
        let mut conn = self.pool.acquire().await.map_err(LockError::new)?;
        let id = advisory_id(&format!("{}{key}", self.prefix));
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(id)
            .fetch_one(&mut *conn)
            .await
            .map_err(LockError::new)?;
        if !got {
            return Ok(None); // the connection goes back to the pool
        }
        // The lock belongs to this session: take the connection out of the pool for its
        // lifetime.
        let mut conn = conn.detach();
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = rx.await;
            // Closing the session releases the lock even if the unlock fails.
            let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(id)
                .execute(&mut conn)
                .await;
            let _ = conn.close().await;
        });
        Ok(Some(LockGuard::new(tx)))
    }
}

impl LockService for PostgresLocks {
    fn try_lock<'a>(
        &'a self,
        key: &'a str,
        _ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<LockGuard>, LockError>> {
        Box::pin(self.lock(key))
    }
}

/// A stable 64-bit id for an advisory lock name.
fn advisory_id(name: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(name.as_bytes());
    i64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advisory_ids_are_stable_and_distinct() {
        assert_eq!(advisory_id("ncps:lock:lru"), advisory_id("ncps:lock:lru"));
        assert_ne!(
            advisory_id("ncps:lock:lru"),
            advisory_id("ncps:lock:chunk-gc")
        );
    }

    #[test]
    fn tokens_differ() {
        assert_ne!(random_token(), random_token());
        assert_eq!(random_token().len(), 32);
    }

    async fn wait_for_lock(locks: &dyn LockService, key: &str) -> LockGuard {
        for _ in 0..100 {
            if let Some(guard) = locks.try_lock(key, Duration::from_secs(1)).await.unwrap() {
                return guard;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{key} was never released");
    }

    /// Sets `key` to `owner` for `ttl_ms`, as another (possibly dead) holder would have.
    async fn set_by_another(url: &str, key: &str, owner: &str, ttl_ms: u64) {
        let mut conn = redis_conn(url).await;
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(owner)
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
        redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    fn unique(name: &str) -> String {
        format!("{name}-{}", random_token())
    }

    /// Against the Redis and PostgreSQL servers scripts/test starts.
    mod services {
        use sqlx::Connection as _;

        use super::*;

        /// Two replicas' Redis lock clients sharing a fresh key prefix, with the URL and prefix.
        fn redis_pair() -> (String, String, RedisLocks, RedisLocks) {
            let url = format!("redis://{}/0", ncps_test_services::redis_addr());
            let prefix = unique("test:");
            let a = RedisLocks::new(&url, &prefix).unwrap();
            let b = RedisLocks::new(&url, &prefix).unwrap();
            (url, prefix, a, b)
        }

        /// Two replicas' advisory lock clients sharing a fresh prefix, with the URL and prefix.
        fn postgres_pair() -> (String, String, PostgresLocks, PostgresLocks) {
            let url = ncps_test_services::postgres_url();
            let prefix = unique("test:");
            let a = PostgresLocks::new(&url, &prefix).unwrap();
            let b = PostgresLocks::new(&url, &prefix).unwrap();
            (url, prefix, a, b)
        }

        #[tokio::test]
        async fn redis_locks_are_exclusive_renewed_fenced_and_released() {
            let (url, prefix, a, b) = redis_pair();
            let ttl = Duration::from_secs(1);
            let held = a.try_lock("k", ttl).await.unwrap().expect("free");
            assert!(
                b.try_lock("k", ttl).await.unwrap().is_none(),
                "not exclusive"
            );
            // Renewed while held: still taken well past its TTL.
            tokio::time::sleep(Duration::from_millis(2500)).await;
            assert!(b.try_lock("k", ttl).await.unwrap().is_none(), "not renewed");
            drop(held);
            let _released = wait_for_lock(&b, "k").await;

            // Fencing: a holder whose key was taken over (it expired, another replica took it)
            // must not release the new holder's lock.
            let old = a.try_lock("f", ttl).await.unwrap().expect("free");
            let key = format!("{prefix}f");
            set_by_another(&url, &key, "someone-else", 60_000).await;
            drop(old);
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mut conn = redis_conn(&url).await;
            let owner: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert_eq!(
                owner.as_deref(),
                Some("someone-else"),
                "released another's lock"
            );
            let _: () = redis::cmd("DEL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
        }

        /// A holder whose key was taken over learns it at its next renewal: its guard says the
        /// lock is lost, so the work under it stops.
        #[tokio::test]
        async fn a_lost_redis_lock_is_reported_to_its_holder() {
            let addr = ncps_test_services::redis_addr();
            let url = format!("redis://{addr}/0");
            let prefix = unique("test:");
            let locks = RedisLocks::new(&url, &prefix).unwrap();
            let guard = locks
                .try_lock("l", Duration::from_secs(1))
                .await
                .unwrap()
                .expect("free");
            assert!(!guard.is_lost());
            set_by_another(&url, &format!("{prefix}l"), "usurper", 60_000).await;
            for _ in 0..50 {
                if guard.is_lost() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("the holder was never told its lock was lost");
        }

        #[tokio::test]
        async fn a_dead_holders_redis_lock_expires_after_its_ttl() {
            let addr = ncps_test_services::redis_addr();
            let url = format!("redis://{addr}/0");
            let prefix = unique("test:");
            let locks = RedisLocks::new(&url, &prefix).unwrap();
            // A holder that died: its key is there, nobody renews it.
            set_by_another(&url, &format!("{prefix}d"), "dead", 1000).await;
            assert!(
                locks
                    .try_lock("d", Duration::from_secs(1))
                    .await
                    .unwrap()
                    .is_none()
            );
            tokio::time::sleep(Duration::from_millis(1200)).await;
            assert!(
                locks
                    .try_lock("d", Duration::from_secs(1))
                    .await
                    .unwrap()
                    .is_some()
            );
        }

        #[tokio::test]
        async fn postgres_advisory_locks_are_exclusive_and_released() {
            let (_, _, a, b) = postgres_pair();
            let ttl = Duration::from_secs(1);
            let held = a.try_lock("k", ttl).await.unwrap().expect("free");
            assert!(
                b.try_lock("k", ttl).await.unwrap().is_none(),
                "not exclusive"
            );
            drop(held);
            let _released = wait_for_lock(&b, "k").await;
        }

        /// A replica that dies loses its advisory locks with its database session.
        #[tokio::test]
        async fn a_dead_sessions_advisory_lock_is_released() {
            let (url, prefix, a, b) = postgres_pair();
            let ttl = Duration::from_secs(1);
            let held = a.try_lock("k", ttl).await.unwrap().expect("free");
            assert!(b.try_lock("k", ttl).await.unwrap().is_none());
            // The holder's session ends without an unlock (the process died).
            let id = advisory_id(&format!("{prefix}k"));
            let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
            let killed: Vec<bool> = sqlx::query_scalar(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' \
                 AND ((classid::bigint << 32) | objid::bigint) = $1 AND granted",
            )
            .bind(id)
            .fetch_all(&mut admin)
            .await
            .unwrap();
            assert_eq!(killed, vec![true], "exactly the holder's session");
            let _taken = wait_for_lock(&b, "k").await;
            drop(held);
        }
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_a_lock_error() {
        // Nothing listens on port 1 of the loopback address.
        let locks = RedisLocks::new("redis://127.0.0.1:1/0", "t:").unwrap();
        let err = locks
            .try_lock("k", Duration::from_secs(1))
            .await
            .err()
            .expect("no Redis there");
        assert!(err.to_string().starts_with("lock service:"), "{err}");
    }
}
