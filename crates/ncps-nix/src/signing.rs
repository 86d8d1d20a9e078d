//! Nix's ed25519 binary-cache keys and narinfo signatures.
//!
//! Keys are written `<name>:<base64>` (secret: 32-byte seed followed by the 32-byte public key,
//! as `nix-store --generate-binary-cache-key` writes them; public: 32 bytes) and signatures
//! `<name>:<base64 of 64 bytes>`. The name travels with every signature so a client can pick
//! the matching trusted key; we compare it before doing any cryptography.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

/// Why a key could not be created or parsed.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// No `:` between key name and key material, or an empty part.
    #[error("key must look like <name>:<base64>")]
    Format,
    /// The key name contains whitespace, control characters or `:`.
    #[error("invalid key name {0:?}")]
    Name(String),
    /// The key material is not valid base64.
    #[error("key material is not valid base64")]
    Base64,
    /// The key material decodes to the wrong number of bytes.
    #[error("key material is {got} bytes, expected {expected}")]
    Length {
        /// Bytes this kind of key needs.
        expected: usize,
        /// Bytes found.
        got: usize,
    },
    /// The public half stored in a secret key does not belong to its seed (corrupt key file).
    #[error("public half of the secret key does not match its seed")]
    Mismatch,
    /// The 32 bytes are not a valid ed25519 public key.
    #[error("invalid ed25519 public key")]
    InvalidPublicKey,
    /// The OS random number generator failed while generating a key.
    #[error("cannot get random bytes for a new key")]
    Random(#[source] getrandom::Error),
}

/// Splits `<name>:<base64>` and decodes the base64 into exactly `N` bytes.
fn split_key<const N: usize>(s: &str) -> Result<(&str, [u8; N]), SigningError> {
    let (name, material) = s.split_once(':').ok_or(SigningError::Format)?;
    if material.is_empty() {
        return Err(SigningError::Format);
    }
    check_name(name)?;
    let bytes = BASE64.decode(material).map_err(|_| SigningError::Base64)?;
    let got = bytes.len();
    let array = bytes
        .try_into()
        .map_err(|_| SigningError::Length { expected: N, got })?;
    Ok((name, array))
}

/// Key names end up in `Sig:` lines and before a `:`; keep them printable and unambiguous.
fn check_name(name: &str) -> Result<(), SigningError> {
    if name.is_empty() {
        return Err(SigningError::Format);
    }
    if name
        .chars()
        .any(|c| c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(SigningError::Name(name.to_owned()));
    }
    Ok(())
}

/// A named ed25519 secret key used to sign narinfos we serve.
#[derive(Clone)]
pub struct SecretKey {
    name: String,
    key: SigningKey,
}

impl SecretKey {
    /// Creates a fresh key from OS randomness, e.g. on first start without a configured key.
    pub fn generate(name: &str) -> Result<Self, SigningError> {
        check_name(name)?;
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(SigningError::Random)?;
        let key = SigningKey::from_bytes(&seed);
        seed.fill(0);
        Ok(Self {
            name: name.to_owned(),
            key,
        })
    }

    /// Parses Nix's secret key file format `<name>:<base64 of seed ++ public key>`.
    ///
    /// Surrounding whitespace (a key file's final newline) is ignored.
    pub fn parse(s: &str) -> Result<Self, SigningError> {
        let (name, mut bytes) = split_key::<64>(s.trim())?;
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&bytes[..32]);
        let key = SigningKey::from_bytes(&seed);
        seed.fill(0);
        let matches = key.verifying_key().as_bytes()[..] == bytes[32..];
        bytes.fill(0);
        if !matches {
            return Err(SigningError::Mismatch);
        }
        Ok(Self {
            name: name.to_owned(),
            key,
        })
    }

    /// Nix's secret key file format, to write a generated key to disk.
    pub fn to_nix_string(&self) -> String {
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(self.key.as_bytes());
        bytes[32..].copy_from_slice(self.key.verifying_key().as_bytes());
        let s = format!("{}:{}", self.name, BASE64.encode(bytes));
        bytes.fill(0);
        s
    }

    /// The key name, which prefixes every signature.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The matching public key, for publishing to clients' `trusted-public-keys`.
    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// Signs a narinfo fingerprint, returning a `Sig:` value `<name>:<base64>`.
    pub fn sign(&self, fingerprint: &str) -> String {
        let sig = self.key.sign(fingerprint.as_bytes());
        format!("{}:{}", self.name, BASE64.encode(sig.to_bytes()))
    }
}

impl fmt::Debug for SecretKey {
    /// Prints only the name: key material must never reach logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A named ed25519 public key, as listed in `trusted-public-keys`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PublicKey {
    name: String,
    key: VerifyingKey,
}

