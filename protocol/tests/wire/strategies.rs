//! proptest strategies for every message, and one fixed sample of each type.

use dooz_protocol::{
    Ack, Change, Changed, Changes, ChunkData, ChunkId, ChunkStored, Commit, CommitEntry,
    CommitResult, Committed, CreateVault, DeviceId, EntryKey, EnvelopeInfo, Envelopes, Epoch,
    ErrorCode, ErrorResponse, Extension, Extensions, GetChunk, GetEnvelopes, Have, Hello, HelloOk,
    History, HistoryPage, ListVaults, Message, Missing, PROTOCOL_VERSION, PairingAwaitReply,
    PairingOpen, PairingPayload, PairingPost, PairingReply, PairingTake, Pull, PutChunk,
    PutEnvelope, Request, Resource, Response, Seq, SlotId, Subscribe, Subscribed, VaultCreated,
    VaultId, VaultInfo, Vaults, VersionId,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::Union;

pub(crate) fn vault() -> impl Strategy<Value = VaultId> {
    any::<[u8; 16]>().prop_map(VaultId::from_bytes)
}
pub(crate) fn chunk() -> impl Strategy<Value = ChunkId> {
    any::<[u8; 32]>().prop_map(ChunkId::from_bytes)
}
pub(crate) fn entry() -> impl Strategy<Value = EntryKey> {
    any::<[u8; 32]>().prop_map(EntryKey::from_bytes)
}
pub(crate) fn version() -> impl Strategy<Value = VersionId> {
    any::<[u8; 16]>().prop_map(VersionId::from_bytes)
}
pub(crate) fn device() -> impl Strategy<Value = DeviceId> {
    any::<[u8; 32]>().prop_map(DeviceId::from_bytes)
}
pub(crate) fn slot() -> impl Strategy<Value = SlotId> {
    any::<[u8; 32]>().prop_map(SlotId::from_bytes)
}
pub(crate) fn epoch() -> impl Strategy<Value = Epoch> {
    any::<u32>().prop_map(Epoch::new)
}
pub(crate) fn seq() -> impl Strategy<Value = Seq> {
    any::<u64>().prop_map(Seq::new)
}
pub(crate) fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}
/// Short text, including multi-byte characters.
pub(crate) fn text() -> impl Strategy<Value = String> {
    "\\PC{0,12}"
}
pub(crate) fn chunks() -> impl Strategy<Value = Vec<ChunkId>> {
    vec(chunk(), 0..6)
}

/// Extensions a peer that knows none of them accepts: non-critical ones.
pub(crate) fn ext() -> impl Strategy<Value = Extensions> {
    vec((any::<u32>(), bytes(8)), 0..3).prop_map(|v| {
        v.into_iter()
            .map(|(tag, value)| Extension::optional(tag, value))
            .collect::<Vec<_>>()
            .into()
    })
}

pub(crate) fn resource() -> impl Strategy<Value = Resource> {
    prop_oneof![
        Just(Resource::StorageBytes),
        Just(Resource::EgressBytes),
        Just(Resource::IngressBytes),
        Just(Resource::Devices),
        Just(Resource::Vaults),
        Just(Resource::Requests),
        Just(Resource::Unknown),
    ]
}

/// An `ErrorCode::Unknown`, made the only way there is: by decoding a code this build lacks.
fn unknown_code() -> impl Strategy<Value = ErrorCode> {
    (13u16..).prop_map(|code| {
        let mut wire = postcard::to_allocvec(&code).unwrap();
        wire.push(0); // empty detail
        postcard::from_bytes::<ErrorCode>(&wire).unwrap()
    })
}

