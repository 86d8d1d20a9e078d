//! Locks that work across replicas, so N processes behave like one: one download per NAR, one
//! eviction run, one garbage collection.
//!
//! `local` locks live in this process (the single-box default). `redis` locks are fenced,
//! expiring keys (`SET NX PX` with a random token; renewed while held; released only by their
//! owner), so a replica that dies loses its locks after the TTL. `postgres` uses session
//! advisory locks on a dedicated connection, released by the server when that connection
//! closes, so it needs no extra service when the database is PostgreSQL already.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::CacheError;

/// Which lock service coordinates replicas.
#[derive(Clone, Debug)]
pub enum LockBackend {
    /// In-process locks: correct for one replica.
    Local,
    /// Redis at this URL (`redis://[user:password@]host:port/db`, `rediss://` for TLS).
    Redis {
        /// Connection URL (credentials are never logged).
        url: String,
        /// Prefix of every lock key, so several caches can share one Redis.
        prefix: String,
    },
    /// PostgreSQL session advisory locks on this database URL.
    Postgres {
        /// Connection URL.
        url: String,
        /// Prefix hashed into every lock id.
        prefix: String,
    },
}

/// A lock service.
pub(crate) enum Locks {
    Local(Arc<Mutex<HashSet<String>>>),
    Redis {
        client: redis::Client,
        /// One multiplexed connection shared by every lock operation of this process.
        conn: tokio::sync::OnceCell<redis::aio::MultiplexedConnection>,
        prefix: String,
    },
    Postgres {
        /// A few connections to try locks on; a connection that takes a lock leaves the pool
        /// and holds the lock until it closes.
        pool: sqlx::PgPool,
        prefix: String,
    },
}

/// A held lock; released when dropped (a replica that dies loses it after the TTL, or when its
/// database connection closes).
pub(crate) struct LockGuard {
    _release: Option<oneshot::Sender<()>>,
}

fn lock_error(e: impl std::fmt::Display) -> CacheError {
    CacheError::Io(std::io::Error::other(format!("lock service: {e}")))
}

/// Renews a Redis lock only while its token still owns it.
const REDIS_RENEW: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end";
/// Releases a Redis lock only when its token still owns it (fencing).
const REDIS_RELEASE: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

/// A random token naming one holder of a Redis lock.
fn random_token() -> String {
    let mut bytes = [0u8; 16];
    // Without entropy the token is still unique enough per process; never fail a lock for it.
    let _ = getrandom::getrandom(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Locks {
    /// Connects to the lock service.
    pub fn new(backend: &LockBackend) -> Result<Self, CacheError> {
        Ok(match backend {
            LockBackend::Local => Self::Local(Arc::default()),
            LockBackend::Redis { url, prefix } => Self::Redis {
                client: redis::Client::open(url.as_str()).map_err(lock_error)?,
                conn: tokio::sync::OnceCell::new(),
                prefix: prefix.clone(),
            },
            LockBackend::Postgres { url, prefix } => Self::Postgres {
                pool: sqlx::postgres::PgPoolOptions::new()
                    .max_connections(PG_LOCK_CONNECTIONS)
                    .connect_lazy(url)
                    .map_err(lock_error)?,
                prefix: prefix.clone(),
            },
        })
    }

    /// Takes `key` if nobody holds it; `None` when another holder (here or on another replica)
    /// has it.
    pub async fn try_lock(
        &self,
        key: &str,
        ttl: Duration,
    ) -> Result<Option<LockGuard>, CacheError> {
        match self {
            Self::Local(held) => {
                if !held
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key.to_string())
                {
                    return Ok(None);
                }
                let (tx, rx) = oneshot::channel::<()>();
                let held = held.clone();
                let key = key.to_string();
                tokio::spawn(async move {
                    let _ = rx.await;
                    held.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
                });
                Ok(Some(LockGuard { _release: Some(tx) }))
            }
            Self::Redis {
                client,
                conn,
                prefix,
            } => {
                let conn = conn
                    .get_or_try_init(|| client.get_multiplexed_async_connection())
                    .await
                    .map_err(lock_error)?
                    .clone();
                redis_try_lock(conn, &format!("{prefix}{key}"), ttl).await
            }
            Self::Postgres { pool, prefix } => {
                postgres_try_lock(pool, &format!("{prefix}{key}")).await
            }
        }
    }
}

async fn redis_try_lock(
    mut conn: redis::aio::MultiplexedConnection,
    key: &str,
    ttl: Duration,
) -> Result<Option<LockGuard>, CacheError> {
    let token = random_token();
    let ttl_ms = ttl.as_millis().max(1000) as u64;
    let set: Option<String> = redis::cmd("SET")
        .arg(key)
        .arg(&token)
        .arg("NX")
        .arg("PX")
        .arg(ttl_ms)
        .query_async(&mut conn)
        .await
        .map_err(lock_error)?;
    if set.is_none() {
        return Ok(None);
    }
    let (tx, mut rx) = oneshot::channel::<()>();
    let key = key.to_string();
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
                        warn!(key, "lost a lock before releasing it (renewal failed)");
                        return;
                    }
                }
            }
        }
        let released: Result<i64, _> = release.key(&key).arg(&token).invoke_async(&mut conn).await;
        debug!(key, ?released, "released lock");
    });
    Ok(Some(LockGuard { _release: Some(tx) }))
}

/// Connections used to try advisory locks (held locks keep their own, outside this pool).
const PG_LOCK_CONNECTIONS: u32 = 4;

/// A stable 64-bit id for an advisory lock name.
fn advisory_id(name: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(name.as_bytes());
    i64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

async fn postgres_try_lock(
    pool: &sqlx::PgPool,
    name: &str,
) -> Result<Option<LockGuard>, CacheError> {
    use sqlx::Connection;
    let mut conn = pool.acquire().await.map_err(lock_error)?;
    let id = advisory_id(name);
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(id)
        .fetch_one(&mut *conn)
        .await
        .map_err(lock_error)?;
    if !got {
        return Ok(None); // the connection goes back to the pool
    }
    // The lock belongs to this session: take the connection out of the pool for its lifetime.
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
    Ok(Some(LockGuard { _release: Some(tx) }))
}
