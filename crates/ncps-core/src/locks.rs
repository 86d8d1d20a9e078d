//! Locks that make N replicas behave like one: one download per NAR, one eviction run, one
//! garbage collection.
//!
//! The core only knows the [`LockService`] trait and the in-process [`LocalLocks`] (the
//! single-box default). Services shared by replicas (Redis, PostgreSQL advisory locks) live in
//! the `ncps-locks` crate and are handed in by the binary, so the core links no lock client.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::oneshot;

/// The lock service could not be asked (unreachable, refused, broken connection).
#[derive(Debug, thiserror::Error)]
#[error("lock service: {0}")]
pub struct LockError(pub String);

impl LockError {
    /// Wraps any displayable failure of a lock client.
    pub fn new(e: impl std::fmt::Display) -> Self {
        Self(e.to_string())
    }
}

/// A held lock, released when dropped. A holder that dies loses its lock through the service
/// itself (an expiring key, a closed session).
#[must_use = "the lock is released when the guard is dropped"]
pub struct LockGuard {
    release: Option<Box<dyn FnOnce() + Send + Sync>>,
    /// Set by the service when the lock was lost while held (a renewal failed): another holder
    /// may have it now, so long work under it must stop.
    lost: Option<Arc<AtomicBool>>,
}

impl LockGuard {
    /// A guard whose drop closes `release`: the service's task waiting on the other end then
    /// releases the lock.
    pub fn new(release: oneshot::Sender<()>) -> Self {
        Self::on_drop(move || drop(release))
    }

    /// A guard that runs `release` when dropped (it must not block).
    pub fn on_drop(release: impl FnOnce() + Send + Sync + 'static) -> Self {
        Self {
            release: Some(Box::new(release)),
            lost: None,
        }
    }

    /// This guard, reporting the lock lost once the service sets `lost`.
    pub fn losable(mut self, lost: Arc<AtomicBool>) -> Self {
        self.lost = Some(lost);
        self
    }

    /// True once the lock was lost while held: stop the work it guards.
    pub fn is_lost(&self) -> bool {
        self.lost.as_ref().is_some_and(|l| l.load(Ordering::SeqCst))
    }

    /// This guard, also running `after` once the lock is released (for measuring it).
    pub(crate) fn then_on_drop(mut self, after: impl FnOnce() + Send + Sync + 'static) -> Self {
        let release = self.release.take();
        self.release = Some(Box::new(move || {
            if let Some(release) = release {
                release();
            }
            after();
        }));
        self
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

/// A service that hands out named, exclusive, expiring locks.
pub trait LockService: Send + Sync {
    /// Takes `key` if nobody holds it; `None` when another holder (in this process or on
    /// another replica) has it. `ttl` is how long the lock survives a holder that stops
    /// renewing it (a dead replica).
    fn try_lock<'a>(
        &'a self,
        key: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<LockGuard>, LockError>>;

    /// True when the locks reach other replicas (metrics say `distributed`, else `local`).
    fn is_distributed(&self) -> bool {
        true
    }
}

/// A lock service whose every attempt and hold is counted in the Go ncps's lock metrics
/// (`ncps_lock_*`); [`crate::Cache::new`] wraps the configured service in it.
pub(crate) struct MeteredLocks {
    inner: Arc<dyn LockService>,
    metrics: Arc<crate::metrics::Metrics>,
    mode: &'static str,
}

impl MeteredLocks {
    /// Meters `inner`.
    pub(crate) fn new(inner: Arc<dyn LockService>, metrics: Arc<crate::metrics::Metrics>) -> Self {
        let mode = if inner.is_distributed() {
            "distributed"
        } else {
            "local"
        };
        Self {
            inner,
            metrics,
            mode,
        }
    }
}

impl LockService for MeteredLocks {
    fn try_lock<'a>(
        &'a self,
        key: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<LockGuard>, LockError>> {
        use crate::metrics::{LockFailureLabels, LockHoldLabels, LockLabels};
        Box::pin(async move {
            let go = &self.metrics.go;
            let (r#type, mode) = ("exclusive", self.mode);
            let count = |result| {
                go.lock_acquisitions
                    .get_or_create(&LockLabels {
                        r#type,
                        mode,
                        result,
                    })
                    .inc();
            };
            match self.inner.try_lock(key, ttl).await {
                Ok(Some(guard)) => {
                    count("success");
                    let hold = go
                        .lock_hold_duration
                        .get_or_create(&LockHoldLabels { r#type, mode })
                        .clone();
                    let taken = std::time::Instant::now();
                    Ok(Some(guard.then_on_drop(move || {
                        hold.observe(taken.elapsed().as_secs_f64());
                    })))
                }
                Ok(None) => {
                    count("contention");
                    Ok(None)
                }
                Err(e) => {
                    count("failure");
                    go.lock_failures
                        .get_or_create(&LockFailureLabels {
                            r#type,
                            mode,
                            reason: "error",
                        })
                        .inc();
                    Err(e)
                }
            }
        })
    }

    fn is_distributed(&self) -> bool {
        self.inner.is_distributed()
    }
}

/// In-process locks: correct for one replica, and the first tier in front of a shared service
/// (one task per process asks the remote service; the others wait for it locally).
#[derive(Clone, Default)]
pub struct LocalLocks {
    held: Arc<Mutex<HashSet<String>>>,
}

impl LocalLocks {
    /// Takes `key` if no task of this process holds it; released the moment the guard is
    /// dropped. Never fails.
    pub fn try_lock_now(&self, key: &str) -> Option<LockGuard> {
        if !self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_string())
        {
            return None;
        }
        let held = self.held.clone();
        let key = key.to_string();
        Some(LockGuard::on_drop(move || {
            held.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
        }))
    }
}

impl LockService for LocalLocks {
    fn try_lock<'a>(
        &'a self,
        key: &'a str,
        _ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<LockGuard>, LockError>> {
        Box::pin(async move { Ok(self.try_lock_now(key)) })
    }

    fn is_distributed(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_local_lock_is_exclusive_until_dropped() {
        let locks = LocalLocks::default();
        let ttl = Duration::from_secs(1);
        let first = locks.try_lock("a", ttl).await.unwrap().expect("free");
        assert!(locks.try_lock("a", ttl).await.unwrap().is_none());
        let other = locks.try_lock("b", ttl).await.unwrap();
        assert!(other.is_some(), "keys are independent");
        drop(first);
        // Released at once: an eviction right after another must not find it held.
        assert!(locks.try_lock("a", ttl).await.unwrap().is_some());
    }

    #[test]
    fn a_guard_reports_its_loss() {
        let lost = Arc::new(AtomicBool::new(false));
        let guard = LockGuard::on_drop(|| {}).losable(lost.clone());
        assert!(!guard.is_lost());
        lost.store(true, Ordering::SeqCst);
        assert!(guard.is_lost());
        assert!(
            !LockGuard::on_drop(|| {}).is_lost(),
            "in-process locks are never lost"
        );
    }
}
