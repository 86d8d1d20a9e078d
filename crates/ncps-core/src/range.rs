use ncps_store::ByteRange;

/// A single byte range as a client asked for it, before the NAR's size is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// `bytes=start-` or `bytes=start-end` (end inclusive, as in HTTP).
    From {
        /// First byte.
        start: u64,
        /// Last byte, inclusive; `None` means to the end.
        end: Option<u64>,
    },
    /// `bytes=-n`: the last `n` bytes.
    Suffix(u64),
}

impl RangeRequest {
    /// Parses a `Range` header. Multiple ranges and other units return `None`, and the whole
    /// body is sent instead, which HTTP allows.
    pub fn parse_header(value: &str) -> Option<Self> {
        let spec = value.trim().strip_prefix("bytes=")?;
        if spec.contains(',') {
            return None;
        }
        let (start, end) = spec.split_once('-')?;
        let (start, end) = (start.trim(), end.trim());
        if start.is_empty() {
            return end.parse().ok().map(Self::Suffix);
        }
        let start = start.parse().ok()?;
        let end = if end.is_empty() {
            None
        } else {
            Some(end.parse().ok()?)
        };
        if end.is_some_and(|e| e < start) {
            return None;
        }
        Some(Self::From { start, end })
    }

    /// The half-open range to send for an object of `size` bytes, or `None` when the request
    /// cannot be satisfied (416).
    pub fn resolve(self, size: u64) -> Option<ByteRange> {
        match self {
            Self::From { start, end } => {
                if start >= size {
                    return None;
                }
                let end = end.map_or(size, |e| e.saturating_add(1).min(size));
                Some(ByteRange { start, end })
            }
            Self::Suffix(n) => {
                if n == 0 || size == 0 {
                    return None;
                }
                Some(ByteRange {
                    start: size.saturating_sub(n),
                    end: size,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_resolves() {
        let r = |s| RangeRequest::parse_header(s);
        let b = |start, end| Some(ByteRange { start, end });
        assert_eq!(r("bytes=0-99").unwrap().resolve(1000), b(0, 100));
        assert_eq!(r("bytes=900-").unwrap().resolve(1000), b(900, 1000));
        assert_eq!(r("bytes=900-5000").unwrap().resolve(1000), b(900, 1000));
        assert_eq!(r("bytes=-10").unwrap().resolve(1000), b(990, 1000));
        assert_eq!(r("bytes=-5000").unwrap().resolve(1000), b(0, 1000));
        assert_eq!(r("bytes=1000-").unwrap().resolve(1000), None);
        assert_eq!(r("bytes=-0").unwrap().resolve(1000), None);
        assert_eq!(r("bytes=5-1"), None);
        assert_eq!(r("bytes=0-1,5-6"), None);
        assert_eq!(r("items=0-1"), None);
        assert_eq!(r("bytes=a-b"), None);
    }
}
