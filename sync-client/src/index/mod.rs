//! The client's local index: per-vault local, remote and base trees in sled; see [`Index`].

mod codec;
mod diff;
mod entry;
mod names;
mod path;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use dooz_crypto::{ChunkId, Epoch, VaultId, VaultKey};
use dooz_protocol::Seq;
use sled::Transactional;
use sled::transaction::TransactionError;

use codec::CodecError;

pub use diff::{Change, Conflict, ConflictKind};
pub use entry::{
    ChunkRef, ContentHash, DeviceRecord, EntryKind, EntryState, LocalEntry, PendingUpload,
    RemoteEntry, SyncedEntry, VaultMeta,
};
pub use path::{PathError, RelPath};

const DEVICE_TREE: &str = "device-v1";
const VAULTS_TREE: &str = "vaults-v1";
const CURSORS_TREE: &str = "cursors-v1";
const VAULT_KEYS_TREE: &str = "vault-keys-v1";
const ENROLMENT_KEY: &[u8] = b"enrolment";
/// The account's recovery secret, in the device tree (versioned value: 1 | 16 bytes).
const RECOVERY_KEY: &[u8] = b"recovery-secret";

/// Default size of sled's page cache: the index stays small next to the client's memory budget.
pub const DEFAULT_CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// Something went wrong reading or writing the index.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// Another process holds the index open.
    #[error(
        "the index at {path:?} is in use by another process; stop the other `dooz` process (or wait for it) and retry"
    )]
    Locked {
        /// The index directory.
        path: PathBuf,
    },
    /// The index could not be opened.
    #[error("cannot open the index at {path:?}: {source}")]
    Open {
        /// The index directory.
        path: PathBuf,
        /// What sled reported.
        #[source]
        source: sled::Error,
    },
    /// A read or write failed.
    #[error("the index failed while {action}: {source}")]
    Storage {
        /// What was being done, as a verb phrase.
        action: &'static str,
        /// What sled reported.
        #[source]
        source: sled::Error,
    },
    /// A stored value does not decode.
    #[error(
        "the index entry {key} in tree {tree} is corrupt ({reason}); rebuild the index by removing its directory and syncing again"
    )]
    Corrupt {
        /// The tree.
        tree: String,
        /// The key, as text or hex.
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// A stored value was written by a newer version of the client.
    #[error(
        "the index entry {key} in tree {tree} has format version {found}, newer than this client reads ({supported}); upgrade dooz"
    )]
    UnsupportedVersion {
        /// The tree.
        tree: String,
        /// The key, as text or hex.
        key: String,
        /// The version byte found.
        found: u8,
        /// The newest version this build reads.
        supported: u8,
    },
    /// The vault is not bound to a folder in this index.
    #[error("vault {vault} is not bound to a folder on this device; add it first (`dooz add`)")]
    UnknownVault {
        /// The vault.
        vault: VaultId,
    },
    /// The vault is already bound to a folder.
    #[error("vault {vault} is already bound to {root:?}; remove that binding first")]
    VaultExists {
        /// The vault.
        vault: VaultId,
        /// Its current folder.
        root: PathBuf,
    },
    /// A folder root is not valid UTF-8.
    #[error("the folder path {path:?} is not valid UTF-8; choose a folder whose path is")]
    RootNotUtf8 {
        /// The path.
        path: PathBuf,
    },
    /// A path is not a valid [`RelPath`].
    #[error(transparent)]
    Path(#[from] PathError),
}

fn storage(action: &'static str) -> impl FnOnce(sled::Error) -> IndexError {
    move |source| IndexError::Storage { action, source }
}

fn tx_storage(action: &'static str) -> impl FnOnce(TransactionError<()>) -> IndexError {
    move |e| match e {
        TransactionError::Storage(source) => IndexError::Storage { action, source },
        // Our transactions never abort.
        TransactionError::Abort(()) => IndexError::Storage {
            action,
            source: sled::Error::ReportableBug("transaction aborted".into()),
        },
    }
}

fn show_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) if !s.is_empty() && !s.chars().any(char::is_control) => format!("{s:?}"),
        _ => key.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

fn corrupt(tree: &sled::Tree, key: &[u8]) -> impl FnOnce(CodecError) -> IndexError {
    let tree = String::from_utf8_lossy(&tree.name()).into_owned();
    let key = show_key(key);
    move |e| match e {
        CodecError::UnsupportedVersion(found) => IndexError::UnsupportedVersion {
            tree,
            key,
            found,
            supported: codec::VALUE_VERSION,
        },
        CodecError::Malformed(reason) => IndexError::Corrupt { tree, key, reason },
    }
}

