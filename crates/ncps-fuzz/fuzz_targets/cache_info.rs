//! `nix-cache-info` (every upstream's probe answer): never panics, and an accepted one
//! survives render → parse unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ncps_nix::CacheInfo;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(info) = CacheInfo::parse(text) {
        assert_eq!(CacheInfo::parse(&info.render()).ok(), Some(info));
    }
});
