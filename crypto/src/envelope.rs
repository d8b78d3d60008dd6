//! Envelopes: a vault key wrapped to a device (ephemeral + static X25519) or to a recovery
//! secret. Byte layouts are in `docs/FORMAT.md` ("Envelopes").

use std::fmt;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{CryptoError, EnvelopeError};
use crate::ids::{Epoch, VaultId, fill_random};
use crate::keys::{DevicePublicKeys, DeviceSecretKeys, KEY_CHECK_LEN, VaultKey, ct_eq, key_check};
use crate::seal::{NONCE_LEN, ObjectKind, TAG_LEN};

pub(crate) const CTX_DEVICE_ENVELOPE: &str = "dooz-sync 2026-11 device envelope kek v1";
pub(crate) const CTX_RECOVERY_ENVELOPE: &str = "dooz-sync 2026-11 recovery envelope kek v1";

/// Length of a device envelope.
pub const DEVICE_ENVELOPE_LEN: usize = DEV_OFF_CT + 32 + TAG_LEN;
/// Length of a recovery envelope.
pub const RECOVERY_ENVELOPE_LEN: usize = REC_OFF_CT + 32 + TAG_LEN;

const OFF_VERSION: usize = 0;
const OFF_KIND: usize = 1;
const OFF_VAULT: usize = 2;
const OFF_EPOCH: usize = 18;

const DEV_OFF_SENDER_IDENTITY: usize = 22;
const DEV_OFF_SENDER_EXCHANGE: usize = 54;
const DEV_OFF_RECIPIENT: usize = 86;
const DEV_OFF_EPHEMERAL: usize = 118;
const DEV_OFF_NONCE: usize = 150;
const DEV_OFF_CT: usize = 174;

const REC_OFF_KEY_CHECK: usize = 22;
const REC_OFF_NONCE: usize = 30;
const REC_OFF_CT: usize = 54;

fn array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = bytes.get(at..at + N) {
        out.copy_from_slice(src);
    }
    out
}

/// Encrypts the 32-byte vault key under `kek`, returning `ciphertext || tag`.
fn encrypt_key(kek: &[u8; 32], nonce: &[u8; NONCE_LEN], aad: &[u8], key: &VaultKey) -> [u8; 48] {
    let mut buf = Zeroizing::new(*key.expose_secret());
    let cipher = XChaCha20Poly1305::new(Key::from_slice(kek));
    let mut out = [0u8; 48];
    // 32 bytes are far below the AEAD's length limit, so this cannot fail.
    if let Ok(tag) = cipher.encrypt_in_place_detached(XNonce::from_slice(nonce), aad, &mut buf[..])
    {
        out[..32].copy_from_slice(&buf[..]);
        out[32..].copy_from_slice(&tag);
    }
    out
}

/// Decrypts `ciphertext (32) || tag (16)` under `kek`.
fn decrypt_key(
    kek: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    ct_and_tag: &[u8],
) -> Result<VaultKey, EnvelopeError> {
    let mut buf = Zeroizing::new(array::<32>(ct_and_tag, 0));
    let tag: [u8; TAG_LEN] = array(ct_and_tag, 32);
    let cipher = XChaCha20Poly1305::new(Key::from_slice(kek));
    cipher
        .decrypt_in_place_detached(
            XNonce::from_slice(nonce),
            aad,
            &mut buf[..],
            Tag::from_slice(&tag),
        )
        .map_err(|_| EnvelopeError::Tampered)?;
    Ok(VaultKey::from_bytes(*buf))
}

