//! Why the server refused a pairing slot call, for programs.
//!
//! The server answers a call on a slot that cannot be used with `NotFound` and an optional
//! extension [`SLOT_REFUSAL_TAG`] whose value is one [`SlotRefusal`] byte, so that a client can
//! tell "no such code" from "expired" and "already used" and say so.

use crate::ext::Extension;
use crate::{ErrorResponse, Extensions};

/// Extension tag of a [`SlotRefusal`] in an `Error` answer to a pairing call.
pub const SLOT_REFUSAL_TAG: u32 = 0x0002;

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
    }
}
