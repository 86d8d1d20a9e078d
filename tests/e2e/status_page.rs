//! The status page (issue 17) in a real browser: headless Chromium loads `/` from an ncps that
//! served the real Nix client, and the charts must hold exactly the figures the server
//! reports; more traffic while the page stays open must reach the charts without a reload. A
//! screenshot is kept in `target/test-artifacts/status-page.png`.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::harness::browser::Browser;
use crate::harness::narinfo::random_store_hash;
use crate::harness::{Compression, Fixture, FixtureOptions, eventually_within, http};

/// `GET /?history=1h` as JSON.
async fn status(fx: &Fixture) -> Value {
    let url = fx.ncps.url_for("?history=1h");
    let response = http::fetch(
        &http::client(),
        Method::GET,
        &url,
        &[("accept", "application/json")],
    )
    .await
    .expect("GET /")
    .expect_status(200, "GET /?history=1h");
    serde_json::from_slice(&response.body).expect("JSON at /")
}

/// What the page's charts plot: `chart id/series` → (the sample before the first point, the
/// points' times, their values).
const READ_CHARTS: &str = r#"(() => {
  const out = {};
  for (const svg of document.querySelectorAll('.chart svg')) {
    const chart = svg.parentElement.id;
    const x = svg.dataset.x ? svg.dataset.x.split(',').map(Number) : [];
    const start = svg.dataset.start ? Number(svg.dataset.start) : null;
    for (const p of svg.querySelectorAll('path[data-series]')) {
      const y = p.dataset.y === '' ? [] : p.dataset.y.split(',').map(v => v === '' ? null : Number(v));
      out[chart + '/' + p.dataset.series] = { start, x, y, drawn: (p.getAttribute('d').match(/[ML]/g) || []).length };
    }
  }
  return out;
})()"#;

/// The total a rate series stands for: each rate times the interval it covers.
fn integrate(series: &Value) -> f64 {
    let mut previous = series["start"]
        .as_f64()
        .expect("rate charts say where they start");
    let mut total = 0.0;
    let x = series["x"].as_array().expect("x");
    let y = series["y"].as_array().expect("y");
    assert_eq!(x.len(), y.len(), "one value per point: {series}");
    for (x, y) in x.iter().zip(y) {
        let x = x.as_f64().expect("time");
        total += y.as_f64().unwrap_or(0.0) * (x - previous) / 1000.0;
        previous = x;
    }
    total
}

/// A column's change over the window the JSON covers.
fn change(history: &Value, column: &str) -> f64 {
    let values = history[column].as_array().expect(column);
    let last = values.last().and_then(Value::as_f64).unwrap_or(0.0);
    let first = values.first().and_then(Value::as_f64).unwrap_or(0.0);
    last - first
}

fn assert_close(what: &str, plotted: f64, reported: f64) {
    assert!(
        (plotted - reported).abs() <= 1e-6 * reported.abs().max(1.0),
        "{what}: the chart plots {plotted}, the server reported {reported}"
    );
}

