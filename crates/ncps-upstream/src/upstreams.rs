use ncps_nix::{NarInfo, PublicKey, StorePathHash};
use tracing::{debug, warn};

use crate::{NarResponse, Upstream, UpstreamError, UpstreamOptions};

/// The configured upstream caches, in the order they are asked, and the keys we trust.
#[derive(Clone, Debug)]
pub struct Upstreams {
    list: Vec<Upstream>,
    trusted_keys: Vec<PublicKey>,
}

/// A narinfo an upstream had, signed by a trusted key.
#[derive(Clone, Debug)]
pub struct FoundNarInfo {
    /// Base URL of the upstream that had it; its NAR is fetched from there.
    pub upstream_url: String,
    /// The narinfo as the upstream sent it.
    pub narinfo: NarInfo,
}

impl Upstreams {
    /// Builds a client per URL. Every narinfo must carry a signature by one of `trusted_keys`.
    pub fn new(
        urls: &[String],
        trusted_keys: Vec<PublicKey>,
        options: &UpstreamOptions,
    ) -> Result<Self, UpstreamError> {
        let list = urls
            .iter()
            .map(|u| Upstream::new(u, options))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { list, trusted_keys })
    }

    /// The upstreams in the order they are asked.
    pub fn list(&self) -> &[Upstream] {
        &self.list
    }

    /// Asks each upstream in turn. `Ok(None)` only when every upstream definitively said it does
    /// not have the path; when some could not answer and none had it, the most telling error is
    /// returned (a timeout wins, so the client sees 504).
    pub async fn find_narinfo(
        &self,
        hash: &StorePathHash,
    ) -> Result<Option<FoundNarInfo>, UpstreamError> {
        let mut failure: Option<UpstreamError> = None;
        for upstream in &self.list {
            match upstream.narinfo(hash).await {
                Ok(Some(narinfo)) => {
                    if !narinfo.verify(&self.trusted_keys) {
                        let err = UpstreamError::Untrusted {
                            url: format!("{}{hash}.narinfo", upstream.url()),
                        };
                        warn!(upstream = upstream.url(), %hash, error = %err, "refusing narinfo");
                        failure = Some(err);
                        continue;
                    }
                    upstream.join_nar_url(&narinfo.url)?;
                    return Ok(Some(FoundNarInfo {
                        upstream_url: upstream.url().to_string(),
                        narinfo,
                    }));
                }
                Ok(None) => debug!(upstream = upstream.url(), %hash, "upstream miss"),
                Err(err) => {
                    warn!(upstream = upstream.url(), %hash, error = %err, "upstream failed");
                    let keep_previous = failure.as_ref().is_some_and(|f| f.is_timeout());
                    if !keep_previous {
                        failure = Some(err);
                    }
                }
            }
        }
        match failure {
            Some(err) => Err(err),
            None => Ok(None),
        }
    }

    /// Opens the download of a NAR from the upstream its narinfo came from.
    pub async fn fetch_nar(
        &self,
        upstream_url: &str,
        nar_url: &str,
    ) -> Result<NarResponse, UpstreamError> {
        let upstream = self
            .list
            .iter()
            .find(|u| u.url() == upstream_url)
            .ok_or_else(|| UpstreamError::NotConfigured(upstream_url.to_string()))?;
        upstream.nar(nar_url).await
    }
}
