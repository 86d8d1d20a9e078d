//! Go-style durations ("3s", "1m30s", "500ms"), because the ncps flags users already have are
//! written that way.

use std::time::Duration;

/// Parses a Go duration string: a sequence of decimal numbers each with a unit
/// (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`); a bare `0` is zero.
pub fn parse(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{input:?}: missing unit (e.g. 3s, 500ms, 1m)"))?;
        let (number, tail) = rest.split_at(number_len);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("{input:?}: invalid number {number:?}"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("{input:?}: unknown unit {unit:?}")),
        };
        total += value * seconds;
        rest = tail;
    }
    Duration::try_from_secs_f64(total).map_err(|e| format!("{input:?}: {e}"))
}

/// Parses a job schedule. Until full cron expressions are supported, the robfig/cron
/// descriptors the Go ncps also accepts for these jobs: `@every <duration>`, `@hourly`,
/// `@daily`.
pub fn parse_schedule(input: &str) -> Result<Duration, String> {
    let s = input.trim().trim_matches(|c| c == '\'' || c == '"');
    let every = match s {
        "@hourly" => Duration::from_secs(3600),
        "@daily" | "@midnight" => Duration::from_secs(86_400),
        "@weekly" => Duration::from_secs(7 * 86_400),
        _ => match s.strip_prefix("@every") {
            Some(d) => parse(d)?,
            None => {
                return Err(format!(
                    "{input:?}: use @every <duration> (e.g. \"@every 5m\"), @hourly or @daily"
                ));
            }
        },
    };
    if every.is_zero() {
        return Err(format!("{input:?}: the interval must be positive"));
    }
    Ok(every)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse("3s").unwrap(), Duration::from_secs(3));
        assert_eq!(parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("0").unwrap(), Duration::ZERO);
        assert!(parse("3").is_err());
        assert!(parse("3x").is_err());
        assert!(parse("").is_err());
        assert_eq!(
            parse_schedule("@every 5m").unwrap(),
            Duration::from_secs(300)
        );
        assert_eq!(
            parse_schedule("'@every 1m'").unwrap(),
            Duration::from_secs(60)
        );
        assert_eq!(
            parse_schedule("@hourly").unwrap(),
            Duration::from_secs(3600)
        );
        assert!(parse_schedule("*/5 * * * *").is_err());
        assert!(parse_schedule("@every 0").is_err());
    }
}
