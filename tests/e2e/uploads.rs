//! Uploads (`--cache-allow-put-verb`): `nix copy --to` ncps, then substitute from it trusting
//! only ncps's key; trusted upload keys; raw PUTs that must be refused without leaving anything
//! behind; read and write tokens (also through Nix's `netrc-file`); build logs; DELETE.
//!
//! ncps's upstream here is an empty cache: a narinfo ncps answers 200 for came from an upload,
//! and a 404 means ncps holds nothing for it.

use std::path::PathBuf;

use reqwest::Method;

use crate::harness::narinfo::{random_store_hash, sha256_nixbase32, store_hash};
use crate::harness::upload::{FileCache, UploadServer, send};
use crate::harness::{Compression, NarInfo, TestEnv, eventually, http, nix, random_bytes};

const ALLOW_PUT: &str = "--cache-allow-put-verb";
const ALLOW_DELETE: &str = "--cache-allow-delete-verb";

/// Size of the random blob of uploaded closures: quick to compress, still several NAR pieces.
const BLOB_BYTES: usize = 500_000;
/// Payload of the single paths sent by hand.
const PAYLOAD_BYTES: usize = 100_000;

const GET_TOKEN: &str = "get-secret";
const PUT_TOKEN: &str = "put-secret";

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Asserts a 2xx, the statuses Nix accepts for uploads and ncps answers to deletions.
fn expect_success(resp: &http::Resp, what: &str) {
    assert!(
        (200..300).contains(&resp.status),
        "{what}: want a success, got {}: {}",
        resp.status,
        resp.excerpt()
    );
}

/// ncps answers 404 for `store_path`'s narinfo: it holds nothing for it.
async fn assert_no_narinfo(server: &UploadServer, store_path: &str) {
    let url = server.narinfo_url(store_path);
    http::get(&url)
        .await
        .expect_status(404, &format!("GET {url}"));
}

/// A netrc file giving `password` for 127.0.0.1 (curl matches the host without the port).
fn netrc_file(env: &TestEnv, password: &str) -> String {
    let file = env.path().join(format!("netrc-{password}"));
    std::fs::write(
        &file,
        format!("machine 127.0.0.1\nlogin nix\npassword {password}\n"),
    )
    .expect("write netrc");
    file.to_str().expect("utf-8").to_owned()
}

// ----- nix copy --to, then substitute ----------------------------------------------------

/// Builds a closure signed by a key of the test, uploads it with `nix copy --to ncps` in
/// `compression` to ncps started with `args` (after `--cache-allow-put-verb`), and proves a
/// fresh client trusting only ncps's key substitutes all of it intact.
async fn upload_then_substitute(
    env: &TestEnv,
    compression: Compression,
    args: &[&str],
) -> (UploadServer, crate::harness::Closure) {
    let closure = env.closure_with_blob(BLOB_BYTES).await;
    let uploader = env.key("uploader-1").await;
    uploader.sign(env.path(), &closure.top).await;
    let server = env.upload_server(&[&[ALLOW_PUT], args].concat()).await;

    server
        .nix_copy_to(&closure.top, compression, &[])
        .await
        .expect_success();

    let ncps_key = server.ncps.pubkey().await;
    assert_ne!(ncps_key, uploader.public);
    env.client()
        .substitute_ok(&server.ncps.url(), &ncps_key, &closure)
        .await;
    (server, closure)
}

