//! Enrolment tokens: 128 random bits, shown once, stored only as a keyed BLAKE3 hash.
//!
//! A token reads `et1_` followed by 26 lowercase base32 characters (RFC 4648 alphabet, no
//! padding). The store keeps `BLAKE3-derive_key("dooz-server enrolment token v1", token)` and
//! compares hashes in constant time, so a copy of the store does not hold a usable token.

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::store::error::StoreError;

const PREFIX: &str = "et1_";
const HASH_CONTEXT: &str = "dooz-server enrolment token v1";
/// Longer input is not a token of ours; refuse it before hashing.
const MAX_TOKEN_LEN: usize = 255;

/// A freshly minted enrolment token: a secret to hand to the person enrolling a device (inside an
/// enrolment code). Zeroized on drop; `Debug` does not print it.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct EnrolmentToken(String);

impl EnrolmentToken {
    /// Makes a new random token.
    pub(crate) fn generate() -> Result<Self, StoreError> {
        let mut secret = [0u8; 16];
        getrandom::getrandom(&mut secret).map_err(|e| StoreError::Unavailable {
            reason: format!("the operating system's random number generator failed: {e}"),
        })?;
        let token = format!("{PREFIX}{}", base32(&secret));
        secret.zeroize();
        Ok(Self(token))
    }

    /// The token text. It is a secret: show it only to the person enrolling.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The hash the store keeps.
    pub(crate) fn hash(&self) -> [u8; 32] {
        hash_token(&self.0)
    }
}

impl fmt::Debug for EnrolmentToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EnrolmentToken(..)")
    }
}

/// The stored hash of a presented token, or `None` when the text cannot be a token.
pub(crate) fn presented_hash(token: &str) -> Option<[u8; 32]> {
    let token = token.trim();
    (!token.is_empty() && token.len() <= MAX_TOKEN_LEN).then(|| hash_token(token))
}

/// Constant-time equality of two token hashes.
pub(crate) fn hashes_match(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

fn hash_token(token: &str) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key(HASH_CONTEXT);
    hasher.update(token.as_bytes());
    *hasher.finalize().as_bytes()
}

fn base32(bytes: &[u8]) -> String {
    dooz_protocol::base32::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_prefixed_and_hash_consistently() {
        let a = EnrolmentToken::generate().unwrap();
        let b = EnrolmentToken::generate().unwrap();
        assert_ne!(a, b);
        assert!(a.expose().starts_with(PREFIX));
        assert_eq!(a.expose().len(), PREFIX.len() + 26);
        assert_eq!(presented_hash(a.expose()), Some(a.hash()));
        assert_eq!(
            presented_hash(&format!("  {}\n", a.expose())),
            Some(a.hash())
        );
        assert!(!hashes_match(&a.hash(), &b.hash()));
        assert!(hashes_match(&a.hash(), &a.hash()));
        assert_eq!(presented_hash(""), None);
        assert_eq!(presented_hash(&"x".repeat(300)), None);
        assert_eq!(format!("{a:?}"), "EnrolmentToken(..)");
    }

    #[test]
    fn base32_matches_rfc4648() {
        // RFC 4648 test vectors, lowercase and unpadded.
        assert_eq!(base32(b""), "");
        assert_eq!(base32(b"f"), "my");
        assert_eq!(base32(b"fo"), "mzxq");
        assert_eq!(base32(b"foo"), "mzxw6");
        assert_eq!(base32(b"foob"), "mzxw6yq");
        assert_eq!(base32(b"fooba"), "mzxw6ytb");
        assert_eq!(base32(b"foobar"), "mzxw6ytboi");
    }
}
