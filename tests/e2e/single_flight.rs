//! Concurrent requests for one uncached NAR share a single upstream download.

use std::time::Duration;

use futures::future::join_all;

use crate::harness::{Compression, Fixture, http};

const CLIENTS: usize = 20;

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_for_an_uncached_nar_fetch_it_once() {
    let fx = Fixture::new(Compression::Xz).await;
    // ~60 pieces of 64 KiB at 10 ms each: the download lasts long enough for all requests to
    // arrive while it is in flight.
    fx.upstream.throttle_nars(Duration::from_millis(10));
    let narinfo = fx.ncps_narinfo(&fx.closure.blob).await;
    let nar_url = fx.nar_url(&narinfo);
    let upstream_nar = fx.upstream.nar_path(&fx.closure.blob);

    let client = http::client();
    let responses = join_all((0..CLIENTS).map(|_| {
        let (client, url) = (client.clone(), nar_url.clone());
        tokio::spawn(async move { http::fetch(&client, reqwest::Method::GET, &url, &[]).await })
    }))
    .await;

    let mut first: Option<bytes::Bytes> = None;
    for (i, response) in responses.into_iter().enumerate() {
        let resp = response
            .expect("request task")
            .unwrap_or_else(|e| panic!("request {i} for {nar_url}: {e}"))
            .expect_ok_with_length(&format!("request {i} for {nar_url}"));
        narinfo
            .verify_nar(&resp.body)
            .unwrap_or_else(|e| panic!("request {i}: body does not match the narinfo: {e}"));
        match &first {
            None => first = Some(resp.body),
            Some(body) => assert!(*body == resp.body, "request {i} got different bytes"),
        }
    }
    assert_eq!(
        fx.upstream.gets(&upstream_nar),
        1,
        "{CLIENTS} concurrent requests must cause exactly one upstream download of {upstream_nar}"
    );
}
