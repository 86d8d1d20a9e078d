//! The upstream cache: a real binary-cache directory written by `nix copy --to file://`, served
//! over HTTP on 127.0.0.1 by an axum task. The server is only the transport (what
//! `python3 -m http.server` would do), plus what a static server cannot: it counts requests per
//! path and has knobs to misbehave at run time.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::narinfo::{NarInfo, store_hash};

/// NAR bodies are sent in pieces of this size when throttled or truncated.
const PIECE: usize = 64 * 1024;

/// Ways the upstream can break, one at a time (see [`Upstream::misbehave`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misbehaviour {
    /// A NAR's first 64 KiB are sent, then nothing more; the connection stays open.
    StallNars,
    /// A NAR is sent one byte at a time, with this pause between bytes.
    DripNars(Duration),
    /// A NAR's headers are sent, then the connection breaks before any body byte.
    BreakNars,
    /// A NAR's Content-Length is 100 bytes short and that many bytes are sent: a body that
    /// looks complete and is not.
    ShortLengthNars,
    /// Every NAR request is redirected to itself.
    RedirectLoopNars,
    /// Narinfos are padded with comment-like lines to several MB.
    HugeNarinfos,
}

#[derive(Default)]
struct Knobs {
    /// The misbehaviour in force, if any.
    misbehaviour: Mutex<Option<Misbehaviour>>,
    /// Pause after each 64 KiB piece of a NAR body, in milliseconds (0: send at once).
    throttle_ms: AtomicU64,
    /// Answer 500 to everything.
    fail_all: AtomicBool,
    /// Announce the full Content-Length of a NAR, send half of it, then break the connection.
    truncate_nars: AtomicBool,
    /// Wait this long (ms) before answering any request, headers included: an overloaded
    /// upstream.
    delay_ms: AtomicU64,
    /// Answer 401 unless the request's `Authorization` header is exactly this.
    required_authorization: Mutex<Option<String>>,
    /// While true, NAR bodies (headers sent) wait before their first byte.
    hold_nars: tokio::sync::watch::Sender<bool>,
    /// Compress narinfos and NARs for transport (`Content-Encoding: zstd`) when the request
    /// accepts zstd, as a web server with transport compression would.
    transport_zstd: AtomicBool,
    /// Responses sent with `Content-Encoding: zstd`.
    zstd_responses: AtomicU64,
}

struct Shared {
    dir: PathBuf,
    knobs: Knobs,
    /// Every request as `METHOD /path`, in arrival order.
    log: Mutex<Vec<String>>,
    /// GET requests per path.
    gets: Mutex<HashMap<String, usize>>,
}

pub struct Upstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Upstream {
    /// Serves `dir` (a `file://` binary cache) on a fresh port of 127.0.0.1.
    pub async fn serve(dir: &Path) -> Upstream {
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            knobs: Knobs::default(),
            log: Mutex::default(),
            gets: Mutex::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream address");
        let (shutdown, task) = spawn_server(listener, shared.clone());
        Upstream {
            addr,
            shared,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// Serves again on the same address after [`Upstream::stop`], as an upstream coming back
    /// from an outage.
    pub async fn restart(&mut self) {
        assert!(
            self.task.is_none(),
            "restart() of an upstream that is running"
        );
        let mut attempts = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                // The old socket may linger for a moment.
                Err(_) if attempts < 50 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("rebind upstream on {}: {e}", self.addr),
            }
        };
        let (shutdown, task) = spawn_server(listener, self.shared.clone());
        self.shutdown = Some(shutdown);
        self.task = Some(task);
    }

    /// Compresses narinfos and NARs for transport with zstd when the request accepts it.
    pub fn offer_transport_zstd(&self) {
        self.shared
            .knobs
            .transport_zstd
            .store(true, Ordering::SeqCst);
    }

    /// Responses sent compressed for transport (`Content-Encoding: zstd`).
    pub fn zstd_responses(&self) -> u64 {
        self.shared.knobs.zstd_responses.load(Ordering::SeqCst)
    }

    /// Rewrites `nix-cache-info` to announce `priority` (lower is preferred).
    pub fn set_priority(&self, priority: u32) {
        let text = format!("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: {priority}\n");
        std::fs::write(self.shared.dir.join("nix-cache-info"), text).expect("write nix-cache-info");
    }

