//! Realisation and build-trace documents (uploads and upstream answers): never panic, and the
//! fingerprint signatures cover does not change when the signatures do.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ncps_nix::SignedJson;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(document) = SignedJson::parse(text) {
        let again = SignedJson::parse(&document.fingerprint)
            .unwrap_or_else(|e| panic!("a fingerprint does not parse: {e}"));
        assert_eq!(again.fingerprint, document.fingerprint);
    }
});
