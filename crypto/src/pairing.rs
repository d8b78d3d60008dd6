//! Pairing: how an existing device A hands vault keys to a new device B without trusting the
//! server. Byte layouts are in `docs/FORMAT.md` ("Pairing payloads").
//!
//! A makes a one-time [`PairingSecret`] `s` and shows a code holding `s` and A's key
//! [fingerprint](crate::DevicePublicKeys::fingerprint). Both sides then talk through the
//! server's pairing slot [`slot_id`](PairingSecret::slot_id) `= derive_key(slot ctx, s)`, which
//! reveals nothing of `s`:
//!
//! 1. B posts a [join payload](PairingSecret::seal_join): its public keys and name, MACed with
//!    `derive_key(mac ctx, s)`. A server that does not know `s` cannot forge it, so A never
//!    wraps a vault key to a key the server slipped in ([`PairingSecret::open_join`]).
//! 2. A wraps every epoch's vault keys to B's exchange key (ordinary device envelopes), and
//!    replies with a [reply payload](PairingSecret::seal_reply) sealed with
//!    `derive_key(reply ctx, s)` and bound to B's keys: which vaults and epochs to expect, and
//!    their names. B opens each envelope and checks that its sender's fingerprint is the one in
//!    the code ([`OpenedEnvelope::verify_sender_fingerprint`](crate::OpenedEnvelope)), so an
//!    envelope the server made is refused.

use std::fmt;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{CryptoError, PairingError};
use crate::ids::fill_random;
use crate::keys::{DevicePublicKeys, ct_eq};
use crate::seal::{NONCE_LEN, TAG_LEN};

pub(crate) const CTX_PAIRING_SLOT: &str = "dooz-sync 2026-11 pairing slot v1";
pub(crate) const CTX_PAIRING_MAC: &str = "dooz-sync 2026-11 pairing join mac v1";
pub(crate) const CTX_PAIRING_REPLY: &str = "dooz-sync 2026-11 pairing reply key v1";

/// Length of a pairing secret.
pub const PAIRING_SECRET_LEN: usize = 16;
/// Kind byte of a join payload.
pub const JOIN_PAYLOAD_KIND: u8 = 0x10;
/// Kind byte of a reply payload.
pub const REPLY_PAYLOAD_KIND: u8 = 0x11;
/// Longest device name a join payload carries, in bytes.
pub const MAX_PAIRING_NAME_LEN: usize = 255;

const MAC_LEN: usize = 32;
/// version, kind, identity, exchange, name length.
const JOIN_HEADER_LEN: usize = 2 + 64 + 1;
/// version, kind, nonce.
const REPLY_HEADER_LEN: usize = 2 + NONCE_LEN;

/// The one-time pairing secret `s` (128 bits). Zeroized on drop; `Debug` prints
/// `PairingSecret(..)`.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct PairingSecret([u8; PAIRING_SECRET_LEN]);

impl fmt::Debug for PairingSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PairingSecret(..)")
    }
}

/// What a joining device posted, after its MAC checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    /// The joiner's public keys: vault keys are wrapped to `keys.exchange`.
    pub keys: DevicePublicKeys,
    /// The name the joiner gave itself (for the person confirming the pairing).
    pub name: String,
}

