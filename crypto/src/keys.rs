//! Key material and the key schedule.
//!
//! Device keys: an Ed25519 identity (TLS) key and an X25519 exchange key. Vault keys: 32 random
//! bytes per epoch. Every subkey is a `blake3::derive_key` with a versioned context string; see
//! `docs/FORMAT.md` ("Key schedule") for the exact inputs.

use std::collections::BTreeMap;
use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::CryptoError;
use crate::ids::{ChunkId, DeviceId, EntryKey, Epoch, VaultId, fill_random, write_hex};

pub(crate) const CTX_CHUNK_ID: &str = "dooz-sync 2026-11 chunk-id key v1";
pub(crate) const CTX_ENTRY_KEY: &str = "dooz-sync 2026-11 entry-key key v1";
pub(crate) const CTX_CHUNKER_SEED: &str = "dooz-sync 2026-11 chunker seed v1";
pub(crate) const CTX_CHUNK_SEAL: &str = "dooz-sync 2026-11 chunk-seal key v1";
pub(crate) const CTX_RECORD_SEAL: &str = "dooz-sync 2026-11 record-seal key v1";
pub(crate) const CTX_KEY_CHECK: &str = "dooz-sync 2026-11 key check v1";
pub(crate) const CTX_DEVICE_FINGERPRINT: &str = "dooz-sync 2026-11 device fingerprint v1";

/// Length of a key-check value in sealed objects and recovery envelopes.
pub const KEY_CHECK_LEN: usize = 8;

/// The key-check value of `key`: the first 8 bytes of `derive_key(CTX_KEY_CHECK, key)`.
/// One-way, so it tells a wrong key apart from tampering without revealing the key.
pub(crate) fn key_check(key: &[u8; 32]) -> [u8; KEY_CHECK_LEN] {
    let mut full = blake3::derive_key(CTX_KEY_CHECK, key);
    let mut out = [0u8; KEY_CHECK_LEN];
    out.copy_from_slice(&full[..KEY_CHECK_LEN]);
    full.zeroize();
    out
}

/// Constant-time equality of two key-check values (or any short secret-derived bytes).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

// ---------------------------------------------------------------------------------------------
// Vault keys

/// A vault key `VK[e]`: 32 random bytes for one epoch of one vault.
///
/// Zeroized on drop; `Debug` prints `VaultKey(..)`.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct VaultKey([u8; 32]);

impl VaultKey {
    /// Makes a fresh random vault key (at vault creation and at each rotation).
    pub fn generate() -> Result<Self, CryptoError> {
        let mut k = Self([0; 32]);
        fill_random(&mut k.0)?;
        Ok(k)
    }

    /// Wraps key bytes (for example ones read from the device's key store).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The key bytes. Do not log them.
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.0
    }

    pub(crate) fn duplicate(&self) -> Self {
        Self(self.0)
    }
}

impl fmt::Debug for VaultKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VaultKey(..)")
    }
}

/// The per-vault seed of the content-defined chunker's gear table. Secret: chunk boundaries
/// computed with a known seed leak content.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct ChunkerSeed([u8; 32]);

impl ChunkerSeed {
    /// The seed bytes. Do not log them.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for ChunkerSeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChunkerSeed(..)")
    }
}

/// Keys derived once per vault from the first epoch's key and kept across rotations, so chunk
/// ids, entry keys and chunk boundaries stay stable (dedup survives rotation).
///
/// Key material: `VK[first epoch] || vault id` (48 bytes).
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct VaultIdentityKeys {
    #[zeroize(skip)]
    vault: VaultId,
    pub(crate) chunk_id_key: [u8; 32],
    pub(crate) entry_key_key: [u8; 32],
    pub(crate) chunker_seed: [u8; 32],
}

impl VaultIdentityKeys {
    /// Derives the vault's identity keys from its id and its first epoch's key.
    pub fn derive(vault: VaultId, first_epoch_key: &VaultKey) -> Self {
        let mut ikm = Zeroizing::new([0u8; 48]);
        ikm[..32].copy_from_slice(first_epoch_key.expose_secret());
        ikm[32..].copy_from_slice(&vault.0);
        Self {
            vault,
            chunk_id_key: blake3::derive_key(CTX_CHUNK_ID, &ikm[..]),
            entry_key_key: blake3::derive_key(CTX_ENTRY_KEY, &ikm[..]),
            chunker_seed: blake3::derive_key(CTX_CHUNKER_SEED, &ikm[..]),
        }
    }