pub(crate) fn error_code() -> impl Strategy<Value = ErrorCode> {
    Union::new(vec![
        Just(ErrorCode::Unauthenticated).boxed(),
        Just(ErrorCode::Revoked).boxed(),
        Just(ErrorCode::NotFound).boxed(),
        proptest::option::of(version())
            .prop_map(|head| ErrorCode::Conflict { head })
            .boxed(),
        (resource(), any::<u64>(), any::<u64>())
            .prop_map(|(resource, limit, used)| ErrorCode::QuotaExceeded {
                resource,
                limit,
                used,
            })
            .boxed(),
        Just(ErrorCode::SubscriptionInactive).boxed(),
        any::<u64>()
            .prop_map(|retry_after_ms| ErrorCode::RateLimited { retry_after_ms })
            .boxed(),
        Just(ErrorCode::TooLarge).boxed(),
        Just(ErrorCode::BadRequest).boxed(),
        Just(ErrorCode::Unsupported).boxed(),
        Just(ErrorCode::Internal).boxed(),
        Just(ErrorCode::AlreadyExists).boxed(),
        unknown_code().boxed(),
    ])
}

fn commit_entry() -> impl Strategy<Value = CommitEntry> {
    (
        entry(),
        proptest::option::of(version()),
        version(),
        bytes(64),
        chunks(),
        epoch(),
    )
        .prop_map(
            |(entry, parent, version, record, chunks, epoch)| CommitEntry {
                entry,
                parent,
                version,
                record,
                chunks,
                epoch,
            },
        )
}

fn change() -> impl Strategy<Value = Change> {
    (
        seq(),
        entry(),
        version(),
        proptest::option::of(version()),
        bytes(64),
        chunks(),
        epoch(),
        device(),
    )
        .prop_map(
            |(seq, entry, version, parent, record, chunks, epoch, device)| Change {
                seq,
                entry,
                version,
                parent,
                record,
                chunks,
                epoch,
                device,
            },
        )
}

fn commit_result() -> impl Strategy<Value = CommitResult> {
    prop_oneof![
        (entry(), seq(), version()).prop_map(|(entry, seq, version)| CommitResult::Applied {
            entry,
            seq,
            version
        }),
        (entry(), proptest::option::of(version()))
            .prop_map(|(entry, head)| CommitResult::Conflict { entry, head }),
    ]
}

