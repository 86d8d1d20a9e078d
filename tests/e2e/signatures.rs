//! ncps serves only narinfos that carry a valid signature by a configured upstream key.

use crate::harness::narinfo::store_hash;
use crate::harness::{Closure, Compression, Fixture, Ncps, TestEnv, Upstream, http};

/// ncps answers a 5xx (the upstream gave bad data; not 404, which would mean "absent") for
/// each path of the closure, and a client trusting ncps's key cannot substitute it.
async fn assert_refused(env: &TestEnv, upstream: &Upstream, closure: &Closure) {
    let config = env.ncps_config(&[upstream], &[&trusted_key(env).await]);
    let ncps = env.ncps(&config).await;
    assert_narinfos_refused(&ncps, &closure.paths).await;
    env.client()
        .substitute_fails(&ncps.url(), &ncps.pubkey().await, &closure.top)
        .await;
}

async fn assert_narinfos_refused(ncps: &Ncps, paths: &[String]) {
    for path in paths {
        let url = ncps.url_for(&format!("{}.narinfo", store_hash(path)));
        let resp = http::get(&url).await;
        assert!(
            (500..600).contains(&resp.status),
            "GET {url}: want a 5xx for a narinfo without a valid signature, got {}: {}",
            resp.status,
            resp.excerpt()
        );
    }
}

/// The key ncps is told to trust in these tests; it never signs anything.
async fn trusted_key(env: &TestEnv) -> String {
    env.key("upstream-1").await.public
}

/// Signed by a key with the trusted key's *name* but other key material.
#[tokio::test(flavor = "multi_thread")]
async fn narinfo_signed_by_an_untrusted_key_is_refused() {
    let env = TestEnv::new();
    let closure = env.closure().await;
    let impostor = env.key("upstream-1").await;
    impostor.sign(env.path(), &closure.top).await;
    let upstream = env.upstream(&closure, Compression::Xz).await;
    assert!(upstream.narinfo(&closure.top).get("Sig").is_some());
    assert_refused(&env, &upstream, &closure).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unsigned_narinfo_is_refused() {
    let env = TestEnv::new();
    let closure = env.closure().await;
    let upstream = env.upstream(&closure, Compression::Xz).await;
    assert_eq!(upstream.narinfo(&closure.top).get("Sig"), None);
    assert_refused(&env, &upstream, &closure).await;
}

/// A correctly signed narinfo whose NarHash was changed afterwards no longer verifies; once
/// the upstream serves the original again, ncps serves it (the refusal was not cached).
#[tokio::test(flavor = "multi_thread")]
async fn tampered_narinfo_is_refused_until_fixed() {
    let fx = Fixture::new(Compression::Xz).await;
    let file = fx.upstream.narinfo_file(&fx.closure.leaf);
    let original = std::fs::read_to_string(&file).expect("read narinfo");
    let leaf_hash = fx
        .upstream
        .narinfo(&fx.closure.leaf)
        .field("NarHash")
        .to_owned();
    let other_hash = fx
        .upstream
        .narinfo(&fx.closure.middle)
        .field("NarHash")
        .to_owned();
    std::fs::write(&file, original.replace(&leaf_hash, &other_hash)).expect("tamper");

    assert_narinfos_refused(&fx.ncps, std::slice::from_ref(&fx.closure.leaf)).await;
    let ncps_key = fx.ncps.pubkey().await;
    fx.env
        .client()
        .substitute_fails(&fx.ncps.url(), &ncps_key, &fx.closure.leaf)
        .await;

    std::fs::write(&file, original).expect("restore");
    let narinfo = fx.ncps_narinfo(&fx.closure.leaf).await;
    assert_eq!(narinfo.field("NarHash"), leaf_hash);
    fx.env
        .client()
        .substitute_ok(&fx.ncps.url(), &ncps_key, &fx.closure)
        .await;
}

/// Narinfos are signed once, when stored, and the signature is kept with the key that made it
/// (issue 18). After the signing key changes (its file replaced: same name, new key material),
/// every stored narinfo is served signed by the new key and never with the stored signature:
/// a client that trusts only the new key substitutes the whole closure from what is stored,
/// with the upstream gone.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_signing_key_re_signs_stored_narinfos() {
    let mut fx = Fixture::new(Compression::Xz).await;
    let old_key = fx.ncps.pubkey().await;
    fx.env
        .client()
        .substitute_ok(&fx.ncps.url(), &old_key, &fx.closure)
        .await;
    let stored_sigs = |fx: &Fixture| {
        fx.config
            .sqlite_count("SELECT COUNT(*) FROM narinfos WHERE own_sig IS NOT NULL")
    };
    assert_eq!(stored_sigs(&fx), fx.closure.paths.len() as u64);
    let before = fx.ncps_narinfo(&fx.closure.top).await;

    let status = fx.ncps.terminate().await;
    assert!(status.success(), "ncps exited with {status} on SIGTERM");
    fx.upstream.stop().await;
    std::fs::remove_file(fx.config.data_dir.join("secret.key")).unwrap();
    fx.ncps = fx.env.ncps(&fx.config).await;
    let new_key = fx.ncps.pubkey().await;
    let name = |key: &str| key.split_once(':').unwrap().0.to_owned();
    assert_ne!(new_key, old_key);
    assert_eq!(name(&new_key), name(&old_key));

    let after = fx.ncps_narinfo(&fx.closure.top).await;
    let ours = |info: &crate::harness::narinfo::NarInfo| -> Vec<String> {
        info.all("Sig")
            .into_iter()
            .filter(|s| name(s) == name(&new_key))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(ours(&after).len(), 1, "{}", after.text);
    assert_ne!(
        ours(&after),
        ours(&before),
        "the stored signature was served"
    );
    fx.env
        .client()
        .substitute_ok(&fx.ncps.url(), &new_key, &fx.closure)
        .await;
}
