//! Keys and signatures (`--cache-upstream-public-keys`, secret key files, narinfo `Sig:`
//! lines): never panic, and a signature check on any input answers yes or no.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ncps_nix::{PublicKey, SecretKey};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(key) = PublicKey::parse(text) {
        assert_eq!(
            PublicKey::parse(&key.to_nix_string()).ok(),
            Some(key.clone())
        );
        let _ = key.verify("fingerprint", text);
    }
    if let Ok(secret) = SecretKey::parse(text) {
        let signature = secret.sign("fingerprint");
        assert!(secret.public_key().verify("fingerprint", &signature));
    }
});
