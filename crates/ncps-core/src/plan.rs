//! Which bytes answer a NAR URL: the one place that decides it.
//!
//! A URL names a compression; the NAR may be stored as a whole file (in that compression or
//! another), as chunks, both, or not yet. [`plan`] picks the cheapest source that yields exactly
//! the named compression and says what it knows up front about those bytes: their size
//! (Content-Length of GET and HEAD) and their SHA-256 (a narinfo's FileHash). The narinfo we
//! render, the answer to HEAD and the body of GET all read the same plan, so the invariant "the
//! narinfo describes exactly the bytes we serve" rests on this one pure function.

use ncps_db::{ChunkedForm, NarOrigin, NarRecord, WholeFile};
use ncps_nix::{Compression, NarKey, Sha256Hash};

/// Where a NAR's bytes come from for one URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// The stored whole file, sent as it is (byte ranges honoured).
    Whole(WholeFile),
    /// The chunks' zstd frames concatenated, a valid `.nar.zst` (byte ranges honoured).
    Spliced(ChunkedForm),
    /// The chunks' frames decompressed and re-encoded in the URL's compression.
    ChunksConverted(ChunkedForm),
    /// The stored whole file decompressed and re-encoded in the URL's compression.
    WholeConverted(WholeFile),
    /// Not stored: the upstream download, as it arrives (converted when `as_is` is false).
    Fetch {
        /// The download delivers the URL's compression byte for byte.
        as_is: bool,
    },
}

impl Source {
    /// True when the bytes are a stored form sent as it is: no conversion, no download.
    pub(crate) fn is_stored_copy(&self) -> bool {
        matches!(self, Self::Whole(_) | Self::Spliced(_))
    }
}

/// Whether and when NARs are chunked: it decides what a download delivers, and whether a
/// whole file is the NAR's lasting form or a passing one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Chunking {
    /// NARs stay whole files.
    Off,
    /// Whole files are stored first, chunked in the background, then deleted.
    Lazy,
    /// Downloads are chunked as they arrive (their bytes are zstd frames).
    Eager,
}

/// How a NAR URL is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ServePlan {
    /// Where the bytes come from.
    pub source: Source,
    /// How many bytes will be sent for the whole NAR, when known before the first one.
    pub size: Option<u64>,
    /// SHA-256 of those bytes, when known before the first one.
    pub file_hash: Option<Sha256Hash>,
}

impl ServePlan {
    /// FileHash and FileSize for a narinfo: both, or neither (a narinfo stating a size without
    /// the hash, or the reverse, would describe bytes we cannot vouch for).
    pub fn file_info(&self) -> (Option<Sha256Hash>, Option<u64>) {
        match (self.file_hash, self.size) {
            (Some(hash), Some(size)) => (Some(hash), Some(size)),
            _ => (None, None),
        }
    }
}

