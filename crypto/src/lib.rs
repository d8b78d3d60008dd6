//! Dooz Sync cryptography: keys, ids, sealing, padding and envelopes. No IO: pure functions
//! over bytes, plus random bytes from the operating system (`getrandom`).
//!
//! The byte layouts, the key schedule and test vectors are specified in `docs/FORMAT.md`; a
//! unit test recomputes every vector there.
//!
//! - **Ids** ([`VaultId`], [`Epoch`], [`ChunkId`], [`EntryKey`], [`VersionId`], [`DeviceId`]):
//!   public names the server may see. Chunk ids and entry keys are keyed BLAKE3 hashes.
//! - **Keys**: a device has [`DeviceSecretKeys`] (Ed25519 TLS identity + X25519 exchange key).
//!   A vault has one [`VaultKey`] per [`Epoch`]. [`VaultIdentityKeys`] (chunk ids, entry keys,
//!   chunker seed) derive from the first epoch's key and survive rotation; [`EpochKeys`] seal.
//!   A [`Keyring`] is what one device knows of one vault, and opens.
//! - **Sealing**: chunks and records become `header || XChaCha20-Poly1305(inner) || tag`, with
//!   the whole header as AAD, zstd when it pays and PADME padding ([`padme_len`]). Opening gives
//!   a distinct [`OpenError`] for each way a blob can be wrong, and never panics.
//! - **Envelopes**: a vault key wrapped to a device ([`wrap_vault_key`], authenticated by the
//!   sender's static key) or to a [`RecoverySecret`] ([`wrap_to_recovery`]).
//! - **Pairing**: a one-time [`PairingSecret`] whose slot id, join MAC and reply key let a new
//!   device receive vault keys without trusting the server.
//!
//! Secrets ([`VaultKey`], [`ChunkerSeed`], [`DeviceSecretKeys`], [`RecoverySecret`], the key
//! schedule structs) are zeroized on drop, are not `Copy`, and print redacted.
//!
//! # Example
//!
//! ```
//! use dooz_crypto::{Epoch, EpochKeys, Keyring, OpenError, VaultId, VaultIdentityKeys, VaultKey};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A new vault: an id and the first epoch's key.
//! let vault = VaultId::generate()?;
//! let key = VaultKey::generate()?;
//!
//! // The keyring: identity keys from the first epoch's key, then that epoch's sealing keys.
//! let mut ring = Keyring::new(vault, VaultIdentityKeys::derive(vault, &key));
//! ring.insert_epoch(EpochKeys::derive(vault, Epoch(0), &key))?;
//!
//! // Name and seal a chunk with the latest epoch.
//! let chunk = b"hello, sealed world".repeat(100);
//! let id = ring.identity().chunk_id(&chunk);
//! let sealed = ring.latest().ok_or("no epoch")?.seal_chunk(&id, &chunk)?;
//!
//! // Open it again: the content is checked against its id.
//! assert_eq!(ring.open_chunk(&id, &sealed)?, chunk);
//!
//! // A blob asked for under another id is refused, with a distinct error.
//! let other = ring.identity().chunk_id(b"something else");
//! assert!(matches!(ring.open_chunk(&other, &sealed), Err(OpenError::WrongId { .. })));
//! # Ok(())
//! # }
//! ```

mod envelope;
mod error;
mod ids;
mod keys;
mod nonce;
mod padme;
mod pairing;
mod seal;
#[cfg(test)]
mod vectors;

/// Version byte of every sealed object and envelope this crate writes and reads.
pub const FORMAT_VERSION: u8 = 1;

pub use envelope::{
    DEVICE_ENVELOPE_LEN, DeviceEnvelopeHeader, OpenedEnvelope, OpenedRecovery,
    RECOVERY_ENVELOPE_LEN, RecoverySecret, open_envelope, open_envelope_from,
    open_recovery_envelope, wrap_to_recovery, wrap_to_recovery_with_nonce, wrap_vault_key,
    wrap_vault_key_with,
};
pub use error::{CryptoError, EnvelopeError, OpenError, PairingError, ParseIdError, SealError};
pub use ids::{ChunkId, DeviceId, EntryKey, Epoch, VaultId, VersionId};
pub use keys::{
    ChunkerSeed, DevicePublicKeys, DeviceSecretKeys, EpochKeys, KEY_CHECK_LEN, Keyring,
    VaultIdentityKeys, VaultKey,
};
pub use padme::padme_len;
pub use pairing::{
    JOIN_PAYLOAD_KIND, JoinRequest, MAX_PAIRING_NAME_LEN, PAIRING_SECRET_LEN, PairingSecret,
    REPLY_PAYLOAD_KIND,
};
pub use seal::{
    CHUNK_HEADER_LEN, ENTROPY_SKIP_BITS, INNER_HEADER_LEN, MAX_PLAINTEXT_LEN, MIN_COMPRESS_LEN,
    NONCE_LEN, ObjectKind, RECORD_HEADER_LEN, SealedHeader, SealedId, TAG_LEN, ZSTD_LEVEL,
    max_body_len, max_sealed_chunk_len,
};
