//! Packing: small chunks are written together as packs, recorded only once a pack is
//! completely written, and read back by range.

use std::sync::Arc;

use dooz_protocol::{
    ChunkId, CommitResult, ErrorCode, Extensions, GetChunk, Have, PutChunk, Resource, Response,
    VaultId,
};
use dooz_server::policy::{Access, AccountPolicy, Limit, Limits};
use dooz_server::service::read_pack_index;
use dooz_server::{ChunkLocation, ChunkState};
use dooz_storage::{BlobStore, FaultInjecting, Op};

use crate::commit::{commit, entry};
use crate::harness::{Client, TestServer, expect_error, vault, within};
use crate::policy::TestPolicy;

fn body(n: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32 ^ n.wrapping_mul(31)) as u8)
        .collect()
}

fn chunk_id(n: u32) -> ChunkId {
    ChunkId::from_bytes(*blake3::hash(&n.to_be_bytes()).as_bytes())
}

async fn put(client: &Client, v: VaultId, n: u32, body: &[u8]) -> Response {
    client
        .put_chunk(
            PutChunk {
                vault: v,
                chunk: chunk_id(n),
                len: u32::try_from(body.len()).unwrap(),
                blake3: *blake3::hash(body).as_bytes(),
                ext: Extensions::new(),
            },
            body,
        )
        .await
}

fn stored(response: Response) {
    assert!(matches!(response, Response::ChunkStored(_)), "{response:?}");
}

async fn missing(client: &Client, v: VaultId, chunks: &[ChunkId]) -> Vec<ChunkId> {
    match client
        .request(Have {
            vault: v,
            chunks: chunks.to_vec(),
            ext: Extensions::new(),
        })
        .await
    {
        Response::Missing(m) => m.chunks,
        other => panic!("unexpected answer to Have: {other:?}"),
    }
}

fn applied(response: Response) {
    match response {
        Response::Committed(c) => assert!(
            c.results
                .iter()
                .all(|r| matches!(r, CommitResult::Applied { .. })),
            "{c:?}"
        ),
        other => panic!("unexpected answer to Commit: {other:?}"),
    }
}

#[tokio::test]
async fn small_chunks_share_one_pack_and_read_back_by_range() {
    within(async {
        let server = TestServer::start().await;
        let device = server.enrolled_device().await;
        let client = server.connect(&device).await;
        let v = vault(1);
        client.create_vault(v).await;

        // 40 small chunks and one past the 1 MiB packing threshold.
        let bodies: Vec<Vec<u8>> = (0..40u32)
            .map(|n| body(n, 1000 + 517 * n as usize))
            .chain([body(99, 1_500_000)])
            .collect();
        let ids: Vec<ChunkId> = (0..40u32).chain([99]).map(chunk_id).collect();
        for (id, b) in ids.iter().zip(&bodies) {
            let n = (0..40u32)
                .chain([99])
                .find(|&n| chunk_id(n) == *id)
                .unwrap();
            stored(put(&client, v, n, b).await);
        }
        // Held in the open pack, so no device is asked for them again.
        assert_eq!(missing(&client, v, &ids).await, vec![]);

        applied(commit(&client, v, vec![entry(1, None, 1, ids.clone())]).await);

        let blobs = server.server.blobs().list(None).await.unwrap();
        let packs: Vec<_> = blobs
            .iter()
            .filter(|b| b.key.as_str().contains(&format!("/{}/packs/", v.to_hex())))
            .collect();
        let own: Vec<_> = blobs
            .iter()
            .filter(|b| b.key.as_str().contains(&format!("/{}/chunks/", v.to_hex())))
            .collect();
        assert_eq!((packs.len(), own.len()), (1, 1), "{blobs:?}");
        assert!(own[0].key.as_str().ends_with(&chunk_id(99).to_hex()));

        // The pack carries its own index, which agrees with the store.
        let pack = server.server.blobs().get(&packs[0].key).await.unwrap();
        let index = read_pack_index(&pack).unwrap();
        assert_eq!(index.len(), 40);
        let records = server.server.store().chunks(v, &ids).await.unwrap();
        for (i, record) in records.iter().enumerate() {
            let record = record.as_ref().unwrap();
            assert!(matches!(record.state, ChunkState::Committed { .. }));
            if i < 40 {
                let packed = index.iter().find(|p| p.chunk == ids[i]).unwrap();
                assert!(matches!(
                    record.location,
                    ChunkLocation::Packed { offset, .. } if offset == packed.offset
                ));
                assert_eq!(packed.blake3, *blake3::hash(&bodies[i]).as_bytes());
            } else {
                assert_eq!(record.location, ChunkLocation::Blob);
            }
        }

        // Every chunk reads back whole.
        for (id, b) in ids.iter().zip(&bodies) {
            let (data, got) = client
                .get_chunk(GetChunk {
                    vault: v,
                    chunk: *id,
                    ext: Extensions::new(),
                })
                .await
                .unwrap();
            assert_eq!(data.blake3, *blake3::hash(b).as_bytes());
            assert_eq!(&got.bytes[..], &b[..]);
        }
        server.server.shutdown().await;
    })
    .await;
}

