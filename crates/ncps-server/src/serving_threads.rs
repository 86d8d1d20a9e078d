//! The threads client connections are served on: one single-threaded tokio runtime per core (see
//! [`count`]), each connection kept on one of them from its first byte to its last.
//!
//! On tokio's work-stealing runtime a request's tasks wake whichever worker is parked, so a
//! narinfo hit crossed threads several times; at a fixed 5,000 requests/s a fifth of the CPU per
//! hit went to threads waking each other (docs/benchmarks.md, "A runtime per core"). Here a
//! connection's reads, handler, database lookup and writes run on one thread and wake no other,
//! as each nginx worker runs its own connections. Connections go to the thread with the fewest
//! open, so a thread held up by one client does not collect new ones.
//!
//! The threads live as long as the process: sockets are registered with the runtime they were
//! opened on, and what a request opens (a database or upstream connection kept in a pool) is used
//! by other requests and by the shutdown's last flush after the listener is gone. Owned by
//! [`crate::serve`], the one caller.

use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::runtime::Handle;
use tracing::warn;

/// Blocking threads the serving threads' runtimes may run at once, all together: tokio's default
/// for one runtime, which served every connection before the serving threads.
const BLOCKING_THREADS: usize = 512;

/// The process's serving threads.
pub(crate) struct ServingThreads {
    threads: Vec<ServingThread>,
}

/// One serving thread: where its runtime takes tasks, and how many connections it serves.
struct ServingThread {
    runtime: Handle,
    open: Arc<AtomicUsize>,
}

/// Counts a connection as open on its thread until dropped.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ServingThreads {
    /// The process's serving threads, [`count`] of them, started on first use. `None` when no
    /// thread could be started (a process limit): connections are then served on the caller's
    /// runtime.
    pub(crate) fn get() -> Option<&'static ServingThreads> {
        static THREADS: OnceLock<Option<ServingThreads>> = OnceLock::new();
        THREADS
            .get_or_init(|| {
                let threads = count();
                match (0..threads).map(|i| ServingThread::start(i, threads)).collect() {
                    Ok(threads) => Some(ServingThreads { threads }),
                    Err(e) => {
                        warn!(error = %e, "cannot start the serving threads; serving connections on the main runtime");
                        None
                    }
                }
            })
            .as_ref()
    }

    /// Runs `connection` on the thread serving the fewest connections. `connection` is built
    /// there, so the sockets it opens (the client's included) belong to that thread's runtime.
    pub(crate) fn spawn<F, C>(&self, connection: C)
    where
        C: FnOnce() -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let thread = self
            .threads
            .iter()
            .min_by_key(|t| t.open.load(Ordering::Relaxed))
            .expect("at least one serving thread");
        thread.open.fetch_add(1, Ordering::Relaxed);
        let open = Open(thread.open.clone());
        thread.runtime.spawn(async move {
            let _open = open;
            connection().await;
        });
    }
}

/// How many serving threads the process runs: `TOKIO_WORKER_THREADS` when set (tokio's own
/// setting for its runtime's threads, which served connections before the serving threads, so an
/// operator's limit keeps holding), else one per core this process may run on (its CPU affinity
/// and cgroup quota).
pub(crate) fn count() -> usize {
    let set = std::env::var("TOKIO_WORKER_THREADS").ok();
    set.and_then(|n| n.trim().parse::<NonZeroUsize>().ok())
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, NonZeroUsize::get)
}

impl ServingThread {
    /// Starts serving thread `index` of `threads`, whose runtime runs until the process ends.
    fn start(index: usize, threads: usize) -> std::io::Result<ServingThread> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads((BLOCKING_THREADS / threads).max(1))
            .build()?;
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name(format!("ncps-serve-{index}"))
            .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
        Ok(ServingThread {
            runtime: handle,
            open: Arc::new(AtomicUsize::new(0)),
        })
    }
}
