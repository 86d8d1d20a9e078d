//! Health of one upstream: the state machine, kept free of I/O and of the clock (every
//! transition takes `now`), so that its rules are unit-tested exactly.
//!
//! - Healthy → unhealthy: a probe of `nix-cache-info` failed, or a request timed out, could not
//!   connect or got a 5xx (after its retries).
//! - Unhealthy → healthy: a probe succeeded, or any request got an answer (a 200 or a 404).
//! - A healthy upstream is re-probed every `probe_interval` (to follow its `Priority`); an
//!   unhealthy one after a backoff that doubles with each consecutive failure, from
//!   `backoff_min` up to `backoff_max`, with jitter so that many ncps replicas do not probe a
//!   recovering upstream in lockstep.

use std::time::{Duration, Instant, SystemTime};

/// Priority Nix assumes for a cache whose `nix-cache-info` does not announce one.
pub const DEFAULT_PRIORITY: u32 = 50;

/// When to probe, and how fast to back off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeSchedule {
    /// Re-probe interval of a healthy upstream.
    pub probe_interval: Duration,
    /// First backoff after an upstream turns unhealthy.
    pub backoff_min: Duration,
    /// Longest backoff between probes of an unhealthy upstream; bounds how long a recovered
    /// upstream stays skipped.
    pub backoff_max: Duration,
}

impl Default for ProbeSchedule {
    fn default() -> Self {
        Self {
            probe_interval: Duration::from_secs(60),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
        }
    }
}

impl ProbeSchedule {
    /// Backoff after `failures` consecutive failures (≥ 1); `jitter` in [0, 1) takes up to a
    /// quarter off, so the result lies in (¾·b, b] where b = min(min·2^(failures-1), max).
    pub fn backoff(&self, failures: u32, jitter: f64) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        let full = self
            .backoff_min
            .saturating_mul(1u32 << doublings)
            .min(self.backoff_max);
        full.mul_f64(1.0 - 0.25 * jitter.clamp(0.0, 1.0))
    }
}

/// A snapshot of one upstream's health, for `/healthz`-style reporting and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamHealth {
    /// The upstream's base URL (credentials stripped).
    pub url: String,
    /// Whether lookups ask it (unhealthy upstreams are only asked as a last resort).
    pub healthy: bool,
    /// The priority its `nix-cache-info` announced (`None` before the first good probe or when
    /// it announces none; [`DEFAULT_PRIORITY`] is used for ordering then).
    pub priority: Option<u32>,
    /// Consecutive failures so far (0 when healthy).
    pub consecutive_failures: u32,
    /// The last failure, when unhealthy.
    pub last_error: Option<String>,
    /// When it last changed between healthy and unhealthy (start-up counts as a change).
    pub since: SystemTime,
}

/// The mutable state behind [`UpstreamHealth`].
#[derive(Clone, Debug)]
pub(crate) struct HealthState {
    healthy: bool,
    failures: u32,
    last_error: Option<String>,
    priority: Option<u32>,
    /// The priority configured with the URL, if any: it stays whatever upstream announces.
    pinned: Option<u32>,
    since: SystemTime,
    next_probe: Instant,
}

/// What a recorded event changed, so the caller can log transitions once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transition {
    Unchanged,
    BecameHealthy,
    BecameUnhealthy,
}

