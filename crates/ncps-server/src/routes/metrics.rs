use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use ncps_core::Cache;

use crate::ApiError;

/// `GET /metrics`: Prometheus metrics (OpenMetrics text), storage gauges measured now.
pub async fn get(State(cache): State<Cache>) -> Result<Response, ApiError> {
    cache.maintenance().refresh_gauges().await?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        cache.metrics().encode(),
    )
        .into_response())
}
