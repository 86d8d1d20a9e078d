//! Value parsers for duration and schedule flags, in the Go ncps's syntax, and the formatter
//! that shows a typed default in that syntax in `--help`.

use std::fmt::Write as _;
use std::time::Duration;

use ncps_core::Schedule;

/// Parses a Go duration flag ("3s", "1m30s", "500ms").
pub fn parse(input: &str) -> Result<Duration, String> {
    ncps_core::parse_duration(input)
}

/// Formats `d` in the Go syntax [`parse`] reads, with the zero units left out ("24h", "1m30s",
/// "500ms"; Go's own "24h0m0s" is needlessly long): flags take their defaults from the
/// libraries' typed constants, and `--help` shows them as a user would write them.
pub fn format(d: Duration) -> String {
    const UNITS: [(&str, u128); 6] = [
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ];
    if d.is_zero() {
        return "0s".to_string();
    }
    let mut rest = d.as_nanos();
    let mut out = String::new();
    for (unit, nanos) in UNITS {
        let count = rest / nanos;
        if count > 0 {
            let _ = write!(out, "{count}{unit}");
            rest %= nanos;
        }
    }
    out
}

/// Checks a schedule flag (a cron expression, `@hourly`-style descriptor or `@every <d>`) and
/// keeps its text; the time zone is applied when the job starts.
pub fn parse_schedule(input: &str) -> Result<String, String> {
    Schedule::parse(input, "UTC").map_err(|e| e.to_string())?;
    Ok(input.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_is_shortest_go_syntax_and_parses_back() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_secs(3), "3s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_secs(24 * 3600), "24h"),
            (Duration::from_millis(3_723_004), "1h2m3s4ms"),
            (Duration::from_nanos(1_001), "1us1ns"),
        ];
        for (d, text) in cases {
            assert_eq!(format(d), text);
            assert_eq!(parse(text), Ok(d), "{text}");
        }
    }
}
