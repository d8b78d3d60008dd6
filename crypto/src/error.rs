//! Error types. Every variant says what was wrong; none carries secret bytes.

use crate::ids::VaultId;
use crate::seal::ObjectKind;

/// Errors from key generation, key handling and wrapping.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The operating system's random number generator failed.
    #[error(
        "the operating system's random number generator failed ({0}); no key or nonce was made, retry later"
    )]
    RandomnessUnavailable(getrandom::Error),
    /// Keys of one vault were combined with keys or objects of another.
    #[error("vault mismatch: expected keys for vault {expected}, got keys for vault {found}")]
    VaultMismatch {
        /// The vault the keyring (or operation) belongs to.
        expected: VaultId,
        /// The vault of the keys that were offered.
        found: VaultId,
    },
    /// The keyring already holds a different key for this epoch.
    #[error(
        "the keyring already holds a different key for epoch {epoch}; two keys for one epoch means a forked or forged key, keep the first"
    )]
    EpochConflict {
        /// The epoch that was inserted twice with different keys.
        epoch: u32,
    },
    /// A public key is a low-order point, so Diffie-Hellman with it has no secret output.
    #[error(
        "the X25519 public key is a low-order point and yields no shared secret; refuse this key"
    )]
    LowOrderKey,
    /// An Ed25519 public key could not be decoded.
    #[error("the Ed25519 identity public key is not a valid curve point")]
    InvalidPublicKey,
    /// An Ed25519 signature did not verify.
    #[error("the Ed25519 signature does not verify under the given identity key")]
    BadSignature,
}

/// Errors from sealing a chunk or record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The plaintext is larger than one sealed object may hold.
    #[error(
        "plaintext of {len} bytes is too large to seal: the maximum is {max} bytes; split it into smaller chunks"
    )]
    TooLarge {
        /// Length of the offered plaintext.
        len: usize,
        /// [`MAX_PLAINTEXT_LEN`](crate::MAX_PLAINTEXT_LEN).
        max: usize,
    },
    /// The operating system's random number generator failed while making a nonce.
    #[error(
        "the operating system's random number generator failed ({0}); nothing was sealed, retry later"
    )]
    RandomnessUnavailable(getrandom::Error),
}

/// Errors from opening a sealed chunk or record, in the order they are checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The blob is shorter than its header, or than the length its header declares.
    #[error(
        "sealed object is truncated: need {needed} bytes, got {got}; the download or stored blob is incomplete"
    )]
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// The format version byte is not one this build knows.
    #[error(
        "sealed object has format version {0}, this build reads only version {v}; upgrade dooz",
        v = crate::FORMAT_VERSION
    )]
    UnknownVersion(u8),
    /// The kind byte says this is another kind of object.
    #[error("expected a {expected}, found {}", ObjectKind::describe_byte(*found))]
    WrongKind {
        /// The kind the caller asked to open.
        expected: ObjectKind,
        /// The kind byte found in the header.
        found: u8,
    },
    /// The blob is longer than its header declares.
    #[error(
        "sealed object has {} trailing bytes: the header declares {expected} bytes, got {got}",
        got.saturating_sub(*expected)
    )]
    TrailingBytes {
        /// Length declared by the header.
        expected: usize,
        /// Length present.
        got: usize,
    },
    /// The object belongs to another vault.
    #[error("sealed object belongs to vault {found}, not to vault {expected}")]
    WrongVault {
        /// The vault of the keyring.
        expected: VaultId,
        /// The vault named in the header.
        found: VaultId,
    },
    /// The object was sealed for another chunk id, entry key or version id (a swapped blob).
    #[error("sealed object was sealed for another {which}: the blob was swapped or misfiled")]
    WrongId {
        /// Which id differs: `"chunk id"`, `"entry key"` or `"version id"`.
        which: &'static str,
    },
    /// The keyring has no key for the object's epoch.
    #[error(
        "no key for epoch {0} in this keyring; fetch the envelope for that epoch and insert it"
    )]
    UnknownEpoch(u32),
    /// The keyring's key for the epoch is not the key the object was sealed with.
    #[error(
        "the key check does not match: this object was sealed with a different key for its epoch"
    )]
    WrongKey,
    /// Authentication failed: the header or ciphertext was modified.
    #[error("sealed object failed authentication: its bytes were modified or corrupted")]
    Tampered,
    /// The authenticated plaintext is not well formed (bad flags, lengths or padding).
    #[error("sealed object is malformed: {0}")]
    Malformed(&'static str),
    /// The compressed content could not be decompressed to its declared length.
    #[error("sealed object's compressed content is invalid: {0}")]
    Decompress(String),
    /// The opened plaintext does not hash to the chunk id it was requested by.
    #[error("opened chunk's content does not match its chunk id")]
    ContentMismatch,
}

