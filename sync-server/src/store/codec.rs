//! On-disk layout of the sled store: tree names, key layouts and versioned values.
//!
//! Every value is `version: u8 || postcard(struct)`; a struct that changes gets a new version
//! (and a migration), never a silent reinterpretation. Keys are fixed-width fields with numbers in
//! big-endian, so a range scan walks them in numeric order.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `meta-v1` | `b"format"` / `b"next-tenant"` / `b"next-account"` | `u32 BE` / `u64 BE` / `u64 BE` |
//! | `tenants-v1` | tenant `u64 BE` | [`TenantV1`] |
//! | `tenant-names-v1` | name (UTF-8) | tenant `u64 BE` |
//! | `accounts-v1` | account `u64 BE` | [`AccountV1`] |
//! | `account-names-v1` | tenant `u64 BE` \|\| name | account `u64 BE` |
//! | `tokens-v1` | BLAKE3 token hash (32) | [`TokenV1`] |
//! | `devices-v1` | device (32) | [`DeviceV1`] |
//! | `account-devices-v1` | account `u64 BE` \|\| device (32) | empty |
//! | `vaults-v1` | vault (16) | [`VaultV1`] |
//! | `account-vaults-v1` | account `u64 BE` \|\| vault (16) | empty |
//! | `chunks-v1` | vault (16) \|\| chunk (32) | [`ChunkV1`] |
//! | `log-v1` | vault (16) \|\| seq `u64 BE` | [`LogV1`] |
//! | `heads-v1` | vault (16) \|\| entry (32) | [`HeadV1`] |
//! | `versions-v1` | vault (16) \|\| entry (32) \|\| seq `u64 BE` | empty |
//! | `envelopes-v1` | vault (16) \|\| recipient (32) \|\| epoch `u32 BE` \|\| sender (32) | [`EnvelopeV1`] |
//! | `usage-v1` | account `u64 BE` | stored bytes `u64 BE` |
//! | `chunk-locs-v1` | vault (16) \|\| chunk (32) | [`PackLocV1`] |
//! | `packs-v1` | vault (16) \|\| pack (16) | [`PackV1`] |
//! | `rotations-v1` | vault (16) | [`RotationDueV1`]: the vault's key must be rotated |
//! | `traffic-v1` | tenant `u64 BE` \|\| hour `u64 BE` \|\| account `u64 BE` \|\| 0/1 \|\| vault (16) \|\| 0/1 \|\| device (32) | [`TrafficV1`] |
//! | `meter-v1` | `b'g'` \|\| tenant `u64 BE` \|\| vault (16) | [`GaugeV1`]: the vault's stored bytes now |
//! | `meter-v1` | `b'h'` \|\| tenant `u64 BE` \|\| vault (16) \|\| hour `u64 BE` | [`StorageHourV1`] |
//!
//! `traffic-v1` holds the metered bytes and requests per tenant, hour (unix seconds / 3600),
//! account, vault (flag 0 and zeros: none) and device; `meter-v1` the storage gauge of each vault
//! and, per hour, its peak and byte-seconds. Both are described in `docs/METERING.md`. The gauge
//! and the hour rows change in the same transaction as `usage-v1`.
//!
//! `usage-v1` holds each account's stored bytes: the sum of `sealed_len` over the chunk records
//! of its vaults. It is updated in the same sled transaction as the chunk record it accounts for,
//! so a crash keeps both or neither. Stores written before it existed get it built from
//! `chunks-v1` when opened (marked done by `b"usage-built"` in `meta-v1`).
//!
//! A chunk whose sealed bytes are a range of a pack (see `docs/FORMAT.md`, "Packs") has a
//! `chunk-locs-v1` entry next to its `chunks-v1` record, written in the same transaction; a chunk
//! without one is a blob of its own. `packs-v1` lists each vault's packs. Both trees appear only
//! once a pack has been completely written, so an entry never points into a partial pack.

use std::fmt;

