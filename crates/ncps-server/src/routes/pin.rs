use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use ncps_core::{Cache, CacheError};
use ncps_nix::StorePathHash;

use crate::ApiError;

fn parse_hash(file: &str) -> Result<StorePathHash, ApiError> {
    let Some(hash) = file.strip_suffix(".narinfo") else {
        return Err(CacheError::NotFound.into());
    };
    StorePathHash::parse(hash)
        .map_err(|e| ApiError::BadRequest(format!("invalid store path hash: {e}")))
}

/// `POST /pin/<hash>.narinfo`: protects the path and its closure from eviction (201 when new).
pub async fn post(
    State(cache): State<Cache>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let created = cache.maintenance().pin(&parse_hash(&file)?).await?;
    Ok(if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
    .into_response())
}

/// `DELETE /pin/<hash>.narinfo`.
pub async fn delete(
    State(cache): State<Cache>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    cache.maintenance().unpin(&parse_hash(&file)?).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /pins`: one pin per line, `<hash> <store path or ->`.
pub async fn list(State(cache): State<Cache>) -> Result<Response, ApiError> {
    let text = cache.maintenance().pins_text().await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        text,
    )
        .into_response())
}
