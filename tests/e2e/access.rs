//! The access matrix: every route and method, asked with no token, a wrong token, the read
//! token and the write token, on a cache that has both tokens and every verb enabled. Reads need
//! the read (or write) token, writes and pin management the write token, and `/healthz` and
//! `/metrics` stay open to probes. "Allowed" means the request reached its handler (anything but
//! 401 and 405): the handlers' own answers are tested elsewhere.

use crate::harness::narinfo::random_store_hash;
use crate::harness::{Compression, Fixture, FixtureOptions, http};

const READ: &str = "read-token-e2e";
const WRITE: &str = "write-token-e2e";

/// Who asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Anonymous,
    Wrong,
    Reader,
    Writer,
}

impl Who {
    const ALL: [Who; 4] = [Who::Anonymous, Who::Wrong, Who::Reader, Who::Writer];

    /// The `Authorization` header: bearer tokens, and Basic with the token as password (what
    /// Nix sends from a netrc file) for the writer.
    fn header(self) -> Option<String> {
        use base64::Engine as _;
        match self {
            Who::Anonymous => None,
            Who::Wrong => Some("Bearer not-the-token".into()),
            Who::Reader => Some(format!("Bearer {READ}")),
            Who::Writer => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("nix:{WRITE}"))
            )),
        }
    }
}

/// Which credentials a route needs.
#[derive(Clone, Copy, Debug)]
enum Needs {
    Nothing,
    Read,
    Write,
}

impl Needs {
    fn allows(self, who: Who) -> bool {
        match self {
            Needs::Nothing => true,
            Needs::Read => matches!(who, Who::Reader | Who::Writer),
            Needs::Write => who == Who::Writer,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_and_method_needs_the_right_token() {
    let fx = Fixture::with(FixtureOptions::new(Compression::Xz).ncps_args(&[
        "--cache-allow-put-verb",
        "--cache-allow-delete-verb",
        "--cache-get-token",
        READ,
        "--cache-put-token",
        WRITE,
        "--prometheus-enabled",
    ]))
    .await;
    let hash = random_store_hash();
    let nar = format!(
        "nar/{}.nar.xz",
        crate::harness::narinfo::sha256_nixbase32(hash.as_bytes())
    );
    let drv = format!("{hash}-x.drv");
    use reqwest::Method as M;
    let rows: Vec<(M, String, Needs)> = vec![
        (M::GET, "/healthz".into(), Needs::Nothing),
        (M::GET, "/metrics".into(), Needs::Nothing),
        (M::GET, "/nix-cache-info".into(), Needs::Read),
        (M::HEAD, "/nix-cache-info".into(), Needs::Read),
        (M::GET, "/pubkey".into(), Needs::Read),
        (M::GET, "/".into(), Needs::Read),
        (M::GET, "/upload/".into(), Needs::Read),
        (M::GET, "/upload/nix-cache-info".into(), Needs::Read),
        (M::GET, format!("/upload/{hash}.narinfo"), Needs::Read),
        (M::HEAD, format!("/upload/{hash}.narinfo"), Needs::Read),
        (M::GET, format!("/upload/{nar}"), Needs::Read),
        (
            M::GET,
            format!("/upload/build-trace-v2/{drv}/out"),
            Needs::Read,
        ),
        (
            M::PUT,
            format!("/upload/build-trace-v2/{drv}/out"),
            Needs::Write,
        ),
        (M::GET, format!("/{hash}.narinfo"), Needs::Read),
        (M::HEAD, format!("/{hash}.narinfo"), Needs::Read),
        (M::GET, format!("/{nar}"), Needs::Read),
        (M::HEAD, format!("/{nar}"), Needs::Read),
        (M::GET, format!("/log/{drv}"), Needs::Read),
        (
            M::GET,
            format!("/realisations/sha256:{hash}!out.doi"),
            Needs::Read,
        ),
        (M::GET, format!("/build-trace-v2/{drv}/out"), Needs::Read),
        (M::PUT, format!("/{hash}.narinfo"), Needs::Write),
        (M::PUT, format!("/{nar}"), Needs::Write),
        (M::PUT, format!("/upload/{hash}.narinfo"), Needs::Write),
        (M::PUT, format!("/upload/{nar}"), Needs::Write),
        (M::PUT, format!("/log/{drv}"), Needs::Write),
        (
            M::PUT,
            format!("/realisations/sha256:{hash}!out.doi"),
            Needs::Write,
        ),
        (M::PUT, format!("/build-trace-v2/{drv}/out"), Needs::Write),
        (M::DELETE, format!("/{hash}.narinfo"), Needs::Write),
        (M::DELETE, format!("/{nar}"), Needs::Write),
        (M::POST, format!("/pin/{hash}.narinfo"), Needs::Write),
        (M::DELETE, format!("/pin/{hash}.narinfo"), Needs::Write),
        (M::GET, "/pins".into(), Needs::Write),
    ];
    let client = http::client();
    let mut wrong = Vec::new();
    for (method, path, needs) in &rows {
        for who in Who::ALL {
            let mut headers = Vec::new();
            let auth = who.header();
            if let Some(value) = &auth {
                headers.push(("Authorization", value.as_str()));
            }
            let url = fx.ncps.url_for(path.trim_start_matches('/'));
            let resp = http::fetch(&client, method.clone(), &url, &headers)
                .await
                .unwrap_or_else(|e| panic!("{method} {path} as {who:?}: {e}"));
            let allowed = needs.allows(who);
            let reached = !matches!(resp.status, 401 | 405);
            if allowed != reached {
                wrong.push(format!(
                    "{method} {path} as {who:?}: {} (expected {})",
                    resp.status,
                    if allowed {
                        "to reach the handler"
                    } else {
                        "401"
                    }
                ));
            }
            if !allowed && resp.status == 401 && *method != M::HEAD {
                assert!(
                    resp.header("www-authenticate").is_some(),
                    "{method} {path}: a 401 names its scheme"
                );
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "access rules broken:\n{}",
        wrong.join("\n")
    );

    // The read token really reads: a path the upstream has.
    let blob_narinfo = fx.narinfo_url(&fx.closure.blob);
    let resp = http::fetch(
        &client,
        M::GET,
        &blob_narinfo,
        &[("Authorization", &format!("Bearer {READ}"))],
    )
    .await
    .expect("GET narinfo");
    let resp = resp.expect_status(200, "a narinfo with the read token");
    // Only the token holder may keep it: no shared cache (proxy, CDN) may.
    let cache_control = resp.header("cache-control").unwrap_or_default();
    assert!(
        cache_control.starts_with("private"),
        "a narinfo behind a token says Cache-Control: {cache_control}"
    );
}
