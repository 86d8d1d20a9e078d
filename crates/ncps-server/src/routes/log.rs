use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use ncps_core::Cache;
use ncps_nix::StorePath;

use crate::ApiError;

/// A derivation's store path base name (`<hash>-<name>.drv`): logs belong to derivations only.
fn parse_drv(drv: &str) -> Result<String, ApiError> {
    let path = StorePath::parse_base_name(drv)
        .map_err(|e| ApiError::BadRequest(format!("invalid derivation name: {e}")))?;
    if !drv.ends_with(".drv") {
        return Err(ApiError::BadRequest(format!(
            "{drv:?} is not a derivation (<hash>-<name>.drv)"
        )));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_derivations_have_logs() {
        let drv = "7rjj86a15146cq1d0ybgnwyqdwgv9lfh-hello-2.12.drv";
        assert_eq!(parse_drv(drv).unwrap(), drv);
        assert!(parse_drv("7rjj86a15146cq1d0ybgnwyqdwgv9lfh-hello-2.12").is_err());
        assert!(parse_drv("7rjj86a15146cq1d0ybgnwyqdwgv9lfh-x.drv?a=1").is_err());
        assert!(parse_drv("../x.drv").is_err());
    }
}
