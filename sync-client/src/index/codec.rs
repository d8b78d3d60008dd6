//! Stored value formats: one version byte, then the postcard encoding of that version's struct.
//!
//! The `*V1` structs below are the on-disk format, kept apart from the public types so the API
//! can change without changing the bytes. Postcard writes integers as varints (zigzag for
//! signed), fixed-size byte arrays raw, `Option` as a 0/1 tag, sequences with a varint length.
//! Decoding refuses unknown versions, malformed bodies and trailing bytes.

use dooz_crypto::{ChunkId, DeviceSecretKeys, EntryKey, VersionId};
use dooz_protocol::Seq;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::entry::{
    ChunkRef, ContentHash, DeviceRecord, EntryKind, EntryState, LocalEntry, PendingUpload,
    RemoteEntry, SyncedEntry,
};

/// The value format version this build writes (and the newest it reads).
pub(crate) const VALUE_VERSION: u8 = 1;

/// Why a stored value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CodecError {
    /// Written by a newer (or unknown) format version.
    UnsupportedVersion(u8),
    /// The bytes do not decode.
    Malformed(String),
}

#[derive(Serialize, Deserialize)]
struct StateV1 {
    /// 0 file, 1 directory, 2 symlink.
    kind: u8,
    size: u64,
    mode: u32,
    mtime_ns: i64,
    content_hash: [u8; 32],
}

#[derive(Serialize, Deserialize)]
struct ChunkRefV1 {
    id: [u8; 32],
    len: u32,
}

#[derive(Serialize, Deserialize)]
struct LocalV1 {
    state: StateV1,
    inode: u64,
    racy: bool,
    chunks: Vec<ChunkRefV1>,
}

#[derive(Serialize, Deserialize)]
struct RemoteV1 {
    entry_key: [u8; 32],
    version: [u8; 16],
    parent: Option<[u8; 16]>,
    seq: u64,
    state: Option<StateV1>,
    chunks: Vec<ChunkRefV1>,
}

#[derive(Serialize, Deserialize)]
struct SyncedV1 {
    entry_key: [u8; 32],
    version: [u8; 16],
    seq: u64,
    state: StateV1,
}

#[derive(Serialize, Deserialize)]
struct VaultV1 {
    root: String,
}

#[derive(Serialize, Deserialize)]
struct DeviceV1<'a> {
    server_addr: &'a str,
    server_fingerprint: [u8; 32],
    device_name: &'a str,
    /// Ed25519 seed (32) || X25519 secret (32).
    secret: &'a [u8],
}

