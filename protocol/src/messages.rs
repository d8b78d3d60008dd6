//! Every message of protocol v1, its type id and version.
//!
//! Requests have type ids `0x0001..=0x7fff`, responses `0x8000..=0xffff` (`0x8000` is `Error`
//! and always will be). Each message struct is its postcard payload and ends with
//! `ext: Extensions`. Nested items (`CommitEntry`, `Change`, ...) have no extensions of their
//! own: changing one is a new version of the messages that carry it.

use std::fmt;

use postcard::ser_flavors::Flavor;
use serde::{Deserialize, Serialize};

use crate::error_code::ErrorResponse;
use crate::ext::Extensions;
use crate::ids::{ChunkId, DeviceId, EntryKey, Epoch, Seq, SlotId, VaultId, VersionId};
use crate::limits::{
    LimitError, MAX_CHUNK_LEN, MAX_CHUNKS_PER_ENTRY, MAX_COMMIT_ENTRIES, MAX_ENVELOPE_LEN,
    MAX_ENVELOPES, MAX_ERROR_MESSAGE_LEN, MAX_EXTENSIONS, MAX_HAVE_IDS, MAX_HISTORY_PAGE,
    MAX_NAME_LEN, MAX_PAIRING_PAYLOAD_LEN, MAX_PULL_PAGE, MAX_SEALED_RECORD_LEN, MAX_VAULTS, check,
    check_len,
};

/// Prints a byte field as its length, so that logging a message never dumps megabytes.
struct Len<'a>(&'a [u8]);

impl fmt::Debug for Len<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

/// Per-message limit checks beyond the number of extensions (which every message has).
trait Limits {
    fn check_limits(&self) -> Result<(), LimitError> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// First request on a connection: says who the client is and which protocol revision it speaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The client's [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION).
    pub protocol_version: u16,
    /// Name of the client program (e.g. `"dooz-cli"`), for the server's logs.
    pub client_name: String,
    /// Version of the client program, for the server's logs.
    pub client_version: String,
    /// Extensions.
    pub ext: Extensions,
}

impl Limits for Hello {
    fn check_limits(&self) -> Result<(), LimitError> {
        check_len("client name bytes", self.client_name.len(), MAX_NAME_LEN)?;
        check_len(
            "client version bytes",
            self.client_version.len(),
            MAX_NAME_LEN,
        )
    }
}

/// Creates a vault with an id the client chose at random. Answered by `VaultCreated`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateVault {
    /// The new vault's id.
    pub vault: VaultId,
    /// Extensions.
    pub ext: Extensions,
}
impl Limits for CreateVault {}

/// Lists the account's vaults. Answered by `Vaults`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListVaults {
    /// Extensions.
    pub ext: Extensions,
}
impl Limits for ListVaults {}

/// Stores an envelope: the vault key of `epoch` wrapped to `recipient`. Answered by `Ok`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutEnvelope {
    /// The vault whose key is wrapped.
    pub vault: VaultId,
    /// The key's epoch.
    pub epoch: Epoch,
    /// The device that can open the envelope.
    pub recipient: DeviceId,
    /// The sealed envelope (format in `docs/FORMAT.md`), at most
    /// [`MAX_ENVELOPE_LEN`] bytes.
    #[serde(with = "crate::wire_bytes")]
    pub envelope: Vec<u8>,
    /// Extensions.
    pub ext: Extensions,
}

impl Limits for PutEnvelope {
    fn check_limits(&self) -> Result<(), LimitError> {
        check_len("envelope bytes", self.envelope.len(), MAX_ENVELOPE_LEN)
    }
}

impl fmt::Debug for PutEnvelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PutEnvelope")
            .field("vault", &self.vault)
            .field("epoch", &self.epoch)
            .field("recipient", &self.recipient)
            .field("envelope", &Len(&self.envelope))
            .field("ext", &self.ext)
            .finish()
    }
}

/// Fetches the vault's envelopes addressed to the calling device. Answered by `Envelopes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetEnvelopes {
    /// The vault.
    pub vault: VaultId,
    /// Extensions.
    pub ext: Extensions,
}
impl Limits for GetEnvelopes {}

