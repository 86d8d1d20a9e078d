//! The HTTP face of the cache: the Nix binary-cache protocol over axum.
//!
//! Handlers parse request paths into typed keys, call [`ncps_core::Cache`], and turn the answer
//! into a response with the right content type, length and caching headers. No cache logic
//! lives here.

mod auth;
mod connections;
mod error;
mod headers;
mod logging;
mod routes;
mod sendfile;
mod serving_threads;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use ncps_core::{Cache, MAX_NARINFO_UPLOAD, MAX_REALISATION_UPLOAD};

pub use auth::AccessConfig;
pub use connections::{ConnectionLimits, serve};
pub use error::ApiError;

/// Largest build log accepted.
const MAX_LOG_UPLOAD: usize = 64 * 1024 * 1024;

/// How the HTTP face is set up.
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// Who may do what.
    pub access: AccessConfig,
    /// Serve Prometheus metrics at `/metrics`.
    pub prometheus: bool,
    /// The cache's name, as `GET /` reports it (the Go ncps's index).
    pub hostname: String,
}

/// Builds the router serving `cache` with `options`.
pub fn router(cache: Cache, options: ServerOptions) -> Router {
    let access = options.access;
    let narinfo = get(routes::narinfo::get)
        .put(routes::narinfo::put)
        .delete(routes::narinfo::delete)
        .layer(DefaultBodyLimit::max(MAX_NARINFO_UPLOAD));
    let nar = get(routes::nar::get)
        .head(routes::nar::head)
        .put(routes::nar::put)
        .delete(routes::nar::delete);
    let log = get(routes::log::get)
        .put(routes::log::put)
        .layer(DefaultBodyLimit::max(MAX_LOG_UPLOAD));
    Router::new()
        .route("/nix-cache-info", get(routes::cache_info::get))
        .route("/pubkey", get(routes::pubkey::get))
        .route("/healthz", get(routes::health::get))
        .route(
            "/metrics",
            if options.prometheus {
                get(routes::metrics::get)
            } else {
                get(routes::not_found)
            },
        )
        .route("/", get(routes::index::get))
        .route("/nar/{file}", nar)
        // `/upload` is the same cache seen by `nix copy --to http://host/upload`: reads there
        // answer from what is stored only (an upstream's copy must not stop an upload), writes
        // are the root's.
        .route("/upload/", get(routes::index::get))
        .route("/upload/nix-cache-info", get(routes::cache_info::get))
        .route("/upload/pubkey", get(routes::pubkey::get))
        .route(
            "/upload/nar/{file}",
            get(routes::nar::get_stored)
                .head(routes::nar::head_stored)
                .put(routes::nar::put),
        )
        .route(
            "/upload/build-trace-v2/{drv}/{output}",
            get(routes::realisation::get_stored_trace)
                .put(routes::realisation::put_trace)
                .layer(DefaultBodyLimit::max(MAX_REALISATION_UPLOAD)),
        )
        .route("/log/{drv}", log)
        .route(
            "/pin/{file}",
            post(routes::pin::post).delete(routes::pin::delete),
        )
        .route("/pins", get(routes::pin::list))
        .route(
            "/realisations/{file}",
            get(routes::realisation::get)
                .put(routes::realisation::put)
                .layer(DefaultBodyLimit::max(MAX_REALISATION_UPLOAD)),
        )
        .route(
            "/build-trace-v2/{drv}/{output}",
            get(routes::realisation::get_trace)
                .put(routes::realisation::put_trace)
                .layer(DefaultBodyLimit::max(MAX_REALISATION_UPLOAD)),
        )
        .route(
            "/upload/{file}",
            get(routes::narinfo::get_stored)
                .put(routes::narinfo::put)
                .layer(DefaultBodyLimit::max(MAX_NARINFO_UPLOAD)),
        )
        .route("/{file}", narinfo)
        .fallback(routes::not_found)
        .layer(axum::Extension(routes::index::Hostname(Arc::from(
            options.hostname.as_str(),
        ))))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(access),
            auth::enforce,
        ))
        .layer(axum::middleware::from_fn_with_state(
            cache.clone(),
            logging::log_request,
        ))
        .with_state(cache)
}
