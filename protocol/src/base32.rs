//! Lowercase RFC 4648 base32 without padding, as enrolment codes, vault codes and enrolment
//! tokens spell their bytes. Decoding ignores `-` and whitespace (so a code broken over lines or
//! grouped with dashes still reads) and accepts upper case.

/// The RFC 4648 alphabet, lowercase.
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Why a text is not base32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Base32Error {
    /// A character outside the alphabet.
    BadCharacter(char),
    /// Leftover bits that are not the zero padding of the last character: a cut or extended text.
    BadLength,
}

/// Appends the base32 spelling of `bytes` to `out` (which may be a zeroizing buffer).
pub fn encode_into(bytes: &[u8], out: &mut String) {
    let mut acc: u16 = 0;
    let mut bits = 0u32;
    let mut push = |v: u16| {
        if let Some(&c) = ALPHABET.get(usize::from(v & 31)) {
            out.push(char::from(c));
        }
    };
    for &b in bytes {
        acc = (acc << 8) | u16::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            push(acc >> bits);
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        push(acc << (5 - bits));
    }
}

/// The base32 spelling of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    encode_into(bytes, &mut out);
    out
}

/// Appends the bytes `text` spells to `out` (which may be a zeroizing buffer).
///
/// # Errors
///
/// [`Base32Error`] for a character outside the alphabet or a text of impossible length.
pub fn decode_into(text: &str, out: &mut Vec<u8>) -> Result<(), Base32Error> {
    out.reserve(text.len() * 5 / 8);
    let mut acc: u16 = 0;
    let mut bits = 0u32;
    for c in text.chars() {
        if c == '-' || c.is_whitespace() {
            continue;
        }
        let v = match c.to_ascii_lowercase() {
            l @ 'a'..='z' => l as u16 - 'a' as u16,
            d @ '2'..='7' => d as u16 - '2' as u16 + 26,
            other => return Err(Base32Error::BadCharacter(other)),
        };
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // Leftover bits must be the zero padding of the last character.
    if bits >= 5 || acc != 0 {
        return Err(Base32Error::BadLength);
    }
    Ok(())
}

/// The bytes `text` spells.
///
/// # Errors
///
/// As [`decode_into`].
pub fn decode(text: &str) -> Result<Vec<u8>, Base32Error> {
    let mut out = Vec::new();
    decode_into(text, &mut out)?;
    Ok(out)
}