use dooz_protocol::{ChunkId, DeviceId, EntryKey, Epoch, Seq, VaultId, VersionId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::store::error::StoreError;

/// Format version of the whole store, kept in `meta-v1` under [`FORMAT_KEY`].
pub(crate) const FORMAT_VERSION: u32 = 1;

pub(crate) const META: &str = "meta-v1";
pub(crate) const TENANTS: &str = "tenants-v1";
pub(crate) const TENANT_NAMES: &str = "tenant-names-v1";
pub(crate) const ACCOUNTS: &str = "accounts-v1";
pub(crate) const ACCOUNT_NAMES: &str = "account-names-v1";
pub(crate) const TOKENS: &str = "tokens-v1";
pub(crate) const DEVICES: &str = "devices-v1";
pub(crate) const ACCOUNT_DEVICES: &str = "account-devices-v1";
pub(crate) const VAULTS: &str = "vaults-v1";
pub(crate) const ACCOUNT_VAULTS: &str = "account-vaults-v1";
pub(crate) const CHUNKS: &str = "chunks-v1";
pub(crate) const LOG: &str = "log-v1";
pub(crate) const HEADS: &str = "heads-v1";
pub(crate) const VERSIONS: &str = "versions-v1";
pub(crate) const ENVELOPES: &str = "envelopes-v1";
pub(crate) const USAGE: &str = "usage-v1";
pub(crate) const CHUNK_LOCS: &str = "chunk-locs-v1";
pub(crate) const PACKS: &str = "packs-v1";
pub(crate) const ROTATIONS: &str = "rotations-v1";
pub(crate) const TRAFFIC: &str = "traffic-v1";
pub(crate) const METER: &str = "meter-v1";

pub(crate) const FORMAT_KEY: &[u8] = b"format";
pub(crate) const NEXT_TENANT_KEY: &[u8] = b"next-tenant";
pub(crate) const NEXT_ACCOUNT_KEY: &[u8] = b"next-account";
/// Present once `usage-v1` has been built from `chunks-v1` (empty value).
pub(crate) const USAGE_BUILT_KEY: &[u8] = b"usage-built";
/// Present once the storage gauges of `meter-v1` have been built from `chunks-v1`.
pub(crate) const METER_BUILT_KEY: &[u8] = b"meter-built";

/// Length of a `traffic-v1` key.
pub(crate) const TRAFFIC_KEY_LEN: usize = 8 + 8 + 8 + 1 + 16 + 1 + 32;

/// A `traffic-v1` key.
pub(crate) fn traffic_key(
    tenant: u64,
    hour: u64,
    account: u64,
    vault: Option<&VaultId>,
    device: Option<&DeviceId>,
) -> [u8; TRAFFIC_KEY_LEN] {
    let zero16 = [0u8; 16];
    let zero32 = [0u8; 32];
    key(&[
        &tenant.to_be_bytes(),
        &hour.to_be_bytes(),
        &account.to_be_bytes(),
        &[u8::from(vault.is_some())],
        vault.map_or(&zero16[..], |v| &v.as_bytes()[..]),
        &[u8::from(device.is_some())],
        device.map_or(&zero32[..], |d| &d.as_bytes()[..]),
    ])
}

/// The parts of a `traffic-v1` key: tenant, hour, account, vault, device.
pub(crate) type TrafficKeyParts = (u64, u64, u64, Option<VaultId>, Option<DeviceId>);

/// Splits a `traffic-v1` key.
pub(crate) fn traffic_key_parts(k: &[u8]) -> Result<TrafficKeyParts, StoreError> {
    let bad = || StoreError::corrupt(TRAFFIC, format!("a key of {} bytes", k.len()));
    if k.len() != TRAFFIC_KEY_LEN {
        return Err(bad());
    }
    let u64_at = |at: usize| -> Result<u64, StoreError> {
        k.get(at..at + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
            .ok_or_else(bad)
    };
    let vault = match k.get(24) {
        Some(0) => None,
        Some(1) => Some(VaultId::from_bytes(
            k.get(25..41)
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
                .ok_or_else(bad)?,
        )),
        _ => return Err(bad()),
    };
    let device = match k.get(41) {
        Some(0) => None,
        Some(1) => Some(DeviceId::from_bytes(
            k.get(42..74)
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(bad)?,
        )),
        _ => return Err(bad()),
    };
    Ok((u64_at(0)?, u64_at(8)?, u64_at(16)?, vault, device))
}

/// A `meter-v1` gauge key.
pub(crate) fn gauge_key(tenant: u64, vault: &VaultId) -> [u8; 25] {
    key(&[b"g", &tenant.to_be_bytes(), vault.as_bytes()])
}

/// A `meter-v1` storage hour key.
pub(crate) fn storage_hour_key(tenant: u64, vault: &VaultId, hour: u64) -> [u8; 33] {
    key(&[
        b"h",
        &tenant.to_be_bytes(),
        vault.as_bytes(),
        &hour.to_be_bytes(),
    ])
}

/// The tenant and vault of a `meter-v1` gauge key.
pub(crate) fn gauge_key_parts(k: &[u8]) -> Result<(u64, VaultId), StoreError> {
    let bad = || StoreError::corrupt(METER, format!("a gauge key of {} bytes", k.len()));
    if k.len() != 25 || k.first() != Some(&b'g') {
        return Err(bad());
    }
    let tenant = k
        .get(1..9)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(bad)?;
    let vault = k
        .get(9..25)
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
        .ok_or_else(bad)?;
    Ok((tenant, VaultId::from_bytes(vault)))
}

/// The hour of a `meter-v1` storage hour key (the last 8 bytes).
pub(crate) fn storage_hour_key_hour(k: &[u8]) -> Result<u64, StoreError> {
    tail_u64(k, 33)
        .ok_or_else(|| StoreError::corrupt(METER, format!("an hour key of {} bytes", k.len())))
}

// ---------------------------------------------------------------------------------------------
// Keys

/// Concatenates fixed-width key parts.
fn key<const N: usize>(parts: &[&[u8]]) -> [u8; N] {
    let mut out = [0u8; N];
    let mut at = 0;
    for part in parts {
        if let Some(dst) = out.get_mut(at..at + part.len()) {
            dst.copy_from_slice(part);
        }
        at += part.len();
    }
    debug_assert_eq!(at, N, "key parts do not fill the key");
    out
}

pub(crate) fn account_name_key(tenant: u64, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + name.len());
    k.extend_from_slice(&tenant.to_be_bytes());
    k.extend_from_slice(name.as_bytes());
    k
}

pub(crate) fn account_member_key(account: u64, member: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + member.len());
    k.extend_from_slice(&account.to_be_bytes());
    k.extend_from_slice(member);
    k
}