impl PairingSecret {
    /// A fresh random secret.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut s = Self([0; PAIRING_SECRET_LEN]);
        fill_random(&mut s.0)?;
        Ok(s)
    }

    /// Wraps secret bytes (as decoded from a pairing code).
    pub fn from_bytes(bytes: [u8; PAIRING_SECRET_LEN]) -> Self {
        Self(bytes)
    }

    /// The secret bytes. Do not log them.
    pub fn expose_secret(&self) -> &[u8; PAIRING_SECRET_LEN] {
        &self.0
    }

    /// The server's slot for this pairing: `derive_key(CTX_PAIRING_SLOT, s)`.
    pub fn slot_id(&self) -> [u8; 32] {
        blake3::derive_key(CTX_PAIRING_SLOT, &self.0)
    }

    fn subkey(&self, ctx: &str) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(blake3::derive_key(ctx, &self.0))
    }

    /// The joiner's payload: `version | kind | identity | exchange | name_len | name | mac`,
    /// with `mac = keyed_hash(derive_key(CTX_PAIRING_MAC, s), everything before it)`. A name
    /// over [`MAX_PAIRING_NAME_LEN`] bytes is cut at a character boundary.
    pub fn seal_join(&self, joiner: &DevicePublicKeys, name: &str) -> Vec<u8> {
        let mut cut = name.len().min(MAX_PAIRING_NAME_LEN);
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        let name = name.get(..cut).unwrap_or_default();
        let mut out = Vec::with_capacity(JOIN_HEADER_LEN + name.len() + MAC_LEN);
        out.push(crate::FORMAT_VERSION);
        out.push(JOIN_PAYLOAD_KIND);
        out.extend_from_slice(&joiner.to_bytes());
        // `cut` is at most 255.
        out.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(name.as_bytes());
        let mac = blake3::keyed_hash(&self.subkey(CTX_PAIRING_MAC), &out);
        out.extend_from_slice(mac.as_bytes());
        out
    }

    /// Checks a join payload's MAC (in constant time) and returns what it carries.
    ///
    /// [`PairingError::JoinNotAuthentic`] means the payload was not made with this secret: the
    /// server (or whoever posted to the slot) does not know it. Wrap nothing to its keys.
    pub fn open_join(&self, payload: &[u8]) -> Result<JoinRequest, PairingError> {
        check_head(payload, JOIN_HEADER_LEN + MAC_LEN, JOIN_PAYLOAD_KIND)?;
        let name_len = usize::from(payload.get(JOIN_HEADER_LEN - 1).copied().unwrap_or(0));
        let body_len = JOIN_HEADER_LEN + name_len;
        if payload.len() != body_len + MAC_LEN {
            return Err(PairingError::Malformed(
                "its length does not match its name length",
            ));
        }
        let (body, mac) = payload.split_at(body_len);
        let expected = blake3::keyed_hash(&self.subkey(CTX_PAIRING_MAC), body);
        if !ct_eq(expected.as_bytes(), mac) {
            return Err(PairingError::JoinNotAuthentic);
        }
        let mut keys = [0u8; 64];
        keys.copy_from_slice(body.get(2..66).unwrap_or(&[0; 64]));
        let name = std::str::from_utf8(body.get(JOIN_HEADER_LEN..).unwrap_or_default())
            .map_err(|_| PairingError::Malformed("the device name is not UTF-8"))?
            .to_owned();
        Ok(JoinRequest {
            keys: DevicePublicKeys::from_bytes(&keys),
            name,
        })
    }

    /// Seals the initiator's reply to `joiner`: `version | kind | nonce | ciphertext | tag`,
    /// XChaCha20-Poly1305 under `derive_key(CTX_PAIRING_REPLY, s)` with AAD
    /// `version | kind | nonce | joiner identity | joiner exchange`.
    pub fn seal_reply(
        &self,
        joiner: &DevicePublicKeys,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, PairingError> {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce).map_err(CryptoError::from)?;
        let mut out = Vec::with_capacity(REPLY_HEADER_LEN + plaintext.len() + TAG_LEN);
        out.push(crate::FORMAT_VERSION);
        out.push(REPLY_PAYLOAD_KIND);
        out.extend_from_slice(&nonce);
        let aad = reply_aad(&out, joiner);
        let mut body = plaintext.to_vec();
        let key = self.subkey(CTX_PAIRING_REPLY);
        let cipher = XChaCha20Poly1305::new(Key::from_slice(&key[..]));
        let tag = cipher
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), &aad, &mut body)
            .map_err(|_| PairingError::TooLarge)?;
        out.extend_from_slice(&body);
        out.extend_from_slice(&tag);
        body.zeroize();
        Ok(out)
    }

    /// Opens a reply sealed by [`seal_reply`](Self::seal_reply) for `joiner` (this device).
    /// [`PairingError::ReplyNotAuthentic`] means it was not made with this secret for these
    /// keys, or was modified.
    pub fn open_reply(
        &self,
        joiner: &DevicePublicKeys,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, PairingError> {
        check_head(sealed, REPLY_HEADER_LEN + TAG_LEN, REPLY_PAYLOAD_KIND)?;
        let (head, rest) = sealed.split_at(REPLY_HEADER_LEN);
        let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
        let aad = reply_aad(head, joiner);
        let mut body = Zeroizing::new(ct.to_vec());
        let key = self.subkey(CTX_PAIRING_REPLY);
        let cipher = XChaCha20Poly1305::new(Key::from_slice(&key[..]));
        cipher
            .decrypt_in_place_detached(
                XNonce::from_slice(head.get(2..).unwrap_or(&[0; NONCE_LEN])),
                &aad,
                &mut body[..],
                Tag::from_slice(tag),
            )
            .map_err(|_| PairingError::ReplyNotAuthentic)?;
        Ok(body)
    }
}

