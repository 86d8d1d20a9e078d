//! A broken NAR download from the upstream fails the client's transfer and leaves nothing
//! behind: once the upstream is fixed, the right bytes are served.

use std::time::{Duration, Instant};

use crate::harness::http::Resp;
use crate::harness::narinfo::store_hash;
use crate::harness::upstream::Misbehaviour;
use crate::harness::{Compression, Fixture, FixtureOptions, NarInfo, eventually, http};

async fn download(fx: &Fixture, narinfo: &NarInfo) -> Result<Resp, String> {
    let url = fx.nar_url(narinfo);
    http::fetch(&http::client(), reqwest::Method::GET, &url, &[])
        .await
        .map_err(|e| format!("GET {url}: {e}"))
}

/// `Ok` only for a complete 200 whose bytes match the narinfo.
async fn download_is_good(fx: &Fixture, narinfo: &NarInfo) -> Result<(), String> {
    let resp = download(fx, narinfo).await?;
    if resp.status != 200 {
        return Err(format!("status {}: {}", resp.status, resp.excerpt()));
    }
    narinfo.verify_nar(&resp.body)
}

/// While the upstream is broken, a download from ncps fails visibly to any HTTP client (an
/// error status, or a broken transfer; never a complete 200), and so does a Nix substitution;
/// other clients are served meanwhile. Fixing the upstream is then enough for ncps and Nix to
/// get the right bytes.
async fn broken_then_fixed(fx: &Fixture, fix: impl FnOnce()) {
    let ncps_key = fx.ncps.pubkey().await;
    let narinfo = fx.ncps_narinfo(&fx.closure.blob).await;
    let broken = {
        let url = fx.nar_url(&narinfo);
        tokio::spawn(async move {
            http::fetch(&http::client(), reqwest::Method::GET, &url, &[])
                .await
                .map_err(|e| format!("GET {url}: {e}"))
        })
    };
    others_are_served(fx).await;
    if let Ok(resp) = broken.await.expect("download task") {
        assert_ne!(
            resp.status,
            200,
            "ncps completed a 200 for a NAR the upstream broke (verification: {:?})",
            narinfo.verify_nar(&resp.body)
        );
    }
    fx.env
        .client()
        .substitute_fails(&fx.ncps.url(), &ncps_key, &fx.closure.blob)
        .await;

    let fetches_before_fix = fx.upstream.gets(&fx.upstream.nar_path(&fx.closure.blob));
    fix();
    // A download that started before the fix may still be in flight and fail; later ones must
    // succeed (were anything broken cached, none would).
    eventually("downloading the NAR after the upstream was fixed", || {
        download_is_good(fx, &narinfo)
    })
    .await;
    assert!(
        fx.upstream.gets(&fx.upstream.nar_path(&fx.closure.blob)) > fetches_before_fix,
        "ncps did not fetch the NAR again after the broken download"
    );
    fx.env
        .client()
        .substitute_ok(&fx.ncps.url(), &ncps_key, &fx.closure)
        .await;
}

/// While a download from a broken upstream is in flight, other requests are answered at once:
/// the cache's info and another path's narinfo, each within a second.
async fn others_are_served(fx: &Fixture) {
    let started = Instant::now();
    http::get(&fx.ncps.url_for("nix-cache-info"))
        .await
        .expect_status(200, "nix-cache-info while a download is broken");
    fx.ncps_narinfo(&fx.closure.leaf).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "other clients waited {:?} for a broken download",
        started.elapsed()
    );
}

/// A fixture whose ncps gives up on a silent upstream body after 2 s.
async fn fixture_with_short_stall_timeout(compression: Compression) -> Fixture {
    Fixture::with(
        FixtureOptions::new(compression).ncps_args(&["--cache-upstream-stall-timeout", "2s"]),
    )
    .await
}

/// The upstream sends a NAR's first 64 KiB, then nothing, connection open.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_upstream_nar_is_abandoned_not_cached() {
    let fx = fixture_with_short_stall_timeout(Compression::None).await;
    fx.upstream.misbehave(Some(Misbehaviour::StallNars));
    broken_then_fixed(&fx, || fx.upstream.misbehave(None)).await;
}

/// The upstream drips a NAR one byte every 50 ms: never silent for the stall timeout, but far
/// slower than any real upstream; the download is abandoned instead of holding its lock.
#[tokio::test(flavor = "multi_thread")]
async fn a_dripping_upstream_nar_is_abandoned_not_cached() {
    let fx = fixture_with_short_stall_timeout(Compression::None).await;
    fx.upstream
        .misbehave(Some(Misbehaviour::DripNars(Duration::from_millis(50))));
    broken_then_fixed(&fx, || fx.upstream.misbehave(None)).await;
}

/// The upstream sends a NAR's headers, then breaks the connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_broken_before_the_body_is_not_cached() {
    let fx = Fixture::new(Compression::Xz).await;
    fx.upstream.misbehave(Some(Misbehaviour::BreakNars));
    broken_then_fixed(&fx, || fx.upstream.misbehave(None)).await;
}