pub(crate) fn chunk_key(vault: &VaultId, chunk: &ChunkId) -> [u8; 48] {
    key(&[vault.as_bytes(), chunk.as_bytes()])
}

pub(crate) fn log_key(vault: &VaultId, seq: Seq) -> [u8; 24] {
    key(&[vault.as_bytes(), &seq.get().to_be_bytes()])
}

/// The seq of a `log-v1` key (the last 8 bytes).
pub(crate) fn log_key_seq(k: &[u8]) -> Result<Seq, StoreError> {
    tail_u64(k, 24)
        .map(Seq::new)
        .ok_or_else(|| StoreError::corrupt(LOG, format!("a key of {} bytes", k.len())))
}

pub(crate) fn head_key(vault: &VaultId, entry: &EntryKey) -> [u8; 48] {
    key(&[vault.as_bytes(), entry.as_bytes()])
}

pub(crate) fn version_key(vault: &VaultId, entry: &EntryKey, seq: Seq) -> [u8; 56] {
    key(&[vault.as_bytes(), entry.as_bytes(), &seq.get().to_be_bytes()])
}

/// The seq of a `versions-v1` key (the last 8 bytes).
pub(crate) fn version_key_seq(k: &[u8]) -> Result<Seq, StoreError> {
    tail_u64(k, 56)
        .map(Seq::new)
        .ok_or_else(|| StoreError::corrupt(VERSIONS, format!("a key of {} bytes", k.len())))
}

pub(crate) fn envelope_prefix(vault: &VaultId, recipient: &DeviceId) -> [u8; 48] {
    key(&[vault.as_bytes(), recipient.as_bytes()])
}

pub(crate) fn envelope_key(
    vault: &VaultId,
    recipient: &DeviceId,
    epoch: Epoch,
    sender: &DeviceId,
) -> [u8; 84] {
    key(&[
        vault.as_bytes(),
        recipient.as_bytes(),
        &epoch.get().to_be_bytes(),
        sender.as_bytes(),
    ])
}

