//! Several upstreams: ordered by the Priority of their nix-cache-info, failover past slow,
//! failing and stopped ones, recovery on their own, the negative cache, credentials from a
//! netrc file, and a cache with no upstream at all. No timing assertion is tighter than a
//! generous bound that proves "does not hang".

use std::time::{Duration, Instant};

use crate::harness::narinfo::{random_store_hash, store_hash};
use crate::harness::{
    Closure, Compression, NcpsConfig, SigningKey, TestEnv, Upstream, eventually_within, http,
};

/// A fresh closure signed by a fresh upstream key.
async fn signed_closure(env: &TestEnv) -> (Closure, SigningKey) {
    let closure = env.closure_with_blob(200_000).await;
    let key = env.key("upstream-1").await;
    key.sign(env.path(), &closure.top).await;
    (closure, key)
}

/// `count` upstreams that all serve `closure`, announcing `priorities`.
async fn upstreams_with(env: &TestEnv, closure: &Closure, priorities: &[u32]) -> Vec<Upstream> {
    let mut ups = Vec::new();
    for priority in priorities {
        let up = env.upstream(closure, Compression::Zstd).await;
        up.set_priority(*priority);
        ups.push(up);
    }
    ups
}

/// How many of `closure`'s NARs `up` served.
fn nars_served(up: &Upstream, closure: &Closure) -> usize {
    closure.paths.iter().map(|p| up.gets(&up.nar_path(p))).sum()
}

fn assert_server_error(status: u16, what: &str) {
    assert!(
        status == 502 || status == 504,
        "{what}: want 502 or 504 (never a 404 Nix would remember), got {status}"
    );
}

/// Lower Priority wins, whatever the order on the command line.
#[tokio::test(flavor = "multi_thread")]
async fn closure_comes_from_the_upstream_with_the_best_priority() {
    let env = TestEnv::new();
    let (closure, key) = signed_closure(&env).await;
    let ups = upstreams_with(&env, &closure, &[50, 10, 30]).await;
    let config = env.ncps_config(&[&ups[0], &ups[1], &ups[2]], &[&key.public]);
    let ncps = env.ncps(&config).await;
    let ncps_key = ncps.pubkey().await;

    env.client()
        .substitute_ok(&ncps.url(), &ncps_key, &closure)
        .await;
    assert_eq!(nars_served(&ups[1], &closure), closure.paths.len());
    assert_eq!(nars_served(&ups[0], &closure), 0, "priority 50 served NARs");
    assert_eq!(nars_served(&ups[2], &closure), 0, "priority 30 served NARs");
}

/// The best upstream is overloaded (slower than the header timeout), the next answers 500,
/// the third works: the closure arrives from the third. Then that one stops and the second is
/// fixed: a new closure arrives from the second. The stopped one comes back, and what only it
/// has is served again.
#[tokio::test(flavor = "multi_thread")]
async fn failover_past_slow_failing_and_stopped_upstreams() {
    let env = TestEnv::new();
    let (first, key) = signed_closure(&env).await;
    let second = env.closure_with_blob(100_000).await;
    let third = env.closure_with_blob(100_000).await;
    key.sign(env.path(), &second.top).await;
    key.sign(env.path(), &third.top).await;
    let mut ups = Vec::new();
    for (priority, tops) in [
        (10, vec![&first.top, &second.top]),
        (20, vec![&first.top, &second.top]),
        (30, vec![&first.top, &second.top, &third.top]),
    ] {
        let tops: Vec<&str> = tops.into_iter().map(String::as_str).collect();
        let up = env.upstream_of(&tops, Compression::Xz).await;
        up.set_priority(priority);
        ups.push(up);
    }
    let [slow, failing, good] = &mut ups[..] else {
        unreachable!()
    };
    slow.delay_responses(Duration::from_secs(5));
    failing.fail_all(true);
    let config = env
        .ncps_config(&[slow, failing, good], &[&key.public])
        .with_args(&["--cache-upstream-response-header-timeout", "1s"]);
    let ncps = env.ncps(&config).await;
    let ncps_key = ncps.pubkey().await;

    let started = Instant::now();
    env.client()
        .substitute_ok(&ncps.url(), &ncps_key, &first)
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(nars_served(good, &first), first.paths.len());
    assert_eq!(nars_served(failing, &first), 0);
    assert_eq!(nars_served(slow, &first), 0);

    good.stop().await;
    failing.fail_all(false);
    env.client()
        .substitute_ok(&ncps.url(), &ncps_key, &second)
        .await;
    assert_eq!(nars_served(failing, &second), second.paths.len());

    good.restart().await;
    env.client()
        .substitute_ok(&ncps.url(), &ncps_key, &third)
        .await;
    assert_eq!(nars_served(good, &third), third.paths.len());
    assert_eq!(nars_served(slow, &first) + nars_served(slow, &second), 0);
}

