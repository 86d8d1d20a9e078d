//! [`Upstreams`] against fake upstream servers on 127.0.0.1: ordering by priority, failover,
//! the 404 rule, retries, the negative cache, health transitions and recovery, credentials.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use ncps_nix::{Compression, NarInfo, SecretKey, Sha256Hash, StorePath, StorePathHash};

use crate::{LookupStrategy, Netrc, ProbeSchedule, UpstreamError, UpstreamOptions, Upstreams};

const OK: u8 = 0;
const FAIL_500: u8 = 1;
const HANG: u8 = 2;

#[derive(Default)]
struct FakeState {
    cache_info: Mutex<String>,
    /// `/<hash>.narinfo` → body.
    narinfos: Mutex<HashMap<String, String>>,
    mode: AtomicU8,
    narinfo_gets: AtomicUsize,
    probes: AtomicUsize,
    delay_ms: AtomicU64,
    authorization: Mutex<Vec<String>>,
}

struct Fake {
    url: String,
    state: Arc<FakeState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fake {
    async fn start(priority: u32) -> Fake {
        let state = Arc::new(FakeState::default());
        *state.cache_info.lock().unwrap() =
            format!("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: {priority}\n");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new().fallback(handle).with_state(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Fake { url, state, task }
    }

    fn set_mode(&self, mode: u8) {
        self.state.mode.store(mode, Ordering::SeqCst);
    }

    fn add(&self, narinfo: &NarInfo) {
        self.state.narinfos.lock().unwrap().insert(
            format!("/{}.narinfo", narinfo.store_path.hash()),
            narinfo.render(),
        );
    }

    fn gets(&self) -> usize {
        self.state.narinfo_gets.load(Ordering::SeqCst)
    }
}

async fn handle(State(state): State<Arc<FakeState>>, headers: HeaderMap, uri: Uri) -> Response {
    if let Some(auth) = headers.get("authorization") {
        let auth = auth.to_str().unwrap_or_default().to_string();
        state.authorization.lock().unwrap().push(auth);
    }
    let path = uri.path();
    if path == "/nix-cache-info" {
        state.probes.fetch_add(1, Ordering::SeqCst);
    } else {
        state.narinfo_gets.fetch_add(1, Ordering::SeqCst);
    }
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    match state.mode.load(Ordering::SeqCst) {
        FAIL_500 => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        HANG => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        _ => {}
    }
    if path == "/nix-cache-info" {
        return state.cache_info.lock().unwrap().clone().into_response();
    }
    match state.narinfos.lock().unwrap().get(path) {
        Some(text) => text.clone().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

fn key() -> SecretKey {
    SecretKey::generate("upstream-test-1").unwrap()
}

fn hash(n: u8) -> StorePathHash {
    StorePathHash::from_bytes([n; 20])
}

fn narinfo(n: u8, key: &SecretKey) -> NarInfo {
    let mut info = NarInfo {
        store_path: StorePath::parse(&format!("/nix/store/{}-test-{n}", hash(n))).unwrap(),
        url: format!("nar/{}.nar.xz", Sha256Hash::digest(&[n])),
        compression: Compression::Xz,
        file_hash: None,
        file_size: None,
        nar_hash: Sha256Hash::digest(&[n, n]),
        nar_size: 100,
        references: vec![],
        deriver: None,
        sigs: vec![],
        ca: None,
    };
    info.sign(key);
    info
}

/// Short timeouts and a fast probe schedule, so that failures are quick to provoke.
fn options(lookup: LookupStrategy) -> UpstreamOptions {
    UpstreamOptions {
        dialer_timeout: Duration::from_millis(500),
        response_header_timeout: Duration::from_millis(300),
        stall_timeout: Duration::from_secs(2),
        retry_backoff: Duration::from_millis(10),
        last_resort_timeout: Duration::from_millis(300),
        probes: ProbeSchedule {
            probe_interval: Duration::from_secs(60),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_millis(200),
        },
        lookup,
        ..UpstreamOptions::default()
    }
}

async fn started(fakes: &[&Fake], key: &SecretKey, options: &UpstreamOptions) -> Upstreams {
    let urls: Vec<String> = fakes.iter().map(|f| f.url.clone()).collect();
    let upstreams = Upstreams::new(&urls, vec![key.public_key()], options).unwrap();
    upstreams.start();
    upstreams
}

/// Waits until `cond` holds (at most 5 s).
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const STRATEGIES: [LookupStrategy; 2] = [LookupStrategy::Parallel, LookupStrategy::Sequential];

#[tokio::test]
async fn the_best_priority_that_has_the_path_wins() {
    for strategy in STRATEGIES {
        let key = key();
        // Configured worst first: the order must come from the announced priorities.
        let low = Fake::start(60).await;
        let high = Fake::start(10).await;
        let mid = Fake::start(30).await;
        for fake in [&low, &high, &mid] {
            fake.add(&narinfo(1, &key));
        }
        mid.add(&narinfo(2, &key));
        low.add(&narinfo(2, &key));
        // The best one is also the slowest: its answer must still win.
        high.state.delay_ms.store(100, Ordering::SeqCst);
        let ups = started(&[&low, &high, &mid], &key, &options(strategy)).await;

        let found = ups.find_narinfo(&hash(1)).await.unwrap().unwrap();
        assert_eq!(found.upstream_url, format!("{}/", high.url), "{strategy:?}");
        let found = ups.find_narinfo(&hash(2)).await.unwrap().unwrap();
        assert_eq!(found.upstream_url, format!("{}/", mid.url), "{strategy:?}");

        let order: Vec<_> = ups.health().into_iter().map(|h| h.priority).collect();
        assert_eq!(order, [Some(10), Some(30), Some(60)]);
    }
}

#[tokio::test]
async fn sequential_lookup_stops_at_the_first_hit() {
    let key = key();
    let a = Fake::start(10).await;
    let b = Fake::start(20).await;
    a.add(&narinfo(1, &key));
    let ups = started(&[&a, &b], &key, &options(LookupStrategy::Sequential)).await;
    ups.find_narinfo(&hash(1)).await.unwrap().unwrap();
    assert_eq!(b.gets(), 0);
}

#[tokio::test]
async fn a_failing_upstream_fails_over_is_marked_unhealthy_and_skipped() {
    for strategy in STRATEGIES {
        let key = key();
        let best = Fake::start(10).await;
        let other = Fake::start(20).await;
        best.add(&narinfo(1, &key));
        other.add(&narinfo(1, &key));
        other.add(&narinfo(2, &key));
        let ups = started(&[&best, &other], &key, &options(strategy)).await;
        ups.find_narinfo(&hash(1)).await.unwrap().unwrap();
        assert!(ups.health()[0].healthy);

        best.set_mode(FAIL_500);
        let before = best.gets();
        let found = ups.find_narinfo(&hash(2)).await.unwrap().unwrap();
        assert_eq!(found.upstream_url, format!("{}/", other.url));
        assert_eq!(
            best.gets() - before,
            3,
            "two retries, then given up ({strategy:?})"
        );
        let health = ups.health();
        assert_eq!(
            health[0].url,
            format!("{}/", other.url),
            "healthy ones first"
        );
        assert!(!health[1].healthy);
        assert!(health[1].last_error.as_deref().unwrap().contains("500"));

        // Skipped while unhealthy, as long as a healthy upstream has the path.
        let before = best.gets();
        ups.find_narinfo(&hash(1)).await.unwrap().unwrap();
        assert_eq!(best.gets(), before);
    }
}

#[tokio::test]
async fn a_404_is_never_retried() {
    let key = key();
    let a = Fake::start(10).await;
    let ups = started(&[&a], &key, &options(LookupStrategy::Parallel)).await;
    assert!(ups.find_narinfo(&hash(9)).await.unwrap().is_none());
    assert_eq!(a.gets(), 1);
}

#[tokio::test]
async fn a_skipped_unhealthy_upstream_turns_a_miss_into_an_error_not_a_404() {
    let key = key();
    let healthy = Fake::start(10).await;
    let sick = Fake::start(20).await;
    let mut o = options(LookupStrategy::Parallel);
    o.negative_ttl = Duration::ZERO;
    let ups = started(&[&healthy, &sick], &key, &o).await;

    sick.set_mode(FAIL_500);
    let err = ups.find_narinfo(&hash(1)).await.unwrap_err();
    assert!(
        matches!(err, UpstreamError::Status { status: 500, .. }),
        "{err}"
    );
    assert!(!ups.health()[1].healthy);

    // Still asked, once and briefly, as a last resort: a hang becomes a quick 504.
    sick.set_mode(HANG);
    let before = sick.gets();
    let started_at = Instant::now();
    let err = ups.find_narinfo(&hash(1)).await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(started_at.elapsed() < Duration::from_secs(2));
    assert_eq!(sick.gets() - before, 1);

    // Once it answers 404 too, the miss is definitive (and the upstream healthy again).
    sick.set_mode(OK);
    assert!(ups.find_narinfo(&hash(1)).await.unwrap().is_none());
    assert!(ups.health().iter().all(|h| h.healthy));

    // And an unhealthy upstream that has the path serves it.
    sick.set_mode(FAIL_500);
    ups.find_narinfo(&hash(3)).await.unwrap_err();
    sick.set_mode(OK);
    sick.add(&narinfo(3, &key));
    let found = ups.find_narinfo(&hash(3)).await.unwrap().unwrap();
    assert_eq!(found.upstream_url, format!("{}/", sick.url));
}

#[tokio::test]
async fn every_upstream_down_is_a_fast_error() {
    let key = key();
    let a = Fake::start(10).await;
    let b = Fake::start(20).await;
    let ups = started(&[&a, &b], &key, &options(LookupStrategy::Parallel)).await;
    ups.find_narinfo(&hash(1)).await.unwrap(); // warm: both probed and healthy
    a.set_mode(HANG);
    b.set_mode(HANG);
    for round in 0..3 {
        let started_at = Instant::now();
        let err = ups.find_narinfo(&hash(2)).await.unwrap_err();
        assert!(err.is_timeout(), "{err}");
        assert!(
            started_at.elapsed() < Duration::from_secs(3),
            "round {round}: {:?}",
            started_at.elapsed()
        );
    }
    assert!(ups.health().iter().all(|h| !h.healthy));
}

#[tokio::test]
async fn a_refused_connection_is_an_error_and_no_upstream_is_a_404() {
    let key = key();
    // A port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let o = options(LookupStrategy::Parallel);
    let ups = Upstreams::new(
        &[format!("http://127.0.0.1:{port}")],
        vec![key.public_key()],
        &o,
    )
    .unwrap();
    ups.start();
    let started_at = Instant::now();
    let err = ups.find_narinfo(&hash(1)).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Transport { .. }), "{err}");
    // The cause is named, not only "error sending request".
    assert!(err.to_string().to_lowercase().contains("refused"), "{err}");
    assert!(started_at.elapsed() < Duration::from_secs(3));

    let none = Upstreams::new(&[], vec![], &o).unwrap();
    none.start();
    assert!(none.is_empty());
    assert!(none.find_narinfo(&hash(1)).await.unwrap().is_none());
    assert!(none.health().is_empty());
}

#[tokio::test]
async fn the_negative_cache_spares_upstreams_and_expires() {
    let key = key();
    let a = Fake::start(10).await;
    let b = Fake::start(20).await;
    let mut o = options(LookupStrategy::Parallel);
    o.negative_ttl = Duration::from_millis(300);
    let ups = started(&[&a, &b], &key, &o).await;
    for _ in 0..20 {
        assert!(ups.find_narinfo(&hash(7)).await.unwrap().is_none());
    }
    assert_eq!((a.gets(), b.gets()), (1, 1));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(ups.find_narinfo(&hash(7)).await.unwrap().is_none());
    assert_eq!((a.gets(), b.gets()), (2, 2));

    // Errors are never remembered.
    b.set_mode(FAIL_500);
    ups.find_narinfo(&hash(8)).await.unwrap_err();
    b.set_mode(OK);
    b.add(&narinfo(8, &key));
    assert!(ups.find_narinfo(&hash(8)).await.unwrap().is_some());
}

#[tokio::test]
async fn an_unhealthy_upstream_recovers_on_its_own() {
    let key = key();
    let a = Fake::start(10).await;
    let b = Fake::start(20).await;
    b.add(&narinfo(1, &key));
    let ups = started(&[&a, &b], &key, &options(LookupStrategy::Parallel)).await;
    a.set_mode(FAIL_500);
    ups.find_narinfo(&hash(1)).await.unwrap().unwrap();
    assert!(!ups.health()[1].healthy);
    let probes = a.state.probes.load(Ordering::SeqCst);
    // Probed again with backoff while it fails…
    until("re-probes", || {
        a.state.probes.load(Ordering::SeqCst) >= probes + 2
    })
    .await;
    assert!(!ups.health()[1].healthy);
    // …and back without any request asking for it.
    a.set_mode(OK);
    until("healthy again", || ups.health().iter().all(|h| h.healthy)).await;
    assert_eq!(ups.health()[0].priority, Some(10));
}

#[tokio::test]
async fn a_foreign_store_dir_makes_an_upstream_unhealthy() {
    let key = key();
    let a = Fake::start(10).await;
    *a.state.cache_info.lock().unwrap() = "StoreDir: /gnu/store\n".into();
    a.add(&narinfo(1, &key));
    let ups = started(&[&a], &key, &options(LookupStrategy::Parallel)).await;
    until("probed", || !ups.health()[0].healthy).await;
    let health = ups.health();
    assert!(
        health[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("/gnu/store")
    );
}

#[tokio::test]
async fn untrusted_narinfos_are_refused_but_do_not_make_unhealthy() {
    let key = key();
    let other_key = SecretKey::generate("someone-else-1").unwrap();
    let a = Fake::start(10).await;
    a.add(&narinfo(1, &other_key));
    let ups = started(&[&a], &key, &options(LookupStrategy::Parallel)).await;
    let err = ups.find_narinfo(&hash(1)).await.unwrap_err();
    assert!(matches!(err, UpstreamError::Untrusted { .. }), "{err}");
    // The message names both sides: whom the upstream is trusted by, and who signed.
    let message = err.to_string();
    assert!(
        message.contains(&format!("trusted: {}", key.name()))
            && message.contains("signed by: someone-else-1"),
        "{message}"
    );
    assert!(ups.health()[0].healthy);
}

#[tokio::test]
async fn netrc_credentials_are_sent_to_their_host_only() {
    let key = key();
    let private = Fake::start(10).await;
    let public = Fake::start(20).await;
    let private_host = private.url.trim_start_matches("http://");
    let netrc = Netrc::parse(&format!(
        "machine {private_host} login bearer password tok3n\n"
    ))
    .unwrap();
    let mut o = options(LookupStrategy::Parallel);
    o.netrc = Some(Arc::new(netrc));
    let ups = started(&[&private, &public], &key, &o).await;
    ups.find_narinfo(&hash(1)).await.unwrap();
    let sent = private.state.authorization.lock().unwrap().clone();
    assert!(sent.len() >= 2, "probe and narinfo: {sent:?}");
    assert!(sent.iter().all(|a| a == "Bearer tok3n"));
    assert!(public.state.authorization.lock().unwrap().is_empty());
}

/// An upstream that sends one byte of a NAR just before each read would time out never trips
/// the per-read timeout; the pace check cuts it off within a window of two stall timeouts.
#[tokio::test]
async fn a_dripping_nar_body_is_cut_off() {
    use futures::StreamExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let drip = || async {
        let bytes = futures::stream::iter(0..1000).then(|_| async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"x"))
        });
        axum::body::Body::from_stream(bytes)
    };
    let app = Router::new().route("/nar/drip.nar", axum::routing::get(drip));
    let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let options = UpstreamOptions {
        stall_timeout: Duration::from_millis(300),
        ..options(LookupStrategy::Parallel)
    };
    let upstreams = Upstreams::new(
        std::slice::from_ref(&url),
        vec![key().public_key()],
        &options,
    )
    .unwrap();
    let started = Instant::now();
    let mut body = upstreams
        .fetch_nar(&format!("{url}/"), "nar/drip.nar")
        .await
        .unwrap()
        .body;
    let mut error = None;
    while let Some(item) = body.next().await {
        if let Err(e) = item {
            error = Some(e);
            break;
        }
    }
    let error = error.expect("the dripping body must fail");
    assert!(error.is_timeout(), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    task.abort();
}

/// A key named after an upstream's host (`host:port-1`) applies to that upstream only, as in
/// the Go ncps: a narinfo another upstream signs with it is refused. A key named after no
/// upstream applies to all; an upstream no key applies to is refused at construction.
#[tokio::test]
async fn keys_named_after_a_host_apply_to_that_upstream_only() {
    let (a, b) = (Fake::start(10).await, Fake::start(20).await);
    // Two host names for the two fakes (both listen on 127.0.0.1).
    let b_url = b.url.replace("127.0.0.1", "localhost");
    let key_a = SecretKey::generate("127.0.0.1-1").unwrap();
    let key_b = SecretKey::generate("localhost-1").unwrap();
    // A serves a path signed with B's key; B serves one signed with its own.
    a.add(&narinfo(1, &key_b));
    b.add(&narinfo(2, &key_b));
    let urls = vec![a.url.clone(), b_url.clone()];
    let o = options(LookupStrategy::Parallel);
    let ups = Upstreams::new(&urls, vec![key_a.public_key(), key_b.public_key()], &o).unwrap();
    assert!(
        ups.find_narinfo(&hash(1)).await.is_err(),
        "A trusted B's key"
    );
    let found = ups.find_narinfo(&hash(2)).await.unwrap().unwrap();
    assert_eq!(found.upstream_url, format!("{b_url}/"));

    // A key named after neither host applies to both.
    let shared = SecretKey::generate("shared-1").unwrap();
    a.add(&narinfo(3, &shared));
    let ups = Upstreams::new(&urls, vec![key_b.public_key(), shared.public_key()], &o).unwrap();
    assert!(ups.find_narinfo(&hash(3)).await.unwrap().is_some());

    let err = Upstreams::new(&urls, vec![key_b.public_key()], &o).unwrap_err();
    assert!(
        matches!(&err, UpstreamError::NoKey { url } if url.starts_with(&a.url)),
        "{err}"
    );
}
