//! Upstream binary caches.
//!
//! Asks the configured caches for narinfos in order, accepts only narinfos signed by a trusted
//! key and describing the path that was asked for, and opens NAR downloads. A definitive "not
//! here" (404) is kept apart from "could not ask" (timeouts, 5xx, bad data) because clients
//! remember a 404 for an hour.

mod client;
mod error;
mod upstreams;

pub use client::{NarResponse, Upstream, UpstreamOptions};
pub use error::UpstreamError;
pub use upstreams::{FoundNarInfo, Upstreams};
