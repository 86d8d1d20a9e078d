//! Store paths (`/nix/store/<hash>-<name>`) and their hash parts.
//!
//! The 32-character hash part is what a cache is keyed by (`<hash>.narinfo`), so it gets its own
//! type; validating names here keeps path traversal and odd characters out of every URL and file
//! name built from a store path.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use crate::nixbase32;

/// The only store directory we serve; Nix's default and what cache.nixos.org uses.
pub const STORE_DIR: &str = "/nix/store";

/// Bytes in a store-path hash.
const HASH_BYTES: usize = 20;
/// Characters of a store-path hash in nixbase32.
const HASH_CHARS: usize = 32;
/// Longest name Nix allows after the `<hash>-` prefix.
const MAX_NAME_LEN: usize = 211;

/// Why a string is not a valid store path or hash part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorePathError {
    /// The hash part is not exactly 32 characters.
    #[error("store path hash must be {HASH_CHARS} characters, got {len}")]
    HashLength {
        /// Length of the given hash part in bytes.
        len: usize,
    },
    /// The hash part is not valid nixbase32.
    #[error("invalid store path hash: {0}")]
    Hash(#[from] nixbase32::Nixbase32Error),
    /// There is no `-` after the 32-character hash.
    #[error("store path base name must be <hash>-<name>")]
    MissingDash,
    /// The name part is empty.
    #[error("store path name is empty")]
    EmptyName,
    /// The name part is longer than 211 characters.
    #[error("store path name is {len} characters, at most {MAX_NAME_LEN} allowed")]
    NameTooLong {
        /// Length of the name in bytes.
        len: usize,
    },
    /// The name starts with `.`, which Nix forbids (it would allow `..`).
    #[error("store path name must not start with '.'")]
    NameStartsWithDot,
    /// The name contains a character outside `[A-Za-z0-9+-._?=]`.
    #[error("invalid character {ch:?} in store path name")]
    NameChar {
        /// The offending character.
        ch: char,
    },
    /// An absolute path that is not directly inside `/nix/store`.
    #[error("store path must start with {STORE_DIR}/")]
    NotInStore,
}

/// The 20-byte hash part of a store path, printed as 32 nixbase32 characters.
///
/// Ordering follows the printed form (and so Nix's own sorting), not the raw bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct StorePathHash([u8; HASH_BYTES]);

impl StorePathHash {
    /// Parses exactly 32 nixbase32 characters, e.g. the stem of a `.narinfo` request.
    pub fn parse(s: &str) -> Result<Self, StorePathError> {
        if s.len() != HASH_CHARS {
            return Err(StorePathError::HashLength { len: s.len() });
        }
        let bytes = nixbase32::decode(s)?;
        let array = bytes
            .try_into()
            .map_err(|_| StorePathError::HashLength { len: s.len() })?;
        Ok(Self(array))
    }

    /// Wraps raw hash bytes.
    pub fn from_bytes(b: [u8; HASH_BYTES]) -> Self {
        Self(b)
    }

    /// The raw 20 bytes.
    pub fn as_bytes(&self) -> &[u8; HASH_BYTES] {
        &self.0
    }
}

impl Ord for StorePathHash {
    fn cmp(&self, other: &Self) -> Ordering {
        // nixbase32 prints the most significant digit of the little-endian number first, and
        // its alphabet is in ASCII order, so comparing bytes from the end matches string order.
        self.0.iter().rev().cmp(other.0.iter().rev())
    }
}

impl PartialOrd for StorePathHash {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for StorePathHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&nixbase32::encode(&self.0))
    }
}

impl fmt::Debug for StorePathHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for StorePathHash {
    type Err = StorePathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A validated store path in `/nix/store`.
///
/// Field order matters: the derived ordering (hash, then name) equals the ordering of the
/// printed paths.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePath {
    hash: StorePathHash,
    name: String,
}

impl StorePath {
    /// Parses a base name `<32-char hash>-<name>`, as found in `References:`.
    pub fn parse_base_name(s: &str) -> Result<Self, StorePathError> {
        let hash_part = s
            .get(..HASH_CHARS)
            .ok_or(StorePathError::HashLength { len: s.len() })?;
        let hash = StorePathHash::parse(hash_part)?;
        let name = s[HASH_CHARS..]
            .strip_prefix('-')
            .ok_or(StorePathError::MissingDash)?;
        validate_name(name)?;
        Ok(Self {
            hash,
            name: name.to_owned(),
        })
    }

    /// Parses an absolute path `/nix/store/<base name>` (one level, no trailing slash).
    pub fn parse(s: &str) -> Result<Self, StorePathError> {
        let base = s
            .strip_prefix(STORE_DIR)
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or(StorePathError::NotInStore)?;
        Self::parse_base_name(base)
    }

    /// The hash part, which keys the narinfo.
    pub fn hash(&self) -> &StorePathHash {
        &self.hash
    }

    /// The name part after `<hash>-`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `<hash>-<name>`, the form used in `References:` and `Deriver:`.
    pub fn base_name(&self) -> String {
        format!("{}-{}", self.hash, self.name)
    }

