//! A Go ncps user's configuration works unchanged (issue 16): each test drives the binary the
//! way a Go set-up does (flags, variables, config files from the Go docs and nixpkgs' module).

use crate::harness::narinfo::store_hash;
use crate::harness::{Compression, Fixture, FixtureOptions, NarInfo, TestEnv, eventually, http};

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

/// `--cache-upstream-url http://host/?priority=N`, as Go configurations write it: accepted,
/// stripped from the requests, and N orders the upstreams instead of what they announce. Here
/// the upstream announcing the better priority (10) is configured at 90, the other (announcing
/// 50) at 5: the latter's answer is taken and its NAR fetched.
#[tokio::test(flavor = "multi_thread")]
async fn a_priority_in_the_upstream_url_orders_the_upstreams() {
    let env = TestEnv::new();
    let closure = env.closure().await;
    let key = env.key("upstream-1").await;
    key.sign(env.path(), &closure.top).await;
    let (announcing_better, announcing_worse) = (
        env.upstream(&closure, Compression::Xz).await,
        env.upstream(&closure, Compression::Xz).await,
    );
    announcing_better.set_priority(10);
    announcing_worse.set_priority(50);
    let mut config = env.ncps_config(&[], &[&key.public]);
    config.upstreams = vec![
        format!("{}?priority=90", announcing_better.url()),
        format!("{}?priority=5", announcing_worse.url()),
    ];
    let ncps = env.ncps(&config).await;
    let narinfo_path = format!("/{}.narinfo", store_hash(&closure.top));
    // Both are asked at once (the default lookup); the better priority's answer is taken.
    let narinfo = eventually("the narinfo", || async {
        let resp = http::get(&ncps.url_for(&narinfo_path)).await;
        match resp.status {
            200 => Ok(NarInfo::parse(&resp.text())),
            s => Err(format!("status {s}")),
        }
    })
    .await;
    http::get(&ncps.url_for(narinfo.field("URL")))
        .await
        .expect_status(200, "the NAR");
    let nar = announcing_worse.nar_path(&closure.top);
    assert_eq!(
        announcing_worse.gets(&nar),
        1,
        "the priority-5 upstream served the NAR"
    );
    assert_eq!(
        announcing_better.gets(&nar),
        0,
        "the priority-90 upstream served it"
    );
    assert!(
        announcing_worse
            .requests()
            .iter()
            .all(|r| !r.contains("priority")),
        "the query reached the upstream: {:?}",
        announcing_worse.requests()
    );
}

/// A Go set-up configured through the deprecated variables (`CACHE_DATA_PATH`,
/// `UPSTREAM_CACHES`, `UPSTREAM_PUBLIC_KEYS`) works as with the current ones, and the log says
/// which names are deprecated.
#[tokio::test(flavor = "multi_thread")]
async fn deprecated_variables_still_configure_the_cache() {
    let env = TestEnv::new();
    let closure = env.closure().await;
    let key = env.key("upstream-1").await;
    key.sign(env.path(), &closure.top).await;
    let upstream = env.upstream(&closure, Compression::Xz).await;
    let mut config = env.ncps_config(&[&upstream], &[&key.public]);
    config.via_environment = true;
    config.deprecated_env_names = true;
    let ncps = env.ncps(&config).await;
    let ncps_key = ncps.pubkey().await;
    env.client()
        .substitute_ok(&ncps.url(), &ncps_key, &closure)
        .await;
    assert!(
        !config.whole_nar_files().is_empty(),
        "nothing stored under CACHE_DATA_PATH"
    );
    let log = ncps.log();
    for name in ["CACHE_DATA_PATH", "UPSTREAM_CACHES", "UPSTREAM_PUBLIC_KEYS"] {
        assert!(
            log.contains(name) && log.contains("deprecated"),
            "no deprecation note for {name}: {log}"
        );
    }
}
