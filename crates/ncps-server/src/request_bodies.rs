//! Request bodies: how much a route takes, how long a client may stall one, and what becomes
//! of the part a handler leaves unread.
//!
//! A body that stops arriving fails after a while ([`RequestBody`]), as a response nobody reads
//! is abandoned: a client that vanished without closing (a crash, a lost network) would
//! otherwise hold its connection slot, and an upload's temporary file, for as long as the
//! process runs.
//!
//! An HTTP/1 server that answers before reading a whole request body, and then closes the
//! connection, has the kernel reset it: a client still sending gets a broken pipe or a reset,
//! and may never read the answer (a 413 for an upload over the limit, a 401 for a missing
//! password). Two rules keep such answers readable, and keep refused bytes off the wire:
//! - A body declared larger than its route takes is refused before a byte of it is read
//!   ([`limited`]). A client that asked `Expect: 100-continue` (curl always does for a PUT, and
//!   so does `nix copy --to`) is then never told to go on, and sends nothing.
//! - A body its handler left unread is read and dropped for a moment after the answer
//!   ([`RequestBody`]), as nginx's lingering close does: a client that sends its whole body
//!   before it reads finds the answer waiting, and a body drained to its end even leaves the
//!   connection open for the next request.
//!
//! Bodies a handler holds whole in memory (narinfos, realisations, build logs) share one budget
//! ([`BufferBudget`], 256 MiB): a body waits up to 5 s for room, then the client is told to retry
//! (503), so no number of concurrent uploads can make the server hold more.
//!
//! [`RequestBody::wrap`] is applied to every request by the connection code; [`limited`] is
//! the one way routes that take bodies set their limit.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, Version, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use ncps_core::CacheError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::debug;

use crate::ApiError;
use crate::connections::StallLimit;

/// Longest an unread body is drained after its answer: enough for any client to read the
/// answer, short enough that a refused client holds its connection slot only briefly.
const LINGER_FOR: Duration = Duration::from_secs(10);
/// Draining stops sooner once the client sends nothing for this long.
const LINGER_SILENCE: Duration = Duration::from_secs(2);

/// All request bodies held in memory at once (narinfos, realisations, build logs; NARs are
/// streamed to disk): however many clients upload, they cannot make the server hold more.
const BUFFERED_BODIES: u64 = 256 * 1024 * 1024;
/// Longest a body waits for room in [`BUFFERED_BODIES`] before the client is told to retry.
const BUFFER_WAIT: Duration = Duration::from_secs(5);

/// The memory that request bodies held whole by their handlers share.
#[derive(Clone)]
pub(crate) struct BufferBudget {
    /// One permit per KiB.
    kib: Arc<Semaphore>,
    total_kib: u32,
    wait: Duration,
}

impl BufferBudget {
    /// `bytes` in all; a body waits at most `wait` for its share.
    pub(crate) fn new(bytes: u64, wait: Duration) -> Self {
        let total_kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        Self {
            kib: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
            wait,
        }
    }

    /// Room for a body of `bytes` (never more than the whole budget, so any body allowed by
    /// its route fits once the others are done), or 503 when none frees up in time.
    async fn hold(&self, bytes: u64) -> Result<OwnedSemaphorePermit, CacheError> {
        let kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .min(self.total_kib);
        let room = self.kib.clone().acquire_many_owned(kib);
        match tokio::time::timeout(self.wait, room).await {
            Ok(Ok(held)) => Ok(held),
            _ => Err(CacheError::Busy(
                "too many uploads are being received at once; try again shortly".into(),
            )),
        }
    }
}

impl Default for BufferBudget {
    fn default() -> Self {
        Self::new(BUFFERED_BODIES, BUFFER_WAIT)
    }
}

/// How a route takes request bodies.
#[derive(Clone)]
pub(crate) struct BodyRule {
    /// The most bytes a body may have.
    limit: usize,
    /// Set when the handler holds the whole body in memory.
    budget: Option<BufferBudget>,
}

impl BodyRule {
    /// Bodies of at most `limit` bytes, streamed by the handler.
    pub(crate) fn streamed(limit: usize) -> Self {
        Self {
            limit,
            budget: None,
        }
    }

    /// Bodies of at most `limit` bytes, held whole by the handler within `budget`.
    pub(crate) fn held(limit: usize, budget: &BufferBudget) -> Self {
        Self {
            limit,
            budget: Some(budget.clone()),
        }
    }
}