    /// `/nix/store/<hash>-<name>`, the form used in `StorePath:` and fingerprints.
    pub fn to_absolute(&self) -> String {
        format!("{STORE_DIR}/{}-{}", self.hash, self.name)
    }
}

/// Checks the name part against Nix's rules.
fn validate_name(name: &str) -> Result<(), StorePathError> {
    if name.is_empty() {
        return Err(StorePathError::EmptyName);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(StorePathError::NameTooLong { len: name.len() });
    }
    if name.starts_with('.') {
        return Err(StorePathError::NameStartsWithDot);
    }
    if let Some(ch) = name.chars().find(|&c| !is_name_char(c)) {
        return Err(StorePathError::NameChar { ch });
    }
    Ok(())
}

/// Characters Nix allows in store path names.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.' | '_' | '?' | '=')
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{STORE_DIR}/{}-{}", self.hash, self.name)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({self})")
    }
}

impl FromStr for StorePath {
    type Err = StorePathError;

    /// Same as [`StorePath::parse`]: absolute paths only.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "pgqv1zvc0hl7s4a9a90ljmd5pfp791m1";

    #[test]
    fn parses_paths() {
        let p = StorePath::parse(&format!("/nix/store/{HASH}-ncps-vector-a")).unwrap();
        assert_eq!(p.hash().to_string(), HASH);
        assert_eq!(p.name(), "ncps-vector-a");
        assert_eq!(p.base_name(), format!("{HASH}-ncps-vector-a"));
        assert_eq!(p.to_absolute(), format!("/nix/store/{HASH}-ncps-vector-a"));
        assert_eq!(p.to_string(), p.to_absolute());
        assert_eq!(
            StorePath::parse_base_name(&p.base_name()).unwrap(),
            p.clone()
        );
        assert_eq!(p.to_absolute().parse::<StorePath>().unwrap(), p);
        let odd = StorePath::parse_base_name(&format!("{HASH}-a+b-c.d_e?f=g")).unwrap();
        assert_eq!(odd.name(), "a+b-c.d_e?f=g");
        let long = format!("{HASH}-{}", "x".repeat(211));
        assert!(StorePath::parse_base_name(&long).is_ok());
    }

    #[test]
    fn rejects_bad_paths() {
        use StorePathError as E;
        let cases: Vec<(String, E)> = vec![
            (format!("{HASH}-"), E::EmptyName),
            (HASH.to_string(), E::MissingDash),
            (format!("{HASH}_x"), E::MissingDash),
            (format!("{HASH}-.x"), E::NameStartsWithDot),
            (format!("{HASH}-.."), E::NameStartsWithDot),
            (format!("{HASH}-a/b"), E::NameChar { ch: '/' }),
            (format!("{HASH}-a b"), E::NameChar { ch: ' ' }),
            (format!("{HASH}-é"), E::NameChar { ch: 'é' }),
            (
                format!("{HASH}-{}", "x".repeat(212)),
                E::NameTooLong { len: 212 },
            ),
            ("short-x".to_string(), E::HashLength { len: 7 }),
        ];
        for (s, want) in cases {
            assert_eq!(StorePath::parse_base_name(&s), Err(want), "{s}");
        }
        assert!(matches!(
            StorePath::parse_base_name("eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x"),
            Err(E::Hash(_))
        ));
        // A multi-byte character straddling position 32 must not panic.
        let straddle = format!("{}é-x", "0".repeat(31));
        assert!(StorePath::parse_base_name(&straddle).is_err());
        for s in [
            format!("{HASH}-x"),
            format!("/nix/store{HASH}-x"),
            format!("/nix/store/{HASH}-x/"),
            format!("/nix/store/{HASH}-x/y"),
            format!("/nix/store//{HASH}-x"),
            format!("/other/store/{HASH}-x"),
        ] {
            assert!(StorePath::parse(&s).is_err(), "{s}");
        }
    }

    #[test]
    fn hash_parsing() {
        let h = StorePathHash::parse(HASH).unwrap();
        assert_eq!(h.to_string(), HASH);
        assert_eq!(format!("{h:?}"), HASH);
        assert_eq!(HASH.parse::<StorePathHash>().unwrap(), h);
        assert_eq!(StorePathHash::from_bytes(*h.as_bytes()), h);
        assert!(StorePathHash::parse(&HASH[1..]).is_err());
        assert!(StorePathHash::parse(&format!("{HASH}0")).is_err());
    }

    #[test]
    fn ordering_matches_printed_form() {
        let mut hashes: Vec<StorePathHash> = (0u8..=255)
            .map(|i| {
                let mut b = [0u8; 20];
                b[0] = i;
                b[19] = i.wrapping_mul(97);
                b[10] = i.wrapping_mul(31);
                StorePathHash::from_bytes(b)
            })
            .collect();
        hashes.sort();
        let printed: Vec<String> = hashes.iter().map(|h| h.to_string()).collect();
        let mut sorted = printed.clone();
        sorted.sort();
        assert_eq!(printed, sorted);
    }

    #[test]
    fn debug_names_the_path() {
        let p = StorePath::parse_base_name("7rjj86a15146cq1d0ybgnwyqdwgv9lfh-hello").unwrap();
        assert_eq!(format!("{p:?}"), format!("StorePath({p})"));
    }
}