/// The epoch and sender of an `envelopes-v1` key.
pub(crate) fn envelope_key_parts(k: &[u8]) -> Result<(Epoch, DeviceId), StoreError> {
    let bad = || StoreError::corrupt(ENVELOPES, format!("a key of {} bytes", k.len()));
    if k.len() != 84 {
        return Err(bad());
    }
    let epoch = k
        .get(48..52)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(|b| Epoch::new(u32::from_be_bytes(b)))
        .ok_or_else(bad)?;
    let sender = k
        .get(52..84)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .map(DeviceId::from_bytes)
        .ok_or_else(bad)?;
    Ok((epoch, sender))
}

/// `packs-v1` key: vault || pack.
pub(crate) fn pack_key(vault: &VaultId, pack: &[u8; 16]) -> [u8; 32] {
    key(&[vault.as_bytes(), pack])
}

/// The vault of a `chunks-v1` key (the first 16 bytes).
pub(crate) fn chunk_key_vault(k: &[u8]) -> Result<VaultId, StoreError> {
    if k.len() != 48 {
        return Err(StoreError::corrupt(
            CHUNKS,
            format!("a key of {} bytes", k.len()),
        ));
    }
    k.get(..16)
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
        .map(VaultId::from_bytes)
        .ok_or_else(|| StoreError::corrupt(CHUNKS, format!("a key of {} bytes", k.len())))
}

/// The member id after the 8-byte account prefix of an `account-*-v1` key.
pub(crate) fn account_member<const N: usize>(
    tree: &'static str,
    k: &[u8],
) -> Result<[u8; N], StoreError> {
    k.get(8..)
        .and_then(|m| <[u8; N]>::try_from(m).ok())
        .ok_or_else(|| StoreError::corrupt(tree, format!("a key of {} bytes", k.len())))
}

fn tail_u64(k: &[u8], len: usize) -> Option<u64> {
    if k.len() != len {
        return None;
    }
    k.get(len - 8..)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
}

/// A big-endian `u64` value (ids, counters).
pub(crate) fn decode_u64(tree: &'static str, v: &[u8]) -> Result<u64, StoreError> {
    <[u8; 8]>::try_from(v)
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::corrupt(tree, format!("a {}-byte value, expected 8", v.len())))
}

/// A big-endian `u32` value (the format version).
pub(crate) fn decode_u32(tree: &'static str, v: &[u8]) -> Result<u32, StoreError> {
    <[u8; 4]>::try_from(v)
        .map(u32::from_be_bytes)
        .map_err(|_| StoreError::corrupt(tree, format!("a {}-byte value, expected 4", v.len())))
}

// ---------------------------------------------------------------------------------------------
// Values

/// A value struct with its tree and version byte.
pub(crate) trait Stored: Serialize + DeserializeOwned {
    /// The tree the value lives in (for error messages).
    const TREE: &'static str;
    /// The version byte written before the postcard body.
    const VERSION: u8;
    /// A name for error messages.
    const NAME: &'static str;
}

/// `VERSION || postcard(value)`.
pub(crate) fn encode<T: Stored>(value: &T) -> Result<Vec<u8>, StoreError> {
    // Serializing these plain structs into a Vec does not fail; map it anyway, never panic.
    postcard::to_extend(value, vec![T::VERSION]).map_err(|e| {
        StoreError::corrupt(
            T::TREE,
            format!("could not encode a {} record: {e}", T::NAME),
        )
    })
}

/// Decodes what [`encode`] wrote; anything else is [`StoreError::Corrupt`].
pub(crate) fn decode<T: Stored>(bytes: &[u8]) -> Result<T, StoreError> {
    let corrupt = |detail: &dyn fmt::Display| {
        StoreError::corrupt(T::TREE, format!("{} record: {detail}", T::NAME))
    };
    let (&version, body) = bytes.split_first().ok_or_else(|| corrupt(&"empty value"))?;
    if version != T::VERSION {
        return Err(corrupt(&format_args!(
            "version {version}, this build reads version {}",
            T::VERSION
        )));
    }
    let (value, rest) = postcard::take_from_bytes::<T>(body).map_err(|e| corrupt(&e))?;
    if !rest.is_empty() {
        return Err(corrupt(&format_args!("{} trailing bytes", rest.len())));
    }
    Ok(value)
}