/// One strategy per request type, named by the type.
pub(crate) fn requests() -> Vec<(&'static str, BoxedStrategy<Request>)> {
    vec![
        (
            "Hello",
            (any::<u16>(), text(), text(), ext())
                .prop_map(|(protocol_version, client_name, client_version, ext)| {
                    Hello {
                        protocol_version,
                        client_name,
                        client_version,
                        ext,
                    }
                    .into()
                })
                .boxed(),
        ),
        (
            "CreateVault",
            (vault(), ext())
                .prop_map(|(vault, ext)| CreateVault { vault, ext }.into())
                .boxed(),
        ),
        (
            "ListVaults",
            ext().prop_map(|ext| ListVaults { ext }.into()).boxed(),
        ),
        (
            "PutEnvelope",
            (vault(), epoch(), device(), bytes(200), ext())
                .prop_map(|(vault, epoch, recipient, envelope, ext)| {
                    PutEnvelope {
                        vault,
                        epoch,
                        recipient,
                        envelope,
                        ext,
                    }
                    .into()
                })
                .boxed(),
        ),
        (
            "GetEnvelopes",
            (vault(), ext())
                .prop_map(|(vault, ext)| GetEnvelopes { vault, ext }.into())
                .boxed(),
        ),
        (
            "Have",
            (vault(), vec(chunk(), 0..20), ext())
                .prop_map(|(vault, chunks, ext)| Have { vault, chunks, ext }.into())
                .boxed(),
        ),
        (
            "PutChunk",
            (
                vault(),
                chunk(),
                0..=dooz_protocol::limits::MAX_CHUNK_LEN,
                any::<[u8; 32]>(),
                ext(),
            )
                .prop_map(|(vault, chunk, len, blake3, ext)| {
                    PutChunk {
                        vault,
                        chunk,
                        len,
                        blake3,
                        ext,
                    }
                    .into()
                })
                .boxed(),
        ),
        (
            "GetChunk",
            (vault(), chunk(), ext())
                .prop_map(|(vault, chunk, ext)| GetChunk { vault, chunk, ext }.into())
                .boxed(),
        ),
        (
            "Commit",
            (vault(), vec(commit_entry(), 0..4), ext())
                .prop_map(|(vault, entries, ext)| {
                    Commit {
                        vault,
                        entries,
                        ext,
                    }
                    .into()
                })
                .boxed(),
        ),
        (
            "Pull",
            (vault(), seq(), any::<u32>(), ext())
                .prop_map(|(vault, since, limit, ext)| {
                    Pull {
                        vault,
                        since,
                        limit,
                        ext,
                    }
                    .into()
                })
                .boxed(),
        ),
        (
            "History",
            (
                vault(),
                entry(),
                any::<u32>(),
                proptest::option::of(seq()),
                ext(),
            )
                .prop_map(|(vault, entry, limit, before, ext)| {
                    History {
                        vault,
                        entry,
                        limit,
                        before,
                        ext,
                    }
                    .into()
                })
                .boxed(),
        ),
        (
            "Subscribe",
            (vec(vault(), 0..6), ext())
                .prop_map(|(vaults, ext)| Subscribe { vaults, ext }.into())
                .boxed(),
        ),
        (
            "PairingOpen",
            (slot(), any::<u32>(), ext())
                .prop_map(|(slot, expires_in_secs, ext)| {
                    PairingOpen {
                        slot,
                        expires_in_secs,
                        ext,
                    }
                    .into()
                })
                .boxed(),
        ),
        (
            "PairingPost",
            (slot(), bytes(100), ext())
                .prop_map(|(slot, payload, ext)| PairingPost { slot, payload, ext }.into())
                .boxed(),
        ),
        (
            "PairingTake",
            (slot(), ext())
                .prop_map(|(slot, ext)| PairingTake { slot, ext }.into())
                .boxed(),
        ),
        (
            "PairingReply",
            (slot(), bytes(100), ext())
                .prop_map(|(slot, payload, ext)| PairingReply { slot, payload, ext }.into())
                .boxed(),
        ),
        (
            "PairingAwaitReply",
            (slot(), ext())
                .prop_map(|(slot, ext)| PairingAwaitReply { slot, ext }.into())
                .boxed(),
        ),
    ]
}

