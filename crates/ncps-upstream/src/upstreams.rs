//! The set of upstreams: ordered by the priority each announces, health-checked in the
//! background, asked for narinfos with failover, and a short memory of paths none of them has.
//!
//! **The 404 rule.** A narinfo lookup answers "not found" only when every configured upstream
//! was asked and said 404. Healthy upstreams are asked first; when none of them has the path
//! (they said 404 or failed), the unhealthy ones are asked too, once each and with a short
//! timeout (`last_resort_timeout`), so that skipping a sick upstream never turns into a 404 that
//! Nix would remember for an hour. If any upstream failed and none had the path, the answer is
//! the failure (502, or 504 for a timeout). With every upstream down this costs one quick
//! attempt each (a refused connection is immediate), so a miss is a fast 502/504, never a hang.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use ncps_nix::{NarInfo, PublicKey, StorePathHash};
use tokio::sync::{Notify, watch};
use tracing::{Instrument, Span, debug, field, info, warn};

use crate::health::{HealthState, Transition, UpstreamHealth, jitter};
use crate::negative::NegativeCache;
use crate::{LookupStrategy, NarResponse, Upstream, UpstreamError, UpstreamOptions};

/// The configured upstream caches and the keys we trust; cheap to clone (shared state).
#[derive(Clone)]
pub struct Upstreams {
    inner: Arc<Inner>,
}

struct Inner {
    /// In configuration order (the tie-breaker between equal priorities).
    entries: Vec<Arc<Entry>>,
    options: UpstreamOptions,
    negative: NegativeCache<StorePathHash>,
    /// Documents (build logs, realisations) no upstream has, by path.
    negative_documents: NegativeCache<String>,
    /// False while the first round of probes runs: lookups wait for it (bounded), so the very
    /// first requests already go to the upstreams in priority order.
    ready: watch::Sender<bool>,
    started: std::sync::atomic::AtomicBool,
}

struct Entry {
    upstream: Upstream,
    /// The keys this upstream's narinfos must be signed by (see [`keys_for`]); none when the
    /// operator allowed unverified upstreams and no key applies.
    keys: Vec<PublicKey>,
    health: Mutex<HealthState>,
    /// Wakes the prober when a request marks the upstream unhealthy.
    wake: Notify,
}

/// A narinfo an upstream had, signed by a trusted key.
#[derive(Clone, Debug)]
pub struct FoundNarInfo {
    /// Base URL of the upstream that had it; its NAR is fetched from there.
    pub upstream_url: String,
    /// The narinfo as the upstream sent it.
    pub narinfo: NarInfo,
}

/// One upstream's answer to a lookup.
enum Answer {
    Hit(Box<FoundNarInfo>),
    Miss,
    Failed(UpstreamError),
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams")
            .field("upstreams", &self.health())
            .finish()
    }
}

impl Entry {
    fn health(&self) -> MutexGuard<'_, HealthState> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_healthy(&self) -> bool {
        self.health().is_healthy()
    }

    /// The upstream answered (200 or 404): it works.
    fn record_answer(&self) {
        if self.health().request_succeeded() == Transition::BecameHealthy {
            info!(
                upstream = self.upstream.url(),
                "upstream answers again; marked healthy"
            );
        }
    }

    /// A request to this upstream failed: the request's span says so (outcome `timeout` or
    /// `error`, status ERROR), and outages (timeouts, refused connections, 5xx) mark the
    /// upstream unhealthy.
    fn record_failure(&self, error: &UpstreamError, options: &UpstreamOptions) {
        let span = Span::current();
        let outcome = if error.is_timeout() {
            "timeout"
        } else {
            "error"
        };
        span.record("outcome", outcome);
        span.record("otel.status_code", "ERROR");
        if !error.is_outage() {
            return;
        }
        let transition =
            self.health()
                .failed(error.to_string(), Instant::now(), &options.probes, jitter());
        if transition == Transition::BecameUnhealthy {
            warn!(upstream = self.upstream.url(), %error, "upstream marked unhealthy; skipped until it answers a probe");
            self.wake.notify_one();
        }
    }

    /// Probes `nix-cache-info` and records the result.
    async fn probe(&self, options: &UpstreamOptions) {
        let result = self.upstream.cache_info().await;
        let now = Instant::now();
        let url = self.upstream.url();
        let mut health = self.health();
        match result {
            Ok(info) => {
                let priority = info.and_then(|i| i.priority);
                let before = health.effective_priority();
                let transition = health.probe_succeeded(priority, now, &options.probes);
                drop(health);
                if transition == Transition::BecameHealthy {
                    info!(
                        upstream = url,
                        ?priority,
                        "upstream probe succeeded; marked healthy"
                    );
                } else {
                    debug!(upstream = url, ?priority, "upstream probe succeeded");
                }
                if let Some(p) = priority.filter(|p| *p != before) {
                    debug!(upstream = url, priority = p, "upstream priority changed");
                }
            }
            Err(error) => {
                let transition =
                    health.probe_failed(error.to_string(), now, &options.probes, jitter());
                let retry_in = health.next_probe().saturating_duration_since(now);
                drop(health);
                if transition == Transition::BecameUnhealthy {
                    warn!(upstream = url, %error, ?retry_in, "upstream probe failed; marked unhealthy");
                } else {
                    debug!(upstream = url, %error, ?retry_in, "upstream still unhealthy");
                }
            }
        }
    }
}