/// `#[serde(with = "bytes_field")]`: a `Vec<u8>` as one byte string (same bytes as a postcard
/// `Vec<u8>`, decoded in one copy instead of byte by byte).
pub(crate) mod bytes_field {
    use std::fmt;

    use serde::de::{SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct BytesVisitor;

        impl<'de> Visitor<'de> for BytesVisitor {
            type Value = Vec<u8>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }

            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }

            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64 * 1024));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }

        d.deserialize_byte_buf(BytesVisitor)
    }
}

macro_rules! stored {
    ($ty:ident, $tree:expr, $version:literal) => {
        impl Stored for $ty {
            const TREE: &'static str = $tree;
            const VERSION: u8 = $version;
            const NAME: &'static str = stringify!($ty);
        }
    };
}

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TenantV1 {
    pub(crate) name: String,
}
stored!(TenantV1, TENANTS, 1);

/// An account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AccountV1 {
    pub(crate) tenant: u64,
    pub(crate) name: String,
}
stored!(AccountV1, ACCOUNTS, 1);

/// An enrolment token (by the hash of its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TokenV1 {
    /// The BLAKE3 hash of the token, also the key; compared in constant time.
    pub(crate) hash: [u8; 32],
    pub(crate) tenant: u64,
    pub(crate) account: u64,
    pub(crate) expires_at: u64,
    pub(crate) reusable: bool,
    /// When a one-use token was redeemed.
    pub(crate) used_at: Option<u64>,
    pub(crate) uses: u64,
}
stored!(TokenV1, TOKENS, 1);

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DeviceV1 {
    pub(crate) tenant: u64,
    pub(crate) account: u64,
    pub(crate) identity_key: [u8; 32],
    pub(crate) exchange_key: [u8; 32],
    pub(crate) name: String,
    pub(crate) revoked_at: Option<u64>,
    pub(crate) created_at: u64,
    pub(crate) last_seen: u64,
}
stored!(DeviceV1, DEVICES, 1);

/// A vault, with its commit counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VaultV1 {
    pub(crate) tenant: u64,
    pub(crate) account: u64,
    pub(crate) created_at: u64,
    /// The last seq handed out (0 before the first commit).
    pub(crate) head_seq: u64,
    /// The newest epoch seen in commits and envelopes.
    pub(crate) latest_epoch: u32,
}
stored!(VaultV1, VAULTS, 1);

/// Where a chunk is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ChunkStateV1 {
    /// Uploaded, not referenced by any commit yet.
    Pending { since: u64 },
    /// Referenced by a commit.
    Committed { at: u64 },
}

/// A stored chunk of a vault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ChunkV1 {
    pub(crate) sealed_len: u64,
    pub(crate) blake3: [u8; 32],
    pub(crate) state: ChunkStateV1,
}
stored!(ChunkV1, CHUNKS, 1);

/// Where a packed chunk's sealed bytes are: `sealed_len` bytes at `offset` in `pack`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PackLocV1 {
    pub(crate) pack: [u8; 16],
    pub(crate) offset: u64,
}
stored!(PackLocV1, CHUNK_LOCS, 1);

/// A completely written pack of a vault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PackV1 {
    /// Length of the pack object, index and trailer included.
    pub(crate) len: u64,
    /// Chunks written into it.
    pub(crate) chunks: u32,
    /// When it was recorded (unix seconds).
    pub(crate) created_at: u64,
}
stored!(PackV1, PACKS, 1);

/// A vault whose key must be rotated: a device of its account was revoked when `epoch` was its
/// newest epoch. An envelope of a newer epoch ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RotationDueV1 {
    pub(crate) epoch: u32,
    /// The revocation that made it due (unix seconds).
    pub(crate) since: u64,
}
stored!(RotationDueV1, ROTATIONS, 1);