impl PublicKey {
    /// Parses `<name>:<base64 of 32 bytes>`; surrounding whitespace is ignored.
    pub fn parse(s: &str) -> Result<Self, SigningError> {
        let (name, bytes) = split_key::<32>(s.trim())?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| SigningError::InvalidPublicKey)?;
        Ok(Self {
            name: name.to_owned(),
            key,
        })
    }

    /// `<name>:<base64>`, the form users paste into `trusted-public-keys`.
    pub fn to_nix_string(&self) -> String {
        format!("{}:{}", self.name, BASE64.encode(self.key.as_bytes()))
    }

    /// The key name that signatures by this key carry.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks a `<name>:<base64>` signature of `fingerprint`.
    ///
    /// Returns false (never errors) when the name differs or anything is malformed, because
    /// callers only need to know whether to trust the narinfo.
    pub fn verify(&self, fingerprint: &str, sig: &str) -> bool {
        let Some((name, encoded)) = sig.split_once(':') else {
            return false;
        };
        if name != self.name {
            return false;
        }
        let Ok(bytes) = BASE64.decode(encoded) else {
            return false;
        };
        let Ok(bytes) = <[u8; 64]>::try_from(bytes) else {
            return false;
        };
        let signature = Signature::from_bytes(&bytes);
        // Strict verification rejects malleable signatures and weak keys, like libsodium,
        // which Nix uses.
        self.key
            .verify_strict(fingerprint.as_bytes(), &signature)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_parse_sign_verify() {
        let sk = SecretKey::generate("cache.example-1").unwrap();
        let again = SecretKey::parse(&format!("  {}\n", sk.to_nix_string())).unwrap();
        assert_eq!(again.to_nix_string(), sk.to_nix_string());
        assert_eq!(sk.name(), "cache.example-1");
        let pk = sk.public_key();
        assert_eq!(PublicKey::parse(&pk.to_nix_string()).unwrap(), pk);
        assert_eq!(pk.name(), "cache.example-1");

        let sig = sk.sign("1;fingerprint");
        assert!(sig.starts_with("cache.example-1:"));
        assert!(pk.verify("1;fingerprint", &sig));
        assert!(!pk.verify("1;fingerprinT", &sig));
        let renamed = sig.replacen("cache.example-1", "other", 1);
        assert!(!pk.verify("1;fingerprint", &renamed));
        assert!(!pk.verify("1;fingerprint", "cache.example-1"));
        assert!(!pk.verify("1;fingerprint", "cache.example-1:!!!"));
        assert!(!pk.verify("1;fingerprint", "cache.example-1:AAAA"));
        let other = SecretKey::generate("cache.example-1").unwrap();
        assert!(!other.public_key().verify("1;fingerprint", &sig));
    }

    #[test]
    fn debug_hides_material() {
        let sk = SecretKey::generate("n").unwrap();
        let material = sk.to_nix_string();
        let material = material.split_once(':').unwrap().1;
        let debug = format!("{sk:?}");
        assert!(debug.contains("\"n\""));
        assert!(!debug.contains(material));
        assert!(!debug.contains(&material[..20]));
    }

    #[test]
    fn rejects_bad_keys() {
        assert!(matches!(SecretKey::generate(""), Err(SigningError::Format)));
        assert!(matches!(
            SecretKey::generate("a:b"),
            Err(SigningError::Name(_))
        ));
        assert!(matches!(
            SecretKey::parse("nocolon"),
            Err(SigningError::Format)
        ));
        assert!(matches!(
            SecretKey::parse(":AAAA"),
            Err(SigningError::Format)
        ));
        assert!(matches!(SecretKey::parse("n:"), Err(SigningError::Format)));
        assert!(matches!(
            SecretKey::parse("n:!!"),
            Err(SigningError::Base64)
        ));
        assert!(matches!(
            SecretKey::parse("n:AAAA"),
            Err(SigningError::Length {
                expected: 64,
                got: 3
            })
        ));
        // 64 zero bytes: the zero seed's public key is not all zeroes.
        let zeros = format!("n:{}", BASE64.encode([0u8; 64]));
        assert!(matches!(
            SecretKey::parse(&zeros),
            Err(SigningError::Mismatch)
        ));
        let pk = SecretKey::generate("n")
            .unwrap()
            .public_key()
            .to_nix_string();
        assert!(matches!(
            PublicKey::parse(&pk.replace("n:", "n n:")),
            Err(SigningError::Name(_))
        ));
        assert!(matches!(
            PublicKey::parse("n:AAAA"),
            Err(SigningError::Length { .. })
        ));
    }
}
