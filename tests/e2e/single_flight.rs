//! Concurrent requests for one uncached NAR share a single upstream download, with NARs kept
//! whole and with eager chunking. The upstream holds the NAR's body until every request has its
//! response headers, so all of them provably overlap the download (none is served from storage
//! afterwards), and the upstream must then have been asked exactly once.

use crate::harness::narinfo::NarInfo;
use crate::harness::{Compression, Fixture, FixtureOptions, http};

const CLIENTS: usize = 20;

/// Every response is a 200 with the same bytes, which `verify` accepts, and the upstream served
/// the NAR once.
fn assert_one_download(
    fx: &Fixture,
    nar_url: &str,
    responses: Vec<http::Resp>,
    verify: impl Fn(&[u8]) -> Result<(), String>,
) {
    let mut first: Option<bytes::Bytes> = None;
    for (i, resp) in responses.into_iter().enumerate() {
        let what = format!("request {i} for {nar_url}");
        let resp = resp.expect_status(200, &what);
        verify(&resp.body)
            .unwrap_or_else(|e| panic!("{what}: body does not match the narinfo: {e}"));
        match &first {
            None => first = Some(resp.body),
            Some(body) => assert!(*body == resp.body, "{what}: got different bytes"),
        }
    }
    let upstream_nar = fx.upstream.nar_path(&fx.closure.blob);
    assert_eq!(
        fx.upstream.gets(&upstream_nar),
        1,
        "{CLIENTS} overlapping requests must cause exactly one upstream download of {upstream_nar}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_for_an_uncached_nar_fetch_it_once() {
    let fx = Fixture::new(Compression::Xz).await;
    let narinfo: NarInfo = fx.ncps_narinfo(&fx.closure.blob).await;
    let nar_url = fx.nar_url(&narinfo);
    let responses = http::overlapping_gets(&fx.upstream, &nar_url, CLIENTS).await;
    for (i, resp) in responses.iter().enumerate() {
        assert_eq!(
            resp.content_length(),
            Some(resp.body.len() as u64),
            "request {i}: a 200 must carry a Content-Length equal to its body's length"
        );
    }
    assert_one_download(&fx, &nar_url, responses, |body| narinfo.verify_nar(body));
}

/// With eager chunking, the clients follow the frames as they are produced, and all get the
/// same frames.
#[tokio::test(flavor = "multi_thread")]
async fn cdc_concurrent_cold_requests_fetch_once() {
    let fx =
        Fixture::with(FixtureOptions::new(Compression::Xz).ncps_args(&["--cache-cdc-enabled"]))
            .await;
    let narinfo = fx.ncps_narinfo(&fx.closure.blob).await;
    let nar_url = fx.nar_url(&narinfo);
    assert!(nar_url.ends_with(".nar.zst"), "{}", narinfo.text);
    let responses = http::overlapping_gets(&fx.upstream, &nar_url, CLIENTS).await;
    assert_one_download(&fx, &nar_url, responses, |body| {
        narinfo.verify_nar_content("zstd", body)
    });
}
