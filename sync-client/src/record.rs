//! Entry records: the plaintext of a sealed record, which describes one version of one entry
//! (path, kind, size, mode, mtime, content hash and chunks).
//!
//! The server sees a record only sealed (`EpochKeys::seal_record`, bound to the entry key and
//! the version id), so names, sizes and content hashes never leave the device in the clear.
//! The entry key of a path is `VaultIdentityKeys::entry_key(path bytes)`; opening checks that
//! the path inside the record hashes to the entry key it was sealed under.
//!
//! # Byte layout, version 1
//!
//! `version: u8 = 1`, then the [postcard](https://docs.rs/postcard) encoding of the fields below
//! (varints for integers, zigzag for `mtime_ns`, raw bytes for fixed-size arrays, a varint count
//! before strings and lists), with nothing after them. `docs/FORMAT.md`, section "Entry record
//! plaintext", is the specification.
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `path` | `String` | relative UTF-8 path, `/`-separated ([`RelPath`] rules) |
//! | `kind` | enum | `0` file, `1` directory, `2` symlink, `3` deleted |
//! | `size` | `u64` | content length in bytes (`0` for directories and deletions) |
//! | `mode` | `u32` | unix permission bits, `st_mode & 0o7777` |
//! | `mtime_ns` | `i64` | modification time, ns since the Unix epoch |
//! | `content_hash` | `[u8; 32]` | BLAKE3 of the whole plaintext content (zero for dirs and deletions) |
//! | `chunks` | enum | `0` inline: `Vec<(id [u8; 32], len u32)>`; `1` list: `depth u8, root Vec<[u8; 32]>, total_chunks u64` |

use dooz_crypto::{
    ChunkId, EntryKey, EpochKeys, Keyring, OpenError, SealError, VaultIdentityKeys, VersionId,
};
use serde::{Deserialize, Serialize};

use crate::index::{ChunkRef, ContentHash, EntryKind, EntryState, PathError, RelPath};

/// Largest plaintext chunk a record may name: the protocol's limit on a sealed chunk (so a
/// record can never make a reader allocate more than one chunk's worth at a time).
const MAX_CHUNK_PLAINTEXT: u32 = dooz_protocol::limits::MAX_CHUNK_LEN;

/// The entry record format version this build writes and reads.
pub const RECORD_FORMAT_VERSION: u8 = 1;

/// What an entry record describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (its target is its content).
    Symlink,
    /// The entry was deleted (a tombstone).
    Deleted,
}

/// Where a file's chunks are named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordChunks {
    /// The chunks themselves, in file order (ordinary files; empty for empty files,
    /// directories and deletions).
    Inline(Vec<ChunkRef>),
    /// A tree of list blocks (huge files; see [`crate::ChunkList::Indirect`]).
    List {
        /// Tree depth: `1` means `root` names level-0 list blocks.
        depth: u8,
        /// Ids of the top-level list blocks.
        root: Vec<ChunkId>,
        /// Number of content chunks.
        total_chunks: u64,
    },
}

/// A record could not be encoded, decoded, sealed or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The record is empty or its version byte is not one this build reads.
    #[error(
        "entry record has format version {found:?}, this build reads version {RECORD_FORMAT_VERSION}; upgrade dooz"
    )]
    UnknownVersion {
        /// The version byte (`None`: the record is empty).
        found: Option<u8>,
    },
    /// The bytes after the version are not a valid record.
    #[error("entry record is malformed: {0}")]
    Malformed(String),
    /// The record's path is not a valid relative path.
    #[error("entry record names an invalid path: {0}")]
    BadPath(#[from] PathError),
    /// The fields contradict each other.
    #[error("entry record of {path} is inconsistent: {reason}")]
    Inconsistent {
        /// The path.
        path: String,
        /// What contradicts what.
        reason: &'static str,
    },
    /// The record's path does not belong to the entry key it was sealed under.
    #[error(
        "entry record of {path} was filed under another entry key: the vault's metadata has been tampered with"
    )]
    WrongEntry {
        /// The path inside the record.
        path: String,
    },
    /// Sealing failed.
    #[error("cannot seal the entry record: {0}")]
    Seal(#[from] SealError),
    /// Opening failed (tampered, wrong key, unknown epoch, ...).
    #[error("cannot open the entry record: {0}")]
    Open(#[from] OpenError),
}

/// The plaintext of a sealed record: one version of one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryRecord {
    /// The entry's path, relative to the vault root.
    pub path: RelPath,
    /// File, directory, symlink or deletion.
    pub kind: RecordKind,
    /// Content length in bytes.
    pub size: u64,
    /// Unix permission bits.
    pub mode: u32,
    /// Modification time, ns since the Unix epoch.
    pub mtime_ns: i64,
    /// BLAKE3 of the plaintext content.
    pub content_hash: ContentHash,
    /// The content's chunks.
    pub chunks: RecordChunks,
}

