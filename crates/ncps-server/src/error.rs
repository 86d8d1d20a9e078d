use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use ncps_core::CacheError;
use tracing::error;

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
    match e {
        CacheError::NotFound => StatusCode::NOT_FOUND,
        CacheError::Upstream(u) if u.is_timeout() => StatusCode::GATEWAY_TIMEOUT,
        CacheError::Upstream(_) | CacheError::Integrity(_) => StatusCode::BAD_GATEWAY,
        CacheError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
        CacheError::BadRequest(_) => StatusCode::BAD_REQUEST,
        CacheError::Forbidden(_) => StatusCode::FORBIDDEN,
        CacheError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        CacheError::Lock(_) => StatusCode::SERVICE_UNAVAILABLE,
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
    match e {
        CacheError::NotFound => "not found".into(),
        CacheError::Upstream(u) => u.to_string(),
        CacheError::Integrity(m) => format!("upstream NAR failed verification: {m}"),
        CacheError::RangeNotSatisfiable { size } => format!("range outside the {size} bytes"),
        CacheError::BadRequest(m) | CacheError::Forbidden(m) => m.clone(),
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
        response
    }
}
