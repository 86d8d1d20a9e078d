//! Signed JSON documents: realisations of content-addressed derivation outputs
//! (`/realisations/<id>.doi`) and build-trace entries.
//!
//! Nix signs a realisation by signing its JSON without the `signatures` member, serialised
//! compactly with the members of every object in byte order of their names (what nlohmann's
//! `dump()` of its default, sorted object type produces), e.g.
//! `{"dependentRealisations":{},"id":"sha256:…!out","outPath":"<hash>-<name>"}`.

use std::collections::BTreeMap;

use crate::signing::PublicKey;

/// Why a document could not be read as a signed JSON object.
#[derive(Debug, thiserror::Error)]
pub enum SignedJsonError {
    /// Not JSON at all.
    #[error("not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON, but not an object.
    #[error("not a JSON object")]
    NotAnObject,
    /// `signatures` is not an array of strings.
    #[error("`signatures` must be an array of strings")]
    BadSignatures,
}

/// A JSON object and the signatures it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedJson {
    /// What the signatures sign: the object without `signatures`, canonically serialised.
    pub fingerprint: String,
    /// The `name:base64` signatures.
    pub signatures: Vec<String>,
}

impl SignedJson {
    /// Reads a document; a missing `signatures` member means none.
    pub fn parse(text: &str) -> Result<Self, SignedJsonError> {
        let value: serde_json::Value = serde_json::from_str(text)?;
        let serde_json::Value::Object(mut object) = value else {
            return Err(SignedJsonError::NotAnObject);
        };
        let signatures = match object.remove("signatures") {
            None => Vec::new(),
            Some(serde_json::Value::Array(items)) => items
                .into_iter()
                .map(|item| match item {
                    serde_json::Value::String(s) => Ok(s),
                    _ => Err(SignedJsonError::BadSignatures),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(SignedJsonError::BadSignatures),
        };
        let fingerprint = serde_json::to_string(&canonical(serde_json::Value::Object(object)))?;
        Ok(Self {
            fingerprint,
            signatures,
        })
    }

    /// True when a signature verifies with one of `keys` (matched by name).
    pub fn verify(&self, keys: &[PublicKey]) -> bool {
        self.signatures.iter().any(|sig| {
            let name = sig.split_once(':').map_or("", |(name, _)| name);
            keys.iter()
                .filter(|k| k.name() == name)
                .any(|k| k.verify(&self.fingerprint, sig))
        })
    }
}

/// The value with every object's members in byte order of their names, whatever order the
/// JSON library keeps them in.
fn canonical(value: serde_json::Value) -> Canonical {
    match value {
        serde_json::Value::Object(object) => Canonical::Object(
            object
                .into_iter()
                .map(|(name, member)| (name, canonical(member)))
                .collect(),
        ),
        serde_json::Value::Array(items) => {
            Canonical::Array(items.into_iter().map(canonical).collect())
        }
        other => Canonical::Scalar(other),
    }
}

/// A JSON value whose objects serialise sorted by member name.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Canonical {
    Object(BTreeMap<String, Canonical>),
    Array(Vec<Canonical>),
    Scalar(serde_json::Value),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::SecretKey;

    #[test]
    fn the_fingerprint_is_the_sorted_compact_object_without_signatures() {
        let doc = SignedJson::parse(
            r#"{ "signatures": ["k:abc"], "outPath": "5cdp7ncqc47j3ylzqc2lpphgks78p02s-bash",
                 "id": "sha256:6e46!debug", "dependentRealisations": { "z": "1", "a": "2" } }"#,
        )
        .unwrap();
        assert_eq!(
            doc.fingerprint,
            r#"{"dependentRealisations":{"a":"2","z":"1"},"id":"sha256:6e46!debug","outPath":"5cdp7ncqc47j3ylzqc2lpphgks78p02s-bash"}"#
        );
        assert_eq!(doc.signatures, vec!["k:abc".to_string()]);
    }

    #[test]
    fn signatures_verify_with_the_right_key_only() {
        let key = SecretKey::generate("builder-1").unwrap();
        let other = SecretKey::generate("builder-1").unwrap();
        let unsigned = r#"{"dependentRealisations":{},"id":"sha256:ab!out","outPath":"x-y"}"#;
        let sig = key.sign(&SignedJson::parse(unsigned).unwrap().fingerprint);
        let signed = format!(
            r#"{{"id":"sha256:ab!out","outPath":"x-y","dependentRealisations":{{}},"signatures":["{sig}"]}}"#
        );
        let doc = SignedJson::parse(&signed).unwrap();
        assert!(doc.verify(&[key.public_key()]));
        assert!(!doc.verify(&[other.public_key()]));
        assert!(
            !SignedJson::parse(unsigned)
                .unwrap()
                .verify(&[key.public_key()])
        );
        // Changing a signed member breaks the signature.
        let tampered = signed.replace("x-y", "x-z");
        assert!(
            !SignedJson::parse(&tampered)
                .unwrap()
                .verify(&[key.public_key()])
        );
    }

    /// Found by fuzzing (the input is the fuzzer's): without exact float parsing, a number's
    /// digits changed between a document's fingerprint and that fingerprint's own, so one
    /// document could be judged by two different fingerprints.
    #[test]
    fn the_fingerprint_of_a_fingerprint_is_itself() {
        let input = include_str!("../../ncps-fuzz/seeds/realisation/float-roundtrip");
        let doc = SignedJson::parse(input).unwrap();
        assert_eq!(
            SignedJson::parse(&doc.fingerprint).unwrap().fingerprint,
            doc.fingerprint
        );
    }

    #[test]
    fn malformed_documents_are_refused() {
        assert!(SignedJson::parse("[1]").is_err());
        assert!(SignedJson::parse("{").is_err());
        assert!(SignedJson::parse(r#"{"signatures": "k:abc"}"#).is_err());
        assert!(SignedJson::parse(r#"{"signatures": [1]}"#).is_err());
    }
}
