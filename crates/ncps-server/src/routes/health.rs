use axum::http::header;
use axum::response::IntoResponse;

/// `GET /healthz`: the process is up and serving.
pub async fn get() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], "ok\n")
}