/// The upstream's Content-Length is 100 bytes short and the body matches it: a transfer that
/// looks complete. Uncompressed and xz both.
#[tokio::test(flavor = "multi_thread")]
async fn a_short_but_complete_looking_nar_is_not_cached() {
    for compression in [Compression::None, Compression::Xz] {
        let fx = Fixture::new(compression).await;
        fx.upstream.misbehave(Some(Misbehaviour::ShortLengthNars));
        broken_then_fixed(&fx, || fx.upstream.misbehave(None)).await;
    }
}

/// Every NAR request is redirected to itself.
#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_loop_is_an_error_not_a_hang() {
    let fx = Fixture::new(Compression::Xz).await;
    fx.upstream.misbehave(Some(Misbehaviour::RedirectLoopNars));
    broken_then_fixed(&fx, || fx.upstream.misbehave(None)).await;
}

/// Narinfos of several MB: refused (a 502, not remembered as a miss), nothing kept; the same
/// path is served once the upstream behaves.
#[tokio::test(flavor = "multi_thread")]
async fn a_narinfo_of_several_megabytes_is_refused_not_cached() {
    let fx = Fixture::new(Compression::Xz).await;
    fx.upstream.misbehave(Some(Misbehaviour::HugeNarinfos));
    let url = fx
        .ncps
        .url_for(&format!("{}.narinfo", store_hash(&fx.closure.blob)));
    let resp = http::get(&url).await;
    assert_eq!(resp.status, 502, "GET {url}: {}", resp.excerpt());
    fx.upstream.misbehave(None);
    http::get(&url)
        .await
        .expect_status(200, "the narinfo once the upstream behaves");
    let ncps_key = fx.ncps.pubkey().await;
    fx.env
        .client()
        .substitute_ok(&fx.ncps.url(), &ncps_key, &fx.closure)
        .await;
}

/// The upstream announces the full Content-Length, sends half and closes the connection.
#[tokio::test(flavor = "multi_thread")]
async fn truncated_upstream_nar_is_not_cached() {
    let fx = Fixture::new(Compression::Xz).await;
    fx.upstream.truncate_nars(true);
    broken_then_fixed(&fx, || fx.upstream.truncate_nars(false)).await;
}

/// One byte of the NAR file flipped after signing: a well-formed NAR (uncompressed, the byte
/// is inside the random blob) whose hash does not match the signed narinfo.
#[tokio::test(flavor = "multi_thread")]
async fn corrupted_upstream_nar_is_not_cached() {
    let fx = Fixture::new(Compression::None).await;
    let file = fx.upstream.nar_file(&fx.closure.blob);
    let original = std::fs::read(&file).expect("read NAR");
    let mut corrupted = original.clone();
    corrupted[original.len() / 2] ^= 0x01;
    std::fs::write(&file, corrupted).expect("corrupt NAR");
    broken_then_fixed(&fx, || {
        std::fs::write(&file, &original).expect("restore NAR")
    })
    .await;
}

/// A stored whole file damaged on disk (cut short) is noticed when it is opened, by its size,
/// and healed like a missing one: the client gets the whole NAR, fetched again, and the file
/// on disk is whole again.
#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_stored_file_is_fetched_again_not_served() {
    let fx = Fixture::new(Compression::Xz).await;
    let narinfo = fx.ncps_narinfo(&fx.closure.blob).await;
    download_is_good(&fx, &narinfo)
        .await
        .expect("first download");
    let file = fx.stored_nar_file(&fx.closure.blob).await;
    let whole = eventually("the NAR is stored", || async {
        std::fs::read(&file).map_err(|e| e.to_string())
    })
    .await;
    std::fs::write(&file, &whole[..whole.len() / 2]).expect("truncate the stored file");
    download_is_good(&fx, &narinfo)
        .await
        .expect("a damaged stored file must be healed, not served");
    eventually("the stored file is whole again", || async {
        match std::fs::read(&file) {
            Ok(bytes) if bytes == whole => Ok(()),
            Ok(bytes) => Err(format!("{} bytes of {}", bytes.len(), whole.len())),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
}

/// A lock service that cannot be reached (Redis on a closed port): a NAR that must be
/// downloaded is a 503 with `Retry-After` (the client retries; nothing is remembered as a
/// miss), while narinfos, which need no lock, are served.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_lock_service_is_a_503_for_downloads_only() {
    let dead_redis = crate::harness::ncps::free_port().to_string();
    let fx = Fixture::with(
        crate::harness::FixtureOptions::new(Compression::Xz).ncps_args(&[
            "--cache-lock-backend",
            "redis",
            "--cache-redis-addrs",
            &dead_redis,
        ]),
    )
    .await;
    let narinfo = fx.ncps_narinfo(&fx.closure.blob).await;
    let url = fx.nar_url(&narinfo);
    let resp = http::get(&url)
        .await
        .expect_status(503, "NAR with the lock service down");
    assert!(
        resp.header("retry-after").is_some(),
        "a 503 says when to retry: {:?}",
        resp.headers
    );
    assert_eq!(
        fx.upstream.gets(&fx.upstream.nar_path(&fx.closure.blob)),
        0,
        "nothing is downloaded without the lock"
    );
}
