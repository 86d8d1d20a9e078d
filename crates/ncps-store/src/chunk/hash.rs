use std::fmt;
use std::str::FromStr;

use crate::chunk::ChunkError;

/// Directory under which every chunk is stored, so chunks can be listed and swept without the
/// database.
pub(crate) const CHUNK_DIR: &str = "chunks";

/// Suffix of a chunk's object name: its content is one zstd frame.
const CHUNK_SUFFIX: &str = ".zst";

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

    /// The object key the chunk is stored under: `chunks/<2 hex>/<64 hex>.zst`. The two-digit
    /// fan-out keeps directories small on a local file system.
    pub fn storage_key(&self) -> String {
        let hex = self.to_string();
        format!("{CHUNK_DIR}/{}/{hex}{CHUNK_SUFFIX}", &hex[..2])
    }

    /// Parses a key made by [`storage_key`](Self::storage_key); `None` for anything else, so a
    /// sweep skips foreign or misplaced files instead of deleting them.
    pub fn from_storage_key(key: &str) -> Option<Self> {
        let rest = key.strip_prefix(CHUNK_DIR)?.strip_prefix('/')?;
        let (dir, file) = rest.split_once('/')?;
        let hash: Self = file.strip_suffix(CHUNK_SUFFIX)?.parse().ok()?;
        (dir.len() == 2 && file.starts_with(dir)).then_some(hash)
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
    type Err = ChunkError;

    /// Accepts exactly 64 lowercase hex digits, so each hash has one spelling (and one key).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || ChunkError::InvalidHash(s.chars().take(80).collect());
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
    fn storage_key_round_trip_and_foreign_keys() {
        let h = ChunkHash::digest(b"chunk");
        let hex = h.to_string();
        let key = h.storage_key();
        assert_eq!(key, format!("chunks/{}/{hex}.zst", &hex[..2]));
        assert_eq!(ChunkHash::from_storage_key(&key), Some(h));
        for foreign in [
            format!("chunks/{hex}.zst"),
            format!("chunks/00/{hex}.zst")
                .replace("/00/", if &hex[..2] == "00" { "/01/" } else { "/00/" }),
            format!("chunks/{}/{hex}", &hex[..2]),
            format!("chunks/{}/{hex}.zst.tmp", &hex[..2]),
            format!("nar/{}/{hex}.zst", &hex[..2]),
            "chunks/ab/README".to_string(),
        ] {
            assert_eq!(ChunkHash::from_storage_key(&foreign), None, "{foreign}");
        }
    }
}
