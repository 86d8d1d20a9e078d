//! Ages, sizes and counts as people read them, for fsck findings, progress lines and the job
//! log.

use std::time::Duration;

/// A human age: exact in the largest whole unit (`1h`, `90m`, `2d`, as a setting is written),
/// else rough (`45s`, `12m`, `3h`, `2d`).
pub fn format_age(age: Duration) -> String {
    let s = age.as_secs();
    for (unit, name) in [(86_400, "d"), (3600, "h"), (60, "m")] {
        if s >= unit && s % unit == 0 {
            return format!("{}{name}", s / unit);
        }
    }
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Bytes in decimal units, as progress lines show them.
pub fn format_size(bytes: u64) -> String {
    match bytes {
        0..1_000 => format!("{bytes} B"),
        1_000..1_000_000 => format!("{:.1} kB", bytes as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", bytes as f64 / 1e6),
        _ => format!("{:.2} GB", bytes as f64 / 1e9),
    }
}

/// A count with its noun, plural when it is not one: `1 NAR`, `3 NARs`.
pub fn plural(count: u64, noun: &str) -> String {
    format!("{count} {noun}{}", if count == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_ages_and_sizes() {
        assert_eq!(format_age(Duration::from_secs(59)), "59s");
        assert_eq!(format_age(Duration::from_secs(3600)), "1h");
        assert_eq!(format_age(Duration::from_secs(5400)), "90m");
        assert_eq!(format_age(Duration::from_secs(3700)), "61m");
        assert_eq!(format_age(Duration::from_secs(7200)), "2h");
        assert_eq!(format_age(Duration::from_secs(3 * 86_400)), "3d");
        assert_eq!(format_size(999), "999 B");
        assert_eq!(format_size(4_000_000), "4.0 MB");
        assert_eq!(plural(1, "pin"), "1 pin");
        assert_eq!(plural(0, "pin"), "0 pins");
    }
}
