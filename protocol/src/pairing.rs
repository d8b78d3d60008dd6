//! Pairing and recovery on the wire, besides the messages themselves: why the server refused
//! a pairing slot call, and how recovery envelopes are addressed.
//!
//! Recovery envelopes (a vault key wrapped to the account's recovery secret) are stored with
//! `PutEnvelope` addressed to [`RECOVERY_RECIPIENT`], and read with a `GetEnvelopes` that
//! carries the critical extension [`RECOVERY_ENVELOPES_TAG`] (empty value); a server that does
//! not know it refuses the request rather than answer with the device's own envelopes.
//!
//! The server answers a call on a slot that cannot be used with `NotFound` and an optional
//! extension [`SLOT_REFUSAL_TAG`] whose value is one [`SlotRefusal`] byte, so that a client can
//! tell "no such code" from "expired" and "already used" and say so.

use crate::ext::Extension;
use crate::{DeviceId, ErrorResponse, Extensions, VaultId};

/// Extension tag of a [`SlotRefusal`] in an `Error` answer to a pairing call.
pub const SLOT_REFUSAL_TAG: u32 = 0x0002;

/// The recipient recovery envelopes are filed under: no device has this id (it is not the
/// BLAKE3 of any key anyone knows).
pub const RECOVERY_RECIPIENT: DeviceId = DeviceId::from_bytes([0xff; 32]);

/// Critical extension of `GetEnvelopes`: answer the vault's recovery envelopes.
pub const RECOVERY_ENVELOPES_TAG: u32 = 0x0003;

/// Non-critical extension of a `Vaults` answer: the vaults whose key must be rotated (a device
/// of the account was revoked since their newest epoch), as concatenated 16-byte vault ids.
pub const ROTATION_DUE_TAG: u32 = 0x0004;

/// The [`ROTATION_DUE_TAG`] extension naming `vaults`.
pub fn rotation_due_extension(vaults: &[VaultId]) -> Extension {
    let mut value = Vec::with_capacity(vaults.len() * VaultId::LEN);
    for v in vaults {
        value.extend_from_slice(v.as_bytes());
    }
    Extension::optional(ROTATION_DUE_TAG, value)
}

/// The vaults a [`ROTATION_DUE_TAG`] extension in `ext` names (none if absent or malformed).
pub fn rotation_due(ext: &Extensions) -> Vec<VaultId> {
    let Some(e) = ext.get(ROTATION_DUE_TAG) else {
        return Vec::new();
    };
    e.value
        .chunks_exact(VaultId::LEN)
        .filter_map(|c| <[u8; VaultId::LEN]>::try_from(c).ok())
        .map(VaultId::from_bytes)
        .collect()
}

/// Non-critical extension of a `Vaults` answer: the account's revoked devices, as
/// concatenated 32-byte device ids. A device drops them from the devices it trusts before it
/// rotates or re-wraps a key (the server can only make a device trust fewer devices this way,
/// never more).
pub const REVOKED_DEVICES_TAG: u32 = 0x0005;

/// Critical extension of `PutEnvelope` (empty value): this envelope starts a new epoch. The
/// server stores it only if its epoch is exactly one past the vault's newest epoch, and if
/// the recipient is the sender, and answers `Conflict` otherwise; so two devices rotating at
/// once cannot both make a key for the same epoch. A server that does not know it refuses it.
pub const NEW_EPOCH_TAG: u32 = 0x0006;

/// The epoch of a device's roster: an envelope slot at this epoch holds no key but the list of
/// devices its sender trusts, signed by the sender (format in `docs/FORMAT.md`, "Roster").
/// The server stores it like an envelope, except that it never counts as a key epoch: it does
/// not raise the vault's newest epoch, cannot start an epoch and does not end a due rotation.
pub const ROSTER_EPOCH: crate::Epoch = crate::Epoch::new(u32::MAX);

/// The [`REVOKED_DEVICES_TAG`] extension naming `devices`.
pub fn revoked_devices_extension(devices: &[DeviceId]) -> Extension {
    let mut value = Vec::with_capacity(devices.len() * 32);
    for d in devices {
        value.extend_from_slice(d.as_bytes());
    }
    Extension::optional(REVOKED_DEVICES_TAG, value)
}

/// The devices a [`REVOKED_DEVICES_TAG`] extension in `ext` names (none if absent or
/// malformed).
pub fn revoked_devices(ext: &Extensions) -> Vec<DeviceId> {
    let Some(e) = ext.get(REVOKED_DEVICES_TAG) else {
        return Vec::new();
    };
    e.value
        .chunks_exact(32)
        .filter_map(|c| <[u8; 32]>::try_from(c).ok())
        .map(DeviceId::from_bytes)
        .collect()
}

/// Why a pairing slot could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SlotRefusal {
    /// The server knows no such slot in this account (a wrong code, or one never opened).
    Unknown,
    /// The slot's time ran out (15 minutes at most).
    Expired,
    /// The slot was used already: a device answered the code before.
    Used,
}

impl SlotRefusal {
    /// The wire byte.
    pub const fn byte(self) -> u8 {
        match self {
            Self::Unknown => 0,
            Self::Expired => 1,
            Self::Used => 2,
        }
    }

    /// The refusal of a wire byte, if known.
    pub const fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Unknown),
            1 => Some(Self::Expired),
            2 => Some(Self::Used),
            _ => None,
        }
    }

    /// The extension that carries it.
    pub fn to_extension(self) -> Extension {
        Extension::optional(SLOT_REFUSAL_TAG, vec![self.byte()])
    }

    /// The refusal an error answer carries, if any.
    pub fn from_extensions(ext: &Extensions) -> Option<Self> {
        match ext.get(SLOT_REFUSAL_TAG)?.value.as_slice() {
            [b] => Self::from_byte(*b),
            _ => None,
        }
    }

    /// The refusal an error answer carries, if any.
    pub fn of(err: &ErrorResponse) -> Option<Self> {
        Self::from_extensions(&err.ext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_round_trip_through_an_extension() {
        for r in [
            SlotRefusal::Unknown,
            SlotRefusal::Expired,
            SlotRefusal::Used,
        ] {
            let ext = Extensions::new().with(r.to_extension());
            assert_eq!(SlotRefusal::from_extensions(&ext), Some(r));
        }
        assert_eq!(SlotRefusal::from_extensions(&Extensions::new()), None);
        assert_eq!(SlotRefusal::from_byte(9), None);
        let vaults = [VaultId::from_bytes([1; 16]), VaultId::from_bytes([2; 16])];
        let ext = Extensions::new().with(rotation_due_extension(&vaults));
        assert_eq!(rotation_due(&ext), vaults);
        assert!(rotation_due(&Extensions::new()).is_empty());
        let devices = vec![DeviceId::from_bytes([3; 32]), DeviceId::from_bytes([4; 32])];
        let ext = Extensions::new().with(revoked_devices_extension(&devices));
        assert_eq!(revoked_devices(&ext), devices);
        assert!(revoked_devices(&Extensions::new()).is_empty());
    }
}