fn bad_key(tree: &sled::Tree, key: &[u8], e: PathError) -> IndexError {
    IndexError::Corrupt {
        tree: String::from_utf8_lossy(&tree.name()).into_owned(),
        key: show_key(key),
        reason: e.to_string(),
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn vault_hex(vault: VaultId) -> String {
    vault
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How to open an [`Index`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexOptions {
    /// sled's page cache size in bytes (default [`DEFAULT_CACHE_BYTES`]).
    pub cache_bytes: u64,
}

impl Default for IndexOptions {
    fn default() -> Self {
        Self {
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

/// The client's local index (one sled database in a directory). Cheap to clone; clones share
/// the database.
///
/// It holds, per vault, three trees in the manner of Dropbox's Nucleus, plus what the device
/// needs to resume any interrupted work.
///
/// # Trees
///
/// Tree names carry a format version (`-v1`); per-vault trees end in the vault id as 32
/// lowercase hex digits. Every value is one version byte (`1`) then a postcard body, except
/// where noted: integers are varints (zigzag for signed), fixed-size ids raw, `Option` a 0/1
/// tag, lists a varint count then the items; the field order is that of the `*V1` structs in
/// `sync-client/src/index/codec.rs`. Values with another version byte, malformed bodies and
/// trailing bytes are refused with [`IndexError::UnsupportedVersion`] or
/// [`IndexError::Corrupt`].
///
/// | tree | key | value |
/// |---|---|---|
/// | `device-v1` | `b"enrolment"` | [`DeviceRecord`]: server address, pinned certificate fingerprint, device name, device secret keys (64 bytes) |
/// | `vaults-v1` | vault id (16 bytes) | folder root (UTF-8) |
/// | `cursors-v1` | vault id (16 bytes) | `1` then the pulled-up-to [`Seq`] as u64 big-endian |
/// | `vault-keys-v1` | vault id (16) ‖ epoch (u32 big-endian) | `1` then the 32 key bytes |
/// | `local-v1/<vault>` | [`RelPath`] UTF-8 bytes | [`LocalEntry`]: what the scanner last saw on disk |
/// | `remote-v1/<vault>` | path | [`RemoteEntry`]: head version pulled from (or committed to) the server |
/// | `base-v1/<vault>` | path | [`SyncedEntry`]: the last state both sides agreed on |
/// | `pending-v1/<vault>` | path | [`PendingUpload`]: an upload in progress |
/// | `acked-v1/<vault>` | chunk id (32 bytes) | when the server acknowledged the chunk (unix seconds) |
/// | `vault-names-v1` | name (UTF-8) | `1` then the vault id: names given on this device ([`Index::vault_by_name`]) |
/// | `last-sync-v1` | vault id (16 bytes) | `1` then unix seconds (u64 big-endian) of the last finished sync |
///
/// Local vs base gives the local changes, remote vs base the remote changes, both changed with
/// different content a conflict (see [`VaultIndex::local_changes`],
/// [`VaultIndex::remote_changes`], [`VaultIndex::conflicts`]).
///
/// # Durability
///
/// An operation documented as **durable** has been written and fsynced (sled `flush`) when it
/// returns, so neither a killed process nor a power cut loses it: [`Index::set_device`],
/// [`Index::add_vault`], [`Index::remove_vault`], [`Index::put_vault_key`],
/// [`VaultIndex::commit`] (and everything built on it: [`VaultIndex::apply_pull`],
/// [`VaultIndex::begin_upload`], [`VaultIndex::finish_upload`], [`VaultIndex::abort_upload`]),
/// [`VaultIndex::record_acked`] and [`Index::flush`].
///
/// [`VaultIndex::put_local`] and [`VaultIndex::remove_local`] are **not** flushed: the
/// local-state tree is a cache of the disk, and losing its newest writes costs a rehash, never
/// data. The scanner flushes once at the end of a scan. sled also flushes in the background
/// every 500 ms. sled keeps writes in order, so a crash loses at most a suffix of the
/// unflushed ones.
///
/// # Upload journal
///
/// An upload of one path goes: [`VaultIndex::begin_upload`] (durable: fixes the new version id
/// and its parent) → `Have` → seal + `PutChunk` → [`VaultIndex::record_acked`] for each batch
/// of acknowledged chunks (durable) → `Commit` → [`VaultIndex::finish_upload`] (durable, atomic:
/// drops the pending record, records the committed head as remote and base, forgets the acks of
/// its chunks). After a kill at any point, [`VaultIndex::pending_uploads`] says what to resume
/// and [`VaultIndex::is_acked`] which chunks need not be sent again (`Have` may say the same
/// for chunks the server keeps pending; the journal does not depend on it). Acks are flushed per call,
/// so batch them (for example all `PutChunk`s that finished since the last call): a chunk
/// acknowledged by the server but not yet recorded is sent again after a crash, which costs
/// bytes but is always correct.
#[derive(Clone)]
pub struct Index {
    db: sled::Db,
    path: PathBuf,
    device: sled::Tree,
    vaults: sled::Tree,
    cursors: sled::Tree,
    vault_keys: sled::Tree,
}

impl fmt::Debug for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Index")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Index {
    /// Opens (or creates) the index in directory `dir` with default options.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, IndexError> {
        Self::open_with(dir, IndexOptions::default())
    }

    /// Opens (or creates) the index in directory `dir`.
    pub fn open_with(dir: impl AsRef<Path>, options: IndexOptions) -> Result<Self, IndexError> {
        let path = dir.as_ref().to_path_buf();
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(options.cache_bytes)
            .open()
            .map_err(|source| match source {
                sled::Error::Io(ref io) if io.to_string().contains("could not acquire lock") => {
                    IndexError::Locked { path: path.clone() }
                }
                source => IndexError::Open {
                    path: path.clone(),
                    source,
                },
            })?;
        let open = |name: &str| db.open_tree(name).map_err(storage("opening a tree"));
        Ok(Self {
            device: open(DEVICE_TREE)?,
            vaults: open(VAULTS_TREE)?,
            cursors: open(CURSORS_TREE)?,
            vault_keys: open(VAULT_KEYS_TREE)?,
            db,
            path,
        })
    }

    /// The index directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes and fsyncs everything written so far. **Durable.**
    pub fn flush(&self) -> Result<(), IndexError> {
        self.db
            .flush()
            .map(drop)
            .map_err(storage("flushing to disk"))
    }

    /// This device's enrolment, if it has enrolled.
    pub fn device(&self) -> Result<Option<DeviceRecord>, IndexError> {
        let Some(v) = self
            .device
            .get(ENROLMENT_KEY)
            .map_err(storage("reading the enrolment"))?
        else {
            return Ok(None);
        };
        codec::decode_device(&v)
            .map(Some)
            .map_err(corrupt(&self.device, ENROLMENT_KEY))
    }

    /// Stores this device's enrolment, replacing any earlier one. **Durable.**
    pub fn set_device(&self, record: &DeviceRecord) -> Result<(), IndexError> {
        let bytes = codec::encode_device(record);
        self.device
            .insert(ENROLMENT_KEY, &bytes[..])
            .map_err(storage("writing the enrolment"))?;
        self.flush()
    }

    /// The account's recovery secret, if this device made or was given one (it wraps every
    /// new vault key to it).
    pub fn recovery_secret(&self) -> Result<Option<dooz_crypto::RecoverySecret>, IndexError> {
        let Some(v) = self
            .device
            .get(RECOVERY_KEY)
            .map_err(storage("reading the recovery secret"))?
        else {
            return Ok(None);
        };
        match v.split_first() {
            Some((1, body)) => <[u8; 16]>::try_from(body)
                .map(|b| Some(dooz_crypto::RecoverySecret::from_bytes(b)))
                .map_err(|_| IndexError::Corrupt {
                    tree: "device".into(),
                    key: "recovery-secret".into(),
                    reason: format!("a recovery secret of {} bytes", body.len()),
                }),
            _ => Err(IndexError::Corrupt {
                tree: "device".into(),
                key: "recovery-secret".into(),
                reason: "unknown value version".into(),
            }),
        }
    }

    /// Keeps the account's recovery secret. **Durable.**
    pub fn set_recovery_secret(
        &self,
        secret: &dooz_crypto::RecoverySecret,
    ) -> Result<(), IndexError> {
        let mut value = zeroize::Zeroizing::new(vec![1u8]);
        value.extend_from_slice(secret.expose_secret());
        self.device
            .insert(RECOVERY_KEY, &value[..])
            .map_err(storage("writing the recovery secret"))?;
        self.flush()
    }

    /// Binds `vault` to the folder `root` (absolute, UTF-8) with its cursor at [`Seq::ZERO`],
    /// and returns its handle. **Durable.**
    pub fn add_vault(&self, vault: VaultId, root: &Path) -> Result<VaultIndex, IndexError> {
        let Some(root_str) = root.to_str() else {
            return Err(IndexError::RootNotUtf8 {
                path: root.to_path_buf(),
            });
        };
        if let Some(existing) = self.vault_meta(vault)? {
            return Err(IndexError::VaultExists {
                vault,
                root: existing.root,
            });
        }
        let key = vault.as_bytes();
        let root_value = codec::encode_vault_root(root_str);
        let cursor_value = codec::encode_cursor(Seq::ZERO);
        (&self.vaults, &self.cursors)
            .transaction(|(vaults, cursors)| {
                vaults.insert(&key[..], &root_value[..])?;
                cursors.insert(&key[..], &cursor_value[..])?;
                Ok(())
            })
            .map_err(tx_storage("binding a vault"))?;
        self.flush()?;
        self.vault_handle(vault)
    }

    /// The handle of a bound vault.
    pub fn vault(&self, vault: VaultId) -> Result<VaultIndex, IndexError> {
        if self
            .vaults
            .contains_key(vault.as_bytes())
            .map_err(storage("looking up a vault"))?
        {
            self.vault_handle(vault)
        } else {
            Err(IndexError::UnknownVault { vault })
        }
    }

    /// Every bound vault, in vault id order.
    pub fn vaults(&self) -> Result<Vec<VaultMeta>, IndexError> {
        let mut out = Vec::new();
        for item in self.vaults.iter() {
            let (k, v) = item.map_err(storage("listing vaults"))?;
            let Ok(id) = <[u8; 16]>::try_from(&k[..]) else {
                return Err(IndexError::Corrupt {
                    tree: VAULTS_TREE.into(),
                    key: show_key(&k),
                    reason: "key is not a 16-byte vault id".into(),
                });
            };
            let root = codec::decode_vault_root(&v).map_err(corrupt(&self.vaults, &k))?;
            let cursor = self.cursor_of(VaultId(id))?;
            out.push(VaultMeta {
                vault: VaultId(id),
                root: PathBuf::from(root),
                cursor,
            });
        }
        Ok(out)
    }

    /// Unbinds `vault` and drops all its trees and keys (the folder on disk is untouched).
    /// Returns whether it was bound. **Durable.**
    pub fn remove_vault(&self, vault: VaultId) -> Result<bool, IndexError> {
        let key = vault.as_bytes();
        let existed = self
            .vaults
            .remove(key)
            .map_err(storage("unbinding a vault"))?
            .is_some();
        self.cursors
            .remove(key)
            .map_err(storage("unbinding a vault"))?;
        for name in VaultTrees::names(vault) {
            self.db
                .drop_tree(name)
                .map_err(storage("dropping a vault's trees"))?;
        }
        for item in self.vault_keys.scan_prefix(key) {
            let (k, _) = item.map_err(storage("deleting vault keys"))?;
            self.vault_keys
                .remove(k)
                .map_err(storage("deleting vault keys"))?;
        }
        self.flush()?;
        Ok(existed)
    }

    /// Stores the key of one epoch of `vault`. **Durable.**
    pub fn put_vault_key(
        &self,
        vault: VaultId,
        epoch: Epoch,
        key: &VaultKey,
    ) -> Result<(), IndexError> {
        let value = codec::encode_vault_key(key.expose_secret());
        self.vault_keys
            .insert(vault_key_key(vault, epoch), &value[..])
            .map_err(storage("writing a vault key"))?;
        self.flush()
    }

    /// Every stored key of `vault`, oldest epoch first.
    pub fn vault_keys(&self, vault: VaultId) -> Result<Vec<(Epoch, VaultKey)>, IndexError> {
        let mut out = Vec::new();
        for item in self.vault_keys.scan_prefix(vault.as_bytes()) {
            let (k, v) = item.map_err(storage("reading vault keys"))?;
            let epoch = k
                .get(16..)
                .and_then(|e| <[u8; 4]>::try_from(e).ok())
                .map(|e| Epoch(u32::from_be_bytes(e)))
                .ok_or_else(|| IndexError::Corrupt {
                    tree: VAULT_KEYS_TREE.into(),
                    key: show_key(&k),
                    reason: "key is not vault id || epoch".into(),
                })?;
            let bytes = codec::decode_vault_key(&v).map_err(corrupt(&self.vault_keys, &k))?;
            out.push((epoch, VaultKey::from_bytes(*bytes)));
        }
        Ok(out)
    }

    fn vault_meta(&self, vault: VaultId) -> Result<Option<VaultMeta>, IndexError> {
        let key = vault.as_bytes();
        let Some(v) = self.vaults.get(key).map_err(storage("reading a vault"))? else {
            return Ok(None);
        };
        let root = codec::decode_vault_root(&v).map_err(corrupt(&self.vaults, key))?;
        Ok(Some(VaultMeta {
            vault,
            root: PathBuf::from(root),
            cursor: self.cursor_of(vault)?,
        }))
    }

    fn cursor_of(&self, vault: VaultId) -> Result<Seq, IndexError> {
        let key = vault.as_bytes();
        match self.cursors.get(key).map_err(storage("reading a cursor"))? {
            Some(v) => codec::decode_cursor(&v).map_err(corrupt(&self.cursors, key)),
            None => Ok(Seq::ZERO),
        }
    }

    fn vault_handle(&self, vault: VaultId) -> Result<VaultIndex, IndexError> {
        let [local, remote, base, pending, acked] = VaultTrees::names(vault);
        let open = |name: String| {
            self.db
                .open_tree(name)
                .map_err(storage("opening a vault's trees"))
        };
        Ok(VaultIndex {
            vault,
            index: self.clone(),
            trees: VaultTrees {
                local: open(local)?,
                remote: open(remote)?,
                base: open(base)?,
                pending: open(pending)?,
                acked: open(acked)?,
            },
        })
    }
}

/// The kind of a stored local-state value, without decoding its chunk list.
pub(crate) fn decode_local_kind(value: &[u8]) -> Option<EntryKind> {
    codec::decode_local_kind(value)
}

fn vault_key_key(vault: VaultId, epoch: Epoch) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(vault.as_bytes());
    k[16..].copy_from_slice(&epoch.0.to_be_bytes());
    k
}

#[derive(Clone)]
struct VaultTrees {
    local: sled::Tree,
    remote: sled::Tree,
    base: sled::Tree,
    pending: sled::Tree,
    acked: sled::Tree,
}

impl VaultTrees {
    fn names(vault: VaultId) -> [String; 5] {
        let hex = vault_hex(vault);
        ["local", "remote", "base", "pending", "acked"].map(|t| format!("{t}-v1/{hex}"))
    }
}

/// Where a chunk's plaintext can be read on local disk (if the file has not changed since it was
/// scanned: read it, then check its id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkLocation {
    /// The file.
    pub path: RelPath,
    /// Byte offset of the chunk in the file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
}

/// A set of writes to one vault's trees, applied atomically by [`VaultIndex::commit`].
#[derive(Default)]
pub struct VaultBatch {
    local: sled::Batch,
    remote: sled::Batch,
    base: sled::Batch,
    pending: sled::Batch,
    acked: sled::Batch,
    cursor: Option<Seq>,
}

impl fmt::Debug for VaultBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultBatch")
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}

impl VaultBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the local-state entry of `path`.
    pub fn put_local(&mut self, path: &RelPath, entry: &LocalEntry) -> &mut Self {
        self.local
            .insert(path.as_bytes(), codec::encode_local(entry));
        self
    }

    /// Removes the local-state entry of `path`.
    pub fn remove_local(&mut self, path: &RelPath) -> &mut Self {
        self.local.remove(path.as_bytes());
        self
    }

    /// Sets the remote head of `path`.
    pub fn put_remote(&mut self, path: &RelPath, entry: &RemoteEntry) -> &mut Self {
        self.remote
            .insert(path.as_bytes(), codec::encode_remote(entry));
        self
    }

    /// Removes the remote head of `path`.
    pub fn remove_remote(&mut self, path: &RelPath) -> &mut Self {
        self.remote.remove(path.as_bytes());
        self
    }

    /// Sets the synced base of `path`.
    pub fn put_base(&mut self, path: &RelPath, entry: &SyncedEntry) -> &mut Self {
        self.base
            .insert(path.as_bytes(), codec::encode_synced(entry));
        self
    }

    /// Removes the synced base of `path` (both sides agree it is deleted).
    pub fn remove_base(&mut self, path: &RelPath) -> &mut Self {
        self.base.remove(path.as_bytes());
        self
    }

    /// Records a pending upload of `path`.
    pub fn put_pending(&mut self, path: &RelPath, upload: &PendingUpload) -> &mut Self {
        self.pending
            .insert(path.as_bytes(), codec::encode_pending(upload));
        self
    }

    /// Removes the pending upload of `path`.
    pub fn remove_pending(&mut self, path: &RelPath) -> &mut Self {
        self.pending.remove(path.as_bytes());
        self
    }

    /// Records that the server acknowledged chunk `id` at `at` (unix seconds).
    pub fn ack(&mut self, id: &ChunkId, at: u64) -> &mut Self {
        self.acked.insert(&id.as_bytes()[..], codec::encode_ack(at));
        self
    }

    /// Forgets the acknowledgement of chunk `id`.
    pub fn unack(&mut self, id: &ChunkId) -> &mut Self {
        self.acked.remove(&id.as_bytes()[..]);
        self
    }

    /// Sets the vault's pull cursor.
    pub fn set_cursor(&mut self, seq: Seq) -> &mut Self {
        self.cursor = Some(seq);
        self
    }
}

/// One vault's trees in the [`Index`]. Cheap to clone.
#[derive(Clone)]
pub struct VaultIndex {
    vault: VaultId,
    index: Index,
    trees: VaultTrees,
}

impl fmt::Debug for VaultIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultIndex")
            .field("vault", &self.vault)
            .finish_non_exhaustive()
    }
}

