use ncps_nix::{NarInfo, NarKey, Sha256Hash};

/// Where a NAR that is known but not yet downloaded can be fetched from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NarOrigin {
    /// Base URL of the upstream cache the narinfo came from.
    pub upstream_url: String,
    /// The NAR URL relative to that base, exactly as the upstream's narinfo said.
    pub nar_url: String,
}

/// A narinfo as the cache serves it (URL and Compression already ours), plus its origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedNarInfo {
    /// The narinfo with our NAR URL; signatures are the upstream's (ours is added when serving).
    pub narinfo: NarInfo,
    /// The NAR file this narinfo points to.
    pub nar_key: NarKey,
    /// Where to download the NAR when it is not stored; `None` for uploaded paths.
    pub origin: Option<NarOrigin>,
}

/// A NAR file that is in storage and was verified when it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NarFile {
    /// Storage key and URL file name.
    pub key: NarKey,
    /// Size of the stored (compressed) file.
    pub file_size: u64,
    /// SHA-256 of the uncompressed NAR.
    pub nar_hash: Sha256Hash,
    /// Size of the uncompressed NAR.
    pub nar_size: u64,
}
