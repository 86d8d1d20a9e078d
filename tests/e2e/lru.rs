//! Least-recently-used eviction: over `--cache-max-size`, the least recently used paths go
//! (and are fetched again from upstream on demand), recently used ones stay, and every path in
//! a pinned closure stays even when it is the least recently used.

use std::time::Duration;

use crate::harness::{Closure, Compression, TestEnv, eventually_within};

/// The name of a whole NAR file in ncps's storage, for a path fetched from `upstream`: without
/// chunking ncps keeps the upstream's file name.
fn nar_file_name(upstream: &crate::harness::Upstream, store_path: &str) -> String {
    upstream
        .nar_path(store_path)
        .rsplit('/')
        .next()
        .expect("file name")
        .to_owned()
}

fn stored(files: &[(std::path::PathBuf, u64)], name: &str) -> bool {
    files
        .iter()
        .any(|(p, _)| p.file_name().and_then(|n| n.to_str()) == Some(name))
}

async fn wait_a_second_tick() {
    // Access times have one-second resolution: keep the three fetches apart.
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lru_evicts_least_recently_used_and_keeps_pinned_closures() {
    let env = TestEnv::new();
    let key = env.key("lru-upstream-1").await;
    let mut closures: Vec<Closure> = Vec::new();
    for _ in 0..3 {
        let c = env.closure_with_blob(1_000_000).await;
        key.sign(env.path(), &c.top).await;
        closures.push(c);
    }
    let [pinned, old, recent] = <[Closure; 3]>::try_from(closures)
        .ok()
        .expect("three closures");
    let upstream = env
        .upstream_of(&[&pinned.top, &old.top, &recent.top], Compression::None)
        .await;
    let config = env.ncps_config(&[&upstream], &[&key.public]).with_args(&[
        "--cache-max-size",
        "2500K",
        "--cache-lru-schedule",
        "@every 1s",
    ]);
    // Pinned before it is ever fetched: the pin protects it once it arrives.
    env.ncps_admin("pin", &config, &[&pinned.top])
        .await
        .expect_success();
    let ncps = env.ncps(&config).await;
    let ncps_key = ncps.pubkey().await;

    for closure in [&pinned, &old, &recent] {
        env.client()
            .substitute_ok(&ncps.url(), &ncps_key, closure)
            .await;
        wait_a_second_tick().await;
    }

    // Three 1 MB blobs exceed 2500 KiB: the oldest unpinned closure must go, and only it.
    let blob = |c: &Closure| nar_file_name(&upstream, &c.blob);
    let (pinned_blob, old_blob, recent_blob) = (blob(&pinned), blob(&old), blob(&recent));
    eventually_within(
        "the least recently used blob is evicted",
        Duration::from_secs(30),
        || {
            let files = config.whole_nar_files();
            let result = if stored(&files, &old_blob) {
                Err(format!("{old_blob} still stored: {files:?}"))
            } else {
                Ok(())
            };
            async move { result }
        },
    )
    .await;
    let files = config.whole_nar_files();
    assert!(
        stored(&files, &pinned_blob),
        "the pinned closure's blob was evicted: {files:?}"
    );
    assert!(
        stored(&files, &recent_blob),
        "the most recent blob was evicted: {files:?}"
    );
    let total: u64 = files.iter().map(|(_, size)| size).sum();
    assert!(
        total <= 2500 * 1024,
        "still {total} bytes stored after eviction"
    );
    assert!(
        ncps.log().contains("evicted least recently used paths"),
        "{}",
        ncps.log()
    );

    // The evicted closure comes back from upstream on demand.
    let nar_gets_before = upstream.gets(&upstream.nar_path(&old.blob));
    env.client()
        .substitute_ok(&ncps.url(), &ncps_key, &old)
        .await;
    assert_eq!(
        upstream.gets(&upstream.nar_path(&old.blob)),
        nar_gets_before + 1,
        "the evicted NAR was not fetched again from upstream"
    );
}
