//! Build logs and realisations the cache does not have are fetched from an upstream that has
//! them, then kept.

use std::path::PathBuf;

use crate::harness::{Compression, Fixture, http, random_hex};

/// The directory the fixture's upstream serves, where documents are put for it to serve.
fn upstream_dir(fx: &Fixture) -> PathBuf {
    fx.upstream
        .narinfo_file(&fx.closure.top)
        .parent()
        .expect("upstream dir")
        .to_path_buf()
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_and_realisations_are_proxied_from_upstream_then_kept() {
    let fx = Fixture::new(Compression::Zstd).await;
    let dir = upstream_dir(&fx);
    let drv = format!(
        "{}-proxied.drv",
        &crate::harness::narinfo::random_store_hash()
    );
    let log = format!("building proxied {}\n", random_hex(8));
    std::fs::create_dir_all(dir.join("log")).unwrap();
    std::fs::write(dir.join("log").join(&drv), &log).unwrap();
    let id = format!("sha256:{}!out.doi", random_hex(32));
    let realisation = format!("{{\"id\":\"{id}\",\"outPath\":\"x\"}}");
    std::fs::create_dir_all(dir.join("realisations")).unwrap();
    std::fs::write(dir.join("realisations").join(&id), &realisation).unwrap();

    for _ in 0..2 {
        let got = http::get(&fx.ncps.url_for(&format!("log/{drv}")))
            .await
            .expect_status(200, "log");
        assert_eq!(got.text(), log);
        let got = http::get(&fx.ncps.url_for(&format!("realisations/{id}")))
            .await
            .expect_status(200, "realisation");
        assert_eq!(got.text(), realisation);
    }
    assert_eq!(
        fx.upstream.gets(&format!("/log/{drv}")),
        1,
        "the second GET is served from the cache"
    );
    let unknown = format!(
        "log/{}-unknown.drv",
        crate::harness::narinfo::random_store_hash()
    );
    http::get(&fx.ncps.url_for(&unknown))
        .await
        .expect_status(404, "log nobody has");
}

/// Many clients asking at once for a log: one upstream request. Asking again for a log nobody
/// has: no upstream request (the negative cache). A name that would smuggle a query into the
/// upstream request is refused, or sent encoded, and nothing is stored for it.
#[tokio::test(flavor = "multi_thread")]
async fn log_fetches_are_single_flight_remembered_missing_and_never_carry_a_query() {
    let fx = Fixture::new(Compression::Zstd).await;
    let dir = upstream_dir(&fx);
    let hash = crate::harness::narinfo::random_store_hash();
    let drv = format!("{hash}-many.drv");
    std::fs::create_dir_all(dir.join("log")).unwrap();
    std::fs::write(dir.join("log").join(&drv), "log of many\n").unwrap();
    fx.upstream
        .delay_responses(std::time::Duration::from_millis(300));
    let url = fx.ncps.url_for(&format!("log/{drv}"));
    // All 20 requests are sent before any answer is awaited (collected, not a lazy iterator).
    let asks: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { http::get(&url).await.expect_status(200, "log").text() })
        })
        .collect();
    for ask in asks {
        assert_eq!(ask.await.unwrap(), "log of many\n");
    }
    assert_eq!(
        fx.upstream.gets(&format!("/log/{drv}")),
        1,
        "one fetch for 20 clients"
    );
    fx.upstream.delay_responses(std::time::Duration::ZERO);

    let missing = format!("log/{hash}-missing.drv");
    for _ in 0..3 {
        http::get(&fx.ncps.url_for(&missing))
            .await
            .expect_status(404, "a log nobody has");
    }
    assert_eq!(
        fx.upstream.gets(&format!("/{missing}")),
        1,
        "misses are remembered"
    );

    // Not a derivation: refused before any upstream is asked.
    http::get(&fx.ncps.url_for(&format!("log/{hash}-x.drv%3Fa=1")))
        .await
        .expect_status(400, "a log name with a query appended");
    // A derivation name with `?` in it (store names allow it): asked for encoded.
    http::get(&fx.ncps.url_for(&format!("log/{hash}-x%3Fa=1.drv")))
        .await
        .expect_status(404, "a log name holding a question mark");
    let requests = fx.upstream.requests();
    assert!(
        requests.iter().all(|r| !r.contains("-x.drv")),
        "a refused name reached the upstream: {requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.contains(&format!("/log/{hash}-x%3Fa=1.drv"))),
        "the name with a question mark was not sent encoded: {requests:?}"
    );
}