/// Checks length, version and kind of an envelope with fixed length `len`.
fn check_frame(bytes: &[u8], len: usize, kind: ObjectKind) -> Result<(), EnvelopeError> {
    if bytes.len() < len {
        return Err(EnvelopeError::Truncated {
            needed: len,
            got: bytes.len(),
        });
    }
    let version = bytes.get(OFF_VERSION).copied().unwrap_or(0);
    if version != crate::FORMAT_VERSION {
        return Err(EnvelopeError::UnknownVersion(version));
    }
    let found = bytes.get(OFF_KIND).copied().unwrap_or(0);
    if found != kind.byte() {
        return Err(EnvelopeError::WrongKind {
            expected: kind,
            found,
        });
    }
    if bytes.len() > len {
        return Err(EnvelopeError::TrailingBytes {
            expected: len,
            got: bytes.len(),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Device envelopes

/// A vault key opened from a device envelope.
#[derive(Debug)]
pub struct OpenedEnvelope {
    /// The vault the key belongs to.
    pub vault: VaultId,
    /// The epoch the key belongs to.
    pub epoch: Epoch,
    /// The device that wrapped it (proven: only the holder of `sender.exchange`'s secret could
    /// have made this envelope). Check it is a device you trust, with
    /// [`OpenedEnvelope::verify_sender`].
    pub sender: DevicePublicKeys,
    /// The vault key.
    pub key: VaultKey,
}

impl OpenedEnvelope {
    /// Fails with [`EnvelopeError::UntrustedSender`] unless the sender's keys (identity and
    /// exchange) are `expected`.
    pub fn verify_sender(&self, expected: &DevicePublicKeys) -> Result<(), EnvelopeError> {
        if ct_eq(&self.sender.to_bytes(), &expected.to_bytes()) {
            Ok(())
        } else {
            Err(EnvelopeError::UntrustedSender)
        }
    }

    /// Fails with [`EnvelopeError::UntrustedSender`] unless the sender's
    /// [`fingerprint`](DevicePublicKeys::fingerprint) is `expected` (as from a pairing code).
    pub fn verify_sender_fingerprint(&self, expected: &[u8; 32]) -> Result<(), EnvelopeError> {
        if ct_eq(&self.sender.fingerprint(), expected) {
            Ok(())
        } else {
            Err(EnvelopeError::UntrustedSender)
        }
    }
}

/// The cleartext fields of a device envelope, readable without keys (the server files
/// envelopes by recipient, vault and epoch).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub struct DeviceEnvelopeHeader {
    /// The vault.
    pub vault: VaultId,
    /// The epoch.
    pub epoch: Epoch,
    /// The wrapping device's public keys.
    pub sender: DevicePublicKeys,
    /// The recipient's X25519 exchange public key.
    pub recipient_exchange: [u8; 32],
}

impl DeviceEnvelopeHeader {
    /// Parses a device envelope's cleartext fields, checking length, version and kind.
    pub fn parse(envelope: &[u8]) -> Result<Self, EnvelopeError> {
        check_frame(envelope, DEVICE_ENVELOPE_LEN, ObjectKind::DeviceEnvelope)?;
        Ok(Self {
            vault: VaultId(array(envelope, OFF_VAULT)),
            epoch: Epoch(u32::from_be_bytes(array(envelope, OFF_EPOCH))),
            sender: DevicePublicKeys {
                identity: array(envelope, DEV_OFF_SENDER_IDENTITY),
                exchange: array(envelope, DEV_OFF_SENDER_EXCHANGE),
            },
            recipient_exchange: array(envelope, DEV_OFF_RECIPIENT),
        })
    }
}

/// `derive_key(CTX_DEVICE_ENVELOPE, dh_ephemeral || dh_static || header[22..150] || vault ||
/// epoch)`, where `header[22..150]` is sender identity, sender exchange, recipient exchange and
/// ephemeral public key.
pub(crate) fn device_kek(
    dh_ephemeral: &[u8; 32],
    dh_static: &[u8; 32],
    public_keys: &[u8],
    vault: VaultId,
    epoch: Epoch,
) -> Zeroizing<[u8; 32]> {
    let mut ikm = Zeroizing::new([0u8; 212]);
    ikm[..32].copy_from_slice(dh_ephemeral);
    ikm[32..64].copy_from_slice(dh_static);
    if let Some(dst) = ikm.get_mut(64..64 + public_keys.len()) {
        dst.copy_from_slice(public_keys);
    }
    ikm[192..208].copy_from_slice(&vault.0);
    ikm[208..].copy_from_slice(&epoch.0.to_be_bytes());
    Zeroizing::new(blake3::derive_key(CTX_DEVICE_ENVELOPE, &ikm[..]))
}

/// Wraps `key` (vault `vault`, epoch `epoch`) from `sender` to `recipient`.
///
/// Fails with [`CryptoError::LowOrderKey`] if the recipient's exchange key is a low-order point,
/// or if the OS random number generator fails.
pub fn wrap_vault_key(
    sender: &DeviceSecretKeys,
    recipient: &DevicePublicKeys,
    vault: VaultId,
    epoch: Epoch,
    key: &VaultKey,
) -> Result<Vec<u8>, CryptoError> {
    let mut ephemeral = Zeroizing::new([0u8; 32]);
    fill_random(&mut ephemeral[..])?;
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce)?;
    wrap_vault_key_with(sender, recipient, vault, epoch, key, &ephemeral, &nonce)
}

/// [`wrap_vault_key`] with a caller-chosen ephemeral secret and nonce. For test vectors only:
/// reusing either breaks the envelope's security.
#[doc(hidden)]
pub fn wrap_vault_key_with(
    sender: &DeviceSecretKeys,
    recipient: &DevicePublicKeys,
    vault: VaultId,
    epoch: Epoch,
    key: &VaultKey,
    ephemeral_secret: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
) -> Result<Vec<u8>, CryptoError> {
    let ephemeral = x25519_dalek::StaticSecret::from(*ephemeral_secret);
    let ephemeral_public = x25519_dalek::PublicKey::from(&ephemeral);
    let recipient_x = x25519_dalek::PublicKey::from(recipient.exchange);
    let dh_e = ephemeral.diffie_hellman(&recipient_x);
    let dh_s = sender.exchange_secret().diffie_hellman(&recipient_x);
    if !dh_e.was_contributory() || !dh_s.was_contributory() {
        return Err(CryptoError::LowOrderKey);
    }
    let sender_pub = sender.public();

    let mut out = Vec::with_capacity(DEVICE_ENVELOPE_LEN);
    out.push(crate::FORMAT_VERSION);
    out.push(ObjectKind::DeviceEnvelope.byte());
    out.extend_from_slice(&vault.0);
    out.extend_from_slice(&epoch.0.to_be_bytes());
    out.extend_from_slice(&sender_pub.identity);
    out.extend_from_slice(&sender_pub.exchange);
    out.extend_from_slice(&recipient.exchange);
    out.extend_from_slice(ephemeral_public.as_bytes());
    out.extend_from_slice(nonce);
    debug_assert_eq!(out.len(), DEV_OFF_CT);

    let kek = device_kek(
        dh_e.as_bytes(),
        dh_s.as_bytes(),
        out.get(DEV_OFF_SENDER_IDENTITY..DEV_OFF_NONCE)
            .unwrap_or(&[]),
        vault,
        epoch,
    );
    let sealed = encrypt_key(&kek, nonce, &out, key);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens a device envelope addressed to `recipient`.
///
/// Checks, in order: `Truncated`, `UnknownVersion`, `WrongKind`, `TrailingBytes`,
/// `NotForThisDevice`, `LowOrderKey`, `Tampered`. The sender is authenticated but not judged:
/// call [`OpenedEnvelope::verify_sender`] (or use [`open_envelope_from`]).
pub fn open_envelope(
    recipient: &DeviceSecretKeys,
    envelope: &[u8],
) -> Result<OpenedEnvelope, EnvelopeError> {
    let header = DeviceEnvelopeHeader::parse(envelope)?;
    let me = recipient.public();
    if !ct_eq(&header.recipient_exchange, &me.exchange) {
        return Err(EnvelopeError::NotForThisDevice);
    }
    let ephemeral = x25519_dalek::PublicKey::from(array::<32>(envelope, DEV_OFF_EPHEMERAL));
    let sender_x = x25519_dalek::PublicKey::from(header.sender.exchange);
    let dh_e = recipient.exchange_secret().diffie_hellman(&ephemeral);
    let dh_s = recipient.exchange_secret().diffie_hellman(&sender_x);
    if !dh_e.was_contributory() || !dh_s.was_contributory() {
        return Err(EnvelopeError::LowOrderKey);
    }
    let kek = device_kek(
        dh_e.as_bytes(),
        dh_s.as_bytes(),
        envelope
            .get(DEV_OFF_SENDER_IDENTITY..DEV_OFF_NONCE)
            .unwrap_or(&[]),
        header.vault,
        header.epoch,
    );
    let nonce: [u8; NONCE_LEN] = array(envelope, DEV_OFF_NONCE);
    let key = decrypt_key(
        &kek,
        &nonce,
        envelope.get(..DEV_OFF_CT).unwrap_or(&[]),
        envelope.get(DEV_OFF_CT..).unwrap_or(&[]),
    )?;
    Ok(OpenedEnvelope {
        vault: header.vault,
        epoch: header.epoch,
        sender: header.sender,
        key,
    })
}

/// [`open_envelope`], then [`OpenedEnvelope::verify_sender`] against `trusted_sender`.
pub fn open_envelope_from(
    recipient: &DeviceSecretKeys,
    trusted_sender: &DevicePublicKeys,
    envelope: &[u8],
) -> Result<OpenedEnvelope, EnvelopeError> {
    let opened = open_envelope(recipient, envelope)?;
    opened.verify_sender(trusted_sender)?;
    Ok(opened)
}

// ---------------------------------------------------------------------------------------------
// Recovery envelopes

/// The recovery secret: 16 random bytes (128 bits), shown to the user once. Every vault key is
/// also wrapped to it. Zeroized on drop; `Debug` prints `RecoverySecret(..)`.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct RecoverySecret([u8; 16]);

impl RecoverySecret {
    /// Makes a fresh random recovery secret.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut s = Self([0; 16]);
        fill_random(&mut s.0)?;
        Ok(s)
    }

    /// Wraps secret bytes (as decoded from what the user typed).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The secret bytes. Do not log them.
    pub fn expose_secret(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Debug for RecoverySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoverySecret(..)")
    }
}

/// A vault key opened from a recovery envelope.
#[derive(Debug)]
pub struct OpenedRecovery {
    /// The vault the key belongs to.
    pub vault: VaultId,
    /// The epoch the key belongs to.
    pub epoch: Epoch,
    /// The vault key.
    pub key: VaultKey,
}

/// `derive_key(CTX_RECOVERY_ENVELOPE, secret || vault || epoch)`.
pub(crate) fn recovery_kek(
    secret: &RecoverySecret,
    vault: VaultId,
    epoch: Epoch,
) -> Zeroizing<[u8; 32]> {
    let mut ikm = Zeroizing::new([0u8; 36]);
    ikm[..16].copy_from_slice(secret.expose_secret());
    ikm[16..32].copy_from_slice(&vault.0);
    ikm[32..].copy_from_slice(&epoch.0.to_be_bytes());
    Zeroizing::new(blake3::derive_key(CTX_RECOVERY_ENVELOPE, &ikm[..]))
}

/// Wraps `key` (vault `vault`, epoch `epoch`) to the recovery secret.
pub fn wrap_to_recovery(
    secret: &RecoverySecret,
    vault: VaultId,
    epoch: Epoch,
    key: &VaultKey,
) -> Result<Vec<u8>, CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce)?;
    Ok(wrap_to_recovery_with_nonce(
        secret, vault, epoch, key, &nonce,
    ))
}

