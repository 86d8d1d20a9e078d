//! Content types and caching headers of the protocol.

/// Content type of `/nix-cache-info`.
pub const CACHE_INFO: &str = "text/x-nix-cache-info";
/// Content type of narinfos.
pub const NARINFO: &str = "text/x-nix-narinfo";
/// Content type of NAR files, whatever their compression.
pub const NAR: &str = "application/x-nix-nar";

/// NAR URLs are content-addressed, so their bytes never change.
pub const CACHE_IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// A narinfo may gain signatures or be evicted; let intermediaries keep it for an hour.
pub const CACHE_NARINFO: &str = "public, max-age=3600";
/// Small documents that may change when the configuration does.
pub const CACHE_SHORT: &str = "public, max-age=300";
