//! The binary-cache protocol as Nix clients see it: content types, narinfo format, HEAD,
//! status codes, Range, Content-Length, and rejection of malformed paths.

use crate::harness::narinfo::random_store_hash;
use crate::harness::{Compression, Fixture, NCPS_HOSTNAME, eventually, http};

#[tokio::test(flavor = "multi_thread")]
async fn nix_cache_info() {
    let fx = Fixture::new(Compression::Xz).await;
    let resp = http::get(&fx.ncps.url_for("nix-cache-info"))
        .await
        .expect_ok_with_length("GET /nix-cache-info");
    assert_eq!(resp.header("content-type"), Some("text/x-nix-cache-info"));
    let text = resp.text();
    assert!(text.ends_with('\n'), "{text:?}");
    assert!(
        text.lines().any(|l| l == "StoreDir: /nix/store"),
        "no StoreDir: {text:?}"
    );
    for line in text.lines() {
        assert!(line.contains(": "), "not a `Key: value` line: {line:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pubkey_and_healthz() {
    let fx = Fixture::new(Compression::Xz).await;
    http::get(&fx.ncps.url_for("healthz"))
        .await
        .expect_ok_with_length("GET /healthz");
    let key = fx.ncps.pubkey().await;
    let (name, base64) = key.split_once(':').expect("name:base64");
    assert_eq!(
        name, NCPS_HOSTNAME,
        "the key is named after --cache-hostname"
    );
    // 32 bytes in base64 with padding.
    assert_eq!(base64.len(), 44, "not an ed25519 public key: {key}");
    assert!(base64.ends_with('='), "not an ed25519 public key: {key}");
}

/// The narinfo describes the upstream's path (same NarHash, NarSize, References) and carries
/// a signature by ncps's key, in the format Nix 2.8 parses.
#[tokio::test(flavor = "multi_thread")]
async fn narinfo_is_resigned_by_ncps() {
    let fx = Fixture::new(Compression::Xz).await;
    let url = fx.narinfo_url(&fx.closure.top);
    let resp = http::get(&url).await.expect_ok_with_length(&url);
    assert_eq!(resp.header("content-type"), Some("text/x-nix-narinfo"));
    let text = resp.text();
    assert!(
        text.ends_with('\n'),
        "the narinfo must end with a newline: {text:?}"
    );

    let ours = crate::harness::NarInfo::parse(&text);
    let theirs = fx.upstream.narinfo(&fx.closure.top);
    assert_eq!(ours.field("StorePath"), fx.closure.top);
    for key in ["NarHash", "NarSize"] {
        assert_eq!(
            ours.field(key),
            theirs.field(key),
            "{key} differs from upstream's"
        );
    }
    assert_eq!(ours.references(), theirs.references());
    assert!(
        ours.get("Compression").is_some(),
        "no Compression line:\n{text}"
    );
    assert!(ours.get("URL").is_some(), "no URL line:\n{text}");
    let key_name = fx.ncps.pubkey().await;
    let key_name = key_name.split(':').next().expect("key name");
    assert!(
        ours.all("Sig")
            .iter()
            .any(|s| s.starts_with(&format!("{key_name}:"))),
        "no Sig by {key_name}:\n{text}"
    );
}

/// HEAD answers like GET (status, Content-Length), without a body: for a narinfo that
/// exists, one that does not, and a stored NAR.
#[tokio::test(flavor = "multi_thread")]
async fn head_matches_get() {
    let fx = Fixture::new(Compression::Xz).await;
    let narinfo = fx.ncps_narinfo(&fx.closure.blob).await;
    let nar_url = fx.nar_url(&narinfo);
    http::get(&nar_url).await.expect_ok_with_length(&nar_url);

    let missing = fx.ncps.url_for(&format!("{}.narinfo", random_store_hash()));
    for url in [fx.narinfo_url(&fx.closure.blob), missing, nar_url] {
        let get = http::get(&url).await;
        let head = http::head(&url).await;
        assert_eq!(head.status, get.status, "HEAD {url}");
        assert!(head.body.is_empty(), "HEAD {url} sent a body");
        if get.status == 200 {
            assert_eq!(
                head.content_length(),
                Some(get.body.len() as u64),
                "HEAD {url}: Content-Length"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn path_no_upstream_has_is_404() {
    let fx = Fixture::new(Compression::Xz).await;
    let hash = random_store_hash();
    let url = fx.ncps.url_for(&format!("{hash}.narinfo"));
    http::get(&url).await.expect_status(404, &url);
    http::head(&url).await.expect_status(404, &url);
    let asked = format!("/{hash}.narinfo");
    assert!(
        fx.upstream.requests().iter().any(|r| r.ends_with(&asked)),
        "the upstream was never asked for {asked}"
    );
    let nar = fx.ncps.url_for(&format!(
        "nar/{}.nar.xz",
        crate::harness::narinfo::sha256_nixbase32(hash.as_bytes())
    ));
    http::get(&nar).await.expect_status(404, &nar);
}

/// An upstream that is down is a gateway error, never a "not found" (which clients cache).
#[tokio::test(flavor = "multi_thread")]
async fn stopped_upstream_is_a_gateway_error() {
    let mut fx = Fixture::new(Compression::Xz).await;
    fx.upstream.stop().await;
    let url = fx.narinfo_url(&fx.closure.top);
    let resp = http::get(&url).await;
    assert!(
        resp.status == 502 || resp.status == 504,
        "GET {url} with the upstream stopped: want 502 or 504, got {}: {}",
        resp.status,
        resp.excerpt()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_upstream_is_a_server_error() {
    let fx = Fixture::new(Compression::Xz).await;
    fx.upstream.fail_all(true);
    let url = fx.narinfo_url(&fx.closure.top);
    let resp = http::get(&url).await;
    // 502 exactly: a panic or an internal error (500) must not pass for an upstream failure.
    assert_eq!(
        resp.status,
        502,
        "GET {url} with the upstream answering 500: want 502 Bad Gateway, got {}",
        resp.excerpt()
    );
    assert!(
        resp.text().contains("500"),
        "the reason names the upstream's answer: {}",
        resp.excerpt()
    );
    // Not remembered as a miss: once the upstream answers, so does ncps.
    fx.upstream.fail_all(false);
    http::get(&url)
        .await
        .expect_status(200, "narinfo once the upstream is back");
}

/// Traversal attempts, non-nixbase32 and wrong-length hashes are 400 or 404 and reveal
/// nothing (neither a file planted next to the data directory nor ncps's secret key); the
/// server stays healthy.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_paths_are_rejected() {
    let fx = Fixture::new(Compression::Xz).await;
    let token = crate::harness::random_hex(16);
    std::fs::write(fx.env.path().join("planted.nar"), &token).expect("plant file");
    let secret = std::fs::read_to_string(fx.config.data_dir.join("secret.key"))
        .ok()
        .and_then(|key| key.split_once(':').map(|(_, b64)| b64.trim().to_owned()));
    let secrets: Vec<&str> = [Some(token.as_str()), secret.as_deref(), Some("root:")]
        .into_iter()
        .flatten()
        .collect();

    let long = "a".repeat(4096);
    let mut bad_paths = vec![
        "/nar/../etc/passwd".to_owned(),
        "/nar/%2e%2e/x".to_owned(),
        "/nar/%2e%2e%2f%2e%2e%2fetc%2fpasswd".to_owned(),
        "/../../etc/passwd".to_owned(),
        "/%2e%2e/%2e%2e/etc/passwd".to_owned(),
        "/zzzz.narinfo".to_owned(),
        format!("/{}.narinfo", "0".repeat(33)),
        format!("/{}.narinfo", "0".repeat(31)),
        format!("/{}.narinfo", "e".repeat(32)),
        format!("/nar/{}.nar", "u".repeat(52)),
        format!("/nar/{}.nar.xz", "0".repeat(53)),
        format!("/nar/{long}.nar"),
        format!("/{long}.narinfo"),
    ];
    // The data directory sits one level below the planted file, NARs a few levels further.
    for depth in 1..=5 {
        for up in ["../", "%2e%2e%2f", "..%2f", "%2e%2e/"] {
            for target in ["planted.nar", "secret.key"] {
                bad_paths.push(format!("/nar/{}{target}", up.repeat(depth)));
            }
        }
    }
    for path in &bad_paths {
        let (status, body) = http::raw_get(&fx.ncps.authority(), path).await;
        assert!(
            status == 400 || status == 404,
            "GET {path}: want 400 or 404, got {status}: {body:.200}"
        );
        for secret in &secrets {
            assert!(
                !body.contains(secret),
                "GET {path} leaked a file: {body:.200}"
            );
        }
    }
    http::get(&fx.ncps.url_for("healthz"))
        .await
        .expect_status(200, "healthz after malformed requests");
}

/// `Range: bytes=…` on a stored NAR gives 206 with exactly those bytes.
#[tokio::test(flavor = "multi_thread")]
async fn range_request_on_a_stored_nar() {
    let fx = Fixture::new(Compression::Xz).await;
    let narinfo = fx.ncps_narinfo(&fx.closure.blob).await;
    let nar_url = fx.nar_url(&narinfo);
    let full = http::get(&nar_url)
        .await
        .expect_ok_with_length(&nar_url)
        .body;
    let total = full.len();

    let client = http::client();
    // The NAR is stored just after the download that fetched it completes; before that,
    // ignoring Range (a 200) is allowed.
    eventually("a Range request on the stored NAR answering 206", || {
        let (client, nar_url) = (&client, &nar_url);
        async move {
            let resp = http::fetch(
                client,
                reqwest::Method::GET,
                nar_url,
                &[("Range", "bytes=0-99")],
            )
            .await
            .map_err(|e| e.to_string())?;
            match resp.status {
                206 => Ok(()),
                other => Err(format!("status {other}")),
            }
        }
    })
    .await;
    for (start, end) in [(0, 99), (1000, 1999), (total - 10, total - 1)] {
        let range = format!("bytes={start}-{end}");
        let resp = http::fetch(
            &client,
            reqwest::Method::GET,
            &nar_url,
            &[("Range", &range)],
        )
        .await
        .unwrap_or_else(|e| panic!("GET {nar_url} {range}: {e}"))
        .expect_status(206, &format!("GET {nar_url} {range}"));
        assert_eq!(resp.body.len(), end - start + 1, "{range}: body length");
        assert_eq!(resp.body[..], full[start..=end], "{range}: wrong bytes");
        assert_eq!(
            resp.header("content-range"),
            Some(format!("bytes {start}-{end}/{total}").as_str()),
            "{range}: Content-Range"
        );
        assert_eq!(
            resp.content_length(),
            Some((end - start + 1) as u64),
            "{range}"
        );
    }
}