fn reply_aad(head: &[u8], joiner: &DevicePublicKeys) -> Vec<u8> {
    let mut aad = head.to_vec();
    aad.extend_from_slice(&joiner.to_bytes());
    aad
}

fn check_head(bytes: &[u8], min: usize, kind: u8) -> Result<(), PairingError> {
    if bytes.len() < min {
        return Err(PairingError::Malformed(
            "it is shorter than its fixed fields",
        ));
    }
    let version = bytes.first().copied().unwrap_or(0);
    if version != crate::FORMAT_VERSION {
        return Err(PairingError::UnknownVersion(version));
    }
    if bytes.get(1).copied() != Some(kind) {
        return Err(PairingError::Malformed(
            "its kind byte is not the expected one",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DeviceSecretKeys;

    #[test]
    fn join_round_trips_and_a_forged_join_is_refused() {
        let s = PairingSecret::generate().unwrap();
        let b = DeviceSecretKeys::generate().unwrap().public();
        let payload = s.seal_join(&b, "laptop");
        let got = s.open_join(&payload).unwrap();
        assert_eq!(got.keys, b);
        assert_eq!(got.name, "laptop");

        // The server knows the slot but not the secret: its own keys with any MAC fail.
        let mallory = DeviceSecretKeys::generate().unwrap().public();
        let mut forged = payload.clone();
        forged[2..66].copy_from_slice(&mallory.to_bytes());
        assert_eq!(s.open_join(&forged), Err(PairingError::JoinNotAuthentic));
        let other = PairingSecret::generate().unwrap();
        assert_eq!(
            s.open_join(&other.seal_join(&mallory, "x")),
            Err(PairingError::JoinNotAuthentic)
        );
        assert!(matches!(
            s.open_join(&payload[..40]),
            Err(PairingError::Malformed(_))
        ));
        assert_ne!(s.slot_id(), other.slot_id());
    }

    #[test]
    fn reply_round_trips_and_is_bound_to_the_joiner() {
        let s = PairingSecret::generate().unwrap();
        let b = DeviceSecretKeys::generate().unwrap().public();
        let sealed = s.seal_reply(&b, b"vaults").unwrap();
        assert_eq!(&s.open_reply(&b, &sealed).unwrap()[..], b"vaults");
        let c = DeviceSecretKeys::generate().unwrap().public();
        assert_eq!(
            s.open_reply(&c, &sealed).unwrap_err(),
            PairingError::ReplyNotAuthentic
        );
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(
            s.open_reply(&b, &bad).unwrap_err(),
            PairingError::ReplyNotAuthentic
        );
    }

    #[test]
    fn long_names_are_cut_at_a_character_boundary() {
        let s = PairingSecret::generate().unwrap();
        let b = DeviceSecretKeys::generate().unwrap().public();
        let name = "é".repeat(200);
        let got = s.open_join(&s.seal_join(&b, &name)).unwrap();
        assert!(got.name.len() <= MAX_PAIRING_NAME_LEN && name.starts_with(&got.name));
    }
}
