//! Prometheus metrics: what the cache served, fetched and stored, and how its jobs went.
//!
//! Counters are updated where things happen (cheap atomics, no locks on the hot path); storage
//! gauges are measured from the database when `/metrics` is scraped.
//!
//! The Go ncps's metric names and labels are exported too (`ncps_nar_served_total`,
//! `ncps_narinfo_served_total`, `ncps_store_total_size_bytes`, `ncps_narinfo_count`,
//! `ncps_nar_file_count`, `ncps_upstream_count_*`, `ncps_cache_*`, `ncps_lru_*`), so a Go user's
//! dashboards and alerts keep working beside ours, which say more.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::job_log::JobLog;
use crate::status::LatencyTotals;

/// How a lookup ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Outcome {
    /// Served from the cache.
    Hit,
    /// Fetched from an upstream.
    Miss,
    /// Nobody has it.
    NotFound,
    /// Failed.
    Error,
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, writer: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        writer.write_str(match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::NotFound => "not_found",
            Self::Error => "error",
        })
    }
}

/// Label of lookup counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// How the lookup ended.
    pub outcome: Outcome,
}

/// Labels of HTTP request counters. Static strings: a request costs no allocation for its
/// labels, and only a fixed set of values can ever make a time series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route (`narinfo`, `nar`, `nix-cache-info`, …), never the raw path.
    pub route: &'static str,
    /// The HTTP method: a standard one, or `other` (never a client's invented name).
    pub method: &'static str,
    /// The status code.
    pub status: u16,
}

/// Labels of the Go ncps's served counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServedLabels {
    /// `hit` (from storage) or `miss` (fetched, or not found).
    pub result: &'static str,
    /// `success` or `error`.
    pub status: &'static str,
}

impl From<Outcome> for ServedLabels {
    fn from(outcome: Outcome) -> Self {
        let (result, status) = match outcome {
            Outcome::Hit => ("hit", "success"),
            Outcome::Miss => ("miss", "success"),
            Outcome::NotFound | Outcome::Error => ("miss", "error"),
        };
        Self { result, status }
    }
}

/// Labels of the Go ncps's lock acquisition counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LockLabels {
    /// `exclusive`: every ncps lock is.
    pub r#type: &'static str,
    /// `local` (in-process) or `distributed` (Redis, PostgreSQL).
    pub mode: &'static str,
    /// `success`, `contention` (held elsewhere) or `failure` (the service failed).
    pub result: &'static str,
}

/// Labels of the Go ncps's lock hold histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LockHoldLabels {
    /// `exclusive`.
    pub r#type: &'static str,
    /// `local` or `distributed`.
    pub mode: &'static str,
}

/// Labels of the Go ncps's lock failure counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LockFailureLabels {
    /// `exclusive`.
    pub r#type: &'static str,
    /// `local` or `distributed`.
    pub mode: &'static str,
    /// `error`: the service could not be asked.
    pub reason: &'static str,
}

/// Label of the Go ncps's lock retry counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LockTypeLabels {
    /// `exclusive`.
    pub r#type: &'static str,
}

/// Label naming an upstream.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// The upstream's base URL.
    pub upstream: String,
}

/// Label naming a background job.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    /// `lru` or `chunk_gc`.
    pub job: String,
}