    /// Delays every response (headers included) by `delay`: an overloaded upstream.
    pub fn delay_responses(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).expect("small delay");
        self.shared.knobs.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Answers 401 to requests whose `Authorization` header is not exactly `value`.
    pub fn require_authorization(&self, value: Option<&str>) {
        *self
            .shared
            .knobs
            .required_authorization
            .lock()
            .expect("lock") = value.map(str::to_owned);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn throttle_nars(&self, pause_per_piece: Duration) {
        let ms = u64::try_from(pause_per_piece.as_millis()).expect("small pause");
        self.shared.knobs.throttle_ms.store(ms, Ordering::SeqCst);
    }

    /// Breaks the upstream in one way (`None`: behaves again).
    pub fn misbehave(&self, how: Option<Misbehaviour>) {
        *self.shared.knobs.misbehaviour.lock().expect("lock") = how;
    }

    pub fn fail_all(&self, on: bool) {
        self.shared.knobs.fail_all.store(on, Ordering::SeqCst);
    }

    pub fn truncate_nars(&self, on: bool) {
        self.shared.knobs.truncate_nars.store(on, Ordering::SeqCst);
    }

    /// From now on, NAR responses send their headers and then wait, before the first byte of
    /// the body, until [`Upstream::release_nars`]: a download that is certainly in flight.
    pub fn hold_nars(&self) {
        self.shared.knobs.hold_nars.send_replace(true);
    }

    /// Lets held NAR bodies (and later ones) go.
    pub fn release_nars(&self) {
        self.shared.knobs.hold_nars.send_replace(false);
    }

    /// Closes the listener and every connection: afterwards connections are refused.
    pub async fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(mut task) = self.task.take() {
            // Graceful shutdown waits for responses in flight; do not wait for ever.
            if tokio::time::timeout(Duration::from_secs(10), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }

    /// How many GET requests `path` (e.g. `/nar/….nar.xz`) received.
    pub fn gets(&self, path: &str) -> usize {
        let gets = self.shared.gets.lock().expect("lock");
        gets.get(path).copied().unwrap_or(0)
    }

    pub fn requests(&self) -> Vec<String> {
        self.shared.log.lock().expect("lock").clone()
    }

    pub fn narinfo_file(&self, store_path: &str) -> PathBuf {
        self.shared
            .dir
            .join(format!("{}.narinfo", store_hash(store_path)))
    }

    /// The narinfo this upstream serves for `store_path` (read from its directory).
    pub fn narinfo(&self, store_path: &str) -> NarInfo {
        let file = self.narinfo_file(store_path);
        NarInfo::parse(&std::fs::read_to_string(&file).expect("read upstream narinfo"))
    }

    /// The URL path (`/nar/…`) of `store_path`'s NAR on this upstream.
    pub fn nar_path(&self, store_path: &str) -> String {
        format!("/{}", self.narinfo(store_path).field("URL"))
    }

    /// The file holding `store_path`'s NAR in the served directory.
    pub fn nar_file(&self, store_path: &str) -> PathBuf {
        self.shared.dir.join(self.narinfo(store_path).field("URL"))
    }
}

impl Drop for Upstream {
    #[expect(clippy::print_stderr, reason = "test diagnostics")]
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "===== upstream {} requests =====\n{}\n===== end of upstream requests =====",
                self.addr,
                self.requests().join("\n")
            );
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn spawn_server(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let app = Router::new().fallback(handle).with_state(shared);
    let (shutdown, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
            .expect("upstream server");
    });
    (shutdown, task)
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: header::HeaderMap,
) -> Response {
    let path = uri.path().to_owned();
    shared
        .log
        .lock()
        .expect("lock")
        .push(format!("{method} {path}"));
    if method == Method::GET {
        *shared
            .gets
            .lock()
            .expect("lock")
            .entry(path.clone())
            .or_default() += 1;
    }
    let delay = shared.knobs.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let required = shared
        .knobs
        .required_authorization
        .lock()
        .expect("lock")
        .clone();
    if let Some(required) = required {
        let sent = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if sent != Some(required.as_str()) {
            return status(StatusCode::UNAUTHORIZED);
        }
    }
    if shared.knobs.fail_all.load(Ordering::SeqCst) {
        return status(StatusCode::INTERNAL_SERVER_ERROR);
    }
    if method != Method::GET && method != Method::HEAD {
        return status(StatusCode::METHOD_NOT_ALLOWED);
    }
    let rel = path.trim_start_matches('/');
    let safe = !rel.is_empty()
        && rel
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/:!+=".contains(&b))
        && rel
            .split('/')
            .all(|seg| !seg.is_empty() && !seg.starts_with('.'));
    if !safe {
        return status(StatusCode::NOT_FOUND);
    }
    let misbehaviour = *shared.knobs.misbehaviour.lock().expect("lock");
    let is_nar = rel.starts_with("nar/") && method == Method::GET;
    if is_nar && misbehaviour == Some(Misbehaviour::RedirectLoopNars) {
        return Response::builder()
            .status(StatusCode::FOUND)
            .header(header::LOCATION, &path)
            .body(Body::empty())
            .expect("response");
    }
    let Ok(mut content) = tokio::fs::read(shared.dir.join(rel)).await else {
        return status(StatusCode::NOT_FOUND);
    };
    if rel.ends_with(".narinfo") && misbehaviour == Some(Misbehaviour::HugeNarinfos) {
        // Lines no narinfo parser knows, 5 MB of them.
        for i in 0..100_000 {
            content.extend_from_slice(format!("X-Padding-{i}: {}\n", "x".repeat(40)).as_bytes());
        }
    }
    let content_type = if rel == "nix-cache-info" {
        "text/x-nix-cache-info"
    } else if rel.ends_with(".narinfo") {
        "text/x-nix-narinfo"
    } else if rel.starts_with("nar/") {
        "application/x-nix-nar"
    } else {
        "application/octet-stream"
    };
    let accepts_zstd = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("zstd")));
    if accepts_zstd
        && shared.knobs.transport_zstd.load(Ordering::SeqCst)
        && misbehaviour.is_none()
        && (is_nar || rel.ends_with(".narinfo"))
    {
        shared.knobs.zstd_responses.fetch_add(1, Ordering::SeqCst);
        let encoded = zstd::encode_all(&content[..], 3).expect("zstd");
        return Response::builder()
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CONTENT_ENCODING, "zstd")
            .header(header::CONTENT_LENGTH, encoded.len())
            .body(Body::from(encoded))
            .expect("response");
    }
    let mut length = content.len();
    let body = match misbehaviour.filter(|_| is_nar) {
        Some(Misbehaviour::ShortLengthNars) => {
            length = length.saturating_sub(100);
            content.truncate(length);
            Body::from(content)
        }
        Some(how) => misbehaving_nar_body(Bytes::from(content), how),
        None if is_nar => nar_body(Bytes::from(content), &shared.knobs),
        None => Body::from(content),
    };
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, length)
        .body(body)
        .expect("response")
}

