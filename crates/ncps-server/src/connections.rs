//! Accepting connections, within limits a hostile or broken client cannot get around.
//!
//! - A connection must send a whole request head within [`ConnectionLimits::header_read`] of
//!   opening, and of finishing its previous request: idle keep-alive connections and half-sent
//!   requests are closed then (hyper's header-read timeout covers both).
//! - A response the client takes no byte of for [`ConnectionLimits::write_stall`] is abandoned,
//!   and a request body it sends no byte of for [`ConnectionLimits::body_stall`] fails.
//! - At most [`ConnectionLimits::max_connections`] are open at once (the binary derives it from
//!   the open-file limit, keeping room for storage, database and upstream sockets); beyond it new
//!   connections wait in the listen backlog instead of failing to be accepted.
//! - A failed accept (out of file descriptors, a connection reset before it was accepted) is
//!   retried shortly, never fatal.
//! - Each connection is served on one serving thread ([`ServingThreads`]), the accept loop staying
//!   on the caller's runtime.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::request_bodies::RequestBody;
use crate::sendfile::SendfileStream;
use crate::serving_threads::ServingThreads;

/// Most bytes of response body a connection queues for its socket (and of request body it reads
/// at once), against hyper's 400 KB. Body pieces are slices of the buffers storage reads into, so
/// a queued slice keeps its whole buffer alive: once reads from the page cache stopped waiting,
/// 100 concurrent chunked downloads kept hyper's queues full and peaked at 81-84 MiB instead of
/// 61-65 MiB; with 64 KiB, 65-67 MiB at 1.3x the throughput. The socket's own buffer keeps the
/// connection busy meanwhile. Uploads read in pieces of at most this size (within 5% of the
/// default's MB/s here); request heads stay far below it.
const CONNECTION_BUFFER: usize = 64 * 1024;

/// What one client may hold of the server.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Longest wait for a request head, from a connection's start or its previous request's end.
    pub header_read: Duration,
    /// Longest a response waits for the client to take any byte.
    pub write_stall: Duration,
    /// Longest a request body being read waits for the client's next byte.
    pub body_stall: Duration,
    /// Longest the server waits for requests in flight once asked to stop.
    pub drain: Duration,
}

impl ConnectionLimits {
    /// The defaults for `max_connections` connections.
    pub fn new(max_connections: usize) -> Self {
        Self {
            max_connections,
            header_read: Duration::from_secs(30),
            write_stall: Duration::from_secs(60),
            body_stall: Duration::from_secs(60),
            drain: Duration::from_secs(30),
        }
    }
}

/// Serves `router` on `listener` until `stop` completes, then lets requests in flight finish
/// for up to `limits.drain`. Connections are accepted on the caller's runtime and each is then
/// served on one serving thread (see [`ServingThreads`]).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    stop: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .max_buf_size(CONNECTION_BUFFER);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.header_read);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut stop => break,
        };
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of descriptors, or a connection gone before it was accepted: the
                    // listener still works, so wait a moment rather than spin.
                    warn!(error = %e, "cannot accept a connection; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        // Nagle's algorithm delays small writes (narinfos, response heads) by up to 40 ms per
        // round trip; a cache answers many small requests, so send at once.
        if let Err(e) = tcp.set_nodelay(true) {
            debug!(error = %e, "cannot set TCP_NODELAY");
        }
        // Handed to a serving thread as a plain socket: the thread's runtime registers it.
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(e) => {
                warn!(error = %e, "cannot hand a connection to a serving thread; closed");
                continue;
            }
        };
        let builder = builder.clone();
        let router = router.clone();
        let watcher = graceful.watcher();
        let connection = move || async move {
            // The connection's slot is held for as long as this task runs.
            let _slot = slot;
            let tcp = match TcpStream::from_std(tcp) {
                Ok(tcp) => tcp,
                Err(e) => {
                    warn!(error = %e, "a serving thread cannot take a connection over; closed");
                    return;
                }
            };
            // Telling HTTP/1 from HTTP/2 reads the first bytes before any protocol timeout
            // runs: a connection that sends none in time is closed here.
            let mut first = [0u8; 1];
            if tokio::time::timeout(limits.header_read, tcp.peek(&mut first))
                .await
                .is_err()
            {
                return;
            }
            let io = TokioIo::new(WriteStallLimit::new(tcp, limits.write_stall));
            let service = TowerToHyperService::new(
                router.map_request(move |request| RequestBody::wrap(request, limits.body_stall)),
            );
            let connection = builder.serve_connection_with_upgrades(io, service);
            if let Err(e) = watcher.watch(connection).await {
                debug!(error = %e, "connection ended with an error");
            }
        };
        match ServingThreads::get() {
            Some(threads) => threads.spawn(connection),
            None => drop(tokio::spawn(connection())),
        }
    }
    drop(listener);
    if tokio::time::timeout(limits.drain, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(timeout = ?limits.drain, "requests still in flight after the drain timeout; exiting");
    }
}

