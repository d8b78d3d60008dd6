//! The [`MetaStore`] trait and the records it hands out.

use std::fmt;

use async_trait::async_trait;
use dooz_protocol::limits::MAX_FRAME_LEN;
use dooz_protocol::{
    Change, ChunkId, CommitEntry, CommitResult, DeviceId, EntryKey, EnvelopeInfo, Epoch, Seq,
    VaultId, VaultInfo, VersionId,
};

use crate::store::error::StoreError;
use crate::store::token::EnrolmentToken;

/// Most bytes of changes one [`ChangePage`] or [`VersionPage`] holds (estimated from above), so
/// that it fits a `Changes`/`HistoryPage` frame. A page always holds at least one change, and
/// one change always fits a frame (the protocol's record and chunk-list limits see to that).
pub const MAX_PAGE_BYTES: usize = MAX_FRAME_LEN as usize - 64 * 1024;

/// Upper bound of the postcard size of a [`Change`]: its fixed fields and varints take at most
/// 128 bytes besides the record and the chunk ids.
pub(crate) fn change_size_bound(change: &Change) -> usize {
    128 + change.record.len() + change.chunks.len() * ChunkId::LEN
}

/// A tenant's id: a customer of the service.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TenantId(u64);

/// An account's id: an end user inside a tenant.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AccountId(u64);

macro_rules! number_id {
    ($name:ident) => {
        impl $name {
            /// Wraps an id number.
            pub const fn new(n: u64) -> Self {
                Self(n)
            }

            /// The id number.
            pub const fn get(self) -> u64 {
                self.0
            }
        }

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

number_id!(TenantId);
number_id!(AccountId);

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRecord {
    /// Its id.
    pub id: TenantId,
    /// Its name, unique on the server.
    pub name: String,
}

/// An account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRecord {
    /// Its id.
    pub id: AccountId,
    /// Its tenant.
    pub tenant: TenantId,
    /// Its name, unique in the tenant.
    pub name: String,
}

/// What a device presents when it enrols.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRegistration {
    /// The device id: BLAKE3 of `identity_key` (checked).
    pub device: DeviceId,
    /// The Ed25519 public key of the device's TLS certificate.
    pub identity_key: [u8; 32],
    /// The X25519 public key vault keys are wrapped to.
    pub exchange_key: [u8; 32],
    /// A name people recognise the device by ("Ana's laptop"), 1 to 256 bytes.
    pub name: String,
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The device.
    pub device: DeviceId,
    /// Its tenant.
    pub tenant: TenantId,
    /// Its account.
    pub account: AccountId,
    /// The Ed25519 public key of its TLS certificate.
    pub identity_key: [u8; 32],
    /// Its X25519 public key.
    pub exchange_key: [u8; 32],
    /// Its name.
    pub name: String,
    /// When it was revoked (unix seconds), if it was.
    pub revoked_at: Option<u64>,
    /// When it enrolled (unix seconds).
    pub created_at: u64,
    /// When it last connected (unix seconds).
    pub last_seen: u64,
}

impl DeviceRecord {
    /// Whether the device was revoked.
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }
}

/// A vault and its counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultRecord {
    /// The vault.
    pub vault: VaultId,
    /// The tenant of the owning account (blobs live under it).
    pub tenant: TenantId,
    /// The owning account.
    pub account: AccountId,
    /// When it was created (unix seconds).
    pub created_at: u64,
    /// Its last committed seq (`Seq::ZERO` before the first commit).
    pub head_seq: Seq,
    /// The newest key epoch seen in its commits and envelopes.
    pub latest_epoch: Epoch,
}

impl VaultRecord {
    /// The vault as a `Vaults` answer lists it.
    pub fn info(&self) -> VaultInfo {
        VaultInfo {
            vault: self.vault,
            head_seq: self.head_seq,
            latest_epoch: self.latest_epoch,
        }
    }
}

/// Where a stored chunk is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkState {
    /// Uploaded but not referenced by any commit yet; garbage after a grace period.
    Pending {
        /// When it was uploaded (unix seconds).
        since: u64,
    },
    /// Referenced by at least one commit.
    Committed {
        /// When the first commit referencing it landed (unix seconds).
        at: u64,
    },
}