impl Upstreams {
    /// Builds a client per URL. Every narinfo must carry a signature by one of the keys that
    /// apply to its upstream: a key named after an upstream's host (`cache.nixos.org-1:…` for
    /// `https://cache.nixos.org`), as the Go ncps matches them, applies to that upstream only;
    /// a key named after no configured upstream applies to all. An upstream left with no key
    /// is an error: it could never be verified. Call [`Upstreams::start`] from within a
    /// Tokio runtime to probe them; without it every upstream counts as healthy, in
    /// configuration order.
    pub fn new(
        urls: &[String],
        trusted_keys: Vec<PublicKey>,
        options: &UpstreamOptions,
    ) -> Result<Self, UpstreamError> {
        let now = Instant::now();
        let upstreams = urls
            .iter()
            .map(|u| Upstream::new(u, options))
            .collect::<Result<Vec<_>, UpstreamError>>()?;
        let hosts: Vec<String> = upstreams.iter().map(|u| u.host().to_owned()).collect();
        let entries = upstreams
            .into_iter()
            .map(|upstream| {
                let pinned = upstream.configured_priority();
                let keys = keys_for(&upstream, &hosts, &trusted_keys);
                if keys.is_empty() && !options.allow_unverified {
                    return Err(UpstreamError::NoKey {
                        url: upstream.url().to_string(),
                    });
                }
                if keys.is_empty() {
                    warn!(
                        upstream = upstream.url(),
                        "no public key applies to this upstream: its narinfos are taken \
                         unverified (--cache-upstream-allow-unverified)"
                    );
                }
                Ok(Arc::new(Entry {
                    upstream,
                    keys,
                    health: Mutex::new(HealthState::new(now, pinned)),
                    wake: Notify::new(),
                }))
            })
            .collect::<Result<Vec<_>, UpstreamError>>()?;
        Ok(Self {
            inner: Arc::new(Inner {
                entries,
                options: options.clone(),
                negative: NegativeCache::new(options.negative_ttl, options.negative_capacity),
                negative_documents: NegativeCache::new(
                    options.negative_ttl,
                    options.negative_capacity,
                ),
                ready: watch::Sender::new(true),
                started: Default::default(),
            }),
        })
    }

