//! NAR file names and URLs as we serve them: `nar/<52-char nixbase32 sha256>.nar[.ext]`; the
//! 64-character lowercase hex spelling of the same digest is read too (the Go ncps routes it,
//! and some caches name their NARs so), and names the same NAR.
//!
//! Request paths are untrusted; parsing them into this type is how the server knows a path can
//! only name a NAR (no slashes, no `..`, nothing but a hash and a known extension).

use std::fmt;

use crate::compression::{Compression, CompressionError};
use crate::hash::{HashError, Sha256Hash};

/// Characters in the hash part of a NAR file name.
const HASH_CHARS: usize = 52;
/// Characters in the hex spelling of the hash part.
const HEX_CHARS: usize = 64;
/// Directory NARs live in, relative to the cache root.
const NAR_DIR: &str = "nar/";

/// Why a string is not a NAR file name or URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NarKeyError {
    /// Shorter than a 52-character hash, or the hash part is not ASCII.
    #[error("NAR file name must start with a 52-character nixbase32 hash")]
    TooShort,
    /// The hash part is not valid nixbase32.
    #[error("invalid NAR hash: {0}")]
    Hash(#[from] HashError),
    /// The part after the hash is not a known `.nar[.ext]`.
    #[error("invalid NAR extension: {0}")]
    Extension(#[from] CompressionError),
    /// A URL that does not start with `nar/`.
    #[error("NAR URL must start with \"nar/\"")]
    NotNarDir,
}

/// A NAR file as it appears in URLs we serve: its file hash plus its compression.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct NarKey {
    /// SHA-256 of the (compressed) file, i.e. the narinfo `FileHash`.
    pub hash: Sha256Hash,
    /// Compression, which decides the extension.
    pub compression: Compression,
}

impl NarKey {
    /// Pairs a file hash with its compression.
    pub fn new(hash: Sha256Hash, compression: Compression) -> Self {
        Self { hash, compression }
    }

    /// Parses `<52 nixbase32 chars>.nar[.ext]` or `<64 lowercase hex digits>.nar[.ext]`;
    /// anything else is an error.
    pub fn parse_file_name(s: &str) -> Result<Self, NarKeyError> {
        let (hash, extension) = match s.get(..HEX_CHARS) {
            Some(hex) if is_lower_hex(hex) && s[HEX_CHARS..].starts_with(".nar") => {
                (Sha256Hash::parse_hex(hex)?, &s[HEX_CHARS..])
            }
            _ => {
                let hash_part = s.get(..HASH_CHARS).ok_or(NarKeyError::TooShort)?;
                (Sha256Hash::parse_nix32(hash_part)?, &s[HASH_CHARS..])
            }
        };
        let compression = Compression::from_nar_extension(extension)?;
        Ok(Self { hash, compression })
    }

    /// Parses `nar/<file name>`, with or without a leading `/`.
    pub fn parse_url(s: &str) -> Result<Self, NarKeyError> {
        let s = s.strip_prefix('/').unwrap_or(s);
        let file = s.strip_prefix(NAR_DIR).ok_or(NarKeyError::NotNarDir)?;
        Self::parse_file_name(file)
    }

    /// `<52 chars>.nar[.ext]`.
    pub fn file_name(&self) -> String {
        format!(
            "{}{}",
            self.hash.to_nix32(),
            self.compression.nar_extension()
        )
    }

    /// `nar/<file name>`, the narinfo `URL:` value (relative to the cache root).
    pub fn url(&self) -> String {
        format!("{NAR_DIR}{}", self.file_name())
    }
}

/// True for lowercase hex digits only (the hex spelling in URLs is lowercase).
fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl fmt::Display for NarKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "0a0g6xfnginnj68h6qlllhxz5nygb05jwklan4cbcslxmv31yifw";

    #[test]
    fn parses_and_prints() {
        let k = NarKey::parse_file_name(&format!("{H}.nar.xz")).unwrap();
        assert_eq!(k.compression, Compression::Xz);
        assert_eq!(k.hash.to_nix32(), H);
        assert_eq!(k.file_name(), format!("{H}.nar.xz"));
        assert_eq!(k.url(), format!("nar/{H}.nar.xz"));
        assert_eq!(k.to_string(), k.url());
        assert_eq!(NarKey::parse_url(&k.url()).unwrap(), k);
        assert_eq!(NarKey::parse_url(&format!("/{}", k.url())).unwrap(), k);
        let plain = NarKey::new(k.hash, Compression::None);
        assert_eq!(plain.file_name(), format!("{H}.nar"));
        for c in Compression::ALL {
            let k = NarKey::new(k.hash, c);
            assert_eq!(NarKey::parse_file_name(&k.file_name()).unwrap(), k);
        }
    }

    #[test]
    fn the_hex_spelling_names_the_same_nar() {
        let k = NarKey::parse_file_name(&format!("{H}.nar.xz")).unwrap();
        let hex: String = k
            .hash
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            NarKey::parse_file_name(&format!("{hex}.nar.xz")).unwrap(),
            k
        );
        assert_eq!(NarKey::parse_url(&format!("nar/{hex}.nar.xz")).unwrap(), k);
        for bad in [
            format!("{}.nar", hex.to_uppercase()),
            format!("{}.nar", &hex[1..]),
            format!("{hex}0.nar"),
            format!("{}g.nar", &hex[1..]),
            hex.clone(),
        ] {
            assert!(NarKey::parse_file_name(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        for s in [
            String::new(),
            H.to_string(),
            format!("{H}.nar.xz/"),
            format!("{H}.nar.xz.xz"),
            format!("{H}.nar.zstd"),
            format!("{H}.NAR"),
            format!("{}.nar", &H[1..]),
            format!("{H}0.nar"),
            format!("../{H}.nar"),
            format!("{}e.nar", &H[1..]),
            format!("{}é.nar", &H[2..]),
            format!("nar/{H}.nar"),
        ] {
            assert!(NarKey::parse_file_name(&s).is_err(), "{s:?}");
        }
        for s in [
            format!("{H}.nar"),
            format!("nar/../{H}.nar"),
            format!("nar//{H}.nar"),
            format!("//nar/{H}.nar"),
            format!("nar/x/{H}.nar"),
        ] {
            assert!(NarKey::parse_url(&s).is_err(), "{s:?}");
        }
    }
}