/// Asks which of these chunk ids the vault lacks. Answered by `Missing`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Have {
    /// The vault.
    pub vault: VaultId,
    /// Chunk ids to check, at most [`MAX_HAVE_IDS`].
    pub chunks: Vec<ChunkId>,
    /// Extensions.
    pub ext: Extensions,
}

impl Limits for Have {
    fn check_limits(&self) -> Result<(), LimitError> {
        check_len("chunk ids in Have", self.chunks.len(), MAX_HAVE_IDS)
    }
}

/// Uploads one sealed chunk. **Exactly `len` raw bytes follow this frame on the stream**; the
/// server checks their BLAKE3 against `blake3` before storing. Answered by `ChunkStored`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutChunk {
    /// The vault.
    pub vault: VaultId,
    /// The chunk's id.
    pub chunk: ChunkId,
    /// Length of the sealed bytes that follow, at most [`MAX_CHUNK_LEN`].
    pub len: u32,
    /// BLAKE3 of the sealed bytes that follow.
    pub blake3: [u8; 32],
    /// Extensions.
    pub ext: Extensions,
}

impl Limits for PutChunk {
    fn check_limits(&self) -> Result<(), LimitError> {
        check(
            "PutChunk body length",
            u64::from(self.len),
            u64::from(MAX_CHUNK_LEN),
        )
    }
}

/// Downloads one sealed chunk. Answered by a `ChunkData` header and the raw bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetChunk {
    /// The vault.
    pub vault: VaultId,
    /// The chunk's id.
    pub chunk: ChunkId,
    /// Extensions.
    pub ext: Extensions,
}
impl Limits for GetChunk {}

/// One entry of a `Commit`: a new version of an entry, applied with compare-and-swap on `parent`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitEntry {
    /// The entry.
    pub entry: EntryKey,
    /// The version this one replaces; `None` when the entry must not exist yet. The commit of
    /// this entry fails with a conflict unless it is the entry's current head.
    pub parent: Option<VersionId>,
    /// The new version's id (random, chosen by the client).
    pub version: VersionId,
    /// The sealed record (opaque to the server), at most [`MAX_SEALED_RECORD_LEN`] bytes.
    #[serde(with = "crate::wire_bytes")]
    pub record: Vec<u8>,
    /// Chunk ids the version references; each must exist in the vault. At most
    /// [`MAX_CHUNKS_PER_ENTRY`].
    pub chunks: Vec<ChunkId>,
    /// Epoch of the key the record is sealed with.
    pub epoch: Epoch,
}

impl CommitEntry {
    fn check_limits(&self) -> Result<(), LimitError> {
        check_len(
            "sealed record bytes",
            self.record.len(),
            MAX_SEALED_RECORD_LEN,
        )?;
        check_len(
            "chunk ids of one entry",
            self.chunks.len(),
            MAX_CHUNKS_PER_ENTRY,
        )
    }
}

impl fmt::Debug for CommitEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommitEntry")
            .field("entry", &self.entry)
            .field("parent", &self.parent)
            .field("version", &self.version)
            .field("record", &Len(&self.record))
            .field("chunks", &self.chunks.len())
            .field("epoch", &self.epoch)
            .finish()
    }
}

/// Commits new versions of entries. Each entry is applied atomically on its own. Answered by
/// `Committed` with one result per entry, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// The vault.
    pub vault: VaultId,
    /// The entries, at most [`MAX_COMMIT_ENTRIES`].
    pub entries: Vec<CommitEntry>,
    /// Extensions.
    pub ext: Extensions,
}

impl Limits for Commit {
    fn check_limits(&self) -> Result<(), LimitError> {
        check_len("entries in Commit", self.entries.len(), MAX_COMMIT_ENTRIES)?;
        self.entries.iter().try_for_each(CommitEntry::check_limits)
    }
}

/// Fetches the vault's changes with a seq above `since`, oldest first. Answered by `Changes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pull {
    /// The vault.
    pub vault: VaultId,
    /// The cursor: the last seq the client has (`Seq::ZERO` for everything).
    pub since: Seq,
    /// Most changes wanted; 0 means the server's default. Servers clamp it to
    /// [`MAX_PULL_PAGE`].
    pub limit: u32,
    /// Extensions.
    pub ext: Extensions,
}
impl Limits for Pull {}

