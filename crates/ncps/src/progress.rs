//! Progress of commands that run for minutes (`fsck`, the migrations, `warm`): on a terminal a
//! live bar (indicatif) with items and bytes done, rate and ETA, the per-item lines printed
//! above it; elsewhere (a log, a CI job) the per-item lines and, every
//! [`LINE_INTERVAL`], one plain line with the same figures, so a long run never looks stuck.
#![allow(clippy::print_stderr)] // progress on stderr is these commands' interface

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ncps_core::maintenance::format_size;

/// How often a plain progress line is printed when stderr is not a terminal.
pub const LINE_INTERVAL: Duration = Duration::from_secs(10);

/// Progress of one long command.
pub struct Progress {
    label: &'static str,
    unit: &'static str,
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Instant,
    items: u64,
    bytes: u64,
    total_items: Option<u64>,
    total_bytes: Option<u64>,
}

impl Progress {
    /// Progress of `label` over `unit`s (`"NARs"`, `"paths"`), with the totals when known.
    pub fn new(
        label: &'static str,
        unit: &'static str,
        total_items: Option<u64>,
        total_bytes: Option<u64>,
    ) -> Self {
        Self::with_terminal(
            label,
            unit,
            total_items,
            total_bytes,
            std::io::stderr().is_terminal(),
        )
    }

    /// A bar when stderr is a terminal, else `None` (for commands that print their own
    /// periodic lines).
    pub fn on_terminal(
        label: &'static str,
        unit: &'static str,
        total_items: Option<u64>,
        total_bytes: Option<u64>,
    ) -> Option<Self> {
        std::io::stderr()
            .is_terminal()
            .then(|| Self::with_terminal(label, unit, total_items, total_bytes, true))
    }

    fn with_terminal(
        label: &'static str,
        unit: &'static str,
        total_items: Option<u64>,
        total_bytes: Option<u64>,
        terminal: bool,
    ) -> Self {
        let bar = terminal.then(|| {
            let bar = ProgressBar::with_draw_target(total_items, ProgressDrawTarget::stderr());
            let template = match total_items {
                Some(_) => "{prefix} [{bar:30}] {pos}/{len} {msg} {per_sec} ETA {eta}",
                None => "{prefix} {spinner} {pos} {msg} {per_sec}",
            };
            bar.set_style(
                ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_prefix(label);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let now = Instant::now();
        Self {
            label,
            unit,
            bar,
            started: now,
            last_line: now,
            items: 0,
            bytes: 0,
            total_items,
            total_bytes,
        }
    }

    /// One more item done, of `bytes`, with its own line (above the bar on a terminal).
    pub fn item(&mut self, bytes: u64, line: Option<String>) {
        self.items += 1;
        self.bytes += bytes;
        if let Some(line) = line {
            self.println(&line);
        }
        match &self.bar {
            Some(bar) => {
                bar.set_position(self.items);
                bar.set_message(format!("{} {}", self.unit, format_size(self.bytes)));
            }
            None if self.last_line.elapsed() >= LINE_INTERVAL => {
                self.last_line = Instant::now();
                eprintln!("{}", self.summary());
            }
            None => {}
        }
    }

    /// The total grew (a closure being walked).
    pub fn set_total(&mut self, total_items: u64) {
        self.total_items = Some(total_items);
        if let Some(bar) = &self.bar {
            bar.set_length(total_items);
        }
    }

    /// A line that is not an item (a skipped path, a finding), above the bar on a terminal.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Runs `print` (which writes to stdout) with the bar hidden, so results and the bar do not
    /// mix on a terminal.
    pub fn suspend(&self, print: impl FnOnce()) {
        match &self.bar {
            Some(bar) => bar.suspend(print),
            None => print(),
        }
    }

    /// Ends the bar, or prints the last plain progress line.
    pub fn finish(self) {
        match &self.bar {
            Some(bar) => bar.finish(),
            None => eprintln!("{}", self.summary()),
        }
    }

    /// `label: 120/500 NARs, 1.2 GB, 35.0 MB/s, 4.1 NARs/s, ETA 1m20s`.
    fn summary(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let done = match self.total_items {
            Some(total) => format!("{}/{total}", self.items),
            None => self.items.to_string(),
        };
        let mut line = format!(
            "{}: {done} {}, {}, {:.1} MB/s, {:.1} {}/s",
            self.label,
            self.unit,
            format_size(self.bytes),
            self.bytes as f64 / 1e6 / secs,
            self.items as f64 / secs,
            self.unit,
        );
        if let Some(eta) = self.eta(secs) {
            line.push_str(&format!(", ETA {}", format_eta(eta)));
        }
        line
    }

    /// Time left, from the bytes when their total is known, else from the items.
    fn eta(&self, secs: f64) -> Option<Duration> {
        let fraction = match (self.total_bytes, self.total_items) {
            (Some(total), _) if total > 0 && self.bytes > 0 => self.bytes as f64 / total as f64,
            (_, Some(total)) if total > 0 && self.items > 0 => self.items as f64 / total as f64,
            _ => return None,
        };
        let left = secs / fraction.min(1.0) - secs;
        Some(Duration::from_secs_f64(left.max(0.0)))
    }
}

/// `45s`, `3m05s`, `2h03m`.
fn format_eta(eta: Duration) -> String {
    let s = eta.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_say_items_bytes_rate_and_eta() {
        let mut p = Progress::with_terminal("migrate", "NARs", Some(4), Some(4_000_000), false);
        p.started = Instant::now() - Duration::from_secs(10);
        p.item(1_000_000, None);
        let line = p.summary();
        assert!(line.starts_with("migrate: 1/4 NARs, 1.0 MB, "), "{line}");
        // A quarter of the bytes in 10 s: 30 s left.
        assert!(line.ends_with("ETA 30s"), "{line}");
        assert_eq!(format_eta(Duration::from_secs(185)), "3m05s");
        assert_eq!(format_eta(Duration::from_secs(7380)), "2h03m");
    }
}
