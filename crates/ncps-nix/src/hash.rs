//! SHA-256 digests as Nix writes and reads them.
//!
//! Narinfo files carry `NarHash` and `FileHash` as `sha256:<nixbase32>`, but clients and other
//! caches also accept base16, base64 and SRI (`sha256-<base64>`) spellings. We read all of them
//! and always write the nixbase32 form, which is what Nix itself writes.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha2::Digest as _;

use crate::nixbase32::{self, Nixbase32Error};

/// Length of a SHA-256 digest in bytes.
const LEN: usize = 32;
/// Length of a SHA-256 digest in nixbase32 characters.
const NIX32_LEN: usize = 52;
/// Length of a SHA-256 digest in base16 characters.
const HEX_LEN: usize = 64;
/// Length of a SHA-256 digest in padded base64 characters.
const BASE64_LEN: usize = 44;

/// Why a string is not a SHA-256 hash we understand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    /// The string does not start with `sha256:` or `sha256-`.
    #[error("hash must start with \"sha256:\" or \"sha256-\"")]
    MissingPrefix,
    /// The digest part has a length that matches no known encoding.
    #[error("hash digest has length {len}, expected 52 (nixbase32), 64 (hex) or 44 (base64)")]
    WrongLength {
        /// Length of the digest part in bytes.
        len: usize,
    },
    /// The digest looked like nixbase32 but is not valid.
    #[error("invalid nixbase32 hash: {0}")]
    Nix32(#[from] Nixbase32Error),
    /// The digest looked like hex but is not valid.
    #[error("invalid hex hash")]
    Hex,
    /// The digest looked like base64 but is not valid or not 32 bytes.
    #[error("invalid base64 hash")]
    Base64,
}

/// A SHA-256 digest; the type of `NarHash` and `FileHash`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Hash([u8; LEN]);

impl Sha256Hash {
    /// Wraps raw digest bytes, e.g. from a streaming hasher.
    pub fn from_bytes(b: [u8; LEN]) -> Self {
        Self(b)
    }

    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8; LEN] {
        &self.0
    }

    /// Hashes a byte slice in one go; convenient for small data and tests.
    pub fn digest(data: &[u8]) -> Self {
        Self(sha2::Sha256::digest(data).into())
    }

    /// The bare 52-character nixbase32 form, as used in NAR file names.
    pub fn to_nix32(&self) -> String {
        nixbase32::encode(&self.0)
    }

    /// Parses the bare 52-character nixbase32 form (no `sha256:` prefix).
    pub fn parse_nix32(s: &str) -> Result<Self, HashError> {
        if s.len() != NIX32_LEN {
            return Err(HashError::WrongLength { len: s.len() });
        }
        let bytes = nixbase32::decode(s)?;
        Ok(Self(
            to_array(&bytes).ok_or(HashError::WrongLength { len: s.len() })?,
        ))
    }

    /// Parses `sha256:<nixbase32 | hex | base64>` or SRI `sha256-<base64>`.
    pub fn parse(s: &str) -> Result<Self, HashError> {
        if let Some(digest) = s.strip_prefix("sha256-") {
            return parse_base64(digest);
        }
        let digest = s.strip_prefix("sha256:").ok_or(HashError::MissingPrefix)?;
        match digest.len() {
            NIX32_LEN => Self::parse_nix32(digest),
            HEX_LEN => Self::parse_hex(digest),
            BASE64_LEN => parse_base64(digest),
            len => Err(HashError::WrongLength { len }),
        }
    }
}

/// Copies a 32-byte slice into an array.
fn to_array(bytes: &[u8]) -> Option<[u8; LEN]> {
    bytes.try_into().ok()
}