/// Fetches versions of one entry, newest first. Answered by `HistoryPage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// The vault.
    pub vault: VaultId,
    /// The entry.
    pub entry: EntryKey,
    /// Most versions wanted; 0 means the server's default. Servers clamp it to
    /// [`MAX_HISTORY_PAGE`].
    pub limit: u32,
    /// Only versions with a seq below this one; `None` starts at the head.
    pub before: Option<Seq>,
    /// Extensions.
    pub ext: Extensions,
}
impl Limits for History {}

/// Subscribes to commits in these vaults. Answered by `Subscribed`, then by a `Changed` frame on
/// the same stream whenever a vault's head moves. A new `Subscribe` replaces the previous one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe {
    /// The vaults, at most [`MAX_VAULTS`].
    pub vaults: Vec<VaultId>,
    /// Extensions.
    pub ext: Extensions,
}

impl Limits for Subscribe {
    fn check_limits(&self) -> Result<(), LimitError> {
        check_len("vaults in Subscribe", self.vaults.len(), MAX_VAULTS)
    }
}

/// Pairing, initiator: opens the one-use slot `H(s)`. Answered by `Ok`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingOpen {
    /// The slot.
    pub slot: SlotId,
    /// How long the slot lives; servers clamp it to
    /// [`MAX_PAIRING_SLOT_SECS`](crate::limits::MAX_PAIRING_SLOT_SECS).
    pub expires_in_secs: u32,
    /// Extensions.
    pub ext: Extensions,
}
impl Limits for PairingOpen {}

/// Pairing, joiner: posts its public keys, MACed with a key from `s`. Answered by `Ok`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingPost {
    /// The slot.
    pub slot: SlotId,
    /// Opaque to the server, at most [`MAX_PAIRING_PAYLOAD_LEN`] bytes.
    #[serde(with = "crate::wire_bytes")]
    pub payload: Vec<u8>,
    /// Extensions.
    pub ext: Extensions,
}

/// Pairing, initiator: waits for and takes the joiner's post. Answered by `PairingPayload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingTake {
    /// The slot.
    pub slot: SlotId,
    /// Extensions.
    pub ext: Extensions,
}
impl Limits for PairingTake {}

/// Pairing, initiator: replies with the envelopes for the joiner. Answered by `Ok`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingReply {
    /// The slot.
    pub slot: SlotId,
    /// Opaque to the server, at most [`MAX_PAIRING_PAYLOAD_LEN`] bytes.
    #[serde(with = "crate::wire_bytes")]
    pub payload: Vec<u8>,
    /// Extensions.
    pub ext: Extensions,
}

/// Pairing, joiner: waits for the initiator's reply. Answered by `PairingPayload`; the slot is
/// then used up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingAwaitReply {
    /// The slot.
    pub slot: SlotId,
    /// Extensions.
    pub ext: Extensions,
}
impl Limits for PairingAwaitReply {}

macro_rules! slot_payload {
    ($($name:ident),*) => {$(
        impl Limits for $name {
            fn check_limits(&self) -> Result<(), LimitError> {
                check_len("pairing payload bytes", self.payload.len(), MAX_PAIRING_PAYLOAD_LEN)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("slot", &self.slot)
                    .field("payload", &Len(&self.payload))
                    .field("ext", &self.ext)
                    .finish()
            }
        }
    )*};
}
slot_payload!(PairingPost, PairingReply);

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// Answer to `Hello`: who the server is and who it takes the client to be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloOk {
    /// The server's [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION). Both sides use the lower one.
    pub protocol_version: u16,
    /// Version of the server program, for the client's logs.
    pub server_version: String,
    /// The calling device, as the server identified it from the client certificate.
    pub device: DeviceId,
    /// The device's tenant.
    pub tenant: String,
    /// The device's account.
    pub account: String,
    /// Extensions.
    pub ext: Extensions,
}

impl Limits for HelloOk {
    fn check_limits(&self) -> Result<(), LimitError> {
        check_len(
            "server version bytes",
            self.server_version.len(),
            MAX_NAME_LEN,
        )?;
        check_len("tenant id bytes", self.tenant.len(), MAX_NAME_LEN)?;
        check_len("account id bytes", self.account.len(), MAX_NAME_LEN)
    }
}

/// Answer to `CreateVault`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultCreated {
    /// The new vault.
    pub vault: VaultId,
    /// Extensions.
    pub ext: Extensions,
}
impl Limits for VaultCreated {}

