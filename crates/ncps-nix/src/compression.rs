//! Compression methods named in narinfo `Compression:` lines and NAR file extensions.
//!
//! One enum ties the narinfo name, the URL extension and the stream properties together, so
//! the name `nix` reads and the file we serve can never disagree.

use std::fmt;
use std::str::FromStr;

/// Why a compression name or extension is not one we know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompressionError {
    /// Not a narinfo `Compression:` value we support.
    #[error("unknown compression {0:?}")]
    UnknownName(String),
    /// Not a NAR file extension we support.
    #[error("unknown NAR extension {0:?}")]
    UnknownExtension(String),
}

/// How a NAR file is compressed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Compression {
    /// Plain `.nar`.
    None,
    /// `.nar.xz`, the default of `nix copy`.
    Xz,
    /// `.nar.zst`.
    Zstd,
    /// `.nar.bz2`, what a narinfo without `Compression:` means.
    Bzip2,
    /// `.nar.br`.
    Brotli,
    /// `.nar.lz4`.
    Lz4,
    /// `.nar.gz`.
    Gzip,
    /// `.nar.lzip` (Nix's extension for `lzip`).
    Lzip,
}

/// Every variant with its narinfo name and NAR extension; the single table both directions use.
const TABLE: [(Compression, &str, &str); 8] = [
    (Compression::None, "none", ".nar"),
    (Compression::Xz, "xz", ".nar.xz"),
    (Compression::Zstd, "zstd", ".nar.zst"),
    (Compression::Bzip2, "bzip2", ".nar.bz2"),
    (Compression::Brotli, "br", ".nar.br"),
    (Compression::Lz4, "lz4", ".nar.lz4"),
    (Compression::Gzip, "gzip", ".nar.gz"),
    (Compression::Lzip, "lzip", ".nar.lzip"),
];

impl Compression {
    /// All supported methods, for iteration in tests and config validation.
    pub const ALL: [Compression; 8] = [
        Compression::None,
        Compression::Xz,
        Compression::Zstd,
        Compression::Bzip2,
        Compression::Brotli,
        Compression::Lz4,
        Compression::Gzip,
        Compression::Lzip,
    ];

    /// Parses a narinfo `Compression:` value (`none`, `xz`, `zstd`, `bzip2`, `br`, `lz4`, `gzip`,
    /// `lzip`).
    pub fn parse(s: &str) -> Result<Self, CompressionError> {
        TABLE
            .iter()
            .find(|(_, name, _)| *name == s)
            .map(|(c, _, _)| *c)
            .ok_or_else(|| CompressionError::UnknownName(s.to_owned()))
    }

    /// The narinfo `Compression:` value.
    pub fn as_str(&self) -> &'static str {
        self.entry().1
    }

    /// The NAR file extension including `.nar`, e.g. `.nar.xz`.
    pub fn nar_extension(&self) -> &'static str {
        self.entry().2
    }

    /// Inverse of [`Compression::nar_extension`]; takes the whole `.nar.xz`.
    pub fn from_nar_extension(ext: &str) -> Result<Self, CompressionError> {
        TABLE
            .iter()
            .find(|(_, _, e)| *e == ext)
            .map(|(c, _, _)| *c)
            .ok_or_else(|| CompressionError::UnknownExtension(ext.to_owned()))
    }

    /// Whether concatenated compressed streams decode as one stream.
    ///
    /// This decides whether a NAR can be served as separately compressed chunks glued
    /// together: Nix 2.8 accepts concatenated zstd frames (verified) and xz/bzip2/gzip/lzip
    /// define multi-member decoding, but a brotli or lz4 decoder stops after the first stream.
    pub fn concatenates(&self) -> bool {
        match self {
            Compression::None
            | Compression::Xz
            | Compression::Zstd
            | Compression::Bzip2
            | Compression::Gzip
            | Compression::Lzip => true,
            Compression::Brotli | Compression::Lz4 => false,
        }
    }

    /// This variant's row in [`TABLE`].
    fn entry(&self) -> &'static (Compression, &'static str, &'static str) {
        // TABLE lists every variant, so the fallback row is never used.
        TABLE
            .iter()
            .find(|(c, _, _)| c == self)
            .unwrap_or(&TABLE[0])
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Compression {
    type Err = CompressionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_extensions_round_trip() {
        for c in Compression::ALL {
            assert_eq!(Compression::parse(c.as_str()).unwrap(), c);
            assert_eq!(c.to_string().parse::<Compression>().unwrap(), c);
            assert_eq!(
                Compression::from_nar_extension(c.nar_extension()).unwrap(),
                c
            );
            assert!(c.nar_extension().starts_with(".nar"));
        }
        assert_eq!(Compression::Brotli.as_str(), "br");
        assert_eq!(Compression::Zstd.nar_extension(), ".nar.zst");
        assert_eq!(Compression::None.nar_extension(), ".nar");
    }

    #[test]
    fn rejects_unknown() {
        assert!(Compression::parse("XZ").is_err());
        assert!(Compression::parse("brotli").is_err());
        assert!(Compression::parse("").is_err());
        assert!(Compression::from_nar_extension("xz").is_err());
        assert!(Compression::from_nar_extension(".nar.zstd").is_err());
    }

    #[test]
    fn concatenation() {
        assert!(Compression::Zstd.concatenates());
        assert!(Compression::Xz.concatenates());
        assert!(!Compression::Brotli.concatenates());
        assert!(!Compression::Lz4.concatenates());
    }
}
