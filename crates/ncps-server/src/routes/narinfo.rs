use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use ncps_core::{Cache, CacheError};
use ncps_nix::StorePathHash;

use crate::{ApiError, headers};

/// The store path hash of `<hash>.narinfo`; any other top-level file name is not ours (404).
fn parse_hash(file: &str) -> Result<StorePathHash, ApiError> {
    let Some(hash) = file.strip_suffix(".narinfo") else {
        return Err(CacheError::NotFound.into());
    };
    StorePathHash::parse(hash)
        .map_err(|e| ApiError::BadRequest(format!("invalid store path hash: {e}")))
}

/// `GET|HEAD /<hash>.narinfo`.
pub async fn get(
    State(cache): State<Cache>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let hash = parse_hash(&file)?;
    Ok(narinfo_response(cache.reader().narinfo(&hash).await?))
}

/// `GET|HEAD /upload/<hash>.narinfo`: what this cache stores, never an upstream's copy, so
/// `nix copy --to http://host/upload` uploads every path the cache does not hold itself.
pub async fn get_stored(
    State(cache): State<Cache>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let hash = parse_hash(&file)?;
    Ok(narinfo_response(
        cache.reader().stored_narinfo(&hash).await?,
    ))
}

fn narinfo_response(text: Bytes) -> Response {
    (
        [
            (header::CONTENT_TYPE, headers::NARINFO),
            (header::CACHE_CONTROL, headers::CACHE_NARINFO),
        ],
        text,
    )
        .into_response()
}

/// `PUT /<hash>.narinfo`: publishes an uploaded path once its NAR checks out.
pub async fn put(
    State(cache): State<Cache>,
    Path(file): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let hash = parse_hash(&file)?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::BadRequest("narinfo is not UTF-8".into()))?;
    cache.ingest().upload_narinfo(&hash, text).await?;
    Ok(StatusCode::OK.into_response())
}

/// `DELETE /<hash>.narinfo`.
pub async fn delete(
    State(cache): State<Cache>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let hash = parse_hash(&file)?;
    cache.maintenance().delete_narinfo(&hash).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
