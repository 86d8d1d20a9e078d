//! Fuzzes the narinfo parser: it must never panic, and whatever it accepts must survive
//! render → parse unchanged (so we never serve a narinfo we would read back differently).
//!
//! Run from crates/ncps-nix (needs `cargo install cargo-fuzz` and the nightly toolchain):
//!     cargo +nightly fuzz run narinfo_parse -- -max_total_time=60
#![no_main]

use libfuzzer_sys::fuzz_target;
use ncps_nix::{CacheInfo, NarInfo};

fuzz_target!(|data: &[u8]| {
    // Narinfos are text; non-UTF-8 input is refused before our parser sees it.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(info) = NarInfo::parse(text) {
        let rendered = info.render();
        let again = NarInfo::parse(&rendered)
            .unwrap_or_else(|e| panic!("rendered narinfo does not parse: {e}\n{rendered}"));
        assert_eq!(again, info, "render/parse changed the value:\n{rendered}");
        assert_eq!(again.render(), rendered);
        // Exercise the signing path too; it must not panic on any accepted input.
        let _ = info.fingerprint();
    }
    // The same line format backs nix-cache-info; it must not panic either.
    if let Ok(info) = CacheInfo::parse(text) {
        assert_eq!(CacheInfo::parse(&info.render()).ok(), Some(info));
    }
});