/// One strategy per response type, named by the type.
pub(crate) fn responses() -> Vec<(&'static str, BoxedStrategy<Response>)> {
    vec![
        (
            "Error",
            (error_code(), text(), ext())
                .prop_map(|(code, message, ext)| {
                    let mut e = ErrorResponse::new(code, message);
                    e.ext = ext;
                    e.into()
                })
                .boxed(),
        ),
        (
            "HelloOk",
            (any::<u16>(), text(), device(), text(), text(), ext())
                .prop_map(
                    |(protocol_version, server_version, device, tenant, account, ext)| {
                        HelloOk {
                            protocol_version,
                            server_version,
                            device,
                            tenant,
                            account,
                            ext,
                        }
                        .into()
                    },
                )
                .boxed(),
        ),
        (
            "VaultCreated",
            (vault(), ext())
                .prop_map(|(vault, ext)| VaultCreated { vault, ext }.into())
                .boxed(),
        ),
        (
            "Vaults",
            (vec((vault(), seq(), epoch()), 0..5), ext())
                .prop_map(|(v, ext)| {
                    let vaults = v
                        .into_iter()
                        .map(|(vault, head_seq, latest_epoch)| VaultInfo {
                            vault,
                            head_seq,
                            latest_epoch,
                        })
                        .collect();
                    Vaults { vaults, ext }.into()
                })
                .boxed(),
        ),
        ("Ok", ext().prop_map(|ext| Ack { ext }.into()).boxed()),
        (
            "Envelopes",
            (vec((epoch(), device(), device(), bytes(100)), 0..4), ext())
                .prop_map(|(v, ext)| {
                    let envelopes = v
                        .into_iter()
                        .map(|(epoch, recipient, sender, envelope)| EnvelopeInfo {
                            epoch,
                            recipient,
                            sender,
                            envelope,
                        })
                        .collect();
                    Envelopes { envelopes, ext }.into()
                })
                .boxed(),
        ),
        (
            "Missing",
            (vec(chunk(), 0..20), ext())
                .prop_map(|(chunks, ext)| Missing { chunks, ext }.into())
                .boxed(),
        ),
        (
            "ChunkStored",
            (chunk(), ext())
                .prop_map(|(chunk, ext)| ChunkStored { chunk, ext }.into())
                .boxed(),
        ),
        (
            "ChunkData",
            (
                0..=dooz_protocol::limits::MAX_CHUNK_LEN,
                any::<[u8; 32]>(),
                ext(),
            )
                .prop_map(|(len, blake3, ext)| ChunkData { len, blake3, ext }.into())
                .boxed(),
        ),
        (
            "Committed",
            (vec(commit_result(), 0..6), ext())
                .prop_map(|(results, ext)| Committed { results, ext }.into())
                .boxed(),
        ),
        (
            "Changes",
            (vec(change(), 0..4), seq(), any::<bool>(), ext())
                .prop_map(|(changes, next, more, ext)| {
                    Changes {
                        changes,
                        next,
                        more,
                        ext,
                    }
                    .into()
                })
                .boxed(),
        ),
        (
            "HistoryPage",
            (vec(change(), 0..4), proptest::option::of(seq()), ext())
                .prop_map(|(versions, next, ext)| {
                    HistoryPage {
                        versions,
                        next,
                        ext,
                    }
                    .into()
                })
                .boxed(),
        ),
        (
            "Subscribed",
            ext().prop_map(|ext| Subscribed { ext }.into()).boxed(),
        ),
        (
            "Changed",
            (vault(), seq(), ext())
                .prop_map(|(vault, seq, ext)| Changed { vault, seq, ext }.into())
                .boxed(),
        ),
        (
            "PairingPayload",
            (bytes(100), ext())
                .prop_map(|(payload, ext)| PairingPayload { payload, ext }.into())
                .boxed(),
        ),
    ]
}

/// Any message of any type.
pub(crate) fn message() -> impl Strategy<Value = Message> {
    let mut all: Vec<BoxedStrategy<Message>> = Vec::new();
    for (_, s) in requests() {
        all.push(s.prop_map(Message::Request).boxed());
    }
    for (_, s) in responses() {
        all.push(s.prop_map(Message::Response).boxed());
    }
    Union::new(all)
}

