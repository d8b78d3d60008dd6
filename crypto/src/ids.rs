//! Public identifiers: vault, epoch, chunk, entry, version and device ids.
//!
//! None of these is secret. Byte ids print as lowercase hex; [`DeviceId`] prints
//! Syncthing-style (base32 with Luhn check characters).

use std::fmt;
use std::str::FromStr;

use crate::error::{CryptoError, ParseIdError};

/// Fills `buf` from the operating system's random number generator.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), getrandom::Error> {
    getrandom::getrandom(buf)
}

pub(crate) fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    f.write_str(&s)
}

fn parse_hex<const N: usize>(s: &str) -> Result<[u8; N], ParseIdError> {
    let mut out = [0u8; N];
    let mut count = 0usize;
    for (position, ch) in s.chars().enumerate() {
        let Some(v) = ch.to_digit(16) else {
            return Err(ParseIdError::InvalidCharacter { ch, position });
        };
        if let Some(o) = out.get_mut(position / 2) {
            // `to_digit(16)` is below 16, so the cast is lossless.
            let v = v as u8;
            *o = if position % 2 == 0 { v << 4 } else { *o | v };
        }
        count += 1;
    }
    if count != 2 * N {
        return Err(ParseIdError::WrongLength {
            expected: 2 * N,
            got: count,
        });
    }
    Ok(out)
}

macro_rules! hex_id_impls {
    ($name:ident, $len:literal) => {
        impl $name {
            /// Length of this id in bytes.
            pub const LEN: usize = $len;

            /// Wraps raw bytes.
            pub const fn from_bytes(bytes: [u8; $len]) -> Self {
                Self(bytes)
            }

            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "("))?;
                write_hex(f, &self.0)?;
                f.write_str(")")
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex(f, &self.0)
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            /// Parses the hex form that `Display` prints (either case).
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_hex::<$len>(s).map(Self)
            }
        }

        impl AsRef<[u8]> for $name {
            fn as_ref(&self) -> &[u8] {
                &self.0
            }
        }
    };
}

/// A vault's id: 16 random bytes chosen when the vault is made.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VaultId(pub [u8; 16]);
hex_id_impls!(VaultId, 16);

impl VaultId {
    /// Makes a new random vault id.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut b = [0u8; 16];
        fill_random(&mut b)?;
        Ok(Self(b))
    }
}

/// A version's id: 16 random bytes chosen when the version is committed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VersionId(pub [u8; 16]);
hex_id_impls!(VersionId, 16);

impl VersionId {
    /// Makes a new random version id.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut b = [0u8; 16];
        fill_random(&mut b)?;
        Ok(Self(b))
    }
}

/// A chunk's id: `BLAKE3-keyed(chunk-id key, plaintext)`, see
/// [`VaultIdentityKeys::chunk_id`](crate::VaultIdentityKeys::chunk_id).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId([u8; 32]);
hex_id_impls!(ChunkId, 32);

/// An entry's key as the server sees it: `BLAKE3-keyed(entry-key key, name)`, see
/// [`VaultIdentityKeys::entry_key`](crate::VaultIdentityKeys::entry_key).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryKey([u8; 32]);
hex_id_impls!(EntryKey, 32);

/// A generation of a vault's key. Epochs are numbered from [`Epoch::FIRST`] and grow by one at
/// each rotation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Epoch(pub u32);

impl Epoch {
    /// The epoch a vault is created with.
    pub const FIRST: Epoch = Epoch(0);

    /// The epoch after this one, or `None` when the counter is exhausted.
    pub fn next(self) -> Option<Epoch> {
        self.0.checked_add(1).map(Epoch)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

// ---------------------------------------------------------------------------------------------
// DeviceId

const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
/// Base32 characters of 32 bytes (256 bits, 4 pad bits).
const DEVICE_ID_DATA_CHARS: usize = 52;
const DEVICE_ID_GROUP_DATA: usize = 13;
/// Characters of the displayed id without dashes: 52 data + 4 check characters.
const DEVICE_ID_CHARS: usize = 56;

/// A device's id: `BLAKE3(Ed25519 identity public key)`.
///
/// Displayed Syncthing-style: the 32 bytes in base32 (RFC 4648 alphabet, upper case, no padding,
/// 52 characters), cut into 4 groups of 13, each followed by a Luhn mod 32 check character
/// (56 characters), shown as 8 groups of 7 joined by `-`. Parsing ignores case, dashes and
/// spaces, reads the look-alikes `0`, `1` and `8` as `O`, `I` and `B`, and rejects a wrong
/// check character.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId([u8; 32]);

impl DeviceId {
    /// Wraps raw id bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw id bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The id of the device whose Ed25519 identity public key is `identity`.
    pub fn from_identity_key(identity: &[u8; 32]) -> Self {
        Self(*blake3::hash(identity).as_bytes())
    }

    fn base32(&self) -> [u8; DEVICE_ID_DATA_CHARS] {
        let mut out = [0u8; DEVICE_ID_DATA_CHARS];
        let mut acc: u32 = 0;
        let mut bits = 0u32;
        let mut n = 0usize;
        for &b in &self.0 {
            acc = ((acc << 8) | u32::from(b)) & 0xfff;
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                out[n] = B32[((acc >> bits) & 31) as usize];
                n += 1;
            }
        }
        if bits > 0 {
            out[n] = B32[((acc << (5 - bits)) & 31) as usize];
        }
        out
    }
}

fn b32_value(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'2'..=b'7' => Some(c - b'2' + 26),
        _ => None,
    }
}