/// How long a side of a connection may wait on the other: armed when an operation is pending,
/// disarmed by any progress. Writes of responses and reads of request bodies each keep one.
pub(crate) struct StallLimit {
    limit: Duration,
    /// Armed while an operation waits.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl StallLimit {
    /// A limit of `limit` without progress.
    pub(crate) fn new(limit: Duration) -> Self {
        Self {
            limit,
            deadline: None,
        }
    }

    /// `result` as it is once ready; while it is pending, `Err(limit)` once the limit passed.
    pub(crate) fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<T>,
    ) -> Poll<Result<T, Duration>> {
        if let Poll::Ready(value) = result {
            self.deadline = None;
            return Poll::Ready(Ok(value));
        }
        let limit = self.limit;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        ready!(deadline.as_mut().poll(cx));
        Poll::Ready(Err(limit))
    }
}

/// A client connection whose writes fail with `TimedOut` once the peer has taken nothing for
/// `stall`.
struct WriteStallLimit {
    tcp: SendfileStream,
    stall: StallLimit,
}

impl WriteStallLimit {
    fn new(tcp: TcpStream, stall: Duration) -> Self {
        Self {
            tcp: SendfileStream::new(tcp),
            stall: StallLimit::new(stall),
        }
    }

    /// Turns a pending write into a timeout once the stall limit passed; progress disarms it.
    fn limit<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        self.stall.watch(cx, result).map(|watched| {
            watched.unwrap_or_else(|stall| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the client took nothing for {stall:?}"),
                ))
            })
        })
    }
}

