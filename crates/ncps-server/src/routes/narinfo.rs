use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use ncps_core::{Cache, CacheError};
use ncps_nix::StorePathHash;

use crate::{ApiError, headers};

/// `GET|HEAD /<hash>.narinfo`. Any other top-level file name is not ours: 404.
pub async fn get(
    State(cache): State<Cache>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let Some(hash) = file.strip_suffix(".narinfo") else {
        return Err(CacheError::NotFound.into());
    };
    let hash = StorePathHash::parse(hash)
        .map_err(|e| ApiError::BadRequest(format!("invalid store path hash: {e}")))?;
    let text = cache.narinfo(&hash).await?;
    Ok((
        [
            (header::CONTENT_TYPE, headers::NARINFO),
            (header::CACHE_CONTROL, headers::CACHE_NARINFO),
        ],
        text,
    )
        .into_response())
}