    /// Starts health checking: probes every upstream's `nix-cache-info` now (lookups wait for
    /// that first round, at most a connect and a header timeout), then each on its own schedule.
    /// The probing tasks end once every clone of this `Upstreams` is dropped. Idempotent.
    pub fn start(&self) {
        use std::sync::atomic::Ordering;
        if self.inner.started.swap(true, Ordering::SeqCst) || self.inner.entries.is_empty() {
            return;
        }
        self.inner.ready.send_replace(false);
        let weak = Arc::downgrade(&self.inner);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            futures::future::join_all(inner.entries.iter().map(|e| e.probe(&inner.options))).await;
            inner.ready.send_replace(true);
            let order: Vec<String> = Upstreams {
                inner: inner.clone(),
            }
            .health()
            .iter()
            .map(|h| {
                let state = if h.healthy { "healthy" } else { "unhealthy" };
                let priority = match h.priority {
                    Some(p) => p.to_string(),
                    None => format!("{} (none announced)", crate::health::DEFAULT_PRIORITY),
                };
                format!("{} (priority {priority}, {state})", h.url)
            })
            .collect();
            info!(?order, "upstreams probed");
            for index in 0..inner.entries.len() {
                tokio::spawn(probe_loop(weak.clone(), index));
            }
        });
    }

    /// The upstreams in configuration order.
    pub fn list(&self) -> Vec<&Upstream> {
        self.inner.entries.iter().map(|e| &e.upstream).collect()
    }

    /// True when no upstream is configured (a cache fed by uploads only: every miss is a 404).
    pub fn is_empty(&self) -> bool {
        self.inner.entries.is_empty()
    }

    /// Every upstream's health, in the order lookups ask them (healthy first, each group by
    /// priority); for health endpoints and metrics.
    pub fn health(&self) -> Vec<UpstreamHealth> {
        let (healthy, unhealthy) = self.ordered();
        healthy
            .iter()
            .chain(&unhealthy)
            .map(|e| e.health().snapshot(e.upstream.url()))
            .collect()
    }

    /// A small document (build log, realisation) from the first healthy upstream, by priority,
    /// that has it. `Ok(None)` when none has it; an error when none had it and one failed.
    /// A document every upstream said it lacks is remembered like a missing narinfo.
    pub async fn find_document(
        &self,
        relative: &str,
        max_bytes: usize,
    ) -> Result<Option<String>, UpstreamError> {
        let missing = &self.inner.negative_documents;
        if missing.contains(&relative.to_owned(), Instant::now()) {
            return Ok(None);
        }
        let (healthy, _) = self.ordered();
        let mut failure = None;
        for entry in healthy {
            match entry.upstream.document(relative, max_bytes).await {
                Ok(Some(document)) => return Ok(Some(document)),
                Ok(None) => {}
                Err(error) => failure = Some(error),
            }
        }
        match failure {
            Some(error) => Err(error),
            None => {
                missing.insert(relative.to_owned(), Instant::now());
                Ok(None)
            }
        }
    }

    /// Healthy and unhealthy upstreams, each by priority then configuration order.
    fn ordered(&self) -> (Vec<Arc<Entry>>, Vec<Arc<Entry>>) {
        let mut keyed: Vec<(u32, usize, bool, &Arc<Entry>)> = self
            .inner
            .entries
            .iter()
            .enumerate()
            .map(|(index, e)| {
                let h = e.health();
                (h.effective_priority(), index, h.is_healthy(), e)
            })
            .collect();
        keyed.sort_by_key(|(priority, index, ..)| (*priority, *index));
        let (healthy, unhealthy): (Vec<_>, Vec<_>) = keyed.into_iter().partition(|k| k.2);
        let entries = |v: Vec<(u32, usize, bool, &Arc<Entry>)>| {
            v.into_iter().map(|k| k.3.clone()).collect::<Vec<_>>()
        };
        (entries(healthy), entries(unhealthy))
    }

    /// Finds a path's narinfo. `Ok(None)` only when every upstream definitively said it does
    /// not have the path (see the module docs for the rule); when some could not answer and
    /// none had it, the most telling error is returned (a timeout wins, so the client sees 504).
    #[tracing::instrument(name = "upstream.find_narinfo", skip_all, fields(hash = %hash))]
    pub async fn find_narinfo(
        &self,
        hash: &StorePathHash,
    ) -> Result<Option<FoundNarInfo>, UpstreamError> {
        if self.inner.entries.is_empty() {
            return Ok(None);
        }
        self.wait_ready().await;
        if self.inner.negative.contains(hash, Instant::now()) {
            debug!(%hash, "negative cache: no upstream has it");
            return Ok(None);
        }
        let (healthy, unhealthy) = self.ordered();
        let mut failure = None;
        for (group, last_resort) in [(healthy, false), (unhealthy, true)] {
            if group.is_empty() {
                continue;
            }
            if last_resort {
                debug!(%hash, upstreams = group.len(), "asking unhealthy upstreams as a last resort");
            }
            match self.lookup(&group, hash, last_resort).await {
                Ok(found) => return Ok(Some(found)),
                Err(f) => failure = worse(failure, f),
            }
        }
        match failure {
            Some(error) => Err(error),
            None => {
                debug!(%hash, "no upstream has it");
                self.inner.negative.insert(*hash, Instant::now());
                Ok(None)
            }
        }
    }

    /// Asks `group` (in priority order) per the lookup strategy: the first hit by priority, or
    /// the worst failure (`None`: every one said 404).
    async fn lookup(
        &self,
        group: &[Arc<Entry>],
        hash: &StorePathHash,
        last_resort: bool,
    ) -> Result<FoundNarInfo, Option<UpstreamError>> {
        let mut answers: Vec<Option<Answer>> = (0..group.len()).map(|_| None).collect();
        match self.inner.options.lookup {
            LookupStrategy::Sequential => {
                for (rank, entry) in group.iter().enumerate() {
                    match self.ask(entry, hash, last_resort).await {
                        Answer::Hit(found) => return Ok(*found),
                        other => answers[rank] = Some(other),
                    }
                }
            }
            LookupStrategy::Parallel => {
                // Each lookup is a task of its own: once a better answer decided, the others
                // finish in the background rather than being cancelled, so their connections
                // stay reusable (an HTTP/1.1 connection dropped mid-request is lost) and their
                // upstream's health is still recorded. Each is bounded by the timeouts.
                let mut pending: FuturesUnordered<_> = group
                    .iter()
                    .enumerate()
                    .map(|(rank, entry)| {
                        let this = self.clone();
                        let entry = entry.clone();
                        let hash = *hash;
                        let url = entry.upstream.url().to_string();
                        let task = tokio::spawn(
                            async move { this.ask(&entry, &hash, last_resort).await }
                                .in_current_span(),
                        );
                        async move {
                            let answer = match task.await {
                                Ok(answer) => answer,
                                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                                Err(_) => Answer::Failed(UpstreamError::Interrupted { url }),
                            };
                            (rank, answer)
                        }
                    })
                    .collect();
                loop {
                    // The best-ranked upstream that has not said no decides: a hit there wins
                    // (every better one said no); an unanswered one is waited for.
                    let first_open = answers
                        .iter()
                        .position(|a| !matches!(a, Some(Answer::Miss | Answer::Failed(_))));
                    match first_open {
                        None => break,
                        Some(rank) => {
                            if let Some(Answer::Hit(found)) = answers[rank].take() {
                                return Ok(*found);
                            }
                        }
                    }
                    let Some((rank, answer)) = pending.next().await else {
                        break;
                    };
                    answers[rank] = Some(answer);
                }
            }
        }
        Err(answers.into_iter().fold(None, |worst, a| match a {
            Some(Answer::Failed(e)) => worse(worst, Some(e)),
            _ => worst,
        }))
    }

    /// One upstream's answer, with retries on transient failures (not as a last resort, and
    /// not once the upstream was marked unhealthy meanwhile), health bookkeeping and the
    /// signature check.
    #[tracing::instrument(
        name = "upstream.narinfo",
        skip_all,
        fields(
            otel.kind = "client",
            otel.status_code = field::Empty,
            upstream = entry.upstream.url(),
            hash = %hash,
            last_resort = last_resort,
            outcome = field::Empty,
        )
    )]
    async fn ask(&self, entry: &Entry, hash: &StorePathHash, last_resort: bool) -> Answer {
        let options = &self.inner.options;
        let upstream = &entry.upstream;
        let retries = if last_resort {
            0
        } else {
            options.narinfo_retries
        };
        let mut attempt = 0;
        let result = loop {
            let result = if last_resort {
                tokio::time::timeout(options.last_resort_timeout, upstream.narinfo(hash))
                    .await
                    .unwrap_or_else(|_| {
                        Err(UpstreamError::Timeout {
                            url: format!("{}{hash}.narinfo", upstream.url()),
                        })
                    })
            } else {
                upstream.narinfo(hash).await
            };
            match result {
                Err(e) if e.is_retryable() && attempt < retries && entry.is_healthy() => {
                    let delay = options
                        .retry_backoff
                        .saturating_mul(1 << attempt.min(16))
                        .mul_f64(0.5 + 0.5 * jitter());
                    debug!(upstream = upstream.url(), %hash, error = %e, ?delay, "retrying narinfo");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                other => break other,
            }
        };
        match result {
            Ok(None) => {
                entry.record_answer();
                debug!(upstream = upstream.url(), %hash, "upstream miss");
                Span::current().record("outcome", "miss");
                Answer::Miss
            }
            Ok(Some(narinfo)) => {
                entry.record_answer();
                if !entry.keys.is_empty() && !narinfo.verify(&entry.keys) {
                    let names = |names: Vec<&str>| {
                        if names.is_empty() {
                            "none".to_owned()
                        } else {
                            names.join(", ")
                        }
                    };
                    let err = UpstreamError::Untrusted {
                        url: format!("{}{hash}.narinfo", upstream.url()),
                        trusted: names(entry.keys.iter().map(|k| k.name()).collect()),
                        signed_by: names(
                            narinfo
                                .sigs
                                .iter()
                                .map(|s| s.split_once(':').map_or(s.as_str(), |(n, _)| n))
                                .collect(),
                        ),
                    };
                    warn!(upstream = upstream.url(), %hash, error = %err, "refusing narinfo");
                    Span::current().record("outcome", "refused");
                    return Answer::Failed(err);
                }
                if let Err(err) = upstream.join_nar_url(&narinfo.url) {
                    warn!(upstream = upstream.url(), %hash, error = %err, "refusing narinfo");
                    Span::current().record("outcome", "refused");
                    return Answer::Failed(err);
                }
                Span::current().record("outcome", "hit");
                Answer::Hit(Box::new(FoundNarInfo {
                    upstream_url: upstream.url().to_string(),
                    narinfo,
                }))
            }
            Err(error) => {
                entry.record_failure(&error, options);
                if last_resort {
                    debug!(upstream = upstream.url(), %hash, %error, "unhealthy upstream failed again");
                } else {
                    warn!(upstream = upstream.url(), %hash, %error, attempts = attempt + 1, "upstream failed");
                }
                Answer::Failed(error)
            }
        }
    }

    /// Waits (bounded) for the first round of probes, so that priorities are known.
    async fn wait_ready(&self) {
        let mut ready = self.inner.ready.subscribe();
        if *ready.borrow() {
            return;
        }
        let o = &self.inner.options;
        let bound = o.dialer_timeout + o.response_header_timeout + Duration::from_secs(1);
        let _ = tokio::time::timeout(bound, ready.wait_for(|r| *r)).await;
    }

    /// Opens the download of a NAR from the upstream its narinfo came from, healthy or not:
    /// no other upstream is known to have that file.
    #[tracing::instrument(
        name = "upstream.nar",
        skip_all,
        fields(
            otel.kind = "client",
            otel.status_code = field::Empty,
            upstream = upstream_url,
            nar_url = nar_url,
            outcome = field::Empty,
            http.response.body.size = field::Empty,
        )
    )]
    pub async fn fetch_nar(
        &self,
        upstream_url: &str,
        nar_url: &str,
    ) -> Result<NarResponse, UpstreamError> {
        let entry = self
            .inner
            .entries
            .iter()
            .find(|e| e.upstream.url() == upstream_url)
            .ok_or_else(|| UpstreamError::NotConfigured(upstream_url.to_string()))?;
        match entry.upstream.nar(nar_url).await {
            Ok(response) => {
                entry.record_answer();
                let span = Span::current();
                span.record("outcome", "ok");
                if let Some(n) = response.content_length {
                    span.record("http.response.body.size", n);
                }
                Ok(response)
            }
            Err(error) => {
                entry.record_failure(&error, &self.inner.options);
                Err(error)
            }
        }
    }
}