#[derive(Deserialize)]
struct DeviceOwnedV1 {
    server_addr: String,
    server_fingerprint: [u8; 32],
    device_name: String,
    secret: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct PendingV1 {
    version: [u8; 16],
    parent: Option<[u8; 16]>,
    state: Option<StateV1>,
    started_at: u64,
}

#[derive(Serialize, Deserialize)]
struct AckV1 {
    at: u64,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain structs into a Vec cannot fail; an empty body would be refused
    // on decode rather than panic here.
    postcard::to_extend(value, vec![VALUE_VERSION]).unwrap_or_default()
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, CodecError> {
    let Some((&version, body)) = bytes.split_first() else {
        return Err(CodecError::Malformed("empty value".into()));
    };
    if version != VALUE_VERSION {
        return Err(CodecError::UnsupportedVersion(version));
    }
    let (value, rest) =
        postcard::take_from_bytes(body).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CodecError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    Ok(value)
}

fn state_to_v1(s: &EntryState) -> StateV1 {
    StateV1 {
        kind: match s.kind {
            EntryKind::File => 0,
            EntryKind::Dir => 1,
            EntryKind::Symlink => 2,
        },
        size: s.size,
        mode: s.mode,
        mtime_ns: s.mtime_ns,
        content_hash: s.content_hash.0,
    }
}

fn state_from_v1(s: StateV1) -> Result<EntryState, CodecError> {
    let kind = match s.kind {
        0 => EntryKind::File,
        1 => EntryKind::Dir,
        2 => EntryKind::Symlink,
        other => return Err(CodecError::Malformed(format!("unknown entry kind {other}"))),
    };
    Ok(EntryState {
        kind,
        size: s.size,
        mode: s.mode,
        mtime_ns: s.mtime_ns,
        content_hash: ContentHash(s.content_hash),
    })
}

fn chunks_to_v1(chunks: &[ChunkRef]) -> Vec<ChunkRefV1> {
    chunks
        .iter()
        .map(|c| ChunkRefV1 {
            id: *c.id.as_bytes(),
            len: c.len,
        })
        .collect()
}

fn chunks_from_v1(chunks: Vec<ChunkRefV1>) -> Vec<ChunkRef> {
    chunks
        .into_iter()
        .map(|c| ChunkRef {
            id: ChunkId::from_bytes(c.id),
            len: c.len,
        })
        .collect()
}

pub(crate) fn encode_local(e: &LocalEntry) -> Vec<u8> {
    encode(&LocalV1 {
        state: state_to_v1(&e.state),
        inode: e.inode,
        racy: e.racy,
        chunks: chunks_to_v1(&e.chunks),
    })
}

pub(crate) fn decode_local(bytes: &[u8]) -> Result<LocalEntry, CodecError> {
    let v: LocalV1 = decode(bytes)?;
    Ok(LocalEntry {
        state: state_from_v1(v.state)?,
        inode: v.inode,
        racy: v.racy,
        chunks: chunks_from_v1(v.chunks),
    })
}

/// Just the kind of a stored local entry, without decoding its chunk list.
pub(crate) fn decode_local_kind(bytes: &[u8]) -> Option<EntryKind> {
    let (&version, body) = bytes.split_first()?;
    if version != VALUE_VERSION {
        return None;
    }
    // `LocalV1` starts with its state, so the state is a prefix of the body.
    let (state, _) = postcard::take_from_bytes::<StateV1>(body).ok()?;
    state_from_v1(state).ok().map(|s| s.kind)
}

pub(crate) fn encode_remote(e: &RemoteEntry) -> Vec<u8> {
    encode(&RemoteV1 {
        entry_key: *e.entry_key.as_bytes(),
        version: e.version.0,
        parent: e.parent.map(|p| p.0),
        seq: e.seq.get(),
        state: e.state.as_ref().map(state_to_v1),
        chunks: chunks_to_v1(&e.chunks),
    })
}

pub(crate) fn decode_remote(bytes: &[u8]) -> Result<RemoteEntry, CodecError> {
    let v: RemoteV1 = decode(bytes)?;
    Ok(RemoteEntry {
        entry_key: EntryKey::from_bytes(v.entry_key),
        version: VersionId(v.version),
        parent: v.parent.map(VersionId),
        seq: Seq::new(v.seq),
        state: v.state.map(state_from_v1).transpose()?,
        chunks: chunks_from_v1(v.chunks),
    })
}

pub(crate) fn encode_synced(e: &SyncedEntry) -> Vec<u8> {
    encode(&SyncedV1 {
        entry_key: *e.entry_key.as_bytes(),
        version: e.version.0,
        seq: e.seq.get(),
        state: state_to_v1(&e.state),
    })
}

pub(crate) fn decode_synced(bytes: &[u8]) -> Result<SyncedEntry, CodecError> {
    let v: SyncedV1 = decode(bytes)?;
    Ok(SyncedEntry {
        entry_key: EntryKey::from_bytes(v.entry_key),
        version: VersionId(v.version),
        seq: Seq::new(v.seq),
        state: state_from_v1(v.state)?,
    })
}

pub(crate) fn encode_vault_root(root: &str) -> Vec<u8> {
    encode(&VaultV1 {
        root: root.to_string(),
    })
}

pub(crate) fn decode_vault_root(bytes: &[u8]) -> Result<String, CodecError> {
    decode::<VaultV1>(bytes).map(|v| v.root)
}

/// Cursor value: version byte, then the seq as 8 bytes big-endian.
pub(crate) fn encode_cursor(seq: Seq) -> Vec<u8> {
    let mut out = Vec::with_capacity(9);
    out.push(VALUE_VERSION);
    out.extend_from_slice(&seq.get().to_be_bytes());
    out
}

pub(crate) fn decode_cursor(bytes: &[u8]) -> Result<Seq, CodecError> {
    match bytes.split_first() {
        Some((&VALUE_VERSION, body)) => <[u8; 8]>::try_from(body)
            .map(|b| Seq::new(u64::from_be_bytes(b)))
            .map_err(|_| CodecError::Malformed(format!("cursor of {} bytes", body.len()))),
        Some((&other, _)) => Err(CodecError::UnsupportedVersion(other)),
        None => Err(CodecError::Malformed("empty value".into())),
    }
}

/// Vault key value: version byte, then the 32 key bytes. Zeroized when dropped.
pub(crate) fn encode_vault_key(key: &[u8; 32]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(33));
    out.push(VALUE_VERSION);
    out.extend_from_slice(key);
    out
}

pub(crate) fn decode_vault_key(bytes: &[u8]) -> Result<Zeroizing<[u8; 32]>, CodecError> {
    match bytes.split_first() {
        Some((&VALUE_VERSION, body)) => {
            let mut out = Zeroizing::new([0u8; 32]);
            if body.len() != 32 {
                return Err(CodecError::Malformed(format!(
                    "vault key of {} bytes",
                    body.len()
                )));
            }
            out.copy_from_slice(body);
            Ok(out)
        }
        Some((&other, _)) => Err(CodecError::UnsupportedVersion(other)),
        None => Err(CodecError::Malformed("empty value".into())),
    }
}

/// The device record holds secret key bytes: the encoding is zeroized when dropped.
pub(crate) fn encode_device(d: &DeviceRecord) -> Zeroizing<Vec<u8>> {
    let secret = d.keys.to_bytes();
    Zeroizing::new(encode(&DeviceV1 {
        server_addr: &d.server_addr,
        server_fingerprint: d.server_fingerprint,
        device_name: &d.device_name,
        secret: &secret[..],
    }))
}

pub(crate) fn decode_device(bytes: &[u8]) -> Result<DeviceRecord, CodecError> {
    let v: DeviceOwnedV1 = decode(bytes)?;
    let secret = Zeroizing::new(v.secret);
    let mut key_bytes = Zeroizing::new([0u8; 64]);
    if secret.len() != key_bytes.len() {
        return Err(CodecError::Malformed(format!(
            "device secret of {} bytes, expected 64",
            secret.len()
        )));
    }
    key_bytes.copy_from_slice(&secret);
    Ok(DeviceRecord {
        server_addr: v.server_addr,
        server_fingerprint: v.server_fingerprint,
        device_name: v.device_name,
        keys: DeviceSecretKeys::from_bytes(&key_bytes),
    })
}

pub(crate) fn encode_pending(p: &PendingUpload) -> Vec<u8> {
    encode(&PendingV1 {
        version: p.version.0,
        parent: p.parent.map(|v| v.0),
        state: p.state.as_ref().map(state_to_v1),
        started_at: p.started_at,
    })
}

pub(crate) fn decode_pending(bytes: &[u8]) -> Result<PendingUpload, CodecError> {
    let v: PendingV1 = decode(bytes)?;
    Ok(PendingUpload {
        version: VersionId(v.version),
        parent: v.parent.map(VersionId),
        state: v.state.map(state_from_v1).transpose()?,
        started_at: v.started_at,
    })
}

pub(crate) fn encode_ack(at: u64) -> Vec<u8> {
    encode(&AckV1 { at })
}

pub(crate) fn decode_ack(bytes: &[u8]) -> Result<u64, CodecError> {
    decode::<AckV1>(bytes).map(|a| a.at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_state() -> impl Strategy<Value = EntryState> {
        (
            0u8..3,
            any::<u64>(),
            any::<u32>(),
            any::<i64>(),
            any::<[u8; 32]>(),
        )
            .prop_map(|(kind, size, mode, mtime_ns, hash)| EntryState {
                kind: match kind {
                    0 => EntryKind::File,
                    1 => EntryKind::Dir,
                    _ => EntryKind::Symlink,
                },
                size,
                mode,
                mtime_ns,
                content_hash: ContentHash(hash),
            })
    }

    fn arb_chunks() -> impl Strategy<Value = Vec<ChunkRef>> {
        proptest::collection::vec(
            (any::<[u8; 32]>(), any::<u32>()).prop_map(|(id, len)| ChunkRef {
                id: ChunkId::from_bytes(id),
                len,
            }),
            0..20,
        )
    }

    proptest! {
        #[test]
        fn local_round_trips(state in arb_state(), inode: u64, racy: bool, chunks in arb_chunks()) {
            let e = LocalEntry { state, inode, chunks, racy };
            let bytes = encode_local(&e);
            prop_assert_eq!(bytes[0], VALUE_VERSION);
            prop_assert_eq!(decode_local(&bytes).unwrap(), e);
        }

        #[test]
        fn remote_round_trips(
            key: [u8; 32], version: [u8; 16], parent: Option<[u8; 16]>, seq: u64,
            state in proptest::option::of(arb_state()), chunks in arb_chunks(),
        ) {
            let e = RemoteEntry {
                entry_key: EntryKey::from_bytes(key),
                version: VersionId(version),
                parent: parent.map(VersionId),
                seq: Seq::new(seq),
                state,
                chunks,
            };
            prop_assert_eq!(decode_remote(&encode_remote(&e)).unwrap(), e);
        }

        #[test]
        fn synced_and_pending_round_trip(
            key: [u8; 32], version: [u8; 16], parent: Option<[u8; 16]>, seq: u64,
            state in arb_state(), deleted: bool, at: u64,
        ) {
            let s = SyncedEntry {
                entry_key: EntryKey::from_bytes(key),
                version: VersionId(version),
                seq: Seq::new(seq),
                state,
            };
            prop_assert_eq!(decode_synced(&encode_synced(&s)).unwrap(), s);
            let p = PendingUpload {
                version: VersionId(version),
                parent: parent.map(VersionId),
                state: (!deleted).then_some(state),
                started_at: at,
            };
            prop_assert_eq!(decode_pending(&encode_pending(&p)).unwrap(), p);
            prop_assert_eq!(decode_ack(&encode_ack(at)).unwrap(), at);
            prop_assert_eq!(decode_cursor(&encode_cursor(Seq::new(seq))).unwrap(), Seq::new(seq));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_local(&bytes);
            let _ = decode_remote(&bytes);
            let _ = decode_synced(&bytes);
            let _ = decode_pending(&bytes);
            let _ = decode_device(&bytes);
            let _ = decode_cursor(&bytes);
            let _ = decode_vault_key(&bytes);
            let _ = decode_vault_root(&bytes);
        }
    }

    #[test]
    fn byte_layout_is_stable() {
        // A directory entry: version 1, kind 1, size 0, mode 0o755 (varint), mtime 1 (zigzag 2),
        // 32 zero bytes, inode 7, racy false, no chunks.
        let e = LocalEntry {
            state: EntryState::dir(0o755, 1),
            inode: 7,
            chunks: vec![],
            racy: false,
        };
        let mut expected = vec![1, 1, 0, 0xed, 0x03, 2];
        expected.extend_from_slice(&[0; 32]);
        expected.extend_from_slice(&[7, 0, 0]);
        assert_eq!(encode_local(&e), expected);
        assert_eq!(encode_cursor(Seq::new(258)), [1, 0, 0, 0, 0, 0, 0, 1, 2]);
    }

    #[test]
    fn bad_versions_and_trailing_bytes_are_refused() {
        let mut bytes = encode_local(&LocalEntry {
            state: EntryState::dir(0o700, 0),
            inode: 1,
            chunks: vec![],
            racy: true,
        });
        bytes.push(0);
        assert!(matches!(
            decode_local(&bytes),
            Err(CodecError::Malformed(_))
        ));
        bytes.pop();
        bytes[0] = 2;
        assert_eq!(decode_local(&bytes), Err(CodecError::UnsupportedVersion(2)));
        assert!(matches!(decode_local(&[]), Err(CodecError::Malformed(_))));
        // An unknown kind byte.
        let mut bytes = encode_local(&LocalEntry {
            state: EntryState::dir(0, 0),
            inode: 0,
            chunks: vec![],
            racy: false,
        });
        bytes[1] = 9;
        assert!(matches!(
            decode_local(&bytes),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn device_round_trips_without_leaking() {
        let keys = DeviceSecretKeys::generate().unwrap();
        let id = keys.device_id();
        let secret = keys.to_bytes();
        let d = DeviceRecord {
            server_addr: "127.0.0.1:4433".into(),
            server_fingerprint: [9; 32],
            device_name: "laptop".into(),
            keys,
        };
        let bytes = encode_device(&d);
        let back = decode_device(&bytes).unwrap();
        assert_eq!(back.server_addr, d.server_addr);
        assert_eq!(back.server_fingerprint, d.server_fingerprint);
        assert_eq!(back.device_name, d.device_name);
        assert_eq!(back.keys.device_id(), id);
        assert_eq!(*back.keys.to_bytes(), *secret);
        let shown = format!("{back:?}");
        assert!(!shown.contains(&format!("{:?}", &secret[..8])), "{shown}");
    }
}
