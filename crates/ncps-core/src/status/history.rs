//! Samples of the cache's counters over time, in two bounded rings: the last hour every
//! [`SAMPLE_EVERY`], and the last day every [`DAY_EVERY`]. About 650 samples in all (tens of
//! kilobytes), whatever the uptime.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::Serialize;

/// How often a sample is taken.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Samples of the last hour.
const HOUR_SAMPLES: usize = 360;
/// How often a sample is kept for the day's ring.
pub const DAY_EVERY: Duration = Duration::from_secs(300);
/// Samples of the last day.
const DAY_SAMPLES: usize = 288;

/// Lookups by how they ended, counted since the server started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Lookups {
    /// Served from the cache.
    pub hit: u64,
    /// Fetched from an upstream.
    pub miss: u64,
    /// Nobody had it.
    pub not_found: u64,
    /// Failed.
    pub error: u64,
}

/// An upstream's narinfo lookups that found the path, counted since the server started.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatencyTotals {
    /// How many.
    pub count: u64,
    /// Their summed latency, in seconds.
    pub seconds: f64,
}

/// The counters at one moment. Counters are totals since the server started (the page takes
/// differences); gauges are the value at that moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// When, in milliseconds since the epoch.
    pub at_ms: i64,
    /// Narinfo lookups.
    pub narinfo: Lookups,
    /// NAR requests.
    pub nar: Lookups,
    /// NAR bytes sent to clients.
    pub bytes_served: u64,
    /// NAR bytes downloaded from upstreams.
    pub bytes_fetched: u64,
    /// Bytes in storage when last measured (`None` before the first measurement).
    pub stored_bytes: Option<u64>,
    /// NAR downloads in progress.
    pub downloads_in_flight: u64,
    /// Upstream lookup latency, by upstream URL.
    pub upstream_latency: BTreeMap<String, LatencyTotals>,
}

/// Which ring to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// The last hour, every 10 s.
    Hour,
    /// The last day, every 5 min.
    Day,
}

impl Window {
    /// Parses the `history` query value (`1h`, `24h`).
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "1h" => Some(Self::Hour),
            "24h" | "1d" => Some(Self::Day),
            _ => None,
        }
    }

    /// The spacing of its samples.
    pub fn interval(self) -> Duration {
        match self {
            Self::Hour => SAMPLE_EVERY,
            Self::Day => DAY_EVERY,
        }
    }
}

/// The two rings.
#[derive(Debug, Default)]
pub struct History {
    hour: VecDeque<Sample>,
    day: VecDeque<Sample>,
}

impl History {
    /// Keeps `sample` in the hour's ring, and in the day's when the day's last is at least
    /// [`DAY_EVERY`] older (the first sample always is).
    pub fn push(&mut self, sample: Sample) {
        let day_due = self
            .day
            .back()
            .is_none_or(|last| sample.at_ms - last.at_ms >= DAY_EVERY.as_millis() as i64 - 500);
        if day_due {
            push_bounded(&mut self.day, sample.clone(), DAY_SAMPLES);
        }
        push_bounded(&mut self.hour, sample, HOUR_SAMPLES);
    }

    /// The samples of `window`, oldest first.
    pub fn samples(&self, window: Window) -> Vec<Sample> {
        self.ring(window).iter().cloned().collect()
    }

    /// The oldest sample of `window`.
    pub fn oldest(&self, window: Window) -> Option<Sample> {
        self.ring(window).front().cloned()
    }

    fn ring(&self, window: Window) -> &VecDeque<Sample> {
        match window {
            Window::Hour => &self.hour,
            Window::Day => &self.day,
        }
    }
}

fn push_bounded(ring: &mut VecDeque<Sample>, sample: Sample, bound: usize) {
    if ring.len() == bound {
        ring.pop_front();
    }
    ring.push_back(sample);
}

/// Samples as columns, the shape charts read: one array per figure, aligned with `at`.
#[derive(Debug, Default, PartialEq, Serialize)]
pub struct Columns {
    /// Seconds between samples.
    pub interval_seconds: u64,
    /// When each sample was taken, milliseconds since the epoch.
    pub at: Vec<i64>,
    /// Narinfo hits (totals since start).
    pub narinfo_hits: Vec<u64>,
    /// Narinfo misses (fetched from an upstream).
    pub narinfo_misses: Vec<u64>,
    /// Narinfos nobody had.
    pub narinfo_not_found: Vec<u64>,
    /// Narinfo lookups that failed.
    pub narinfo_errors: Vec<u64>,
    /// NAR hits.
    pub nar_hits: Vec<u64>,
    /// NAR misses.
    pub nar_misses: Vec<u64>,
    /// NARs nobody had.
    pub nar_not_found: Vec<u64>,
    /// NAR requests that failed.
    pub nar_errors: Vec<u64>,
    /// NAR bytes served (total since start).
    pub bytes_served: Vec<u64>,
    /// NAR bytes fetched from upstreams (total since start).
    pub bytes_fetched: Vec<u64>,
    /// Bytes in storage (`null` before the first measurement).
    pub stored_bytes: Vec<Option<u64>>,
    /// Downloads in progress.
    pub downloads_in_flight: Vec<u64>,
    /// Mean latency of each upstream's narinfo lookups since the previous sample, in
    /// milliseconds (`null` where it answered none).
    pub upstream_latency_ms: BTreeMap<String, Vec<Option<f64>>>,
}

