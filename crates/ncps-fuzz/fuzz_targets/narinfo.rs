//! The narinfo parser (upstream answers and uploads): never panics, and whatever it accepts
//! survives render → parse unchanged, so ncps never serves a narinfo it would read back
//! differently. Its fingerprint (what signatures cover) is computed for every accepted input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ncps_nix::NarInfo;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(info) = NarInfo::parse(text) {
        let rendered = info.render();
        let again = NarInfo::parse(&rendered)
            .unwrap_or_else(|e| panic!("a rendered narinfo does not parse: {e}\n{rendered}"));
        assert_eq!(again, info, "render/parse changed the value:\n{rendered}");
        assert_eq!(again.render(), rendered);
        let _ = info.fingerprint();
    }
});
