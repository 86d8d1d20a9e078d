use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use ncps_nix::{CacheInfo, NarInfo, STORE_DIR, StorePathHash};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use url::Url;

use crate::UpstreamError;
use crate::health::ProbeSchedule;
use crate::netrc::{Credentials, Netrc};

/// A narinfo is a few hundred bytes; anything near this is not a narinfo.
const MAX_NARINFO_BYTES: usize = 1024 * 1024;
/// `nix-cache-info` is three short lines.
const MAX_CACHE_INFO_BYTES: usize = 64 * 1024;

/// How lookups use several upstreams.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LookupStrategy {
    /// Ask every healthy upstream at once; the answer of the best-priority upstream that has
    /// the path wins, as soon as every better one has said no. A miss costs the slowest
    /// upstream's round trip instead of the sum of all of them, for one small request per
    /// upstream.
    #[default]
    Parallel,
    /// Ask one upstream after the other, in priority order, stopping at the first that has it:
    /// the fewest upstream requests, the longest misses.
    Sequential,
}

/// How to talk to upstreams; the defaults match the Go ncps where it has a setting.
#[derive(Clone, Debug)]
pub struct UpstreamOptions {
    /// Limit for establishing a TCP (and TLS) connection.
    pub dialer_timeout: Duration,
    /// Limit for receiving the response headers after sending a request.
    pub response_header_timeout: Duration,
    /// Limit for a body read that makes no progress; a stalled upstream must not hold a client
    /// forever. Over every two of these, a NAR body must also bring at least 64 KiB, so an
    /// upstream that drips a byte just before each read times out is cut off as well.
    pub stall_timeout: Duration,
    /// Extra attempts of a narinfo GET after a timeout, connection failure, 5xx or 429 (never
    /// after a 404), with jittered exponential backoff from `retry_backoff`.
    pub narinfo_retries: u32,
    /// Backoff before the first retry; doubled for each further one.
    pub retry_backoff: Duration,
    /// Whole-request limit when an unhealthy upstream is asked as a last resort: short, so a
    /// miss with every upstream down is a quick 502/504.
    pub last_resort_timeout: Duration,
    /// How long a path no upstream has is remembered (zero disables the negative cache).
    pub negative_ttl: Duration,
    /// Most paths the negative cache remembers (oldest evicted first).
    pub negative_capacity: usize,
    /// Health probing.
    pub probes: ProbeSchedule,
    /// Parallel or sequential lookups.
    pub lookup: LookupStrategy,
    /// Credentials for private upstreams, by host.
    pub netrc: Option<Arc<Netrc>>,
    /// Accept narinfos without checking their signature from upstreams no configured key
    /// applies to (`--cache-upstream-allow-unverified`; the Go ncps's default). Off: such an
    /// upstream is a configuration error.
    pub allow_unverified: bool,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        Self {
            dialer_timeout: Duration::from_secs(3),
            response_header_timeout: Duration::from_secs(3),
            stall_timeout: Duration::from_secs(30),
            narinfo_retries: 2,
            retry_backoff: Duration::from_millis(100),
            last_resort_timeout: Duration::from_secs(2),
            negative_ttl: Duration::from_secs(30),
            negative_capacity: 100_000,
            probes: ProbeSchedule::default(),
            lookup: LookupStrategy::default(),
            netrc: None,
            allow_unverified: false,
        }
    }
}

/// One upstream cache with its own connection pool (HTTP/2 where the upstream offers it,
/// kept-alive HTTP/1.1 connections otherwise).
#[derive(Clone, Debug)]
pub struct Upstream {
    /// Without credentials and query: this is what logs, errors and the database see.
    base: Url,
    /// `?priority=N` from the configured URL: ordering by N instead of the announced priority.
    priority: Option<u32>,
    client: reqwest::Client,
    header_timeout: Duration,
    stall_timeout: Duration,
    auth: Option<&'static str>,
}

/// An open NAR download: headers received, body still streaming.
pub struct NarResponse {
    /// The upstream's Content-Length, when it sent one.
    pub content_length: Option<u64>,
    /// The body; errors are timeouts or broken connections.
    pub body: BoxStream<'static, Result<Bytes, UpstreamError>>,
}

