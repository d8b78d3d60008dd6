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
    }
}