impl Columns {
    /// Lays `samples` out as columns.
    pub fn new(window: Window, samples: &[Sample]) -> Self {
        let mut c = Columns {
            interval_seconds: window.interval().as_secs(),
            ..Columns::default()
        };
        for s in samples {
            c.at.push(s.at_ms);
            c.narinfo_hits.push(s.narinfo.hit);
            c.narinfo_misses.push(s.narinfo.miss);
            c.narinfo_not_found.push(s.narinfo.not_found);
            c.narinfo_errors.push(s.narinfo.error);
            c.nar_hits.push(s.nar.hit);
            c.nar_misses.push(s.nar.miss);
            c.nar_not_found.push(s.nar.not_found);
            c.nar_errors.push(s.nar.error);
            c.bytes_served.push(s.bytes_served);
            c.bytes_fetched.push(s.bytes_fetched);
            c.stored_bytes.push(s.stored_bytes);
            c.downloads_in_flight.push(s.downloads_in_flight);
        }
        let upstreams = samples.iter().flat_map(|s| s.upstream_latency.keys());
        for url in upstreams {
            if c.upstream_latency_ms.contains_key(url) {
                continue;
            }
            let means = samples
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let now = s.upstream_latency.get(url).copied().unwrap_or_default();
                    let before = i
                        .checked_sub(1)
                        .and_then(|p| samples[p].upstream_latency.get(url).copied())
                        .unwrap_or_default();
                    let count = now.count.saturating_sub(before.count);
                    (count > 0).then(|| (now.seconds - before.seconds) * 1000.0 / count as f64)
                })
                .collect();
            c.upstream_latency_ms.insert(url.clone(), means);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Sample {
        Sample {
            at_ms: seconds * 1000,
            ..Sample::default()
        }
    }

    #[test]
    fn rings_are_bounded_and_the_day_keeps_one_sample_per_period() {
        let mut h = History::default();
        // Two hours of samples every 10 s.
        for i in 0..720 {
            h.push(at(i * 10));
        }
        let hour = h.samples(Window::Hour);
        assert_eq!(hour.len(), HOUR_SAMPLES);
        assert_eq!(hour[0].at_ms, 3600 * 1000, "the oldest hour was dropped");
        let day = h.samples(Window::Day);
        assert_eq!(day.len(), 24, "one every 5 minutes over two hours");
        assert!(day.windows(2).all(|w| w[1].at_ms - w[0].at_ms == 300_000));
        assert_eq!(h.oldest(Window::Day).unwrap().at_ms, 0);
        // A full day and more stays at the day's bound.
        for i in 720..(720 + 8640 * 2) {
            h.push(at(i * 10));
        }
        assert_eq!(h.samples(Window::Day).len(), DAY_SAMPLES);
    }

    #[test]
    fn columns_align_and_latency_is_the_mean_per_interval() {
        let url = "http://127.0.0.1:1".to_string();
        let mut samples = vec![at(0), at(10), at(20)];
        samples[1].narinfo.hit = 4;
        samples[2].narinfo.hit = 9;
        samples[2].stored_bytes = Some(77);
        samples[1].upstream_latency.insert(
            url.clone(),
            LatencyTotals {
                count: 2,
                seconds: 0.5,
            },
        );
        samples[2].upstream_latency.insert(
            url.clone(),
            LatencyTotals {
                count: 2,
                seconds: 0.5,
            },
        );
        let c = Columns::new(Window::Hour, &samples);
        assert_eq!(c.interval_seconds, 10);
        assert_eq!(c.at, vec![0, 10_000, 20_000]);
        assert_eq!(c.narinfo_hits, vec![0, 4, 9]);
        assert_eq!(c.stored_bytes, vec![None, None, Some(77)]);
        assert_eq!(c.upstream_latency_ms[&url], vec![None, Some(250.0), None]);
    }
}
