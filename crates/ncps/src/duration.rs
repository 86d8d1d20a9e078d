//! Value parsers for duration and schedule flags, in the Go ncps's syntax.

use std::time::Duration;

use ncps_core::Schedule;

/// Parses a Go duration flag ("3s", "1m30s", "500ms").
pub fn parse(input: &str) -> Result<Duration, String> {
    ncps_core::parse_duration(input)
}

/// Checks a schedule flag (a cron expression, `@hourly`-style descriptor or `@every <d>`) and
/// keeps its text; the time zone is applied when the job starts.
pub fn parse_schedule(input: &str) -> Result<String, String> {
    Schedule::parse(input, "UTC").map_err(|e| e.to_string())?;
    Ok(input.to_string())
}
