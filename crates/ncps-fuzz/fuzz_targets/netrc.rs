//! netrc files (`--netrc-file`): never panic, whatever the file holds; looking credentials up
//! in an accepted one never panics either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ncps_upstream::Netrc;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(netrc) = Netrc::parse(text) {
        for host in ["cache.example.org", "", "default"] {
            if let Some(credentials) = netrc.credentials(host, Some(443)) {
                let _ = credentials.header_value();
            }
            let _ = netrc.credentials(host, None);
        }
    }
});
