//! Build logs and realisations the cache does not have are fetched from an upstream that has
//! them, then kept.

use crate::harness::{Compression, Fixture, http, random_hex};

#[tokio::test(flavor = "multi_thread")]
async fn logs_and_realisations_are_proxied_from_upstream_then_kept() {
    let fx = Fixture::new(Compression::Zstd).await;
    let dir = fx
        .upstream
        .narinfo_file(&fx.closure.top)
        .parent()
        .expect("upstream dir")
        .to_path_buf();
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