/// The failure to report: a timeout wins (504 tells the client to come back), otherwise the
/// first one seen.
fn worse(current: Option<UpstreamError>, new: Option<UpstreamError>) -> Option<UpstreamError> {
    match (current, new) {
        (Some(c), Some(n)) if !c.is_timeout() && n.is_timeout() => Some(n),
        (Some(c), _) => Some(c),
        (None, n) => n,
    }
}

/// Probes one upstream whenever its health state says so, until the upstreams are dropped.
async fn probe_loop(inner: Weak<Inner>, index: usize) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let entry = strong.entries[index].clone();
        let options = strong.options.clone();
        drop(strong);
        let next = entry.health().next_probe();
        if next > Instant::now() {
            tokio::select! {
                () = tokio::time::sleep_until(next.into()) => {}
                () = entry.wake.notified() => {}
            }
            continue;
        }
        entry.probe(&options).await;
    }
}

/// Whether `key` is named after `host`: `<host>-<digits>`, the Go ncps's rule.
fn names_host(key: &PublicKey, host: &str) -> bool {
    key.name()
        .strip_prefix(host)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The keys that apply to `upstream`: those named after its host, plus those named after no
/// configured upstream's host (`hosts`).
fn keys_for(upstream: &Upstream, hosts: &[String], keys: &[PublicKey]) -> Vec<PublicKey> {
    keys.iter()
        .filter(|k| names_host(k, upstream.host()) || !hosts.iter().any(|h| names_host(k, h)))
        .cloned()
        .collect()
}