    /// The vault these keys belong to.
    pub fn vault(&self) -> VaultId {
        self.vault
    }

    /// The chunk id of `plaintext`: `blake3::keyed_hash(chunk-id key, plaintext)`.
    pub fn chunk_id(&self, plaintext: &[u8]) -> ChunkId {
        ChunkId::from_bytes(*blake3::keyed_hash(&self.chunk_id_key, plaintext).as_bytes())
    }

    /// The entry key of `name` (a path or app key): `blake3::keyed_hash(entry-key key, name)`.
    pub fn entry_key(&self, name: &[u8]) -> EntryKey {
        EntryKey::from_bytes(*blake3::keyed_hash(&self.entry_key_key, name).as_bytes())
    }

    /// The chunker seed of this vault.
    pub fn chunker_seed(&self) -> ChunkerSeed {
        ChunkerSeed(self.chunker_seed)
    }
}

impl fmt::Debug for VaultIdentityKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VaultIdentityKeys {{ vault: {}, .. }}", self.vault)
    }
}

/// Keys of one epoch of one vault: the chunk-seal and record-seal keys and their key checks.
/// Also keeps the epoch's [`VaultKey`], so a device can wrap it to another device.
///
/// Key material: `VK[e] || vault id || epoch (u32 BE)` (52 bytes).
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct EpochKeys {
    #[zeroize(skip)]
    vault: VaultId,
    #[zeroize(skip)]
    epoch: Epoch,
    key: VaultKey,
    pub(crate) chunk_seal_key: [u8; 32],
    pub(crate) record_seal_key: [u8; 32],
    #[zeroize(skip)]
    pub(crate) chunk_key_check: [u8; KEY_CHECK_LEN],
    #[zeroize(skip)]
    pub(crate) record_key_check: [u8; KEY_CHECK_LEN],
}

impl EpochKeys {
    /// Derives the sealing keys of `epoch` of `vault` from that epoch's vault key.
    pub fn derive(vault: VaultId, epoch: Epoch, key: &VaultKey) -> Self {
        let mut ikm = Zeroizing::new([0u8; 52]);
        ikm[..32].copy_from_slice(key.expose_secret());
        ikm[32..48].copy_from_slice(&vault.0);
        ikm[48..].copy_from_slice(&epoch.0.to_be_bytes());
        let chunk_seal_key = blake3::derive_key(CTX_CHUNK_SEAL, &ikm[..]);
        let record_seal_key = blake3::derive_key(CTX_RECORD_SEAL, &ikm[..]);
        Self {
            vault,
            epoch,
            key: key.duplicate(),
            chunk_key_check: key_check(&chunk_seal_key),
            record_key_check: key_check(&record_seal_key),
            chunk_seal_key,
            record_seal_key,
        }
    }

    /// The vault these keys belong to.
    pub fn vault(&self) -> VaultId {
        self.vault
    }

    /// The epoch these keys belong to.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The epoch's vault key, to wrap it to another device or to the recovery secret.
    pub fn vault_key(&self) -> &VaultKey {
        &self.key
    }

    /// The key-check value written into sealed chunks of this epoch (not secret).
    pub fn chunk_key_check(&self) -> [u8; KEY_CHECK_LEN] {
        self.chunk_key_check
    }

    /// The key-check value written into sealed records of this epoch (not secret).
    pub fn record_key_check(&self) -> [u8; KEY_CHECK_LEN] {
        self.record_key_check
    }
}

impl fmt::Debug for EpochKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "EpochKeys {{ vault: {}, epoch: {}, .. }}",
            self.vault, self.epoch
        )
    }
}

/// Everything one device knows about one vault: its identity keys and the keys of every epoch
/// it has been given.
pub struct Keyring {
    vault: VaultId,
    identity: VaultIdentityKeys,
    epochs: BTreeMap<u32, EpochKeys>,
}

impl Keyring {
    /// A keyring for `vault` with no epoch keys yet.
    ///
    /// `identity` must have been derived for `vault`
    /// (see [`VaultIdentityKeys::vault`]); use [`Keyring::from_first_epoch`] to get both right.
    pub fn new(vault: VaultId, identity: VaultIdentityKeys) -> Self {
        debug_assert_eq!(vault, identity.vault, "identity keys of another vault");
        Self {
            vault,
            identity,
            epochs: BTreeMap::new(),
        }
    }

