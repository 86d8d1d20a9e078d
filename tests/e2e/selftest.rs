//! Checks of the harness itself, without ncps: when these fail, the other failures are the
//! harness's, not the server's.

use sha2::{Digest, Sha256};

use crate::harness::narinfo::{nixbase32, sha256_nixbase32};
use crate::harness::{Compression, TestEnv, http, nix};

/// Our nixbase32 agrees with Nix's on a real NAR file hash.
#[tokio::test(flavor = "multi_thread")]
async fn nixbase32_agrees_with_nix() {
    let env = TestEnv::new();
    let file = env.path().join("data");
    let data = b"nixbase32 round trip\n";
    std::fs::write(&file, data).expect("write");
    let hex = format!("{:x}", Sha256::digest(data));
    let run = nix::run(
        env.path(),
        "nix-hash",
        &["--type", "sha256", "--to-base32", &hex],
    )
    .await
    .expect_success();
    assert_eq!(run.stdout.trim(), sha256_nixbase32(data));
    assert_eq!(nixbase32(&[0xff]), "7z");
}

/// The upstream serves a closure that the real Nix client substitutes directly, and every NAR
/// it serves verifies against its narinfo.
#[tokio::test(flavor = "multi_thread")]
async fn upstream_serves_nix_directly() {
    let env = TestEnv::new();
    let closure = env.closure().await;
    let key = env.key("upstream-1").await;
    key.sign(env.path(), &closure.top).await;
    let upstream = env.upstream(&closure, Compression::Zstd).await;
    env.client()
        .substitute_ok(&upstream.url(), &key.public, &closure)
        .await;
    for path in &closure.paths {
        let narinfo = upstream.narinfo(path);
        let nar = http::get(&format!("{}{}", upstream.url(), upstream.nar_path(path)))
            .await
            .expect_ok_with_length("upstream NAR");
        narinfo
            .verify_nar(&nar.body)
            .expect("upstream NAR verifies");
        assert_eq!(upstream.gets(&upstream.nar_path(path)), 2);
    }
}

/// The knobs work: a truncated NAR is a transport error, a failing upstream answers 500.
#[tokio::test(flavor = "multi_thread")]
async fn upstream_knobs_misbehave() {
    let env = TestEnv::new();
    let closure = env.closure().await;
    let mut upstream = env.upstream(&closure, Compression::Xz).await;
    let nar_url = format!("{}{}", upstream.url(), upstream.nar_path(&closure.blob));
    upstream.truncate_nars(true);
    let cut = http::fetch(&http::client(), reqwest::Method::GET, &nar_url, &[]).await;
    assert!(cut.is_err(), "a truncated body must be a transport error");
    upstream.truncate_nars(false);
    upstream.fail_all(true);
    http::get(&nar_url).await.expect_status(500, "fail_all");
    upstream.fail_all(false);
    upstream.stop().await;
    let refused = http::fetch(&http::client(), reqwest::Method::GET, &nar_url, &[]).await;
    assert!(refused.is_err(), "a stopped upstream refuses connections");
}
