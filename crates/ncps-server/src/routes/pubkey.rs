use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use ncps_core::Cache;

use crate::headers;

/// `GET /pubkey`: our public key in Nix format, to paste into `trusted-public-keys`.
pub async fn get(State(cache): State<Cache>) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, headers::CACHE_SHORT),
        ],
        cache.reader().public_key().to_nix_string(),
    )
}