/// One vault in a `Vaults` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultInfo {
    /// The vault.
    pub vault: VaultId,
    /// Its last committed seq (`Seq::ZERO` if none).
    pub head_seq: Seq,
    /// Its newest key epoch.
    pub latest_epoch: Epoch,
}

/// Answer to `ListVaults`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vaults {
    /// The account's vaults, at most [`MAX_VAULTS`].
    pub vaults: Vec<VaultInfo>,
    /// Extensions.
    pub ext: Extensions,
}

impl Limits for Vaults {
    fn check_limits(&self) -> Result<(), LimitError> {
        check_len("vaults in Vaults", self.vaults.len(), MAX_VAULTS)
    }
}

/// Generic acknowledgement (`Ok` on the wire) for requests that return nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Ack {
    /// Extensions.
    pub ext: Extensions,
}
impl Limits for Ack {}

/// One envelope in an `Envelopes` answer.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeInfo {
    /// The key's epoch.
    pub epoch: Epoch,
    /// The device that can open it.
    pub recipient: DeviceId,
    /// The device that stored it (the recipient checks it trusts that device).
    pub sender: DeviceId,
    /// The sealed envelope, at most [`MAX_ENVELOPE_LEN`] bytes.
    #[serde(with = "crate::wire_bytes")]
    pub envelope: Vec<u8>,
}

impl fmt::Debug for EnvelopeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvelopeInfo")
            .field("epoch", &self.epoch)
            .field("recipient", &self.recipient)
            .field("sender", &self.sender)
            .field("envelope", &Len(&self.envelope))
            .finish()
    }
}

/// Answer to `GetEnvelopes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelopes {
    /// The envelopes, at most [`MAX_ENVELOPES`].
    pub envelopes: Vec<EnvelopeInfo>,
    /// Extensions.
    pub ext: Extensions,
}

impl Limits for Envelopes {
    fn check_limits(&self) -> Result<(), LimitError> {
        check_len(
            "envelopes in Envelopes",
            self.envelopes.len(),
            MAX_ENVELOPES,
        )?;
        self.envelopes
            .iter()
            .try_for_each(|e| check_len("envelope bytes", e.envelope.len(), MAX_ENVELOPE_LEN))
    }
}

/// Answer to `Have`: the ids the vault lacks, in request order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Missing {
    /// Chunk ids to upload, at most [`MAX_HAVE_IDS`].
    pub chunks: Vec<ChunkId>,
    /// Extensions.
    pub ext: Extensions,
}

impl Limits for Missing {
    fn check_limits(&self) -> Result<(), LimitError> {
        check_len("chunk ids in Missing", self.chunks.len(), MAX_HAVE_IDS)
    }
}

/// Answer to `PutChunk` once the body's BLAKE3 matched and the chunk is stored (pending until a
/// commit references it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkStored {
    /// The chunk.
    pub chunk: ChunkId,
    /// Extensions.
    pub ext: Extensions,
}
impl Limits for ChunkStored {}

/// Answer to `GetChunk`. **Exactly `len` raw bytes follow this frame on the stream**; the client
/// checks their BLAKE3 against `blake3`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkData {
    /// Length of the sealed bytes that follow, at most [`MAX_CHUNK_LEN`].
    pub len: u32,
    /// BLAKE3 of the sealed bytes that follow.
    pub blake3: [u8; 32],
    /// Extensions.
    pub ext: Extensions,
}

impl Limits for ChunkData {
    fn check_limits(&self) -> Result<(), LimitError> {
        check(
            "ChunkData body length",
            u64::from(self.len),
            u64::from(MAX_CHUNK_LEN),
        )
    }
}

/// Outcome of one `CommitEntry`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommitResult {
    /// The entry's head is now `version`, committed at `seq`.
    Applied {
        /// The entry.
        entry: EntryKey,
        /// The seq the commit got.
        seq: Seq,
        /// The new head.
        version: VersionId,
    },
    /// `parent` was not the entry's head; nothing was written for this entry.
    Conflict {
        /// The entry.
        entry: EntryKey,
        /// The entry's current head, `None` if it has none.
        head: Option<VersionId>,
    },
}