impl VaultIndex {
    /// The vault.
    pub fn vault(&self) -> VaultId {
        self.vault
    }

    /// The index this vault lives in.
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// The vault's binding: folder root and cursor.
    pub fn meta(&self) -> Result<VaultMeta, IndexError> {
        self.index
            .vault_meta(self.vault)?
            .ok_or(IndexError::UnknownVault { vault: self.vault })
    }

    /// The seq up to which remote changes have been pulled.
    pub fn cursor(&self) -> Result<Seq, IndexError> {
        self.index.cursor_of(self.vault)
    }

    /// Applies `batch` atomically across the vault's trees and its cursor. **Durable.**
    pub fn commit(&self, batch: VaultBatch) -> Result<(), IndexError> {
        let t = &self.trees;
        let cursor_key = self.vault.as_bytes();
        let cursor_value = batch.cursor.map(codec::encode_cursor);
        (
            &t.local,
            &t.remote,
            &t.base,
            &t.pending,
            &t.acked,
            &self.index.cursors,
        )
            .transaction(|(local, remote, base, pending, acked, cursors)| {
                local.apply_batch(&batch.local)?;
                remote.apply_batch(&batch.remote)?;
                base.apply_batch(&batch.base)?;
                pending.apply_batch(&batch.pending)?;
                acked.apply_batch(&batch.acked)?;
                if let Some(v) = &cursor_value {
                    cursors.insert(&cursor_key[..], &v[..])?;
                }
                Ok(())
            })
            .map_err(tx_storage("committing a batch"))?;
        self.index.flush()
    }

