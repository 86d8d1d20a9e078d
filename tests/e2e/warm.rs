//! `ncps warm` (issue 17): fills a running cache with whole closures over HTTP, before any
//! client asks; afterwards the real Nix client substitutes them with the upstream stopped.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::harness::narinfo::random_store_hash;
use crate::harness::{Compression, Fixture};

/// `ncps warm --url <cache> ARGS…` with `stdin` on its standard input: (success, stdout,
/// stderr).
async fn warm(url: String, args: Vec<String>, stdin: String) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ncps"))
            .args(["warm", "--url", &url, "--concurrency", "3"])
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ncps warm");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        let out = child.wait_with_output().expect("ncps warm");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread")]
async fn warmed_closures_are_hits_with_the_upstream_stopped() {
    let mut fx = Fixture::new(Compression::Xz).await;
    let paths = fx.closure.paths.len();
    // The top path from stdin (as `nix path-info -r` would give it), its references followed;
    // a path no upstream has is reported missing, not failed.
    let missing = format!("{}-gone", random_store_hash());
    let (ok, stdout, stderr) = warm(
        fx.ncps.url(),
        vec!["-".into(), missing],
        format!("{}\n", fx.closure.top),
    )
    .await;
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.starts_with(&format!("warmed {paths} paths"))
            && stdout.contains("0 already present, 1 missing upstream, 0 failed"),
        "{stdout}\n{stderr}"
    );
    assert_eq!(
        stdout.lines().count(),
        1,
        "stdout holds the summary alone: {stdout}"
    );

    fx.upstream.stop().await;
    let key = fx.ncps.pubkey().await;
    fx.env
        .client()
        .substitute_ok(&fx.ncps.url(), &key, &fx.closure)
        .await;
    let (ok, stdout, stderr) =
        warm(fx.ncps.url(), vec![fx.closure.top.clone()], String::new()).await;
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.starts_with("warmed 0 paths")
            && stdout.contains(&format!("{paths} already present")),
        "{stdout}\n{stderr}"
    );
}

/// A cache that cannot be reached fails every path, and the exit status says so.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_cache_fails_the_run() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let (ok, stdout, stderr) = warm(
        format!("http://127.0.0.1:{port}"),
        vec![random_store_hash()],
        String::new(),
    )
    .await;
    assert!(!ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("1 failed") && stderr.contains("FAILED"),
        "{stdout}\n{stderr}"
    );
}
