//! A Nix client that trusts only ncps's key substitutes a whole closure through ncps, and then
//! from ncps alone once the upstream is gone.

use crate::harness::{Compression, Fixture};

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