/// Errors from opening a device or recovery envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The envelope is shorter than its fixed size.
    #[error("envelope is truncated: need {needed} bytes, got {got}")]
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// The format version byte is not one this build knows.
    #[error(
        "envelope has format version {0}, this build reads only version {v}; upgrade dooz",
        v = crate::FORMAT_VERSION
    )]
    UnknownVersion(u8),
    /// The kind byte says this is another kind of object.
    #[error("expected a {expected}, found {}", ObjectKind::describe_byte(*found))]
    WrongKind {
        /// The kind the caller asked to open.
        expected: ObjectKind,
        /// The kind byte found.
        found: u8,
    },
    /// The envelope is longer than its fixed size.
    #[error("envelope has trailing bytes: expected {expected} bytes, got {got}")]
    TrailingBytes {
        /// The fixed size.
        expected: usize,
        /// Bytes present.
        got: usize,
    },
    /// The envelope was wrapped to another device's exchange key.
    #[error("envelope was wrapped for another device's exchange key, not for this device")]
    NotForThisDevice,
    /// An X25519 public key in the envelope is a low-order point.
    #[error("envelope carries a low-order X25519 key that yields no shared secret; refused")]
    LowOrderKey,
    /// The recovery secret is not the one the envelope was wrapped to.
    #[error(
        "the key check does not match: this recovery envelope was wrapped to a different recovery secret"
    )]
    WrongKey,
    /// Authentication failed: the envelope was modified, or its sender keys were forged.
    #[error("envelope failed authentication: its bytes were modified or its sender is forged")]
    Tampered,
    /// The envelope opened, but its sender is not the device the caller trusts.
    #[error(
        "envelope was wrapped by a device this device does not trust; compare the sender's fingerprint"
    )]
    UntrustedSender,
}

/// Errors from parsing an id from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseIdError {
    /// Wrong number of characters (dashes and spaces not counted).
    #[error("id has {got} characters, expected {expected} (not counting dashes and spaces)")]
    WrongLength {
        /// Characters expected.
        expected: usize,
        /// Characters found.
        got: usize,
    },
    /// A character outside the id's alphabet.
    #[error("id has an invalid character {ch:?} at position {position}")]
    InvalidCharacter {
        /// The character.
        ch: char,
        /// Its position among the significant characters (0-based).
        position: usize,
    },
    /// A device id's check character does not match its group: the id was mistyped.
    #[error(
        "device id check character of group {group} of 4 is wrong: the id was mistyped, compare it with the one the other device shows"
    )]
    BadCheckCharacter {
        /// The 1-based group of 14 characters whose check character is wrong.
        group: usize,
    },
    /// The text decodes, but not to canonical bytes (stray low bits in the last character).
    #[error("device id is not canonical: its last data character carries stray bits")]
    NonCanonical,
}

/// Errors from pairing payloads (see `pairing`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PairingError {
    /// The join payload's MAC does not match the pairing secret.
    #[error(
        "the device that answered the pairing code did not prove it knows the code: its keys \
         were put there by the server or someone else, not by the device you are pairing; no \
         vault key was handed over. Start again with a new code"
    )]
    JoinNotAuthentic,
    /// The reply did not open with the pairing secret for this device's keys.
    #[error(
        "the pairing reply was not made by the device that showed the code (it was forged or \
         modified on the way); no vault key was accepted. Start again with a new code"
    )]
    ReplyNotAuthentic,
    /// The payload has a format version this build does not read.
    #[error(
        "the pairing payload has format version {0}, this build reads only version {v}; upgrade \
         dooz on both devices",
        v = crate::FORMAT_VERSION
    )]
    UnknownVersion(u8),
    /// The payload's layout is wrong.
    #[error("the pairing payload is malformed: {0}")]
    Malformed(&'static str),
    /// The reply is too large to seal.
    #[error("the pairing reply is too large to seal")]
    TooLarge,
    /// Randomness failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

impl From<getrandom::Error> for CryptoError {
    fn from(e: getrandom::Error) -> Self {
        Self::RandomnessUnavailable(e)
    }
}

impl From<getrandom::Error> for SealError {
    fn from(e: getrandom::Error) -> Self {
        Self::RandomnessUnavailable(e)
    }
}