/// Answer to `Commit`: one result per entry, in request order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    /// Results, at most [`MAX_COMMIT_ENTRIES`].
    pub results: Vec<CommitResult>,
    /// Extensions.
    pub ext: Extensions,
}

impl Limits for Committed {
    fn check_limits(&self) -> Result<(), LimitError> {
        check_len(
            "results in Committed",
            self.results.len(),
            MAX_COMMIT_ENTRIES,
        )
    }
}

/// One committed version, as `Pull` and `History` return it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The seq it was committed at.
    pub seq: Seq,
    /// The entry.
    pub entry: EntryKey,
    /// This version.
    pub version: VersionId,
    /// The version it replaced.
    pub parent: Option<VersionId>,
    /// The sealed record, at most [`MAX_SEALED_RECORD_LEN`] bytes.
    #[serde(with = "crate::wire_bytes")]
    pub record: Vec<u8>,
    /// Chunk ids it references, at most [`MAX_CHUNKS_PER_ENTRY`].
    pub chunks: Vec<ChunkId>,
    /// Epoch of the key the record is sealed with.
    pub epoch: Epoch,
    /// The device that committed it.
    pub device: DeviceId,
}

impl Change {
    fn check_limits(&self) -> Result<(), LimitError> {
        check_len(
            "sealed record bytes",
            self.record.len(),
            MAX_SEALED_RECORD_LEN,
        )?;
        check_len(
            "chunk ids of one entry",
            self.chunks.len(),
            MAX_CHUNKS_PER_ENTRY,
        )
    }
}

impl fmt::Debug for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Change")
            .field("seq", &self.seq)
            .field("entry", &self.entry)
            .field("version", &self.version)
            .field("parent", &self.parent)
            .field("record", &Len(&self.record))
            .field("chunks", &self.chunks.len())
            .field("epoch", &self.epoch)
            .field("device", &self.device)
            .finish()
    }
}

/// Answer to `Pull`: changes in seq order, without gaps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    /// The changes, at most [`MAX_PULL_PAGE`].
    pub changes: Vec<Change>,
    /// The cursor for the next `Pull`: the last seq in `changes`, or `since` if it is empty.
    pub next: Seq,
    /// Whether more changes exist after `next` right now.
    pub more: bool,
    /// Extensions.
    pub ext: Extensions,
}

impl Limits for Changes {
    fn check_limits(&self) -> Result<(), LimitError> {
        check_len(
            "changes in Changes",
            self.changes.len(),
            MAX_PULL_PAGE as usize,
        )?;
        self.changes.iter().try_for_each(Change::check_limits)
    }
}

/// Answer to `History`: versions of one entry, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    /// The versions, at most [`MAX_HISTORY_PAGE`].
    pub versions: Vec<Change>,
    /// `before` for the next page, `None` when this page reached the entry's first version.
    pub next: Option<Seq>,
    /// Extensions.
    pub ext: Extensions,
}

impl Limits for HistoryPage {
    fn check_limits(&self) -> Result<(), LimitError> {
        check_len(
            "versions in HistoryPage",
            self.versions.len(),
            MAX_HISTORY_PAGE as usize,
        )?;
        self.versions.iter().try_for_each(Change::check_limits)
    }
}

/// Answer to `Subscribe`; `Changed` frames follow on the same stream.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Subscribed {
    /// Extensions.
    pub ext: Extensions,
}
impl Limits for Subscribed {}

/// Server push on a subscription stream: the vault's head is now at least `seq`. Pushes may be
/// coalesced; only the latest matters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changed {
    /// The vault.
    pub vault: VaultId,
    /// Its head seq.
    pub seq: Seq,
    /// Extensions.
    pub ext: Extensions,
}
impl Limits for Changed {}

/// Answer to `PairingTake` and `PairingAwaitReply`: the other side's payload.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingPayload {
    /// Opaque to the server, at most [`MAX_PAIRING_PAYLOAD_LEN`] bytes.
    #[serde(with = "crate::wire_bytes")]
    pub payload: Vec<u8>,
    /// Extensions.
    pub ext: Extensions,
}

impl Limits for PairingPayload {
    fn check_limits(&self) -> Result<(), LimitError> {
        check_len(
            "pairing payload bytes",
            self.payload.len(),
            MAX_PAIRING_PAYLOAD_LEN,
        )
    }
}