    /// A keyring derived from the vault's first epoch key, holding that epoch.
    pub fn from_first_epoch(vault: VaultId, first: Epoch, key: &VaultKey) -> Self {
        let mut ring = Self::new(vault, VaultIdentityKeys::derive(vault, key));
        ring.epochs
            .insert(first.0, EpochKeys::derive(vault, first, key));
        ring
    }

    /// Adds an epoch's keys. Inserting the same key again is a no-op.
    ///
    /// Fails with [`CryptoError::VaultMismatch`] for keys of another vault and with
    /// [`CryptoError::EpochConflict`] if the keyring holds a different key for that epoch.
    pub fn insert_epoch(&mut self, keys: EpochKeys) -> Result<(), CryptoError> {
        if keys.vault != self.vault {
            return Err(CryptoError::VaultMismatch {
                expected: self.vault,
                found: keys.vault,
            });
        }
        if let Some(have) = self.epochs.get(&keys.epoch.0) {
            if ct_eq(&have.chunk_seal_key, &keys.chunk_seal_key) {
                return Ok(());
            }
            return Err(CryptoError::EpochConflict {
                epoch: keys.epoch.0,
            });
        }
        self.epochs.insert(keys.epoch.0, keys);
        Ok(())
    }

    /// The vault this keyring belongs to.
    pub fn vault(&self) -> VaultId {
        self.vault
    }

    /// The vault's identity keys (chunk ids, entry keys, chunker seed).
    pub fn identity(&self) -> &VaultIdentityKeys {
        &self.identity
    }

    /// The keys of the highest epoch held: the ones to seal new objects with.
    pub fn latest(&self) -> Option<&EpochKeys> {
        self.epochs.values().next_back()
    }

    /// The keys of epoch `e`, if held.
    pub fn epoch(&self, e: Epoch) -> Option<&EpochKeys> {
        self.epochs.get(&e.0)
    }

    /// The keys of every epoch held, oldest first.
    pub fn epochs(&self) -> impl Iterator<Item = &EpochKeys> {
        self.epochs.values()
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("vault", &self.vault)
            .field("epochs", &self.epochs.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------
// Device keys

/// PKCS#8 v1 (RFC 8410) prefix of an Ed25519 private key: SEQUENCE { version 0,
/// AlgorithmIdentifier { 1.3.101.112 }, OCTET STRING { OCTET STRING (32 bytes) } }.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A device's secret keys: the Ed25519 identity key (its TLS key) and the X25519 exchange key
/// (receives vault keys). Zeroized on drop; `Debug` prints only the device id.
pub struct DeviceSecretKeys {
    signing: ed25519_dalek::SigningKey,
    exchange: x25519_dalek::StaticSecret,
    public: DevicePublicKeys,
}

// Both fields zeroize themselves on drop; `public` is not secret.
impl ZeroizeOnDrop for DeviceSecretKeys {}

impl DeviceSecretKeys {
    /// Makes fresh random device keys.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut b = Zeroizing::new([0u8; 64]);
        fill_random(&mut b[..])?;
        Ok(Self::from_bytes(&b))
    }

    /// Restores keys from [`DeviceSecretKeys::to_bytes`]: Ed25519 seed (32) || X25519 secret (32).
    pub fn from_bytes(bytes: &[u8; 64]) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        let mut xs = Zeroizing::new([0u8; 32]);
        seed.copy_from_slice(&bytes[..32]);
        xs.copy_from_slice(&bytes[32..]);
        let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
        let exchange = x25519_dalek::StaticSecret::from(*xs);
        let public = DevicePublicKeys {
            identity: signing.verifying_key().to_bytes(),
            exchange: x25519_dalek::PublicKey::from(&exchange).to_bytes(),
        };
        Self {
            signing,
            exchange,
            public,
        }
    }

    /// The secret bytes to store: Ed25519 seed (32) || X25519 secret (32).
    pub fn to_bytes(&self) -> Zeroizing<[u8; 64]> {
        let mut out = Zeroizing::new([0u8; 64]);
        out[..32].copy_from_slice(self.signing.as_bytes());
        out[32..].copy_from_slice(self.exchange.as_bytes());
        out
    }

    /// The matching public keys.
    pub fn public(&self) -> DevicePublicKeys {
        self.public
    }

    /// This device's id (BLAKE3 of the identity public key).
    pub fn device_id(&self) -> DeviceId {
        self.public.device_id()
    }

    /// The identity key as a PKCS#8 v1 Ed25519 private key in DER (48 bytes), for rustls/rcgen.
    pub fn tls_pkcs8_der(&self) -> Zeroizing<Vec<u8>> {
        let mut der = Zeroizing::new(Vec::with_capacity(48));
        der.extend_from_slice(&PKCS8_ED25519_PREFIX);
        der.extend_from_slice(self.signing.as_bytes());
        der
    }

    /// Signs `message` with the identity key (Ed25519).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer;
        self.signing.sign(message).to_bytes()
    }