impl AsyncRead for WriteStallLimit {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteStallLimit {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.tcp).poll_write(cx, buf);
        self.limit(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        self.limit(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.tcp).poll_flush(cx);
        self.limit(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A server with `limits` whose `/big` answers 64 MiB; its address and its stop switch.
    async fn server(
        limits: ConnectionLimits,
    ) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let router = Router::new()
            .route("/", get(|| async { "ok" }))
            .route("/big", get(|| async { vec![7u8; 64 << 20] }));
        let (addr, stop, _) = serving(router, limits).await;
        (addr, stop)
    }

    /// `router` served with `limits`: its address, its stop switch and the task serving it.
    pub(crate) async fn serving(
        router: Router,
        limits: ConnectionLimits,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, router, limits, async {
            let _ = rx.await;
        }));
        (addr, tx, task)
    }

    /// Limits short enough for tests to see them act.
    pub(crate) fn quick(max_connections: usize) -> ConnectionLimits {
        ConnectionLimits {
            max_connections,
            header_read: Duration::from_millis(300),
            write_stall: Duration::from_millis(300),
            body_stall: Duration::from_millis(300),
            drain: Duration::from_secs(1),
        }
    }

    /// Reads until the server closes the connection; `None` if it stays open for 3 s.
    async fn closed_within_3s(stream: &mut TcpStream) -> Option<Vec<u8>> {
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut got)).await;
        match read {
            Ok(_) => Some(got),
            Err(_) => None,
        }
    }

    async fn get_root(addr: std::net::SocketAddr) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut got = String::new();
        tokio::time::timeout(Duration::from_secs(3), stream.read_to_string(&mut got))
            .await
            .expect("answered in time")
            .unwrap();
        got
    }

    /// What `GET /thread` on the connection `stream` answers: the name of the thread that
    /// served it. The connection stays open.
    async fn thread_serving(stream: &mut TcpStream) -> String {
        stream
            .write_all(b"GET /thread HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"<end>") {
            let n = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf))
                .await
                .expect("answered in time")
                .unwrap();
            assert_ne!(n, 0, "closed before answering");
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8(got).unwrap();
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        body.trim_end_matches("<end>").to_string()
    }

    #[tokio::test]
    async fn each_connection_is_served_on_one_serving_thread_and_they_share_the_load() {
        let router = Router::new().route(
            "/thread",
            get(|| async {
                // Awaiting lets another thread take the task over, were the runtime one that
                // steals work.
                tokio::task::yield_now().await;
                let name = std::thread::current()
                    .name()
                    .unwrap_or("unnamed")
                    .to_string();
                format!("{name}<end>")
            }),
        );
        let limits = ConnectionLimits {
            header_read: Duration::from_secs(30),
            ..quick(100)
        };
        let (addr, _stop, _) = serving(router, limits).await;
        let cores = crate::serving_threads::count();
        // The other tests here hold a few connections on these threads meanwhile: with this
        // many more, each thread still gets some of this test's.
        let mut connections = Vec::new();
        for _ in 0..4 * cores + 8 {
            connections.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut threads = std::collections::BTreeSet::new();
        for stream in &mut connections {
            let first = thread_serving(stream).await;
            assert!(
                first.starts_with("ncps-serve-"),
                "served on {first}, not a serving thread"
            );
            for _ in 0..5 {
                assert_eq!(
                    thread_serving(stream).await,
                    first,
                    "a connection moved between threads"
                );
            }
            threads.insert(first);
        }
        assert_eq!(
            threads.len(),
            cores,
            "connections opened at once went only to {threads:?}"
        );
    }

    #[tokio::test]
    async fn a_request_in_flight_when_asked_to_stop_is_answered_before_serve_returns() {
        let router = Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                "done"
            }),
        );
        let (addr, stop, server) = serving(router, quick(100)).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !server.is_finished(),
            "serve returned with a request in flight"
        );
        let answer = closed_within_3s(&mut client)
            .await
            .expect("the connection was closed after its answer");
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("done"),
            "{answer}"
        );
        tokio::time::timeout(Duration::from_secs(3), server)
            .await
            .expect("serve returned once the request was answered")
            .unwrap();
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "still accepting after the stop"
        );
    }

    #[tokio::test]
    async fn silent_half_sent_and_idle_connections_are_closed() {
        let (addr, _stop) = server(quick(100)).await;
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut half = TcpStream::connect(addr).await.unwrap();
        half.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(
            closed_within_3s(&mut silent).await.is_some(),
            "a silent connection stays"
        );
        assert!(
            closed_within_3s(&mut half).await.is_some(),
            "a half-sent request stays"
        );
        let answered = closed_within_3s(&mut idle)
            .await
            .expect("an idle keep-alive stays");
        assert!(String::from_utf8_lossy(&answered).starts_with("HTTP/1.1 200"));
    }

    #[tokio::test]
    async fn a_response_nobody_reads_is_abandoned() {
        let (addr, _stop) = server(quick(1)).await;
        let mut unread = TcpStream::connect(addr).await.unwrap();
        unread
            .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // With one connection allowed, the next client is served only once the unread
        // response was given up and its connection closed.
        assert!(get_root(addr).await.starts_with("HTTP/1.1 200"));
        drop(unread);
    }

    #[tokio::test]
    async fn beyond_the_limit_connections_wait_instead_of_failing() {
        let (addr, _stop) = server(ConnectionLimits {
            header_read: Duration::from_secs(30),
            ..quick(2)
        })
        .await;
        let _first = TcpStream::connect(addr).await.unwrap();
        let second = TcpStream::connect(addr).await.unwrap();
        let waiting = tokio::spawn(get_root(addr));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !waiting.is_finished(),
            "a third connection was served beyond the limit"
        );
        drop(second);
        let answer = tokio::time::timeout(Duration::from_secs(3), waiting)
            .await
            .expect("served once a connection closed")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"));
    }
}
