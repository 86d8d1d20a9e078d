//! The HTTP face of the cache: the Nix binary-cache protocol over axum.
//!
//! Handlers parse request paths into typed keys, call [`ncps_core::Cache`], and turn the answer
//! into a response with the right content type, length and caching headers. No cache logic
//! lives here.

mod error;
mod headers;
mod logging;
mod routes;

use axum::Router;
use axum::routing::get;
use ncps_core::Cache;

pub use error::ApiError;

/// Builds the router serving `cache`.
pub fn router(cache: Cache) -> Router {
    Router::new()
        .route("/nix-cache-info", get(routes::cache_info::get))
        .route("/pubkey", get(routes::pubkey::get))
        .route("/healthz", get(routes::health::get))
        .route("/nar/{file}", get(routes::nar::get).head(routes::nar::head))
        .route("/{file}", get(routes::narinfo::get))
        .fallback(routes::not_found)
        .layer(axum::middleware::from_fn(logging::log_request))
        .with_state(cache)
}