/// Every rate chart against the server's columns, and the tiles against its report.
fn check_page_against(browser: &mut Browser, json: &Value) {
    let charts = browser.eval(READ_CHARTS);
    let history = &json["history"];
    for (chart_series, column) in [
        ("chart-requests/narinfo_hits", "narinfo_hits"),
        ("chart-requests/narinfo_misses", "narinfo_misses"),
        ("chart-requests/narinfo_not_found", "narinfo_not_found"),
        ("chart-requests/nar_hits", "nar_hits"),
        ("chart-requests/nar_misses", "nar_misses"),
        ("chart-bytes/bytes_served", "bytes_served"),
        ("chart-bytes/bytes_fetched", "bytes_fetched"),
    ] {
        let series = &charts[chart_series];
        assert!(
            series.is_object(),
            "no {chart_series} on the page: {charts}"
        );
        assert_close(chart_series, integrate(series), change(history, column));
        let points = series["y"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| !v.is_null())
            .count();
        assert_eq!(
            series["drawn"].as_u64(),
            Some(points as u64),
            "{chart_series}: every value is drawn"
        );
    }
    let stored = &charts["chart-stored/stored_bytes"]["y"];
    assert_eq!(
        stored
            .as_array()
            .and_then(|y| y.last())
            .and_then(Value::as_f64),
        json["ncps"]["storage"]["stored_bytes"].as_f64(),
        "the stored-bytes chart ends at the stored bytes"
    );
    let tiles = browser.eval(
        "Object.fromEntries([...document.querySelectorAll('.tile .value')]\
         .map(e => [e.id, e.dataset.value === undefined ? null : Number(e.dataset.value)]))",
    );
    let report = &json["ncps"];
    assert_eq!(tiles["tile-stored"], report["storage"]["stored_bytes"]);
    assert_eq!(
        tiles["tile-served"].as_f64(),
        Some(change(history, "bytes_served"))
    );
    let lookups: f64 = [
        "narinfo_hits",
        "narinfo_misses",
        "narinfo_not_found",
        "narinfo_errors",
    ]
    .iter()
    .map(|c| change(history, c))
    .sum();
    assert_close(
        "hit-rate tile",
        tiles["tile-hit-rate"].as_f64().expect("hit rate"),
        change(history, "narinfo_hits") / lookups,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_charts_what_the_server_reports() {
    let fx = Fixture::with(FixtureOptions::new(Compression::Xz).ncps_args(&[
        "--cache-cdc-enabled",
        "--cache-max-size",
        "1G",
        "--cache-lru-schedule",
        "@every 2s",
    ]))
    .await;
    let paths = fx.closure.paths.len() as f64;
    // The first sample is taken before any traffic.
    eventually_within("a first sample", Duration::from_secs(30), || async {
        let samples = status(&fx).await["history"]["at"]
            .as_array()
            .map_or(0, Vec::len);
        if samples >= 2 {
            Ok(())
        } else {
            Err(format!("{samples} samples"))
        }
    })
    .await;

    // Real traffic: the Nix client twice (misses, then hits), and three paths nobody has.
    let key = fx.ncps.pubkey().await;
    for _ in 0..2 {
        fx.env
            .client()
            .substitute_ok(&fx.ncps.url(), &key, &fx.closure)
            .await;
    }
    for _ in 0..3 {
        let missing = fx.ncps.url_for(&format!("{}.narinfo", random_store_hash()));
        http::get(&missing)
            .await
            .expect_status(404, "a path nobody has");
    }
    let chunk_bytes: u64 = fx.config.chunk_files().iter().map(|(_, size)| size).sum();
    // Storage is measured by the sampler every 10 s; the LRU job runs every 2 s.
    let json = eventually_within(
        "storage measured and LRU run",
        Duration::from_secs(60),
        || async {
            let json = status(&fx).await;
            let stored = json["ncps"]["storage"]["stored_bytes"].as_u64();
            let lru_ran = json["ncps"]["jobs"].as_array().is_some_and(|jobs| {
                jobs.iter()
                    .any(|j| j["name"] == "lru" && j["last"]["ok"] == true)
            });
            if stored == Some(chunk_bytes) && lru_ran {
                Ok(json)
            } else {
                Err(format!(
                    "stored {stored:?} of {chunk_bytes}, LRU ran: {lru_ran}"
                ))
            }
        },
    )
    .await;
    let report = &json["ncps"];
    assert_eq!(
        json["publicKey"].as_str(),
        Some(key.as_str()),
        "the Go ncps's field"
    );
    assert!(json["hostname"].is_string(), "the Go ncps's field");
    assert_eq!(report["narinfo"]["miss"].as_f64(), Some(paths), "{report}");
    assert!(
        report["narinfo"]["hit"].as_f64().unwrap() >= paths,
        "{report}"
    );
    assert_eq!(
        report["narinfo"]["not_found"].as_f64(),
        Some(3.0),
        "{report}"
    );
    // The second client may join a download whose chunks are still being committed (a miss).
    let nar = &report["nar"];
    assert_eq!(
        nar["hit"].as_f64().unwrap() + nar["miss"].as_f64().unwrap(),
        2.0 * paths,
        "{report}"
    );
    let file_bytes = fx.upstream_file_bytes();
    assert_eq!(report["bytes_fetched"].as_u64(), Some(file_bytes));
    assert_eq!(
        report["storage"]["max_size"].as_u64(),
        Some(1 << 30),
        "1G is a GiB, as the Go ncps reads it"
    );
    assert_eq!(report["storage"]["narinfos"].as_f64(), Some(paths));
    let chunks = &report["chunks"];
    assert_eq!(
        chunks["stored_bytes"].as_u64(),
        Some(chunk_bytes),
        "{chunks}"
    );
    let ratio = chunks["plain_bytes"].as_f64().unwrap() / chunk_bytes as f64;
    assert_eq!(
        chunks["compression_ratio"].as_f64(),
        Some(ratio),
        "{chunks}"
    );
    assert_eq!(
        report["upstreams"][0]["url"].as_str(),
        Some(format!("{}/", fx.upstream.url()).as_str())
    );
    assert!(
        report["upstreams"][0]["latency_ms"].as_f64().is_some(),
        "{report}"
    );
    let jobs: Vec<&str> = report["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| j["name"].as_str())
        .collect();
    assert_eq!(jobs, ["chunk_gc", "lru", "reclaim", "recovery"]);

    // The page: the JSON's figures, drawn.
    let page_url = fx.ncps.url();
    let mut browser = tokio::task::block_in_place(|| Browser::open(&page_url, 1280, 1000));
    tokio::task::block_in_place(|| {
        browser.wait_for(
            "Number(document.body.dataset.updates) >= 1",
            Duration::from_secs(30),
        );
        check_page_against(&mut browser, &json);
        let upstream = browser.eval(
            "document.querySelector('#upstreams li').dataset.upstream + ' ' + \
             document.querySelector('#upstreams .badge').textContent",
        );
        assert_eq!(
            upstream.as_str(),
            Some(format!("{}/ healthy", fx.upstream.url()).as_str())
        );
        let jobs = browser.eval(
            "[...document.querySelectorAll('#jobs li')].map(li => li.dataset.job + ':' + \
             li.querySelector('.badge').textContent).join(' ')",
        );
        assert_eq!(
            jobs.as_str(),
            Some("chunk_gc:ok lru:ok reclaim:ok recovery:ok")
        );
        let snippet = browser.eval("document.getElementById('nix-conf').textContent");
        assert_eq!(
            snippet.as_str(),
            Some(
                format!(
                    "substituters = {}\ntrusted-public-keys = {key}",
                    fx.ncps.url().trim_end_matches('/')
                )
                .as_str()
            )
        );
        let compression =
            browser.eval("document.querySelector('[data-figure=compression] .value').textContent");
        let expected = format!("{:.2}×", chunks["compression_ratio"].as_f64().unwrap());
        assert_eq!(compression.as_str(), Some(expected.as_str()));
    });

    // Live: five more misses while the page stays open reach its charts without a reload.
    let updates =
        tokio::task::block_in_place(|| browser.eval("Number(document.body.dataset.updates)"));
    for _ in 0..5 {
        let missing = fx.ncps.url_for(&format!("{}.narinfo", random_store_hash()));
        http::get(&missing)
            .await
            .expect_status(404, "a path nobody has");
    }
    let json = status(&fx).await;
    assert_eq!(json["ncps"]["narinfo"]["not_found"].as_f64(), Some(8.0));
    tokio::task::block_in_place(|| {
        browser.wait_for(
            &format!("Number(document.body.dataset.updates) > {updates}"),
            Duration::from_secs(30),
        );
        let charts = browser.eval(READ_CHARTS);
        assert_close(
            "not found, after the page refreshed",
            integrate(&charts["chart-requests/narinfo_not_found"]),
            8.0,
        );
        browser.screenshot(&artifact("status-page.png"));
    });
    let png = std::fs::read(artifact("status-page.png")).expect("screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
}

/// Browsers get the page, with a policy that lets nothing else in; tools get JSON; both need
/// the read token when one is set.
#[tokio::test(flavor = "multi_thread")]
async fn the_page_is_for_browsers_and_behind_the_read_token() {
    let fx = Fixture::with(
        FixtureOptions::new(Compression::Xz).ncps_args(&["--cache-get-token", "s3cret"]),
    )
    .await;
    let url = fx.ncps.url();
    let client = http::client();
    let browser_accept = ("accept", "text/html,application/xhtml+xml,*/*;q=0.8");
    let anonymous = http::fetch(&client, Method::GET, &url, &[browser_accept])
        .await
        .expect("GET /");
    assert_eq!(anonymous.status, 401, "the page without the token");
    assert!(
        anonymous.header("www-authenticate").is_some(),
        "browsers ask for it"
    );
    let page = http::fetch(
        &client,
        Method::GET,
        &url,
        &[browser_accept, ("authorization", "Bearer s3cret")],
    )
    .await
    .expect("GET /")
    .expect_status(200, "the page with the token");
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let policy = page.header("content-security-policy").expect("a policy");
    assert!(
        policy.starts_with("default-src 'none'; script-src 'sha256-"),
        "{policy}"
    );
    assert!(page.text().contains("<svg") || page.text().contains("chart-requests"));
    let json = http::fetch(
        &client,
        Method::GET,
        &url,
        &[("authorization", "Bearer s3cret")],
    )
    .await
    .expect("GET /")
    .expect_status(200, "JSON with the token");
    assert_eq!(json.header("content-type"), Some("application/json"));
    assert_eq!(json.header("vary"), Some("Accept"));
    let body: Value = serde_json::from_slice(&json.body).expect("JSON");
    assert!(body["ncps"]["upstreams"].is_array() && body.get("history").is_none());
    let bad = http::fetch(
        &client,
        Method::GET,
        &format!("{url}?history=1y"),
        &[("authorization", "Bearer s3cret")],
    )
    .await
    .expect("GET /?history=1y")
    .expect_status(400, "an unknown window");
    assert!(bad.text().contains("history=24h"), "{}", bad.text());
}

/// Where test artifacts are kept (`target/test-artifacts`, beside the build).
fn artifact(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/test-artifacts")
        .join(name)
}