fn status(code: StatusCode) -> Response {
    Response::builder()
        .status(code)
        .body(Body::from(code.to_string()))
        .expect("response")
}

/// A NAR body broken as `how` says.
fn misbehaving_nar_body(content: Bytes, how: Misbehaviour) -> Body {
    match how {
        Misbehaviour::StallNars => {
            let first = content.slice(..PIECE.min(content.len()));
            let stalled = futures::stream::iter([Ok::<_, io::Error>(first)])
                .chain(futures::stream::pending());
            Body::from_stream(stalled)
        }
        Misbehaviour::DripNars(pause) => {
            let drip = futures::stream::unfold(0, move |offset| {
                let content = content.clone();
                async move {
                    if offset >= content.len() {
                        return None;
                    }
                    if offset > 0 {
                        tokio::time::sleep(pause).await;
                    }
                    Some((
                        Ok::<_, io::Error>(content.slice(offset..offset + 1)),
                        offset + 1,
                    ))
                }
            });
            Body::from_stream(drip)
        }
        Misbehaviour::BreakNars => Body::from_stream(futures::stream::once(async {
            Err::<Bytes, _>(io::Error::other("upstream breaks this NAR on purpose"))
        })),
        // Answered before the body is chosen.
        Misbehaviour::ShortLengthNars
        | Misbehaviour::RedirectLoopNars
        | Misbehaviour::HugeNarinfos => Body::from(content),
    }
}

/// The NAR body, paced and/or cut short as the knobs say.
fn nar_body(content: Bytes, knobs: &Knobs) -> Body {
    let pause = Duration::from_millis(knobs.throttle_ms.load(Ordering::SeqCst));
    let truncate = knobs.truncate_nars.load(Ordering::SeqCst);
    let mut hold = knobs.hold_nars.subscribe();
    if *hold.borrow() {
        let held = futures::stream::once(async move {
            let _ = hold.wait_for(|held| !held).await;
            Ok::<_, io::Error>(content)
        });
        return Body::from_stream(held);
    }
    if pause.is_zero() && !truncate {
        return Body::from(content);
    }
    let end = if truncate {
        content.len() / 2
    } else {
        content.len()
    };
    let pieces = futures::stream::unfold(0, move |offset| {
        let content = content.clone();
        async move {
            if offset == usize::MAX {
                return None;
            }
            if offset >= end {
                // An error after fewer bytes than Content-Length makes hyper drop the connection.
                return truncate.then(|| {
                    let err = io::Error::other("upstream truncates this NAR on purpose");
                    (Err(err), usize::MAX)
                });
            }
            if offset > 0 && !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            let next = (offset + PIECE).min(end);
            Some((Ok::<_, io::Error>(content.slice(offset..next)), next))
        }
    });
    Body::from_stream(pieces)
}
