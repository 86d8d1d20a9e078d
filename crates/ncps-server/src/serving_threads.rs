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
    /// Starts serving thread `index` of `threads`, whose runtime runs until the process ends,
    /// and returns once the thread runs (named, so `ps` and `/proc` show every serving thread
    /// as soon as the first connection is answered).
    fn start(index: usize, threads: usize) -> std::io::Result<ServingThread> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads((BLOCKING_THREADS / threads).max(1))
            .build()?;
        let handle = runtime.handle().clone();
        let (running, started) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name(format!("ncps-serve-{index}"))
            .spawn(move || {
                let _ = running.send(());
                runtime.block_on(std::future::pending::<()>())
            })?;
        started
            .recv()
            .map_err(|_| std::io::Error::other("a serving thread ended before it ran"))?;
        Ok(ServingThread {
            runtime: handle,
            open: Arc::new(AtomicUsize::new(0)),
        })
    }
}

#[cfg(test)]
mod tests {
    /// `start` returns once its thread runs under its name: the threads start with the first
    /// connection, which is then answered, so one look at the process's threads after that
    /// answer sees them all.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_started_serving_thread_already_runs_under_its_name() {
        let _thread = super::ServingThread::start(7, 1).expect("a serving thread");
        let names: Vec<String> = std::fs::read_dir("/proc/self/task")
            .expect("this process's threads")
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .map(|name| name.trim().to_owned())
            .collect();
        assert!(
            names.iter().any(|name| name == "ncps-serve-7"),
            "no thread named ncps-serve-7 yet: {names:?}"
        );
    }
}