impl fmt::Debug for PairingPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PairingPayload")
            .field("payload", &Len(&self.payload))
            .field("ext", &self.ext)
            .finish()
    }
}

impl Limits for ErrorResponse {
    fn check_limits(&self) -> Result<(), LimitError> {
        check_len(
            "error message bytes",
            self.message.len(),
            MAX_ERROR_MESSAGE_LEN,
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Type table
// ---------------------------------------------------------------------------------------------

/// One row of the message type table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageType {
    /// The type id on the wire.
    pub type_id: u16,
    /// The newest version of the type this build reads and writes.
    pub version: u8,
    /// The message's name.
    pub name: &'static str,
}

/// The row of `type_id` in the message type table, if this build knows it.
pub fn message_type(type_id: u16) -> Option<&'static MessageType> {
    message_types().find(|t| t.type_id == type_id)
}

/// Every message type this build knows: requests, then responses.
pub fn message_types() -> impl Iterator<Item = &'static MessageType> {
    REQUEST_TYPES.iter().chain(RESPONSE_TYPES)
}

/// Outcome of decoding a known type's payload: the message and the bytes after it.
pub(crate) type Payload<'a, T> = Option<Result<(T, &'a [u8]), postcard::Error>>;

macro_rules! message_enum {
    (
        $(#[$emeta:meta])*
        enum $Enum:ident in $TABLE:ident {
            $( $(#[$vmeta:meta])* $Variant:ident($Ty:ident) = $id:literal, version $ver:literal; )*
        }
    ) => {
        $(#[$emeta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum $Enum {
            $( $(#[$vmeta])* $Variant($Ty), )*
        }

        const $TABLE: &[MessageType] = &[
            $( MessageType { type_id: $id, version: $ver, name: stringify!($Variant) }, )*
        ];

        impl $Enum {
            /// The message's type id on the wire.
            pub const fn type_id(&self) -> u16 {
                match self { $( Self::$Variant(_) => $id, )* }
            }

            /// The message type's version this build writes.
            pub const fn version(&self) -> u8 {
                match self { $( Self::$Variant(_) => $ver, )* }
            }

            /// The message's name, as in the type table.
            pub const fn name(&self) -> &'static str {
                match self { $( Self::$Variant(_) => stringify!($Variant), )* }
            }

            /// The message's extensions.
            pub fn ext(&self) -> &Extensions {
                match self { $( Self::$Variant(m) => &m.ext, )* }
            }

            pub(crate) fn check_limits(&self) -> Result<(), LimitError> {
                match self {
                    $( Self::$Variant(m) => {
                        check_len("extensions", m.ext.len(), MAX_EXTENSIONS)?;
                        Limits::check_limits(m)
                    } )*
                }
            }

            pub(crate) fn serialize_payload<F: Flavor>(&self, flavor: F) -> postcard::Result<F::Output> {
                match self { $( Self::$Variant(m) => postcard::serialize_with_flavor(m, flavor), )* }
            }

            /// `None` when `type_id` is not one of this enum's.
            pub(crate) fn decode_payload(type_id: u16, payload: &[u8]) -> Payload<'_, Self> {
                match type_id {
                    $( $id => Some(
                        postcard::take_from_bytes::<$Ty>(payload)
                            .map(|(m, rest)| (Self::$Variant(m), rest)),
                    ), )*
                    _ => None,
                }
            }
        }

        $(
            impl From<$Ty> for $Enum {
                fn from(m: $Ty) -> Self {
                    Self::$Variant(m)
                }
            }

            impl From<$Ty> for Message {
                fn from(m: $Ty) -> Self {
                    Self::from($Enum::$Variant(m))
                }
            }
        )*
    };
}

message_enum! {
    /// A request: the first frame a client sends on a new bidirectional stream.
    enum Request in REQUEST_TYPES {
        /// `0x0001` [`Hello`].
        Hello(Hello) = 0x0001, version 1;
        /// `0x0002` [`CreateVault`].
        CreateVault(CreateVault) = 0x0002, version 1;
        /// `0x0003` [`ListVaults`].
        ListVaults(ListVaults) = 0x0003, version 1;
        /// `0x0004` [`PutEnvelope`].
        PutEnvelope(PutEnvelope) = 0x0004, version 1;
        /// `0x0005` [`GetEnvelopes`].
        GetEnvelopes(GetEnvelopes) = 0x0005, version 1;
        /// `0x0006` [`Have`].
        Have(Have) = 0x0006, version 1;
        /// `0x0007` [`PutChunk`]; raw bytes follow.
        PutChunk(PutChunk) = 0x0007, version 1;
        /// `0x0008` [`GetChunk`].
        GetChunk(GetChunk) = 0x0008, version 1;
        /// `0x0009` [`Commit`].
        Commit(Commit) = 0x0009, version 1;
        /// `0x000a` [`Pull`].
        Pull(Pull) = 0x000a, version 1;
        /// `0x000b` [`History`].
        History(History) = 0x000b, version 1;
        /// `0x000c` [`Subscribe`].
        Subscribe(Subscribe) = 0x000c, version 1;
        /// `0x0010` [`PairingOpen`].
        PairingOpen(PairingOpen) = 0x0010, version 1;
        /// `0x0011` [`PairingPost`].
        PairingPost(PairingPost) = 0x0011, version 1;
        /// `0x0012` [`PairingTake`].
        PairingTake(PairingTake) = 0x0012, version 1;
        /// `0x0013` [`PairingReply`].
        PairingReply(PairingReply) = 0x0013, version 1;
        /// `0x0014` [`PairingAwaitReply`].
        PairingAwaitReply(PairingAwaitReply) = 0x0014, version 1;
    }
}

impl Request {
    /// The vault the request names, if it names one (what metering counts it under).
    pub fn vault(&self) -> Option<VaultId> {
        match self {
            Self::CreateVault(r) => Some(r.vault),
            Self::PutEnvelope(r) => Some(r.vault),
            Self::GetEnvelopes(r) => Some(r.vault),
            Self::Have(r) => Some(r.vault),
            Self::PutChunk(r) => Some(r.vault),
            Self::GetChunk(r) => Some(r.vault),
            Self::Commit(r) => Some(r.vault),
            Self::Pull(r) => Some(r.vault),
            Self::History(r) => Some(r.vault),
            _ => None,
        }
    }
}

message_enum! {
    /// A response: what the server writes back on a request's stream (or pushes on a
    /// subscription stream).
    enum Response in RESPONSE_TYPES {
        /// `0x8000` [`ErrorResponse`]: the request failed.
        Error(ErrorResponse) = 0x8000, version 1;
        /// `0x8001` [`HelloOk`].
        HelloOk(HelloOk) = 0x8001, version 1;
        /// `0x8002` [`VaultCreated`].
        VaultCreated(VaultCreated) = 0x8002, version 1;
        /// `0x8003` [`Vaults`].
        Vaults(Vaults) = 0x8003, version 1;
        /// `0x8004` [`Ack`], a generic acknowledgement.
        Ok(Ack) = 0x8004, version 1;
        /// `0x8005` [`Envelopes`].
        Envelopes(Envelopes) = 0x8005, version 1;
        /// `0x8006` [`Missing`].
        Missing(Missing) = 0x8006, version 1;
        /// `0x8007` [`ChunkStored`].
        ChunkStored(ChunkStored) = 0x8007, version 1;
        /// `0x8008` [`ChunkData`]; raw bytes follow.
        ChunkData(ChunkData) = 0x8008, version 1;
        /// `0x8009` [`Committed`].
        Committed(Committed) = 0x8009, version 1;
        /// `0x800a` [`Changes`].
        Changes(Changes) = 0x800a, version 1;
        /// `0x800b` [`HistoryPage`].
        HistoryPage(HistoryPage) = 0x800b, version 1;
        /// `0x800c` [`Subscribed`].
        Subscribed(Subscribed) = 0x800c, version 1;
        /// `0x800d` [`Changed`], pushed on a subscription stream.
        Changed(Changed) = 0x800d, version 1;
        /// `0x8010` [`PairingPayload`].
        PairingPayload(PairingPayload) = 0x8010, version 1;
    }
}

impl Response {
    /// `Err` for an `Error` response, the response otherwise: lets a client use `?` on answers.
    pub fn into_result(self) -> Result<Self, ErrorResponse> {
        match self {
            Self::Error(e) => Err(e),
            other => Ok(other),
        }
    }
}

/// Any message: a request or a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Sent by the client.
    Request(Request),
    /// Sent by the server.
    Response(Response),
}

impl Message {
    /// The message's type id on the wire.
    pub const fn type_id(&self) -> u16 {
        match self {
            Self::Request(m) => m.type_id(),
            Self::Response(m) => m.type_id(),
        }
    }

    /// The message type's version this build writes.
    pub const fn version(&self) -> u8 {
        match self {
            Self::Request(m) => m.version(),
            Self::Response(m) => m.version(),
        }
    }

    /// The message's name, as in the type table.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Request(m) => m.name(),
            Self::Response(m) => m.name(),
        }
    }

    /// The message's extensions.
    pub fn ext(&self) -> &Extensions {
        match self {
            Self::Request(m) => m.ext(),
            Self::Response(m) => m.ext(),
        }
    }

    /// Whether a client sent it.
    pub const fn is_request(&self) -> bool {
        matches!(self, Self::Request(_))
    }

    /// The request, if it is one.
    pub fn into_request(self) -> Option<Request> {
        match self {
            Self::Request(m) => Some(m),
            Self::Response(_) => None,
        }
    }

    /// The response, if it is one.
    pub fn into_response(self) -> Option<Response> {
        match self {
            Self::Response(m) => Some(m),
            Self::Request(_) => None,
        }
    }

    /// Whether exactly a raw chunk body (of the header's `len`) follows this frame on the stream.
    pub fn raw_body_len(&self) -> Option<u32> {
        match self {
            Self::Request(Request::PutChunk(m)) => Some(m.len),
            Self::Response(Response::ChunkData(m)) => Some(m.len),
            _ => None,
        }
    }

    pub(crate) fn check_limits(&self) -> Result<(), LimitError> {
        match self {
            Self::Request(m) => m.check_limits(),
            Self::Response(m) => m.check_limits(),
        }
    }

    pub(crate) fn serialize_payload<F: Flavor>(&self, flavor: F) -> postcard::Result<F::Output> {
        match self {
            Self::Request(m) => m.serialize_payload(flavor),
            Self::Response(m) => m.serialize_payload(flavor),
        }
    }

    /// `None` when `type_id` is unknown.
    pub(crate) fn decode_payload(type_id: u16, payload: &[u8]) -> Payload<'_, Self> {
        if type_id & 0x8000 == 0 {
            Request::decode_payload(type_id, payload).map(|r| r.map(|(m, rest)| (m.into(), rest)))
        } else {
            Response::decode_payload(type_id, payload).map(|r| r.map(|(m, rest)| (m.into(), rest)))
        }
    }
}