/// `route` (the methods of a route that take a body: the check runs before each of them),
/// taking request bodies by `rule`. A body declared larger than the limit is refused with 413
/// before it is read; one that grows past it while read is refused then (by the extractor, or
/// by the handler for a streamed body). A body held in memory first waits for room in its
/// budget.
pub(crate) fn limited<S>(route: MethodRouter<S>, rule: BodyRule) -> MethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    let limit = rule.limit;
    route
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(rule, admit_body))
}

/// Answers 413 at once to a request whose declared body is over the limit, without reading it;
/// holds room in the budget for a body to be held in memory while its handler runs.
async fn admit_body(State(rule): State<BodyRule>, request: Request, next: Next) -> Response {
    let limit = u64::try_from(rule.limit).unwrap_or(u64::MAX);
    let hint = request.body().size_hint();
    // A declared length is the hint's lower bound; a chunked body's is 0.
    if hint.lower() > limit {
        return ApiError::from(CacheError::TooLarge { limit }).into_response();
    }
    let _room = match &rule.budget {
        // A chunked body may grow to the limit.
        Some(budget) => match budget.hold(hint.exact().unwrap_or(limit)).await {
            Ok(room) => Some(room),
            Err(busy) => return ApiError::from(busy).into_response(),
        },
        None => None,
    };
    next.run(request).await
}

/// A request body as handlers see it: it fails once the client sends nothing of it for its
/// stall limit, and, when dropped unread, is drained in the background for a moment (see the
/// module's documentation), unless draining it would ask the client for a body it was waiting
/// for permission to send.
pub(crate) struct RequestBody {
    /// `None` once dropped (handed to the drain).
    inner: Option<Incoming>,
    /// How long a read may wait for the client's next byte.
    stall: StallLimit,
    /// HTTP/1: over HTTP/2 a refused stream is reset alone, and the connection is unharmed.
    http1: bool,
    /// The client waits for `100 Continue` before sending, which hyper sends on the first read.
    waits_for_continue: bool,
}

impl RequestBody {
    /// `request` with its body wrapped, failing after `stall` without a byte.
    pub(crate) fn wrap(request: hyper::Request<Incoming>, stall: Duration) -> hyper::Request<Self> {
        let http1 = request.version() <= Version::HTTP_11;
        let waits_for_continue = expects_continue(request.headers());
        request.map(|inner| Self {
            inner: Some(inner),
            stall: StallLimit::new(stall),
            http1,
            waits_for_continue,
        })
    }

    /// Whether what is left of the body may be drained: only what the client sends anyway.
    fn may_drain(&self) -> bool {
        self.http1 && !self.waits_for_continue
    }
}

fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        // Reading is the go-ahead: hyper has now sent `100 Continue`.
        this.waits_for_continue = false;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let read = Pin::new(inner).poll_frame(cx);
        this.stall.watch(cx, read).map(|watched| match watched {
            Ok(frame) => frame.map(|f| f.map_err(BodyError::Client)),
            Err(stall) => Some(Err(BodyError::Stalled(stall))),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// The connection failed or the client sent a malformed body.
    #[error(transparent)]
    Client(hyper::Error),
    /// The client sent nothing of the body for this long.
    #[error("the client sent nothing of the request body for {0:?}")]
    Stalled(Duration),
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        let Some(body) = self.inner.take() else {
            return;
        };
        if body.is_end_stream() || !self.may_drain() {
            return;
        }
        // Dropped by the connection's task, so on its runtime; without one, hyper closes.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(body));
        }
    }
}

