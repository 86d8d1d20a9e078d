//! What the status page and `GET /` report: the figures now, and their recent history.
//!
//! History lives in memory only ([`history`]: bounded rings, the last hour and the last day),
//! filled by a sampler every 10 s from the metrics' counters. Storage figures come from the
//! sampler's last measurement, never from a query of the viewer's: looking at the page,
//! however often, costs the database nothing.
//!
//! Called by the HTTP layer (`GET /`) and by `serve`, which starts the sampler.

mod history;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ncps_upstream::{DEFAULT_PRIORITY, Upstreams};
use serde::Serialize;
use tracing::warn;

use crate::maintenance::Maintenance;
use crate::metrics::{Metrics, Outcome, OutcomeLabels};

pub use crate::job_log::{JobEntry, JobRun};
pub use history::{Columns, DAY_EVERY, LatencyTotals, Lookups, SAMPLE_EVERY, Sample, Window};

use history::History;

/// The status figures and their history; cheap to clone.
#[derive(Clone)]
pub struct Status(Arc<State>);

struct State {
    metrics: Arc<Metrics>,
    upstreams: Upstreams,
    maintenance: Maintenance,
    chunking: bool,
    started_at: i64,
    history: Mutex<History>,
}

/// The figures now, as `GET /` reports them under `ncps`.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The ncps version.
    pub version: &'static str,
    /// When the server started, seconds since the epoch.
    pub started_at: i64,
    /// When this report was made, milliseconds since the epoch.
    pub now_ms: i64,
    /// Narinfo lookups since the start.
    pub narinfo: Lookups,
    /// NAR requests since the start.
    pub nar: Lookups,
    /// NAR bytes sent to clients since the start.
    pub bytes_served: u64,
    /// NAR bytes downloaded from upstreams since the start.
    pub bytes_fetched: u64,
    /// NAR downloads in progress.
    pub downloads_in_flight: u64,
    /// What storage holds (`null` until first measured, within 10 s of the start).
    pub storage: Option<StorageReport>,
    /// Chunk store figures (`null` without chunks and with chunking off).
    pub chunks: Option<ChunkReport>,
    /// Every upstream, in the order lookups ask them.
    pub upstreams: Vec<UpstreamReport>,
    /// Every background job, by name.
    pub jobs: Vec<JobEntry>,
}

/// What storage holds.
#[derive(Debug, Serialize)]
pub struct StorageReport {
    /// Bytes in storage.
    pub stored_bytes: u64,
    /// `--cache-max-size`, if set.
    pub max_size: Option<u64>,
    /// Narinfos stored.
    pub narinfos: u64,
    /// NARs stored.
    pub nars: u64,
    /// When measured, seconds since the epoch.
    pub measured_at: i64,
}

/// The chunk store's figures.
#[derive(Debug, Serialize)]
pub struct ChunkReport {
    /// Chunks stored and referenced.
    pub chunks: u64,
    /// References to them from chunk lists.
    pub references: u64,
    /// Their plain bytes, each counted once.
    pub plain_bytes: u64,
    /// What they take in storage.
    pub stored_bytes: u64,
    /// The plain bytes of the NARs they make up.
    pub nar_bytes: u64,
    /// NAR bytes per plain chunk byte (how much sharing saves); `null` without chunks.
    pub dedup_ratio: Option<f64>,
    /// Plain chunk bytes per stored byte; `null` without chunks.
    pub compression_ratio: Option<f64>,
}

/// One upstream's health.
#[derive(Debug, Serialize)]
pub struct UpstreamReport {
    /// Its URL.
    pub url: String,
    /// Whether lookups ask it first.
    pub healthy: bool,
    /// The priority lookups order by (its announced one, or the default).
    pub priority: u32,
    /// Whether `priority` is what it announced (or was configured with) rather than the
    /// default.
    pub priority_announced: bool,
    /// Consecutive failures (0 when healthy).
    pub consecutive_failures: u32,
    /// Its last failure, when unhealthy.
    pub last_error: Option<String>,
    /// When it last became healthy or unhealthy, seconds since the epoch.
    pub since: i64,
    /// Mean latency of its narinfo lookups over the last hour, in milliseconds.
    pub latency_ms: Option<f64>,
}

impl Status {
    pub(crate) fn new(
        metrics: Arc<Metrics>,
        upstreams: Upstreams,
        maintenance: Maintenance,
        chunking: bool,
    ) -> Self {
        Self(Arc::new(State {
            metrics,
            upstreams,
            maintenance,
            chunking,
            started_at: unix_seconds(SystemTime::now()),
            history: Mutex::new(History::default()),
        }))
    }

