//! NARs stored whole that lazy chunking should pick up.
//!
//! The ingest side pushes a NAR once its whole file is committed; the lazy-chunking workers of
//! [`crate::Maintenance`] take them in order. Nothing else may use it. A NAR queued in a process
//! without workers (an admin command) is simply not chunked now: the recovery job finds every
//! NAR stored whole but not chunked and queues it again.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ncps_nix::Sha256Hash;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

#[derive(Default)]
struct Pending {
    order: VecDeque<(Sha256Hash, Instant)>,
    queued: HashSet<Sha256Hash>,
}

/// A queue of NARs to chunk, shared by its producers and its workers; each NAR is queued once
/// until a worker takes it.
#[derive(Clone)]
pub(crate) struct ChunkQueue {
    pending: Arc<Mutex<Pending>>,
    ready: Arc<Notify>,
    /// How many NARs wait (the `lazy_chunking_queued` metric): lazy chunking waits for quiet
    /// downloads, so operators see the backlog it builds up.
    queued: Gauge,
}

impl ChunkQueue {
    /// An empty queue that keeps `queued` at its length.
    pub fn new(queued: Gauge) -> Self {
        Self {
            pending: Arc::default(),
            ready: Arc::default(),
            queued,
        }
    }

    /// Queues a NAR (again only once a worker took it).
    pub fn push(&self, nar: Sha256Hash) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.queued.insert(nar) {
            p.order.push_back((nar, Instant::now()));
            self.queued.set(p.order.len() as i64);
            drop(p);
            self.ready.notify_one();
        }
    }

    /// The next NAR to chunk and when it was queued, waiting for one.
    pub async fn next(&self) -> (Sha256Hash, Instant) {
        loop {
            let notified = self.ready.notified();
            {
                let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((nar, queued)) = p.order.pop_front() {
                    p.queued.remove(&nar);
                    self.queued.set(p.order.len() as i64);
                    return (nar, queued);
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_nar_is_queued_once_and_taken_in_order() {
        let gauge = Gauge::default();
        let q = ChunkQueue::new(gauge.clone());
        let (a, b) = (Sha256Hash::digest(b"a"), Sha256Hash::digest(b"b"));
        q.push(a);
        q.push(b);
        q.push(a);
        assert_eq!(gauge.get(), 2, "the gauge counts each waiting NAR once");
        assert_eq!(q.next().await.0, a);
        assert_eq!(gauge.get(), 1);
        assert_eq!(q.next().await.0, b);
        assert_eq!(gauge.get(), 0);
        let waiting = tokio::spawn({
            let q = q.clone();
            async move { q.next().await.0 }
        });
        tokio::task::yield_now().await;
        q.push(a);
        assert_eq!(waiting.await.unwrap(), a);
    }
}