/// The plan for `key`, a URL of the NAR `nar` (its NarHash and NarSize), given its stored
/// forms (`None`: not stored) and, for a NAR not stored yet, where it would be fetched from.
/// `chunking` says what a download delivers and whether whole files last.
///
/// A plain `.nar` is always NarSize bytes hashing to the NarHash, whatever produced it: the
/// conversion is verified against exactly those.
pub(crate) fn plan(
    key: &NarKey,
    nar: (Sha256Hash, u64),
    stored: Option<&NarRecord>,
    origin: Option<&NarOrigin>,
    chunking: Chunking,
) -> ServePlan {
    let eager_chunking = chunking == Chunking::Eager;
    let (nar_hash, nar_size) = nar;
    let plain = |source| ServePlan {
        source,
        size: Some(nar_size),
        file_hash: Some(nar_hash),
    };
    let converted = |source| {
        if key.compression == Compression::None {
            plain(source)
        } else {
            ServePlan {
                source,
                size: None,
                file_hash: None,
            }
        }
    };
    let record = stored.filter(|r| r.whole.is_some() || r.chunked.is_some());
    let Some(record) = record else {
        // Not stored: the download brings the upstream's file, or zstd frames when chunking
        // eagerly. Only the upstream's own file, named by its own FileHash, is known up front.
        let Some(origin) = origin else {
            return converted(Source::Fetch { as_is: false });
        };
        let delivered = if eager_chunking {
            Compression::Zstd
        } else {
            origin.compression
        };
        let as_is = delivered == key.compression;
        // The upstream's own file, with its FileHash and FileSize: under its own name, or under
        // any name when whole files last (with chunking, what the URL serves later is the
        // chunks' splice, which a narinfo must not have described otherwise).
        let lasting = chunking == Chunking::Off || origin.file_hash == Some(key.hash);
        if as_is && !eager_chunking && origin.file_hash.is_some() && lasting {
            return ServePlan {
                source: Source::Fetch { as_is },
                size: origin.file_size,
                file_hash: origin.file_hash,
            };
        }
        return if as_is {
            ServePlan {
                source: Source::Fetch { as_is },
                size: None,
                file_hash: None,
            }
        } else {
            converted(Source::Fetch { as_is })
        };
    };
    // The URL resolved to this NAR: a lasting whole file in its compression is exactly what it
    // names; a passing one (lazy chunking) only under its own name.
    let serves = |w: &WholeFile| {
        w.key == *key || (chunking == Chunking::Off && w.key.compression == key.compression)
    };
    if let Some(whole) = record.whole.filter(serves) {
        return ServePlan {
            source: Source::Whole(whole),
            size: Some(whole.size),
            file_hash: Some(whole.key.hash),
        };
    }
    if let Some(form) = record.chunked {
        if key.compression == Compression::Zstd {
            return ServePlan {
                source: Source::Spliced(form),
                size: Some(form.spliced_size),
                file_hash: form.spliced_hash,
            };
        }
        return converted(Source::ChunksConverted(form));
    }
    let whole = record
        .whole
        .expect("a stored record has a whole file or chunks");
    converted(Source::WholeConverted(whole))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAR_SIZE: u64 = 1000;

    fn h(n: u8) -> Sha256Hash {
        Sha256Hash::digest(&[n])
    }

    fn nar_hash() -> Sha256Hash {
        h(0)
    }

    fn nar() -> (Sha256Hash, u64) {
        (nar_hash(), NAR_SIZE)
    }

    fn whole(c: Compression) -> WholeFile {
        WholeFile {
            key: NarKey::new(h(1), c),
            size: 400,
        }
    }

    fn chunks(spliced_hash: Option<Sha256Hash>) -> ChunkedForm {
        ChunkedForm {
            chunk_count: 3,
            spliced_hash,
            spliced_size: 450,
        }
    }

    fn record(whole: Option<WholeFile>, chunked: Option<ChunkedForm>) -> NarRecord {
        NarRecord {
            nar_hash: nar_hash(),
            nar_size: NAR_SIZE,
            whole,
            whole_delete_after: None,
            chunked,
        }
    }

    fn origin(c: Compression, file_hash: Option<Sha256Hash>) -> NarOrigin {
        NarOrigin {
            upstream_url: "http://127.0.0.1:1".into(),
            nar_url: "nar/x.nar.xz".into(),
            compression: c,
            file_hash,
            file_size: Some(300),
        }
    }

    /// Every stored form against every kind of URL: the source, the size and the hash.
    #[test]
    fn stored_forms_table() {
        let xz = whole(Compression::Xz);
        let ch = chunks(Some(h(2)));
        let plain_key = NarKey::new(nar_hash(), Compression::None);
        let rows: Vec<(&str, NarKey, NarRecord, ServePlan)> = vec![
            (
                "whole file named by its own URL",
                xz.key,
                record(Some(xz), None),
                ServePlan {
                    source: Source::Whole(xz),
                    size: Some(400),
                    file_hash: Some(h(1)),
                },
            ),
            (
                "whole file preferred over chunks for its own URL",
                xz.key,
                record(Some(xz), Some(ch)),
                ServePlan {
                    source: Source::Whole(xz),
                    size: Some(400),
                    file_hash: Some(h(1)),
                },
            ),
            (
                "chunks spliced for a zstd URL",
                NarKey::new(nar_hash(), Compression::Zstd),
                record(None, Some(ch)),
                ServePlan {
                    source: Source::Spliced(ch),
                    size: Some(450),
                    file_hash: Some(h(2)),
                },
            ),
            (
                "splice without a recorded hash: size known, hash not",
                NarKey::new(nar_hash(), Compression::Zstd),
                record(None, Some(chunks(None))),
                ServePlan {
                    source: Source::Spliced(chunks(None)),
                    size: Some(450),
                    file_hash: None,
                },
            ),
            (
                "chunks preferred over converting another whole file",
                NarKey::new(nar_hash(), Compression::Zstd),
                record(Some(xz), Some(ch)),
                ServePlan {
                    source: Source::Spliced(ch),
                    size: Some(450),
                    file_hash: Some(h(2)),
                },
            ),
            (
                "plain NAR from chunks",
                plain_key,
                record(None, Some(ch)),
                ServePlan {
                    source: Source::ChunksConverted(ch),
                    size: Some(NAR_SIZE),
                    file_hash: Some(nar_hash()),
                },
            ),
            (
                "plain NAR from a whole file",
                plain_key,
                record(Some(xz), None),
                ServePlan {
                    source: Source::WholeConverted(xz),
                    size: Some(NAR_SIZE),
                    file_hash: Some(nar_hash()),
                },
            ),
            (
                "xz from chunks: converted, nothing known up front",
                NarKey::new(h(9), Compression::Xz),
                record(None, Some(ch)),
                ServePlan {
                    source: Source::ChunksConverted(ch),
                    size: None,
                    file_hash: None,
                },
            ),
            (
                "the NarHash URL of a NAR stored whole in the URL's compression",
                NarKey::new(nar_hash(), Compression::Xz),
                record(Some(whole(Compression::Xz)), None),
                ServePlan {
                    source: Source::Whole(whole(Compression::Xz)),
                    size: Some(400),
                    file_hash: Some(h(1)),
                },
            ),
            (
                "an old xz URL of a NAR now stored as zstd whole file",
                NarKey::new(h(9), Compression::Xz),
                record(Some(whole(Compression::Zstd)), None),
                ServePlan {
                    source: Source::WholeConverted(whole(Compression::Zstd)),
                    size: None,
                    file_hash: None,
                },
            ),
        ];
        for (name, key, record, expected) in rows {
            assert_eq!(
                plan(&key, nar(), Some(&record), None, Chunking::Off),
                expected,
                "{name}"
            );
        }
    }

    /// NARs known from a narinfo but not stored: what the download will deliver.
    #[test]
    fn not_stored_table() {
        let rows = [
            (
                "upstream file named by its FileHash",
                NarKey::new(h(5), Compression::Xz),
                origin(Compression::Xz, Some(h(5))),
                Chunking::Off,
                (Source::Fetch { as_is: true }, Some(300), Some(h(5))),
            ),
            (
                "upstream gave no FileHash: the size is not vouched for",
                NarKey::new(nar_hash(), Compression::Xz),
                origin(Compression::Xz, None),
                Chunking::Off,
                (Source::Fetch { as_is: true }, None, None),
            ),
            (
                "eager chunking delivers frames of unknown size",
                NarKey::new(nar_hash(), Compression::Zstd),
                origin(Compression::Zstd, Some(nar_hash())),
                Chunking::Eager,
                (Source::Fetch { as_is: true }, None, None),
            ),
            (
                "the NarHash URL names the upstream's own file when compressions agree",
                NarKey::new(nar_hash(), Compression::Zstd),
                origin(Compression::Zstd, Some(h(5))),
                Chunking::Off,
                (Source::Fetch { as_is: true }, Some(300), Some(h(5))),
            ),
            (
                "lazy chunking: the NarHash URL will serve the splice, not the upstream file",
                NarKey::new(nar_hash(), Compression::Zstd),
                origin(Compression::Zstd, Some(h(5))),
                Chunking::Lazy,
                (Source::Fetch { as_is: true }, None, None),
            ),
            (
                "plain NAR while the xz download runs",
                NarKey::new(nar_hash(), Compression::None),
                origin(Compression::Xz, Some(h(5))),
                Chunking::Off,
                (
                    Source::Fetch { as_is: false },
                    Some(NAR_SIZE),
                    Some(nar_hash()),
                ),
            ),
            (
                "another compression than the download's",
                NarKey::new(nar_hash(), Compression::Bzip2),
                origin(Compression::Xz, Some(h(5))),
                Chunking::Off,
                (Source::Fetch { as_is: false }, None, None),
            ),
        ];
        for (name, key, origin, chunking, (source, size, file_hash)) in rows {
            let expected = ServePlan {
                source,
                size,
                file_hash,
            };
            assert_eq!(
                plan(&key, nar(), None, Some(&origin), chunking),
                expected,
                "{name}"
            );
            // A record with no form left is the same as no record.
            assert_eq!(
                plan(
                    &key,
                    nar(),
                    Some(&record(None, None)),
                    Some(&origin),
                    chunking
                ),
                expected,
                "{name} (empty record)"
            );
        }
    }

    /// What the reader does when storage lost the form a plan picked: it forgets that form
    /// and plans again, down to fetching from the origin.
    #[test]
    fn a_missing_form_falls_back_to_the_next() {
        let xz = whole(Compression::Xz);
        let ch = chunks(Some(h(2)));
        let key = NarKey::new(nar_hash(), Compression::None);
        let both = record(Some(xz), Some(ch));
        assert_eq!(
            plan(&key, nar(), Some(&both), None, Chunking::Off).source,
            Source::ChunksConverted(ch)
        );
        let chunks_lost = record(Some(xz), None);
        assert_eq!(
            plan(&key, nar(), Some(&chunks_lost), None, Chunking::Off).source,
            Source::WholeConverted(xz)
        );
        let o = origin(Compression::Xz, Some(h(1)));
        let everything_lost = record(None, None);
        let last = plan(
            &xz.key,
            nar(),
            Some(&everything_lost),
            Some(&o),
            Chunking::Off,
        );
        assert_eq!(last.source, Source::Fetch { as_is: true });
        assert_eq!(last.size, Some(300));
    }

    #[test]
    fn narinfos_get_both_file_fields_or_neither() {
        let spliced = plan(
            &NarKey::new(nar_hash(), Compression::Zstd),
            nar(),
            Some(&record(None, Some(chunks(None)))),
            None,
            Chunking::Off,
        );
        assert_eq!(spliced.size, Some(450));
        assert_eq!(spliced.file_info(), (None, None));
        let plain = plan(
            &NarKey::new(nar_hash(), Compression::None),
            nar(),
            Some(&record(None, Some(chunks(None)))),
            None,
            Chunking::Off,
        );
        assert_eq!(plain.file_info(), (Some(nar_hash()), Some(NAR_SIZE)));
    }

    /// Under lazy chunking a whole file is a passing form: the NarHash URL is not answered
    /// with it as such (its FileHash would change once the chunks replace it).
    #[test]
    fn a_passing_whole_file_is_not_claimed_by_the_narhash_url() {
        let key = NarKey::new(nar_hash(), Compression::Zstd);
        let stored = record(Some(whole(Compression::Zstd)), None);
        let lazy = plan(&key, nar(), Some(&stored), None, Chunking::Lazy);
        assert_eq!(
            lazy.source,
            Source::WholeConverted(whole(Compression::Zstd))
        );
        assert_eq!(lazy.file_info(), (None, None));
        let off = plan(&key, nar(), Some(&stored), None, Chunking::Off);
        assert_eq!(off.source, Source::Whole(whole(Compression::Zstd)));
    }
}