    /// Starts the sampler on the current runtime: a sample at once, then every
    /// [`SAMPLE_EVERY`], each after measuring storage when that is due (every sample, unless
    /// measuring takes long: see [`Maintenance::measure_every`]).
    pub fn spawn_sampler(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut measure_at = tokio::time::Instant::now();
            loop {
                tick.tick().await;
                let maintenance = &this.0.maintenance;
                if tokio::time::Instant::now() >= measure_at {
                    // The running totals' rows are folded here, off every request's path (a
                    // scrape only reads them).
                    if let Err(e) = maintenance.fold_totals().await {
                        warn!(error = %e, "folding the running totals failed");
                    }
                    if let Err(e) = maintenance.measure_storage().await {
                        warn!(error = %e, "measuring storage for the status page failed");
                    }
                    // A large cache is measured less often than it is sampled.
                    measure_at = tokio::time::Instant::now()
                        + maintenance.measure_every(SAMPLE_EVERY)
                        - Duration::from_millis(500);
                }
                let sample = this.sample();
                this.history().push(sample);
            }
        });
    }

    /// The counters now.
    pub fn sample(&self) -> Sample {
        let m = &self.0.metrics;
        let lookups = |family| Lookups {
            hit: count(family, Outcome::Hit),
            miss: count(family, Outcome::Miss),
            not_found: count(family, Outcome::NotFound),
            error: count(family, Outcome::Error),
        };
        Sample {
            at_ms: unix_millis(SystemTime::now()),
            narinfo: lookups(&m.narinfo_lookups),
            nar: lookups(&m.nar_requests),
            bytes_served: m.nar_bytes_served.get(),
            bytes_fetched: m.nar_bytes_fetched.get(),
            stored_bytes: self
                .0
                .maintenance
                .storage_figures()
                .map(|f| f.counts.stored_bytes()),
            downloads_in_flight: u64::try_from(m.downloads_in_flight.get()).unwrap_or(0),
            upstream_latency: m.upstream_latency_totals(),
        }
    }

    fn history(&self) -> std::sync::MutexGuard<'_, History> {
        self.0.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The samples of `window` kept, and one taken now, as columns.
    pub fn columns(&self, window: Window) -> Columns {
        let mut samples = self.history().samples(window);
        samples.push(self.sample());
        Columns::new(window, &samples)
    }

    /// The figures now.
    pub fn report(&self) -> Report {
        let now = self.sample();
        let m = &self.0.metrics;
        let max_size = u64::try_from(m.go.cache_max_size.get())
            .ok()
            .filter(|&n| n > 0);
        let figures = self.0.maintenance.storage_figures();
        let storage = figures.map(|f| StorageReport {
            stored_bytes: f.counts.stored_bytes(),
            max_size,
            narinfos: f.counts.narinfos,
            nars: f.counts.nars,
            measured_at: f.measured_at,
        });
        let chunks = figures
            .filter(|f| self.0.chunking || f.counts.chunks > 0)
            .map(|f| ChunkReport {
                chunks: f.counts.chunks,
                references: f.counts.chunk_references,
                plain_bytes: f.counts.chunk_plain_bytes,
                stored_bytes: f.counts.chunk_stored_bytes,
                nar_bytes: f.counts.chunked_nar_bytes,
                dedup_ratio: f.counts.dedup_ratio(),
                compression_ratio: f.counts.compression_ratio(),
            });
        let hour_ago = self.history().oldest(Window::Hour);
        let upstreams = self
            .0
            .upstreams
            .health()
            .into_iter()
            .map(|h| {
                let total = now
                    .upstream_latency
                    .get(&h.url)
                    .copied()
                    .unwrap_or_default();
                let before = hour_ago
                    .as_ref()
                    .and_then(|s| s.upstream_latency.get(&h.url).copied())
                    .unwrap_or_default();
                let count = total.count.saturating_sub(before.count);
                UpstreamReport {
                    latency_ms: (count > 0)
                        .then(|| (total.seconds - before.seconds) * 1000.0 / count as f64),
                    priority: h.priority.unwrap_or(DEFAULT_PRIORITY),
                    priority_announced: h.priority.is_some(),
                    healthy: h.healthy,
                    consecutive_failures: h.consecutive_failures,
                    last_error: h.last_error,
                    since: unix_seconds(h.since),
                    url: h.url,
                }
            })
            .collect();
        Report {
            version: env!("CARGO_PKG_VERSION"),
            started_at: self.0.started_at,
            now_ms: now.at_ms,
            narinfo: now.narinfo,
            nar: now.nar,
            bytes_served: now.bytes_served,
            bytes_fetched: now.bytes_fetched,
            downloads_in_flight: now.downloads_in_flight,
            storage,
            chunks,
            upstreams,
            jobs: m.jobs.entries(),
        }
    }
}

fn count(
    family: &prometheus_client::metrics::family::Family<
        OutcomeLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    outcome: Outcome,
) -> u64 {
    family.get_or_create(&OutcomeLabels { outcome }).get()
}

fn unix_seconds(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn unix_millis(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
