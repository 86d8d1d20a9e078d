//! How urgently CPU-heavy work runs. Work no client waits for (lazy chunking, which compresses
//! at a high zstd level) runs on a thread the kernel schedules only when a core would otherwise
//! be idle, so it never slows the requests and clients it shares the machine with; it still
//! runs at full speed on an idle machine. Chunking decides its priority here and nowhere else.
// The one system call that lowers a thread's scheduling class has no safe wrapper in libc.
#![allow(unsafe_code)]

use std::io;

use tokio::sync::oneshot;
use tracing::debug;

/// Whether a client waits for a piece of work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Priority {
    /// A client waits for the result: tokio's blocking pool, at the process's priority.
    #[default]
    Client,
    /// Nobody waits (background chunking): a thread of its own in the kernel's idle class.
    Idle,
}

/// Starts `work` on a blocking thread at `priority` at once (like `spawn_blocking`, not when
/// first polled) and returns its result to come. An idle thread is never a pool thread: an
/// unprivileged process cannot raise a thread's class back, so a pool thread once lowered would
/// slow every later request that lands on it.
pub(crate) fn run_blocking<T, F>(
    priority: Priority,
    work: F,
) -> impl Future<Output = io::Result<T>> + Send + 'static
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let started = match priority {
        Priority::Client => {
            // The pool thread's result goes through the channel like an idle thread's.
            drop(tokio::task::spawn_blocking(move || {
                let _ = tx.send(work());
            }));
            Ok(())
        }
        Priority::Idle => std::thread::Builder::new()
            .name("ncps-idle".into())
            .spawn(move || {
                lower_this_thread();
                // The receiver is gone only when the caller stopped waiting.
                let _ = tx.send(work());
            })
            .map(drop),
    };
    async move {
        started?;
        rx.await
            .map_err(|_| io::Error::other("a blocking thread panicked"))
    }
}

/// Moves the calling thread to `SCHED_IDLE`. A failure (a seccomp filter, a foreign kernel)
/// only means the work runs at normal priority, so it is logged and otherwise ignored.
#[cfg(target_os = "linux")]
fn lower_this_thread() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 names the calling thread; `param` is a valid sched_param that outlives the
    // call, which only reads it.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc != 0 {
        debug!(error = %io::Error::last_os_error(), "background work keeps normal priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_this_thread() {
    debug!("background work keeps normal priority on this system");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scheduling policy of the calling thread.
    #[cfg(target_os = "linux")]
    fn policy_here() -> i32 {
        // SAFETY: pid 0 names the calling thread; the call only returns a number.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn idle_work_runs_in_the_idle_class_and_client_work_does_not() {
        let idle = run_blocking(Priority::Idle, policy_here).await.unwrap();
        assert_eq!(idle, libc::SCHED_IDLE, "background work at normal priority");
        let client = run_blocking(Priority::Client, policy_here).await.unwrap();
        assert_eq!(client, libc::SCHED_OTHER, "a client's work lowered");
    }

    #[tokio::test]
    async fn a_panic_on_an_idle_thread_is_an_error_not_a_hang() {
        let work = run_blocking(Priority::Idle, || -> u8 { panic!("boom") });
        let result = tokio::time::timeout(std::time::Duration::from_secs(10), work)
            .await
            .expect("the caller still waits for a thread that panicked");
        assert!(result.is_err());
    }
}
