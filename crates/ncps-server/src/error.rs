use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use ncps_core::CacheError;
use tracing::error;

/// When a client should retry after a 503 (the lock service was unavailable, or the server was
/// busy).
const RETRY_AFTER_SECS: &str = "5";

/// A failed request. Clients get a status and a one-line reason; details go to the log only.
#[derive(Debug)]
pub enum ApiError {
    /// The path does not name anything this server could ever have.
    BadRequest(String),
    /// The cache could not answer.
    Cache(CacheError),
}

impl From<CacheError> for ApiError {
    fn from(e: CacheError) -> Self {
        Self::Cache(e)
    }
}

/// The status for each cache error, in one place: adding a variant forces a decision here.
fn status_of(e: &CacheError) -> StatusCode {
    if e.is_storage_full() {
        return StatusCode::INSUFFICIENT_STORAGE;
    }
    match e {
        CacheError::NotFound => StatusCode::NOT_FOUND,
        CacheError::Upstream(u) if u.is_timeout() => StatusCode::GATEWAY_TIMEOUT,
        CacheError::Upstream(_) | CacheError::Integrity(_) => StatusCode::BAD_GATEWAY,
        CacheError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
        CacheError::BadRequest(_) => StatusCode::BAD_REQUEST,
        CacheError::Forbidden(_) => StatusCode::FORBIDDEN,
        CacheError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        CacheError::Lock(_) | CacheError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
        CacheError::WaitedTooLong => StatusCode::GATEWAY_TIMEOUT,
        CacheError::Shared(inner) => status_of(inner),
        CacheError::Database(_) | CacheError::Storage(_) | CacheError::Io(_) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// What a client is told: upstream problems are named (they help an operator find the broken
/// upstream), our own internals are not.
fn public_message(e: &CacheError) -> String {
    if e.is_storage_full() {
        return "the cache's storage is full; try again once space is freed".into();
    }
    match e {
        CacheError::NotFound => "not found".into(),
        CacheError::Upstream(u) => u.to_string(),
        CacheError::Integrity(m) => format!("upstream NAR failed verification: {m}"),
        CacheError::RangeNotSatisfiable { size } => format!("range outside the {size} bytes"),
        CacheError::BadRequest(m) | CacheError::Forbidden(m) | CacheError::Busy(m) => m.clone(),
        CacheError::TooLarge { limit } => format!("upload larger than the limit of {limit} bytes"),
        CacheError::Lock(_) => "the lock service is unavailable; try again shortly".into(),
        CacheError::WaitedTooLong => {
            "another replica's download of this NAR did not finish in time".into()
        }
        CacheError::Shared(inner) => public_message(inner),
        CacheError::Database(_) | CacheError::Storage(_) | CacheError::Io(_) => {
            "internal error".into()
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
            Self::BadRequest(m) => (StatusCode::BAD_REQUEST, m.clone()),
            Self::Cache(e) => {
                let status = status_of(e);
                if status.is_server_error() {
                    error!(error = %e, %status, "request failed");
                }
                (status, public_message(e))
            }
        };
        let mut response = (
            status,
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            format!("{message}\n"),
        )
            .into_response();
        if let Self::Cache(CacheError::RangeNotSatisfiable { size }) = &self
            && let Ok(v) = format!("bytes */{size}").parse()
        {
            response.headers_mut().insert(header::CONTENT_RANGE, v);
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use ncps_core::LockError;

    fn io() -> std::io::Error {
        std::io::Error::other("disk on fire at /secret/path")
    }

    /// Every variant's status, and what the client is told about our internals: nothing.
    #[test]
    fn each_error_has_one_status_and_hides_internals() {
        let rows: Vec<(CacheError, StatusCode)> = vec![
            (CacheError::NotFound, StatusCode::NOT_FOUND),
            (
                CacheError::Integrity("bad hash".into()),
                StatusCode::BAD_GATEWAY,
            ),
            (CacheError::BadRequest("no".into()), StatusCode::BAD_REQUEST),
            (CacheError::Forbidden("no".into()), StatusCode::FORBIDDEN),
            (
                CacheError::TooLarge { limit: 1 },
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
            (
                CacheError::RangeNotSatisfiable { size: 10 },
                StatusCode::RANGE_NOT_SATISFIABLE,
            ),
            (
                CacheError::Lock(LockError::new("connection refused")),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (CacheError::WaitedTooLong, StatusCode::GATEWAY_TIMEOUT),
            (
                CacheError::Busy("too many conversions".into()),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (CacheError::Io(io()), StatusCode::INTERNAL_SERVER_ERROR),
            (
                CacheError::Shared(Arc::new(CacheError::WaitedTooLong)),
                StatusCode::GATEWAY_TIMEOUT,
            ),
            (
                CacheError::Shared(Arc::new(CacheError::Io(io()))),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ];
        for (error, status) in rows {
            assert_eq!(status_of(&error), status, "{error:?}");
            let message = public_message(&error);
            assert!(
                !message.contains("/secret/path"),
                "{error:?} leaks: {message}"
            );
        }
    }

    #[test]
    fn a_503_says_when_to_retry_and_a_416_names_the_size() {
        let busy = ApiError::Cache(CacheError::Lock(LockError::new("down"))).into_response();
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.headers()[header::RETRY_AFTER], RETRY_AFTER_SECS);
        let range = ApiError::Cache(CacheError::RangeNotSatisfiable { size: 42 }).into_response();
        assert_eq!(range.headers()[header::CONTENT_RANGE], "bytes */42");
        assert_eq!(range.headers()[header::CACHE_CONTROL], "no-store");
    }
}
