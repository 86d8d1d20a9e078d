//! `GET /` (and `/upload/`): the status page for browsers, JSON for everything else.
//!
//! The JSON keeps the Go ncps's two fields (`hostname`, `publicKey`), so tools written against
//! it keep working, and adds ours under `ncps`; `?history=1h` or `?history=24h` adds the kept
//! samples as columns under `history` (what the page draws). The page is one HTML document with
//! its style and script inline ([`page`]): nothing is fetched from anywhere but this server.

mod page;

use std::sync::Arc;

use axum::Extension;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use ncps_core::Cache;
use ncps_core::status::Window;

use crate::ApiError;

/// The cache's name, handed to the index route.
#[derive(Clone)]
pub struct Hostname(pub Arc<str>);

/// Serves the page to browsers and the figures to everyone else.
pub async fn get(
    State(cache): State<Cache>,
    Extension(Hostname(hostname)): Extension<Hostname>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if wants_html(&headers) {
        return Ok(page::response());
    }
    let window = history_window(query.as_deref())?;
    let status = cache.status();
    let mut body = serde_json::json!({
        "hostname": &*hostname,
        "publicKey": cache.reader().public_key().to_nix_string(),
        "ncps": status.report(),
    });
    if let Some(window) = window {
        body["history"] = serde_json::json!(status.columns(window));
    }
    let mut response = (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        format!("{body}\n"),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept"));
    Ok(response)
}

/// Whether the client asked for a page: it names `text/html` before any JSON type (browsers
/// do; `curl` and scripts send `*/*` or `application/json`).
fn wants_html(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let position = |media: &str| {
        accept
            .split(',')
            .map(|part| part.split(';').next().unwrap_or("").trim())
            .position(|m| m.eq_ignore_ascii_case(media))
    };
    match (position("text/html"), position("application/json")) {
        (Some(html), Some(json)) => html < json,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// The `history` query parameter, if given.
fn history_window(query: Option<&str>) -> Result<Option<Window>, ApiError> {
    let Some(query) = query else {
        return Ok(None);
    };
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name == "history" {
            return Window::parse(value).map(Some).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "history={value:?}: expected history=1h (every 10 s) or history=24h (every 5 min)"
                ))
            });
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn browsers_get_the_page_and_tools_the_json() {
        let chromium = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,\
                        image/webp,image/apng,*/*;q=0.8";
        assert!(wants_html(&accept(chromium)));
        assert!(wants_html(&accept("text/html")));
        assert!(!wants_html(&accept("*/*")), "curl");
        assert!(!wants_html(&accept("application/json")));
        assert!(!wants_html(&accept("application/json, text/html")));
        assert!(wants_html(&accept("TEXT/HTML; q=1, application/json")));
        assert!(
            !wants_html(&HeaderMap::new()),
            "no Accept: the Go ncps's JSON"
        );
    }

    #[test]
    fn history_takes_two_windows_and_names_them_when_wrong() {
        assert_eq!(history_window(None).unwrap(), None);
        assert_eq!(history_window(Some("x=1")).unwrap(), None);
        assert_eq!(
            history_window(Some("x=1&history=24h")).unwrap(),
            Some(Window::Day)
        );
        assert_eq!(
            history_window(Some("history=1h")).unwrap(),
            Some(Window::Hour)
        );
        let Err(ApiError::BadRequest(message)) = history_window(Some("history=7d")) else {
            panic!("7d accepted");
        };
        assert!(message.contains("history=1h"), "{message}");
    }
}
