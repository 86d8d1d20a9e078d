//! Store paths and their hashes (request paths, narinfo `StorePath:` and `References:`, pins):
//! never panic, and an accepted one prints back as itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ncps_nix::{StorePath, StorePathHash};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(path) = StorePath::parse(text) {
        assert_eq!(path.to_absolute(), text);
        assert_eq!(
            StorePath::parse_base_name(&path.base_name()).ok(),
            Some(path)
        );
    }
    if let Ok(path) = StorePath::parse_base_name(text) {
        assert_eq!(path.base_name(), text);
    }
    if let Ok(hash) = StorePathHash::parse(text) {
        assert_eq!(hash.to_string(), text);
    }
});
