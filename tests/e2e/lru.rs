//! Least-recently-used eviction: over `--cache-max-size`, the least recently used paths go
//! (and are fetched again from upstream on demand), recently used ones stay, and every path in
//! a pinned closure stays even when it is the least recently used.

use std::time::Duration;

use crate::harness::{Closure, Compression, TestEnv, eventually_within, http};

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

/// Three 1 MB closures fetched in the order pinned, old, recent, one second apart; then only the
/// NAR of `old`'s blob is asked for again (as a client that remembered the narinfo would), and
/// ncps restarts (accesses noted since the last flush are written at shutdown). With a limit
/// of 2500 KiB the least recently used unpinned blob is now `recent`'s: it goes, `old`'s stays
/// (first-in-first-out would have evicted `old`), and the pinned one stays though it is the
/// oldest. `database_url` runs the cache on a server database instead of SQLite.
async fn evicts_least_recently_used_and_keeps_pinned_closures(database_url: Option<&str>) {
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
    let mut filling = env.ncps_config(&[&upstream], &[&key.public]);
    if let Some(url) = database_url {
        filling = filling.with_args(&["--cache-database-url", url]);
    }
    let evicting = filling.with_args(&[
        "--cache-max-size",
        "2500K",
        "--cache-lru-schedule",
        "@every 1s",
    ]);
    // Pinned before it is ever fetched: the pin protects it once it arrives.
    let mut pin_args = vec![pinned.top.as_str()];
    if let Some(url) = database_url {
        pin_args.extend(["--cache-database-url", url]);
    }
    // Admin commands never create a cache: create it as an operator does.
    env.ncps_admin("migrate", &filling, &pin_args[1..])
        .await
        .expect_success();
    env.ncps_admin("pin", &filling, &pin_args)
        .await
        .expect_success();

    let mut ncps = env.ncps(&filling).await;
    let ncps_key = ncps.pubkey().await;
    for closure in [&pinned, &old, &recent] {
        env.client()
            .substitute_ok(&ncps.url(), &ncps_key, closure)
            .await;
        wait_a_second_tick().await;
    }
    // Without chunking ncps serves a NAR under the upstream's own name.
    let old_nar = ncps.url_for(upstream.nar_path(&old.blob).trim_start_matches('/'));
    http::get(&old_nar)
        .await
        .expect_ok_with_length("the old blob's NAR, asked for again");
    let status = ncps.terminate().await;
    assert!(status.success(), "ncps exited with {status} on SIGTERM");
    let blob = |c: &Closure| nar_file_name(&upstream, &c.blob);
    let (pinned_blob, old_blob, recent_blob) = (blob(&pinned), blob(&old), blob(&recent));
    let files = filling.whole_nar_files();
    for name in [&pinned_blob, &old_blob, &recent_blob] {
        assert!(stored(&files, name), "{name} not stored without a limit");
    }

    let ncps = env.ncps(&evicting).await;
    eventually_within(
        "the least recently used blob is evicted",
        Duration::from_secs(30),
        || {
            let files = evicting.whole_nar_files();
            // The run logs what it evicted just after deleting the files.
            let result = if stored(&files, &recent_blob) {
                Err(format!("{recent_blob} still stored: {files:?}"))
            } else if !ncps.log().contains("evicted least recently used paths") {
                Err("the eviction run has not logged what it evicted".to_owned())
            } else {
                Ok(())
            };
            async move { result }
        },
    )
    .await;
    let files = evicting.whole_nar_files();
    assert!(
        stored(&files, &pinned_blob),
        "the pinned closure's blob was evicted: {files:?}"
    );
    assert!(
        stored(&files, &old_blob),
        "the blob used most recently (its NAR asked for again) was evicted: {files:?}"
    );
    let total: u64 = files.iter().map(|(_, size)| size).sum();
    assert!(
        total <= 2500 * 1024,
        "still {total} bytes stored after eviction"
    );

    // The evicted closure comes back from upstream on demand.
    let nar_gets_before = upstream.gets(&upstream.nar_path(&recent.blob));
    env.client()
        .substitute_ok(&ncps.url(), &ncps_key, &recent)
        .await;
    assert_eq!(
        upstream.gets(&upstream.nar_path(&recent.blob)),
        nar_gets_before + 1,
        "the evicted NAR was not fetched again from upstream"
    );
}

/// The same eviction on every database engine.
mod evicts_least_recently_used {
    use crate::harness::ServerDatabase;

    #[tokio::test(flavor = "multi_thread")]
    async fn sqlite() {
        super::evicts_least_recently_used_and_keeps_pinned_closures(None).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn postgres() {
        let db = ServerDatabase::create(ncps_test_services::postgres_url());
        super::evicts_least_recently_used_and_keeps_pinned_closures(Some(&db.url)).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn mysql() {
        let db = ServerDatabase::create(ncps_test_services::mysql_url());
        super::evicts_least_recently_used_and_keeps_pinned_closures(Some(&db.url)).await;
    }
}
