//! Control-plane secrets: the operator's admin token and tenants' API keys.
//!
//! Both read `<prefix>_<secret>_<checksum>`:
//!
//! - `prefix` is `dzk` for an API key and `dza` for the admin token, so that secret scanners
//!   (and people) can tell what leaked;
//! - `secret` is [`SECRET_LEN`] base62 characters (about 190 random bits);
//! - `checksum` is the CRC-32 of `<prefix>_<secret>` in 6 base62 characters, zero-padded, so
//!   that a scanner can tell a real key from a random string without asking the server.
//!
//! The server shows a secret once and keeps only `BLAKE3-derive_key(context, secret text)`;
//! hashes are compared in constant time. [`Secret`] zeroizes its text on drop and never prints
//! it in `Debug`.

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::store::StoreError;

/// Prefix of tenant API keys.
pub const API_KEY_PREFIX: &str = "dzk";
/// Prefix of the operator's admin token.
pub const ADMIN_TOKEN_PREFIX: &str = "dza";
/// Base62 characters of randomness in a generated secret.
pub const SECRET_LEN: usize = 32;
/// Shortest secret part accepted (an admin token set by the operator may be longer).
pub const MIN_SECRET_LEN: usize = 22;
/// Base62 characters of the checksum.
pub const CHECKSUM_LEN: usize = 6;
/// Longest text that can be a secret of ours; longer input is refused before hashing.
const MAX_SECRET_TEXT: usize = 256;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// What a secret is for; it picks the prefix and the hash context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecretKind {
    /// A tenant API key (`dzk_...`).
    ApiKey,
    /// The operator's admin token (`dza_...`).
    AdminToken,
}

impl SecretKind {
    fn prefix(self) -> &'static str {
        match self {
            Self::ApiKey => API_KEY_PREFIX,
            Self::AdminToken => ADMIN_TOKEN_PREFIX,
        }
    }

    fn context(self) -> &'static str {
        match self {
            Self::ApiKey => "dooz-server api key v1",
            Self::AdminToken => "dooz-server admin token v1",
        }
    }
}

/// A secret's stored form: a keyed BLAKE3 hash of its text.
///
/// No `PartialEq`: compare with [`matches`](Self::matches), in constant time.
#[derive(Clone)]
pub struct SecretHash(pub(crate) [u8; 32]);

impl SecretHash {
    /// Constant-time comparison.
    pub fn matches(&self, other: &SecretHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// The hash bytes (stored; not secret).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash(..)")
    }
}

/// A secret's text, to be shown once. Zeroized on drop; `Debug` does not print it; not `Copy`,
/// and no `PartialEq` (compare [`hash`](Self::hash)es, in constant time).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Secret {
    text: String,
    #[zeroize(skip)]
    kind: SecretKind,
}

impl Secret {
    /// Makes a new random secret of `kind`.
    pub fn generate(kind: SecretKind) -> Result<Self, StoreError> {
        let mut text = String::with_capacity(4 + SECRET_LEN + 1 + CHECKSUM_LEN);
        text.push_str(kind.prefix());
        text.push('_');
        let mut filled = 0;
        while filled < SECRET_LEN {
            let mut random = [0u8; 64];
            getrandom::getrandom(&mut random).map_err(|e| StoreError::Unavailable {
                reason: format!("the operating system's random number generator failed: {e}"),
            })?;
            // Rejection sampling keeps every character equally likely: 248 = 4 * 62.
            for &b in random.iter().filter(|&&b| b < 248) {
                if filled == SECRET_LEN {
                    break;
                }
                text.push(char::from(BASE62[usize::from(b % 62)]));
                filled += 1;
            }
            random.zeroize();
        }
        let checksum = checksum(&text);
        text.push('_');
        text.push_str(&checksum);
        Ok(Self { text, kind })
    }

    /// Checks text presented as a secret of `kind` (prefix, alphabet, length, checksum).
    /// `None` when it cannot be one; the error does not say why, and never echoes the text.
    pub fn parse(kind: SecretKind, text: &str) -> Option<Self> {
        let text = text.trim();
        if text.len() > MAX_SECRET_TEXT {
            return None;
        }
        let rest = text.strip_prefix(kind.prefix())?.strip_prefix('_')?;
        let (secret, sum) = rest.rsplit_once('_')?;
        let ok = secret.len() >= MIN_SECRET_LEN
            && secret.bytes().all(|b| b.is_ascii_alphanumeric())
            && sum.len() == CHECKSUM_LEN
            && checksum(&text[..text.len() - CHECKSUM_LEN - 1]) == sum;
        ok.then(|| Self {
            text: text.to_owned(),
            kind,
        })
    }

