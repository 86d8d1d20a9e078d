//! Reading narinfo files and checking NAR bodies against them, written independently of the
//! server's code so that the tests are an outside oracle.

use std::io::Read;

use sha2::{Digest, Sha256};

use super::random_bytes;

const NIXBASE32: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Nix's base-32: least significant end first, alphabet without e, o, u, t.
pub fn nixbase32(bytes: &[u8]) -> String {
    let len = (bytes.len() * 8).div_ceil(5);
    (0..len)
        .rev()
        .map(|n| {
            let bit = n * 5;
            let (i, j) = (bit / 8, bit % 8);
            let low = u16::from(bytes[i]) >> j;
            let high = bytes.get(i + 1).map_or(0, |&b| u16::from(b) << (8 - j));
            char::from(NIXBASE32[usize::from((low | high) & 0x1f)])
        })
        .collect()
}

pub fn sha256_nixbase32(bytes: &[u8]) -> String {
    nixbase32(&Sha256::digest(bytes))
}

/// A store path hash (32 nixbase32 characters) that no cache holds.
pub fn random_store_hash() -> String {
    nixbase32(&random_bytes(20))
}

/// The 32-character hash part of `/nix/store/<hash>-<name>`.
pub fn store_hash(store_path: &str) -> &str {
    let base = store_path
        .strip_prefix("/nix/store/")
        .unwrap_or_else(|| panic!("not a store path: {store_path}"));
    &base[..32]
}

/// A parsed narinfo; keys keep their order and may repeat (`Sig`).
pub struct NarInfo {
    pub text: String,
    fields: Vec<(String, String)>,
}

impl NarInfo {
    pub fn parse(text: &str) -> NarInfo {
        let fields = text
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l
                    .split_once(": ")
                    .or_else(|| l.split_once(':'))
                    .unwrap_or_else(|| panic!("malformed narinfo line {l:?} in:\n{text}"));
                (k.to_owned(), v.trim().to_owned())
            })
            .collect();
        NarInfo {
            text: text.to_owned(),
            fields,
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A field that must be present.
    pub fn field(&self, key: &str) -> &str {
        self.get(key)
            .unwrap_or_else(|| panic!("narinfo lacks {key}:\n{}", self.text))
    }

    pub fn all(&self, key: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn references(&self) -> Vec<&str> {
        let mut refs: Vec<&str> = self
            .get("References")
            .unwrap_or("")
            .split_whitespace()
            .collect();
        refs.sort_unstable();
        refs
    }

    /// `NarHash` in nixbase32 (the name of a NAR's URL under chunking).
    pub fn nar_hash_nixbase32(&self) -> String {
        nixbase32_sha256_field(self.field("NarHash")).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Checks a NAR download against this narinfo: `FileHash`/`FileSize` (when given) over the
    /// bytes as sent, and `NarHash`/`NarSize` over the bytes decompressed per `Compression`.
    pub fn verify_nar(&self, body: &[u8]) -> Result<(), String> {
        if let Some(size) = self.get("FileSize")
            && size != body.len().to_string()
        {
            return Err(format!("FileSize {size}, got {} bytes", body.len()));
        }
        if let Some(file_hash) = self.get("FileHash") {
            let want = nixbase32_sha256_field(file_hash)?;
            let got = sha256_nixbase32(body);
            if want != got {
                return Err(format!("FileHash {want}, got sha256 {got}"));
            }
        }
        self.verify_nar_content(self.get("Compression").unwrap_or("bzip2"), body)
    }

    /// Checks only `NarHash`/`NarSize`, over `body` decompressed as `compression` (`none`,
    /// `xz`, `zstd`): for bytes that are the same NAR as this narinfo's but need not be the
    /// same file (re-compressed, or served uncompressed).
    pub fn verify_nar_content(&self, compression: &str, body: &[u8]) -> Result<(), String> {
        let nar = decompress(compression, body)?;
        let size = self.field("NarSize");
        if size != nar.len().to_string() {
            return Err(format!("NarSize {size}, got {} bytes", nar.len()));
        }
        let want = nixbase32_sha256_field(self.field("NarHash"))?;
        let got = sha256_nixbase32(&nar);
        if want != got {
            return Err(format!("NarHash {want}, got sha256 {got}"));
        }
        Ok(())
    }
}

/// `sha256:<52 nixbase32>` or `sha256:<64 hex>` → nixbase32.
fn nixbase32_sha256_field(field: &str) -> Result<String, String> {
    let digest = field
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("not a sha256 hash: {field}"))?;
    match digest.len() {
        52 => Ok(digest.to_owned()),
        64 => {
            let bytes: Result<Vec<u8>, _> = (0..64)
                .step_by(2)
                .map(|i| u8::from_str_radix(&digest[i..i + 2], 16))
                .collect();
            Ok(nixbase32(&bytes.map_err(|e| format!("{field}: {e}"))?))
        }
        _ => Err(format!("unsupported hash encoding: {field}")),
    }
}

fn decompress(compression: &str, body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let result = match compression {
        "none" => {
            out.extend_from_slice(body);
            Ok(0)
        }
        "xz" => liblzma::read::XzDecoder::new_multi_decoder(body).read_to_end(&mut out),
        "zstd" => zstd::stream::read::Decoder::new(body).and_then(|mut d| d.read_to_end(&mut out)),
        other => return Err(format!("the tests cannot decompress {other:?}")),
    };
    result.map_err(|e| format!("{compression} decompression failed: {e}"))?;
    Ok(out)
}