/// One commit log record: a version of an entry at a seq.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LogV1 {
    pub(crate) entry: EntryKey,
    pub(crate) version: VersionId,
    pub(crate) parent: Option<VersionId>,
    #[serde(with = "bytes_field")]
    pub(crate) record: Vec<u8>,
    pub(crate) chunks: Vec<ChunkId>,
    pub(crate) epoch: u32,
    pub(crate) device: DeviceId,
    pub(crate) committed_at: u64,
}
stored!(LogV1, LOG, 1);

/// An entry's head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HeadV1 {
    pub(crate) version: VersionId,
    pub(crate) seq: u64,
}
stored!(HeadV1, HEADS, 1);

/// Metered traffic of one `traffic-v1` key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TrafficV1 {
    pub(crate) ingress: u64,
    pub(crate) egress: u64,
    pub(crate) requests: u64,
}
stored!(TrafficV1, TRAFFIC, 1);

/// A vault's storage gauge: its stored bytes since `since` (unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GaugeV1 {
    pub(crate) account: u64,
    pub(crate) stored: u64,
    pub(crate) since: u64,
}
stored!(GaugeV1, METER, 1);

/// A vault's storage in one hour, up to the gauge's `since` when the hour holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StorageHourV1 {
    pub(crate) max: u64,
    pub(crate) byte_seconds: u128,
}
stored!(StorageHourV1, METER, 1);

/// A vault key wrapped to a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EnvelopeV1 {
    #[serde(with = "bytes_field")]
    pub(crate) envelope: Vec<u8>,
}
stored!(EnvelopeV1, ENVELOPES, 1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_with_version_byte() {
        let head = HeadV1 {
            version: VersionId::from_bytes([7; 16]),
            seq: 300,
        };
        let bytes = encode(&head).unwrap();
        assert_eq!(bytes.first(), Some(&1));
        assert_eq!(decode::<HeadV1>(&bytes).unwrap(), head);
    }

    #[test]
    fn bad_values_are_corrupt_not_panics() {
        let good = encode(&TenantV1 { name: "t".into() }).unwrap();
        let mut trailing = good.clone();
        trailing.push(0);
        let mut wrong_version = good.clone();
        wrong_version[0] = 9;
        for bad in [&[][..], &[1][..], &[1, 200][..], &trailing, &wrong_version] {
            match decode::<TenantV1>(bad) {
                Err(StoreError::Corrupt { tree, .. }) => assert_eq!(tree, TENANTS),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
        assert!(decode_u64(META, &[1, 2]).is_err());
        assert!(log_key_seq(&[0; 23]).is_err());
    }

    #[test]
    fn keys_are_big_endian_and_ordered() {
        let vault = VaultId::from_bytes([1; 16]);
        let a = log_key(&vault, Seq::new(255));
        let b = log_key(&vault, Seq::new(256));
        assert!(a < b);
        assert_eq!(&a[16..], &255u64.to_be_bytes());
        assert_eq!(log_key_seq(&b).unwrap(), Seq::new(256));
        let entry = EntryKey::from_bytes([2; 32]);
        let v = version_key(&vault, &entry, Seq::new(9));
        assert_eq!(version_key_seq(&v).unwrap(), Seq::new(9));
        assert_eq!(&v[..16], vault.as_bytes());
        let e = envelope_key(
            &vault,
            &DeviceId::from_bytes([3; 32]),
            Epoch::new(2),
            &DeviceId::from_bytes([4; 32]),
        );
        assert_eq!(&e[48..52], &2u32.to_be_bytes());
        assert_eq!(
            envelope_key_parts(&e).unwrap(),
            (Epoch::new(2), DeviceId::from_bytes([4; 32]))
        );
        assert!(envelope_key_parts(&e[..83]).is_err());
    }

    #[test]
    fn bytes_field_matches_plain_vec() {
        let log = LogV1 {
            entry: EntryKey::from_bytes([1; 32]),
            version: VersionId::from_bytes([2; 16]),
            parent: None,
            record: vec![5; 300],
            chunks: vec![ChunkId::from_bytes([3; 32])],
            epoch: 1,
            device: DeviceId::from_bytes([4; 32]),
            committed_at: 10,
        };
        let bytes = encode(&log).unwrap();
        assert_eq!(decode::<LogV1>(&bytes).unwrap(), log);
    }
}
