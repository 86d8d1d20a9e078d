//! A broken NAR download from the upstream fails the client's transfer and leaves nothing
//! behind: once the upstream is fixed, the right bytes are served.

use crate::harness::{Compression, Fixture, NarInfo, http};

/// GETs the NAR of `narinfo` from ncps; true only for a complete 200 whose bytes match the
/// narinfo.
async fn nar_download_is_good(fx: &Fixture, narinfo: &NarInfo) -> Result<(), String> {
    let url = fx.nar_url(narinfo);
    let resp = http::fetch(&http::client(), reqwest::Method::GET, &url, &[])
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if resp.status != 200 {
        return Err(format!("GET {url}: {}", resp.status));
    }
    narinfo.verify_nar(&resp.body)
}

/// After a failed first download (with the upstream still broken), fixing the upstream
/// must be enough for ncps and for a Nix client to get the right bytes.
async fn broken_then_fixed(fx: &Fixture, fix: impl FnOnce()) {
    let ncps_key = fx.ncps.pubkey().await;
    let narinfo = fx.ncps_narinfo(&fx.closure.blob).await;
    let first = nar_download_is_good(fx, &narinfo).await;
    assert!(first.is_err(), "ncps served a NAR the upstream broke");
    fx.env
        .client()
        .substitute_fails(&fx.ncps.url(), &ncps_key, &fx.closure.blob)
        .await;

    let fetches_before_fix = fx.upstream.gets(&fx.upstream.nar_path(&fx.closure.blob));
    fix();
    nar_download_is_good(fx, &narinfo)
        .await
        .unwrap_or_else(|e| panic!("after the upstream was fixed: {e}"));
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
