//! Sizes with units ("10G", "512M"), as the Go ncps's size flags take them, and the formatter
//! that shows a typed default that way in `--help`.

/// Parses a byte count with an optional unit: B, K, M, G, T (powers of 1024; a trailing "B" or
/// "iB" is accepted, so "10GB" and "10GiB" mean the same).
pub fn parse(input: &str) -> Result<u64, String> {
    let s = input.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits_end);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{input:?}: expected a number with an optional unit (K, M, G, T)"))?;
    let unit = unit.trim().to_ascii_uppercase();
    let unit = unit.trim_end_matches("IB").trim_end_matches('B');
    let shift = match unit {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("{input:?}: unknown unit (use K, M, G or T)")),
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{input:?}: too large"))
}

/// Formats `bytes` with the largest binary unit that divides it exactly ("32G", "64K", "1000"),
/// as [`parse`] reads it: flags take their defaults from the libraries' typed constants, and
/// `--help` shows them as a user would write them.
pub fn format(bytes: u64) -> String {
    [("T", 40), ("G", 30), ("M", 20), ("K", 10)]
        .into_iter()
        .find(|(_, shift)| bytes != 0 && bytes.trailing_zeros() >= *shift)
        .map_or_else(
            || bytes.to_string(),
            |(unit, shift)| format!("{}{unit}", bytes >> shift),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("512").unwrap(), 512);
        assert_eq!(parse("10K").unwrap(), 10 << 10);
        assert_eq!(parse("5M").unwrap(), 5 << 20);
        assert_eq!(parse("10G").unwrap(), 10 << 30);
        assert_eq!(parse("10GB").unwrap(), 10 << 30);
        assert_eq!(parse("2TiB").unwrap(), 2 << 40);
        assert_eq!(parse("1B").unwrap(), 1);
        assert!(parse("G").is_err());
        assert!(parse("10X").is_err());
        assert!(parse("99999999999T").is_err());
    }

    #[test]
    fn format_uses_the_largest_exact_unit_and_parses_back() {
        let cases = [
            (0, "0"),
            (1000, "1000"),
            (1536, "1536"),
            (64 << 10, "64K"),
            (5 << 20, "5M"),
            (32 << 30, "32G"),
            (1536 << 30, "1536G"),
            (2 << 40, "2T"),
        ];
        for (bytes, text) in cases {
            assert_eq!(format(bytes), text);
            assert_eq!(parse(text), Ok(bytes), "{text}");
        }
    }
}
