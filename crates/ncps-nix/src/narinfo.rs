//! `.narinfo` files: the metadata a client fetches before downloading a NAR.
//!
//! `render` writes exactly what `nix copy --to file://…` writes (checked byte for byte against
//! recorded vectors), so signatures and caches downstream see familiar files. Parsing follows
//! Nix's leniency; signing follows Nix's fingerprint.

mod parse;

use std::fmt::Write as _;

pub use self::parse::NarInfoError;
use crate::compression::Compression;
use crate::hash::Sha256Hash;
use crate::signing::{PublicKey, SecretKey};
use crate::store_path::StorePath;

/// The parsed contents of a `.narinfo` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NarInfo {
    /// The store path described (`StorePath:`).
    pub store_path: StorePath,
    /// Where the NAR file is, relative to the cache root (`URL:`).
    pub url: String,
    /// How the NAR file is compressed (`Compression:`; bzip2 when absent).
    pub compression: Compression,
    /// SHA-256 of the compressed file (`FileHash:`), optional for clients.
    pub file_hash: Option<Sha256Hash>,
    /// Size of the compressed file (`FileSize:`), optional for clients.
    pub file_size: Option<u64>,
    /// SHA-256 of the uncompressed NAR (`NarHash:`), which clients verify.
    pub nar_hash: Sha256Hash,
    /// Size of the uncompressed NAR (`NarSize:`), which clients verify.
    pub nar_size: u64,
    /// Store paths this one refers to (`References:`, written as base names).
    pub references: Vec<StorePath>,
    /// Base name of the derivation that built the path (`Deriver:`), e.g. `<hash>-foo.drv`.
    pub deriver: Option<String>,
    /// Raw `<key name>:<base64>` signatures (`Sig:`, one line each).
    pub sigs: Vec<String>,
    /// Content address (`CA:`) of content-addressed paths, kept verbatim.
    pub ca: Option<String>,
}

impl NarInfo {
    /// Parses a `.narinfo` file.
    ///
    /// Rules, following Nix where it has one:
    /// - `Key: value` lines; blank lines and unknown keys are ignored, a missing final newline
    ///   is accepted, spaces/tabs/`\r` around values are trimmed.
    /// - `StorePath`, `URL`, `NarHash` and `NarSize` are required; `NarSize` must not be 0 and
    ///   `URL` must not be empty (Nix rejects both).
    /// - A missing or empty `Compression` means bzip2 (Nix's historical default).
    /// - `Deriver: unknown-deriver` means no deriver; an empty `CA` or `Sig` value is ignored.
    /// - A known single-valued key given twice is an error (Nix silently keeps the last one;
    ///   for a proxy an ambiguous file is better refused). `Sig` may repeat.
    /// - Hashes may be nixbase32, hex, base64 or SRI (see [`Sha256Hash::parse`]).
    /// - Texts over [`MAX_TEXT_LEN`](crate::MAX_TEXT_LEN) are refused before any scanning.
    ///
    /// Never panics; errors name the line and key at fault.
    pub fn parse(text: &str) -> Result<Self, NarInfoError> {
        parse::parse(text)
    }

    /// Writes the file in Nix's key order, one `Key: value\n` line each.
    ///
    /// Like Nix, an empty reference list is written as `References: ` (with the space).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(512 + 64 * self.references.len());
        // Writing to a String cannot fail.
        let _ = writeln!(out, "StorePath: {}", self.store_path);
        let _ = writeln!(out, "URL: {}", self.url);
        let _ = writeln!(out, "Compression: {}", self.compression);
        if let Some(h) = &self.file_hash {
            let _ = writeln!(out, "FileHash: {h}");
        }
        if let Some(size) = self.file_size {
            let _ = writeln!(out, "FileSize: {size}");
        }
        let _ = writeln!(out, "NarHash: {}", self.nar_hash);
        let _ = writeln!(out, "NarSize: {}", self.nar_size);
        out.push_str("References: ");
        for (i, r) in self.references.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(&r.base_name());
        }
        out.push('\n');
        if let Some(d) = &self.deriver {
            let _ = writeln!(out, "Deriver: {d}");
        }
        for sig in &self.sigs {
            let _ = writeln!(out, "Sig: {sig}");
        }
        if let Some(ca) = &self.ca {
            let _ = writeln!(out, "CA: {ca}");
        }
        out
    }

    /// The string that `Sig:` lines sign:
    /// `1;<store path>;<nar hash>;<nar size>;<references as full paths, comma-joined>`.
    ///
    /// References are sorted and deduplicated by their printed path, as Nix keeps them in a
    /// sorted set, so the order in the file does not matter.
    pub fn fingerprint(&self) -> String {
        fingerprint(
            &self.store_path,
            &self.nar_hash,
            self.nar_size,
            &self.references,
        )
    }

    /// Adds our signature, replacing an older one by a key of the same name.
    pub fn sign(&mut self, key: &SecretKey) {
        let sig = key.sign(&self.fingerprint());
        self.put_sig(sig);
    }

    /// Adds a signature made earlier (`name:base64`), replacing one by a key of the same name,
    /// as [`NarInfo::sign`] does with a fresh one.
    pub fn put_sig(&mut self, sig: String) {
        let name = sig_key_name(&sig).map(str::to_owned);
        self.sigs.retain(|s| sig_key_name(s) != name.as_deref());
        self.sigs.push(sig);
    }

    /// Whether any `Sig:` verifies with any of `keys` (keys are matched by name first).
    pub fn verify(&self, keys: &[PublicKey]) -> bool {
        let fingerprint = self.fingerprint();
        self.sigs.iter().any(|sig| {
            let Some(name) = sig_key_name(sig) else {
                return false;
            };
            keys.iter()
                .filter(|k| k.name() == name)
                .any(|k| k.verify(&fingerprint, sig))
        })
    }
}

