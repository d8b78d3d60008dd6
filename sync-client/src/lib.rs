//! Dooz Sync client.
//!
//! For now this crate holds the client's content-defined chunking, the first stage of the
//! upload pipeline (chunk → chunk id → seal → upload):
//!
//! - [`Chunker`]: FastCDC v2020 normalized chunking with a gear table derived from the vault's
//!   32-byte chunker seed, over in-memory data ([`Chunker::cut_points`]) or any
//!   [`std::io::Read`] in bounded memory ([`StreamChunker`]). Sizes come from
//!   [`ChunkerConfig`], whose [`ChunkerConfig::DEFAULT`] was picked by measurement
//!   (`benches/RESULTS.md`, section "Chunk size").
//! - [`ChunkListBuilder`]: turns a file's chunk ids into a [`ChunkList`], inline for ordinary
//!   files and a tree of list blocks (stored as chunks of their own) for huge ones, holding one
//!   block per tree level whatever the file size.
//!
//!
//! The local state of a synced folder:
//!
//! - [`Index`]: the client's sled database. Per vault ([`VaultIndex`]) three trees as in Dropbox's
//!   Nucleus — local state ([`LocalEntry`]), remote heads ([`RemoteEntry`]) and the synced base
//!   ([`SyncedEntry`]) — keyed by [`RelPath`]; diffs between them ([`VaultIndex::local_changes`],
//!   [`VaultIndex::remote_changes`], [`VaultIndex::conflicts`]); the pull cursor; an upload
//!   journal that makes uploads resumable; the device's enrolment and vault keys.
//! - [`Scanner`]: walks a folder and updates the local-state tree, hashing only files whose size,
//!   mtime or inode changed ([`ScanReport`]).
//! - [`IgnoreRules`]: `.doozignore` files (gitignore syntax) plus built-in rules.
//!
//! Talking to the server and syncing:
//!
//! - [`Connection`]: a QUIC connection to the sync server (mutual TLS with the device's identity
//!   key, the server pinned by certificate fingerprint, one request per stream) with typed
//!   requests; failures are [`NetError`]s that say what to do and whether to retry.
//! - [`EntryRecord`]: the plaintext of a sealed record, one version of one entry (layout in
//!   `docs/FORMAT.md`, "Entry record plaintext").
//! - [`Connection::enrol`]: redeems an enrolment code ([`EnrolmentCode`], `dooz1-...`) so the
//!   server registers this device.
//! - [`VaultCode`]: a secret `dooz-vault1-...` code carrying a vault's id and keys to another
//!   device of the account (a stop-gap until pairing).
//! - [`Invitation`] and [`Joining`]: pairing. An existing device shows a [`PairingCode`]; the
//!   new device answers it; every vault key is handed over as envelopes whose sender the new
//!   device checks against the code, so the server cannot slip in a key of its own.
//! - [`set_up_recovery`] and [`recover`]: every vault key also wrapped to the account's
//!   recovery secret, shown once as 12 words ([`recovery_words`]); a fresh device regains every
//!   vault with them.
//! - [`maintain_keys`]: after a revocation, rotates the vaults the server marks due
//!   ([`rotate_vault`]: a new epoch key wrapped only to the trusted devices that remain) and
//!   takes and passes on the keys other devices made ([`receive_keys`]).
//! - [`Engine`]: syncs one vault's folder: scan, pull and apply remote changes (temp file,
//!   fsync, rename; chunks reused from disk; conflicts kept as conflicted copies), then upload
//!   local changes (journalled, `Have`, parallel sealed `PutChunk`s, `Commit`).
//!   An optional [`Progress`] sink hears each [`SyncPhase`] (for progress bars). Embedders
//!   (the SDK) can log what downloads apply ([`AppliedChange`], for change events) and decide
//!   conflicts between two files themselves ([`ConflictResolver`], [`Resolution`]).
//! - [`Watcher`]: watch mode for one or several engines: debounced file notifications, the
//!   server's `Subscribe` pushes and a periodic rescan trigger syncs; [`WatchEvent`]s go to a
//!   callback, and a [`StopHandle`] ends it.
//!
//! ```
//! use dooz_client::{ChunkList, ChunkListBuilder, ChunkListLimits, Chunker, ChunkerConfig};
//!
//! // The seed comes from the vault: `VaultIdentityKeys::chunker_seed().as_bytes()`.
//! let seed = [7u8; 32];
//! let chunker = Chunker::new(ChunkerConfig::DEFAULT, &seed);
//!
//! let file: Vec<u8> = (0..1_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
//! let mut stream = chunker.stream(&file[..]);
//! let mut list = ChunkListBuilder::new(ChunkListLimits::DEFAULT);
//! // List blocks of huge files go through here: seal and store them, return their id.
//! let mut store_block = |_block: &[u8]| -> Result<[u8; 32], std::io::Error> { unreachable!() };
//! while let Some(chunk) = stream.next_chunk()? {
//!     // Really: the vault's keyed chunk id (`VaultIdentityKeys::chunk_id`), then seal.
//!     let id = *blake3::hash(chunk.data).as_bytes();
//!     list.push(id, &mut store_block)?;
//! }
//! let list = list.finish(&mut store_block)?;
//! assert!(matches!(list, ChunkList::Inline(ref ids) if ids.len() > 1));
//!
//! // The in-memory chunker cuts at the same places.
//! assert_eq!(chunker.cut_points(&file).count() as u64, list.total_chunks());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod chunk_list;
mod chunking;
mod engine;
mod home;
mod ignore;
mod index;
mod invite;
mod net;
mod pairing;
mod record;
mod recovery;
mod roster;
pub use roster::MAX_ROSTER_DEVICES;
mod rotation;
mod scanner;
mod watch;

