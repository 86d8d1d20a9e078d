use ncps_nix::{ChunkHash, Compression, NarInfo, NarKey, Sha256Hash};

/// Where a NAR that is known but not stored can be fetched from, and what its file must be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NarOrigin {
    /// Base URL of the upstream cache the narinfo came from.
    pub upstream_url: String,
    /// The NAR URL relative to that base, exactly as the upstream's narinfo said.
    pub nar_url: String,
    /// The upstream file's compression.
    pub compression: Compression,
    /// The upstream file's hash, when its narinfo gave one.
    pub file_hash: Option<Sha256Hash>,
    /// The upstream file's size, when its narinfo gave one.
    pub file_size: Option<u64>,
}

/// A narinfo as the cache serves it (URL and Compression already ours), plus its origin.
///
/// FileHash/FileSize are left empty here: they describe whatever form the NAR is stored in
/// when the narinfo is rendered, so the cache fills them in from the [`NarRecord`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedNarInfo {
    /// The narinfo with our NAR URL; signatures are the upstream's (ours is added when serving).
    pub narinfo: NarInfo,
    /// The NAR URL we hand out for it.
    pub url_key: NarKey,
    /// Where to download the NAR when it is not stored; `None` for uploaded paths.
    pub origin: Option<NarOrigin>,
}

/// Our signature of a narinfo, made when it was stored, and the public key that made it: the
/// signature is served only while that key is still the one signing (see ncps-core's signer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnSignature {
    /// The `Sig:` value, `name:base64`.
    pub sig: String,
    /// The public key that verifies it, in Nix's `name:base64` form.
    pub key: String,
}

/// The whole-file form of a stored NAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WholeFile {
    /// Storage key: the file's hash and compression.
    pub key: NarKey,
    /// Size of the stored file.
    pub size: u64,
}

/// The chunked form of a stored NAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkedForm {
    /// How many chunks the NAR has.
    pub chunk_count: u64,
    /// SHA-256 of the chunks' frames concatenated (the `Compression: zstd` file), when known.
    pub spliced_hash: Option<Sha256Hash>,
    /// Size of the chunks' frames concatenated.
    pub spliced_size: u64,
}

/// A NAR that is stored in at least one form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NarRecord {
    /// SHA-256 of the plain NAR: its identity.
    pub nar_hash: Sha256Hash,
    /// Size of the plain NAR.
    pub nar_size: u64,
    /// The whole file, if stored.
    pub whole: Option<WholeFile>,
    /// When the whole file may be deleted (lazy chunking keeps it a while), seconds since epoch.
    pub whole_delete_after: Option<i64>,
    /// The chunk list, if complete.
    pub chunked: Option<ChunkedForm>,
}

/// One chunk of a NAR's ordered list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    /// The chunk's address.
    pub hash: ChunkHash,
    /// Size of its plain bytes.
    pub plain_size: u64,
    /// Size of its stored zstd frame.
    pub stored_size: u64,
}
