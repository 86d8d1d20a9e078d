use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use ncps_nix::{NarInfo, StorePathHash};
use url::Url;

use crate::UpstreamError;

/// A narinfo is a few hundred bytes; anything near this is not a narinfo.
const MAX_NARINFO_BYTES: usize = 1024 * 1024;

/// How to talk to upstreams; the defaults match the Go ncps.
#[derive(Clone, Debug)]
pub struct UpstreamOptions {
    /// Limit for establishing a TCP (and TLS) connection.
    pub dialer_timeout: Duration,
    /// Limit for receiving the response headers after sending a request.
    pub response_header_timeout: Duration,
    /// Limit for a body read that makes no progress; a stalled upstream must not hold a client
    /// forever.
    pub stall_timeout: Duration,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        Self {
            dialer_timeout: Duration::from_secs(3),
            response_header_timeout: Duration::from_secs(3),
            stall_timeout: Duration::from_secs(30),
        }
    }
}

/// One upstream cache with its own connection pool.
#[derive(Clone, Debug)]
pub struct Upstream {
    base: Url,
    client: reqwest::Client,
    header_timeout: Duration,
}

/// An open NAR download: headers received, body still streaming.
pub struct NarResponse {
    /// The upstream's Content-Length, when it sent one.
    pub content_length: Option<u64>,
    /// The body; errors are timeouts or broken connections.
    pub body: BoxStream<'static, Result<Bytes, UpstreamError>>,
}

impl Upstream {
    /// Checks the URL and builds a pooled client for it.
    pub fn new(url: &str, options: &UpstreamOptions) -> Result<Self, UpstreamError> {
        let invalid = |reason: &str| UpstreamError::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let mut base = Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https"));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(invalid("query strings and fragments are not supported"));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let client = reqwest::Client::builder()
            .connect_timeout(options.dialer_timeout)
            .read_timeout(options.stall_timeout)
            .user_agent(concat!("ncps/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(UpstreamError::Client)?;
        Ok(Self {
            base,
            client,
            header_timeout: options.response_header_timeout,
        })
    }

    /// The base URL, with a trailing slash; recorded with each narinfo so its NAR is fetched from
    /// the same cache.
    pub fn url(&self) -> &str {
        self.base.as_str()
    }

    async fn get(&self, url: Url) -> Result<reqwest::Response, UpstreamError> {
        let request = self.client.get(url.clone()).send();
        match tokio::time::timeout(self.header_timeout, request).await {
            Err(_) => Err(UpstreamError::Timeout { url: url.into() }),
            Ok(Err(e)) if e.is_timeout() => Err(UpstreamError::Timeout { url: url.into() }),
            Ok(Err(source)) => Err(UpstreamError::Transport {
                url: url.into(),
                source,
            }),
            Ok(Ok(response)) => Ok(response),
        }
    }

    /// Fetches and parses `<hash>.narinfo`; `Ok(None)` when the upstream says it does not have it.
    /// Signatures are not checked here (see [`crate::Upstreams`]).
    pub async fn narinfo(&self, hash: &StorePathHash) -> Result<Option<NarInfo>, UpstreamError> {
        let url = self.join(&format!("{hash}.narinfo"))?;
        let mut response = self.get(url.clone()).await?;
        let status = response.status();
        // S3-backed caches answer 403 for missing keys; Nix treats both as "not here".
        if matches!(status.as_u16(), 404 | 403 | 410) {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(UpstreamError::Status {
                url: url.into(),
                status: status.as_u16(),
            });
        }
        let invalid = |reason: String| UpstreamError::InvalidNarInfo {
            url: url.to_string(),
            reason,
        };
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| body_error(&url, e))? {
            if body.len() + chunk.len() > MAX_NARINFO_BYTES {
                return Err(invalid("larger than 1 MiB".into()));
            }
            body.extend_from_slice(&chunk);
        }
        let text = String::from_utf8(body).map_err(|_| invalid("not UTF-8".into()))?;
        let narinfo = NarInfo::parse(&text).map_err(|e| invalid(e.to_string()))?;
        if narinfo.store_path.hash() != hash {
            return Err(invalid(format!(
                "asked for {hash} but got {}",
                narinfo.store_path
            )));
        }
        Ok(Some(narinfo))
    }

    /// Opens a NAR download at `nar_url` (relative to the base, as the narinfo said).
    pub async fn nar(&self, nar_url: &str) -> Result<NarResponse, UpstreamError> {
        let url = self.join_nar_url(nar_url)?;
        let response = self.get(url.clone()).await?;
        let status = response.status();
        if !status.is_success() {
            return Err(UpstreamError::Status {
                url: url.into(),
                status: status.as_u16(),
            });
        }
        let content_length = response.content_length();
        let body = response
            .bytes_stream()
            .map(move |r| r.map_err(|e| body_error(&url, e)))
            .boxed();
        Ok(NarResponse {
            content_length,
            body,
        })
    }

    /// Resolves a narinfo's NAR URL, refusing anything that would leave this upstream.
    pub fn join_nar_url(&self, nar_url: &str) -> Result<Url, UpstreamError> {
        let unsafe_url = || UpstreamError::UnsafeNarUrl {
            url: self.base.to_string(),
            nar_url: nar_url.to_string(),
        };
        let has_dot_segment = nar_url
            .split(['/', '?', '#'])
            .any(|s| s == ".." || s == ".");
        if nar_url.is_empty()
            || nar_url.contains("://")
            || nar_url.starts_with('/')
            || nar_url.contains('\\')
            || has_dot_segment
        {
            return Err(unsafe_url());
        }
        let url = self.join(nar_url).map_err(|_| unsafe_url())?;
        if !url.as_str().starts_with(self.base.as_str()) {
            return Err(unsafe_url());
        }
        Ok(url)
    }

    fn join(&self, relative: &str) -> Result<Url, UpstreamError> {
        self.base
            .join(relative)
            .map_err(|e| UpstreamError::InvalidUrl {
                url: format!("{}{relative}", self.base),
                reason: e.to_string(),
            })
    }
}

fn body_error(url: &Url, e: reqwest::Error) -> UpstreamError {
    if e.is_timeout() {
        UpstreamError::Timeout {
            url: url.to_string(),
        }
    } else {
        UpstreamError::Transport {
            url: url.to_string(),
            source: e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nar_urls_stay_on_the_upstream() {
        let up = Upstream::new("http://127.0.0.1:1/cache", &UpstreamOptions::default()).unwrap();
        assert_eq!(up.url(), "http://127.0.0.1:1/cache/");
        assert_eq!(
            up.join_nar_url("nar/abc.nar.xz").unwrap().as_str(),
            "http://127.0.0.1:1/cache/nar/abc.nar.xz"
        );
        for bad in [
            "../x",
            "nar/../../etc/passwd",
            "/etc/passwd",
            "http://evil/x",
            "//evil/x",
            "",
            "nar/%2e%2e/x",
        ] {
            let r = up.join_nar_url(bad);
            assert!(
                r.is_err() || r.as_ref().unwrap().as_str().starts_with(up.url()),
                "{bad} -> {r:?}"
            );
        }
        assert!(up.join_nar_url("nar/../../etc/passwd").is_err());
        assert!(up.join_nar_url("//evil/x").is_err());
    }

    #[test]
    fn rejects_bad_base_urls() {
        let o = UpstreamOptions::default();
        assert!(Upstream::new("ftp://x", &o).is_err());
        assert!(Upstream::new("not a url", &o).is_err());
        assert!(Upstream::new("http://x/?a=b", &o).is_err());
    }
}