/// A chunk stored in a vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRecord {
    /// The chunk.
    pub chunk: ChunkId,
    /// Length of its sealed bytes.
    pub sealed_len: u64,
    /// BLAKE3 of its sealed bytes.
    pub blake3: [u8; 32],
    /// Pending or committed.
    pub state: ChunkState,
    /// Where its sealed bytes are.
    pub location: ChunkLocation,
}

/// Where a chunk's sealed bytes are in the blob store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkLocation {
    /// A blob of its own, `<tenant>/<vault>/chunks/<2 hex>/<hex id>`.
    Blob,
    /// `sealed_len` bytes at `offset` in the pack `<tenant>/<vault>/packs/<hex pack id>`.
    Packed {
        /// The pack.
        pack: PackId,
        /// Where the chunk starts in it.
        offset: u64,
    },
}

/// A pack's id: 16 random bytes, so servers sharing a bucket never pick the same name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackId([u8; 16]);

impl PackId {
    /// The id with these bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// A fresh random id.
    pub fn random() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 16];
        getrandom::getrandom(&mut bytes)?;
        Ok(Self(bytes))
    }

    /// The id's bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Lowercase hex, as in the pack's blob key.
    pub fn to_hex(&self) -> String {
        use fmt::Write as _;
        let mut out = String::with_capacity(32);
        for b in self.0 {
            let _ = write!(out, "{b:02x}");
        }
        out
    }
}

impl fmt::Debug for PackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PackId({})", self.to_hex())
    }
}

impl fmt::Display for PackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A pack of a vault, with what of it is still referenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackInfo {
    /// The pack.
    pub pack: PackId,
    /// Its length, index and trailer included.
    pub len: u64,
    /// When it was recorded (unix seconds).
    pub created_at: u64,
    /// Chunk records that point into it.
    pub live_chunks: u64,
    /// Their sealed bytes.
    pub live_bytes: u64,
}

/// A chunk written into a pack: `sealed_len` bytes at `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedChunk {
    /// The chunk.
    pub chunk: ChunkId,
    /// Where it starts in the pack.
    pub offset: u64,
    /// Length of its sealed bytes.
    pub sealed_len: u64,
    /// BLAKE3 of its sealed bytes.
    pub blake3: [u8; 32],
}

/// What an account uses, as quotas count it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccountUsage {
    /// Sealed bytes stored: the sum of `sealed_len` over the chunk records of the account's
    /// vaults (pending and committed). Kept as a counter updated atomically with each chunk
    /// record, so a crash neither loses nor counts twice an upload.
    pub stored_bytes: u64,
    /// Devices enrolled and not revoked.
    pub devices: u64,
    /// Vaults the account owns.
    pub vaults: u64,
}

/// Seconds in a metering hour; hours are numbered from the unix epoch (`unix seconds / 3600`).
pub const HOUR_SECS: u64 = 3600;

/// Where metered traffic is counted: a tenant's account, the vault a request named (`None`:
/// requests that name no vault of the account, such as `Hello` or `ListVaults`), the device
/// that sent it (`None`: not a device's request) and the hour it was answered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrafficKey {
    /// The tenant.
    pub tenant: TenantId,
    /// The hour (unix seconds / [`HOUR_SECS`]).
    pub hour: u64,
    /// The account.
    pub account: AccountId,
    /// The vault, if the request named one of the account's vaults.
    pub vault: Option<VaultId>,
    /// The device.
    pub device: Option<DeviceId>,
}

/// Metered traffic: protocol bytes in and out, and requests answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrafficCounts {
    /// Bytes received: request frames, and chunk bodies the server stored.
    pub ingress_bytes: u64,
    /// Bytes sent: answer frames, chunk bodies and change notifications.
    pub egress_bytes: u64,
    /// Requests answered.
    pub requests: u64,
}

impl TrafficCounts {
    /// Adds `other` (saturating).
    pub fn add(&mut self, other: &Self) {
        self.ingress_bytes = self.ingress_bytes.saturating_add(other.ingress_bytes);
        self.egress_bytes = self.egress_bytes.saturating_add(other.egress_bytes);
        self.requests = self.requests.saturating_add(other.requests);
    }

