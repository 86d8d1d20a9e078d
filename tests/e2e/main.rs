//! End-to-end tests: the real `ncps` binary between the real Nix client (Debian's Nix 2.8) and
//! an upstream binary cache made by `nix copy --to file://`, everything on 127.0.0.1.
//!
//! One module per concern; the shared set-up lives in `harness`. Requires `nix` on `PATH` and
//! root (the tests build store paths in `/nix/store`). Run with
//! `cargo nextest run -p ncps --test e2e`; a failing test prints the ncps log and the
//! upstream's request log.

mod harness;

mod admin;
mod chunking;
mod databases;
mod docs;
mod failures;
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
mod substitution;
mod uploads;
mod upstreams;
