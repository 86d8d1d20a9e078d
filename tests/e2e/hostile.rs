//! Hostile clients: floods of requests that cost the server more than they cost the client.
//! Whatever they do, everyone else is still served.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::narinfo::store_hash;
use crate::harness::{Compression, Fixture, FixtureOptions, NarInfo, TestEnv, eventually, http};

/// Requests that are left unread at once.
const UNREAD_CONVERSIONS: usize = 1_000;
/// How long a request that must be served may take while the flood holds (a stalled server
/// waits forever; a healthy one answers in milliseconds, see docs/reliability.md).
const SERVED_WITHIN: Duration = Duration::from_secs(1);

/// Sends `GET rel` on a new connection and leaves the answer unread.
async fn unread_get(authority: &str, rel: &str) -> TcpStream {
    let mut stream = TcpStream::connect(authority).await.expect("connect");
    let request = format!("GET /{rel} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    stream
}

/// The status line and headers of an answer, if they come within a second.
async fn head_of_answer(stream: &mut TcpStream) -> Option<String> {
    let mut buf = vec![0; 1024];
    let n = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Any stored NAR can be asked for in another compression (its NarHash is in every narinfo),
/// and each such request makes the server convert. Hundreds of them, never read, must neither
/// stall the server (conversions waiting on clients and on their input used to take every
/// blocking thread, after which nothing was served until restart) nor keep running once their
/// clients are gone: beyond a bound they get a 503 with Retry-After.
#[tokio::test(flavor = "multi_thread")]
#[expect(clippy::print_stderr, reason = "figures for docs/reliability.md")]
async fn unread_conversions_never_stop_serving() {
    let env = TestEnv::new();
    // Incompressible: the plain NAR is far larger than what buffers hold.
    let closure = env.closure_with_blob(16_000_000).await;
    let key = env.key("upstream-1").await;
    key.sign(env.path(), &closure.top).await;
    let upstream = env.upstream(&closure, Compression::Xz).await;
    let config = env.ncps_config(&[&upstream], &[&key.public]);
    let ncps = env.ncps(&config).await;
    let ncps_key = ncps.pubkey().await;
    env.client()
        .substitute_ok(&ncps.url(), &ncps_key, &closure)
        .await;
    let narinfo_url = ncps.url_for(&format!("{}.narinfo", store_hash(&closure.blob)));
    let narinfo = NarInfo::parse(
        &http::get(&narinfo_url)
            .await
            .expect_status(200, "narinfo")
            .text(),
    );
    let stored_url = ncps.url_for(narinfo.field("URL"));
    let plain = format!("nar/{}.nar", narinfo.nar_hash_nixbase32());

    let mut flood = Vec::new();
    for _ in 0..UNREAD_CONVERSIONS {
        flood.push(unread_get(&ncps.authority(), &plain).await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Everyone else is served meanwhile: a narinfo, and the stored NAR as it is.
    let started = std::time::Instant::now();
    http::get(&narinfo_url)
        .await
        .expect_status(200, "narinfo during the flood");
    let narinfo_took = started.elapsed();
    let served = http::get(&stored_url)
        .await
        .expect_status(200, "stored NAR during the flood");
    let nar_took = started.elapsed() - narinfo_took;
    assert!(
        narinfo_took < SERVED_WITHIN && nar_took < SERVED_WITHIN,
        "during the flood a narinfo took {narinfo_took:?} and the stored NAR {nar_took:?}"
    );
    eprintln!(
        "FLOOD-FIGURES unread conversions: narinfo {narinfo_took:?}, stored 16 MB NAR {nar_took:?}"
    );
    narinfo
        .verify_nar(&served.body)
        .unwrap_or_else(|e| panic!("stored NAR during the flood: {e}"));

    // Most of the flood was turned away with a clear answer.
    let mut busy = 0;
    for stream in &mut flood {
        if let Some(head) = head_of_answer(stream).await
            && head.starts_with("HTTP/1.1 503")
        {
            assert!(
                head.to_ascii_lowercase().contains("retry-after:"),
                "a 503 must say when to retry: {head}"
            );
            busy += 1;
        }
    }
    assert!(
        busy >= UNREAD_CONVERSIONS - 64,
        "only {busy} of {UNREAD_CONVERSIONS} unread conversions were refused"
    );

    // Gone clients release what they held: a conversion read to the end works again.
    drop(flood);
    let url = ncps.url_for(&plain);
    let body = eventually("a conversion after the flood", || {
        let url = url.clone();
        async move {
            let resp = http::get(&url).await;
            if resp.status == 200 {
                Ok(resp.body)
            } else {
                Err(format!("status {}", resp.status))
            }
        }
    })
    .await;
    narinfo
        .verify_nar_content("none", &body)
        .unwrap_or_else(|e| panic!("plain NAR after the flood: {e}"));
}

/// Clients asking at once for one NAR nobody has fetched yet.
const COLD_CLIENTS: usize = 2_000;

/// 2,000 clients ask at once for one NAR no one has fetched yet (the upstream holds the body
/// until every request is in): one upstream GET, and every client receives the same, correct
/// bytes.
#[tokio::test(flavor = "multi_thread")]
#[expect(clippy::print_stderr, reason = "figures for docs/reliability.md")]
async fn two_thousand_cold_clients_cause_one_upstream_get() {
    // The test process itself holds 2,000 sockets.
    rlimit::increase_nofile_limit(u64::MAX).expect("raise the open-files limit");
    let fx = Fixture::with(FixtureOptions::new(Compression::Xz).blob_bytes(100_000)).await;
    let narinfo = fx.ncps_narinfo(&fx.closure.blob).await;
    let url = fx.nar_url(&narinfo);
    let started = std::time::Instant::now();
    let responses = http::overlapping_gets(&fx.upstream, &url, COLD_CLIENTS).await;
    eprintln!(
        "FLOOD-FIGURES {COLD_CLIENTS} cold clients on one NAR: all bodies in {:?}",
        started.elapsed()
    );
    assert_eq!(
        fx.upstream.gets(&fx.upstream.nar_path(&fx.closure.blob)),
        1,
        "{COLD_CLIENTS} cold clients, upstream GETs of the NAR"
    );
    narinfo
        .verify_nar(&responses[0].body)
        .unwrap_or_else(|e| panic!("the first client's NAR: {e}"));
    for (i, resp) in responses.iter().enumerate() {
        assert_eq!(resp.status, 200, "client {i}");
        assert!(resp.body == responses[0].body, "client {i} got other bytes");
    }
}

/// Connections that send nothing, or half a request, and stay.
const IDLE_CONNECTIONS: usize = 5_000;

/// A server started under a soft limit of 1,024 open files (many distributions' default)
/// meets 5,000 connections that send nothing or half a request: a real client is still served
/// at once. (Before, the limit ran out at about a thousand connections and every new client
/// waited, unaccepted, for as long as the idle ones stayed.)
#[tokio::test(flavor = "multi_thread")]
#[expect(clippy::print_stderr, reason = "figures for docs/reliability.md")]
async fn idle_and_half_sent_connections_do_not_lock_clients_out() {
    let env = TestEnv::new();
    let closure = env.closure().await;
    let key = env.key("upstream-1").await;
    key.sign(env.path(), &closure.top).await;
    let upstream = env.upstream(&closure, Compression::Xz).await;
    let mut config = env.ncps_config(&[&upstream], &[&key.public]);
    config.soft_fd_limit = Some(1024);
    let ncps = env.ncps(&config).await;

    let mut flood = Vec::new();
    for i in 0..IDLE_CONNECTIONS {
        let mut stream = TcpStream::connect(ncps.authority()).await.expect("connect");
        if i % 2 == 1 {
            let half = format!(
                "GET /nix-cache-info HTTP/1.1\r\nHost: {}\r\n",
                ncps.authority()
            );
            stream
                .write_all(half.as_bytes())
                .await
                .expect("send half a request");
        }
        flood.push(stream);
    }

    let narinfo_url = ncps.url_for(&format!("{}.narinfo", store_hash(&closure.top)));
    let started = std::time::Instant::now();
    let served = tokio::time::timeout(SERVED_WITHIN, http::get(&narinfo_url))
        .await
        .unwrap_or_else(|_| {
            panic!("a client was not served within {SERVED_WITHIN:?} beside {IDLE_CONNECTIONS} idle connections")
        });
    served.expect_status(200, "narinfo beside the idle connections");
    eprintln!(
        "FLOOD-FIGURES {IDLE_CONNECTIONS} idle connections, soft fd limit 1024: narinfo {:?}",
        started.elapsed()
    );
    drop(flood);
}

/// A narinfo's `URL`, `FileHash` and `FileSize` are not signed: an upstream (or anyone between
/// it and ncps on `http://`) can set them to anything. Here path A's narinfo claims path V's
/// FileHash. Fetching A first must not make V's NAR URL name A's bytes: V is still
/// substituted intact, and A's own NAR (whose file cannot match the claimed hash) is refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_narinfo_cannot_take_over_another_paths_nar_url() {
    let env = TestEnv::new();
    let attacker = env.built_path(50_000).await.path;
    let victim = env.built_path(50_000).await.path;
    let key = env.key("upstream-1").await;
    key.sign(env.path(), &attacker).await;
    key.sign(env.path(), &victim).await;
    let upstream = env
        .upstream_of(&[&attacker, &victim], Compression::Xz)
        .await;
    let victim_file_hash = upstream.narinfo(&victim).field("FileHash").to_owned();
    let file = upstream.narinfo_file(&attacker);
    let original = std::fs::read_to_string(&file).expect("read narinfo");
    let tampered: String = original
        .lines()
        .map(|line| {
            if line.starts_with("FileHash: ") {
                format!("FileHash: {victim_file_hash}\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    assert_ne!(tampered, original);
    std::fs::write(&file, tampered).expect("write narinfo");

    let config = env.ncps_config(&[&upstream], &[&key.public]);
    let ncps = env.ncps(&config).await;
    let ncps_key = ncps.pubkey().await;
    let attacker_narinfo = ncps.url_for(&format!("{}.narinfo", store_hash(&attacker)));
    http::get(&attacker_narinfo)
        .await
        .expect_status(200, "the attacker's narinfo (its signature is valid)");

    let client = env.client();
    client
        .copy_from(&ncps.url(), &ncps_key, &victim)
        .await
        .expect_success();
    client.verify(&victim, &ncps_key).await.expect_success();
    env.client()
        .substitute_fails(&ncps.url(), &ncps_key, &attacker)
        .await;
}

/// Path tricks on every route and with every method a route takes, on a server that accepts
/// uploads, deletions and pins: traversal (plain, percent-encoded, double-encoded, overlong
/// UTF-8, backslashes), NUL and CR/LF, absolute paths, queries after names, names far too
/// long. (A `?` inside a name is legal in store names and is covered by the logs tests.) Each gets a 4xx that reveals no file, and nothing is stored or deleted.
#[tokio::test(flavor = "multi_thread")]
async fn every_route_refuses_path_tricks_and_stores_nothing() {
    let env = TestEnv::new();
    let server = env
        .upload_server(&["--cache-allow-put-verb", "--cache-allow-delete-verb"])
        .await;
    let planted = crate::harness::random_hex(16);
    std::fs::write(env.path().join("planted.narinfo"), &planted).expect("plant a file");
    let secret = std::fs::read_to_string(server.config.data_dir.join("secret.key"))
        .expect("read the secret key");
    let secret = secret
        .split_once(':')
        .expect("name:key")
        .1
        .trim()
        .to_owned();

    let long = "a".repeat(4096);
    let tails: Vec<String> = [
        "../secret.key",
        "..%2fsecret.key",
        "%2e%2e%2fsecret.key",
        "%2e%2e/%2e%2e/planted.narinfo",
        "%252e%252e%252fsecret.key",
        "%c0%ae%c0%ae/secret.key",
        "..\\..\\planted.narinfo",
        "....//....//planted.narinfo",
        "/etc/passwd",
        "secret.key%00.narinfo",
        "x%0d%0aSet-Cookie:%20a=b.narinfo",
        "%2e%2e?x=../../planted.narinfo",
        &long,
    ]
    .iter()
    .map(|t| (*t).to_owned())
    .collect();
    let routes: [(&str, &[&str]); 9] = [
        ("/", &["GET", "HEAD", "PUT", "DELETE"]),
        ("/nar/", &["GET", "HEAD", "PUT", "DELETE"]),
        ("/upload/", &["PUT"]),
        ("/upload/nar/", &["PUT"]),
        ("/log/", &["GET", "PUT"]),
        ("/pin/", &["POST", "DELETE"]),
        ("/realisations/", &["GET", "PUT"]),
        ("/build-trace-v2/", &["GET", "PUT"]),
        ("/build-trace-v2/x/", &["GET", "PUT"]),
    ];
    let mut asked = 0;
    for (prefix, methods) in routes {
        for method in methods {
            for tail in &tails {
                let path = format!("{prefix}{tail}");
                let (status, body) =
                    http::raw_request(&server.ncps.authority(), method, &path, b"{}").await;
                asked += 1;
                assert!(
                    (400..500).contains(&status),
                    "{method} {path:.120}: want a 4xx, got {status}: {body:.200}"
                );
                for hidden in [&planted, &secret] {
                    assert!(
                        !body.contains(hidden.as_str()),
                        "{method} {path:.120} leaked a file"
                    );
                }
            }
        }
    }
    // Oversized documents: a narinfo, a realisation and a build trace just over 1 MiB (the
    // narinfo limit; realisations allow 64 KiB).
    let huge = vec![b'a'; (1 << 20) + 4096];
    let hash = crate::harness::narinfo::random_store_hash();
    for path in [
        format!("/{hash}.narinfo"),
        format!("/realisations/sha256:{hash}!out.doi"),
        format!("/build-trace-v2/{hash}-x.drv/out"),
    ] {
        let (status, body) = http::raw_request(&server.ncps.authority(), "PUT", &path, &huge).await;
        assert_eq!(status, 413, "PUT {path} of over 1 MiB: {body:.200}");
        asked += 1;
    }
    for table in [
        "narinfos",
        "nars",
        "uploaded_nars",
        "build_logs",
        "realisations",
        "pins",
    ] {
        assert_eq!(
            server.db_count(&format!("SELECT COUNT(*) FROM {table}")),
            0,
            "{table} after {asked} hostile requests"
        );
    }
    server
        .assert_nothing_kept(&[], &format!("after {asked} hostile requests"))
        .await;
    assert!(
        env.path().join("planted.narinfo").exists(),
        "a DELETE reached a file outside the cache"
    );
    http::get(&server.url_for("healthz"))
        .await
        .expect_status(200, "healthz after the hostile requests");
}