    /// Whether all three are zero.
    pub fn is_zero(&self) -> bool {
        *self == Self::default()
    }
}

/// A vault's stored bytes over one hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageHour {
    /// The tenant.
    pub tenant: TenantId,
    /// The owning account.
    pub account: AccountId,
    /// The vault.
    pub vault: VaultId,
    /// The hour (unix seconds / [`HOUR_SECS`]).
    pub hour: u64,
    /// The most sealed bytes the vault held during the hour (up to `now` for the current one).
    pub max_bytes: u64,
    /// The integral of its sealed bytes over the hour, in byte-seconds (up to `now`).
    pub byte_seconds: u128,
}

/// A vault's stored bytes now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VaultStorage {
    /// The tenant.
    pub tenant: TenantId,
    /// The owning account.
    pub account: AccountId,
    /// The vault.
    pub vault: VaultId,
    /// Sealed bytes of its chunk records (pending and committed): after dedup, whatever the
    /// packing.
    pub stored_bytes: u64,
    /// When that last changed (unix seconds).
    pub since: u64,
}

/// An entry's current version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryHead {
    /// The head version.
    pub version: VersionId,
    /// The seq it was committed at.
    pub seq: Seq,
}

/// A page of a vault's commit log, as `Pull` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangePage {
    /// Changes in seq order, without gaps, starting right after the cursor.
    pub changes: Vec<Change>,
    /// The cursor for the next pull: the last seq in `changes`, or the cursor given if empty.
    pub next: Seq,
    /// Whether the log had more changes after `next` when the page was read.
    pub more: bool,
}

/// A page of an entry's versions, newest first, as `History` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionPage {
    /// The versions, newest first.
    pub versions: Vec<Change>,
    /// `before` for the next page; `None` when this page reached the entry's first version.
    pub next: Option<Seq>,
}

/// What another server instance sharing the store did, as [`MetaStore::events`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreEvent {
    /// A commit moved the vault's head to `seq`.
    Changed {
        /// The vault.
        vault: VaultId,
        /// Its new head.
        seq: Seq,
    },
    /// The device was revoked: close its connections.
    Revoked {
        /// The device.
        device: DeviceId,
    },
    /// Events may have been missed (the store's listener reconnected, or the receiver fell
    /// behind). The service logs it; devices catch up at their next periodic sync.
    Lagged,
}