impl From<Request> for Message {
    fn from(m: Request) -> Self {
        Self::Request(m)
    }
}

impl From<Response> for Message {
    fn from(m: Response) -> Self {
        Self::Response(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn type_table_is_consistent() {
        let mut ids = HashSet::new();
        for t in message_types() {
            assert!(
                ids.insert(t.type_id),
                "duplicate type id {:#06x}",
                t.type_id
            );
            assert_ne!(t.type_id, 0, "type id 0 is reserved");
            assert!(t.version >= 1);
            assert_eq!(message_type(t.type_id), Some(t));
        }
        for t in REQUEST_TYPES {
            assert_eq!(t.type_id & 0x8000, 0, "{} is a request", t.name);
        }
        for t in RESPONSE_TYPES {
            assert_eq!(t.type_id & 0x8000, 0x8000, "{} is a response", t.name);
        }
        assert_eq!(message_type(0x8000).map(|t| t.name), Some("Error"));
        assert_eq!(message_type(0x1234), None);
    }

    #[test]
    fn debug_prints_lengths_not_bytes() {
        let m = PairingPost {
            slot: SlotId::from_bytes([0; 32]),
            payload: vec![7; 5000],
            ext: Extensions::new(),
        };
        let s = format!("{m:?}");
        assert!(s.contains("<5000 bytes>"), "{s}");
        assert!(s.len() < 200, "{s}");
    }

    #[test]
    fn error_response_into_result() {
        let e = ErrorResponse::new(crate::ErrorCode::NotFound, "no such vault");
        assert_eq!(Response::Error(e.clone()).into_result(), Err(e));
        assert!(Response::Ok(Ack::default()).into_result().is_ok());
    }
}
