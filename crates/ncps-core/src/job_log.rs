//! The last run of every background job, with its outcome, for the status page.
//!
//! Prometheus gauges say when a job last *finished*; an operator looking at a cache also wants
//! to know when it runs, whether its last run failed and why, and what it did. Jobs register
//! their schedule when they start and report each run here (through
//! [`Metrics::job_finished`](crate::Metrics::job_finished) and
//! [`Metrics::job_failed`](crate::Metrics::job_failed), which keep the gauges too).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// Jobs by name; a few entries, written once per run.
#[derive(Debug, Default)]
pub struct JobLog {
    jobs: Mutex<BTreeMap<String, JobEntry>>,
}

/// What is known of one job.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct JobEntry {
    /// The job's name (`lru`, `chunk_gc`, `reclaim`, `recovery`).
    pub name: String,
    /// When it runs, as configured (`every 5m`, a cron expression); empty when unknown.
    pub schedule: String,
    /// Runs since the server started.
    pub runs: u64,
    /// Of those, runs that failed.
    pub failures: u64,
    /// The last run, if any.
    pub last: Option<JobRun>,
}

/// One finished run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobRun {
    /// When it finished, seconds since the epoch.
    pub finished_at: i64,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// Whether it succeeded.
    pub ok: bool,
    /// What it did (`freed 1.2 GB, 40 narinfos`) or, when it failed, why.
    pub summary: String,
}

impl JobLog {
    /// Notes that `job` runs on `schedule`, before its first run.
    pub fn register(&self, job: &str, schedule: String) {
        self.update(job, |entry| entry.schedule = schedule);
    }

    /// Records a run of `job` that ended at `finished_at`.
    pub fn record(
        &self,
        job: &str,
        finished_at: i64,
        duration: Duration,
        outcome: Result<String, String>,
    ) {
        self.update(job, |entry| {
            entry.runs += 1;
            let ok = outcome.is_ok();
            if !ok {
                entry.failures += 1;
            }
            entry.last = Some(JobRun {
                finished_at,
                duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
                ok,
                summary: outcome.unwrap_or_else(|error| error),
            });
        });
    }

    /// Every job known, by name.
    pub fn entries(&self) -> Vec<JobEntry> {
        self.lock().values().cloned().collect()
    }

    fn update(&self, job: &str, change: impl FnOnce(&mut JobEntry)) {
        let mut jobs = self.lock();
        let entry = jobs.entry(job.to_string()).or_insert_with(|| JobEntry {
            name: job.to_string(),
            ..JobEntry::default()
        });
        change(entry);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, JobEntry>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_schedule_counts_and_last_outcome() {
        let log = JobLog::default();
        log.register("lru", "every 1h".into());
        assert_eq!(log.entries()[0].last, None);
        log.record(
            "lru",
            100,
            Duration::from_millis(1500),
            Ok("freed 3 MB".into()),
        );
        log.record(
            "lru",
            200,
            Duration::from_millis(20),
            Err("database is locked".into()),
        );
        log.record(
            "chunk_gc",
            300,
            Duration::ZERO,
            Ok("nothing to collect".into()),
        );
        let entries = log.entries();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].name, "chunk_gc");
        assert_eq!(entries[0].schedule, "", "never registered");
        let lru = &entries[1];
        assert_eq!((lru.runs, lru.failures), (2, 1));
        assert_eq!(lru.schedule, "every 1h");
        assert_eq!(
            lru.last,
            Some(JobRun {
                finished_at: 200,
                duration_ms: 20,
                ok: false,
                summary: "database is locked".into()
            })
        );
    }
}
