//! Lock services shared by replicas, behind the core's [`LockService`] trait.
//!
//! [`RedisLocks`] are fenced, expiring keys (`SET NX PX` with a random token; renewed while
//! held; released only by their owner), so a replica that dies loses its locks after the TTL.
//! [`PostgresLocks`] are session advisory locks on a dedicated connection, released by the server
//! when that connection closes, so they need no extra service when the database is PostgreSQL
//! already. The binary picks one from `--cache-lock-backend`.

use std::collections::HashMap;
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

/// How long a renewal may take, and the pause before trying a failed one again.
const RENEW_RETRY: Duration = Duration::from_secs(1);
/// How long connecting to Redis, or any one command, may take before it counts as failed.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest pause between attempts to reconnect to Redis within one command.
const RECONNECT_MAX_DELAY_MS: u64 = 500;

/// How long opening the advisory lock session, or any statement on it, may take: every lock
/// of the process waits behind a statement that hangs (a server gone without closing the
/// connection), so one that does not answer ends the session.
const PG_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the advisory lock session is checked while it holds locks.
const PG_SESSION_CHECK: Duration = Duration::from_secs(5);

/// Locks in Redis.
pub struct RedisLocks {
    client: redis::Client,
    /// One multiplexed connection shared by every lock operation of this process, opened
    /// again after Redis drops it (a restart, a network blip): without that, a Redis restart
    /// left every later lock attempt failing with "broken pipe" until ncps restarted.
    conn: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
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
            .get_or_try_init(|| {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_number_of_retries(2)
                    .set_max_delay(RECONNECT_MAX_DELAY_MS)
                    .set_connection_timeout(REDIS_TIMEOUT)
                    .set_response_timeout(REDIS_TIMEOUT);
                redis::aio::ConnectionManager::new_with_config(self.client.clone(), config)
            })
            .await
            .map_err(LockError::new)?
            .clone();
        let key = format!("{}{key}", self.prefix);
        let token = random_token();
        let lease = ttl.max(Duration::from_secs(1));
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(lease.as_millis() as u64)
            .query_async(&mut conn)
            .await
            .map_err(LockError::new)?;
        if set.is_none() {
            return Ok(None);
        }
        let (tx, rx) = oneshot::channel::<()>();
        let lost = Arc::new(AtomicBool::new(false));
        tokio::spawn(keep_renewed(conn, key, token, lease, rx, lost.clone()));
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

/// Renews a held Redis lock every third of its `lease` until `released` fires, then releases
/// it. A renewal that fails (Redis unreachable, slow to answer) is tried again every second
/// while the key may still be alive, so a short blip of Redis does not cost the holder its
/// lock; once the lease has surely run out, or another holder owns the key, `lost` is set and
/// the holder's work stops.
async fn keep_renewed(
    mut conn: redis::aio::ConnectionManager,
    key: String,
    token: String,
    lease: Duration,
    mut released: oneshot::Receiver<()>,
    lost: Arc<AtomicBool>,
) {
    let renew = redis::Script::new(REDIS_RENEW);
    let lease_ms = lease.as_millis() as u64;
    let mut renewed_at = tokio::time::Instant::now();
    let mut next = renewed_at + lease / 3;
    loop {
        tokio::select! {
            _ = &mut released => break,
            () = tokio::time::sleep_until(next) => {
                let mut call = renew.key(&key);
                call.arg(&token).arg(lease_ms);
                match tokio::time::timeout(RENEW_RETRY, call.invoke_async::<i64>(&mut conn)).await {
                    Ok(Ok(1)) => {
                        renewed_at = tokio::time::Instant::now();
                        next = renewed_at + lease / 3;
                    }
                    Ok(Ok(_)) => {
                        warn!(key, "lost a lock before releasing it (another holder owns it); its holder stops");
                        lost.store(true, Ordering::SeqCst);
                        return;
                    }
                    failed => {
                        // The key lapses at most `lease` after the last renewal Redis took.
                        if renewed_at.elapsed() + RENEW_RETRY >= lease {
                            warn!(key, ?failed, "lost a lock before releasing it (no renewal within its lease); its holder stops");
                            lost.store(true, Ordering::SeqCst);
                            return;
                        }
                        debug!(key, ?failed, "renewing a lock failed; trying again");
                        next = tokio::time::Instant::now() + RENEW_RETRY;
                    }
                }
            }
        }
    }
    let release = redis::Script::new(REDIS_RELEASE);
    let released: Result<i64, _> = release.key(&key).arg(&token).invoke_async(&mut conn).await;
    debug!(key, ?released, "released lock");
}

/// A random token naming one holder of a Redis lock.
fn random_token() -> String {
    let mut bytes = [0u8; 16];
    // Without entropy the token is still unique enough per process; never fail a lock for it.
    let _ = getrandom::getrandom(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// PostgreSQL session advisory locks, all held on one session of this process: a lock per
/// NAR being downloaded must not take a database connection each, or a burst of cold
/// downloads would use up the server's `max_connections` and fail every client of the
/// database, the metadata pools of all replicas included.
pub struct PostgresLocks {
    options: sqlx::postgres::PgConnectOptions,
    prefix: String,
    session: Arc<tokio::sync::Mutex<Session>>,
}

/// The one session holding this process's advisory locks; only [`PostgresLocks`] and its
/// guards' release tasks touch it, one at a time.
#[derive(Default)]
struct Session {
    conn: Option<sqlx::PgConnection>,
    /// How many connections the session has opened: a watcher checks only its own.
    opened: u64,
    /// The locks the session holds, each with the flag its guard reports a loss through.
    held: HashMap<i64, Arc<AtomicBool>>,
}

impl Session {
    /// The session's connection, opened (and watched) when there is none.
    async fn conn(
        &mut self,
        options: &sqlx::postgres::PgConnectOptions,
        me: &Arc<tokio::sync::Mutex<Session>>,
    ) -> Result<&mut sqlx::PgConnection, LockError> {
        use sqlx::ConnectOptions;
        if self.conn.is_none() {
            let conn = tokio::time::timeout(PG_TIMEOUT, options.connect())
                .await
                .map_err(|_| LockError::new("connecting to PostgreSQL timed out"))?
                .map_err(LockError::new)?;
            self.conn = Some(conn);
            self.opened += 1;
            tokio::spawn(watch_session(Arc::downgrade(me), self.opened));
        }
        Ok(self.conn.as_mut().expect("just opened"))
    }

    /// Runs `statement` on the session's connection, within [`PG_TIMEOUT`]; a statement that
    /// fails or does not answer ends the session ([`Session::fail`]).
    async fn run<T>(
        &mut self,
        statement: impl AsyncFnOnce(&mut sqlx::PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, LockError> {
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| LockError::new("no session"))?;
        let outcome = match tokio::time::timeout(PG_TIMEOUT, statement(conn)).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => LockError::new(e),
            Err(_) => LockError::new("PostgreSQL did not answer an advisory lock statement"),
        };
        self.fail(&outcome);
        Err(outcome)
    }

    /// Forgets the session after a failure: closing it makes the server release every lock it
    /// held, so each holder is told its lock is lost.
    fn fail(&mut self, why: &LockError) {
        if self.conn.take().is_some() && !self.held.is_empty() {
            warn!(error = %why, locks = self.held.len(), "lost the advisory lock session; the holders stop");
        }
        for (_, lost) in self.held.drain() {
            lost.store(true, Ordering::SeqCst);
        }
    }
}

/// Checks the session every few seconds while it holds locks, so a session the server ended
/// (a restart, an administrator) is noticed and its holders stop, instead of running on while
/// another replica takes their locks. Ends with the session.
async fn watch_session(session: std::sync::Weak<tokio::sync::Mutex<Session>>, connection: u64) {
    loop {
        tokio::time::sleep(PG_SESSION_CHECK).await;
        let Some(session) = session.upgrade() else {
            return;
        };
        let mut session = session.lock().await;
        if session.conn.is_none() || session.opened != connection {
            return; // that connection failed; a later one has its own watcher
        }
        if session.held.is_empty() {
            continue;
        }
        if session
            .run(async |conn| sqlx::query("SELECT 1").execute(conn).await)
            .await
            .is_err()
        {
            return;
        }
    }
}

impl PostgresLocks {
    /// Advisory locks in the database at `url`, each id hashed from `prefix` and the lock's
    /// name. Connects on first use.
    pub fn new(url: &str, prefix: &str) -> Result<Self, LockError> {
        Ok(Self {
            options: url.parse().map_err(LockError::new)?,
            prefix: prefix.to_string(),
            session: Arc::default(),
        })
    }

    async fn lock(&self, key: &str) -> Result<Option<LockGuard>, LockError> {
        let id = advisory_id(&format!("{}{key}", self.prefix));
        let mut session = self.session.lock().await;
        // A session may take its own advisory lock twice: refuse a second holder here.
        if session.held.contains_key(&id) {
            return Ok(None);
        }
        // A session the server ended since the last lock (a restart, a failover) fails its
        // next statement: that attempt is made once more on a new session, so the end of a
        // session costs no request.
        let got: bool = loop {
            let fresh = session.conn.is_none();
            session.conn(&self.options, &self.session).await?;
            let tried = session
                .run(async |conn| {
                    sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                        .bind(id)
                        .fetch_one(conn)
                        .await
                })
                .await;
            match tried {
                Ok(got) => break got,
                Err(e) if fresh => return Err(e),
                Err(_) => {}
            }
        };
        if !got {
            return Ok(None);
        }
        let lost = Arc::new(AtomicBool::new(false));
        session.held.insert(id, lost.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let (this_session, mine) = (Arc::downgrade(&self.session), lost.clone());
        tokio::spawn(async move {
            let _ = rx.await;
            let Some(session) = this_session.upgrade() else {
                return; // the locks are gone, their session with them
            };
            let mut session = session.lock().await;
            // Still this guard's lock, on the session that took it?
            if !session.held.get(&id).is_some_and(|l| Arc::ptr_eq(l, &mine)) {
                return;
            }
            session.held.remove(&id);
            // A failure ends the session, which releases the lock too.
            let _ = session
                .run(async |conn| {
                    sqlx::query("SELECT pg_advisory_unlock($1)")
                        .bind(id)
                        .execute(conn)
                        .await
                })
                .await;
        });
        Ok(Some(LockGuard::new(tx).losable(lost)))
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

        /// A TCP relay in front of a server that can cut every connection through it and
        /// refuse new ones for a while (a restart, a blip), or hold every byte back while the
        /// connections stay open (a server or network gone silent).
        struct Relay {
            addr: std::net::SocketAddr,
            cuts: tokio::sync::watch::Sender<u64>,
            refuse_until: Arc<std::sync::Mutex<tokio::time::Instant>>,
            silent: Arc<AtomicBool>,
        }

        impl Relay {
            async fn to(server: String) -> Relay {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                let (cuts, _) = tokio::sync::watch::channel(0u64);
                let refuse_until = Arc::new(std::sync::Mutex::new(tokio::time::Instant::now()));
                let silent = Arc::new(AtomicBool::new(false));
                let (watch, refusing, quiet) = (cuts.clone(), refuse_until.clone(), silent.clone());
                tokio::spawn(async move {
                    while let Ok((client, _)) = listener.accept().await {
                        if tokio::time::Instant::now() < *refusing.lock().unwrap() {
                            continue; // dropped: the client sees its connection closed
                        }
                        let server = tokio::net::TcpStream::connect(&server).await.unwrap();
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        tokio::spawn(Self::pass(cr, sw, watch.subscribe(), quiet.clone()));
                        tokio::spawn(Self::pass(sr, cw, watch.subscribe(), quiet.clone()));
                    }
                });
                Relay {
                    addr,
                    cuts,
                    refuse_until,
                    silent,
                }
            }

            async fn to_redis() -> Relay {
                Relay::to(ncps_test_services::redis_addr()).await
            }

            fn redis_url(&self) -> String {
                format!("redis://{}/0", self.addr)
            }

            async fn pass(
                mut from: tokio::net::tcp::OwnedReadHalf,
                mut to: tokio::net::tcp::OwnedWriteHalf,
                mut cut: tokio::sync::watch::Receiver<u64>,
                silent: Arc<AtomicBool>,
            ) {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4096];
                loop {
                    tokio::select! {
                        _ = cut.changed() => return,
                        read = from.read(&mut buf) => match read {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                while silent.load(Ordering::SeqCst) {
                                    tokio::time::sleep(Duration::from_millis(20)).await;
                                }
                                if to.write_all(&buf[..n]).await.is_err() { return }
                            }
                        },
                    }
                }
            }

            /// Cuts every connection and refuses new ones for `outage`.
            fn outage(&self, outage: Duration) {
                *self.refuse_until.lock().unwrap() = tokio::time::Instant::now() + outage;
                self.cuts.send_modify(|n| *n += 1);
            }

            /// Holds every byte back (`true`) or passes them again (`false`).
            fn silence(&self, silent: bool) {
                self.silent.store(silent, Ordering::SeqCst);
            }
        }

        /// After Redis drops every connection (a restart), the first lock asked for once it is
        /// back is taken: the lock service neither stays broken until ncps restarts nor fails
        /// the first request after the restart.
        #[tokio::test]
        async fn redis_locks_work_again_after_redis_dropped_every_connection() {
            let relay = Relay::to_redis().await;
            let locks = RedisLocks::new(&relay.redis_url(), &unique("test:")).unwrap();
            let ttl = Duration::from_secs(2);
            drop(locks.try_lock("before", ttl).await.unwrap().expect("free"));
            // Redis restarts: every connection cut, the server back at once.
            relay.outage(Duration::ZERO);
            tokio::time::sleep(Duration::from_millis(50)).await;
            let after = locks.try_lock("after", ttl).await;
            assert!(
                matches!(after, Ok(Some(_))),
                "the first lock after Redis came back: {:?}",
                after.map(|g| g.is_some())
            );
        }

        /// A held lock outlives a Redis outage shorter than its lease: renewals that fail are
        /// tried again while the key may still be alive, and the holder keeps its lock.
        #[tokio::test]
        async fn a_held_redis_lock_survives_an_outage_shorter_than_its_lease() {
            let relay = Relay::to_redis().await;
            let (_, prefix, _, other) = redis_pair();
            let locks = RedisLocks::new(&relay.redis_url(), &prefix).unwrap();
            let lease = Duration::from_secs(6);
            let held = locks.try_lock("k", lease).await.unwrap().expect("free");
            // Renewals fall due every 2 s; Redis is gone from 1.5 s to 3.5 s.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            relay.outage(Duration::from_secs(2));
            tokio::time::sleep(Duration::from_secs(6)).await;
            assert!(
                !held.is_lost(),
                "a 2 s outage cost a lock whose lease is 6 s"
            );
            assert!(
                other.try_lock("k", lease).await.unwrap().is_none(),
                "the lock lapsed in Redis although its holder still has it"
            );
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

        /// However many locks a replica holds (one per NAR it downloads), they take one
        /// database connection, and each is released on its own.
        #[tokio::test]
        async fn many_held_advisory_locks_take_one_connection() {
            let url = ncps_test_services::postgres_url();
            let app = unique("locks");
            let sep = if url.contains('?') { '&' } else { '?' };
            let prefix = unique("test:");
            let locks =
                PostgresLocks::new(&format!("{url}{sep}application_name={app}"), &prefix).unwrap();
            let other = PostgresLocks::new(&url, &prefix).unwrap();
            let ttl = Duration::from_secs(1);
            let mut held = Vec::new();
            for i in 0..40 {
                let key = format!("nar-{i}");
                held.push(locks.try_lock(&key, ttl).await.unwrap().expect("free"));
            }
            assert!(
                locks.try_lock("nar-0", ttl).await.unwrap().is_none(),
                "a second holder in the same process"
            );
            let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
            let sessions: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            )
            .bind(&app)
            .fetch_one(&mut admin)
            .await
            .unwrap();
            assert_eq!(sessions, 1, "database connections for 40 held locks");
            let first = held.remove(0);
            drop(first);
            let _taken = wait_for_lock(&other, "nar-0").await;
            assert!(
                other.try_lock("nar-1", ttl).await.unwrap().is_none(),
                "releasing one lock released others"
            );
        }

        /// A database that goes silent (gone without closing the connection) ends the lock
        /// session in bounded time: the locks it held are reported lost, later attempts fail
        /// instead of hanging, and the locks work again once the server answers.
        #[tokio::test]
        async fn a_silent_database_ends_the_lock_session_in_time() {
            let url = ncps_test_services::postgres_url();
            let (user, rest) = url.split_once('@').expect("user@host");
            let (server, database) = rest.split_once('/').expect("host/database");
            let relay = Relay::to(server.to_owned()).await;
            let through = format!("{user}@{}/{database}", relay.addr);
            let locks = PostgresLocks::new(&through, &unique("test:")).unwrap();
            let ttl = Duration::from_secs(1);
            let held = locks.try_lock("held", ttl).await.unwrap().expect("free");
            relay.silence(true);
            let attempt = tokio::time::timeout(PG_TIMEOUT * 3, locks.try_lock("other", ttl))
                .await
                .expect("the attempt hung");
            assert!(attempt.is_err(), "a lock taken from a silent database");
            assert!(held.is_lost(), "the holder was not told its session ended");
            relay.silence(false);
            let again = locks.try_lock("other", ttl).await;
            assert!(
                matches!(again, Ok(Some(_))),
                "not taken once the database answers again"
            );
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
            // The holder learns it at the session's next check and stops its work.
            for _ in 0..80 {
                if held.is_lost() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("the holder whose session ended was never told its lock was lost");
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