/// The key name of a `<name>:<base64>` signature.
/// The string a narinfo's signatures sign, from the fields it covers (see
/// [`NarInfo::fingerprint`]), for callers that hold those fields without a whole narinfo.
pub fn fingerprint(
    store_path: &StorePath,
    nar_hash: &Sha256Hash,
    nar_size: u64,
    references: &[StorePath],
) -> String {
    let mut refs: Vec<String> = references.iter().map(StorePath::to_absolute).collect();
    refs.sort_unstable();
    refs.dedup();
    format!("1;{store_path};{nar_hash};{nar_size};{}", refs.join(","))
}

fn sig_key_name(sig: &str) -> Option<&str> {
    sig.split_once(':').map(|(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &str) -> StorePath {
        StorePath::parse(s).unwrap()
    }

    fn sample() -> NarInfo {
        NarInfo {
            store_path: path("/nix/store/p5ja7622vyrdacmqcdlrf9z8w2d5w249-ncps-vector-b"),
            url: "nar/0a0g6xfnginnj68h6qlllhxz5nygb05jwklan4cbcslxmv31yifw.nar.xz".into(),
            compression: Compression::Xz,
            file_hash: Some(Sha256Hash::digest(b"file")),
            file_size: Some(216),
            nar_hash: Sha256Hash::digest(b"nar"),
            nar_size: 344,
            references: vec![
                path("/nix/store/pgqv1zvc0hl7s4a9a90ljmd5pfp791m1-ncps-vector-a"),
                path("/nix/store/9hahfa88fckpm89c02h4gnpda586p1nz-ncps-vector-c"),
            ],
            deriver: Some("byg31wccq1000lzm7h0id0icb32mz2ik-ncps-vector-b.drv".into()),
            sigs: vec![],
            ca: None,
        }
    }

    #[test]
    fn render_parse_round_trip() {
        let mut info = sample();
        assert_eq!(NarInfo::parse(&info.render()).unwrap(), info);
        info.file_hash = None;
        info.file_size = None;
        info.deriver = None;
        info.references.clear();
        info.ca = Some("fixed:r:sha256:1abc".into());
        info.sigs = vec!["a:b".into(), "c:d".into()];
        let text = info.render();
        assert!(text.contains("References: \n"));
        assert!(!text.contains("FileHash"));
        assert!(!text.contains("Deriver"));
        assert!(text.ends_with("Sig: c:d\nCA: fixed:r:sha256:1abc\n"));
        assert_eq!(NarInfo::parse(&text).unwrap(), info);
    }

    #[test]
    fn fingerprint_sorts_references() {
        let info = sample();
        assert_eq!(
            info.fingerprint(),
            format!(
                "1;/nix/store/p5ja7622vyrdacmqcdlrf9z8w2d5w249-ncps-vector-b;{};344;\
                 /nix/store/9hahfa88fckpm89c02h4gnpda586p1nz-ncps-vector-c,\
                 /nix/store/pgqv1zvc0hl7s4a9a90ljmd5pfp791m1-ncps-vector-a",
                Sha256Hash::digest(b"nar")
            )
        );
        let mut no_refs = info;
        no_refs.references.clear();
        assert!(no_refs.fingerprint().ends_with(";344;"));
    }

    #[test]
    fn sign_replaces_same_name_and_verifies() {
        let key = SecretKey::generate("ours").unwrap();
        let other = SecretKey::generate("theirs").unwrap();
        let mut info = sample();
        assert!(!info.verify(&[key.public_key()]));
        info.sigs.push("ours:stale".into());
        info.sign(&other);
        info.sign(&key);
        info.sign(&key);
        assert_eq!(info.sigs.len(), 2);
        assert!(info.sigs[0].starts_with("theirs:"));
        assert!(info.sigs[1].starts_with("ours:"));
        assert!(info.verify(&[key.public_key()]));
        assert!(info.verify(&[other.public_key()]));
        let stranger = SecretKey::generate("ours").unwrap();
        assert!(!info.verify(&[stranger.public_key()]));
        assert!(info.verify(&[stranger.public_key(), key.public_key()]));
        info.nar_size += 1;
        assert!(!info.verify(&[key.public_key(), other.public_key()]));
        assert!(!info.verify(&[]));
    }
}