/// Syncthing's Luhn mod 32 check character over base32 characters (factor 1, 2, 1, … from
/// the left).
fn luhn32(group: &[u8]) -> u8 {
    let mut factor = 1u32;
    let mut sum = 0u32;
    for &c in group {
        let cp = u32::from(b32_value(c).unwrap_or(0));
        let addend = factor * cp;
        factor = if factor == 2 { 1 } else { 2 };
        sum += addend / 32 + addend % 32;
    }
    B32[((32 - sum % 32) % 32) as usize]
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let data = self.base32();
        let mut full = [0u8; DEVICE_ID_CHARS];
        for (g, group) in data.chunks_exact(DEVICE_ID_GROUP_DATA).enumerate() {
            let at = g * (DEVICE_ID_GROUP_DATA + 1);
            full[at..at + DEVICE_ID_GROUP_DATA].copy_from_slice(group);
            full[at + DEVICE_ID_GROUP_DATA] = luhn32(group);
        }
        let mut s = String::with_capacity(DEVICE_ID_CHARS + 7);
        for (i, part) in full.chunks_exact(7).enumerate() {
            if i > 0 {
                s.push('-');
            }
            s.extend(part.iter().map(|&c| char::from(c)));
        }
        f.write_str(&s)
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
    }
}

impl FromStr for DeviceId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut chars = Vec::with_capacity(DEVICE_ID_CHARS);
        for ch in s.chars().filter(|c| *c != '-' && !c.is_whitespace()) {
            let position = chars.len();
            let up = match ch.to_ascii_uppercase() {
                '0' => 'O',
                '1' => 'I',
                '8' => 'B',
                c => c,
            };
            let byte = u8::try_from(up).ok().filter(|b| b32_value(*b).is_some());
            match byte {
                Some(b) => chars.push(b),
                None => return Err(ParseIdError::InvalidCharacter { ch, position }),
            }
        }
        if chars.len() != DEVICE_ID_CHARS {
            return Err(ParseIdError::WrongLength {
                expected: DEVICE_ID_CHARS,
                got: chars.len(),
            });
        }
        let mut data = Vec::with_capacity(DEVICE_ID_DATA_CHARS);
        for (g, group) in chars.chunks_exact(DEVICE_ID_GROUP_DATA + 1).enumerate() {
            let (body, check) = group.split_at(DEVICE_ID_GROUP_DATA);
            if check.first() != Some(&luhn32(body)) {
                return Err(ParseIdError::BadCheckCharacter { group: g + 1 });
            }
            data.extend_from_slice(body);
        }
        let mut out = [0u8; 32];
        let mut acc: u32 = 0;
        let mut bits = 0u32;
        let mut n = 0usize;
        for &c in &data {
            acc = (acc << 5) | u32::from(b32_value(c).unwrap_or(0));
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                if let Some(o) = out.get_mut(n) {
                    *o = (acc >> bits) as u8;
                }
                n += 1;
            }
            acc &= (1 << bits) - 1;
        }
        if acc != 0 {
            return Err(ParseIdError::NonCanonical);
        }
        Ok(Self(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_matches_syncthing_reference() {
        // Syncthing's own formatted device id example (lib/protocol/deviceid_test.go).
        let id = "P56IOI7-MZJNU2Y-IQGDREY-DM2MGTI-MGL3BXN-PQ6W5BM-TBBZ4TJ-XZWICQ2";
        let parsed: DeviceId = id.parse().unwrap();
        assert_eq!(parsed.to_string(), id);
        assert_eq!(luhn32(b"P56IOI7MZJNU2"), b'Y');
        assert_eq!(luhn32(b"IQGDREYDM2MGT"), b'I');
    }

    #[test]
    fn device_id_round_trip_and_forms() {
        for seed in 0u8..64 {
            let id = DeviceId::from_identity_key(&[seed; 32]);
            let s = id.to_string();
            assert_eq!(s.len(), 63);
            assert_eq!(s.split('-').count(), 8);
            assert!(s.split('-').all(|g| g.len() == 7));
            assert_eq!(s.parse::<DeviceId>().unwrap(), id);
            let compact: String = s.chars().filter(|c| *c != '-').collect();
            assert_eq!(compact.to_lowercase().parse::<DeviceId>().unwrap(), id);
            let spaced = s.replace('-', " ");
            assert_eq!(spaced.parse::<DeviceId>().unwrap(), id);
        }
        let zero = DeviceId::from_bytes([0; 32]).to_string();
        // "A" is 0: the look-alike digits map to letters but zero bytes stay "A".
        assert!(zero.starts_with("AAAAAAA"));
        assert!(format!("{:?}", DeviceId::from_bytes([0; 32])).starts_with("DeviceId(AAAAAAA-"));
    }

    #[test]
    fn device_id_rejects_each_bad_check_char() {
        let id = DeviceId::from_identity_key(b"some identity key, 32 bytes long");
        let compact: Vec<u8> = id.to_string().bytes().filter(|c| *c != b'-').collect();
        for group in 0..4 {
            let pos = group * 14 + 13;
            let mut bad = compact.clone();
            bad[pos] = if bad[pos] == b'A' { b'B' } else { b'A' };
            let s = String::from_utf8(bad).unwrap();
            assert_eq!(
                s.parse::<DeviceId>(),
                Err(ParseIdError::BadCheckCharacter { group: group + 1 })
            );
            let msg = s.parse::<DeviceId>().unwrap_err().to_string();
            assert!(msg.contains("mistyped"), "{msg}");
        }
        // A mistyped data character is caught by its group's check character.
        let mut bad = compact.clone();
        bad[20] = if bad[20] == b'C' { b'D' } else { b'C' };
        assert_eq!(
            String::from_utf8(bad).unwrap().parse::<DeviceId>(),
            Err(ParseIdError::BadCheckCharacter { group: 2 })
        );
    }

    #[test]
    fn device_id_rejects_bad_text() {
        let id = DeviceId::from_identity_key(&[9; 32]).to_string();
        assert!(matches!(
            id[..id.len() - 1].parse::<DeviceId>(),
            Err(ParseIdError::WrongLength {
                expected: 56,
                got: 55
            })
        ));
        assert!(matches!(
            format!("{id}A").parse::<DeviceId>(),
            Err(ParseIdError::WrongLength { .. })
        ));
        assert!(matches!(
            id.replacen(|c: char| c.is_ascii_alphabetic(), "!", 1)
                .parse::<DeviceId>(),
            Err(ParseIdError::InvalidCharacter { ch: '!', .. })
        ));
        assert!("".parse::<DeviceId>().is_err());
        assert!("é".repeat(56).parse::<DeviceId>().is_err());
    }

    #[test]
    fn device_id_rejects_non_canonical_tail() {
        // Set stray low bits in the last data character and fix up the check character.
        let id = DeviceId::from_bytes([0; 32]);
        let compact: Vec<u8> = id.to_string().bytes().filter(|c| *c != b'-').collect();
        let mut bad = compact;
        bad[3 * 14 + 12] = b'B';
        bad[3 * 14 + 13] = luhn32(&bad[3 * 14..3 * 14 + 13]);
        assert_eq!(
            String::from_utf8(bad).unwrap().parse::<DeviceId>(),
            Err(ParseIdError::NonCanonical)
        );
    }

    #[test]
    fn device_id_accepts_look_alike_digits() {
        let id = DeviceId::from_bytes([0xff; 32]);
        let s = id.to_string();
        // No 0/1/8 are emitted, but any O/I/B typed as a digit still parses.
        let typed = s.replace('O', "0").replace('I', "1").replace('B', "8");
        assert_eq!(typed.parse::<DeviceId>().unwrap(), id);
    }

    #[test]
    fn hex_ids_round_trip() {
        let v = VaultId([0xab; 16]);
        assert_eq!(v.to_string(), "ab".repeat(16));
        assert_eq!(format!("{v:?}"), format!("VaultId({})", "ab".repeat(16)));
        assert_eq!(v.to_string().parse::<VaultId>().unwrap(), v);
        assert_eq!("AB".repeat(16).parse::<VaultId>().unwrap(), v);
        let c = ChunkId::from_bytes([1; 32]);
        assert_eq!(c.to_string().parse::<ChunkId>().unwrap(), c);
        assert!(matches!(
            "zz".repeat(16).parse::<VaultId>(),
            Err(ParseIdError::InvalidCharacter {
                ch: 'z',
                position: 0
            })
        ));
        assert!(matches!(
            "ab".parse::<VaultId>(),
            Err(ParseIdError::WrongLength {
                expected: 32,
                got: 2
            })
        ));
        assert!("é".repeat(16).parse::<VaultId>().is_err());
        assert_ne!(VaultId::generate().unwrap(), VaultId::generate().unwrap());
        assert_ne!(
            VersionId::generate().unwrap(),
            VersionId::generate().unwrap()
        );
        assert_eq!(Epoch(3).next(), Some(Epoch(4)));
        assert_eq!(Epoch(u32::MAX).next(), None);
    }
}