#[derive(Serialize, Deserialize)]
enum WireKind {
    File,
    Dir,
    Symlink,
    Deleted,
}

#[derive(Serialize, Deserialize)]
enum WireChunks {
    Inline(Vec<([u8; 32], u32)>),
    List {
        depth: u8,
        root: Vec<[u8; 32]>,
        total_chunks: u64,
    },
}

#[derive(Serialize, Deserialize)]
struct WireRecordV1 {
    path: String,
    kind: WireKind,
    size: u64,
    mode: u32,
    mtime_ns: i64,
    content_hash: [u8; 32],
    chunks: WireChunks,
}

impl EntryRecord {
    /// The record of `path` in `state` (`None`: deleted) with inline `chunks`.
    pub fn new(path: RelPath, state: Option<&EntryState>, chunks: Vec<ChunkRef>) -> Self {
        match state {
            Some(s) => Self {
                path,
                kind: match s.kind {
                    EntryKind::File => RecordKind::File,
                    EntryKind::Dir => RecordKind::Dir,
                    EntryKind::Symlink => RecordKind::Symlink,
                },
                size: s.size,
                mode: s.mode,
                mtime_ns: s.mtime_ns,
                content_hash: s.content_hash,
                chunks: RecordChunks::Inline(chunks),
            },
            None => Self {
                path,
                kind: RecordKind::Deleted,
                size: 0,
                mode: 0,
                mtime_ns: 0,
                content_hash: ContentHash::NONE,
                chunks: RecordChunks::Inline(Vec::new()),
            },
        }
    }

    /// The entry's state, `None` for a deletion.
    pub fn state(&self) -> Option<EntryState> {
        let kind = match self.kind {
            RecordKind::File => EntryKind::File,
            RecordKind::Dir => EntryKind::Dir,
            RecordKind::Symlink => EntryKind::Symlink,
            RecordKind::Deleted => return None,
        };
        Some(EntryState {
            kind,
            size: self.size,
            mode: self.mode,
            mtime_ns: self.mtime_ns,
            content_hash: self.content_hash,
        })
    }

    /// The inline chunk refs (empty for a list-block record).
    pub fn inline_chunks(&self) -> &[ChunkRef] {
        match &self.chunks {
            RecordChunks::Inline(c) => c,
            RecordChunks::List { .. } => &[],
        }
    }

    /// The chunk ids the commit of this version references directly: the inline chunks, or
    /// the top-level list blocks.
    pub fn referenced_chunks(&self) -> Vec<ChunkId> {
        match &self.chunks {
            RecordChunks::Inline(c) => c.iter().map(|r| r.id).collect(),
            RecordChunks::List { root, .. } => root.clone(),
        }
    }

    fn check(&self) -> Result<(), RecordError> {
        let bad = |reason| {
            Err(RecordError::Inconsistent {
                path: self.path.to_string(),
                reason,
            })
        };
        let has_chunks = match &self.chunks {
            RecordChunks::Inline(c) => !c.is_empty(),
            RecordChunks::List { .. } => true,
        };
        match self.kind {
            RecordKind::Dir | RecordKind::Deleted if self.size != 0 || has_chunks => {
                bad("a directory or deletion has content")
            }
            RecordKind::File | RecordKind::Symlink => match &self.chunks {
                RecordChunks::Inline(c) => {
                    let total = c
                        .iter()
                        .map(|r| u64::from(r.len))
                        .try_fold(0u64, u64::checked_add);
                    if total != Some(self.size) {
                        bad("the chunk lengths do not add up to the size")
                    } else if c.iter().any(|r| r.len == 0) {
                        bad("a chunk is empty")
                    } else if c.iter().any(|r| r.len > MAX_CHUNK_PLAINTEXT) {
                        bad("a chunk is larger than any chunker makes")
                    } else {
                        Ok(())
                    }
                }
                RecordChunks::List {
                    depth,
                    root,
                    total_chunks,
                } => {
                    if *depth == 0 || root.is_empty() || *total_chunks == 0 {
                        bad("an empty list-block tree")
                    } else {
                        Ok(())
                    }
                }
            },
            RecordKind::Dir | RecordKind::Deleted => Ok(()),
        }
    }