/// The server's metadata: tenants, accounts, devices, vaults, chunk records, the commit log,
/// entry heads and envelopes. Blobs live elsewhere (`dooz-storage`).
///
/// One trait, several engines: [`SledStore`](crate::store::SledStore) embedded, PostgreSQL
/// later. Every engine passes the same conformance suite.
///
/// Conventions:
/// - Times are unix seconds, passed in by the caller (`now`), so the store has no clock.
/// - Every operation on a vault fails with [`StoreError::NotFound`] when the vault does not
///   exist. The store does not check *who* asks: the service checks that the calling device's
///   account owns the vault ([`vault`](Self::vault)) before calling.
/// - Writes are atomic. When a write returns, it is durable, except
///   [`record_chunk`](Self::record_chunk) and [`touch_device`](Self::touch_device), which become
///   durable with the next durable write: after a crash a chunk record may be gone, and a commit
///   naming that chunk fails with [`StoreError::MissingChunks`] until the device uploads it again.
/// - Subscriptions are not the store's business: the service broadcasts `Changed{vault, seq}`
///   after [`commit`](Self::commit) returns, and by then the changes are visible to
///   [`pull`](Self::pull).
#[async_trait]
pub trait MetaStore: Send + Sync + 'static {
    // --- tenants and accounts (minimal; the control plane grows them) -----------------------

    /// Creates a tenant; `name` (1 to 256 bytes) must be unused.
    async fn create_tenant(&self, name: &str) -> Result<TenantId, StoreError>;

    /// The tenant with this id.
    async fn tenant(&self, id: TenantId) -> Result<Option<TenantRecord>, StoreError>;

    /// The tenant with this name.
    async fn tenant_by_name(&self, name: &str) -> Result<Option<TenantRecord>, StoreError>;

    /// Creates an account in `tenant`; `name` (1 to 256 bytes) must be unused in the tenant.
    async fn create_account(&self, tenant: TenantId, name: &str) -> Result<AccountId, StoreError>;

    /// The account with this id.
    async fn account(&self, id: AccountId) -> Result<Option<AccountRecord>, StoreError>;

    /// The account of `tenant` with this name.
    async fn account_by_name(
        &self,
        tenant: TenantId,
        name: &str,
    ) -> Result<Option<AccountRecord>, StoreError>;

    // --- enrolment ---------------------------------------------------------------------------

    /// Mints an enrolment token for `account`, valid until `expires_at` (unix seconds). A
    /// one-use token is burnt by its first successful redemption; a reusable one enrols any
    /// number of devices until it expires. Only a hash of the token is stored.
    async fn create_enrolment_token(
        &self,
        account: AccountId,
        expires_at: u64,
        reusable: bool,
    ) -> Result<EnrolmentToken, StoreError>;

    /// Registers a device with a token, atomically: either the device is registered (and a
    /// one-use token burnt) or nothing changes. Fails with [`StoreError::TokenInvalid`],
    /// [`StoreError::TokenExpired`] or [`StoreError::TokenUsed`] for a bad token,
    /// [`StoreError::AlreadyExists`] when the device is registered already,
    /// [`StoreError::DeviceRevoked`] when it was registered and revoked, and
    /// [`StoreError::InvalidInput`] when the device id is not BLAKE3 of the identity key.
    async fn redeem_enrolment(
        &self,
        token: &str,
        registration: DeviceRegistration,
        now: u64,
    ) -> Result<DeviceRecord, StoreError>;

    /// The account (and its tenant) an enrolment token would enrol a device into, if the token
    /// is known; expired and used tokens too ([`redeem_enrolment`](Self::redeem_enrolment) says
    /// why it refuses them). Redeems nothing: the service uses it to check the account's device
    /// limit before redeeming.
    async fn enrolment_token_account(
        &self,
        token: &str,
    ) -> Result<Option<(TenantId, AccountId)>, StoreError>;

    // --- devices -----------------------------------------------------------------------------

    /// The device, revoked or not.
    async fn device(&self, device: DeviceId) -> Result<Option<DeviceRecord>, StoreError>;

    /// Admits a connecting device: records `now` as its last contact and returns it. Fails with
    /// [`StoreError::NotFound`] for an unknown device and [`StoreError::DeviceRevoked`] for a
    /// revoked one.
    async fn touch_device(&self, device: DeviceId, now: u64) -> Result<DeviceRecord, StoreError>;

    /// Revokes a device (idempotent: the first revocation time stays) and returns it. The first
    /// revocation also marks every vault of the device's account for key rotation, in the same
    /// transaction ([`rotations_due`](Self::rotations_due)).
    async fn revoke_device(&self, device: DeviceId, now: u64) -> Result<DeviceRecord, StoreError>;

    /// Renames a device, revoked or not (the name is checked as at enrolment) and returns it.
    /// Fails with [`StoreError::NotFound`] for an unknown device.
    async fn rename_device(&self, device: DeviceId, name: &str)
    -> Result<DeviceRecord, StoreError>;

    /// The account's devices, revoked ones included, by device id.
    async fn list_devices(&self, account: AccountId) -> Result<Vec<DeviceRecord>, StoreError>;

    /// What the account uses now: stored bytes, devices not revoked, vaults. Fails with
    /// [`StoreError::NotFound`] for an unknown account.
    ///
    /// `stored_bytes` is the sum of `sealed_len` over the chunk records of the account's vaults.
    /// Engines keep it as a counter changed in the same atomic write as the chunk record
    /// ([`record_chunk`](Self::record_chunk)), so a crash keeps both or neither: the counter is
    /// never short of, nor past, the records that survived. Re-recording a chunk with the same
    /// bytes, or a committed chunk, changes nothing; a pending chunk re-uploaded with other
    /// bytes counts its new length instead of its old one.
    async fn account_usage(&self, account: AccountId) -> Result<AccountUsage, StoreError>;

    /// Deletes an account and everything of it in this store: its vaults with their chunk
    /// records, logs, entry heads, versions and key envelopes, its devices, its enrolment
    /// tokens, its usage counter, and the account itself. Returns the vaults it had (so that
    /// the caller can delete their blobs, which this store does not hold). Fails with
    /// [`StoreError::NotFound`] for an unknown account. Not atomic across vaults, but safe to
    /// run again after a crash: the account record goes last.
    /// The vaults' storage gauges drop to zero at `now` (their usage rows stay, for reports).
    async fn delete_account(
        &self,
        account: AccountId,
        now: u64,
    ) -> Result<Vec<VaultId>, StoreError>;

    // --- vaults ------------------------------------------------------------------------------

    /// Creates a vault owned by `account`. Idempotent for the same account (returns the existing
    /// vault); [`StoreError::AlreadyExists`] when another account owns the id.
    async fn create_vault(
        &self,
        account: AccountId,
        vault: VaultId,
        now: u64,
    ) -> Result<VaultRecord, StoreError>;

    /// The vault, with its owner and counters.
    async fn vault(&self, vault: VaultId) -> Result<Option<VaultRecord>, StoreError>;

    /// The account that owns the vault.
    async fn vault_account(&self, vault: VaultId) -> Result<Option<AccountId>, StoreError> {
        Ok(self.vault(vault).await?.map(|v| v.account))
    }

    /// The account's vaults, by vault id.
    async fn list_vaults(&self, account: AccountId) -> Result<Vec<VaultInfo>, StoreError>;

    // --- chunks ------------------------------------------------------------------------------

    /// The ids among `chunks` that the vault has no record of, in the order given, each once.
    async fn missing_chunks(
        &self,
        vault: VaultId,
        chunks: &[ChunkId],
    ) -> Result<Vec<ChunkId>, StoreError>;

    /// Records an uploaded chunk (call it after the blob is stored) and returns the record now
    /// held. A new chunk is [`ChunkState::Pending`] until a commit references it. Recording a
    /// chunk again is a no-op, except that a *pending* chunk uploaded again with other sealed
    /// bytes (sealing is randomised) takes the new length and hash, as the blob store now holds
    /// the new bytes. A committed chunk's record never changes: do not overwrite its blob.
    async fn record_chunk(
        &self,
        vault: VaultId,
        chunk: ChunkId,
        sealed_len: u64,
        blake3: [u8; 32],
        now: u64,
    ) -> Result<ChunkRecord, StoreError>;

    /// Records the chunks of a pack of `pack_len` bytes that is completely written (call it
    /// after the pack's `put` returned), and the pack itself, in one transaction. Each chunk is
    /// recorded as by [`record_chunk`](Self::record_chunk), located in the pack: a chunk already
    /// committed, or pending with the same length and hash, keeps its record (its bytes in this
    /// pack are garbage); a pending one with other bytes takes the packed ones.
    async fn record_packed_chunks(
        &self,
        vault: VaultId,
        pack: PackId,
        pack_len: u64,
        chunks: Vec<PackedChunk>,
        now: u64,
    ) -> Result<(), StoreError>;

    /// [`record_chunk`](Self::record_chunk), adding `traffic` (the upload's metered traffic) to
    /// the traffic counters in the same transaction: the upload counts if and only if its record
    /// does (docs/METERING.md). Engines should override the default, which is two writes.
    #[allow(clippy::too_many_arguments)]
    async fn record_chunk_metered(
        &self,
        vault: VaultId,
        chunk: ChunkId,
        sealed_len: u64,
        blake3: [u8; 32],
        now: u64,
        traffic: Vec<(TrafficKey, TrafficCounts)>,
    ) -> Result<ChunkRecord, StoreError> {
        let record = self
            .record_chunk(vault, chunk, sealed_len, blake3, now)
            .await?;
        if !traffic.is_empty() {
            self.add_traffic(traffic).await?;
        }
        Ok(record)
    }

    /// [`record_packed_chunks`](Self::record_packed_chunks), adding `traffic` (the uploads of its
    /// chunks) to the traffic counters in the same transaction.
    #[allow(clippy::too_many_arguments)]
    async fn record_packed_chunks_metered(
        &self,
        vault: VaultId,
        pack: PackId,
        pack_len: u64,
        chunks: Vec<PackedChunk>,
        now: u64,
        traffic: Vec<(TrafficKey, TrafficCounts)>,
    ) -> Result<(), StoreError> {
        self.record_packed_chunks(vault, pack, pack_len, chunks, now)
            .await?;
        if !traffic.is_empty() {
            self.add_traffic(traffic).await?;
        }
        Ok(())
    }

    /// Every vault, for maintenance (garbage collection).
    async fn all_vaults(&self) -> Result<Vec<VaultRecord>, StoreError>;

    /// The vault's [`ChunkState::Pending`] chunks uploaded before `before` (unix seconds).
    async fn pending_chunks_before(
        &self,
        vault: VaultId,
        before: u64,
    ) -> Result<Vec<ChunkRecord>, StoreError>;

    /// Deletes the record of a chunk that is still pending since `since` (as
    /// [`pending_chunks_before`](Self::pending_chunks_before) saw it), and lowers the account's
    /// stored bytes, in one transaction. A chunk that a commit has referenced meanwhile, or that
    /// was uploaded again with other bytes, is kept. Returns whether the record was deleted; the
    /// caller then deletes its blob. Durable when it returns. `now` (unix seconds) is when the
    /// vault's storage gauge drops.
    async fn collect_pending_chunk(
        &self,
        vault: VaultId,
        chunk: ChunkId,
        since: u64,
        now: u64,
    ) -> Result<bool, StoreError>;

    /// Version retention: forgets, from the entry histories of `vault` (`History`), every
    /// version whose entry's next version was committed before `superseded_before` (unix
    /// seconds). Heads are never forgotten. The commit log keeps the versions' records (a device
    /// that pulls late still applies the heads only), but [`retained_chunks`](Self::retained_chunks)
    /// no longer counts their chunks. Returns how many versions were forgotten.
    async fn expire_versions(
        &self,
        vault: VaultId,
        superseded_before: u64,
    ) -> Result<u64, StoreError>;

    /// The chunks that the versions `vault` keeps (every head and every version still in an
    /// entry's history) reference.
    async fn retained_chunks(
        &self,
        vault: VaultId,
    ) -> Result<std::collections::HashSet<ChunkId>, StoreError>;

    /// Marks every committed chunk of `vault` not in `keep` pending since `now`: garbage
    /// collection deletes it after the grace period unless a commit references it again first
    /// (which makes it committed again). Returns how many.
    async fn release_chunks(
        &self,
        vault: VaultId,
        keep: std::collections::HashSet<ChunkId>,
        now: u64,
    ) -> Result<u64, StoreError>;

    /// Marks a chunk committed (at `now`) again if it is still pending since `since`: garbage
    /// collection found a kept version referencing it (released while a commit referenced it
    /// again). Returns whether it did.
    async fn keep_chunk(
        &self,
        vault: VaultId,
        chunk: ChunkId,
        since: u64,
        now: u64,
    ) -> Result<bool, StoreError>;

    /// Repacking: records the completely written pack `new` (`new_len` bytes) and moves each
    /// chunk of `moves` `(chunk, offset in old, offset in new)` there, in one transaction, if
    /// it is still located at that offset in `old` (a chunk deleted or moved meanwhile stays
    /// as it is). Returns how many moved; `old` is then garbage for a later collection.
    async fn relocate_packed_chunks(
        &self,
        vault: VaultId,
        old: PackId,
        new: PackId,
        new_len: u64,
        moves: Vec<(ChunkId, u64, u64)>,
        now: u64,
    ) -> Result<u64, StoreError>;

    /// The vault's packs, with their live chunks and bytes.
    async fn packs(&self, vault: VaultId) -> Result<Vec<PackInfo>, StoreError>;

    /// Forgets a pack no chunk record points into (the caller then deletes its blob). Returns
    /// whether it was known.
    async fn delete_pack(&self, vault: VaultId, pack: PackId) -> Result<bool, StoreError>;

    /// The vault's record of a chunk.
    async fn chunk(
        &self,
        vault: VaultId,
        chunk: ChunkId,
    ) -> Result<Option<ChunkRecord>, StoreError>;

    /// The vault's records of `chunks`, in the order given (`None` for a chunk it has no record
    /// of).
    async fn chunks(
        &self,
        vault: VaultId,
        chunks: &[ChunkId],
    ) -> Result<Vec<Option<ChunkRecord>>, StoreError> {
        let mut out = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            out.push(self.chunk(vault, *chunk).await?);
        }
        Ok(out)
    }

    /// Removes the record of a [`ChunkState::Pending`] chunk whose blob was lost (the server
    /// crashed before the blob was synced), so that `Have` reports it missing again and the
    /// device uploads it again; the account's stored bytes drop by its length in the same
    /// transaction. A committed or unknown chunk is left alone. Returns whether a record was
    /// removed. Durable when it returns.
    async fn forget_chunk(
        &self,
        vault: VaultId,
        chunk: ChunkId,
        now: u64,
    ) -> Result<bool, StoreError>;

    // --- the commit log ----------------------------------------------------------------------

    /// Commits new versions of entries, in one transaction.
    ///
    /// Every chunk named by any entry must be recorded in the vault, or the whole commit fails
    /// with [`StoreError::MissingChunks`] and nothing is applied. Then each entry, in order, is
    /// compare-and-swapped on its parent: `parent` must be the entry's head (`None`: the entry
    /// must have none). An applied entry gets the next seq (the vault's head + 1, gap-free), its
    /// chunks become [`ChunkState::Committed`], and the result is `Applied`. A stale parent
    /// gives `Conflict{head}`, writes nothing and takes no seq. Entries are opaque: a deletion is
    /// a version like any other. An entry may appear twice; the second sees the first's result.
    async fn commit(
        &self,
        vault: VaultId,
        device: DeviceId,
        entries: Vec<CommitEntry>,
        now: u64,
    ) -> Result<Vec<CommitResult>, StoreError>;

    /// The changes after `since`, oldest first, without gaps: at most `limit` of them (0 means
    /// [`MAX_PULL_PAGE`](dooz_protocol::limits::MAX_PULL_PAGE), which also caps it) and at
    /// most about [`MAX_PAGE_BYTES`].
    async fn pull(&self, vault: VaultId, since: Seq, limit: u32) -> Result<ChangePage, StoreError>;

    /// The versions of `entry` with a seq below `before` (all when `None`), newest first: at
    /// most `limit` (0 means [`MAX_HISTORY_PAGE`](dooz_protocol::limits::MAX_HISTORY_PAGE),
    /// which also caps it) and at most about [`MAX_PAGE_BYTES`]. An unknown entry has no versions.
    async fn history(
        &self,
        vault: VaultId,
        entry: EntryKey,
        limit: u32,
        before: Option<Seq>,
    ) -> Result<VersionPage, StoreError>;

    /// The vault's last committed seq.
    async fn head(&self, vault: VaultId) -> Result<Seq, StoreError>;

    /// The entry's current version, if it has one.
    async fn entry_head(
        &self,
        vault: VaultId,
        entry: EntryKey,
    ) -> Result<Option<EntryHead>, StoreError>;

    // --- envelopes ---------------------------------------------------------------------------

    /// Stores the vault key of `epoch` wrapped by `sender` to `recipient` (at most
    /// [`MAX_ENVELOPE_LEN`](dooz_protocol::limits::MAX_ENVELOPE_LEN) bytes). The same sender
    /// storing the same recipient and epoch again replaces its envelope; envelopes from
    /// different senders are all kept. Raises the vault's latest epoch if `epoch` is newer.
    async fn put_envelope(
        &self,
        vault: VaultId,
        epoch: Epoch,
        recipient: DeviceId,
        sender: DeviceId,
        envelope: Vec<u8>,
    ) -> Result<(), StoreError>;

    /// Starts epoch `epoch` of `vault`'s key with the envelope `device` wrapped to itself: stored
    /// only if `epoch` is exactly one past the vault's newest epoch, else
    /// [`StoreError::EpochTaken`] (another device rotated first), atomically. Ends a due
    /// rotation, like any envelope of a newer epoch.
    async fn start_epoch(
        &self,
        vault: VaultId,
        epoch: Epoch,
        device: DeviceId,
        envelope: Vec<u8>,
    ) -> Result<(), StoreError>;

    /// The vaults of `account` whose key must be rotated: a device of the account was revoked
    /// ([`revoke_device`](Self::revoke_device) marks every vault of the account in the same
    /// transaction) and no envelope of a newer epoch than the vault's newest at that time has
    /// been stored since. Marks survive restarts.
    async fn rotations_due(&self, account: AccountId) -> Result<Vec<VaultId>, StoreError>;

    // --- metering (docs/METERING.md) ----------------------------------------------------------

    /// Adds each row's counts to the traffic counters of its key, all in one transaction, and
    /// returns once that is durable. A key may appear more than once.
    async fn add_traffic(&self, batch: Vec<(TrafficKey, TrafficCounts)>) -> Result<(), StoreError>;

    /// The traffic counters of `tenant` (all tenants: `None`) for the hours in `hours`, by key
    /// (tenant, hour, account, vault, device), zero rows left out.
    async fn traffic(
        &self,
        tenant: Option<TenantId>,
        hours: std::ops::Range<u64>,
    ) -> Result<Vec<(TrafficKey, TrafficCounts)>, StoreError>;

    /// Each vault's stored bytes in each hour of `hours` up to `now` (unix seconds), by tenant,
    /// vault and hour; hours in which a vault held nothing are left out.
    ///
    /// Engines keep a gauge per vault (its stored bytes, which change in the same transaction as
    /// the chunk records, like [`account_usage`](Self::account_usage)) and, at each change,
    /// fold the time since the previous change into hour rows (peak and byte-seconds). The hours
    /// after the last change are computed from the gauge, so a closed hour always reads the same.
    async fn storage_hours(
        &self,
        tenant: Option<TenantId>,
        hours: std::ops::Range<u64>,
        now: u64,
    ) -> Result<Vec<StorageHour>, StoreError>;

    /// The stored bytes of every vault of `tenant` (all tenants: `None`) now, by tenant and
    /// vault. Vaults that store nothing (those of deleted accounts among them) are left out.
    async fn storage_gauges(
        &self,
        tenant: Option<TenantId>,
    ) -> Result<Vec<VaultStorage>, StoreError>;

    /// The vault's envelopes for `recipient`, oldest epoch first (the newest
    /// [`MAX_ENVELOPES`](dooz_protocol::limits::MAX_ENVELOPES) if there are more).
    async fn envelopes_for(
        &self,
        vault: VaultId,
        recipient: DeviceId,
    ) -> Result<Vec<EnvelopeInfo>, StoreError>;

    // --- several instances ------------------------------------------------------------------

    /// Commits and revocations made through this store by *any* server instance (this one
    /// included), for engines that several instances share; `None` for an engine only one
    /// server opens (sled), whose service announces its own commits.
    fn events(&self) -> Option<tokio::sync::broadcast::Receiver<StoreEvent>> {
        None
    }
}