impl Sha256Hash {
    /// Parses 64 hex digits (either case): the spelling of `sha256:<hex>` hashes and of the
    /// NAR file names some caches (and the Go ncps) use.
    pub fn parse_hex(s: &str) -> Result<Sha256Hash, HashError> {
        let digits = s.as_bytes();
        if digits.len() != HEX_LEN {
            return Err(HashError::WrongLength { len: digits.len() });
        }
        let mut out = [0u8; LEN];
        for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
            let hi = hex_value(pair[0]).ok_or(HashError::Hex)?;
            let lo = hex_value(pair[1]).ok_or(HashError::Hex)?;
            *byte = (hi << 4) | lo;
        }
        Ok(Sha256Hash(out))
    }
}

/// Value of one hex digit.
fn hex_value(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Parses padded standard base64 of exactly 32 bytes.
fn parse_base64(s: &str) -> Result<Sha256Hash, HashError> {
    let bytes = BASE64.decode(s).map_err(|_| HashError::Base64)?;
    to_array(&bytes).map(Sha256Hash).ok_or(HashError::Base64)
}

impl fmt::Display for Sha256Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_nix32())
    }
}

impl fmt::Debug for Sha256Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Sha256Hash {
    type Err = HashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_NIX32: &str = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
    const EMPTY_HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const EMPTY_B64: &str = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";

    #[test]
    fn empty_string_digest() {
        let h = Sha256Hash::digest(b"");
        assert_eq!(h.to_nix32(), EMPTY_NIX32);
        assert_eq!(h.to_string(), format!("sha256:{EMPTY_NIX32}"));
        assert_eq!(format!("{h:?}"), format!("sha256:{EMPTY_NIX32}"));
    }

    #[test]
    fn parses_every_spelling() {
        let h = Sha256Hash::digest(b"");
        for s in [
            format!("sha256:{EMPTY_NIX32}"),
            format!("sha256:{EMPTY_HEX}"),
            format!("sha256:{}", EMPTY_HEX.to_uppercase()),
            format!("sha256:{EMPTY_B64}"),
            format!("sha256-{EMPTY_B64}"),
        ] {
            assert_eq!(Sha256Hash::parse(&s).unwrap(), h, "{s}");
            assert_eq!(s.parse::<Sha256Hash>().unwrap(), h, "{s}");
        }
        assert_eq!(Sha256Hash::parse_nix32(EMPTY_NIX32).unwrap(), h);
    }

    #[test]
    fn rejects_bad_hashes() {
        assert_eq!(
            Sha256Hash::parse(EMPTY_NIX32),
            Err(HashError::MissingPrefix)
        );
        assert_eq!(Sha256Hash::parse("md5:abc"), Err(HashError::MissingPrefix));
        assert_eq!(
            Sha256Hash::parse("sha256:abc"),
            Err(HashError::WrongLength { len: 3 })
        );
        let bad_hex = format!("sha256:{}", "g".repeat(64));
        assert_eq!(Sha256Hash::parse(&bad_hex), Err(HashError::Hex));
        let bad_b64 = format!("sha256-{}", "!".repeat(44));
        assert_eq!(Sha256Hash::parse(&bad_b64), Err(HashError::Base64));
        // Base64 of 33 bytes is 44 characters too but must not be accepted.
        assert_eq!(
            Sha256Hash::parse("sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            Err(HashError::Base64)
        );
        assert!(matches!(
            Sha256Hash::parse_nix32(&format!("sha256:{EMPTY_NIX32}")),
            Err(HashError::WrongLength { .. })
        ));
        assert!(matches!(
            Sha256Hash::parse_nix32(&"e".repeat(52)),
            Err(HashError::Nix32(_))
        ));
        // Multi-byte characters must not panic the hex parser.
        let multibyte = format!("sha256:{}", "é".repeat(32));
        assert_eq!(Sha256Hash::parse(&multibyte), Err(HashError::Hex));
    }

    #[test]
    fn as_bytes_is_the_digest() {
        use sha2::{Digest, Sha256};
        let h = Sha256Hash::digest(b"bytes");
        assert_eq!(h.as_bytes()[..], Sha256::digest(b"bytes")[..]);
        assert_eq!(Sha256Hash::from_bytes(*h.as_bytes()), h);
    }
}