    /// Writes and fsyncs everything written so far. **Durable.**
    pub fn flush(&self) -> Result<(), IndexError> {
        self.index.flush()
    }

    // --- local state ---------------------------------------------------------------------

    /// The local-state entry of `path`.
    pub fn local(&self, path: &RelPath) -> Result<Option<LocalEntry>, IndexError> {
        get(
            &self.trees.local,
            path,
            codec::decode_local,
            "reading local state",
        )
    }

    /// Sets the local-state entry of `path`. Not flushed (see [`Index`], "Durability").
    pub fn put_local(&self, path: &RelPath, entry: &LocalEntry) -> Result<(), IndexError> {
        self.trees
            .local
            .insert(path.as_bytes(), codec::encode_local(entry))
            .map(drop)
            .map_err(storage("writing local state"))
    }

    /// Removes the local-state entry of `path`. Not flushed.
    pub fn remove_local(&self, path: &RelPath) -> Result<(), IndexError> {
        self.trees
            .local
            .remove(path.as_bytes())
            .map(drop)
            .map_err(storage("removing local state"))
    }

    /// Every local-state entry, in path byte order.
    pub fn local_entries(
        &self,
    ) -> impl Iterator<Item = Result<(RelPath, LocalEntry), IndexError>> + use<> {
        iter(
            self.trees.local.clone(),
            self.trees.local.iter(),
            codec::decode_local,
        )
    }