/// With every upstream down (stopped, or answering 500), a miss is a quick 502/504, never a
/// 404 and never a hang, however often it is asked.
#[tokio::test(flavor = "multi_thread")]
async fn every_upstream_down_is_a_fast_server_error() {
    let env = TestEnv::new();
    let (closure, key) = signed_closure(&env).await;
    let mut ups = upstreams_with(&env, &closure, &[10, 20]).await;
    let config = env.ncps_config(&[&ups[0], &ups[1]], &[&key.public]);
    let ncps = env.ncps(&config).await;

    ups[0].stop().await;
    ups[1].fail_all(true);
    for path in [&closure.top, &closure.leaf, &closure.top, &closure.middle] {
        let url = ncps.url_for(&format!("{}.narinfo", store_hash(path)));
        let started = Instant::now();
        let resp = http::get(&url).await;
        assert_server_error(resp.status, &url);
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "GET {url} took {:?}",
            started.elapsed()
        );
    }
    // Nix gives up on the path rather than waiting for ever.
    let ncps_key = ncps.pubkey().await;
    env.client()
        .substitute_fails(&ncps.url(), &ncps_key, &closure.top)
        .await;
}

/// An upstream skipped as unhealthy must not turn a miss into a 404: the healthy one says 404,
/// the sick one cannot answer, so the client gets a 502 (and asks again later).
#[tokio::test(flavor = "multi_thread")]
async fn a_skipped_unhealthy_upstream_is_not_a_404() {
    let env = TestEnv::new();
    let (closure, key) = signed_closure(&env).await;
    let empty = env.upstream_of(&[], Compression::Xz).await;
    let sick = env.upstream(&closure, Compression::Xz).await;
    sick.fail_all(true);
    let config = env.ncps_config(&[&empty, &sick], &[&key.public]);
    let ncps = env.ncps(&config).await;
    for _ in 0..3 {
        let url = ncps.url_for(&format!("{}.narinfo", random_store_hash()));
        assert_server_error(http::get(&url).await.status, &url);
    }
    // Once it answers again, a miss is a real 404 and a hit is served.
    sick.fail_all(false);
    let url = ncps.url_for(&format!("{}.narinfo", random_store_hash()));
    http::get(&url).await.expect_status(404, &url);
    let ncps_key = ncps.pubkey().await;
    env.client()
        .substitute_ok(&ncps.url(), &ncps_key, &closure)
        .await;
}

/// An upstream answering 500 is marked unhealthy, re-probed in the background, and marked
/// healthy again once it answers, with no client request needed.
#[tokio::test(flavor = "multi_thread")]
async fn an_unhealthy_upstream_recovers_on_its_own() {
    let env = TestEnv::new();
    let (closure, key) = signed_closure(&env).await;
    let up = env.upstream(&closure, Compression::Xz).await;
    let config = env.ncps_config(&[&up], &[&key.public]);
    let ncps = env.ncps(&config).await;
    up.fail_all(true);
    let url = ncps.url_for(&format!("{}.narinfo", store_hash(&closure.top)));
    assert_server_error(http::get(&url).await.status, &url);
    let probes = || {
        up.requests()
            .iter()
            .filter(|r| r.as_str() == "GET /nix-cache-info")
            .count()
    };
    let before = probes();
    eventually_within("re-probed while failing", Duration::from_secs(30), || {
        let n = probes();
        async move {
            (n >= before + 2)
                .then_some(())
                .ok_or_else(|| format!("{n} probes"))
        }
    })
    .await;

    up.fail_all(false);
    let up_url = format!("{}/", up.url());
    eventually_within("marked healthy again", Duration::from_secs(60), || {
        let back = ncps.log().lines().any(|l| {
            l.contains(&up_url) && l.contains("marked healthy") && !l.contains("unhealthy")
        });
        async move { back.then_some(()).ok_or_else(|| "not yet".to_string()) }
    })
    .await;
    http::get(&url).await.expect_ok_with_length(&url);
    let ncps_key = ncps.pubkey().await;
    env.client()
        .substitute_ok(&ncps.url(), &ncps_key, &closure)
        .await;
}