/// Every metric ncps exports.
pub struct Metrics {
    registry: Registry,
    /// HTTP requests by route, method and status.
    pub http_requests: Family<RequestLabels, Counter>,
    /// HTTP response body bytes by route.
    pub http_response_bytes: Family<RequestLabels, Counter>,
    /// Narinfo lookups by outcome.
    pub narinfo_lookups: Family<OutcomeLabels, Counter>,
    /// NAR requests by outcome.
    pub nar_requests: Family<OutcomeLabels, Counter>,
    /// NAR bytes sent to clients.
    pub nar_bytes_served: Counter,
    /// NAR bytes downloaded from upstreams.
    pub nar_bytes_fetched: Counter,
    /// Upstream narinfo lookup latency, by the upstream that answered.
    pub upstream_latency: Family<UpstreamLabels, Histogram>,
    /// Upstream health (1 healthy, 0 not), refreshed on scrape.
    pub upstream_healthy: Family<UpstreamLabels, Gauge>,
    /// NAR downloads in progress.
    pub downloads_in_flight: Gauge,
    /// NARs stored whole and waiting for lazy chunking in this process.
    pub lazy_chunking_queued: Gauge,
    /// Bytes in storage (whole files plus referenced chunks).
    pub stored_bytes: Gauge,
    /// Chunks stored.
    pub chunks: Gauge,
    /// Chunk references divided by chunks: how many NAR positions each stored chunk serves.
    pub dedup_ratio: Gauge<f64, AtomicU64>,
    /// Job runs by job.
    pub job_runs: Family<JobLabels, Counter>,
    /// When each job last finished, seconds since the epoch.
    pub job_last_run: Family<JobLabels, Gauge>,
    /// How long each job's last run took.
    pub job_last_duration: Family<JobLabels, Gauge<f64, AtomicU64>>,
    /// Bytes each job's last run freed.
    pub job_last_freed_bytes: Family<JobLabels, Gauge>,
    /// Items (narinfos, chunks) each job's last run removed.
    pub job_last_items: Family<JobLabels, Gauge>,
    /// Uploads by outcome (hit = accepted, error = refused).
    pub uploads: Family<OutcomeLabels, Counter>,
    /// The Go ncps's metrics, under its names.
    pub go: GoMetrics,
    /// Each job's schedule and last run with its outcome (not exported: the status page's).
    pub jobs: JobLog,
    /// Each upstream's narinfo lookup count and summed latency (the histogram's totals, which
    /// prometheus-client does not let us read), for the status page.
    latency_totals: Mutex<BTreeMap<String, LatencyTotals>>,
}

