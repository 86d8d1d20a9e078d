//! A Go ncps user's configuration works unchanged (issue 16): each test drives the binary the
//! way a Go set-up does (flags, variables, config files from the Go docs and nixpkgs' module).

use crate::harness::{Compression, Fixture, FixtureOptions, http};

/// nixpkgs' `services.ncps` writes `max-open-conns: 0` (and the Go ncps reads 0 as "the
/// engine's default"); ncps starts and serves with both pool sizes at 0.
#[tokio::test(flavor = "multi_thread")]
async fn zero_pool_sizes_mean_the_engine_defaults() {
    let fx = Fixture::with(FixtureOptions::new(Compression::Xz).ncps_args(&[
        "--cache-database-pool-max-open-conns",
        "0",
        "--cache-database-pool-max-idle-conns",
        "0",
    ]))
    .await;
    let narinfo = fx.ncps_narinfo(&fx.closure.blob).await;
    let body = http::get(&fx.nar_url(&narinfo))
        .await
        .expect_status(200, "a NAR with pool sizes of 0");
    narinfo.verify_nar(&body.body).expect("the NAR");
}
