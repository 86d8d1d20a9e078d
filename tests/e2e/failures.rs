//! A broken NAR download from the upstream fails the client's transfer and leaves nothing
//! behind: once the upstream is fixed, the right bytes are served.

use crate::harness::http::Resp;
use crate::harness::{Compression, Fixture, NarInfo, eventually, http};

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
/// error status, or a broken transfer; never a complete 200), and so does a Nix substitution.
/// Fixing the upstream is then enough for ncps and Nix to get the right bytes.
async fn broken_then_fixed(fx: &Fixture, fix: impl FnOnce()) {
    let ncps_key = fx.ncps.pubkey().await;
    let narinfo = fx.ncps_narinfo(&fx.closure.blob).await;
    if let Ok(resp) = download(fx, &narinfo).await {
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