/// The Go ncps's metric names and labels (see the module documentation).
pub struct GoMetrics {
    /// NARs served, by result and status.
    pub nar_served: Family<ServedLabels, Counter>,
    /// Narinfos served, by result and status.
    pub narinfo_served: Family<ServedLabels, Counter>,
    /// Bytes in storage.
    pub store_total_size: Gauge,
    /// Narinfos stored.
    pub narinfo_count: Gauge,
    /// NARs stored.
    pub nar_file_count: Gauge,
    /// Upstreams configured.
    pub upstream_count_total: Gauge,
    /// Upstreams answering.
    pub upstream_count_healthy: Gauge,
    /// `--cache-max-size` (0 without a limit).
    pub cache_max_size: Gauge,
    /// Stored bytes over the size limit (0 without a limit).
    pub cache_utilization: Gauge<f64, AtomicU64>,
    /// Eviction runs.
    pub lru_cleanup_runs: Counter,
    /// Narinfos evicted.
    pub lru_narinfos_evicted: Counter,
    /// NARs removed by eviction.
    pub lru_nar_files_evicted: Counter,
    /// Bytes eviction freed.
    pub lru_bytes_freed: Counter,
    /// How long eviction runs take.
    pub lru_cleanup_duration: Histogram,
    /// How long asking the upstreams for a narinfo takes (found or not).
    pub upstream_narinfo_fetch_duration: Histogram,
    /// How long a NAR download from an upstream takes, start to end (stored or failed).
    pub upstream_nar_fetch_duration: Histogram,
    /// Lock attempts by type, mode and result.
    pub lock_acquisitions: Family<LockLabels, Counter>,
    /// How long locks are held.
    pub lock_hold_duration: Family<LockHoldLabels, Histogram>,
    /// Lock services that could not be asked.
    pub lock_failures: Family<LockFailureLabels, Counter>,
    /// Lock retries: always 0 here (a lock held elsewhere answers 503 + Retry-After at once),
    /// kept so the Go ncps's dashboards find the series.
    pub lock_retry_attempts: Family<LockTypeLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ncps");
        let m = Self {
            registry: Registry::default(),
            http_requests: Family::default(),
            http_response_bytes: Family::default(),
            narinfo_lookups: Family::default(),
            nar_requests: Family::default(),
            nar_bytes_served: Counter::default(),
            nar_bytes_fetched: Counter::default(),
            upstream_latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 14))
            }),
            upstream_healthy: Family::default(),
            downloads_in_flight: Gauge::default(),
            lazy_chunking_queued: Gauge::default(),
            stored_bytes: Gauge::default(),
            chunks: Gauge::default(),
            dedup_ratio: Gauge::default(),
            job_runs: Family::default(),
            job_last_run: Family::default(),
            job_last_duration: Family::default(),
            job_last_freed_bytes: Family::default(),
            job_last_items: Family::default(),
            uploads: Family::default(),
            go: GoMetrics::new(),
            jobs: JobLog::default(),
            latency_totals: Mutex::default(),
        };
        let r = &mut registry;
        r.register(
            "http_requests",
            "HTTP requests by route, method and status",
            m.http_requests.clone(),
        );
        r.register(
            "http_response_bytes",
            "HTTP response bytes announced by Content-Length, by route",
            m.http_response_bytes.clone(),
        );
        r.register(
            "narinfo_lookups",
            "Narinfo lookups by outcome",
            m.narinfo_lookups.clone(),
        );
        r.register(
            "nar_requests",
            "NAR requests by outcome",
            m.nar_requests.clone(),
        );
        r.register(
            "nar_served_bytes",
            "NAR bytes sent to clients",
            m.nar_bytes_served.clone(),
        );
        r.register(
            "nar_fetched_bytes",
            "NAR bytes downloaded from upstreams",
            m.nar_bytes_fetched.clone(),
        );
        r.register(
            "upstream_narinfo_duration_seconds",
            "Time to find a narinfo upstream, by the upstream that had it",
            m.upstream_latency.clone(),
        );
        r.register(
            "upstream_healthy",
            "1 when the upstream answers, 0 when it is skipped as unhealthy",
            m.upstream_healthy.clone(),
        );
        r.register(
            "downloads_in_flight",
            "NAR downloads in progress",
            m.downloads_in_flight.clone(),
        );
        r.register(
            "lazy_chunking_queued",
            "NARs stored whole and waiting for background chunking in this process",
            m.lazy_chunking_queued.clone(),
        );
        r.register(
            "stored_bytes",
            "Bytes in storage: whole NAR files plus referenced chunks",
            m.stored_bytes.clone(),
        );
        r.register("chunks", "Chunks in the chunk store", m.chunks.clone());
        r.register(
            "chunk_dedup_ratio",
            "Chunk references per stored chunk",
            m.dedup_ratio.clone(),
        );
        r.register("job_runs", "Background job runs", m.job_runs.clone());
        r.register(
            "job_last_run_timestamp_seconds",
            "When the job last finished",
            m.job_last_run.clone(),
        );
        r.register(
            "job_last_run_duration_seconds",
            "How long the job's last run took",
            m.job_last_duration.clone(),
        );
        r.register(
            "job_last_run_freed_bytes",
            "Bytes the job's last run freed",
            m.job_last_freed_bytes.clone(),
        );
        r.register(
            "job_last_run_items",
            "Items the job's last run removed",
            m.job_last_items.clone(),
        );
        r.register("uploads", "Uploaded narinfos by outcome", m.uploads.clone());
        m.go.register(r);
        Self { registry, ..m }
    }

    /// The text exposition (OpenMetrics format, which Prometheus reads).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a lookup.
    pub fn lookup(family: &Family<OutcomeLabels, Counter>, outcome: Outcome) {
        family.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Counts a narinfo request, under our name and the Go ncps's.
    pub fn narinfo_served(&self, outcome: Outcome) {
        Self::lookup(&self.narinfo_lookups, outcome);
        self.go.narinfo_served.get_or_create(&outcome.into()).inc();
    }

    /// Counts a NAR request, under our name and the Go ncps's.
    pub fn nar_served(&self, outcome: Outcome) {
        Self::lookup(&self.nar_requests, outcome);
        self.go.nar_served.get_or_create(&outcome.into()).inc();
    }

    /// Records how long `upstream` took to answer a narinfo lookup it had.
    pub fn upstream_answered(&self, upstream: &str, took: Duration) {
        let seconds = took.as_secs_f64();
        self.upstream_latency
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_string(),
            })
            .observe(seconds);
        let mut totals = self
            .latency_totals
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let entry = totals.entry(upstream.to_string()).or_default();
        entry.count += 1;
        entry.seconds += seconds;
    }

    /// Every upstream's lookup totals so far.
    pub fn upstream_latency_totals(&self) -> BTreeMap<String, LatencyTotals> {
        self.latency_totals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records a finished job run; `freed_bytes` when the job knows them, `summary` says what
    /// it did in words.
    pub fn job_finished(
        &self,
        job: &str,
        duration: Duration,
        freed_bytes: Option<u64>,
        items: u64,
        summary: String,
    ) {
        let l = JobLabels {
            job: job.to_string(),
        };
        let now = ncps_db::now_secs();
        self.job_runs.get_or_create(&l).inc();
        self.job_last_run.get_or_create(&l).set(now);
        self.job_last_duration
            .get_or_create(&l)
            .set(duration.as_secs_f64());
        if let Some(freed) = freed_bytes {
            self.job_last_freed_bytes
                .get_or_create(&l)
                .set(i64::try_from(freed).unwrap_or(i64::MAX));
        }
        self.job_last_items
            .get_or_create(&l)
            .set(i64::try_from(items).unwrap_or(i64::MAX));
        self.jobs.record(job, now, duration, Ok(summary));
    }

    /// Records a failed job run (the gauges keep the last successful run's figures).
    pub fn job_failed(&self, job: &str, duration: Duration, error: &dyn std::fmt::Display) {
        self.jobs
            .record(job, ncps_db::now_secs(), duration, Err(error.to_string()));
    }
}

