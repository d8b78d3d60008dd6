//! Plain identifier newtypes as they travel on the wire.
//!
//! These are deliberately *not* the types of `dooz-crypto`: the protocol crate depends on no other
//! crate of ours. Byte ids are fixed-size arrays, so postcard writes them raw (no length prefix);
//! `Epoch` and `Seq` are postcard varints. Conversion to and from the crypto types goes through
//! `from_bytes`/`as_bytes`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Number of bytes of an id that `Display` and `Debug` print (as hex). `{:#}` prints all of them.
const SHORT_BYTES: usize = 8;

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

macro_rules! byte_id {
    ($(#[$meta:meta])* $name:ident, $len:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name([u8; $len]);

        impl $name {
            /// Length of this id in bytes.
            pub const LEN: usize = $len;

            /// Wraps raw id bytes.
            pub const fn from_bytes(bytes: [u8; $len]) -> Self {
                Self(bytes)
            }

            /// The raw id bytes.
            pub const fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// The id as lower-case hex, all of it.
            pub fn to_hex(&self) -> String {
                format!("{self:#}")
            }
        }

        impl From<[u8; $len]> for $name {
            fn from(bytes: [u8; $len]) -> Self {
                Self(bytes)
            }
        }

        impl From<$name> for [u8; $len] {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl AsRef<[u8]> for $name {
            fn as_ref(&self) -> &[u8] {
                &self.0
            }
        }

        /// Short hex (the first 8 bytes); the alternate form `{:#}` prints the full id.
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                if f.alternate() {
                    write_hex(f, &self.0)
                } else {
                    write_hex(f, self.0.get(..SHORT_BYTES).unwrap_or(&self.0))
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }
    };
}

byte_id!(
    /// A vault: an encrypted keyspace synced among an account's devices. 16 random bytes.
    VaultId,
    16
);
byte_id!(
    /// A chunk: the keyed BLAKE3 hash of its plaintext (opaque to the server).
    ChunkId,
    32
);
byte_id!(
    /// An entry of a vault: a keyed hash of its name (opaque to the server).
    EntryKey,
    32
);
byte_id!(
    /// One committed version of an entry, chosen by the committing device. 16 random bytes.
    VersionId,
    16
);
byte_id!(
    /// A device: BLAKE3 of its TLS public key. Shown to people in base32 by `dooz-crypto`.
    DeviceId,
    32
);
byte_id!(
    /// A pairing slot: `H(s)` of the one-time pairing secret `s`.
    SlotId,
    32
);

/// A generation of a vault's key; a new epoch is made at each key rotation.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Epoch(u32);

impl Epoch {
    /// The first epoch of a vault.
    pub const ZERO: Self = Self(0);

    /// Wraps an epoch number.
    pub const fn new(n: u32) -> Self {
        Self(n)
    }

    /// The epoch number.
    pub const fn get(self) -> u32 {
        self.0
    }
}

/// A vault's gap-free commit counter: the cursor devices pull from. `Seq(0)` is "before the
/// first commit"; the first committed entry gets seq 1.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Seq(u64);

impl Seq {
    /// Before the first commit: pull from here to get everything.
    pub const ZERO: Self = Self(0);

    /// Wraps a sequence number.
    pub const fn new(n: u64) -> Self {
        Self(n)
    }

    /// The sequence number.
    pub const fn get(self) -> u64 {
        self.0
    }
}

macro_rules! number_fmt {
    ($name:ident) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0)
            }
        }
    };
}

number_fmt!(Epoch);
number_fmt!(Seq);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_ids_are_written_raw() {
        let id = ChunkId::from_bytes([0xab; 32]);
        let bytes = postcard::to_allocvec(&id).unwrap();
        assert_eq!(bytes, [0xab; 32]);
        let vault = VaultId::from_bytes(*b"0123456789abcdef");
        assert_eq!(postcard::to_allocvec(&vault).unwrap(), b"0123456789abcdef");
        let back: VaultId = postcard::from_bytes(b"0123456789abcdef").unwrap();
        assert_eq!(back, vault);
    }

    #[test]
    fn numbers_are_varints() {
        assert_eq!(postcard::to_allocvec(&Seq::new(300)).unwrap(), [0xac, 0x02]);
        assert_eq!(postcard::to_allocvec(&Epoch::new(5)).unwrap(), [5]);
    }

    #[test]
    fn display_is_short_hex_and_alternate_is_full() {
        let mut bytes = [0u8; 16];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::try_from(i).unwrap();
        }
        let id = VaultId::from_bytes(bytes);
        assert_eq!(id.to_string(), "0001020304050607");
        assert_eq!(format!("{id:#}"), "000102030405060708090a0b0c0d0e0f");
        assert_eq!(id.to_hex(), "000102030405060708090a0b0c0d0e0f");
        assert_eq!(format!("{id:?}"), "VaultId(0001020304050607)");
        assert_eq!(format!("{:?}", Seq::new(7)), "Seq(7)");
        assert_eq!(Epoch::new(3).to_string(), "3");
    }

    #[test]
    fn bytes_round_trip() {
        let id = DeviceId::from_bytes([9; 32]);
        assert_eq!(DeviceId::from(*id.as_bytes()), id);
        assert_eq!(<[u8; 32]>::from(id), [9; 32]);
        assert_eq!(SlotId::LEN, 32);
        assert_eq!(VersionId::LEN, 16);
    }
}
