//! A Nix client that trusts only ncps's key substitutes a whole closure through ncps, and then
//! from ncps alone once the upstream is gone.

use crate::harness::{Compression, Fixture, TestEnv, Upstream, http, unique_dir};

async fn substitutes_then_serves_from_cache_alone(compression: Compression) {
    let mut fx = Fixture::new(compression).await;
    let ncps_key = fx.ncps.pubkey().await;
    assert_ne!(
        ncps_key, fx.upstream_key.public,
        "ncps must sign with its own key"
    );

    fx.env
        .client()
        .substitute_ok(&fx.ncps.url(), &ncps_key, &fx.closure)
        .await;
    for path in &fx.closure.paths {
        assert!(
            fx.upstream.gets(&fx.upstream.nar_path(path)) >= 1,
            "the NAR of {path} never came from the upstream"
        );
    }

    fx.upstream.stop().await;
    fx.env
        .client()
        .substitute_ok(&fx.ncps.url(), &ncps_key, &fx.closure)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn xz_upstream_closure_is_served_from_cache_after_upstream_stops() {
    substitutes_then_serves_from_cache_alone(Compression::Xz).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn zstd_upstream_closure_is_served_from_cache_after_upstream_stops() {
    substitutes_then_serves_from_cache_alone(Compression::Zstd).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn uncompressed_upstream_closure_is_served_from_cache_after_upstream_stops() {
    substitutes_then_serves_from_cache_alone(Compression::None).await;
}

/// SIGTERM shuts ncps down cleanly; restarted on the same data directory it keeps its key and
/// its cache, and serves the closure with the upstream stopped.
#[tokio::test(flavor = "multi_thread")]
async fn cache_and_key_survive_a_restart() {
    let mut fx = Fixture::new(Compression::Xz).await;
    let ncps_key = fx.ncps.pubkey().await;
    fx.env
        .client()
        .substitute_ok(&fx.ncps.url(), &ncps_key, &fx.closure)
        .await;

    let status = fx.ncps.terminate().await;
    assert!(status.success(), "ncps exited with {status} on SIGTERM");

    fx.ncps = fx.env.ncps(&fx.config).await;
    assert_eq!(
        fx.ncps.pubkey().await,
        ncps_key,
        "the key changed on restart"
    );
    fx.upstream.stop().await;
    fx.env
        .client()
        .substitute_ok(&fx.ncps.url(), &ncps_key, &fx.closure)
        .await;
}

/// Everything configured through environment variables alone (`serve` with no flag): where the
/// data lives, the address, the upstream and its key, chunking and uploads. The closure
/// substitutes, NARs are stored as chunks, and the key is named after `CACHE_HOSTNAME`.
#[tokio::test(flavor = "multi_thread")]
async fn serve_configured_by_environment_variables_alone() {
    let env = TestEnv::new();
    let closure = env.closure().await;
    let key = env.key("env-upstream-1").await;
    key.sign(env.path(), &closure.top).await;
    let upstream = env.upstream(&closure, Compression::Xz).await;
    let mut config = env.ncps_config(&[&upstream], &[&key.public]);
    config.hostname = "from-the-environment".into();
    config.via_environment = true;
    config.extra_env = vec![
        ("CACHE_CDC_ENABLED".into(), "true".into()),
        ("CACHE_ALLOW_PUT_VERB".into(), "true".into()),
    ];
    let ncps = env.ncps(&config).await;
    let ncps_key = ncps.pubkey().await;
    assert!(
        ncps_key.starts_with("from-the-environment:"),
        "the key is not named after CACHE_HOSTNAME: {ncps_key}"
    );
    env.client()
        .substitute_ok(&ncps.url(), &ncps_key, &closure)
        .await;
    assert!(
        config.whole_nar_files().is_empty() && !config.chunk_files().is_empty(),
        "CACHE_CDC_ENABLED=true was not honoured: whole files {:?}",
        config.whole_nar_files()
    );
    // Uploads are on: a PUT reaches its handler (400 for an empty narinfo, not 405).
    let resp = http::fetch(
        &http::client(),
        reqwest::Method::PUT,
        &ncps.url_for(&format!(
            "{}.narinfo",
            crate::harness::narinfo::random_store_hash()
        )),
        &[],
    )
    .await
    .expect("PUT");
    assert_eq!(
        resp.status, 400,
        "CACHE_ALLOW_PUT_VERB=true was not honoured"
    );
}

/// Connections are served on one thread per core, or on as many as `TOKIO_WORKER_THREADS` says
/// when an operator sets it (it bounded the threads serving connections before they had threads
/// of their own).
#[tokio::test]
async fn serving_threads_follow_the_cores_or_tokio_worker_threads() {
    let env = TestEnv::new();
    let upstream = Upstream::serve(&unique_dir(env.path(), "empty-upstream")).await;
    let key = env.key("upstream-1").await;
    // The threads start with the first connection, and that connection is served only once
    // every one of them runs and has its name: one read after `/healthz` answered is exact.
    let serving = |ncps: &crate::harness::Ncps| {
        let names = ncps.thread_names();
        let count = names
            .iter()
            .filter(|name| name.starts_with("ncps-serve-"))
            .count();
        (count, names)
    };
    let config = env.ncps_config(&[&upstream], &[&key.public]);
    let ncps = env.ncps(&config).await;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (count, names) = serving(&ncps);
    assert_eq!(count, cores, "a serving thread per core: {names:?}");
    let mut config = env.ncps_config(&[&upstream], &[&key.public]);
    config
        .extra_env
        .push(("TOKIO_WORKER_THREADS".to_owned(), "3".to_owned()));
    let ncps = env.ncps(&config).await;
    let (count, names) = serving(&ncps);
    assert_eq!(count, 3, "TOKIO_WORKER_THREADS serving threads: {names:?}");
}
