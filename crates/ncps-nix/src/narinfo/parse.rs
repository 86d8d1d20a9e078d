//! Parsing `.narinfo` text; the rules are documented on [`NarInfo::parse`].

use super::NarInfo;
use crate::MAX_TEXT_LEN;
use crate::compression::{Compression, CompressionError};
use crate::hash::{HashError, Sha256Hash};
use crate::kv;
use crate::store_path::{StorePath, StorePathError};

/// Why a `.narinfo` text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NarInfoError {
    /// The text is larger than [`MAX_TEXT_LEN`].
    #[error("narinfo is {len} bytes, more than the {MAX_TEXT_LEN} allowed")]
    TooLarge {
        /// Size of the text in bytes.
        len: usize,
    },
    /// A non-blank line without a `:`.
    #[error("narinfo line {line}: expected \"Key: value\"")]
    MissingColon {
        /// 1-based line number.
        line: usize,
    },
    /// A single-valued key appears more than once.
    #[error("narinfo line {line}: duplicate {key}")]
    Duplicate {
        /// 1-based line number of the repetition.
        line: usize,
        /// The repeated key.
        key: &'static str,
    },
    /// A required key is absent.
    #[error("narinfo has no {key}")]
    Missing {
        /// The absent key.
        key: &'static str,
    },
    /// A key whose value must not be empty has an empty value.
    #[error("narinfo line {line}: {key} is empty")]
    Empty {
        /// 1-based line number.
        line: usize,
        /// The key with the empty value.
        key: &'static str,
    },
    /// `StorePath`, `References` or `Deriver` holds an invalid store path.
    #[error("narinfo line {line}: invalid {key}: {source}")]
    StorePath {
        /// 1-based line number.
        line: usize,
        /// The key holding the path.
        key: &'static str,
        /// What is wrong with the path.
        source: StorePathError,
    },
    /// `NarHash` or `FileHash` is not a SHA-256 hash we can read.
    #[error("narinfo line {line}: invalid {key}: {source}")]
    Hash {
        /// 1-based line number.
        line: usize,
        /// The key holding the hash.
        key: &'static str,
        /// What is wrong with the hash.
        source: HashError,
    },
    /// `NarSize` or `FileSize` is not a decimal `u64`.
    #[error("narinfo line {line}: {key} is not a decimal byte count")]
    Number {
        /// 1-based line number.
        line: usize,
        /// The key holding the number.
        key: &'static str,
    },
    /// `NarSize` is 0, which no NAR can be (Nix refuses it too).
    #[error("narinfo line {line}: NarSize is 0")]
    ZeroNarSize {
        /// 1-based line number.
        line: usize,
    },
    /// `Compression` names a method we do not know.
    #[error("narinfo line {line}: invalid Compression: {source}")]
    Compression {
        /// 1-based line number.
        line: usize,
        /// The unknown name.
        source: CompressionError,
    },
}

/// Keys seen so far; `None` means "not seen yet" so repeats can be detected.
#[derive(Default)]
struct Fields {
    store_path: Option<StorePath>,
    url: Option<String>,
    compression: Option<Compression>,
    file_hash: Option<Sha256Hash>,
    file_size: Option<u64>,
    nar_hash: Option<Sha256Hash>,
    nar_size: Option<u64>,
    references: Option<Vec<StorePath>>,
    deriver: Option<Option<String>>,
    sigs: Vec<String>,
    ca: Option<Option<String>>,
}

/// Parses a `.narinfo` text; see the module docs for the rules.
pub(super) fn parse(text: &str) -> Result<NarInfo, NarInfoError> {
    if text.len() > MAX_TEXT_LEN {
        return Err(NarInfoError::TooLarge { len: text.len() });
    }
    let mut f = Fields::default();
    for line in kv::lines(text) {
        let line = line.map_err(|line| NarInfoError::MissingColon { line })?;
        f.apply(line.number, line.key, line.value)?;
    }
    f.finish()
}

/// Stores a single-valued key, refusing a second occurrence.
fn set<T>(
    slot: &mut Option<T>,
    line: usize,
    key: &'static str,
    value: T,
) -> Result<(), NarInfoError> {
    if slot.is_some() {
        return Err(NarInfoError::Duplicate { line, key });
    }
    *slot = Some(value);
    Ok(())
}

/// Refuses an empty value for keys that need one.
fn non_empty<'a>(line: usize, key: &'static str, value: &'a str) -> Result<&'a str, NarInfoError> {
    if value.is_empty() {
        Err(NarInfoError::Empty { line, key })
    } else {
        Ok(value)
    }
}

/// Parses a size: ASCII digits only (no sign), fitting in a `u64`.
fn number(line: usize, key: &'static str, value: &str) -> Result<u64, NarInfoError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NarInfoError::Number { line, key });
    }
    value
        .parse()
        .map_err(|_| NarInfoError::Number { line, key })
}

/// Parses a `sha256:…` hash field.
fn hash(line: usize, key: &'static str, value: &str) -> Result<Sha256Hash, NarInfoError> {
    Sha256Hash::parse(value).map_err(|source| NarInfoError::Hash { line, key, source })
}

