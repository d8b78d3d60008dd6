//! The records the index keeps: entries of the three per-vault trees, vault metadata, the
//! device's enrolment and the upload journal.

use std::fmt;
use std::path::PathBuf;

use dooz_crypto::{ChunkId, DeviceSecretKeys, EntryKey, VaultId, VersionId};
use dooz_protocol::Seq;

/// What kind of file system object an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (recorded by nothing yet: the scanner skips symlinks).
    Symlink,
}

/// BLAKE3 (unkeyed) of a file's whole plaintext content. Local only, or inside sealed records:
/// never sent in the clear. Directories use [`ContentHash::NONE`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    /// The hash of entries without content (directories).
    pub const NONE: ContentHash = ContentHash([0; 32]);

    /// The hash of an empty file.
    pub fn empty() -> Self {
        Self::of(&[])
    }

    /// The hash of `content`.
    pub fn of(content: &[u8]) -> Self {
        Self(*blake3::hash(content).as_bytes())
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ContentHash(")?;
        self.0
            .iter()
            .take(8)
            .try_for_each(|b| write!(f, "{b:02x}"))?;
        f.write_str("..)")
    }
}

/// The part of an entry that syncs and that the three trees compare: kind, content and the
/// metadata that propagates (unix mode bits, mtime).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EntryState {
    /// File, directory or symlink.
    pub kind: EntryKind,
    /// Content length in bytes (0 for directories).
    pub size: u64,
    /// Unix permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch (negative before it).
    pub mtime_ns: i64,
    /// BLAKE3 of the content ([`ContentHash::NONE`] for directories).
    pub content_hash: ContentHash,
}

impl EntryState {
    /// The state of a directory.
    pub fn dir(mode: u32, mtime_ns: i64) -> Self {
        Self {
            kind: EntryKind::Dir,
            size: 0,
            mode,
            mtime_ns,
            content_hash: ContentHash::NONE,
        }
    }

    /// Same kind and, for files, same size and content hash. Directories have no content.
    pub fn same_content(&self, other: &EntryState) -> bool {
        self.kind == other.kind
            && (self.kind == EntryKind::Dir
                || (self.size == other.size && self.content_hash == other.content_hash))
    }

    /// Same content and same synced metadata: mode, and mtime for anything but a directory (a
    /// directory's mtime moves whenever its children change, so it does not sync).
    pub fn same_state(&self, other: &EntryState) -> bool {
        self.same_content(other)
            && self.mode == other.mode
            && (self.kind == EntryKind::Dir || self.mtime_ns == other.mtime_ns)
    }
}

/// One chunk of a file: its id and plaintext length. Offsets are the running sum of lengths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    /// The vault's keyed chunk id of the plaintext.
    pub id: ChunkId,
    /// Plaintext length in bytes.
    pub len: u32,
}

/// An entry of the local-state tree: what the scanner last saw on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalEntry {
    /// Kind, size, mode, mtime and content hash.
    pub state: EntryState,
    /// Inode number (0 where the platform has none).
    pub inode: u64,
    /// The file's chunks in order (empty for directories and empty files).
    pub chunks: Vec<ChunkRef>,
    /// Set when the file's mtime was too close to the scan that hashed it for size + mtime to
    /// prove a later edit absent (a "racily clean" entry, as git calls it): the next scan
    /// rehashes it whatever its size and mtime say.
    pub racy: bool,
}

/// An entry of the remote-state tree: the head version of a path as pulled from the server
/// (or as this device committed it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteEntry {
    /// The entry's key on the server.
    pub entry_key: EntryKey,
    /// The head version.
    pub version: VersionId,
    /// The version it replaced, `None` for the first version.
    pub parent: Option<VersionId>,
    /// The commit seq that made this version the head.
    pub seq: Seq,
    /// The entry's state; `None` when the head version is a deletion (a tombstone).
    pub state: Option<EntryState>,
    /// The file's chunks in order (empty for tombstones, directories and empty files).
    pub chunks: Vec<ChunkRef>,
}

impl RemoteEntry {
    /// Whether the head version deletes the entry.
    pub fn is_deleted(&self) -> bool {
        self.state.is_none()
    }
}

/// An entry of the synced-base tree: the last state this device and the server agreed on.
/// Paths both sides agree are deleted have no base entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncedEntry {
    /// The entry's key on the server.
    pub entry_key: EntryKey,
    /// The version both sides had.
    pub version: VersionId,
    /// The seq of that version.
    pub seq: Seq,
    /// The agreed state.
    pub state: EntryState,
}

impl SyncedEntry {
    /// The base a live remote entry gives (`None` for a tombstone).
    pub fn from_remote(remote: &RemoteEntry) -> Option<Self> {
        remote.state.map(|state| Self {
            entry_key: remote.entry_key,
            version: remote.version,
            seq: remote.seq,
            state,
        })
    }
}

/// A vault bound to a local folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VaultMeta {
    /// The vault.
    pub vault: VaultId,
    /// The folder it syncs (absolute; stored as UTF-8).
    pub root: PathBuf,
    /// The seq up to which remote changes have been pulled into the remote-state tree.
    pub cursor: Seq,
}

/// This device's enrolment: how to reach and pin the server, and the device's own keys.
///
/// `Debug` never shows the secret keys.
#[derive(Debug)]
pub struct DeviceRecord {
    /// The server's address, `host:port`.
    pub server_addr: String,
    /// The fingerprint of the server's certificate, pinned at enrolment.
    pub server_fingerprint: [u8; 32],
    /// A name for this device, shown to the account's other devices.
    pub device_name: String,
    /// The device's secret keys (TLS identity and X25519 exchange key).
    pub keys: DeviceSecretKeys,
}

/// An upload in progress for one path, recorded before its first chunk is sent.
///
/// The version id is chosen here, before anything reaches the server, so a commit retried after
/// a crash carries the same id: if the first attempt landed, the server's `Conflict{head}`
/// names this very version and the client knows the commit is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingUpload {
    /// The version id the commit will create.
    pub version: VersionId,
    /// The parent version the commit names (the remote head when the upload started).
    pub parent: Option<VersionId>,
    /// The state being uploaded; `None` for a deletion.
    pub state: Option<EntryState>,
    /// When the upload started, seconds since the Unix epoch.
    pub started_at: u64,
}