/// The hours that `[from, to)` (unix seconds) overlaps, each with the seconds it overlaps; the
/// hour of `from` always, even when the span is empty. Engines fold storage gauges with it.
pub(crate) fn hour_spans(from: u64, to: u64) -> impl Iterator<Item = (u64, u64)> {
    let first = from / HOUR_SECS;
    let last = to.max(from) / HOUR_SECS;
    (first..=last).map(move |hour| {
        let start = (hour * HOUR_SECS).max(from);
        let end = ((hour + 1) * HOUR_SECS).min(to.max(from));
        (hour, end.saturating_sub(start))
    })
}

/// A page's `limit`, 0 meaning `max`, capped at `max`.
pub(crate) fn page_limit(limit: u32, max: u32) -> usize {
    let limit = if limit == 0 { max } else { limit.min(max) };
    usize::try_from(limit).unwrap_or(usize::MAX)
}

/// Checks a tenant, account or device name: 1 to
/// [`MAX_NAME_LEN`](dooz_protocol::limits::MAX_NAME_LEN) bytes, no control characters.
pub(crate) fn check_name(what: &'static str, name: &str) -> Result<(), StoreError> {
    let max = dooz_protocol::limits::MAX_NAME_LEN;
    let reason = if name.is_empty() {
        "it is empty".to_owned()
    } else if name.len() > max {
        format!("it is {} bytes long, the limit is {max}", name.len())
    } else if name.chars().any(char::is_control) {
        "it contains control characters".to_owned()
    } else {
        return Ok(());
    };
    Err(StoreError::InvalidInput { what, reason })
}