impl Upstream {
    /// Checks the URL and builds a pooled client for it. Credentials come from the URL's
    /// user info (`https://user:pass@host/`, then removed from the URL) or else from the netrc
    /// entry of its host.
    pub fn new(url: &str, options: &UpstreamOptions) -> Result<Self, UpstreamError> {
        let invalid = |reason: &str| UpstreamError::InvalidUrl {
            url: redact(url),
            reason: reason.to_string(),
        };
        let mut base = Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https"));
        }
        if base.fragment().is_some() {
            return Err(invalid("fragments are not supported"));
        }
        let priority = configured_priority(&base).map_err(|reason| invalid(&reason))?;
        base.set_query(None);
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let credentials = if !base.username().is_empty() || base.password().is_some() {
            let decode = |s: &str| {
                percent_decode(s)
                    .ok_or_else(|| invalid("user info is not valid percent-encoded UTF-8"))
            };
            let creds = Credentials::Basic {
                login: decode(base.username())?,
                password: decode(base.password().unwrap_or(""))?,
            };
            let _ = base.set_username("");
            let _ = base.set_password(None);
            Some(creds)
        } else {
            let host = base.host_str().unwrap_or_default();
            options
                .netrc
                .as_ref()
                .and_then(|n| n.credentials(host, base.port()))
        };
        let mut headers = HeaderMap::new();
        if let Some(creds) = &credentials {
            let mut value = HeaderValue::from_str(&creds.header_value())
                .map_err(|_| invalid("credentials contain characters not allowed in a header"))?;
            // Keeps the value out of hyper's and reqwest's debug output.
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let client = reqwest::Client::builder()
            .connect_timeout(options.dialer_timeout)
            .read_timeout(options.stall_timeout)
            .default_headers(headers)
            .user_agent(concat!("ncps/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(UpstreamError::Client)?;
        Ok(Self {
            base,
            priority,
            client,
            header_timeout: options.response_header_timeout,
            stall_timeout: options.stall_timeout,
            auth: credentials.as_ref().map(Credentials::scheme),
        })
    }

    /// The base URL, with a trailing slash; recorded with each narinfo so its NAR is fetched from
    /// the same cache.
    pub fn url(&self) -> &str {
        self.base.as_str()
    }

    /// The host, without its port (a key's name, which cannot hold a `:`, names an upstream by
    /// it).
    pub fn host(&self) -> &str {
        self.base.host_str().unwrap_or_default()
    }

    /// The priority given with the URL (`?priority=N`, as the Go ncps accepts it), which wins
    /// over the one the upstream announces.
    pub fn configured_priority(&self) -> Option<u32> {
        self.priority
    }

    /// How requests authenticate (`basic`, `bearer`), for logs; never the secret.
    pub fn auth_scheme(&self) -> Option<&'static str> {
        self.auth
    }

    /// Fetches `nix-cache-info`: `Ok(None)` when the upstream has none (Nix then assumes the
    /// defaults), an error when it names a store other than `/nix/store`.
    pub async fn cache_info(&self) -> Result<Option<CacheInfo>, UpstreamError> {
        let url = self.join("nix-cache-info")?;
        let Some(response) = self.get_if_present(&url).await? else {
            return Ok(None);
        };
        let bad = |reason: String| UpstreamError::BadCacheInfo {
            url: url.to_string(),
            reason,
        };
        let text = read_text(response, &url, MAX_CACHE_INFO_BYTES)
            .await?
            .map_err(|r| bad(r.to_string()))?;
        let info = CacheInfo::parse(&text).map_err(|e| bad(e.to_string()))?;
        if info.store_dir != STORE_DIR {
            return Err(bad(format!(
                "StoreDir is {}, not {STORE_DIR}",
                info.store_dir
            )));
        }
        Ok(Some(info))
    }

    /// GETs a document: `Ok(None)` when the upstream says it does not have it (404, 410, and
    /// 403, which S3-backed caches answer for missing keys and Nix also reads as "not here"),
    /// an error for any other non-success status.
    async fn get_if_present(&self, url: &Url) -> Result<Option<reqwest::Response>, UpstreamError> {
        let response = self.get(url.clone()).await?;
        let status = response.status();
        if matches!(status.as_u16(), 404 | 403 | 410) {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(UpstreamError::Status {
                url: url.to_string(),
                status: status.as_u16(),
            });
        }
        Ok(Some(response))
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
        let Some(response) = self.get_if_present(&url).await? else {
            return Ok(None);
        };
        let invalid = |reason: String| UpstreamError::InvalidNarInfo {
            url: url.to_string(),
            reason,
        };
        let text = read_text(response, &url, MAX_NARINFO_BYTES)
            .await?
            .map_err(|r| invalid(r.to_string()))?;
        let narinfo = NarInfo::parse(&text).map_err(|e| invalid(e.to_string()))?;
        if narinfo.store_path.hash() != hash {
            return Err(invalid(format!(
                "asked for {hash} but got {}",
                narinfo.store_path
            )));
        }
        Ok(Some(narinfo))
    }

    /// Fetches a small text document (a build log, a realisation) at `relative`, which obeys
    /// the same rules as a NAR URL; `Ok(None)` when the upstream does not have it.
    pub async fn document(
        &self,
        relative: &str,
        max_bytes: usize,
    ) -> Result<Option<String>, UpstreamError> {
        // A document's name may hold `?`, `#` or `%` (store path names allow `?`): encoded, so
        // the name can never turn into a query or fragment of the upstream request.
        let encoded = relative
            .replace('%', "%25")
            .replace('?', "%3F")
            .replace('#', "%23");
        let url = self.join_nar_url(&encoded)?;
        let Some(response) = self.get_if_present(&url).await? else {
            return Ok(None);
        };
        let text = read_text(response, &url, max_bytes)
            .await?
            .map_err(|reason| UpstreamError::InvalidNarInfo {
                url: url.to_string(),
                reason: reason.to_string(),
            })?;
        Ok(Some(text))
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
        let url_text = url.to_string();
        let body = response
            .bytes_stream()
            .map(move |r| r.map_err(|e| body_error(&url, e)))
            .boxed();
        // A per-read timeout is not enough: over each window of two stall timeouts the body
        // must bring a minimum of bytes.
        let body = crate::pace::paced(
            body,
            url_text,
            self.stall_timeout * 2,
            crate::pace::MIN_BYTES_PER_WINDOW,
        );
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

/// Reads a small text body: the inner `Err` says why it is not acceptable text.
async fn read_text(
    mut response: reqwest::Response,
    url: &Url,
    limit: usize,
) -> Result<Result<String, &'static str>, UpstreamError> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| body_error(url, e))? {
        if body.len() + chunk.len() > limit {
            return Ok(Err("too large"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8(body).map_err(|_| "not UTF-8"))
}

/// Decodes `%XX` escapes of URL user info.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The `priority` of an upstream URL's query (`https://host/?priority=10`): a positive number,
/// or 0 for "as the upstream announces" (the Go ncps's reading). Any other query is refused.
fn configured_priority(url: &Url) -> Result<Option<u32>, String> {
    let mut priority = None;
    for (key, value) in url.query_pairs() {
        if key != "priority" {
            return Err(format!(
                "unknown query parameter {key:?} (only `priority` is understood)"
            ));
        }
        let n: u32 = value
            .parse()
            .map_err(|_| format!("priority must be a number, not {value:?}"))?;
        priority = (n > 0).then_some(n);
    }
    Ok(priority)
}

/// A configured URL as it may be shown: any user info replaced, so that an error about a
/// malformed URL never prints its password.
pub(crate) fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}://<redacted>@{}", &rest[at + 1..]),
                None => url.to_string(),
            }
        }
        None => url.to_string(),
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

