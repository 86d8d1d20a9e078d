//! The `Key: value` line format shared by `.narinfo` and `nix-cache-info`.
//!
//! Both files are parsed the same lenient way Nix does (blank lines skipped, a missing final
//! newline accepted), so the splitting lives in one place.

/// Characters trimmed around keys' values; `\r` so CRLF files from odd servers still parse.
const TRIM: &[char] = &[' ', '\t', '\r'];

/// One non-blank line split at its first `:`.
pub(crate) struct Line<'a> {
    /// 1-based line number, for error messages.
    pub(crate) number: usize,
    /// Text before the first `:`, untrimmed.
    pub(crate) key: &'a str,
    /// Text after the first `:`, with surrounding spaces, tabs and `\r` removed.
    pub(crate) value: &'a str,
}

/// Splits `text` into `Key: value` lines, skipping blank lines.
///
/// Yields `Err(line_number)` for a non-blank line without a `:`.
pub(crate) fn lines(text: &str) -> impl Iterator<Item = Result<Line<'_>, usize>> {
    text.split('\n')
        .enumerate()
        .map(|(i, line)| (i + 1, line))
        .filter(|(_, line)| !line.trim_matches(TRIM).is_empty())
        .map(|(number, line)| match line.split_once(':') {
            Some((key, value)) => Ok(Line {
                number,
                key,
                value: value.trim_matches(TRIM),
            }),
            None => Err(number),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines() {
        let got: Vec<_> = lines("A: 1\n\n  \nB:2\r\nC: x: y \nD")
            .map(|r| r.map(|l| (l.number, l.key, l.value)))
            .collect();
        assert_eq!(
            got,
            vec![
                Ok((1, "A", "1")),
                Ok((4, "B", "2")),
                Ok((5, "C", "x: y")),
                Err(6)
            ]
        );
    }
}
