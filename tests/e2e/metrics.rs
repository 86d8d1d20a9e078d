//! `/metrics` after an end-to-end run: the counters match what happened.

use std::collections::HashMap;

use crate::harness::{Compression, Fixture, FixtureOptions, http};

/// Parses the OpenMetrics text into `name{labels}` → value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// A sample that must be there: a metric renamed or never exported fails the test.
fn value(samples: &HashMap<String, f64>, name: &str) -> f64 {
    samples.get(name).copied().unwrap_or_else(|| {
        let mut names: Vec<&String> = samples.keys().collect();
        names.sort();
        panic!("{name} is not in /metrics; it has: {names:#?}")
    })
}

/// A labelled sample that is only exported once something was counted under its label.
fn count_or_absent(samples: &HashMap<String, f64>, name: &str) -> f64 {
    samples.get(name).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn counters_match_a_substitution() {
    let fx =
        Fixture::with(FixtureOptions::new(Compression::Xz).ncps_args(&["--prometheus-enabled"]))
            .await;
    let closure = &fx.closure;
    let key = fx.ncps.pubkey().await;
    fx.env
        .client()
        .substitute_ok(&fx.ncps.url(), &key, closure)
        .await;
    fx.env
        .client()
        .substitute_ok(&fx.ncps.url(), &key, closure)
        .await;
    let paths = closure.paths.len() as f64;
    let file_bytes = fx.upstream_file_bytes();

    let response = http::get(&fx.ncps.url_for("metrics"))
        .await
        .expect_status(200, "GET /metrics");
    let s = samples(&response.text());
    assert_eq!(
        value(&s, r#"ncps_narinfo_lookups_total{outcome="miss"}"#),
        paths,
        "{}",
        response.text()
    );
    assert!(value(&s, r#"ncps_narinfo_lookups_total{outcome="hit"}"#) >= paths);
    assert_eq!(
        count_or_absent(&s, r#"ncps_narinfo_lookups_total{outcome="not_found"}"#),
        0.0
    );
    assert_eq!(
        value(&s, r#"ncps_nar_requests_total{outcome="miss"}"#),
        paths
    );
    assert_eq!(
        value(&s, r#"ncps_nar_requests_total{outcome="hit"}"#),
        paths
    );
    assert_eq!(
        value(&s, "ncps_nar_served_bytes_total"),
        2.0 * file_bytes as f64
    );
    assert_eq!(value(&s, "ncps_nar_fetched_bytes_total"), file_bytes as f64);
    assert_eq!(value(&s, "ncps_stored_bytes"), file_bytes as f64);
    assert_eq!(value(&s, "ncps_downloads_in_flight"), 0.0);
    assert_eq!(
        value(&s, "ncps_lazy_chunking_queued"),
        0.0,
        "chunking is off"
    );
    let nar_gets = value(
        &s,
        r#"ncps_http_requests_total{route="nar",method="GET",status="200"}"#,
    );
    assert_eq!(nar_gets, 2.0 * paths);

    // The Go ncps's names, beside ours (dashboards and alerts written for it keep working).
    assert_eq!(
        value(
            &s,
            r#"ncps_narinfo_served_total{result="miss",status="success"}"#
        ),
        paths
    );
    assert_eq!(
        value(
            &s,
            r#"ncps_nar_served_total{result="miss",status="success"}"#
        ),
        paths
    );
    assert_eq!(
        value(
            &s,
            r#"ncps_nar_served_total{result="hit",status="success"}"#
        ),
        paths
    );
    assert_eq!(value(&s, "ncps_store_total_size_bytes"), file_bytes as f64);
    assert_eq!(value(&s, "ncps_narinfo_count"), paths);
    assert_eq!(value(&s, "ncps_nar_file_count"), paths);
    assert_eq!(value(&s, "ncps_upstream_count_total"), 1.0);
    assert_eq!(value(&s, "ncps_upstream_count_healthy"), 1.0);
    assert_eq!(value(&s, "ncps_cache_max_size_bytes"), 0.0);
    assert_eq!(
        value(
            &s,
            &format!(
                "ncps_upstream_healthy{{upstream=\"{}/\"}}",
                fx.upstream.url()
            )
        ),
        1.0
    );

    // Upstream fetch durations and locks, also under the Go ncps's names: one narinfo fetch
    // and one NAR download per path; each download held its (in-process) lock, released.
    assert_eq!(
        value(&s, "ncps_upstream_narinfo_fetch_duration_seconds_count"),
        paths
    );
    assert_eq!(
        value(&s, "ncps_upstream_nar_fetch_duration_seconds_count"),
        paths
    );
    let locked = value(
        &s,
        r#"ncps_lock_acquisitions_total{type="exclusive",mode="local",result="success"}"#,
    );
    assert!(
        locked >= paths,
        "{locked} lock acquisitions for {paths} downloads"
    );
    // A background job may hold a lock at the moment of the scrape: its hold is not over.
    let held = value(
        &s,
        r#"ncps_lock_hold_duration_seconds_count{type="exclusive",mode="local"}"#,
    );
    assert!(
        held >= paths && held <= locked,
        "{held} holds measured for {locked} acquisitions"
    );
    assert_eq!(
        value(&s, r#"ncps_lock_retry_attempts_total{type="exclusive"}"#),
        0.0
    );

    // Without the flag there is no /metrics.
    let plain = Fixture::new(Compression::Zstd).await;
    http::get(&plain.ncps.url_for("metrics"))
        .await
        .expect_status(404, "GET /metrics when disabled");
}

/// With chunking, the chunk gauges say how many chunks are stored and how many NAR positions
/// each serves (they were exported but never measured); with a size limit, the Go ncps's
/// eviction and utilisation metrics follow the eviction.
#[tokio::test(flavor = "multi_thread")]
async fn chunk_and_eviction_gauges_are_measured() {
    let fx = Fixture::with(FixtureOptions::new(Compression::Xz).ncps_args(&[
        "--prometheus-enabled",
        "--cache-cdc-enabled",
        "--cache-max-size",
        "100M",
    ]))
    .await;
    let key = fx.ncps.pubkey().await;
    fx.env
        .client()
        .substitute_ok(&fx.ncps.url(), &key, &fx.closure)
        .await;
    // Gauges are measured at most every 15 s: a scrape may show the figures of one before.
    let s = crate::harness::eventually_within(
        "the chunk gauges",
        std::time::Duration::from_secs(30),
        || async {
            let text = http::get(&fx.ncps.url_for("metrics"))
                .await
                .expect_status(200, "GET /metrics")
                .text();
            let s = samples(&text);
            if s.get("ncps_chunks").copied().unwrap_or(0.0) > 0.0 {
                Ok(s)
            } else {
                Err(text)
            }
        },
    )
    .await;
    assert!(value(&s, "ncps_chunk_dedup_ratio") >= 1.0);
    assert_eq!(
        value(&s, "ncps_cache_max_size_bytes"),
        100.0 * 1024.0 * 1024.0
    );
    let ratio = value(&s, "ncps_cache_utilization_ratio");
    assert!(ratio > 0.0 && ratio < 1.0, "{ratio}");
}
