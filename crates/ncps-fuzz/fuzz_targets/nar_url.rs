//! NAR URLs and file names (request paths, narinfo `URL:` lines): never panic, and an accepted
//! one names exactly one key: printing it back gives the same key, and the only spellings
//! accepted are the canonical one (nixbase32, which names the stored file) and the lowercase
//! hex spelling of the same digest (which resolves to that canonical key).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ncps_nix::NarKey;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(key) = NarKey::parse_url(text) {
        assert_eq!(NarKey::parse_url(&key.url()).ok(), Some(key));
        let given = text.strip_prefix('/').unwrap_or(text);
        let hex = format!("nar/{}", hex_file_name(&key));
        assert!(
            given == key.url() || given == hex,
            "a third spelling of {key}: {given}"
        );
    }
    if let Ok(key) = NarKey::parse_file_name(text) {
        assert!(
            text == key.file_name() || text == hex_file_name(&key),
            "a third spelling of {key}: {text}"
        );
    }
});

/// The file name with the digest in lowercase hex.
fn hex_file_name(key: &NarKey) -> String {
    let hex: String = key
        .hash
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{hex}{}", key.compression.nar_extension())
}
