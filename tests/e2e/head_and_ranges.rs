//! HEAD answers what GET would (status and Content-Length) for every way a NAR is served: a NAR
//! known from its narinfo but not downloaded yet, a stored whole file, the spliced chunks of a
//! chunked NAR, and the conversions (plain `.nar` from a whole file or from chunks, another
//! compression than the stored one). Byte ranges, suffix ranges and 416 work on every stored
//! form with a known length.

use bytes::Bytes;

use crate::harness::{Compression, Fixture, FixtureOptions, NarInfo, eventually, http};

/// HEAD and GET of `url` agree: same status; a length stated by HEAD is the one GET states and
/// delivers; a HEAD without a length has a GET without one. Returns the GET.
async fn head_matches_get(url: &str) -> http::Resp {
    let head = http::head(url).await;
    let get = http::get(url).await;
    assert_eq!(head.status, get.status, "HEAD {url} vs GET");
    assert!(head.body.is_empty(), "HEAD {url} sent a body");
    assert_eq!(
        head.content_length(),
        get.content_length(),
        "HEAD {url} and GET state different lengths"
    );
    if let Some(length) = get.content_length() {
        assert_eq!(length, get.body.len() as u64, "GET {url}: Content-Length");
    }
    get
}

/// Ranges on a form whose `full` body is known: a prefix, a middle slice, a suffix, an open
/// end, and a start past the end (416 naming the size).
async fn ranges_work(url: &str, full: &Bytes) {
    let n = full.len() as u64;
    assert!(n > 300, "{url}: the NAR is too small to test ranges");
    let client = http::client();
    let cases: [(String, std::ops::Range<u64>); 4] = [
        ("bytes=0-99".into(), 0..100),
        (format!("bytes=100-{}", n / 2), 100..n / 2 + 1),
        ("bytes=-100".into(), n - 100..n),
        (format!("bytes={}-", n - 7), n - 7..n),
    ];
    for (range, want) in cases {
        let resp = http::fetch(&client, reqwest::Method::GET, url, &[("Range", &range)])
            .await
            .unwrap_or_else(|e| panic!("GET {url} {range}: {e}"))
            .expect_status(206, &format!("GET {url} {range}"));
        assert_eq!(
            resp.header("content-range"),
            Some(format!("bytes {}-{}/{n}", want.start, want.end - 1).as_str()),
            "GET {url} {range}: Content-Range"
        );
        assert_eq!(
            resp.body,
            full.slice(want.start as usize..want.end as usize),
            "GET {url} {range}: bytes"
        );
        assert_eq!(resp.content_length(), Some(want.end - want.start));
    }
    let past = format!("bytes={}-", n + 10);
    let resp = http::fetch(&client, reqwest::Method::GET, url, &[("Range", &past)])
        .await
        .unwrap_or_else(|e| panic!("GET {url} {past}: {e}"))
        .expect_status(416, &format!("GET {url} {past}"));
    assert_eq!(
        resp.header("content-range"),
        Some(format!("bytes */{n}").as_str())
    );
}

/// `nar/<NarHash>.nar<ext>` of the NAR a narinfo describes.
fn by_nar_hash(fx: &Fixture, narinfo: &NarInfo, ext: &str) -> String {
    fx.ncps
        .url_for(&format!("nar/{}.nar{ext}", narinfo.nar_hash_nixbase32()))
}

#[tokio::test(flavor = "multi_thread")]
async fn whole_files_head_matches_get_and_ranges_work() {
    let fx = Fixture::new(Compression::Xz).await;
    let blob = &fx.closure.blob;
    let narinfo = fx.ncps_narinfo(blob).await;
    let url = fx.nar_url(&narinfo);
    let upstream_nar = fx.upstream.nar_path(blob);

    // Known, not downloaded: HEAD states the upstream file's size and downloads nothing.
    let head = http::head(&url)
        .await
        .expect_status(200, "HEAD before download");
    assert_eq!(
        head.content_length(),
        narinfo
            .get("FileSize")
            .map(|s| s.parse().expect("FileSize")),
        "HEAD of a NAR not downloaded yet"
    );
    assert_eq!(
        fx.upstream.gets(&upstream_nar),
        0,
        "HEAD started a download"
    );
    let fetched = http::get(&url)
        .await
        .expect_ok_with_length("GET (download)");
    assert_eq!(head.content_length(), fetched.content_length());
    narinfo.verify_nar(&fetched.body).expect("downloaded bytes");

    // Stored whole file.
    let stored = head_matches_get(&url).await.expect_ok_with_length("stored");
    assert_eq!(stored.body, fetched.body);
    ranges_work(&url, &stored.body).await;

    // The plain NAR, converted from the whole file: its length is NarSize, known up front.
    let plain_url = by_nar_hash(&fx, &narinfo, "");
    let plain = head_matches_get(&plain_url)
        .await
        .expect_ok_with_length("plain");
    narinfo
        .verify_nar_content("none", &plain.body)
        .expect("plain NAR");

    // Another compression than the stored one: converted, length unknown to both.
    let zst = head_matches_get(&by_nar_hash(&fx, &narinfo, ".zst"))
        .await
        .expect_status(200, "zstd conversion");
    assert_eq!(zst.content_length(), None);
    narinfo
        .verify_nar_content("zstd", &zst.body)
        .expect("converted NAR");
    assert_eq!(fx.upstream.gets(&upstream_nar), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn chunked_nars_head_matches_get_and_ranges_work() {
    let fx =
        Fixture::with(FixtureOptions::new(Compression::Xz).ncps_args(&["--cache-cdc-enabled"]))
            .await;
    let blob = &fx.closure.blob;
    let narinfo = fx.ncps_narinfo(blob).await;
    let url = fx.nar_url(&narinfo);
    assert!(url.ends_with(".nar.zst"), "{}", narinfo.text);
    // Downloaded and chunked on the way.
    let fetched = http::get(&url).await.expect_status(200, "GET (download)");
    narinfo
        .verify_nar_content("zstd", &fetched.body)
        .expect("downloaded frames");

    // The chunk list is committed just after the download has been streamed; until then the
    // NAR is being stored and its length is not known yet.
    eventually("the chunked NAR stored", || async {
        match http::head(&url).await.content_length() {
            Some(_) => Ok(()),
            None => Err("HEAD states no length yet".to_string()),
        }
    })
    .await;
    // The spliced frames, now stored: known length, ranges honoured.
    let spliced = head_matches_get(&url)
        .await
        .expect_ok_with_length("spliced");
    narinfo
        .verify_nar_content("zstd", &spliced.body)
        .expect("spliced frames");
    ranges_work(&url, &spliced.body).await;
    // Its narinfo now states the spliced file's size.
    let settled = fx.ncps_narinfo(blob).await;
    assert_eq!(
        settled.get("FileSize"),
        Some(spliced.body.len().to_string().as_str()),
        "{}",
        settled.text
    );

    // The plain NAR from the chunks: NarSize, known up front.
    let plain = head_matches_get(&by_nar_hash(&fx, &narinfo, ""))
        .await
        .expect_ok_with_length("plain from chunks");
    narinfo
        .verify_nar_content("none", &plain.body)
        .expect("plain NAR from chunks");

    // xz from the chunks: converted, length unknown to both.
    let xz = head_matches_get(&by_nar_hash(&fx, &narinfo, ".xz"))
        .await
        .expect_status(200, "xz from chunks");
    assert_eq!(xz.content_length(), None);
    narinfo
        .verify_nar_content("xz", &xz.body)
        .expect("xz from chunks");
}
