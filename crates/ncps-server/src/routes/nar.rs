use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use futures::stream::StreamExt;
use ncps_core::{Cache, NarBody, RangeRequest};
use ncps_nix::NarKey;

use crate::{ApiError, headers};

fn parse_key(file: &str) -> Result<NarKey, ApiError> {
    NarKey::parse_file_name(file)
        .map_err(|e| ApiError::BadRequest(format!("invalid NAR name: {e}")))
}

fn base_headers(headers: &mut HeaderMap) {
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(headers::NAR));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(headers::CACHE_IMMUTABLE),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
}

fn length(headers: &mut HeaderMap, n: u64) {
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
}

/// `GET /nar/<hash>.nar[.ext]`: stored NARs honour a single byte range; uncached ones stream
/// from the upstream download as it arrives.
pub async fn get(
    State(cache): State<Cache>,
    Path(file): Path<String>,
    request_headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = parse_key(&file)?;
    let range = request_headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(RangeRequest::parse_header);
    let NarBody {
        total_size,
        range,
        stream,
    } = cache.reader().nar(&key, range).await?;
    let mut response = Response::new(Body::from_stream(stream));
    let h = response.headers_mut();
    base_headers(h);
    match (range, total_size) {
        (Some(r), Some(total)) => {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            let h = response.headers_mut();
            length(h, r.end - r.start);
            let content_range = format!("bytes {}-{}/{total}", r.start, r.end - 1);
            if let Ok(v) = HeaderValue::from_str(&content_range) {
                h.insert(header::CONTENT_RANGE, v);
            }
        }
        (_, Some(total)) => length(h, total),
        (_, None) => {}
    }
    Ok(response)
}

/// `HEAD /nar/<hash>.nar[.ext]`: answered from metadata alone, never starting a download.
pub async fn head(
    State(cache): State<Cache>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let key = parse_key(&file)?;
    let size = cache.reader().nar_size(&key).await?;
    let mut response = StatusCode::OK.into_response();
    let h = response.headers_mut();
    base_headers(h);
    if let Some(size) = size {
        length(h, size);
    }
    Ok(response)
}

/// `PUT /nar/<hash>.nar[.ext]`: receives an upload, streamed to disk and measured; it is
/// published when its narinfo arrives.
pub async fn put(
    State(cache): State<Cache>,
    Path(file): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let key = parse_key(&file)?;
    let stream = body
        .into_data_stream()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::ConnectionAborted, e))
        .boxed();
    cache.ingest().upload_nar(&key, stream).await?;
    Ok(StatusCode::OK.into_response())
}

/// `DELETE /nar/<hash>.nar[.ext]`.
pub async fn delete(
    State(cache): State<Cache>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let key = parse_key(&file)?;
    cache.maintenance().delete_nar(&key).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
