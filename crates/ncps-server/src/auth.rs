//! Access control: which verbs are enabled, and the bearer tokens that guard reads and writes.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Who may do what.
#[derive(Clone, Debug, Default)]
pub struct AccessConfig {
    /// Accept uploads (`PUT`).
    pub allow_put: bool,
    /// Accept deletions (`DELETE`).
    pub allow_delete: bool,
    /// Token required to read (GET/HEAD); `/healthz` and `/metrics` stay open for probes.
    pub get_token: Option<String>,
    /// Token required to write (PUT/DELETE/POST); falls back to `get_token` when unset.
    pub put_token: Option<String>,
}

/// Routes probes must reach without credentials.
const OPEN_PATHS: &[&str] = &["/healthz", "/metrics"];

/// Pin management is administration: it needs the write token even to read, and is not a
/// deletion of cached data (so it does not need --cache-allow-delete-verb).
fn is_pin_route(path: &str) -> bool {
    path == "/pins" || path.starts_with("/pin/")
}

fn plain(status: StatusCode, message: &str) -> Response {
    let mut response = (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        format!("{message}\n"),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"ncps\""),
        );
    }
    response
}

/// Compares through SHA-256 digests so the time taken says nothing about the token.
fn same_secret(given: &str, expected: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The secret a request presents: a bearer token, or the password of Basic auth (what Nix sends
/// from a `netrc-file`, so clients need no special configuration).
fn presented_secret(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Some(token.trim().to_string());
    }
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_user, password) = text.split_once(':')?;
    Some(password.to_string())
}

/// Rejects disabled verbs (405) and requests without the right token (401).
pub async fn enforce(
    State(access): State<Arc<AccessConfig>>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let pins = is_pin_route(request.uri().path());
    let writes = pins || !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    if (method == Method::PUT || pins) && !access.allow_put {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "uploads are disabled; start ncps with --cache-allow-put-verb",
        );
    }
    if method == Method::DELETE && !access.allow_delete && !pins {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "deletions are disabled; start ncps with --cache-allow-delete-verb",
        );
    }
    // The write token also reads: `nix copy --to` sends one netrc password for its reads
    // (nix-cache-info, narinfo checks) and its uploads.
    let accepted: Vec<&String> = if writes {
        access
            .put_token
            .iter()
            .chain(&access.get_token)
            .take(1)
            .collect()
    } else if OPEN_PATHS.contains(&request.uri().path()) || access.get_token.is_none() {
        Vec::new()
    } else {
        access.get_token.iter().chain(&access.put_token).collect()
    };
    if accepted.is_empty() {
        return next.run(request).await;
    }
    let given = presented_secret(request.headers());
    let ok = given.is_some_and(|g| accepted.iter().any(|t| same_secret(&g, t)));
    if !ok {
        return plain(StatusCode::UNAUTHORIZED, "missing or wrong token");
    }
    let mut response = next.run(request).await;
    keep_out_of_shared_caches(&mut response);
    response
}

/// A response that needed a token must not be kept by a shared cache (a proxy or CDN would
/// hand it to anyone): `public` becomes `private`, which still lets the client keep it.
fn keep_out_of_shared_caches(response: &mut Response) {
    let headers = response.headers_mut();
    let Some(value) = headers
        .get(header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
    else {
        return;
    };
    if let Some(rest) = value.strip_prefix("public")
        && let Ok(private) = format!("private{rest}").parse()
    {
        headers.insert(header::CACHE_CONTROL, private);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_basic_passwords_are_accepted() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_secret(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert_eq!(presented_secret(&h).as_deref(), Some("s3cret"));
        let basic = base64::engine::general_purpose::STANDARD.encode("nix:s3cret");
        h.insert(
            header::AUTHORIZATION,
            format!("Basic {basic}").parse().unwrap(),
        );
        assert_eq!(presented_secret(&h).as_deref(), Some("s3cret"));
        assert!(same_secret("s3cret", "s3cret"));
        assert!(!same_secret("s3cret", "s3cret2"));
    }

    #[test]
    fn answers_behind_a_token_are_private() {
        let mut response = ([(header::CACHE_CONTROL, "public, max-age=3600")], "x").into_response();
        keep_out_of_shared_caches(&mut response);
        assert_eq!(
            response.headers()[header::CACHE_CONTROL],
            "private, max-age=3600"
        );
        let mut response = ([(header::CACHE_CONTROL, "no-store")], "x").into_response();
        keep_out_of_shared_caches(&mut response);
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        assert!(!same_secret("", "x"));
    }
}