    /// `?priority=N` as the Go ncps takes it: kept as the configured priority and removed
    /// from the URL (nothing else may follow `?`).
    #[test]
    fn a_priority_in_the_url_is_taken_and_removed() {
        let o = UpstreamOptions::default();
        let up = Upstream::new("https://cache.example.com/?priority=10", &o).unwrap();
        assert_eq!(up.url(), "https://cache.example.com/");
        assert_eq!(up.configured_priority(), Some(10));
        let zero = Upstream::new("https://cache.example.com?priority=0", &o).unwrap();
        assert_eq!(zero.configured_priority(), None, "0: as announced");
        let plain = Upstream::new("https://cache.example.com", &o).unwrap();
        assert_eq!(plain.configured_priority(), None);
        for bad in [
            "https://cache.example.com/?priority=high",
            "https://cache.example.com/?priority=-1",
            "https://cache.example.com/?token=x",
            "https://cache.example.com/#frag",
        ] {
            assert!(Upstream::new(bad, &o).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_in_the_url_are_moved_out_of_it() {
        let up = Upstream::new(
            "https://alice:s%40cret@cache.example.com/sub",
            &UpstreamOptions::default(),
        )
        .unwrap();
        assert_eq!(up.url(), "https://cache.example.com/sub/");
        assert_eq!(up.auth_scheme(), Some("basic"));
        let shown = format!("{up:?}");
        let header = Credentials::Basic {
            login: "alice".into(),
            password: "s@cret".into(),
        }
        .header_value();
        assert!(!shown.contains("s@cret"), "{shown}");
        assert!(
            !shown.contains(header.trim_start_matches("Basic ")),
            "{shown}"
        );
        let err = Upstream::new("https://alice:pw@", &UpstreamOptions::default()).unwrap_err();
        assert!(!err.to_string().contains("pw"), "{err}");
        assert_eq!(redact("http://u:p@h:1/x@y"), "http://<redacted>@h:1/x@y");
        assert_eq!(redact("http://h/x@y"), "http://h/x@y");
    }

    #[test]
    fn netrc_credentials_by_host() {
        let netrc = Netrc::parse("machine private.example login bearer password tok").unwrap();
        let options = UpstreamOptions {
            netrc: Some(Arc::new(netrc)),
            ..UpstreamOptions::default()
        };
        let private = Upstream::new("https://private.example", &options).unwrap();
        assert_eq!(private.auth_scheme(), Some("bearer"));
        let public = Upstream::new("https://cache.nixos.org", &options).unwrap();
        assert_eq!(public.auth_scheme(), None);
    }

    #[test]
    fn rejects_bad_base_urls() {
        let o = UpstreamOptions::default();
        assert!(Upstream::new("ftp://x", &o).is_err());
        assert!(Upstream::new("not a url", &o).is_err());
        assert!(Upstream::new("http://x/?a=b", &o).is_err());
    }
}