    pub(crate) fn exchange_secret(&self) -> &x25519_dalek::StaticSecret {
        &self.exchange
    }
}

impl fmt::Debug for DeviceSecretKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceSecretKeys({}, ..)", self.device_id())
    }
}

/// A device's public keys, as registered with the server and exchanged at pairing.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DevicePublicKeys {
    /// Ed25519 identity (TLS) public key.
    pub identity: [u8; 32],
    /// X25519 exchange public key (vault keys are wrapped to it).
    pub exchange: [u8; 32],
}

impl DevicePublicKeys {
    /// Parses `identity (32) || exchange (32)`.
    pub fn from_bytes(bytes: &[u8; 64]) -> Self {
        let mut identity = [0u8; 32];
        let mut exchange = [0u8; 32];
        identity.copy_from_slice(&bytes[..32]);
        exchange.copy_from_slice(&bytes[32..]);
        Self { identity, exchange }
    }

    /// `identity (32) || exchange (32)`.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&self.identity);
        out[32..].copy_from_slice(&self.exchange);
        out
    }

    /// The device id: BLAKE3 of the identity key. It does not cover the exchange key; to trust a
    /// device's envelopes compare the whole keys or the [`fingerprint`](Self::fingerprint).
    pub fn device_id(&self) -> DeviceId {
        DeviceId::from_identity_key(&self.identity)
    }

    /// Fingerprint of both public keys:
    /// `derive_key("dooz-sync 2026-11 device fingerprint v1", identity || exchange)`.
    /// This is what pairing codes carry and what envelope senders are checked against.
    pub fn fingerprint(&self) -> [u8; 32] {
        blake3::derive_key(CTX_DEVICE_FINGERPRINT, &self.to_bytes())
    }

    /// Verifies an Ed25519 signature made by [`DeviceSecretKeys::sign`] (strict verification).
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> Result<(), CryptoError> {
        let key = ed25519_dalek::VerifyingKey::from_bytes(&self.identity)
            .map_err(|_| CryptoError::InvalidPublicKey)?;
        let sig = ed25519_dalek::Signature::from_bytes(signature);
        key.verify_strict(message, &sig)
            .map_err(|_| CryptoError::BadSignature)
    }
}

impl fmt::Debug for DevicePublicKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DevicePublicKeys { identity: ")?;
        write_hex(f, &self.identity)?;
        f.write_str(", exchange: ")?;
        write_hex(f, &self.exchange)?;
        f.write_str(" }")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_debug_is_redacted() {
        let vk = VaultKey::from_bytes([0xa5; 32]);
        assert_eq!(format!("{vk:?}"), "VaultKey(..)");
        let vault = VaultId([1; 16]);
        let id = VaultIdentityKeys::derive(vault, &vk);
        let seed = id.chunker_seed();
        assert_eq!(format!("{seed:?}"), "ChunkerSeed(..)");
        let ek = EpochKeys::derive(vault, Epoch(7), &vk);
        let dev = DeviceSecretKeys::from_bytes(&[0xa5; 64]);
        let ring = Keyring::from_first_epoch(vault, Epoch(0), &vk);
        for s in [
            format!("{id:?}"),
            format!("{ek:?}"),
            format!("{dev:?}"),
            format!("{ring:?}"),
            format!("{ring:#?}"),
        ] {
            assert!(!s.to_lowercase().contains("a5a5"), "{s}");
            assert!(!s.contains("165"), "{s}");
            for secret in [
                hex::encode(id.chunk_id_key),
                hex::encode(ek.chunk_seal_key),
                hex::encode(dev.to_bytes()),
                hex::encode(seed.as_bytes()),
            ] {
                assert!(!s.contains(&secret[..16]), "{s}");
            }
        }
        assert!(format!("{ek:?}").contains("epoch: 7"));
    }

