//! Commit with per-entry compare-and-swap, Pull and History over the wire.

use dooz_protocol::{
    ChunkId, Commit, CommitEntry, CommitResult, EntryKey, Epoch, ErrorCode, Extensions, History,
    Pull, PutChunk, Response, Seq, VaultId, VersionId,
};

use crate::harness::{Client, TestServer, device_id, expect_error, vault, within};

pub(crate) fn entry(
    entry: u8,
    parent: Option<u8>,
    version: u8,
    chunks: Vec<ChunkId>,
) -> CommitEntry {
    CommitEntry {
        entry: EntryKey::from_bytes([entry; 32]),
        parent: parent.map(|p| VersionId::from_bytes([p; 16])),
        version: VersionId::from_bytes([version; 16]),
        record: vec![version; 40],
        chunks,
        epoch: Epoch::ZERO,
    }
}

pub(crate) async fn commit(client: &Client, vault: VaultId, entries: Vec<CommitEntry>) -> Response {
    client
        .request(Commit {
            vault,
            entries,
            ext: Extensions::new(),
        })
        .await
}

pub(crate) async fn committed(
    client: &Client,
    vault: VaultId,
    entries: Vec<CommitEntry>,
) -> Vec<CommitResult> {
    match commit(client, vault, entries).await {
        Response::Committed(c) => c.results,
        other => panic!("unexpected answer to Commit: {other:?}"),
    }
}

#[tokio::test]
async fn commit_compares_and_swaps_each_entry() {
    within(async {
        let server = TestServer::start().await;
        let device = server.enrolled_device().await;
        let client = server.connect(&device).await;
        let v = vault(2);
        client.create_vault(v).await;

        let body = b"a sealed chunk".to_vec();
        let chunk = ChunkId::from_bytes([5; 32]);
        let stored = client
            .put_chunk(
                PutChunk {
                    vault: v,
                    chunk,
                    len: u32::try_from(body.len()).unwrap(),
                    blake3: *blake3::hash(&body).as_bytes(),
                    ext: Extensions::new(),
                },
                &body,
            )
            .await;
        assert!(matches!(stored, Response::ChunkStored(_)), "{stored:?}");

        // Two new entries apply with gap-free seqs.
        let results = committed(
            &client,
            v,
            vec![entry(1, None, 10, vec![chunk]), entry(2, None, 20, vec![])],
        )
        .await;
        assert_eq!(
            results,
            vec![
                CommitResult::Applied {
                    entry: EntryKey::from_bytes([1; 32]),
                    seq: Seq::new(1),
                    version: VersionId::from_bytes([10; 16]),
                },
                CommitResult::Applied {
                    entry: EntryKey::from_bytes([2; 32]),
                    seq: Seq::new(2),
                    version: VersionId::from_bytes([20; 16]),
                },
            ]
        );

        // A stale parent conflicts and reports the head; a fresh one applies.
        let results = committed(
            &client,
            v,
            vec![entry(1, None, 11, vec![]), entry(2, Some(20), 21, vec![])],
        )
        .await;
        assert_eq!(
            results,
            vec![
                CommitResult::Conflict {
                    entry: EntryKey::from_bytes([1; 32]),
                    head: Some(VersionId::from_bytes([10; 16])),
                },
                CommitResult::Applied {
                    entry: EntryKey::from_bytes([2; 32]),
                    seq: Seq::new(3),
                    version: VersionId::from_bytes([21; 16]),
                },
            ]
        );

        // A chunk the vault lacks fails the whole commit.
        let err = expect_error(
            commit(
                &client,
                v,
                vec![entry(3, None, 30, vec![ChunkId::from_bytes([6; 32])])],
            )
            .await,
        );
        assert_eq!(err.code, ErrorCode::NotFound);

        // Pull returns the log in order, History an entry's versions newest first.
        match client
            .request(Pull {
                vault: v,
                since: Seq::new(1),
                limit: 0,
                ext: Extensions::new(),
            })
            .await
        {
            Response::Changes(changes) => {
                let seqs: Vec<u64> = changes.changes.iter().map(|c| c.seq.get()).collect();
                assert_eq!(seqs, vec![2, 3]);
                assert_eq!(changes.next, Seq::new(3));
                assert!(!changes.more);
                assert!(
                    changes
                        .changes
                        .iter()
                        .all(|c| c.device == device_id(&device))
                );
            }
            other => panic!("unexpected answer to Pull: {other:?}"),
        }
        match client
            .request(History {
                vault: v,
                entry: EntryKey::from_bytes([2; 32]),
                limit: 0,
                before: None,
                ext: Extensions::new(),
            })
            .await
        {
            Response::HistoryPage(page) => {
                let versions: Vec<VersionId> = page.versions.iter().map(|c| c.version).collect();
                assert_eq!(
                    versions,
                    vec![
                        VersionId::from_bytes([21; 16]),
                        VersionId::from_bytes([20; 16])
                    ]
                );
            }
            other => panic!("unexpected answer to History: {other:?}"),
        }
        server.server.shutdown().await;
    })
    .await;
}

/// `PutChunk` stores blobs unsynced; the first commit naming a chunk syncs its blob. A blob lost
/// before that (here: deleted, as a crash could) is found at the commit: the commit fails with
/// `NotFound`, `Have` asks for the chunk again, and after a new upload the commit applies.
#[tokio::test]
async fn a_chunk_blob_lost_before_its_commit_is_asked_for_again() {
    within(async {
        let server = TestServer::start_unpacked().await;
        let device = server.enrolled_device().await;
        let client = server.connect(&device).await;
        let v = vault(9);
        client.create_vault(v).await;

        let body = b"a sealed chunk that will be lost".to_vec();
        let chunk = ChunkId::from_bytes([9; 32]);
        let put = PutChunk {
            vault: v,
            chunk,
            len: u32::try_from(body.len()).unwrap(),
            blake3: *blake3::hash(&body).as_bytes(),
            ext: Extensions::new(),
        };
        let stored = client.put_chunk(put.clone(), &body).await;
        assert!(matches!(stored, Response::ChunkStored(_)), "{stored:?}");

        let blobs = server.server.blobs();
        let listed = blobs.list(None).await.unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        blobs.delete(&listed[0].key).await.unwrap();

        let e = expect_error(commit(&client, v, vec![entry(1, None, 10, vec![chunk])]).await);
        assert_eq!(e.code, ErrorCode::NotFound, "{e:?}");
        let have = client
            .request(dooz_protocol::Have {
                vault: v,
                chunks: vec![chunk],
                ext: Extensions::new(),
            })
            .await;
        assert!(
            matches!(&have, Response::Missing(m) if m.chunks == vec![chunk]),
            "{have:?}"
        );

        let stored = client.put_chunk(put, &body).await;
        assert!(matches!(stored, Response::ChunkStored(_)), "{stored:?}");
        let results = committed(&client, v, vec![entry(1, None, 10, vec![chunk])]).await;
        assert!(
            matches!(results.as_slice(), [CommitResult::Applied { .. }]),
            "{results:?}"
        );
        // Committed: the blob is read back.
        let (_, got) = client
            .get_chunk(dooz_protocol::GetChunk {
                vault: v,
                chunk,
                ext: Extensions::new(),
            })
            .await
            .unwrap();
        assert_eq!(got.bytes.as_ref(), body.as_slice());
    })
    .await;
}
