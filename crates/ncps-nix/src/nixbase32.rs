//! Nix's own base-32 encoding ("nixbase32").
//!
//! Nix prints hashes and store-path hashes in a base-32 variant that differs from RFC 4648 in
//! two ways: the alphabet omits `e`, `o`, `u` and `t` (so hashes never spell words), and the
//! bytes are read as one little-endian number whose most significant digit is printed first.
//! Getting either detail wrong yields valid-looking but different strings, so this module is
//! checked against the real `nix hash to-base32` output in the test vectors.

/// The 32 digits, in value order.
const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Why a string is not valid nixbase32.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Nixbase32Error {
    /// A character outside the nixbase32 alphabet.
    #[error("invalid nixbase32 character {ch:?} at position {pos}")]
    InvalidChar {
        /// The offending character.
        ch: char,
        /// Its character position in the input.
        pos: usize,
    },
    /// No byte length encodes to exactly this many characters.
    #[error("{len} is not a valid nixbase32 length")]
    InvalidLength {
        /// Number of characters in the input.
        len: usize,
    },
    /// The leading digit carries bits beyond the decoded length, so the string is not the
    /// canonical encoding of any byte string (Nix rejects these as well).
    #[error("nixbase32 string is not canonical (leading digit overflows)")]
    NonCanonical,
}

/// Number of characters `encode` produces for `byte_len` bytes (32 bytes → 52, 20 → 32).
pub fn encoded_len(byte_len: usize) -> usize {
    if byte_len == 0 {
        0
    } else {
        (byte_len * 8 - 1) / 5 + 1
    }
}

/// Number of bytes a canonical nixbase32 string of `char_len` characters decodes to.
pub fn decoded_len(char_len: usize) -> usize {
    char_len * 5 / 8
}

/// Encodes bytes the way Nix prints hashes.
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let bit = n * 5;
        let (i, j) = (bit / 8, bit % 8);
        let low = u16::from(bytes[i]) >> j;
        let high = bytes.get(i + 1).map_or(0, |&b| u16::from(b) << (8 - j));
        out.push(char::from(ALPHABET[usize::from((low | high) & 0x1f)]));
    }
    out
}

/// Marks a byte that is not a digit in [`DIGIT_VALUES`].
const NOT_A_DIGIT: u8 = u8::MAX;

/// Each byte's digit value, or [`NOT_A_DIGIT`]: every store path and hash served is decoded,
/// so this is one load per character rather than a search of the alphabet.
const DIGIT_VALUES: [u8; 256] = {
    let mut table = [NOT_A_DIGIT; 256];
    let mut value = 0;
    while value < ALPHABET.len() {
        table[ALPHABET[value] as usize] = value as u8;
        value += 1;
    }
    table
};

/// Value of one nixbase32 digit, if it is one.
fn digit_value(c: u8) -> Option<u8> {
    Some(DIGIT_VALUES[usize::from(c)]).filter(|&v| v != NOT_A_DIGIT)
}

/// Decodes a nixbase32 string, rejecting anything `encode` could not have produced.
pub fn decode(s: &str) -> Result<Vec<u8>, Nixbase32Error> {
    let len = s.len();
    let byte_len = decoded_len(len);
    if encoded_len(byte_len) != len {
        return Err(Nixbase32Error::InvalidLength { len });
    }
    let mut out = vec![0u8; byte_len];
    for (pos, &c) in s.as_bytes().iter().enumerate() {
        let digit = digit_value(c).ok_or_else(|| Nixbase32Error::InvalidChar {
            // Every earlier byte was an ASCII digit, so `pos` is a char boundary and also the
            // character position.
            ch: s[pos..].chars().next().unwrap_or('\u{fffd}'),
            pos,
        })?;
        let n = len - pos - 1;
        let bit = n * 5;
        let (i, j) = (bit / 8, bit % 8);
        let wide = u16::from(digit) << j;
        // Cannot fail: the length check above bounds `i` to the last byte.
        let Some(slot) = out.get_mut(i) else {
            return Err(Nixbase32Error::InvalidLength { len });
        };
        *slot |= (wide & 0xff) as u8;
        let carry = (wide >> 8) as u8;
        match out.get_mut(i + 1) {
            Some(next) => *next |= carry,
            None if carry != 0 => return Err(Nixbase32Error::NonCanonical),
            None => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_the_alphabet_are_digits_each_its_position() {
        for byte in 0..=u8::MAX {
            let position = ALPHABET.iter().position(|&a| a == byte).map(|p| p as u8);
            assert_eq!(digit_value(byte), position, "byte {byte}");
        }
    }

    #[test]
    fn lengths() {
        assert_eq!(encoded_len(32), 52);
        assert_eq!(encoded_len(20), 32);
        assert_eq!(encoded_len(0), 0);
        assert_eq!(encoded_len(1), 2);
        assert_eq!(decoded_len(52), 32);
        assert_eq!(decoded_len(32), 20);
    }

    #[test]
    fn known_values() {
        assert_eq!(encode(&[]), "");
        assert_eq!(encode(&[0x1f]), "0z");
        assert_eq!(encode(&[0xff]), "7z");
        assert_eq!(decode("7z").unwrap(), vec![0xff]);
        assert_eq!(encode(&[0u8; 20]), "0".repeat(32));
    }

    #[test]
    fn round_trips_every_length() {
        for n in 0..70usize {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            let s = encode(&bytes);
            assert_eq!(s.len(), encoded_len(n));
            assert_eq!(decode(&s).unwrap(), bytes, "length {n}");
        }
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(
            decode("e0"),
            Err(Nixbase32Error::InvalidChar { ch: 'e', pos: 0 })
        ));
        assert!(matches!(
            decode("é"),
            Err(Nixbase32Error::InvalidChar { ch: 'é', pos: 0 })
        ));
        assert!(matches!(
            decode("000"),
            Err(Nixbase32Error::InvalidLength { len: 3 })
        ));
        // 2 chars carry 10 bits for 1 byte: a leading digit >= 8 overflows.
        assert_eq!(decode("8z"), Err(Nixbase32Error::NonCanonical));
        // 52 chars carry 260 bits for 32 bytes: a leading digit >= 16 overflows.
        let mut s = "z".to_string();
        s.push_str(&"0".repeat(51));
        assert_eq!(decode(&s), Err(Nixbase32Error::NonCanonical));
    }
}