/// One fixed message of every type, with non-trivial content (and an extension on some).
pub(crate) fn samples() -> Vec<Message> {
    let vault = VaultId::from_bytes([0x11; 16]);
    let chunk = ChunkId::from_bytes([0x22; 32]);
    let entry = EntryKey::from_bytes([0x33; 32]);
    let v1 = VersionId::from_bytes([0x44; 16]);
    let v2 = VersionId::from_bytes([0x55; 16]);
    let dev = DeviceId::from_bytes([0x66; 32]);
    let slot = SlotId::from_bytes([0x77; 32]);
    let none = Extensions::new;
    let change = Change {
        seq: Seq::new(300),
        entry,
        version: v2,
        parent: Some(v1),
        record: vec![0xaa; 150],
        chunks: vec![chunk, chunk],
        epoch: Epoch::new(2),
        device: dev,
    };
    let requests: Vec<Request> = vec![
        Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: "dooz-cli".into(),
            client_version: "0.1.0 ✓".into(),
            ext: none().with(Extension::optional(0x1_0000, b"hint".to_vec())),
        }
        .into(),
        CreateVault { vault, ext: none() }.into(),
        ListVaults { ext: none() }.into(),
        PutEnvelope {
            vault,
            epoch: Epoch::new(3),
            recipient: dev,
            envelope: vec![9; 120],
            ext: none(),
        }
        .into(),
        GetEnvelopes { vault, ext: none() }.into(),
        Have {
            vault,
            chunks: vec![chunk; 5],
            ext: none(),
        }
        .into(),
        PutChunk {
            vault,
            chunk,
            len: 65_536,
            blake3: [0xbb; 32],
            ext: none(),
        }
        .into(),
        GetChunk {
            vault,
            chunk,
            ext: none(),
        }
        .into(),
        Commit {
            vault,
            entries: vec![
                CommitEntry {
                    entry,
                    parent: None,
                    version: v1,
                    record: vec![1; 200],
                    chunks: vec![chunk],
                    epoch: Epoch::new(1),
                },
                CommitEntry {
                    entry,
                    parent: Some(v1),
                    version: v2,
                    record: Vec::new(),
                    chunks: Vec::new(),
                    epoch: Epoch::new(1),
                },
            ],
            ext: none(),
        }
        .into(),
        Pull {
            vault,
            since: Seq::new(1_000_000),
            limit: 500,
            ext: none(),
        }
        .into(),
        History {
            vault,
            entry,
            limit: 10,
            before: Some(Seq::new(77)),
            ext: none(),
        }
        .into(),
        Subscribe {
            vaults: vec![vault, VaultId::from_bytes([0x12; 16])],
            ext: none(),
        }
        .into(),
        PairingOpen {
            slot,
            expires_in_secs: 900,
            ext: none(),
        }
        .into(),
        PairingPost {
            slot,
            payload: vec![3; 300],
            ext: none(),
        }
        .into(),
        PairingTake { slot, ext: none() }.into(),
        PairingReply {
            slot,
            payload: vec![4; 40],
            ext: none(),
        }
        .into(),
        PairingAwaitReply { slot, ext: none() }.into(),
    ];
    let responses: Vec<Response> = vec![
        ErrorResponse::new(
            ErrorCode::Conflict { head: Some(v1) },
            "entry changed meanwhile",
        )
        .into(),
        ErrorResponse::new(
            ErrorCode::QuotaExceeded {
                resource: Resource::StorageBytes,
                limit: 1 << 30,
                used: 1 << 30,
            },
            "storage quota reached",
        )
        .into(),
        HelloOk {
            protocol_version: 1,
            server_version: "0.1.0".into(),
            device: dev,
            tenant: "t_123".into(),
            account: "a_456".into(),
            ext: none(),
        }
        .into(),
        VaultCreated { vault, ext: none() }.into(),
        Vaults {
            vaults: vec![VaultInfo {
                vault,
                head_seq: Seq::new(300),
                latest_epoch: Epoch::new(2),
            }],
            ext: none(),
        }
        .into(),
        Ack { ext: none() }.into(),
        Envelopes {
            envelopes: vec![EnvelopeInfo {
                epoch: Epoch::new(2),
                recipient: dev,
                sender: DeviceId::from_bytes([0x67; 32]),
                envelope: vec![5; 120],
            }],
            ext: none(),
        }
        .into(),
        Missing {
            chunks: vec![chunk],
            ext: none(),
        }
        .into(),
        ChunkStored { chunk, ext: none() }.into(),
        ChunkData {
            len: 1_000_000,
            blake3: [0xcc; 32],
            ext: none(),
        }
        .into(),
        Committed {
            results: vec![
                CommitResult::Applied {
                    entry,
                    seq: Seq::new(301),
                    version: v1,
                },
                CommitResult::Conflict {
                    entry,
                    head: Some(v2),
                },
            ],
            ext: none(),
        }
        .into(),
        Changes {
            changes: vec![change.clone()],
            next: Seq::new(300),
            more: true,
            ext: none(),
        }
        .into(),
        HistoryPage {
            versions: vec![change],
            next: None,
            ext: none(),
        }
        .into(),
        Subscribed { ext: none() }.into(),
        Changed {
            vault,
            seq: Seq::new(302),
            ext: none(),
        }
        .into(),
        PairingPayload {
            payload: vec![6; 500],
            ext: none(),
        }
        .into(),
    ];
    requests
        .into_iter()
        .map(Message::Request)
        .chain(responses.into_iter().map(Message::Response))
        .collect()
}