async fn narinfo_gets_for_repeated_misses(extra: &[&str], asks: usize) -> usize {
    let env = TestEnv::new();
    let up = env.upstream_of(&[], Compression::Xz).await;
    let key = env.key("upstream-1").await;
    let config: NcpsConfig = env.ncps_config(&[&up], &[&key.public]).with_args(extra);
    let ncps = env.ncps(&config).await;
    let hash = random_store_hash();
    let url = ncps.url_for(&format!("{hash}.narinfo"));
    for _ in 0..asks {
        http::get(&url).await.expect_status(404, &url);
    }
    up.gets(&format!("/{hash}.narinfo"))
}

/// N requests for a missing path within the TTL cost one upstream request; with the TTL at 0,
/// every request goes upstream.
#[tokio::test(flavor = "multi_thread")]
async fn the_negative_cache_spares_the_upstream() {
    assert_eq!(
        narinfo_gets_for_repeated_misses(&["--cache-upstream-negative-ttl", "5m"], 25).await,
        1
    );
    assert_eq!(
        narinfo_gets_for_repeated_misses(&["--cache-upstream-negative-ttl", "0"], 5).await,
        5
    );
}

/// A private upstream wants credentials: from a netrc file (Basic and bearer) ncps sends them,
/// never logs them, and the closure arrives; without the file the upstream refuses and the
/// client sees a failure, not a 404.
#[tokio::test(flavor = "multi_thread")]
async fn netrc_credentials_reach_a_private_upstream() {
    let env = TestEnv::new();
    let (closure, key) = signed_closure(&env).await;
    let up = env.upstream(&closure, Compression::Xz).await;
    let host = up.url().trim_start_matches("http://").to_owned();
    let cases = [
        (
            format!("machine {host} login bearer password s3cr3t-t0ken\n"),
            "Bearer s3cr3t-t0ken",
        ),
        (
            // Matched by host alone (any port); user "ncps", password "pa55word".
            "machine 127.0.0.1 login ncps password pa55word\n".to_owned(),
            "Basic bmNwczpwYTU1d29yZA==",
        ),
    ];
    for (netrc, expected_header) in cases {
        up.require_authorization(Some(expected_header));
        let netrc_file = crate::harness::unique_dir(env.path(), "netrc").join("netrc");
        std::fs::write(&netrc_file, netrc).expect("write netrc");
        let config = env
            .ncps_config(&[&up], &[&key.public])
            .with_args(&["--netrc-file", netrc_file.to_str().expect("utf-8")]);
        let ncps = env.ncps(&config).await;
        let ncps_key = ncps.pubkey().await;
        env.client()
            .substitute_ok(&ncps.url(), &ncps_key, &closure)
            .await;
        let log = ncps.log();
        for secret in ["s3cr3t-t0ken", "pa55word", "bmNwczpwYTU1d29yZA"] {
            assert!(!log.contains(secret), "the ncps log shows a credential");
        }
    }

    let config = env.ncps_config(&[&up], &[&key.public]);
    let ncps = env.ncps(&config).await;
    let url = ncps.url_for(&format!("{}.narinfo", store_hash(&closure.top)));
    let status = http::get(&url).await.status;
    assert!(
        (500..600).contains(&status),
        "without credentials: want a 5xx, got {status}"
    );
}

/// `--cache-upstream-url ''` runs without any upstream (a cache fed by uploads only): every
/// miss is a clean 404 and nothing is asked of cache.nixos.org.
#[tokio::test(flavor = "multi_thread")]
async fn no_upstream_means_every_miss_is_a_404() {
    let env = TestEnv::new();
    let mut config = env.ncps_config(&[], &[]);
    config.extra_args = vec!["--cache-upstream-url".into(), String::new()];
    let ncps = env.ncps(&config).await;
    for _ in 0..3 {
        let url = ncps.url_for(&format!("{}.narinfo", random_store_hash()));
        let started = Instant::now();
        http::get(&url).await.expect_status(404, &url);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    http::get(&ncps.url_for("nix-cache-info"))
        .await
        .expect_ok_with_length("GET /nix-cache-info");
    assert!(
        !ncps.log().contains("cache.nixos.org"),
        "ncps configured the default upstream"
    );
}
