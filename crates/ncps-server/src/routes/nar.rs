use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use futures::stream::StreamExt;
use ncps_core::{Cache, NarBody, RangeRequest};
use ncps_nix::{Compression, NarKey};

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
    // A range names bytes of the plain NAR: it is never answered in a transport compression.
    let transport = accepts_zstd(&request_headers)
        .then_some(Compression::Zstd)
        .filter(|_| range.is_none());
    let NarBody {
        total_size,
        range,
        stream,
        encoding,
        stored,
    } = cache.reader().nar(&key, range, transport).await?;
    let mut response = Response::new(Body::from_stream(stream));
    let framing = framing(range, total_size);
    *response.status_mut() = framing.status;
    let h = response.headers_mut();
    base_headers(h);
    if key.compression == Compression::None {
        h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    if let Some(encoding) = encoding {
        h.insert(header::CONTENT_ENCODING, content_coding(encoding));
    }
    // Whether the bytes came from storage or from an upstream (for `ncps warm` and operators).
    h.insert(
        "x-cache",
        HeaderValue::from_static(if stored { "HIT" } else { "MISS" }),
    );
    if let Some(n) = framing.length {
        length(h, n);
    }
    if let Some(v) = framing
        .content_range
        .and_then(|r| HeaderValue::from_str(&r).ok())
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(response)
}

/// True when the request's `Accept-Encoding` lists zstd with a non-zero quality.
fn accepts_zstd(request_headers: &HeaderMap) -> bool {
    request_headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            name.eq_ignore_ascii_case("zstd") && !refused
        })
}

/// The `Content-Encoding` token of a transport compression.
fn content_coding(compression: Compression) -> HeaderValue {
    HeaderValue::from_static(match compression {
        Compression::Zstd => "zstd",
        Compression::Brotli => "br",
        Compression::Gzip => "gzip",
        other => unreachable!("{other} is no HTTP content coding"),
    })
}

/// `GET /upload/nar/<hash>.nar[.ext]`: a stored NAR only (upload-only reads never ask an
/// upstream).
pub async fn get_stored(
    State(cache): State<Cache>,
    Path(file): Path<String>,
    request_headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_stored(&cache, &file).await?;
    get(State(cache), Path(file), request_headers).await
}

/// `HEAD /upload/nar/<hash>.nar[.ext]`: as [`get_stored`].
pub async fn head_stored(
    State(cache): State<Cache>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    require_stored(&cache, &file).await?;
    head(State(cache), Path(file)).await
}

async fn require_stored(cache: &Cache, file: &str) -> Result<(), ApiError> {
    if cache.reader().nar_is_stored(&parse_key(file)?).await? {
        Ok(())
    } else {
        Err(ncps_core::CacheError::NotFound.into())
    }
}

/// Status, Content-Length and Content-Range of a NAR response.
#[derive(Debug, PartialEq, Eq)]
struct Framing {
    status: StatusCode,
    length: Option<u64>,
    content_range: Option<String>,
}

/// How a body is framed: a honoured range is a 206 with its part's length, a known size is a
/// 200 with Content-Length, an unknown size is a 200 sent until the stream ends.
fn framing(range: Option<ncps_core::ByteRange>, total_size: Option<u64>) -> Framing {
    match (range, total_size) {
        (Some(r), Some(total)) => Framing {
            status: StatusCode::PARTIAL_CONTENT,
            length: Some(r.end - r.start),
            content_range: Some(format!("bytes {}-{}/{total}", r.start, r.end - 1)),
        },
        (_, total) => Framing {
            status: StatusCode::OK,
            length: total,
            content_range: None,
        },
    }
}

/// `HEAD /nar/<hash>.nar[.ext]`: answered from metadata alone, never starting a download.
pub async fn head(
    State(cache): State<Cache>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let key = parse_key(&file)?;
    let size = cache.reader().nar_size(&key).await?;
    // An empty body would make the server announce `Content-Length: 0`; a body of unknown
    // length leaves the length unsaid, as the GET does when it does not know it.
    let mut response = Response::new(Body::from_stream(futures::stream::empty::<
        Result<bytes::Bytes, std::convert::Infallible>,
    >()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use ncps_core::ByteRange;

    #[test]
    fn ranges_sizes_and_unknown_lengths_are_framed() {
        let r = ByteRange { start: 10, end: 20 };
        assert_eq!(
            framing(Some(r), Some(100)),
            Framing {
                status: StatusCode::PARTIAL_CONTENT,
                length: Some(10),
                content_range: Some("bytes 10-19/100".into()),
            }
        );
        assert_eq!(
            framing(None, Some(100)),
            Framing {
                status: StatusCode::OK,
                length: Some(100),
                content_range: None,
            }
        );
        assert_eq!(
            framing(None, None),
            Framing {
                status: StatusCode::OK,
                length: None,
                content_range: None,
            }
        );
    }

    #[test]
    fn zstd_is_accepted_unless_its_quality_is_zero() {
        let accepts = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_str(value).unwrap(),
            );
            accepts_zstd(&h)
        };
        assert!(accepts("zstd"));
        assert!(accepts("gzip, deflate, br, zstd"));
        assert!(accepts("gzip;q=1.0, ZSTD;q=0.5"));
        assert!(!accepts("gzip, br"));
        assert!(!accepts("zstd;q=0"));
        assert!(!accepts("zstd; q=0.000, gzip"));
        assert!(!accepts("zstdx"));
        assert!(!accepts_zstd(&HeaderMap::new()));
    }

    #[test]
    fn nar_names_are_parsed_before_anything_else() {
        assert!(parse_key("../etc/passwd").is_err());
        assert!(parse_key("x.nar.xz").is_err());
        let hash = ncps_nix::Sha256Hash::digest(b"n");
        let name = NarKey::new(hash, ncps_nix::Compression::Xz).file_name();
        assert_eq!(parse_key(&name).unwrap().hash, hash);
    }
}