    /// The local-state tree, for the scanner's range walks.
    pub(crate) fn local_tree(&self) -> &sled::Tree {
        &self.trees.local
    }

    /// Where each of `wanted` can be read on local disk, for chunks that some scanned file
    /// contains (one location per chunk). Reads the whole local-state tree once.
    pub fn find_local_chunks(
        &self,
        wanted: &HashSet<ChunkId>,
    ) -> Result<HashMap<ChunkId, ChunkLocation>, IndexError> {
        let mut found = HashMap::new();
        if wanted.is_empty() {
            return Ok(found);
        }
        for item in self.local_entries() {
            let (path, entry) = item?;
            let mut offset = 0u64;
            for chunk in &entry.chunks {
                if wanted.contains(&chunk.id) && !found.contains_key(&chunk.id) {
                    found.insert(
                        chunk.id,
                        ChunkLocation {
                            path: path.clone(),
                            offset,
                            len: chunk.len,
                        },
                    );
                }
                offset += u64::from(chunk.len);
            }
            if found.len() == wanted.len() {
                break;
            }
        }
        Ok(found)
    }

    // --- remote state --------------------------------------------------------------------

    /// The remote head of `path`.
    pub fn remote(&self, path: &RelPath) -> Result<Option<RemoteEntry>, IndexError> {
        get(
            &self.trees.remote,
            path,
            codec::decode_remote,
            "reading remote state",
        )
    }

    /// Every remote head, in path byte order.
    pub fn remote_entries(
        &self,
    ) -> impl Iterator<Item = Result<(RelPath, RemoteEntry), IndexError>> + use<> {
        iter(
            self.trees.remote.clone(),
            self.trees.remote.iter(),
            codec::decode_remote,
        )
    }

