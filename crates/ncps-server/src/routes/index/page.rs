//! The status page: `page.html` with `page.css` and `page.js` put inline, assembled once.
//!
//! Everything the page needs is in this one response (no fonts, scripts or images from
//! elsewhere: caches often run on isolated networks), and its Content-Security-Policy allows
//! exactly that: the one inline script by its hash, inline style, and fetches to this origin.

use std::sync::OnceLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};

const TEMPLATE: &str = include_str!("page.html");
const STYLE: &str = include_str!("page.css");
const SCRIPT: &str = include_str!("page.js");

/// The assembled document and the policy that lets its script run.
struct Page {
    html: String,
    policy: String,
}

fn page() -> &'static Page {
    static PAGE: OnceLock<Page> = OnceLock::new();
    PAGE.get_or_init(|| {
        let html = TEMPLATE
            .replace("/*STYLE*/", STYLE)
            .replace("/*SCRIPT*/", SCRIPT);
        let digest = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(SCRIPT));
        let policy = format!(
            "default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'"
        );
        Page { html, policy }
    })
}

/// The page, with headers that keep it fresh and confined.
pub fn response() -> Response {
    let page = page();
    let mut response = (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        page.html.clone(),
    )
        .into_response();
    let h = response.headers_mut();
    if let Ok(policy) = HeaderValue::from_str(&page.policy) {
        h.insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    h.insert(header::VARY, HeaderValue::from_static("Accept"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The budget: the page with its assets under ~100 KB, and nothing outside it.
    #[test]
    fn the_page_is_small_and_self_contained() {
        // The SVG namespace is a name, not an address anything is fetched from.
        let html = page().html.replace("http://www.w3.org/2000/svg", "");
        assert!(html.len() < 100 * 1024, "{} bytes", html.len());
        assert!(!html.contains("/*STYLE*/") && !html.contains("/*SCRIPT*/"));
        for outside in ["http://", "https://", "//cdn", "@import", "<link", "src="] {
            assert!(
                !html.contains(outside),
                "the page refers outside: {outside}"
            );
        }
        assert_eq!(
            html.matches("<script>").count(),
            1,
            "one inline script, hashed"
        );
    }
}
