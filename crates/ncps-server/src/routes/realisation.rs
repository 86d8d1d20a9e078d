use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use ncps_core::Cache;

use crate::ApiError;

/// Characters a realisation id or derivation/output name may contain (Nix's are hashes, store
/// path names and `!`/`:` separators); anything else never reaches the database.
fn safe_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-._?=!:".contains(&b))
}

fn realisation_id(file: &str) -> Result<String, ApiError> {
    match file.strip_suffix(".doi") {
        // The id is the path on an upstream too (`realisations/<id>.doi`).
        Some(id) if safe_part(id) && id.contains('!') => Ok(format!("realisations/{file}")),
        _ => Err(ApiError::BadRequest(
            "expected /realisations/<drv hash>!<output>.doi".into(),
        )),
    }
}

fn trace_id(drv: &str, output: &str) -> Result<String, ApiError> {
    if safe_part(drv) && safe_part(output) {
        Ok(format!("build-trace-v2/{drv}/{output}"))
    } else {
        Err(ApiError::BadRequest(
            "invalid derivation or output name".into(),
        ))
    }
}

fn json(content: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], content).into_response()
}

fn text(body: &Bytes) -> Result<&str, ApiError> {
    std::str::from_utf8(body).map_err(|_| ApiError::BadRequest("not UTF-8".into()))
}

/// `GET /realisations/<id>.doi`.
pub async fn get(
    State(cache): State<Cache>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    Ok(json(
        cache
            .documents()
            .realisation(&realisation_id(&file)?)
            .await?,
    ))
}

/// `PUT /realisations/<id>.doi`.
pub async fn put(
    State(cache): State<Cache>,
    Path(file): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    cache
        .documents()
        .put_realisation(&realisation_id(&file)?, text(&body)?)
        .await?;
    Ok(StatusCode::OK.into_response())
}

/// `GET /build-trace-v2/<drv name>/<output>`.
pub async fn get_trace(
    State(cache): State<Cache>,
    Path((drv, output)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    Ok(json(
        cache
            .documents()
            .realisation(&trace_id(&drv, &output)?)
            .await?,
    ))
}

/// `GET /upload/build-trace-v2/<drv name>/<output>`: a stored entry only.
pub async fn get_stored_trace(
    State(cache): State<Cache>,
    Path((drv, output)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    Ok(json(
        cache
            .documents()
            .stored_realisation(&trace_id(&drv, &output)?)
            .await?,
    ))
}

/// `PUT /build-trace-v2/<drv name>/<output>`.
pub async fn put_trace(
    State(cache): State<Cache>,
    Path((drv, output)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    cache
        .documents()
        .put_realisation(&trace_id(&drv, &output)?, text(&body)?)
        .await?;
    Ok(StatusCode::OK.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(realisation_id("sha256:abc!out.doi").is_ok());
        assert!(realisation_id("abc.doi").is_err());
        assert!(realisation_id("../x!out.doi").is_err());
        assert!(realisation_id("a/b!out.doi").is_err());
        assert!(trace_id("hello-2.12.drv", "out").is_ok());
        assert!(trace_id("..", "out").is_err());
    }
}