/// A pack that could not be written leaves no record: the commit naming its chunks fails with
/// `NotFound`, `Have` asks for them again, and after a new upload the commit applies.
#[tokio::test]
async fn a_pack_that_could_not_be_written_is_asked_for_again() {
    within(async {
        let mut faults = None;
        let server = TestServer::start_with(
            |_| {},
            |mut parts| {
                let store = Arc::new(FaultInjecting::new(Arc::clone(&parts.blobs), 7));
                store.set_fail_rate(Some(Op::Put), 1.0).unwrap();
                faults = Some(Arc::clone(&store));
                parts.blobs = store;
                parts
            },
        )
        .await;
        let faults = faults.unwrap();
        let device = server.enrolled_device().await;
        let client = server.connect(&device).await;
        let v = vault(2);
        client.create_vault(v).await;

        let ids: Vec<ChunkId> = (0..3).map(chunk_id).collect();
        for n in 0..3 {
            stored(put(&client, v, n, &body(n, 5000)).await);
        }
        let e = expect_error(commit(&client, v, vec![entry(1, None, 1, ids.clone())]).await);
        assert_eq!(e.code, ErrorCode::NotFound, "{e:?}");
        assert_eq!(missing(&client, v, &ids).await, ids);
        assert!(faults.injected_for(Op::Put) >= 1);
        assert_eq!(
            server
                .server
                .store()
                .account_usage(server.account.id)
                .await
                .unwrap()
                .stored_bytes,
            0
        );

        // The backend is back: upload again and commit.
        faults.set_fail_rate(Some(Op::Put), 0.0).unwrap();
        for n in 0..3 {
            stored(put(&client, v, n, &body(n, 5000)).await);
        }
        applied(commit(&client, v, vec![entry(1, None, 1, ids.clone())]).await);
        for (n, id) in ids.iter().enumerate() {
            let (_, got) = client
                .get_chunk(GetChunk {
                    vault: v,
                    chunk: *id,
                    ext: Extensions::new(),
                })
                .await
                .unwrap();
            assert_eq!(&got.bytes[..], &body(n as u32, 5000)[..]);
        }
        server.server.shutdown().await;
    })
    .await;
}

/// Bytes waiting in an open pack count against the storage limit, and a chunk waiting there
/// costs nothing when uploaded again.
#[tokio::test]
async fn quota_counts_chunks_in_packs_not_written_yet() {
    within(async {
        let policy = TestPolicy::new(AccountPolicy {
            access: Access::Full,
            limits: Limits {
                storage_bytes: Some(Limit::hard(1000)),
                ..Limits::default()
            },
        });
        let server = TestServer::start_with_policy(Arc::new(policy)).await;
        let device = server.enrolled_device().await;
        let client = server.connect(&device).await;
        let v = vault(3);
        client.create_vault(v).await;

        stored(put(&client, v, 1, &body(1, 600)).await);
        let e = expect_error(put(&client, v, 2, &body(2, 600)).await);
        assert_eq!(
            e.code,
            ErrorCode::QuotaExceeded {
                resource: Resource::StorageBytes,
                limit: 1000,
                used: 600
            }
        );
        // The same chunk again: already held, costs nothing.
        stored(put(&client, v, 1, &body(1, 600)).await);
        applied(commit(&client, v, vec![entry(1, None, 1, vec![chunk_id(1)])]).await);
        let usage = server
            .server
            .store()
            .account_usage(server.account.id)
            .await
            .unwrap();
        assert_eq!(usage.stored_bytes, 600);
        server.server.shutdown().await;
    })
    .await;
}

/// A graceful shutdown writes the packs still open, so their chunks are recorded.
#[tokio::test]
async fn shutdown_writes_open_packs() {
    within(async {
        let server = TestServer::start().await;
        let device = server.enrolled_device().await;
        let client = server.connect(&device).await;
        let v = vault(4);
        client.create_vault(v).await;
        stored(put(&client, v, 7, &body(7, 3000)).await);

        let store = Arc::clone(server.server.store());
        server.server.shutdown().await;
        let record = store.chunk(v, chunk_id(7)).await.unwrap().unwrap();
        assert!(matches!(record.state, ChunkState::Pending { .. }));
        assert!(matches!(record.location, ChunkLocation::Packed { .. }));
    })
    .await;
}