impl GoMetrics {
    fn new() -> Self {
        Self {
            nar_served: Family::default(),
            narinfo_served: Family::default(),
            store_total_size: Gauge::default(),
            narinfo_count: Gauge::default(),
            nar_file_count: Gauge::default(),
            upstream_count_total: Gauge::default(),
            upstream_count_healthy: Gauge::default(),
            cache_max_size: Gauge::default(),
            cache_utilization: Gauge::default(),
            lru_cleanup_runs: Counter::default(),
            lru_narinfos_evicted: Counter::default(),
            lru_nar_files_evicted: Counter::default(),
            lru_bytes_freed: Counter::default(),
            lru_cleanup_duration: Histogram::new(exponential_buckets(0.01, 4.0, 10)),
            upstream_narinfo_fetch_duration: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            upstream_nar_fetch_duration: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            lock_acquisitions: Family::default(),
            lock_hold_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 4.0, 12))
            }),
            lock_failures: Family::default(),
            lock_retry_attempts: Family::default(),
        }
    }

    fn register(&self, r: &mut Registry) {
        r.register(
            "nar_served",
            "NAR requests by result and status (the Go ncps's name)",
            self.nar_served.clone(),
        );
        r.register(
            "narinfo_served",
            "Narinfo requests by result and status (the Go ncps's name)",
            self.narinfo_served.clone(),
        );
        r.register(
            "store_total_size_bytes",
            "Bytes in storage (the Go ncps's name for ncps_stored_bytes)",
            self.store_total_size.clone(),
        );
        r.register(
            "narinfo_count",
            "Narinfos stored",
            self.narinfo_count.clone(),
        );
        r.register("nar_file_count", "NARs stored", self.nar_file_count.clone());
        r.register(
            "upstream_count_total",
            "Upstreams configured",
            self.upstream_count_total.clone(),
        );
        r.register(
            "upstream_count_healthy",
            "Upstreams answering",
            self.upstream_count_healthy.clone(),
        );
        r.register(
            "cache_max_size_bytes",
            "The size limit (0: none)",
            self.cache_max_size.clone(),
        );
        r.register(
            "cache_utilization_ratio",
            "Stored bytes over the size limit (0: no limit)",
            self.cache_utilization.clone(),
        );
        r.register(
            "lru_cleanup_runs",
            "Eviction runs",
            self.lru_cleanup_runs.clone(),
        );
        r.register(
            "lru_narinfos_evicted",
            "Narinfos evicted",
            self.lru_narinfos_evicted.clone(),
        );
        r.register(
            "lru_nar_files_evicted",
            "NARs removed by eviction",
            self.lru_nar_files_evicted.clone(),
        );
        r.register(
            "lru_bytes_freed",
            "Bytes eviction freed",
            self.lru_bytes_freed.clone(),
        );
        r.register(
            "lru_cleanup_duration_seconds",
            "How long eviction runs take",
            self.lru_cleanup_duration.clone(),
        );
        r.register(
            "upstream_narinfo_fetch_duration_seconds",
            "How long asking the upstreams for a narinfo takes, found or not (the Go ncps's name)",
            self.upstream_narinfo_fetch_duration.clone(),
        );
        r.register(
            "upstream_nar_fetch_duration_seconds",
            "How long a NAR download from an upstream takes, start to end (the Go ncps's name)",
            self.upstream_nar_fetch_duration.clone(),
        );
        r.register(
            "lock_acquisitions",
            "Lock attempts by type, mode and result",
            self.lock_acquisitions.clone(),
        );
        r.register(
            "lock_hold_duration_seconds",
            "How long locks are held",
            self.lock_hold_duration.clone(),
        );
        r.register(
            "lock_failures",
            "Lock services that could not be asked",
            self.lock_failures.clone(),
        );
        r.register(
            "lock_retry_attempts",
            "Lock retries (none here: a lock held elsewhere answers 503 + Retry-After)",
            self.lock_retry_attempts.clone(),
        );
        // Present from the start, as the Go ncps primes it.
        let _ = self.lock_retry_attempts.get_or_create(&LockTypeLabels {
            r#type: "exclusive",
        });
    }
}