/// [`wrap_to_recovery`] with a caller-chosen nonce. For test vectors only.
#[doc(hidden)]
pub fn wrap_to_recovery_with_nonce(
    secret: &RecoverySecret,
    vault: VaultId,
    epoch: Epoch,
    key: &VaultKey,
    nonce: &[u8; NONCE_LEN],
) -> Vec<u8> {
    let kek = recovery_kek(secret, vault, epoch);
    let mut out = Vec::with_capacity(RECOVERY_ENVELOPE_LEN);
    out.push(crate::FORMAT_VERSION);
    out.push(ObjectKind::RecoveryEnvelope.byte());
    out.extend_from_slice(&vault.0);
    out.extend_from_slice(&epoch.0.to_be_bytes());
    out.extend_from_slice(&key_check(&kek));
    out.extend_from_slice(nonce);
    debug_assert_eq!(out.len(), REC_OFF_CT);
    let sealed = encrypt_key(&kek, nonce, &out, key);
    out.extend_from_slice(&sealed);
    out
}

/// Opens a recovery envelope with the recovery secret.
///
/// Checks, in order: `Truncated`, `UnknownVersion`, `WrongKind`, `TrailingBytes`, `WrongKey`
/// (another recovery secret), `Tampered`.
pub fn open_recovery_envelope(
    secret: &RecoverySecret,
    envelope: &[u8],
) -> Result<OpenedRecovery, EnvelopeError> {
    check_frame(
        envelope,
        RECOVERY_ENVELOPE_LEN,
        ObjectKind::RecoveryEnvelope,
    )?;
    let vault = VaultId(array(envelope, OFF_VAULT));
    let epoch = Epoch(u32::from_be_bytes(array(envelope, OFF_EPOCH)));
    let kek = recovery_kek(secret, vault, epoch);
    let check: [u8; KEY_CHECK_LEN] = array(envelope, REC_OFF_KEY_CHECK);
    if !ct_eq(&key_check(&kek), &check) {
        return Err(EnvelopeError::WrongKey);
    }
    let nonce: [u8; NONCE_LEN] = array(envelope, REC_OFF_NONCE);
    let key = decrypt_key(
        &kek,
        &nonce,
        envelope.get(..REC_OFF_CT).unwrap_or(&[]),
        envelope.get(REC_OFF_CT..).unwrap_or(&[]),
    )?;
    Ok(OpenedRecovery { vault, epoch, key })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn devices() -> (DeviceSecretKeys, DeviceSecretKeys) {
        (
            DeviceSecretKeys::generate().unwrap(),
            DeviceSecretKeys::generate().unwrap(),
        )
    }

    #[test]
    fn device_envelope_round_trip() {
        let (a, b) = devices();
        let key = VaultKey::generate().unwrap();
        let vault = VaultId([4; 16]);
        let env = wrap_vault_key(&a, &b.public(), vault, Epoch(9), &key).unwrap();
        assert_eq!(env.len(), DEVICE_ENVELOPE_LEN);
        let opened = open_envelope(&b, &env).unwrap();
        assert_eq!(opened.vault, vault);
        assert_eq!(opened.epoch, Epoch(9));
        assert_eq!(opened.sender, a.public());
        assert_eq!(opened.key.expose_secret(), key.expose_secret());
        opened.verify_sender(&a.public()).unwrap();
        opened
            .verify_sender_fingerprint(&a.public().fingerprint())
            .unwrap();
        open_envelope_from(&b, &a.public(), &env).unwrap();
        let h = DeviceEnvelopeHeader::parse(&env).unwrap();
        assert_eq!(h.recipient_exchange, b.public().exchange);
        assert_eq!(h.sender, a.public());
        // Two wraps of the same key differ (fresh ephemeral key and nonce).
        assert_ne!(
            env,
            wrap_vault_key(&a, &b.public(), vault, Epoch(9), &key).unwrap()
        );
        // A device may wrap to itself.
        let own = wrap_vault_key(&a, &a.public(), vault, Epoch(9), &key).unwrap();
        assert_eq!(
            open_envelope(&a, &own).unwrap().key.expose_secret(),
            key.expose_secret()
        );
        assert!(!format!("{opened:?}").contains(&format!("{:?}", key.expose_secret())));
    }

    #[test]
    fn device_envelope_failures() {
        let (a, b) = devices();
        let c = DeviceSecretKeys::generate().unwrap();
        let key = VaultKey::generate().unwrap();
        let env = wrap_vault_key(&a, &b.public(), VaultId([4; 16]), Epoch(1), &key).unwrap();

        // Untrusted sender.
        let opened = open_envelope(&b, &env).unwrap();
        assert_eq!(
            opened.verify_sender(&c.public()),
            Err(EnvelopeError::UntrustedSender)
        );
        assert_eq!(
            opened.verify_sender_fingerprint(&c.public().fingerprint()),
            Err(EnvelopeError::UntrustedSender)
        );
        // Same identity, other exchange key: still untrusted.
        let mut forged = a.public();
        forged.exchange = c.public().exchange;
        assert_eq!(
            opened.verify_sender(&forged),
            Err(EnvelopeError::UntrustedSender)
        );
        assert!(matches!(
            open_envelope_from(&b, &c.public(), &env),
            Err(EnvelopeError::UntrustedSender)
        ));
        // Not for this device.
        assert!(matches!(
            open_envelope(&c, &env),
            Err(EnvelopeError::NotForThisDevice)
        ));
        // Every truncation.
        for cut in 0..env.len() {
            assert_eq!(
                open_envelope(&b, &env[..cut]).unwrap_err(),
                EnvelopeError::Truncated {
                    needed: DEVICE_ENVELOPE_LEN,
                    got: cut
                }
            );
        }
        let mut long = env.clone();
        long.push(0);
        assert!(matches!(
            open_envelope(&b, &long),
            Err(EnvelopeError::TrailingBytes { .. })
        ));
        // Every byte flipped.
        for i in 0..env.len() {
            let mut bad = env.clone();
            bad[i] ^= 0x01;
            let err = open_envelope(&b, &bad).unwrap_err();
            let want = match i {
                0 => EnvelopeError::UnknownVersion(FORMAT_VERSION_FLIPPED),
                1 => EnvelopeError::WrongKind {
                    expected: ObjectKind::DeviceEnvelope,
                    found: 2,
                },
                DEV_OFF_RECIPIENT..DEV_OFF_EPHEMERAL => EnvelopeError::NotForThisDevice,
                _ => EnvelopeError::Tampered,
            };
            assert_eq!(err, want, "byte {i}");
        }
        // A chunk's kind byte.
        let mut kind = env.clone();
        kind[1] = ObjectKind::RecoveryEnvelope.byte();
        assert!(matches!(
            open_envelope(&b, &kind),
            Err(EnvelopeError::WrongKind { found: 4, .. })
        ));
    }

    const FORMAT_VERSION_FLIPPED: u8 = crate::FORMAT_VERSION ^ 0x01;

    #[test]
    fn low_order_keys_are_refused() {
        let (a, b) = devices();
        let key = VaultKey::from_bytes([1; 32]);
        // The identity point (all zero) and the order-2 point (1, as u = 1 ... little endian).
        for bad in [[0u8; 32], {
            let mut p = [0u8; 32];
            p[0] = 1;
            p
        }] {
            let recipient = DevicePublicKeys {
                identity: b.public().identity,
                exchange: bad,
            };
            assert_eq!(
                wrap_vault_key(&a, &recipient, VaultId([1; 16]), Epoch(0), &key),
                Err(CryptoError::LowOrderKey)
            );
            // An envelope whose ephemeral key is low order.
            let mut env =
                wrap_vault_key(&a, &b.public(), VaultId([1; 16]), Epoch(0), &key).unwrap();
            env[DEV_OFF_EPHEMERAL..DEV_OFF_NONCE].copy_from_slice(&bad);
            assert!(matches!(
                open_envelope(&b, &env),
                Err(EnvelopeError::LowOrderKey)
            ));
            // An envelope whose sender exchange key is low order.
            let mut env =
                wrap_vault_key(&a, &b.public(), VaultId([1; 16]), Epoch(0), &key).unwrap();
            env[DEV_OFF_SENDER_EXCHANGE..DEV_OFF_RECIPIENT].copy_from_slice(&bad);
            assert!(matches!(
                open_envelope(&b, &env),
                Err(EnvelopeError::LowOrderKey)
            ));
        }
    }

    #[test]
    fn recovery_round_trip_and_failures() {
        let secret = RecoverySecret::generate().unwrap();
        let key = VaultKey::generate().unwrap();
        let vault = VaultId([7; 16]);
        let env = wrap_to_recovery(&secret, vault, Epoch(3), &key).unwrap();
        assert_eq!(env.len(), RECOVERY_ENVELOPE_LEN);
        let opened = open_recovery_envelope(&secret, &env).unwrap();
        assert_eq!(opened.vault, vault);
        assert_eq!(opened.epoch, Epoch(3));
        assert_eq!(opened.key.expose_secret(), key.expose_secret());

        let other = RecoverySecret::generate().unwrap();
        assert_eq!(
            open_recovery_envelope(&other, &env).unwrap_err(),
            EnvelopeError::WrongKey
        );
        for cut in 0..env.len() {
            assert_eq!(
                open_recovery_envelope(&secret, &env[..cut]).unwrap_err(),
                EnvelopeError::Truncated {
                    needed: RECOVERY_ENVELOPE_LEN,
                    got: cut
                }
            );
        }
        let mut long = env.clone();
        long.push(0);
        assert!(matches!(
            open_recovery_envelope(&secret, &long),
            Err(EnvelopeError::TrailingBytes { .. })
        ));
        for i in 0..env.len() {
            let mut bad = env.clone();
            bad[i] ^= 0x80;
            let err = open_recovery_envelope(&secret, &bad).unwrap_err();
            let want = match i {
                0 => EnvelopeError::UnknownVersion(crate::FORMAT_VERSION ^ 0x80),
                1 => EnvelopeError::WrongKind {
                    expected: ObjectKind::RecoveryEnvelope,
                    found: 4 ^ 0x80,
                },
                // Vault, epoch and key check all change the expected key check.
                OFF_VAULT..REC_OFF_NONCE => EnvelopeError::WrongKey,
                _ => EnvelopeError::Tampered,
            };
            assert_eq!(err, want, "byte {i}");
        }
        // A device envelope is not a recovery envelope.
        let (a, b) = devices();
        let dev = wrap_vault_key(&a, &b.public(), vault, Epoch(3), &key).unwrap();
        assert!(matches!(
            open_recovery_envelope(&secret, &dev[..RECOVERY_ENVELOPE_LEN]),
            Err(EnvelopeError::WrongKind {
                expected: ObjectKind::RecoveryEnvelope,
                found: 3
            })
        ));
        assert_eq!(format!("{secret:?}"), "RecoverySecret(..)");
    }

    proptest! {
        #[test]
        fn opening_arbitrary_bytes_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            valid_prefix in any::<bool>(),
        ) {
            let recipient = DeviceSecretKeys::from_bytes(&[3; 64]);
            let secret = RecoverySecret::from_bytes([8; 16]);
            let mut dev = bytes.clone();
            let mut rec = bytes;
            if valid_prefix {
                // Right version, kind and recipient, so the checks reach the DH and the AEAD.
                dev.resize(DEVICE_ENVELOPE_LEN, 0);
                dev[0] = crate::FORMAT_VERSION;
                dev[1] = ObjectKind::DeviceEnvelope.byte();
                dev[DEV_OFF_RECIPIENT..DEV_OFF_EPHEMERAL]
                    .copy_from_slice(&recipient.public().exchange);
                rec.resize(RECOVERY_ENVELOPE_LEN, 0);
                rec[0] = crate::FORMAT_VERSION;
                rec[1] = ObjectKind::RecoveryEnvelope.byte();
            }
            prop_assert!(open_envelope(&recipient, &dev).is_err());
            let _ = DeviceEnvelopeHeader::parse(&dev);
            prop_assert!(open_recovery_envelope(&secret, &rec).is_err());
        }
    }
}
