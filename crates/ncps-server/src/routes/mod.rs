//! One module per route.

pub mod cache_info;
pub mod health;
pub mod index;
pub mod log;
pub mod metrics;
pub mod nar;
pub mod narinfo;
pub mod pin;
pub mod pubkey;
pub mod realisation;

use crate::ApiError;
use ncps_core::CacheError;

/// Anything that is not a route of the protocol.
pub async fn not_found() -> ApiError {
    ApiError::Cache(CacheError::NotFound)
}
