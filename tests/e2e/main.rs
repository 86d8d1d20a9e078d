//! End-to-end tests: the real `ncps` binary between the real Nix client (Debian's Nix 2.8) and
//! an upstream binary cache made by `nix copy --to file://`, everything on 127.0.0.1.
//!
//! One module per concern; the shared set-up lives in `harness`. Requires `nix` on `PATH` and
//! root (the tests build store paths in `/nix/store`). Run with
//! `cargo nextest run -p ncps --test e2e`; a failing test prints the ncps log and the
//! upstream's request log. Tests on PostgreSQL, MariaDB, Redis and S3 need the servers
//! `scripts/test` starts and fail without them (`ncps-test-services` says which);
//! `--profile no-services` leaves them out, and nextest reports them as skipped.
//! `NCPS_KEEP=1` keeps each test's directory (ncps's data, logs, the upstream) for inspection.

mod harness;

mod access;
mod admin;
mod chunking;
mod crashes;
mod databases;
mod docs;
mod failures;
mod full_disk;
mod go_compat;
mod go_takeover;
mod head_and_ranges;
mod helm;
mod hostile;
mod logs;
mod lru;
mod metrics;
mod otel;
mod prefetch;
mod protocol;
mod replicas;
mod selftest;
mod signatures;
mod single_flight;
mod status_page;
mod substitution;
mod uploads;
mod upstreams;
mod warm;
