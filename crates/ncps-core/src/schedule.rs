//! When scheduled jobs run: cron expressions in a time zone (as the Go ncps's robfig/cron
//! takes them: five fields, or `@hourly`-style descriptors) and `@every <duration>` intervals.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Local, TimeZone, Utc};
use croner::Cron;

/// A parsed schedule.
#[derive(Clone, Debug)]
pub enum Schedule {
    /// Runs every fixed interval, first after one interval.
    Every(Duration),
    /// Runs at the times a cron expression matches, in a time zone.
    Cron {
        /// The expression.
        cron: Box<Cron>,
        /// `None` means the machine's local time zone.
        zone: Option<chrono_tz::Tz>,
    },
}

/// Why a schedule was refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid schedule {expr:?}: {reason}")]
pub struct ScheduleError {
    expr: String,
    reason: String,
}

/// Parses a Go duration ("3s", "1m30s", "500ms", "1.5h"; a bare "0" is zero), the form every
/// duration flag of the Go ncps takes.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
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

impl Schedule {
    /// Parses `expr` with `zone` ("Local", "UTC" or an IANA name such as "Europe/Berlin").
    pub fn parse(expr: &str, zone: &str) -> Result<Self, ScheduleError> {
        let err = |reason: String| ScheduleError {
            expr: expr.to_string(),
            reason,
        };
        let expr_trim = expr.trim().trim_matches(|c| c == '\'' || c == '"');
        if let Some(every) = expr_trim.strip_prefix("@every") {
            return match parse_duration(every) {
                Ok(d) if !d.is_zero() => Ok(Schedule::Every(d)),
                _ => Err(err(
                    "expected @every <positive duration>, e.g. @every 5m".into()
                )),
            };
        }
        let pattern = match expr_trim {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let cron = Cron::from_str(pattern).map_err(|e| err(e.to_string()))?;
        let zone = match zone.trim() {
            "" | "Local" | "local" => None,
            name => Some(
                chrono_tz::Tz::from_str(name)
                    .map_err(|_| err(format!("unknown time zone {name:?}")))?,
            ),
        };
        Ok(Schedule::Cron {
            cron: Box::new(cron),
            zone,
        })
    }

    /// How long to wait from `now` until the next run.
    pub fn delay_from(&self, now: DateTime<Utc>) -> Duration {
        match self {
            Schedule::Every(every) => *every,
            Schedule::Cron { cron, zone } => {
                let next = match zone {
                    Some(tz) => next_in(cron, &now.with_timezone(tz)),
                    None => next_in(cron, &now.with_timezone(&Local)),
                };
                next.and_then(|at| (at - now).to_std().ok())
                    .unwrap_or(Duration::from_secs(3600))
            }
        }
    }
}

/// How the status page says when a job runs: `every 5m`, or the cron expression and its zone.
impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Every(every) => {
                write!(f, "every {}", crate::maintenance::format_age(*every))
            }
            Schedule::Cron { cron, zone } => match zone {
                Some(tz) => write!(f, "cron {cron} ({tz})"),
                None => write!(f, "cron {cron} (local time)"),
            },
        }
    }
}

fn next_in<Z: TimeZone>(cron: &Cron, now: &DateTime<Z>) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(now, false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Runs `job` on `schedule` until the runtime stops.
pub fn spawn_scheduled<F, Fut>(schedule: Schedule, mut job: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(schedule.delay_from(Utc::now())).await;
            job().await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn says_when_it_runs() {
        let every = Schedule::parse("@every 90m", "Local").unwrap();
        assert_eq!(every.to_string(), "every 90m");
        let hourly = Schedule::parse("@hourly", "Europe/Berlin").unwrap();
        assert_eq!(hourly.to_string(), "cron 0 * * * * (Europe/Berlin)");
        let local = Schedule::parse("5 4 * * *", "Local").unwrap();
        assert_eq!(local.to_string(), "cron 5 4 * * * (local time)");
    }

    #[test]
    fn parses_every_cron_and_descriptors() {
        assert!(
            matches!(Schedule::parse("@every 5m", "Local").unwrap(), Schedule::Every(d) if d == Duration::from_secs(300))
        );
        assert!(matches!(
            Schedule::parse("'@every 1m'", "UTC").unwrap(),
            Schedule::Every(_)
        ));
        assert!(Schedule::parse("@every", "UTC").is_err());
        assert!(Schedule::parse("not cron", "UTC").is_err());
        assert!(Schedule::parse("0 2 * * *", "Mars/Base").is_err());
        let s = Schedule::parse("0 2 * * *", "UTC").unwrap();
        let now = Utc.with_ymd_and_hms(2026, 11, 28, 1, 0, 0).unwrap();
        assert_eq!(s.delay_from(now), Duration::from_secs(3600));
        let s = Schedule::parse("0 2 * * *", "Europe/Berlin").unwrap();
        // 01:00 UTC is 02:00 in Berlin (winter): the next 02:00 Berlin is a day later.
        assert_eq!(s.delay_from(now), Duration::from_secs(24 * 3600));
        let s = Schedule::parse("@hourly", "UTC").unwrap();
        let now = Utc.with_ymd_and_hms(2026, 11, 28, 1, 30, 0).unwrap();
        assert_eq!(s.delay_from(now), Duration::from_secs(1800));
    }

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse_duration("3s").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("3").is_err());
        assert!(parse_duration("3x").is_err());
        assert!(parse_duration("").is_err());
    }
}