#[tokio::test(flavor = "multi_thread")]
async fn xz_upload_is_substituted_with_ncps_key() {
    let env = TestEnv::new();
    upload_then_substitute(&env, Compression::Xz, &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn zstd_upload_is_substituted_with_ncps_key() {
    let env = TestEnv::new();
    upload_then_substitute(&env, Compression::Zstd, &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn uncompressed_upload_is_substituted_with_ncps_key() {
    let env = TestEnv::new();
    upload_then_substitute(&env, Compression::None, &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bzip2_upload_is_substituted_with_ncps_key() {
    let env = TestEnv::new();
    upload_then_substitute(&env, Compression::Bzip2, &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn brotli_upload_is_substituted_with_ncps_key() {
    let env = TestEnv::new();
    upload_then_substitute(&env, Compression::Brotli, &[]).await;
}

/// With lazy chunking, uploads are stored whole, served at once, then chunked in the
/// background; the whole files go after their delay and the closure still substitutes.
#[tokio::test(flavor = "multi_thread")]
async fn upload_with_lazy_cdc_is_chunked_in_the_background() {
    let env = TestEnv::new();
    let lazy = [
        "--cache-cdc-enabled",
        "--cache-cdc-lazy-chunking-enabled",
        "--cache-cdc-lazy-recovery-schedule",
        "@every 1s",
        "--cache-cdc-delete-delay",
        "1s",
    ];
    let (server, closure) = upload_then_substitute(&env, Compression::Xz, &lazy).await;
    crate::harness::eventually("uploads chunked and their whole files deleted", || async {
        let whole = server.config.whole_nar_files();
        let chunks = server.config.chunk_files();
        if whole.is_empty() && !chunks.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} whole files, {} chunks",
                whole.len(),
                chunks.len()
            ))
        }
    })
    .await;
    let ncps_key = server.ncps.pubkey().await;
    env.client()
        .substitute_ok(&server.ncps.url(), &ncps_key, &closure)
        .await;
}

/// With chunking on, uploaded NARs are stored as chunks only, and still substitute.
#[tokio::test(flavor = "multi_thread")]
async fn upload_with_cdc_is_chunked_and_substituted() {
    let env = TestEnv::new();
    let (server, _) = upload_then_substitute(&env, Compression::Xz, &["--cache-cdc-enabled"]).await;
    let whole = server.config.whole_nar_files();
    let chunks = server.config.chunk_files();
    assert!(
        whole.is_empty() && !chunks.is_empty(),
        "uploads should be stored as chunks only; whole files: {whole:?}, {} chunks",
        chunks.len()
    );
}

// ----- trusted upload keys ---------------------------------------------------------------

/// With `--cache-require-trusted-signature`, a path signed by the trusted upload key is
/// accepted; one signed only by another key of the same name is refused and leaves nothing:
/// no narinfo, no NAR file or chunk, no upload temp file, no database row.
#[tokio::test(flavor = "multi_thread")]
async fn upload_needs_a_signature_by_a_trusted_upload_key() {
    let env = TestEnv::new();
    let closure = env.closure_with_blob(BLOB_BYTES).await;
    let trusted = env.key("uploader-1").await;
    let impostor = env.key("uploader-1").await;
    // `middle` and `leaf` carry the trusted signature, `blob` only the impostor's.
    trusted.sign(env.path(), &closure.middle).await;
    impostor.sign(env.path(), &closure.blob).await;
    let server = env
        .upload_server(&[
            ALLOW_PUT,
            "--cache-require-trusted-signature",
            "--cache-trusted-upload-key",
            &trusted.public,
        ])
        .await;

    server
        .nix_copy_to(&closure.middle, Compression::Xz, &[])
        .await
        .expect_success();
    for path in [&closure.middle, &closure.leaf] {
        let url = server.narinfo_url(path);
        http::get(&url).await.expect_ok_with_length(&url);
    }
    let stored = server.stored_files();
    assert!(!stored.is_empty(), "the accepted upload stored no NAR");
    let nars_before = server.db_count("SELECT COUNT(*) FROM nars");

    let refused = server
        .nix_copy_to(&closure.blob, Compression::Xz, &[])
        .await;
    assert!(
        !refused.success() && refused.stderr.contains("403"),
        "an upload signed by an untrusted key must fail with a 403:\n{refused}"
    );
    assert_no_narinfo(&server, &closure.blob).await;
    let blob_rows = server.db_count(&format!(
        "SELECT COUNT(*) FROM narinfos WHERE hash = '{}'",
        store_hash(&closure.blob)
    ));
    assert_eq!(blob_rows, 0, "a narinfo row of the refused path remains");
    assert_eq!(
        server.db_count("SELECT COUNT(*) FROM nars"),
        nars_before,
        "a NAR row of the refused path remains"
    );
    // The refused path's NAR was accepted (200) before its narinfo was refused: it must not
    // stay behind either, not even as a temp file waiting for a narinfo.
    server
        .assert_nothing_kept(&stored, "after refusing an untrusted upload")
        .await;
}

// ----- raw requests that must be refused -------------------------------------------------

/// A fresh single path as `nix copy --to file://` wrote it (xz), not uploaded yet, and ncps.
// Fields drop in order: processes stop before the temp dir goes.
struct RawUpload {
    server: UploadServer,
    cache: FileCache,
    path: String,
    env: TestEnv,
}

impl RawUpload {
    async fn new(args: &[&str]) -> RawUpload {
        let env = TestEnv::new();
        let path = env.built_path(PAYLOAD_BYTES).await.path;
        let cache = env.file_cache(&path, Compression::Xz).await;
        let server = env.upload_server(args).await;
        RawUpload {
            server,
            cache,
            path,
            env,
        }
    }

    fn nar_rel(&self) -> String {
        self.cache.nar_url(&self.path)
    }

    fn narinfo_rel(&self) -> String {
        format!("{}.narinfo", store_hash(&self.path))
    }

    fn narinfo(&self) -> NarInfo {
        self.cache.narinfo(&self.path)
    }

    async fn put(&self, rel: &str, body: Vec<u8>) -> http::Resp {
        self.server.request(Method::PUT, rel, &[], body).await
    }

    /// PUTs the real NAR, which must be accepted.
    async fn put_nar(&self) {
        let rel = self.nar_rel();
        let resp = self.put(&rel, self.cache.nar(&self.path)).await;
        expect_success(&resp, &format!("PUT /{rel}"));
    }

    /// `resp` (to `what`) has status `want`, ncps serves no narinfo for the path, and storage
    /// and temp dir hold nothing.
    async fn assert_refused(&self, resp: http::Resp, want: u16, what: &str) {
        resp.expect_status(want, what);
        assert_no_narinfo(&self.server, &self.path).await;
        self.server
            .assert_nothing_kept(&[], &format!("after {what}"))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nar_not_matching_its_url_hash_is_refused() {
    let up = RawUpload::new(&[ALLOW_PUT]).await;
    let rel = format!("nar/{}.nar.xz", sha256_nixbase32(b"some other NAR"));
    let resp = up.put(&rel, up.cache.nar(&up.path)).await;
    up.assert_refused(resp, 400, &format!("PUT /{rel} (the bytes hash otherwise)"))
        .await;
}

/// A narinfo must describe exactly the NAR uploaded at its URL; each mismatch is refused.
#[tokio::test(flavor = "multi_thread")]
async fn narinfo_not_describing_the_uploaded_nar_is_refused() {
    let up = RawUpload::new(&[ALLOW_PUT]).await;
    let narinfo = up.narinfo();
    let other_hash = format!("sha256:{}", sha256_nixbase32(b"another NAR"));
    let plus_one = |key: &str| {
        let size: u64 = narinfo.field(key).parse().expect("numeric size");
        (size + 1).to_string()
    };
    let mismatches = [
        ("NarHash", other_hash.clone()),
        ("NarSize", plus_one("NarSize")),
        ("FileHash", other_hash),
        ("FileSize", plus_one("FileSize")),
    ];
    for (key, wrong) in mismatches {
        up.put_nar().await;
        let text = narinfo.text.replace(
            &format!("{key}: {}", narinfo.field(key)),
            &format!("{key}: {wrong}"),
        );
        assert_ne!(text, narinfo.text, "{key} not replaced");
        let resp = up.put(&up.narinfo_rel(), text.into_bytes()).await;
        up.assert_refused(resp, 400, &format!("PUT of a narinfo with a wrong {key}"))
            .await;
    }
}

/// `--cache-max-upload-size 1M`: `nix copy --to` of a path whose NAR is 2 MiB fails, a raw
/// 2 MiB NAR PUT gets 413, and neither leaves anything; a small NAR is still accepted.
#[tokio::test(flavor = "multi_thread")]
async fn nar_over_the_upload_limit_is_refused() {
    let up = RawUpload::new(&[ALLOW_PUT, "--cache-max-upload-size", "1M"]).await;
    let big_path = up.env.built_path(2 << 20).await.path;
    let refused = up
        .server
        .nix_copy_to(&big_path, Compression::Zstd, &[])
        .await;
    assert!(
        !refused.success() && refused.stderr.contains("413"),
        "`nix copy --to` of a NAR over the limit must fail with a 413:\n{refused}"
    );
    assert_no_narinfo(&up.server, &big_path).await;
    up.server
        .assert_nothing_kept(&[], "after `nix copy --to` of a NAR over the limit")
        .await;

    let big = random_bytes(2 << 20);
    let rel = format!("nar/{}.nar", sha256_nixbase32(&big));
    let url = up.server.url_for(&rel);
    let what = format!("PUT /{rel} (2 MiB)");
    let resp = send(&http::client(), Method::PUT, &url, &[], big)
        .await
        .unwrap_or_else(|e| panic!("{what}: no response (want a 413): {e:?}"));
    up.assert_refused(resp, 413, &what).await;

    // A client that declares a NAR over the limit and waits for the go-ahead, as `nix copy`
    // does, is refused before it sends a byte: no `100 Continue`, and the connection closes.
    for prefix in ["", "/upload"] {
        let path = format!("{prefix}/nar/{}.nar", sha256_nixbase32(b"never sent"));
        let answer =
            http::put_waiting_for_continue(&up.server.ncps.authority(), &path, 2 << 20).await;
        assert!(
            answer.starts_with("HTTP/1.1 413") && !answer.contains("100 Continue"),
            "PUT {path} declaring 2 MiB over a 1 MiB limit: want a 413 before any body: \
             {answer:.300}"
        );
    }

    up.server.put_path(&up.cache, &up.path, "", &[]).await;
}

/// A NAR of one regular file of `len` zero bytes: a few KiB compressed, `len` bytes plain.
fn zero_file_nar(len: u64) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s);
        out.resize(out.len().next_multiple_of(8), 0);
    }
    let mut nar = Vec::new();
    for s in [
        &b"nix-archive-1"[..],
        b"(",
        b"type",
        b"regular",
        b"contents",
    ] {
        string(&mut nar, s);
    }
    nar.extend_from_slice(&len.to_le_bytes());
    nar.resize(nar.len() + len as usize, 0);
    string(&mut nar, b")");
    nar
}

/// Decompression bombs in every compression ncps decodes: a NAR that unpacks to 64 MiB from
/// a few KiB, uploaded with a 4 MiB limit. Each is refused with 413 and nothing is kept: no
/// NAR file, no row, no temporary file.
#[tokio::test(flavor = "multi_thread")]
async fn decompression_bombs_are_refused_and_leave_nothing() {
    use std::io::Write;
    let up = RawUpload::new(&[ALLOW_PUT, "--cache-max-upload-size", "4M"]).await;
    let nar = zero_file_nar(64 << 20);
    let bombs: Vec<(&str, Vec<u8>)> = vec![
        ("xz", {
            let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(&nar).unwrap();
            e.finish().unwrap()
        }),
        ("zst", zstd::encode_all(&nar[..], 1).unwrap()),
        ("bz2", {
            let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            e.write_all(&nar).unwrap();
            e.finish().unwrap()
        }),
        ("br", {
            let mut out = Vec::new();
            let mut e = brotli::CompressorWriter::new(&mut out, 4096, 1, 22);
            e.write_all(&nar).unwrap();
            drop(e);
            out
        }),
    ];
    for (ext, bomb) in bombs {
        assert!(
            bomb.len() < 1 << 20,
            "{ext}: the bomb is {} bytes",
            bomb.len()
        );
        let rel = format!("nar/{}.nar.{ext}", sha256_nixbase32(&bomb));
        let what = format!("PUT /{rel} ({} bytes unpacking to 64 MiB)", bomb.len());
        let resp = up.put(&rel, bomb).await;
        up.assert_refused(resp, 413, &what).await;
    }
    assert_eq!(up.server.db_count("SELECT COUNT(*) FROM nars"), 0);
    assert_eq!(up.server.db_count("SELECT COUNT(*) FROM uploaded_nars"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_narinfo_is_refused() {
    let up = RawUpload::new(&[ALLOW_PUT]).await;
    let narinfo = up.narinfo();
    let without_store_path: String = narinfo
        .text
        .lines()
        .filter(|l| !l.starts_with("StorePath:"))
        .map(|l| format!("{l}\n"))
        .collect();
    let bodies: [(&str, Vec<u8>); 4] = [
        ("not key-value lines", b"this is not a narinfo\n".to_vec()),
        ("no StorePath", without_store_path.into_bytes()),
        (
            "a NarSize that is no number",
            narinfo
                .text
                .replace(narinfo.field("NarSize"), "lots")
                .into_bytes(),
        ),
        ("bytes that are not UTF-8", vec![0xff, 0xfe, b'\n', 0x80]),
    ];
    for (why, body) in bodies {
        let resp = up.put(&up.narinfo_rel(), body).await;
        up.assert_refused(resp, 400, &format!("PUT of a narinfo with {why}"))
            .await;
    }
}

/// A narinfo before its NAR is refused; in the right order the same upload works.
#[tokio::test(flavor = "multi_thread")]
async fn narinfo_before_its_nar_is_refused() {
    let up = RawUpload::new(&[ALLOW_PUT]).await;
    let resp = up
        .put(&up.narinfo_rel(), up.narinfo().text.into_bytes())
        .await;
    up.assert_refused(resp, 400, "PUT of a narinfo whose NAR was never uploaded")
        .await;

    up.server.put_path(&up.cache, &up.path, "", &[]).await;
    let url = up.server.narinfo_url(&up.path);
    http::get(&url).await.expect_ok_with_length(&url);
}

/// Without `--cache-allow-put-verb` and `--cache-allow-delete-verb`, every PUT and DELETE
/// answers 405.
#[tokio::test(flavor = "multi_thread")]
async fn uploads_and_deletions_are_refused_unless_enabled() {
    let up = RawUpload::new(&[]).await;
    let log_rel = format!("log/{}-e2e.drv", random_store_hash());
    let requests = [
        (Method::PUT, up.nar_rel(), up.cache.nar(&up.path)),
        (
            Method::PUT,
            up.narinfo_rel(),
            up.narinfo().text.into_bytes(),
        ),
        (
            Method::PUT,
            format!("upload/{}", up.nar_rel()),
            up.cache.nar(&up.path),
        ),
        (Method::PUT, log_rel, b"a build log\n".to_vec()),
        (Method::DELETE, up.narinfo_rel(), Vec::new()),
        (Method::DELETE, up.nar_rel(), Vec::new()),
    ];
    for (method, rel, body) in requests {
        let what = format!("{method} /{rel}");
        let resp = up.server.request(method, &rel, &[], body).await;
        up.assert_refused(resp, 405, &what).await;
    }
}

/// `PUT /upload/nar/…` and `PUT /upload/<hash>.narinfo` work like the plain routes.
#[tokio::test(flavor = "multi_thread")]
async fn upload_prefixed_routes_publish_a_path() {
    let up = RawUpload::new(&[ALLOW_PUT]).await;
    up.server
        .put_path(&up.cache, &up.path, "upload/", &[])
        .await;
    let ncps_key = up.server.ncps.pubkey().await;
    let client = up.env.client();
    client
        .copy_from(&up.server.ncps.url(), &ncps_key, &up.path)
        .await
        .expect_success();
    client.verify(&up.path, &ncps_key).await.expect_success();
}

/// `nix copy --to http://host/upload`, as the Go ncps's docs describe it: the real client reads
/// `/upload/nix-cache-info`, asks `/upload/<hash>.narinfo` (answered from what is stored only,
/// so a path an upstream has is still uploaded) and PUTs under `/upload`; the path is then
/// substituted from the root. `GET /` and `GET /upload/` name the cache and its key in JSON.
#[tokio::test(flavor = "multi_thread")]
async fn nix_copy_to_the_upload_prefix_uploads_even_what_an_upstream_has() {
    let env = TestEnv::new();
    let built = env.built_path(50_000).await.path;
    let upstream_key = env.key("upstream-1").await;
    upstream_key.sign(env.path(), &built).await;
    let upstream = env.upstream_of(&[&built], Compression::Xz).await;
    let config = env
        .ncps_config(&[&upstream], &[&upstream_key.public])
        .with_args(&[ALLOW_PUT]);
    let ncps = env.ncps(&config).await;
    let narinfo_path = format!("/{}.narinfo", store_hash(&built));

    let to = format!("{}/upload?compression=zstd", ncps.url());
    nix::run(env.path(), "nix", &["copy", "--to", &to, &built])
        .await
        .expect_success();
    assert_eq!(
        upstream.gets(&narinfo_path),
        0,
        "an upload-only read asked the upstream"
    );
    let stored = http::get(&ncps.url_for(&narinfo_path))
        .await
        .expect_status(200, "the uploaded narinfo at the root");
    assert!(
        stored.text().contains("Compression: zstd"),
        "{}",
        stored.text()
    );
    assert_eq!(
        upstream.gets(&narinfo_path),
        0,
        "the root read it from the upload"
    );

    let ncps_key = ncps.pubkey().await;
    for index in ["", "upload/"] {
        let resp = http::get(&ncps.url_for(index))
            .await
            .expect_status(200, &format!("GET /{index}"));
        assert_eq!(resp.header("content-type"), Some("application/json"));
        let body = resp.text();
        for want in [
            format!("\"hostname\":\"{}\"", config.hostname),
            format!("\"publicKey\":\"{ncps_key}\""),
        ] {
            assert!(
                body.contains(&want),
                "GET /{index}: {want} missing from {body}"
            );
        }
    }
    let client = env.client();
    client
        .copy_from(&ncps.url(), &ncps_key, &built)
        .await
        .expect_success();
    client.verify(&built, &ncps_key).await.expect_success();
}

// ----- tokens ----------------------------------------------------------------------------

/// `--cache-get-token` guards reads (Bearer, or Basic with the token as password, as Nix sends
/// from a netrc file), `--cache-put-token` guards writes; `/healthz` stays open. A Nix client
/// with the read token in its `netrc-file` substitutes, one without it cannot.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_guard_reads_and_writes() {
    let env = TestEnv::new();
    let closure = env.closure_with_blob(BLOB_BYTES).await;
    let cache = env.file_cache(&closure.top, Compression::Zstd).await;
    let server = env
        .upload_server(&[
            ALLOW_PUT,
            "--cache-get-token",
            GET_TOKEN,
            "--cache-put-token",
            PUT_TOKEN,
        ])
        .await;
    let (get_auth, put_auth) = (bearer(GET_TOKEN), bearer(PUT_TOKEN));

    let nar_rel = cache.nar_url(&closure.leaf);
    for auth in [None, Some(get_auth.as_str()), Some("Bearer wrong")] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        let resp = server
            .request(Method::PUT, &nar_rel, &headers, cache.nar(&closure.leaf))
            .await;
        resp.expect_status(401, &format!("PUT /{nar_rel} with {auth:?}"));
    }
    for path in &closure.paths {
        server
            .put_path(&cache, path, "", &[("Authorization", &put_auth)])
            .await;
    }

    let url = server.narinfo_url(&closure.top);
    let client = http::client();
    let get = |auth: Option<&str>| {
        let mut request = client.get(&url);
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        request
    };
    let cases = [
        ("no credentials", get(None), 401),
        ("the read token", get(Some(&get_auth)), 200),
        // The write token reads too: `nix copy --to` sends one netrc password for both.
        ("the write token", get(Some(&put_auth)), 200),
        ("a wrong token", get(Some("Bearer wrong")), 401),
        (
            "Basic auth with the read token",
            client.get(&url).basic_auth("nix", Some(GET_TOKEN)),
            200,
        ),
        (
            "Basic auth with a wrong password",
            client.get(&url).basic_auth("nix", Some("wrong")),
            401,
        ),
    ];
    for (how, request, want) in cases {
        let status = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url} with {how}: {e}"))
            .status();
        assert_eq!(status, want, "GET {url} with {how}");
    }
    http::get(&server.url_for("healthz"))
        .await
        .expect_status(200, "GET /healthz without credentials");

    let ncps_key = http::fetch(
        &client,
        Method::GET,
        &server.url_for("pubkey"),
        &[("Authorization", &get_auth)],
    )
    .await
    .expect("GET /pubkey")
    .expect_status(200, "GET /pubkey with the read token")
    .text()
    .trim()
    .to_owned();
    env.client()
        .substitute_fails(&server.ncps.url(), &ncps_key, &closure.top)
        .await;
    env.client()
        .with_option("netrc-file", &netrc_file(&env, GET_TOKEN))
        .substitute_ok(&server.ncps.url(), &ncps_key, &closure)
        .await;
}

/// With only `--cache-get-token`, writes need that token too: `nix copy --to` fails without
/// credentials and uploads with them in its `netrc-file`.
#[tokio::test(flavor = "multi_thread")]
async fn nix_copy_to_authenticates_through_netrc() {
    let env = TestEnv::new();
    let closure = env.closure_with_blob(BLOB_BYTES).await;
    let server = env
        .upload_server(&[ALLOW_PUT, "--cache-get-token", GET_TOKEN])
        .await;

    let anonymous = server
        .nix_copy_to(&closure.top, Compression::Zstd, &[])
        .await;
    assert!(
        !anonymous.success(),
        "an upload without the token must fail:\n{anonymous}"
    );
    let netrc = netrc_file(&env, GET_TOKEN);
    server
        .nix_copy_to(&closure.top, Compression::Zstd, &[("netrc-file", &netrc)])
        .await
        .expect_success();

    let client = http::client();
    for path in &closure.paths {
        let url = server.narinfo_url(path);
        http::fetch(
            &client,
            Method::GET,
            &url,
            &[("Authorization", &bearer(GET_TOKEN))],
        )
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .expect_ok_with_length(&url);
    }
}

// ----- build logs ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn build_log_is_served_as_uploaded() {
    let env = TestEnv::new();
    let server = env.upload_server(&[ALLOW_PUT]).await;
    let rel = format!("log/{}-e2e.drv", random_store_hash());
    let log = random_bytes(50_000);
    let resp = server.request(Method::PUT, &rel, &[], log.clone()).await;
    expect_success(&resp, &format!("PUT /{rel}"));

    let url = server.url_for(&rel);
    let resp = http::get(&url)
        .await
        .expect_status(200, &format!("GET {url}"));
    assert!(
        resp.body[..] == log[..],
        "GET {url}: not the uploaded bytes"
    );

    let unknown = server.url_for(&format!("log/{}-e2e.drv", random_store_hash()));
    http::get(&unknown)
        .await
        .expect_status(404, &format!("GET {unknown}"));
}

/// `nix store copy-log --to ncps` uploads a real build log, which `nix log --store ncps` reads
/// back.
#[tokio::test(flavor = "multi_thread")]
async fn nix_copy_log_and_nix_log_round_trip() {
    let env = TestEnv::new();
    let built = env.built_path(PAYLOAD_BYTES).await;
    let server = env.upload_server(&[ALLOW_PUT]).await;
    server
        .nix_copy_to(&built.path, Compression::Xz, &[])
        .await
        .expect_success();
    let url = server.ncps.url();

    nix::run(
        env.path(),
        "nix",
        &["store", "copy-log", "--to", &url, &built.path],
    )
    .await
    .expect_success();
    let log_url = server.url_for(&format!("log/{}", built.drv));
    let resp = http::get(&log_url)
        .await
        .expect_status(200, &format!("GET {log_url}"));
    assert!(
        resp.text().contains(&built.log_marker),
        "GET {log_url}: the build log lacks {}: {}",
        built.log_marker,
        resp.excerpt()
    );
    let read = nix::run(env.path(), "nix", &["log", "--store", &url, &built.path])
        .await
        .expect_success();
    assert!(
        read.stdout.contains(&built.log_marker),
        "`nix log` did not print the uploaded log:\n{read}"
    );
}

// ----- DELETE ----------------------------------------------------------------------------

/// DELETE of an uploaded narinfo makes it 404; DELETE of its NAR URL makes the NAR 404 and
/// frees its storage.
#[tokio::test(flavor = "multi_thread")]
async fn delete_removes_narinfo_and_nar() {
    let up = RawUpload::new(&[ALLOW_PUT, ALLOW_DELETE]).await;
    up.server.put_path(&up.cache, &up.path, "", &[]).await;
    let narinfo_url = up.server.narinfo_url(&up.path);
    let served = NarInfo::parse(
        &http::get(&narinfo_url)
            .await
            .expect_ok_with_length(&narinfo_url)
            .text(),
    );
    let served_nar_rel = served.field("URL").to_owned();
    let nar_url = up.server.url_for(&served_nar_rel);
    let body = http::get(&nar_url)
        .await
        .expect_status(200, &format!("GET {nar_url}"))
        .body;
    served
        .verify_nar(&body)
        .unwrap_or_else(|e| panic!("GET {nar_url}: {e}"));

    let resp = up
        .server
        .request(Method::DELETE, &up.narinfo_rel(), &[], Vec::new())
        .await;
    expect_success(&resp, &format!("DELETE {narinfo_url}"));
    assert_no_narinfo(&up.server, &up.path).await;

    let resp = up
        .server
        .request(Method::DELETE, &served_nar_rel, &[], Vec::new())
        .await;
    expect_success(&resp, &format!("DELETE {nar_url}"));
    for rel in [served_nar_rel, up.nar_rel()] {
        let url = up.server.url_for(&rel);
        http::get(&url)
            .await
            .expect_status(404, &format!("GET {url} after DELETE"));
    }
    eventually("the deleted NAR's files are gone", || async {
        let files: Vec<PathBuf> = up.server.stored_files();
        if files.is_empty() {
            Ok(())
        } else {
            Err(format!("still stored: {files:?}"))
        }
    })
    .await;
}