    /// Records pulled heads and advances the cursor to `cursor`, atomically. **Durable.**
    pub fn apply_pull<'a>(
        &self,
        entries: impl IntoIterator<Item = (&'a RelPath, &'a RemoteEntry)>,
        cursor: Seq,
    ) -> Result<(), IndexError> {
        let mut batch = VaultBatch::new();
        for (path, entry) in entries {
            batch.put_remote(path, entry);
        }
        batch.set_cursor(cursor);
        self.commit(batch)
    }

    // --- synced base ---------------------------------------------------------------------

    /// The synced base of `path`.
    pub fn base(&self, path: &RelPath) -> Result<Option<SyncedEntry>, IndexError> {
        get(
            &self.trees.base,
            path,
            codec::decode_synced,
            "reading the synced base",
        )
    }

    /// Every synced base entry, in path byte order.
    pub fn base_entries(
        &self,
    ) -> impl Iterator<Item = Result<(RelPath, SyncedEntry), IndexError>> + use<> {
        iter(
            self.trees.base.clone(),
            self.trees.base.iter(),
            codec::decode_synced,
        )
    }

    // --- upload journal ------------------------------------------------------------------

    /// Records that an upload of `path` starts. **Durable.**
    pub fn begin_upload(&self, path: &RelPath, upload: &PendingUpload) -> Result<(), IndexError> {
        let mut batch = VaultBatch::new();
        batch.put_pending(path, upload);
        self.commit(batch)
    }

    /// The pending upload of `path`.
    pub fn pending_upload(&self, path: &RelPath) -> Result<Option<PendingUpload>, IndexError> {
        get(
            &self.trees.pending,
            path,
            codec::decode_pending,
            "reading the upload journal",
        )
    }

    /// Every pending upload, in path byte order: what to resume after a restart.
    pub fn pending_uploads(&self) -> Result<Vec<(RelPath, PendingUpload)>, IndexError> {
        iter(
            self.trees.pending.clone(),
            self.trees.pending.iter(),
            codec::decode_pending,
        )
        .collect()
    }

    /// Records that the server acknowledged `chunks` (now). **Durable**: one flush per call, so
    /// pass every chunk acknowledged since the last call.
    /// Also makes earlier [`note_acked`](Self::note_acked) records durable.
    pub fn record_acked(&self, chunks: &[ChunkId]) -> Result<(), IndexError> {
        self.note_acked(chunks)?;
        self.index.flush()
    }

    /// Records that the server acknowledged `chunks` (now), without waiting for the disk: the
    /// record becomes durable with the index's next flush (sled's background flush runs every
    /// half second). Losing it in a crash costs only a `Have` question for those chunks on the
    /// next run, never a re-upload, so the upload loop uses this between its durable
    /// [`record_acked`](Self::record_acked) calls (an `fsync` every 64 chunks made uploads of
    /// small chunks disk-bound).
    pub fn note_acked(&self, chunks: &[ChunkId]) -> Result<(), IndexError> {
        if chunks.is_empty() {
            return Ok(());
        }
        let at = now_secs();
        let mut batch = sled::Batch::default();
        for id in chunks {
            batch.insert(&id.as_bytes()[..], codec::encode_ack(at));
        }
        self.trees
            .acked
            .apply_batch(batch)
            .map_err(storage("recording chunk acknowledgements"))?;
        Ok(())
    }

    /// Whether the server has acknowledged chunk `id` for a pending upload.
    pub fn is_acked(&self, id: &ChunkId) -> Result<bool, IndexError> {
        Ok(self.acked_at(id)?.is_some())
    }

    /// When the server acknowledged chunk `id` (unix seconds), if it has. Pending chunks that
    /// no commit references are collected by the server after a grace period: compare with it
    /// before trusting an old acknowledgement.
    pub fn acked_at(&self, id: &ChunkId) -> Result<Option<u64>, IndexError> {
        let key = &id.as_bytes()[..];
        let Some(v) = self
            .trees
            .acked
            .get(key)
            .map_err(storage("reading the upload journal"))?
        else {
            return Ok(None);
        };
        codec::decode_ack(&v)
            .map(Some)
            .map_err(corrupt(&self.trees.acked, key))
    }

    /// Forgets acknowledgements older than `before` (unix seconds); returns how many.
    /// **Durable.**
    pub fn prune_acked(&self, before: u64) -> Result<u64, IndexError> {
        let mut batch = sled::Batch::default();
        let mut pruned = 0u64;
        for item in self.trees.acked.iter() {
            let (k, v) = item.map_err(storage("reading the upload journal"))?;
            let at = codec::decode_ack(&v).map_err(corrupt(&self.trees.acked, &k))?;
            if at < before {
                batch.remove(k);
                pruned += 1;
            }
        }
        self.trees
            .acked
            .apply_batch(batch)
            .map_err(storage("pruning the upload journal"))?;
        self.index.flush()?;
        Ok(pruned)
    }

    /// Completes the upload of `path` after the server accepted the commit that made
    /// `committed` the head: drops the pending record, sets remote and base to `committed`
    /// (removes the base for a deletion) and forgets the acks of its chunks, atomically.
    /// **Durable.**
    pub fn finish_upload(&self, path: &RelPath, committed: &RemoteEntry) -> Result<(), IndexError> {
        let mut batch = VaultBatch::new();
        batch.remove_pending(path).put_remote(path, committed);
        match SyncedEntry::from_remote(committed) {
            Some(base) => batch.put_base(path, &base),
            None => batch.remove_base(path),
        };
        for chunk in &committed.chunks {
            batch.unack(&chunk.id);
        }
        self.commit(batch)
    }

    /// Drops the pending upload of `path` (its acknowledged chunks stay recorded). **Durable.**
    pub fn abort_upload(&self, path: &RelPath) -> Result<(), IndexError> {
        let mut batch = VaultBatch::new();
        batch.remove_pending(path);
        self.commit(batch)
    }
}

fn get<T>(
    tree: &sled::Tree,
    path: &RelPath,
    decode: fn(&[u8]) -> Result<T, CodecError>,
    action: &'static str,
) -> Result<Option<T>, IndexError> {
    let Some(v) = tree.get(path.as_bytes()).map_err(storage(action))? else {
        return Ok(None);
    };
    decode(&v).map(Some).map_err(corrupt(tree, path.as_bytes()))
}

