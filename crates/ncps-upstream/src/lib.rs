//! Upstream binary caches.
//!
//! Several upstreams, each with a pooled HTTP client (HTTP/2 where offered) and optional
//! credentials from a netrc file; probed in the background (`nix-cache-info`: the store must be
//! `/nix/store`, its `Priority` orders lookups); asked for narinfos with retries and failover,
//! accepting only narinfos signed by a trusted key and describing the path that was asked for.
//! A definitive "not here" (404 from every upstream) is kept apart from "could not ask"
//! (timeouts, 5xx, bad data) because clients remember a 404 for an hour, and is itself
//! remembered briefly (the negative cache) to spare upstreams bursts of misses.

mod client;
mod error;
mod health;
mod negative;
mod netrc;
mod pace;
mod upstreams;

pub use client::{LookupStrategy, NarResponse, Upstream, UpstreamOptions};
pub use error::UpstreamError;
pub use health::{DEFAULT_PRIORITY, ProbeSchedule, UpstreamHealth};
pub use netrc::{Credentials, Netrc, NetrcError};
pub use upstreams::{FoundNarInfo, Upstreams};

#[cfg(test)]
mod tests;
