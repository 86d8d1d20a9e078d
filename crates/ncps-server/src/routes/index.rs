use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use ncps_core::Cache;

use crate::headers;

/// The cache's name, handed to the index route.
#[derive(Clone)]
pub struct Hostname(pub Arc<str>);

/// `GET /` (and `/upload/`): the cache's name and public key as JSON, as the Go ncps answers,
/// so tools written against it keep working.
pub async fn get(
    State(cache): State<Cache>,
    Extension(Hostname(hostname)): Extension<Hostname>,
) -> impl IntoResponse {
    let body = serde_json::json!({
        "hostname": &*hostname,
        "publicKey": cache.reader().public_key().to_nix_string(),
    });
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, headers::CACHE_SHORT),
        ],
        format!("{body}\n"),
    )
}
