/// Why an upstream could not give a usable answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No configured public key applies to this upstream, so none of its narinfos could be
    /// verified.
    #[error(
        "no --cache-upstream-public-key applies to upstream {url}: a key named after an \
         upstream's host (`host-1:…`) applies to that upstream only; add this upstream's key, \
         or pass --cache-upstream-allow-unverified to take its narinfos unchecked"
    )]
    NoKey {
        /// The upstream's URL.
        url: String,
    },
    /// The configured URL is not a usable base URL.
    #[error("invalid upstream URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as configured.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Building the HTTP client failed (TLS set-up).
    #[error("cannot build HTTP client: {0}")]
    Client(reqwest::Error),
    /// No answer in time (connect, headers, or a stalled body).
    #[error("upstream {url} timed out")]
    Timeout {
        /// The URL that was requested.
        url: String,
    },
    /// The connection failed or broke; the message names the cause (name resolution, a refused
    /// connection, TLS) from the error's chain.
    #[error("upstream {url} unreachable: {}", cause_chain(source))]
    Transport {
        /// The URL that was requested.
        url: String,
        /// The client's error.
        source: reqwest::Error,
    },
    /// The upstream answered with an unexpected status.
    #[error("upstream {url} answered HTTP {status}")]
    Status {
        /// The URL that was requested.
        url: String,
        /// The status received.
        status: u16,
    },
    /// The upstream's narinfo is malformed, too large, or for another path.
    #[error("upstream {url} sent an invalid narinfo: {reason}")]
    InvalidNarInfo {
        /// The URL that was requested.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The narinfo carries no signature from a trusted key.
    #[error(
        "upstream {url} sent a narinfo with no valid signature from a key trusted for it \
         (trusted: {trusted}; signed by: {signed_by})"
    )]
    Untrusted {
        /// The URL that was requested.
        url: String,
        /// The names of the keys trusted for this upstream.
        trusted: String,
        /// The names of the keys that signed it (`none` when unsigned).
        signed_by: String,
    },
    /// A narinfo points its NAR somewhere we refuse to follow (another host, `..`).
    #[error("upstream {url} points to a NAR URL we refuse to follow: {nar_url:?}")]
    UnsafeNarUrl {
        /// The narinfo's URL.
        url: String,
        /// The NAR URL it contained.
        nar_url: String,
    },
    /// A NAR download was requested from an upstream that is no longer configured.
    #[error("upstream {0} is not configured any more")]
    NotConfigured(String),
    /// A lookup task ended before answering (the runtime is shutting down).
    #[error("lookup at upstream {url} was interrupted")]
    Interrupted {
        /// The upstream's base URL.
        url: String,
    },
    /// The upstream's `nix-cache-info` is malformed, or names a store other than `/nix/store`
    /// (its paths would not be ours).
    #[error("upstream {url} has an unusable nix-cache-info: {reason}")]
    BadCacheInfo {
        /// The URL that was requested.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl UpstreamError {
    /// True when the failure was a timeout, which the HTTP layer reports as 504 rather than 502.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }

    /// True when the upstream itself looks down or overloaded (no answer in time, no
    /// connection, a 5xx): such an upstream is marked unhealthy. A 4xx, a bad narinfo or a
    /// missing signature is an answer, and says nothing about its health.
    pub fn is_outage(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::Transport { .. } | Self::BadCacheInfo { .. } => true,
            Self::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// True when repeating the same idempotent GET may succeed: outages, and 429 (too many
    /// requests). Never a 404, which is an answer.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::Transport { .. } => true,
            Self::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// An error and its sources, outermost first, joined: `error sending request: client error
/// (Connect): dns error: failed to lookup address information: …`.
fn cause_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}