impl HealthState {
    /// A new upstream counts as healthy (so the first requests are not refused) and is probed
    /// at once. `pinned` is a priority given with its URL, which probes do not change.
    pub fn new(now: Instant, pinned: Option<u32>) -> Self {
        Self {
            healthy: true,
            failures: 0,
            last_error: None,
            priority: pinned,
            pinned,
            since: SystemTime::now(),
            next_probe: now,
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// The priority lookups order by.
    pub fn effective_priority(&self) -> u32 {
        self.priority.unwrap_or(DEFAULT_PRIORITY)
    }

    pub fn next_probe(&self) -> Instant {
        self.next_probe
    }

    /// A probe answered with a usable `nix-cache-info`.
    pub fn probe_succeeded(
        &mut self,
        priority: Option<u32>,
        now: Instant,
        schedule: &ProbeSchedule,
    ) -> Transition {
        self.priority = self.pinned.or(priority);
        self.next_probe = now + schedule.probe_interval;
        self.succeeded()
    }

    /// A request got a real answer: the upstream works, whatever the probe said last.
    pub fn request_succeeded(&mut self) -> Transition {
        self.succeeded()
    }

    fn succeeded(&mut self) -> Transition {
        self.failures = 0;
        self.last_error = None;
        if self.healthy {
            return Transition::Unchanged;
        }
        self.healthy = true;
        self.since = SystemTime::now();
        Transition::BecameHealthy
    }

    /// A probe or request failed in a way that says the upstream is down (timeout, connection
    /// failure, 5xx, wrong store). The next probe is scheduled after the backoff.
    pub fn failed(
        &mut self,
        error: String,
        now: Instant,
        schedule: &ProbeSchedule,
        jitter: f64,
    ) -> Transition {
        self.failures = self.failures.saturating_add(1);
        self.last_error = Some(error);
        let probe_at = now + schedule.backoff(self.failures, jitter);
        if !self.healthy {
            // Requests failing meanwhile must not push the next probe further away.
            self.next_probe = self.next_probe.min(probe_at);
            return Transition::Unchanged;
        }
        self.healthy = false;
        self.since = SystemTime::now();
        self.next_probe = probe_at;
        Transition::BecameUnhealthy
    }

    /// A failed probe of an unhealthy upstream: back off further.
    pub fn probe_failed(
        &mut self,
        error: String,
        now: Instant,
        schedule: &ProbeSchedule,
        jitter: f64,
    ) -> Transition {
        let transition = self.failed(error, now, schedule, jitter);
        self.next_probe = now + schedule.backoff(self.failures, jitter);
        transition
    }

    pub fn snapshot(&self, url: &str) -> UpstreamHealth {
        UpstreamHealth {
            url: url.to_string(),
            healthy: self.healthy,
            priority: self.priority,
            consecutive_failures: self.failures,
            last_error: self.last_error.clone(),
            since: self.since,
        }
    }
}

/// A number in [0, 1) for jitter: not cryptographic, only different between calls and
/// processes (std's `RandomState` is seeded randomly per process and per call).
pub(crate) fn jitter() -> f64 {
    use std::hash::BuildHasher as _;
    let bits = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> ProbeSchedule {
        ProbeSchedule {
            probe_interval: Duration::from_secs(60),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let s = schedule();
        let secs = |f, j| s.backoff(f, j).as_secs_f64();
        assert_eq!(secs(1, 0.0), 1.0);
        assert_eq!(secs(2, 0.0), 2.0);
        assert_eq!(secs(3, 0.0), 4.0);
        assert_eq!(secs(5, 0.0), 16.0);
        assert_eq!(secs(6, 0.0), 30.0);
        assert_eq!(secs(1000, 0.0), 30.0);
        assert_eq!(secs(0, 0.0), 1.0);
        // Jitter only shortens, by at most a quarter.
        assert!((secs(3, 0.999) - 3.0).abs() < 0.01);
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j));
            let b = secs(4, j);
            assert!(b > 6.0 && b <= 8.0, "{b}");
        }
    }

    /// A priority configured with the URL wins over what probes read, every time.
    #[test]
    fn a_pinned_priority_survives_probes() {
        let s = schedule();
        let t0 = Instant::now();
        let mut h = HealthState::new(t0, Some(5));
        assert_eq!(h.effective_priority(), 5);
        h.probe_succeeded(Some(50), t0, &s);
        assert_eq!(h.effective_priority(), 5);
        h.probe_succeeded(None, t0, &s);
        assert_eq!(h.effective_priority(), 5);
    }

    #[test]
    fn failures_make_unhealthy_and_success_recovers() {
        let s = schedule();
        let t0 = Instant::now();
        let mut h = HealthState::new(t0, None);
        assert!(h.is_healthy());
        assert_eq!(h.next_probe(), t0, "probed at once on start");
        assert_eq!(h.effective_priority(), DEFAULT_PRIORITY);

        assert_eq!(h.probe_succeeded(Some(30), t0, &s), Transition::Unchanged);
        assert_eq!(h.effective_priority(), 30);
        assert_eq!(h.next_probe(), t0 + s.probe_interval);

        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(
            h.failed("HTTP 502".into(), t1, &s, 0.0),
            Transition::BecameUnhealthy
        );
        assert!(!h.is_healthy());
        assert_eq!(h.next_probe(), t1 + Duration::from_secs(1));
        let snap = h.snapshot("http://up/");
        assert_eq!(snap.last_error.as_deref(), Some("HTTP 502"));
        assert_eq!(snap.consecutive_failures, 1);
        assert_eq!(snap.priority, Some(30), "priority survives an outage");

        // Probes keep failing: the backoff grows.
        let t2 = t1 + Duration::from_secs(1);
        assert_eq!(
            h.probe_failed("refused".into(), t2, &s, 0.0),
            Transition::Unchanged
        );
        assert_eq!(h.next_probe(), t2 + Duration::from_secs(2));
        let t3 = t2 + Duration::from_secs(2);
        h.probe_failed("refused".into(), t3, &s, 0.0);
        assert_eq!(h.next_probe(), t3 + Duration::from_secs(4));

        // A failing request in between does not delay the scheduled probe.
        h.failed("timeout".into(), t3, &s, 0.0);
        assert_eq!(h.next_probe(), t3 + Duration::from_secs(4));

        let t4 = t3 + Duration::from_secs(4);
        assert_eq!(
            h.probe_succeeded(Some(10), t4, &s),
            Transition::BecameHealthy
        );
        assert!(h.is_healthy());
        assert_eq!(h.snapshot("x").consecutive_failures, 0);
        assert_eq!(h.snapshot("x").last_error, None);
        assert_eq!(h.effective_priority(), 10);
        assert_eq!(h.next_probe(), t4 + s.probe_interval);

        // Any answered request also brings it back.
        h.failed("HTTP 500".into(), t4, &s, 0.0);
        assert_eq!(h.request_succeeded(), Transition::BecameHealthy);
        assert_eq!(h.request_succeeded(), Transition::Unchanged);
    }
}