/// Wraps a store path error with its position.
fn path_err(line: usize, key: &'static str) -> impl FnOnce(StorePathError) -> NarInfoError {
    move |source| NarInfoError::StorePath { line, key, source }
}

impl Fields {
    /// Records one `key: value` line.
    fn apply(&mut self, line: usize, key: &str, value: &str) -> Result<(), NarInfoError> {
        match key {
            "StorePath" => {
                let key = "StorePath";
                let path = StorePath::parse(value).map_err(path_err(line, key))?;
                set(&mut self.store_path, line, key, path)
            }
            "URL" => {
                let url = non_empty(line, "URL", value)?.to_owned();
                set(&mut self.url, line, "URL", url)
            }
            "Compression" => {
                let compression = if value.is_empty() {
                    Compression::Bzip2
                } else {
                    Compression::parse(value)
                        .map_err(|source| NarInfoError::Compression { line, source })?
                };
                set(&mut self.compression, line, "Compression", compression)
            }
            "FileHash" => set(
                &mut self.file_hash,
                line,
                "FileHash",
                hash(line, "FileHash", value)?,
            ),
            "FileSize" => set(
                &mut self.file_size,
                line,
                "FileSize",
                number(line, "FileSize", value)?,
            ),
            "NarHash" => set(
                &mut self.nar_hash,
                line,
                "NarHash",
                hash(line, "NarHash", value)?,
            ),
            "NarSize" => {
                let size = number(line, "NarSize", value)?;
                if size == 0 {
                    return Err(NarInfoError::ZeroNarSize { line });
                }
                set(&mut self.nar_size, line, "NarSize", size)
            }
            "References" => {
                let refs = value
                    .split_ascii_whitespace()
                    .map(StorePath::parse_base_name)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(path_err(line, "References"))?;
                set(&mut self.references, line, "References", refs)
            }
            "Deriver" => {
                let key = "Deriver";
                let deriver = match non_empty(line, key, value)? {
                    "unknown-deriver" => None,
                    d => {
                        StorePath::parse_base_name(d).map_err(path_err(line, key))?;
                        Some(d.to_owned())
                    }
                };
                set(&mut self.deriver, line, key, deriver)
            }
            "Sig" => {
                if !value.is_empty() {
                    self.sigs.push(value.to_owned());
                }
                Ok(())
            }
            "CA" => {
                let ca = (!value.is_empty()).then(|| value.to_owned());
                set(&mut self.ca, line, "CA", ca)
            }
            // Unknown keys (System, older or newer extensions) are ignored, as Nix does.
            _ => Ok(()),
        }
    }