    /// The record's plaintext bytes (layout in the module docs).
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        self.check()?;
        let wire = WireRecordV1 {
            path: self.path.as_str().to_owned(),
            kind: match self.kind {
                RecordKind::File => WireKind::File,
                RecordKind::Dir => WireKind::Dir,
                RecordKind::Symlink => WireKind::Symlink,
                RecordKind::Deleted => WireKind::Deleted,
            },
            size: self.size,
            mode: self.mode,
            mtime_ns: self.mtime_ns,
            content_hash: self.content_hash.0,
            chunks: match &self.chunks {
                RecordChunks::Inline(c) => {
                    WireChunks::Inline(c.iter().map(|r| (*r.id.as_bytes(), r.len)).collect())
                }
                RecordChunks::List {
                    depth,
                    root,
                    total_chunks,
                } => WireChunks::List {
                    depth: *depth,
                    root: root.iter().map(|id| *id.as_bytes()).collect(),
                    total_chunks: *total_chunks,
                },
            },
        };
        let mut out = vec![RECORD_FORMAT_VERSION];
        let body = postcard::to_stdvec(&wire).map_err(|e| RecordError::Malformed(e.to_string()))?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Parses and checks a record's plaintext.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let Some((&version, body)) = bytes.split_first() else {
            return Err(RecordError::UnknownVersion { found: None });
        };
        if version != RECORD_FORMAT_VERSION {
            return Err(RecordError::UnknownVersion {
                found: Some(version),
            });
        }
        let (wire, rest) = postcard::take_from_bytes::<WireRecordV1>(body)
            .map_err(|e| RecordError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(RecordError::Malformed(format!(
                "{} trailing bytes after the record",
                rest.len()
            )));
        }
        let record = Self {
            path: RelPath::new(wire.path)?,
            kind: match wire.kind {
                WireKind::File => RecordKind::File,
                WireKind::Dir => RecordKind::Dir,
                WireKind::Symlink => RecordKind::Symlink,
                WireKind::Deleted => RecordKind::Deleted,
            },
            size: wire.size,
            mode: wire.mode,
            mtime_ns: wire.mtime_ns,
            content_hash: ContentHash(wire.content_hash),
            chunks: match wire.chunks {
                WireChunks::Inline(c) => RecordChunks::Inline(
                    c.into_iter()
                        .map(|(id, len)| ChunkRef {
                            id: ChunkId::from_bytes(id),
                            len,
                        })
                        .collect(),
                ),
                WireChunks::List {
                    depth,
                    root,
                    total_chunks,
                } => RecordChunks::List {
                    depth,
                    root: root.into_iter().map(ChunkId::from_bytes).collect(),
                    total_chunks,
                },
            },
        };
        record.check()?;
        Ok(record)
    }

    /// The entry key of this record's path.
    pub fn entry_key(&self, identity: &VaultIdentityKeys) -> EntryKey {
        identity.entry_key(self.path.as_bytes())
    }

    /// Seals the record as `version` of its entry with `epoch`'s keys; returns the entry key
    /// and the sealed bytes.
    pub fn seal(
        &self,
        identity: &VaultIdentityKeys,
        epoch: &EpochKeys,
        version: &VersionId,
    ) -> Result<(EntryKey, Vec<u8>), RecordError> {
        let entry = self.entry_key(identity);
        let sealed = epoch.seal_record(&entry, version, &self.encode()?)?;
        Ok((entry, sealed))
    }

    /// Opens a sealed record of `entry` at `version` and checks that its path belongs to
    /// `entry`.
    pub fn open(
        keyring: &Keyring,
        entry: &EntryKey,
        version: &VersionId,
        sealed: &[u8],
    ) -> Result<Self, RecordError> {
        let plain = zeroize::Zeroizing::new(keyring.open_record(entry, version, sealed)?);
        let record = Self::decode(&plain)?;
        if record.entry_key(keyring.identity()) != *entry {
            return Err(RecordError::WrongEntry {
                path: record.path.to_string(),
            });
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dooz_crypto::{Epoch, VaultId, VaultKey};
    use proptest::prelude::*;

    fn keyring() -> Keyring {
        let vault = VaultId([9; 16]);
        Keyring::from_first_epoch(vault, Epoch(1), &VaultKey::from_bytes([4; 32]))
    }

    fn file_record() -> EntryRecord {
        let state = EntryState {
            kind: EntryKind::File,
            size: 10,
            mode: 0o644,
            mtime_ns: -5,
            content_hash: ContentHash::of(b"0123456789"),
        };
        let chunks = vec![
            ChunkRef {
                id: ChunkId::from_bytes([1; 32]),
                len: 4,
            },
            ChunkRef {
                id: ChunkId::from_bytes([2; 32]),
                len: 6,
            },
        ];
        EntryRecord::new(RelPath::new("docs/a b.txt").unwrap(), Some(&state), chunks)
    }

    #[test]
    fn encodes_as_documented() {
        let r = EntryRecord::new(
            RelPath::new("d").unwrap(),
            Some(&EntryState::dir(0o755, 3)),
            vec![],
        );
        let bytes = r.encode().unwrap();
        let mut expected = vec![1, 1, b'd', 1, 0, 0xed, 0x03, 6];
        expected.extend_from_slice(&[0; 32]);
        expected.extend_from_slice(&[0, 0]);
        assert_eq!(bytes, expected);
        assert_eq!(EntryRecord::decode(&bytes).unwrap(), r);
    }

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let ring = keyring();
        let epoch = ring.latest().unwrap();
        let r = file_record();
        let version = VersionId([7; 16]);
        let (entry, sealed) = r.seal(ring.identity(), epoch, &version).unwrap();
        assert_eq!(entry, ring.identity().entry_key(b"docs/a b.txt"));
        assert_eq!(
            EntryRecord::open(&ring, &entry, &version, &sealed).unwrap(),
            r
        );
        assert_eq!(r.state().unwrap().size, 10);
        assert_eq!(r.referenced_chunks().len(), 2);
        // Any flipped byte fails to open.
        for i in [0, sealed.len() / 2, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(EntryRecord::open(&ring, &entry, &version, &bad).is_err());
        }
        // Another version or entry does not open it.
        assert!(EntryRecord::open(&ring, &entry, &VersionId([8; 16]), &sealed).is_err());
        let other = ring.identity().entry_key(b"other");
        assert!(EntryRecord::open(&ring, &other, &version, &sealed).is_err());
    }

    #[test]
    fn a_record_filed_under_another_entry_is_refused() {
        let ring = keyring();
        let epoch = ring.latest().unwrap();
        let r = file_record();
        let version = VersionId([7; 16]);
        let other = ring.identity().entry_key(b"other");
        let sealed = epoch
            .seal_record(&other, &version, &r.encode().unwrap())
            .unwrap();
        assert!(matches!(
            EntryRecord::open(&ring, &other, &version, &sealed),
            Err(RecordError::WrongEntry { .. })
        ));
    }

    #[test]
    fn bad_plaintexts_are_refused() {
        assert!(matches!(
            EntryRecord::decode(&[]),
            Err(RecordError::UnknownVersion { found: None })
        ));
        let mut bytes = file_record().encode().unwrap();
        bytes[0] = 2;
        assert!(matches!(
            EntryRecord::decode(&bytes),
            Err(RecordError::UnknownVersion { found: Some(2) })
        ));
        bytes[0] = 1;
        bytes.push(0);
        assert!(matches!(
            EntryRecord::decode(&bytes),
            Err(RecordError::Malformed(_))
        ));
        let mut r = file_record();
        r.size = 11;
        assert!(matches!(r.encode(), Err(RecordError::Inconsistent { .. })));
        let mut r = file_record();
        r.kind = RecordKind::Deleted;
        assert!(r.encode().is_err());
        let deleted = EntryRecord::new(RelPath::new("x").unwrap(), None, vec![]);
        assert_eq!(deleted.state(), None);
        assert_eq!(
            EntryRecord::decode(&deleted.encode().unwrap()).unwrap(),
            deleted
        );
    }

    proptest! {
        #[test]
        fn round_trips(
            lens in proptest::collection::vec(1u32..1_000_000, 0..20),
            mode in 0u32..0o7777,
            mtime_ns: i64,
            name in "[a-z]{1,8}(/[a-z0-9 ]{1,8}){0,3}",
        ) {
            let size = lens.iter().map(|&l| u64::from(l)).sum();
            let chunks = lens.iter().enumerate().map(|(i, &len)| ChunkRef {
                id: ChunkId::from_bytes([i as u8; 32]),
                len,
            }).collect();
            let state = EntryState {
                kind: EntryKind::File,
                size,
                mode,
                mtime_ns,
                content_hash: ContentHash([3; 32]),
            };
            let r = EntryRecord::new(RelPath::new(name).unwrap(), Some(&state), chunks);
            let bytes = r.encode().unwrap();
            prop_assert_eq!(EntryRecord::decode(&bytes).unwrap(), r);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = EntryRecord::decode(&bytes);
        }
    }
}
