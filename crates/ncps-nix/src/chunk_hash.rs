//! Content addresses of NAR chunks.

use std::fmt;
use std::str::FromStr;

/// A chunk address that is not 64 lowercase hex digits.
#[derive(Debug, thiserror::Error)]
#[error("invalid chunk hash {0:?}: expected 64 lowercase hex digits")]
pub struct ChunkHashError(pub String);

/// The content address of a chunk: BLAKE3 of its plain (uncompressed) bytes.
///
/// BLAKE3 rather than SHA-256 because it is fast on every CPU thanks to SIMD (SHA-256 is only
/// fast where the CPU has SHA extensions) and it still gives a 256-bit, collision-resistant
/// address. Shown and parsed as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkHash([u8; 32]);

impl ChunkHash {
    /// Hashes plain chunk bytes.
    pub fn digest(plain: &[u8]) -> Self {
        Self(*blake3::hash(plain).as_bytes())
    }

    /// Wraps a raw digest, e.g. one read back from the database.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw digest, e.g. to store in the database as a blob.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkHash({self})")
    }
}

impl FromStr for ChunkHash {
    type Err = ChunkHashError;

    /// Accepts exactly 64 lowercase hex digits, so each hash has one spelling (and one key).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || ChunkHashError(s.chars().take(80).collect());
        let digit = |c: u8| match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            _ => Err(invalid()),
        };
        let s_bytes = s.as_bytes();
        if s_bytes.len() != 64 {
            return Err(invalid());
        }
        let mut out = [0u8; 32];
        for (i, pair) in s_bytes.chunks_exact(2).enumerate() {
            out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
        }
        Ok(Self(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector_and_hex_round_trip() {
        // BLAKE3 of the empty input, from the reference test vectors.
        let h = ChunkHash::digest(b"");
        let hex = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";
        assert_eq!(h.to_string(), hex);
        assert_eq!(hex.parse::<ChunkHash>().unwrap(), h);
        assert_eq!(ChunkHash::from_bytes(*h.as_bytes()), h);
    }

    #[test]
    fn parse_rejects_anything_but_64_lowercase_hex() {
        let good = ChunkHash::digest(b"x").to_string();
        for bad in [
            String::new(),
            good[..63].to_string(),
            format!("{good}0"),
            good.to_uppercase(),
            format!("g{}", &good[1..]),
            format!(" {}", &good[1..]),
            format!("é{}", &good[2..]),
        ] {
            assert!(bad.parse::<ChunkHash>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn debug_names_the_hash() {
        let h = ChunkHash::digest(b"chunk");
        assert_eq!(format!("{h:?}"), format!("ChunkHash({h})"));
    }
}
