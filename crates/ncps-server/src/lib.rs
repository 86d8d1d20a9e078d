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
mod request_bodies;
mod routes;
mod sendfile;
mod serving_threads;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post, put};
use ncps_core::{Cache, MAX_NARINFO_UPLOAD, MAX_REALISATION_UPLOAD};
use request_bodies::{BodyRule, BufferBudget, limited};

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
    // On a 32-bit host a limit beyond the address space is no limit.
    let max_nar = usize::try_from(cache.ingest().max_upload_size()).unwrap_or(usize::MAX);
    // Only the PUTs take bodies: reads pass no check on their way. NARs are streamed to disk;
    // the other documents are held whole, within one budget.
    let budget = BufferBudget::default();
    let held = |limit| BodyRule::held(limit, &budget);
    let streamed = BodyRule::streamed(max_nar);
    let narinfo = get(routes::narinfo::get)
        .delete(routes::narinfo::delete)
        .merge(limited(put(routes::narinfo::put), held(MAX_NARINFO_UPLOAD)));
    let nar = get(routes::nar::get)
        .head(routes::nar::head)
        .delete(routes::nar::delete)
        .merge(limited(put(routes::nar::put), streamed.clone()));
    let log = get(routes::log::get).merge(limited(
        put(routes::log::put),
        held(MAX_LOG_UPLOAD.min(max_nar)),
    ));
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
                .merge(limited(put(routes::nar::put), streamed)),
        )
        .route(
            "/upload/build-trace-v2/{drv}/{output}",
            get(routes::realisation::get_stored_trace).merge(limited(
                put(routes::realisation::put_trace),
                held(MAX_REALISATION_UPLOAD),
            )),
        )
        .route("/log/{drv}", log)
        .route(
            "/pin/{file}",
            post(routes::pin::post).delete(routes::pin::delete),
        )
        .route("/pins", get(routes::pin::list))
        .route(
            "/realisations/{file}",
            get(routes::realisation::get).merge(limited(
                put(routes::realisation::put),
                held(MAX_REALISATION_UPLOAD),
            )),
        )
        .route(
            "/build-trace-v2/{drv}/{output}",
            get(routes::realisation::get_trace).merge(limited(
                put(routes::realisation::put_trace),
                held(MAX_REALISATION_UPLOAD),
            )),
        )
        .route(
            "/upload/{file}",
            get(routes::narinfo::get_stored)
                .merge(limited(put(routes::narinfo::put), held(MAX_NARINFO_UPLOAD))),
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