pub use crate::ignore::{
    IGNORE_FILE_NAME, IgnoreError, IgnoreRules, MAX_IGNORE_FILE_LEN, TEMP_FILE_PREFIX,
};
pub use chunk_list::{
    CHUNK_ID_LEN, ChunkList, ChunkListBuilder, ChunkListLimits, ChunkListLimitsError,
    LIST_BLOCK_HEADER_LEN, LIST_BLOCK_MAGIC, LIST_BLOCK_VERSION, ListBlock, ListBlockError,
    MAX_LIST_BLOCK_IDS, RawChunkId, WalkError,
};
pub use chunking::{
    AVG_CHUNK_SIZE_MAX, AVG_CHUNK_SIZE_MIN, Chunk, ChunkError, Chunker, ChunkerConfig,
    ChunkerConfigError, CutPoint, CutPoints, MAX_CHUNK_SIZE_LIMIT, MIN_CHUNK_SIZE_LIMIT,
    StreamChunker,
};
pub use dooz_protocol::{EnrolmentCode, EnrolmentCodeError, HelloOk};
pub use engine::{
    AppliedChange, ConflictResolver, Engine, EngineError, EngineOptions, EntryVersion, Progress,
    ProgressEvent, Resolution, SyncPhase, SyncReport, keyring_from_index,
};
pub use home::{
    NOT_ENROLLED_ADDR, create_private_dir, default_device_name, is_usable_device_name,
    is_usable_vault_name,
};
pub use index::{
    Change, ChunkLocation, ChunkRef, Conflict, ConflictKind, ContentHash, DEFAULT_CACHE_BYTES,
    DeviceRecord, EntryKind, EntryState, Index, IndexError, IndexOptions, LocalEntry, PathError,
    PendingUpload, RelPath, RemoteEntry, SyncedEntry, VaultBatch, VaultIndex, VaultMeta,
};
pub use invite::{VAULT_CODE_PREFIX, VaultCode, VaultCodeError};
pub use net::{
    Connection, Connector, NetError, NetStats, PROTOCOL_VERSION, PullPage, Subscription, Traffic,
    TrafficMeter, parse_server_fingerprint, server_fingerprint_hex,
};
pub use pairing::{
    Invitation, Joining, PAIRING_CODE_PREFIX, PairedDevice, PairedVault, PairingCode,
    PairingCodeError, PairingError,
};
pub use record::{EntryRecord, RECORD_FORMAT_VERSION, RecordChunks, RecordError, RecordKind};
pub use recovery::{
    RECOVERY_WORDS, RecoveredVault, RecoveryError, parse_recovery_words, recover, recovery_words,
    set_up_recovery, wrap_vault_to_recovery,
};
pub use rotation::{
    KeyReport, RotationError, maintain_keys, publish_roster, receive_keys, rotate_vault,
    rotations_due,
};
pub use scanner::{
    RACY_WINDOW_NS, ScanError, ScanProgress, ScanReport, Scanner, SkipReason, Skipped,
};
pub use watch::{StopHandle, Trigger, WatchError, WatchEvent, WatchOptions, Watcher};