    /// Checks text presented as the admin token: a generated `dza_...` token, or any text of
    /// 32 to 256 printable ASCII characters (a token the operator set, e.g. from
    /// `DOOZ_ADMIN_TOKEN`).
    pub fn parse_admin(text: &str) -> Option<Self> {
        let text = text.trim();
        if let Some(secret) = Self::parse(SecretKind::AdminToken, text) {
            return Some(secret);
        }
        let ok = (32..=MAX_SECRET_TEXT).contains(&text.len())
            && text.bytes().all(|b| b.is_ascii_graphic())
            && !text.starts_with(API_KEY_PREFIX);
        ok.then(|| Self {
            text: text.to_owned(),
            kind: SecretKind::AdminToken,
        })
    }

    /// The text. It is a secret: show it once, to the person it is for.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// The stored form.
    pub fn hash(&self) -> SecretHash {
        let mut hasher = blake3::Hasher::new_derive_key(self.kind.context());
        hasher.update(self.text.as_bytes());
        SecretHash(*hasher.finalize().as_bytes())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({:?}, ..)", self.kind)
    }
}

/// CRC-32 (IEEE) of `text` in [`CHECKSUM_LEN`] base62 characters.
fn checksum(text: &str) -> String {
    let mut n = u64::from(crc32(text.as_bytes()));
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        // n % 62 < 62, an index into BASE62.
        *slot = BASE62[usize::try_from(n % 62).unwrap_or(0)];
        n /= 62;
    }
    out.iter().map(|&b| char::from(b)).collect()
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn generated_keys_parse_and_hash_consistently() {
        let a = Secret::generate(SecretKind::ApiKey).unwrap();
        let b = Secret::generate(SecretKind::ApiKey).unwrap();
        assert_ne!(a.expose(), b.expose());
        let text = a.expose();
        assert!(text.starts_with("dzk_"));
        assert_eq!(text.len(), 4 + SECRET_LEN + 1 + CHECKSUM_LEN);
        let parsed = Secret::parse(SecretKind::ApiKey, &format!(" {text}\n")).unwrap();
        assert!(parsed.hash().matches(&a.hash()));
        assert!(!a.hash().matches(&b.hash()));
        assert_eq!(format!("{a:?}"), "Secret(ApiKey, ..)");
        // Wrong kind, flipped character, bad checksum: refused.
        assert!(Secret::parse(SecretKind::AdminToken, text).is_none());
        let mut flipped = text.to_owned().into_bytes();
        flipped[6] = if flipped[6] == b'a' { b'b' } else { b'a' };
        assert!(Secret::parse(SecretKind::ApiKey, &String::from_utf8(flipped).unwrap()).is_none());
        assert!(Secret::parse(SecretKind::ApiKey, "dzk_short_000000").is_none());
        assert!(Secret::parse(SecretKind::ApiKey, "").is_none());
    }

    #[test]
    fn operator_admin_tokens_need_32_characters() {
        assert!(Secret::parse_admin("too-short").is_none());
        assert!(Secret::parse_admin(&"x".repeat(31)).is_none());
        let set = Secret::parse_admin(&"x".repeat(32)).unwrap();
        assert!(
            set.hash()
                .matches(&Secret::parse_admin(&"x".repeat(32)).unwrap().hash())
        );
        let generated = Secret::generate(SecretKind::AdminToken).unwrap();
        assert!(Secret::parse_admin(generated.expose()).is_some());
    }

    #[test]
    fn kinds_hash_apart() {
        let admin = Secret::generate(SecretKind::AdminToken).unwrap();
        assert!(admin.expose().starts_with("dza_"));
        let same_text_as_key = Secret {
            text: admin.expose().to_owned(),
            kind: SecretKind::ApiKey,
        };
        assert!(!admin.hash().matches(&same_text_as_key.hash()));
    }
}
