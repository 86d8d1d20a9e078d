use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use ncps_core::Cache;

use crate::headers;

/// `GET /nix-cache-info`: store dir, mass-query support and priority.
pub async fn get(State(cache): State<Cache>) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, headers::CACHE_INFO),
            (header::CACHE_CONTROL, headers::CACHE_SHORT),
        ],
        cache.reader().cache_info().render(),
    )
}