    /// Checks required keys and applies defaults.
    fn finish(self) -> Result<NarInfo, NarInfoError> {
        let missing = |key| NarInfoError::Missing { key };
        Ok(NarInfo {
            store_path: self.store_path.ok_or_else(|| missing("StorePath"))?,
            url: self.url.ok_or_else(|| missing("URL"))?,
            compression: self.compression.unwrap_or(Compression::Bzip2),
            file_hash: self.file_hash,
            file_size: self.file_size,
            nar_hash: self.nar_hash.ok_or_else(|| missing("NarHash"))?,
            nar_size: self.nar_size.ok_or_else(|| missing("NarSize"))?,
            references: self.references.unwrap_or_default(),
            deriver: self.deriver.flatten(),
            sigs: self.sigs,
            ca: self.ca.flatten(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "StorePath: /nix/store/pgqv1zvc0hl7s4a9a90ljmd5pfp791m1-ncps-vector-a
URL: nar/x.nar
NarHash: sha256:1pj7swf7dl5z165j08n7vjgj9mvvrz3f878avc96lyxk3zjzfl6r
NarSize: 288";

    fn err(text: &str) -> NarInfoError {
        NarInfo::parse(text).unwrap_err()
    }

    #[test]
    fn minimal_defaults() {
        let info = NarInfo::parse(MINIMAL).unwrap();
        assert_eq!(info.compression, Compression::Bzip2);
        assert_eq!(info.file_hash, None);
        assert_eq!(info.file_size, None);
        assert!(info.references.is_empty());
        assert_eq!(info.deriver, None);
        assert!(info.sigs.is_empty());
        assert_eq!(info.ca, None);
        assert_eq!(info.nar_size, 288);
        assert_eq!(info.url, "nar/x.nar");
    }

    #[test]
    fn lenient_where_nix_is() {
        let text = format!(
            "\n{MINIMAL}\r\nSystem: x86_64-linux\nFutureKey: whatever: with colon\n\n\
             Deriver: unknown-deriver\nCompression: \nSig: \nCA: \nSig: k:1\nSig: k:2\n\
             References:   \n"
        );
        let info = NarInfo::parse(&text).unwrap();
        assert_eq!(info.compression, Compression::Bzip2);
        assert_eq!(info.deriver, None);
        assert_eq!(info.ca, None);
        assert_eq!(info.sigs, vec!["k:1", "k:2"]);
        assert!(info.references.is_empty());
    }

    #[test]
    fn other_hash_spellings() {
        let text = MINIMAL.replace(
            "sha256:1pj7swf7dl5z165j08n7vjgj9mvvrz3f878avc96lyxk3zjzfl6r",
            "sha256-2VD35R+ze2oS2wod5MbPe9ckn9zHIiCLCb/QdhzXR94=",
        );
        let info = NarInfo::parse(&text).unwrap();
        assert_eq!(info, NarInfo::parse(MINIMAL).unwrap());
    }

    #[test]
    fn errors_name_line_and_key() {
        use NarInfoError as E;
        let without = |key: &str| {
            MINIMAL
                .lines()
                .filter(|l| !l.starts_with(key))
                .collect::<Vec<_>>()
                .join("\n")
        };
        for key in ["StorePath", "URL", "NarHash", "NarSize"] {
            assert_eq!(err(&without(key)), E::Missing { key }, "{key}");
        }
        assert_eq!(
            err(&format!("{MINIMAL}\nURL: y")),
            E::Duplicate {
                line: 5,
                key: "URL"
            }
        );
        assert_eq!(
            err(&format!("{MINIMAL}\nCompression: xz\nCompression: xz")),
            E::Duplicate {
                line: 6,
                key: "Compression"
            }
        );
        assert_eq!(
            err(&format!(
                "{MINIMAL}\nDeriver: unknown-deriver\nDeriver: unknown-deriver"
            )),
            E::Duplicate {
                line: 6,
                key: "Deriver"
            }
        );
        assert_eq!(
            err(&format!("{MINIMAL}\ngarbage")),
            E::MissingColon { line: 5 }
        );
        assert_eq!(
            err(&MINIMAL.replace("NarSize: 288", "NarSize: -1")),
            E::Number {
                line: 4,
                key: "NarSize"
            }
        );
        assert_eq!(
            err(&MINIMAL.replace("NarSize: 288", "NarSize: +1")),
            E::Number {
                line: 4,
                key: "NarSize"
            }
        );
        assert_eq!(
            err(&MINIMAL.replace("NarSize: 288", "NarSize: 99999999999999999999")),
            E::Number {
                line: 4,
                key: "NarSize"
            }
        );
        assert_eq!(
            err(&MINIMAL.replace("NarSize: 288", "NarSize: 0")),
            E::ZeroNarSize { line: 4 }
        );
        assert_eq!(
            err(&format!("{MINIMAL}\nFileSize: big")),
            E::Number {
                line: 5,
                key: "FileSize"
            }
        );
        assert_eq!(
            err(&MINIMAL.replace("nar/x.nar", "")),
            E::Empty {
                line: 2,
                key: "URL"
            }
        );
        assert!(matches!(
            err(&format!("{MINIMAL}\nCompression: rar")),
            E::Compression { line: 5, .. }
        ));
        assert!(matches!(
            err(&MINIMAL.replace("sha256:1pj7", "md5:1pj7")),
            E::Hash {
                line: 3,
                key: "NarHash",
                ..
            }
        ));
        assert!(matches!(
            err(&format!("{MINIMAL}\nFileHash: sha256:zz")),
            E::Hash {
                line: 5,
                key: "FileHash",
                ..
            }
        ));
        assert!(matches!(
            err(&MINIMAL.replace("/nix/store/", "/nix/store/../")),
            E::StorePath {
                line: 1,
                key: "StorePath",
                ..
            }
        ));
        assert!(matches!(
            err(&format!("{MINIMAL}\nReferences: ok not-a-path")),
            E::StorePath {
                line: 5,
                key: "References",
                ..
            }
        ));
        assert!(matches!(
            err(&format!("{MINIMAL}\nDeriver: /nix/store/x.drv")),
            E::StorePath {
                line: 5,
                key: "Deriver",
                ..
            }
        ));
        let message = err(&format!("{MINIMAL}\nFileSize: big")).to_string();
        assert!(
            message.contains("line 5") && message.contains("FileSize"),
            "{message}"
        );
    }

    #[test]
    fn refuses_huge_input_quickly() {
        let text = format!("{MINIMAL}\n{}", "X: y\n".repeat(MAX_TEXT_LEN / 5 + 1));
        assert!(matches!(err(&text), NarInfoError::TooLarge { .. }));
    }

    #[test]
    fn never_panics_on_odd_input() {
        for text in [
            "",
            ":",
            "\n\n",
            "é: é",
            "StorePath:",
            "StorePath: é\u{0}",
            "\r",
        ] {
            assert!(NarInfo::parse(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn a_text_of_exactly_the_limit_is_accepted() {
        // Real narinfos with thousands of references approach the cap: it must be the cap.
        let head = format!("{MINIMAL}\nFutureKey: ");
        let text = format!("{head}{}\n", "x".repeat(MAX_TEXT_LEN - head.len() - 1));
        assert_eq!(text.len(), MAX_TEXT_LEN);
        assert_eq!(NarInfo::parse(&text).unwrap().nar_size, 288);
        assert_eq!(MAX_TEXT_LEN, 1 << 20);
    }
}
