//! The `nix-cache-info` file every binary cache serves at its root.
//!
//! Clients read it first to check the store directory and learn the cache's priority; we both
//! serve one and read upstreams' (to pick their priority).

use std::fmt::Write as _;

use crate::MAX_TEXT_LEN;
use crate::kv;
use crate::store_path::STORE_DIR;

/// Why a `nix-cache-info` text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheInfoError {
    /// The text is larger than [`MAX_TEXT_LEN`].
    #[error("nix-cache-info is {len} bytes, more than the {MAX_TEXT_LEN} allowed")]
    TooLarge {
        /// Size of the text in bytes.
        len: usize,
    },
    /// A non-blank line without a `:`.
    #[error("nix-cache-info line {line}: expected \"Key: value\"")]
    MissingColon {
        /// 1-based line number.
        line: usize,
    },
    /// A known key with a value of the wrong form.
    #[error("nix-cache-info line {line}: invalid {key}")]
    InvalidValue {
        /// 1-based line number.
        line: usize,
        /// The key at fault.
        key: &'static str,
    },
}

/// The parsed contents of `nix-cache-info`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheInfo {
    /// Store directory the cache's paths live in (`StoreDir:`); `/nix/store` when absent.
    pub store_dir: String,
    /// Whether clients may query many paths at once (`WantMassQuery: 1`).
    pub want_mass_query: bool,
    /// Substituter priority (`Priority:`); lower is preferred, cache.nixos.org uses 40.
    pub priority: Option<u32>,
}

impl CacheInfo {
    /// Parses the file leniently, like Nix: unknown keys ignored, absent keys defaulted.
    ///
    /// `WantMassQuery` is true only for `1` and false only for `0`; `Priority` must be a
    /// decimal `u32`. A repeated key keeps its last value, as in Nix.
    pub fn parse(text: &str) -> Result<Self, CacheInfoError> {
        if text.len() > MAX_TEXT_LEN {
            return Err(CacheInfoError::TooLarge { len: text.len() });
        }
        let mut info = CacheInfo {
            store_dir: STORE_DIR.to_owned(),
            want_mass_query: false,
            priority: None,
        };
        for line in kv::lines(text) {
            let line = line.map_err(|line| CacheInfoError::MissingColon { line })?;
            let invalid = |key| CacheInfoError::InvalidValue {
                line: line.number,
                key,
            };
            match line.key {
                "StoreDir" if !line.value.is_empty() => info.store_dir = line.value.to_owned(),
                "StoreDir" => return Err(invalid("StoreDir")),
                "WantMassQuery" => {
                    info.want_mass_query = match line.value {
                        "1" => true,
                        "0" => false,
                        _ => return Err(invalid("WantMassQuery")),
                    }
                }
                "Priority" => {
                    let digits =
                        !line.value.is_empty() && line.value.bytes().all(|b| b.is_ascii_digit());
                    let value = line.value.parse().ok().filter(|_| digits);
                    info.priority = Some(value.ok_or_else(|| invalid("Priority"))?);
                }
                _ => {}
            }
        }
        Ok(info)
    }

    /// Writes the file: `StoreDir`, `WantMassQuery` (as `1`/`0`), then `Priority` if set.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(out, "StoreDir: {}", self.store_dir);
        let _ = writeln!(out, "WantMassQuery: {}", u8::from(self.want_mass_query));
        if let Some(p) = self.priority {
            let _ = writeln!(out, "Priority: {p}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_renders() {
        let text = "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n";
        let info = CacheInfo::parse(text).unwrap();
        assert_eq!(
            info,
            CacheInfo {
                store_dir: "/nix/store".into(),
                want_mass_query: true,
                priority: Some(40),
            }
        );
        assert_eq!(info.render(), text);
        let bare = CacheInfo {
            store_dir: "/nix/store".into(),
            want_mass_query: false,
            priority: None,
        };
        assert_eq!(bare.render(), "StoreDir: /nix/store\nWantMassQuery: 0\n");
        assert_eq!(CacheInfo::parse(&bare.render()).unwrap(), bare);
    }

    #[test]
    fn lenient_and_defaulted() {
        let info = CacheInfo::parse("Other: x\n\nPriority: 10").unwrap();
        assert_eq!(info.store_dir, STORE_DIR);
        assert!(!info.want_mass_query);
        assert_eq!(info.priority, Some(10));
        assert_eq!(CacheInfo::parse("").unwrap().store_dir, STORE_DIR);
    }

    #[test]
    fn rejects_bad_values() {
        use CacheInfoError as E;
        let bad = |t: &str| CacheInfo::parse(t).unwrap_err();
        assert_eq!(bad("x"), E::MissingColon { line: 1 });
        assert_eq!(
            bad("StoreDir: /nix/store\nPriority: -1"),
            E::InvalidValue {
                line: 2,
                key: "Priority"
            }
        );
        assert_eq!(
            bad("Priority: +1"),
            E::InvalidValue {
                line: 1,
                key: "Priority"
            }
        );
        assert_eq!(
            bad("WantMassQuery: yes"),
            E::InvalidValue {
                line: 1,
                key: "WantMassQuery"
            }
        );
        assert_eq!(
            bad("StoreDir:"),
            E::InvalidValue {
                line: 1,
                key: "StoreDir"
            }
        );
        assert!(matches!(
            bad(&"a".repeat(MAX_TEXT_LEN + 1)),
            E::TooLarge { .. }
        ));
    }

    #[test]
    fn a_text_of_exactly_the_limit_is_accepted() {
        let head = "StoreDir: /nix/store\nPriority: ";
        let zeros = "0".repeat(MAX_TEXT_LEN - head.len() - "40\n".len());
        let text = format!("{head}{zeros}40\n");
        assert_eq!(text.len(), MAX_TEXT_LEN);
        assert_eq!(CacheInfo::parse(&text).unwrap().priority, Some(40));
    }
}
