//! NAR URLs and file names (request paths, narinfo `URL:` lines): never panic, and an accepted
//! one names exactly one key: printing it back gives the same key, so two spellings can never
//! reach one stored file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ncps_nix::NarKey;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(key) = NarKey::parse_url(text) {
        assert_eq!(NarKey::parse_url(&key.url()).ok(), Some(key));
        let canonical = text.strip_prefix('/').unwrap_or(text);
        assert_eq!(canonical, key.url(), "a second spelling of {key}");
    }
    if let Ok(key) = NarKey::parse_file_name(text) {
        assert_eq!(text, key.file_name(), "a second spelling of {key}");
    }
});