    #[test]
    fn device_keys_round_trip() {
        let dev = DeviceSecretKeys::generate().unwrap();
        let again = DeviceSecretKeys::from_bytes(&dev.to_bytes());
        assert_eq!(dev.public(), again.public());
        assert_eq!(dev.device_id(), again.device_id());
        assert_eq!(
            dev.device_id(),
            DeviceId::from_bytes(*blake3::hash(&dev.public().identity).as_bytes())
        );
        assert_ne!(dev.public(), DeviceSecretKeys::generate().unwrap().public());
        let p = dev.public();
        assert_eq!(DevicePublicKeys::from_bytes(&p.to_bytes()), p);
        assert_ne!(p.fingerprint(), [0; 32]);

        let der = dev.tls_pkcs8_der();
        assert_eq!(der.len(), 48);
        assert_eq!(&der[..16], &PKCS8_ED25519_PREFIX);
        assert_eq!(&der[16..], &dev.to_bytes()[..32]);

        let sig = dev.sign(b"hello");
        p.verify(b"hello", &sig).unwrap();
        assert_eq!(p.verify(b"hellO", &sig), Err(CryptoError::BadSignature));
        let other = DeviceSecretKeys::from_bytes(&[1; 64]).public();
        assert_eq!(other.verify(b"hello", &sig), Err(CryptoError::BadSignature));
    }

    #[test]
    fn key_schedule_separates_keys() {
        let vk = VaultKey::from_bytes([3; 32]);
        let a = VaultIdentityKeys::derive(VaultId([1; 16]), &vk);
        let b = VaultIdentityKeys::derive(VaultId([2; 16]), &vk);
        assert_ne!(a.chunk_id(b"x"), b.chunk_id(b"x"));
        assert_ne!(a.entry_key(b"x"), b.entry_key(b"x"));
        assert_ne!(a.chunk_id(b"x").as_bytes(), a.entry_key(b"x").as_bytes());
        assert_ne!(a.chunker_seed().as_bytes(), b.chunker_seed().as_bytes());
        let e0 = EpochKeys::derive(VaultId([1; 16]), Epoch(0), &vk);
        let e1 = EpochKeys::derive(VaultId([1; 16]), Epoch(1), &vk);
        assert_ne!(e0.chunk_seal_key, e1.chunk_seal_key);
        assert_ne!(e0.chunk_seal_key, e0.record_seal_key);
        assert_ne!(e0.chunk_key_check, e0.record_key_check);
        assert_eq!(e0.vault_key().expose_secret(), vk.expose_secret());
    }

    #[test]
    fn keyring_insert_rules() {
        let vault = VaultId([1; 16]);
        let k0 = VaultKey::from_bytes([1; 32]);
        let k1 = VaultKey::from_bytes([2; 32]);
        let mut ring = Keyring::from_first_epoch(vault, Epoch(0), &k0);
        assert_eq!(ring.latest().unwrap().epoch(), Epoch(0));
        ring.insert_epoch(EpochKeys::derive(vault, Epoch(5), &k1))
            .unwrap();
        ring.insert_epoch(EpochKeys::derive(vault, Epoch(2), &k1))
            .unwrap();
        assert_eq!(ring.latest().unwrap().epoch(), Epoch(5));
        assert!(ring.epoch(Epoch(2)).is_some());
        assert!(ring.epoch(Epoch(3)).is_none());
        assert_eq!(ring.epochs().count(), 3);
        // Same key again: fine. Different key for a held epoch: conflict.
        ring.insert_epoch(EpochKeys::derive(vault, Epoch(5), &k1))
            .unwrap();
        assert_eq!(
            ring.insert_epoch(EpochKeys::derive(vault, Epoch(5), &k0)),
            Err(CryptoError::EpochConflict { epoch: 5 })
        );
        assert_eq!(
            ring.insert_epoch(EpochKeys::derive(VaultId([9; 16]), Epoch(6), &k1)),
            Err(CryptoError::VaultMismatch {
                expected: vault,
                found: VaultId([9; 16])
            })
        );
        assert_eq!(ring.vault(), vault);
        assert_eq!(ring.identity().vault(), vault);
    }

    #[test]
    fn generated_keys_differ() {
        let a = VaultKey::generate().unwrap();
        let b = VaultKey::generate().unwrap();
        assert_ne!(a.expose_secret(), b.expose_secret());
    }
}