fn iter<T>(
    tree: sled::Tree,
    inner: sled::Iter,
    decode: fn(&[u8]) -> Result<T, CodecError>,
) -> impl Iterator<Item = Result<(RelPath, T), IndexError>> {
    inner.map(move |item| {
        let (k, v) = item.map_err(storage("iterating a tree"))?;
        let path = RelPath::from_key(&k).map_err(|e| bad_key(&tree, &k, e))?;
        let value = decode(&v).map_err(corrupt(&tree, &k))?;
        Ok((path, value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dooz_crypto::{DeviceSecretKeys, EntryKey, VersionId};

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    fn cid(n: u8) -> ChunkId {
        ChunkId::from_bytes([n; 32])
    }

    fn file_state(n: u8, size: u64) -> EntryState {
        EntryState {
            kind: EntryKind::File,
            size,
            mode: 0o640,
            mtime_ns: -5,
            content_hash: ContentHash([n; 32]),
        }
    }

    fn local_entry(n: u8) -> LocalEntry {
        LocalEntry {
            state: file_state(n, 30),
            inode: u64::from(n),
            chunks: vec![
                ChunkRef {
                    id: cid(n),
                    len: 10,
                },
                ChunkRef {
                    id: cid(n + 1),
                    len: 20,
                },
            ],
            racy: false,
        }
    }

    fn remote_entry(n: u8, state: Option<EntryState>) -> RemoteEntry {
        RemoteEntry {
            entry_key: EntryKey::from_bytes([n; 32]),
            version: VersionId([n; 16]),
            parent: Some(VersionId([n - 1; 16])),
            seq: Seq::new(u64::from(n)),
            state,
            chunks: vec![ChunkRef {
                id: cid(n),
                len: 30,
            }],
        }
    }

    const VAULT: VaultId = VaultId([3; 16]);

    #[test]
    fn trees_round_trip_and_persist_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("folder");
        let remote = remote_entry(5, Some(file_state(5, 30)));
        let tomb = remote_entry(6, None);
        let base = SyncedEntry::from_remote(&remote).unwrap();
        {
            let index = Index::open(dir.path().join("index")).unwrap();
            let vault = index.add_vault(VAULT, &folder).unwrap();
            assert_eq!(vault.cursor().unwrap(), Seq::ZERO);
            vault.put_local(&p("a/b"), &local_entry(1)).unwrap();
            vault.put_local(&p("gone"), &local_entry(2)).unwrap();
            vault.remove_local(&p("gone")).unwrap();
            vault
                .apply_pull([(&p("a/b"), &remote), (&p("t"), &tomb)], Seq::new(9))
                .unwrap();
            let mut batch = VaultBatch::new();
            batch.put_base(&p("a/b"), &base);
            vault.commit(batch).unwrap();
            assert!(tomb.is_deleted() && SyncedEntry::from_remote(&tomb).is_none());
        }
        let index = Index::open(dir.path().join("index")).unwrap();
        assert_eq!(
            index.vaults().unwrap(),
            vec![VaultMeta {
                vault: VAULT,
                root: folder.clone(),
                cursor: Seq::new(9),
            }]
        );
        let vault = index.vault(VAULT).unwrap();
        assert_eq!(vault.meta().unwrap().root, folder);
        assert_eq!(vault.local(&p("a/b")).unwrap(), Some(local_entry(1)));
        assert_eq!(vault.local(&p("gone")).unwrap(), None);
        assert_eq!(vault.remote(&p("a/b")).unwrap(), Some(remote.clone()));
        assert_eq!(vault.remote(&p("t")).unwrap(), Some(tomb));
        assert_eq!(vault.base(&p("a/b")).unwrap(), Some(base));
        let locals: Vec<_> = vault.local_entries().map(Result::unwrap).collect();
        assert_eq!(locals, vec![(p("a/b"), local_entry(1))]);
        assert_eq!(vault.remote_entries().count(), 2);
        assert_eq!(vault.base_entries().count(), 1);
    }

    #[test]
    fn vault_binding_errors() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        assert!(matches!(
            index.vault(VAULT),
            Err(IndexError::UnknownVault { vault }) if vault == VAULT
        ));
        let vault = index.add_vault(VAULT, Path::new("/x")).unwrap();
        vault.put_local(&p("f"), &local_entry(1)).unwrap();
        let err = index.add_vault(VAULT, Path::new("/y")).unwrap_err();
        assert!(matches!(err, IndexError::VaultExists { .. }), "{err}");
        assert!(err.to_string().contains("/x"), "{err}");

        // Removing a vault drops its trees: binding it again starts empty.
        index
            .put_vault_key(VAULT, Epoch(0), &VaultKey::from_bytes([1; 32]))
            .unwrap();
        assert!(index.remove_vault(VAULT).unwrap());
        assert!(!index.remove_vault(VAULT).unwrap());
        assert!(index.vault_keys(VAULT).unwrap().is_empty());
        let vault = index.add_vault(VAULT, Path::new("/y")).unwrap();
        assert_eq!(vault.local(&p("f")).unwrap(), None);

        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let bad = Path::new(std::ffi::OsStr::from_bytes(b"/bad\xff"));
            assert!(matches!(
                index.add_vault(VaultId([4; 16]), bad),
                Err(IndexError::RootNotUtf8 { .. })
            ));
        }
    }

    #[test]
    fn a_second_open_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Index::open(dir.path()).unwrap();
        let err = Index::open(dir.path()).unwrap_err();
        assert!(matches!(err, IndexError::Locked { .. }), "{err:?}");
        assert!(err.to_string().contains("another process"), "{err}");
    }

    #[test]
    fn device_and_vault_keys_persist() {
        let dir = tempfile::tempdir().unwrap();
        let keys = DeviceSecretKeys::generate().unwrap();
        let id = keys.device_id();
        {
            let index = Index::open(dir.path()).unwrap();
            assert!(index.device().unwrap().is_none());
            index
                .set_device(&DeviceRecord {
                    server_addr: "[::1]:4433".into(),
                    server_fingerprint: [7; 32],
                    device_name: "desk".into(),
                    keys,
                })
                .unwrap();
            for epoch in [2, 0, 1] {
                index
                    .put_vault_key(
                        VAULT,
                        Epoch(epoch),
                        &VaultKey::from_bytes([epoch as u8; 32]),
                    )
                    .unwrap();
            }
            index
                .put_vault_key(VaultId([9; 16]), Epoch(0), &VaultKey::from_bytes([9; 32]))
                .unwrap();
        }
        let index = Index::open(dir.path()).unwrap();
        let device = index.device().unwrap().unwrap();
        assert_eq!(device.server_addr, "[::1]:4433");
        assert_eq!(device.server_fingerprint, [7; 32]);
        assert_eq!(device.device_name, "desk");
        assert_eq!(device.keys.device_id(), id);
        let keys = index.vault_keys(VAULT).unwrap();
        let epochs: Vec<_> = keys.iter().map(|(e, _)| e.0).collect();
        assert_eq!(epochs, [0, 1, 2]);
        assert_eq!(keys[2].1.expose_secret(), &[2; 32]);
    }

    #[test]
    fn upload_journal_resumes_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = p("big.bin");
        let pending = PendingUpload {
            version: VersionId([8; 16]),
            parent: Some(VersionId([7; 16])),
            state: Some(file_state(8, 30)),
            started_at: 1_700_000_000,
        };
        {
            let index = Index::open(dir.path()).unwrap();
            let vault = index.add_vault(VAULT, Path::new("/f")).unwrap();
            vault.begin_upload(&path, &pending).unwrap();
            vault.record_acked(&[cid(1), cid(2)]).unwrap();
            vault.record_acked(&[]).unwrap();
            // Killed here: no flush, no close beyond what the calls did.
            std::mem::forget(vault);
            std::mem::forget(index);
        }
        // sled holds its lock until the process exits; copy the files to "restart".
        let restarted = dir.path().join("restarted");
        copy_dir(dir.path(), &restarted);
        let index = Index::open(&restarted).unwrap();
        let vault = index.vault(VAULT).unwrap();
        assert_eq!(
            vault.pending_uploads().unwrap(),
            vec![(path.clone(), pending)]
        );
        assert_eq!(vault.pending_upload(&path).unwrap(), Some(pending));
        assert!(vault.is_acked(&cid(1)).unwrap());
        assert!(vault.is_acked(&cid(2)).unwrap());
        assert!(!vault.is_acked(&cid(3)).unwrap());
        assert!(vault.acked_at(&cid(1)).unwrap().unwrap() > 1_600_000_000);

        // Commit done: the head is recorded as remote and base, the journal is cleared for
        // its chunks only.
        let committed = RemoteEntry {
            entry_key: EntryKey::from_bytes([1; 32]),
            version: pending.version,
            parent: pending.parent,
            seq: Seq::new(12),
            state: pending.state,
            chunks: vec![ChunkRef {
                id: cid(1),
                len: 30,
            }],
        };
        vault.finish_upload(&path, &committed).unwrap();
        assert_eq!(vault.pending_uploads().unwrap(), vec![]);
        assert_eq!(vault.remote(&path).unwrap(), Some(committed.clone()));
        assert_eq!(
            vault.base(&path).unwrap(),
            SyncedEntry::from_remote(&committed)
        );
        assert!(!vault.is_acked(&cid(1)).unwrap());
        assert!(vault.is_acked(&cid(2)).unwrap());
        assert_eq!(vault.prune_acked(u64::MAX).unwrap(), 1);
        assert!(!vault.is_acked(&cid(2)).unwrap());

        // A committed deletion removes the base.
        let tomb = RemoteEntry {
            state: None,
            chunks: vec![],
            version: VersionId([9; 16]),
            ..committed
        };
        vault.begin_upload(&path, &pending).unwrap();
        vault.finish_upload(&path, &tomb).unwrap();
        assert_eq!(vault.base(&path).unwrap(), None);
        assert!(vault.remote(&path).unwrap().unwrap().is_deleted());
        vault.begin_upload(&path, &pending).unwrap();
        vault.abort_upload(&path).unwrap();
        assert_eq!(vault.pending_upload(&path).unwrap(), None);
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.path() == to {
                continue;
            }
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }

    #[test]
    fn corrupt_values_are_reported_not_panicked() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let vault = index.add_vault(VAULT, Path::new("/f")).unwrap();
        vault.local_tree().insert("bad", &[1, 0xff][..]).unwrap();
        vault.local_tree().insert("newer", &[2, 0][..]).unwrap();
        let err = vault.local(&p("bad")).unwrap_err();
        assert!(matches!(err, IndexError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("\"bad\""), "{err}");
        let err = vault.local(&p("newer")).unwrap_err();
        assert!(
            matches!(err, IndexError::UnsupportedVersion { found: 2, .. }),
            "{err}"
        );
        assert!(vault.local_entries().any(|r| r.is_err()));
        // A key that is not a valid path.
        vault.local_tree().insert("a//b", encode_ok()).unwrap();
        assert!(
            vault
                .local_entries()
                .any(|r| matches!(r, Err(IndexError::Corrupt { .. })))
        );
    }

    fn encode_ok() -> Vec<u8> {
        codec::encode_local(&local_entry(1))
    }

    #[test]
    fn local_chunks_are_found_with_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let vault = index.add_vault(VAULT, Path::new("/f")).unwrap();
        vault.put_local(&p("x"), &local_entry(1)).unwrap(); // chunks 1 (0..10), 2 (10..30)
        vault.put_local(&p("y"), &local_entry(4)).unwrap(); // chunks 4, 5
        let wanted: HashSet<_> = [cid(2), cid(5), cid(99)].into_iter().collect();
        let found = vault.find_local_chunks(&wanted).unwrap();
        assert_eq!(found.len(), 2);
        assert_eq!(
            found[&cid(2)],
            ChunkLocation {
                path: p("x"),
                offset: 10,
                len: 20
            }
        );
        assert_eq!(found[&cid(5)].offset, 10);
        assert!(vault.find_local_chunks(&HashSet::new()).unwrap().is_empty());
    }
}
