use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use ncps_core::Cache;
use ncps_nix::StorePath;

use crate::ApiError;

fn parse_drv(drv: &str) -> Result<String, ApiError> {
    let path = StorePath::parse_base_name(drv)
        .map_err(|e| ApiError::BadRequest(format!("invalid derivation name: {e}")))?;
    Ok(path.base_name())
}

/// `GET /log/<drv>`: a build log, as `nix log` asks for it.
pub async fn get(
    State(cache): State<Cache>,
    Path(drv): Path<String>,
) -> Result<Response, ApiError> {
    let log = cache.documents().build_log(&parse_drv(&drv)?).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], log).into_response())
}

/// `PUT /log/<drv>`: stores a build log (`nix store copy-log --to`).
pub async fn put(
    State(cache): State<Cache>,
    Path(drv): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    cache
        .documents()
        .put_build_log(&parse_drv(&drv)?, &body)
        .await?;
    Ok(StatusCode::OK.into_response())
}
