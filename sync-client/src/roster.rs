//! Rosters: how a device tells the devices it trusts which other devices it trusts, so that
//! devices paired through it come to trust each other (and key rotation reaches all of them)
//! without trusting the server.
//!
//! A roster is stored on the server as an envelope at the reserved epoch
//! [`ROSTER_EPOCH`](dooz_protocol::ROSTER_EPOCH), one per vault and recipient. It is signed
//! with the sender's Ed25519 identity key, so the server can withhold or replay one but cannot
//! make one up. A device takes the devices in a roster into its own trusted set only if the
//! roster's sender is a device it already trusts and the server does not list the sender as
//! revoked.
//!
//! ```text
//! roster    = version:u8 (1) | kind:u8 (b'R') | issued_at:u64 BE | count:u16 BE
//!             | count × keys:[u8; 64] (Ed25519 identity ‖ X25519 exchange) | signature:[u8; 64]
//! signature = Ed25519(sender, "dooz-sync 2026-11 roster v1" | vault:[u8; 16]
//!                             | recipient device id:[u8; 32] | roster without the signature)
//! ```

use dooz_crypto::{DeviceId, DevicePublicKeys, DeviceSecretKeys, VaultId};
use dooz_protocol::limits::MAX_ENVELOPE_LEN;

const VERSION: u8 = 1;
const KIND: u8 = b'R';
const CONTEXT: &[u8] = b"dooz-sync 2026-11 roster v1";
const HEADER_LEN: usize = 1 + 1 + 8 + 2;
const SIGNATURE_LEN: usize = 64;
const KEYS_LEN: usize = 64;

/// The most devices one roster names (it must fit in one envelope).
pub const MAX_ROSTER_DEVICES: usize = (MAX_ENVELOPE_LEN - HEADER_LEN - SIGNATURE_LEN) / KEYS_LEN;

fn signed_message(vault: VaultId, recipient: &DeviceId, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + 16 + 32 + body.len());
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(&vault.0);
    m.extend_from_slice(recipient.as_bytes());
    m.extend_from_slice(body);
    m
}

/// Makes `me`'s roster naming `devices` (at most [`MAX_ROSTER_DEVICES`]; more are left out),
/// for `recipient` in `vault`.
pub(crate) fn seal_roster(
    me: &DeviceSecretKeys,
    vault: VaultId,
    recipient: &DeviceId,
    devices: &[DevicePublicKeys],
    issued_at: u64,
) -> Vec<u8> {
    let devices = devices.get(..MAX_ROSTER_DEVICES).unwrap_or(devices);
    let mut out = Vec::with_capacity(HEADER_LEN + devices.len() * KEYS_LEN + SIGNATURE_LEN);
    out.push(VERSION);
    out.push(KIND);
    out.extend_from_slice(&issued_at.to_be_bytes());
    let count = u16::try_from(devices.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&count.to_be_bytes());
    for d in devices {
        out.extend_from_slice(&d.to_bytes());
    }
    let signature = me.sign(&signed_message(vault, recipient, &out));
    out.extend_from_slice(&signature);
    out
}

/// Why a roster was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RosterError {
    /// Not a roster of this version, or cut short, or with trailing bytes.
    #[error("malformed roster")]
    Malformed,
    /// The signature is not the sender's.
    #[error("the roster's signature is not its sender's")]
    BadSignature,
}

/// Checks that `bytes` is a roster `sender` made for `recipient` in `vault`; returns the
/// devices it names.
pub(crate) fn open_roster(
    sender: &DevicePublicKeys,
    vault: VaultId,
    recipient: &DeviceId,
    bytes: &[u8],
) -> Result<Vec<DevicePublicKeys>, RosterError> {
    if bytes.len() < HEADER_LEN + SIGNATURE_LEN {
        return Err(RosterError::Malformed);
    }
    let (body, signature) = bytes.split_at(bytes.len() - SIGNATURE_LEN);
    let signature: [u8; 64] = signature.try_into().map_err(|_| RosterError::Malformed)?;
    if body.first() != Some(&VERSION) || body.get(1) != Some(&KIND) {
        return Err(RosterError::Malformed);
    }
    let count = body
        .get(10..12)
        .and_then(|c| <[u8; 2]>::try_from(c).ok())
        .map(u16::from_be_bytes)
        .ok_or(RosterError::Malformed)?;
    let keys = body.get(HEADER_LEN..).ok_or(RosterError::Malformed)?;
    if keys.len() != usize::from(count) * KEYS_LEN {
        return Err(RosterError::Malformed);
    }
    sender
        .verify(&signed_message(vault, recipient, body), &signature)
        .map_err(|_| RosterError::BadSignature)?;
    Ok(keys
        .chunks_exact(KEYS_LEN)
        .filter_map(|c| <[u8; 64]>::try_from(c).ok())
        .map(|k| DevicePublicKeys::from_bytes(&k))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_roster_opens_only_for_its_sender_vault_and_recipient() {
        let a = DeviceSecretKeys::generate().unwrap();
        let b = DeviceSecretKeys::generate().unwrap();
        let peers: Vec<_> = (0..3)
            .map(|_| DeviceSecretKeys::generate().unwrap().public())
            .collect();
        let vault = VaultId([7; 16]);
        let to = b.device_id();
        let roster = seal_roster(&a, vault, &to, &peers, 1_700_000_000);
        assert!(roster.len() <= MAX_ENVELOPE_LEN);
        assert_eq!(open_roster(&a.public(), vault, &to, &roster), Ok(peers));
        // Another signer, vault or recipient: refused.
        assert_eq!(
            open_roster(&b.public(), vault, &to, &roster),
            Err(RosterError::BadSignature)
        );
        assert_eq!(
            open_roster(&a.public(), VaultId([8; 16]), &to, &roster),
            Err(RosterError::BadSignature)
        );
        assert_eq!(
            open_roster(&a.public(), vault, &a.device_id(), &roster),
            Err(RosterError::BadSignature)
        );
        // Any flipped bit: refused; cut or extended: malformed or refused.
        for i in 0..roster.len() {
            let mut bad = roster.clone();
            bad[i] ^= 1;
            assert!(
                open_roster(&a.public(), vault, &to, &bad).is_err(),
                "bit in byte {i}"
            );
        }
        assert!(open_roster(&a.public(), vault, &to, &roster[..roster.len() - 1]).is_err());
        assert_eq!(
            open_roster(&a.public(), vault, &to, &[1, b'R']),
            Err(RosterError::Malformed)
        );
    }

    #[test]
    fn a_full_roster_fits_one_envelope() {
        let a = DeviceSecretKeys::generate().unwrap();
        let peers: Vec<_> = (0..MAX_ROSTER_DEVICES + 3)
            .map(|_| DeviceSecretKeys::generate().unwrap().public())
            .collect();
        let to = a.device_id();
        let roster = seal_roster(&a, VaultId([1; 16]), &to, &peers, 0);
        assert!(roster.len() <= MAX_ENVELOPE_LEN);
        let opened = open_roster(&a.public(), VaultId([1; 16]), &to, &roster).unwrap();
        assert_eq!(opened.len(), MAX_ROSTER_DEVICES);
    }
}
