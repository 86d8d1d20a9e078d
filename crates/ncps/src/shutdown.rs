//! Signals that end the server gracefully.

use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

/// Resolves on SIGTERM or SIGINT; in-flight requests then drain before the process exits.
pub async fn signal_received() {
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => info!(signal = "SIGTERM", "shutting down; draining requests"),
        _ = tokio::signal::ctrl_c() => info!(signal = "SIGINT", "shutting down; draining requests"),
    }
}