/// Reads and drops `body` until its end, [`LINGER_SILENCE`] without a byte, an error, or
/// [`LINGER_FOR`] in all; dropping it then lets hyper close the connection.
async fn drain(mut body: Incoming) {
    let deadline = Instant::now() + LINGER_FOR;
    let mut drained: u64 = 0;
    let end = loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx));
        let waited = tokio::time::timeout(LINGER_SILENCE, frame);
        match tokio::time::timeout_at(deadline, waited).await {
            Ok(Ok(Some(Ok(frame)))) => {
                if let Some(data) = frame.data_ref() {
                    drained += data.len() as u64;
                }
            }
            Ok(Ok(None)) => break "the end of the body",
            Ok(Ok(Some(Err(_)))) => break "the client went away",
            Ok(Err(_)) => break "the client went silent",
            Err(_) => break "the time allowed",
        }
    };
    debug!(
        bytes = drained,
        until = end,
        "drained a request body left unread"
    );
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::{get, put};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::connections::tests::{quick, serving};

    /// Bodies `/small` takes.
    const LIMIT: usize = 1024;
    /// A body far over [`LIMIT`], and far over what socket buffers hold on loopback, so a server
    /// that stops reading makes the sender fail.
    const HUGE: usize = 16 << 20;

    /// A server whose `PUT /small` takes bodies up to [`LIMIT`]; its address and how many bodies
    /// the handler received.
    async fn server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let taken = Arc::new(AtomicUsize::new(0));
        let counter = taken.clone();
        let small = put(move |body: Bytes| async move {
            counter.fetch_add(1, Ordering::SeqCst);
            format!("took {}", body.len())
        });
        let router = Router::new().route("/", get(|| async { "ok" })).route(
            "/small",
            limited(small, BodyRule::held(LIMIT, &BufferBudget::default())),
        );
        let (addr, stop, _) = serving(router, quick(8)).await;
        // Served for the rest of the test.
        std::mem::forget(stop);
        (addr, taken)
    }

    /// Reads one response head, and its body of `Content-Length` bytes, from `stream`.
    async fn read_response(stream: &mut TcpStream) -> String {
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        let read = async {
            while !got.ends_with(b"\r\n\r\n") {
                if stream.read(&mut byte).await.unwrap() == 0 {
                    break;
                }
                got.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&got).to_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |n| n.trim().parse::<usize>().unwrap());
            let mut body = vec![0u8; length];
            stream.read_exact(&mut body).await.unwrap();
            got.extend_from_slice(&body);
        };
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("answered within 5 s");
        String::from_utf8(got).unwrap()
    }

    fn head(length: Option<usize>, extra: &str) -> String {
        let framing = match length {
            Some(n) => format!("Content-Length: {n}"),
            None => "Transfer-Encoding: chunked".into(),
        };
        format!("PUT /small HTTP/1.1\r\nHost: x\r\n{framing}\r\n{extra}\r\n")
    }

    /// Sends `request` (a head and as much of its body as given) on a new connection and reads
    /// the final answer (past a `100 Continue`); the connection stays open.
    async fn ask(addr: std::net::SocketAddr, request: &[u8]) -> (TcpStream, String) {
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(request)
            .await
            .expect("the server takes the whole request");
        let mut answer = read_response(&mut client).await;
        if answer.starts_with("HTTP/1.1 100") {
            answer = read_response(&mut client).await;
        }
        (client, answer)
    }

    /// `head` followed by `body`.
    fn with_body(head: String, body: &[u8]) -> Vec<u8> {
        [head.as_bytes(), body].concat()
    }

    #[tokio::test]
    async fn a_body_declared_too_large_is_refused_before_the_client_is_told_to_send_it() {
        let (addr, taken) = server().await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        let request = head(Some(HUGE), "Expect: 100-continue\r\n");
        client.write_all(request.as_bytes()).await.unwrap();
        let answer = read_response(&mut client).await;
        assert!(
            answer.starts_with("HTTP/1.1 413"),
            "want a 413 first, not a go-ahead: {answer}"
        );
        assert!(
            answer.contains(&format!("limit of {LIMIT} bytes")),
            "{answer}"
        );
        // Nothing more: no late `100 Continue`, and the connection closes at once rather than
        // waiting for a body the client was never told to send.
        let mut rest = Vec::new();
        tokio::time::timeout(LINGER_SILENCE / 2, client.read_to_end(&mut rest))
            .await
            .expect("closed at once")
            .unwrap();
        assert!(
            rest.is_empty(),
            "after the 413: {:?}",
            String::from_utf8_lossy(&rest)
        );
        assert_eq!(taken.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_client_that_sends_its_whole_refused_body_before_reading_reads_the_answer() {
        let (addr, taken) = server().await;
        let body = vec![b'a'; HUGE];
        // Declared, and refused before it is read; then chunked, and refused once read past
        // the limit.
        let chunked = format!("{HUGE:x}\r\n");
        let requests: [(String, &[u8], &[u8]); 2] = [
            (head(Some(HUGE), ""), &body, b""),
            (head(None, ""), chunked.as_bytes(), &body),
        ];
        for (request, first, second) in requests {
            let end: &[u8] = if second.is_empty() {
                b""
            } else {
                b"\r\n0\r\n\r\n"
            };
            let sent = with_body(request, &[first, second, end].concat());
            let (mut client, answer) = ask(addr, &sent).await;
            assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
            // The body was drained to its end, so the connection serves the next request.
            client
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let next = read_response(&mut client).await;
            assert!(
                next.starts_with("HTTP/1.1 200") && next.ends_with("ok"),
                "{next}"
            );
        }
        assert_eq!(taken.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_refused_client_that_goes_silent_is_let_go() {
        let (addr, _) = server().await;
        let (mut client, answer) = ask(addr, &with_body(head(Some(HUGE), ""), &[b'a'; 4096])).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        let mut rest = Vec::new();
        let waited = tokio::time::timeout(
            LINGER_SILENCE + Duration::from_secs(3),
            client.read_to_end(&mut rest),
        )
        .await;
        assert!(
            waited.is_ok(),
            "still open {:?} after the client went silent",
            LINGER_SILENCE + Duration::from_secs(3)
        );
    }

    #[tokio::test]
    async fn a_body_within_the_limit_is_taken() {
        let (addr, taken) = server().await;
        let request = head(Some(LIMIT), "Expect: 100-continue\r\n");
        let (_, answer) = ask(addr, &with_body(request, &[b'a'; LIMIT])).await;
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with(&format!("took {LIMIT}")),
            "{answer}"
        );
        assert_eq!(taken.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_the_client_stops_sending_fails_after_the_stall_limit() {
        let (addr, taken) = server().await;
        // The rest never comes; the server's stall limit is `quick`'s 300 ms.
        let (_, answer) = ask(addr, &with_body(head(Some(LIMIT), ""), &[b'a'; 10])).await;
        assert!(
            answer.starts_with("HTTP/1.1 400")
                && answer.contains("sent nothing of the request body"),
            "{answer}"
        );
        assert_eq!(taken.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn bodies_held_in_memory_share_one_budget() {
        // Room for one body of the limit, waited for 100 ms.
        let budget = BufferBudget::new(LIMIT as u64, Duration::from_millis(100));
        let entered = Arc::new(tokio::sync::Notify::new());
        let signal = entered.clone();
        let handler = put(move |body: axum::body::Body| async move {
            signal.notify_one();
            match axum::body::to_bytes(body, LIMIT).await {
                Ok(bytes) => (StatusCode::OK, format!("took {}", bytes.len())),
                Err(e) => (StatusCode::BAD_REQUEST, e.to_string()),
            }
        });
        let router =
            Router::new().route("/small", limited(handler, BodyRule::held(LIMIT, &budget)));
        let (addr, stop, _) = serving(router, quick(8)).await;
        std::mem::forget(stop);

        // The first client declares a body as large as the budget and sends part of it: once its
        // handler runs, it holds all the room.
        let mut first = TcpStream::connect(addr).await.unwrap();
        let part = with_body(head(Some(LIMIT), ""), &[b'a'; 10]);
        first.write_all(&part).await.unwrap();
        entered.notified().await;
        // Another, declaring a single byte, finds no room in time and is told to retry.
        let (_, busy) = ask(addr, &with_body(head(Some(1), ""), b"b")).await;
        assert!(
            busy.starts_with("HTTP/1.1 503") && busy.to_lowercase().contains("retry-after"),
            "{busy}"
        );
        // The first body stalls and fails (after `quick`'s 300 ms), which frees its room.
        let failed = read_response(&mut first).await;
        assert!(failed.starts_with("HTTP/1.1 400"), "{failed}");
        let (_, taken) = ask(addr, &with_body(head(Some(LIMIT), ""), &[b'c'; LIMIT])).await;
        assert!(
            taken.starts_with("HTTP/1.1 200") && taken.ends_with(&format!("took {LIMIT}")),
            "{taken}"
        );
    }

    #[test]
    fn only_an_exact_100_continue_counts_as_waiting() {
        let mut headers = HeaderMap::new();
        assert!(!expects_continue(&headers));
        headers.insert(header::EXPECT, "100-Continue".parse().unwrap());
        assert!(expects_continue(&headers));
        headers.insert(header::EXPECT, "200-ok".parse().unwrap());
        assert!(!expects_continue(&headers));
    }
}
