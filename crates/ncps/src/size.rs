//! Sizes with units ("10G", "512M"), as the Go ncps's size flags take them.

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
}
