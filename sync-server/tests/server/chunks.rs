//! Have, PutChunk and GetChunk over the wire.

use dooz_protocol::{ChunkId, ErrorCode, Extensions, GetChunk, Have, PutChunk, Response, VaultId};

use crate::harness::{Client, TestServer, expect_error, vault, within};

async fn missing(client: &Client, vault: VaultId, chunks: &[ChunkId]) -> Vec<ChunkId> {
    match client
        .request(Have {
            vault,
            chunks: chunks.to_vec(),
            ext: Extensions::new(),
        })
        .await
    {
        Response::Missing(m) => m.chunks,
        other => panic!("unexpected answer to Have: {other:?}"),
    }
}

fn put(vault: VaultId, chunk: ChunkId, body: &[u8], blake3: [u8; 32]) -> PutChunk {
    PutChunk {
        vault,
        chunk,
        len: u32::try_from(body.len()).unwrap(),
        blake3,
        ext: Extensions::new(),
    }
}

#[tokio::test]
async fn chunks_round_trip_and_bad_hashes_store_nothing() {
    within(async {
        let server = TestServer::start_unpacked().await;
        let device = server.enrolled_device().await;
        let client = server.connect(&device).await;
        let v = vault(1);
        client.create_vault(v).await;

        let a = ChunkId::from_bytes([0xa1; 32]);
        let b = ChunkId::from_bytes([0xb2; 32]);
        assert_eq!(missing(&client, v, &[a, b]).await, vec![a, b]);

        // A chunk bigger than one QUIC packet and one read.
        let body_a: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let hash_a = *blake3::hash(&body_a).as_bytes();
        match client.put_chunk(put(v, a, &body_a, hash_a), &body_a).await {
            Response::ChunkStored(stored) => assert_eq!(stored.chunk, a),
            other => panic!("unexpected answer to PutChunk: {other:?}"),
        }
        assert_eq!(missing(&client, v, &[a, b]).await, vec![b]);

        let (data, body) = client
            .get_chunk(GetChunk {
                vault: v,
                chunk: a,
                ext: Extensions::new(),
            })
            .await
            .unwrap();
        assert_eq!(data.blake3, hash_a);
        assert_eq!(body.blake3, hash_a);
        assert_eq!(&body.bytes[..], &body_a[..]);

        // A body whose BLAKE3 is not the header's is refused and nothing is stored.
        let body_b = b"sealed bytes of b".to_vec();
        let wrong = *blake3::hash(b"something else").as_bytes();
        let err = expect_error(client.put_chunk(put(v, b, &body_b, wrong), &body_b).await);
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert!(err.message.contains("BLAKE3"), "{}", err.message);
        assert_eq!(missing(&client, v, &[b]).await, vec![b]);
        let blobs = server.server.blobs().list(None).await.unwrap();
        assert_eq!(blobs.len(), 1, "{blobs:?}");
        assert!(blobs[0].key.as_str().ends_with(&a.to_hex()), "{blobs:?}");
        assert!(
            blobs[0]
                .key
                .as_str()
                .contains(&format!("/{}/chunks/a1/", v.to_hex())),
            "{blobs:?}"
        );

        // A body shorter than its header says is refused too.
        let err = expect_error(
            client
                .put_chunk(
                    put(v, b, &[0; 100], *blake3::hash(&[0; 100]).as_bytes()),
                    &[0; 60],
                )
                .await,
        );
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert_eq!(missing(&client, v, &[b]).await, vec![b]);

        // Unknown chunks and vaults of nobody are not found.
        let err = client
            .get_chunk(GetChunk {
                vault: v,
                chunk: b,
                ext: Extensions::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::NotFound);
        let err = expect_error(
            client
                .request(Have {
                    vault: vault(9),
                    chunks: vec![a],
                    ext: Extensions::new(),
                })
                .await,
        );
        assert_eq!(err.code, ErrorCode::NotFound);
        server.server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn vaults_of_another_account_are_not_visible() {
    within(async {
        let server = TestServer::start().await;
        let device = server.enrolled_device().await;
        let client = server.connect(&device).await;
        let v = vault(4);
        client.create_vault(v).await;

        // A device of another account in the same tenant.
        let store = server.server.store();
        let other_account = store
            .create_account(server.account.tenant, "someone-else")
            .await
            .unwrap();
        let other = dooz_server::tls::DeviceCert::generate().unwrap();
        let token = store
            .create_enrolment_token(other_account, u64::MAX / 2, false)
            .await
            .unwrap();
        store
            .redeem_enrolment(
                token.expose(),
                dooz_server::DeviceRegistration {
                    device: other.device_id().unwrap(),
                    identity_key: other.identity_key().unwrap(),
                    exchange_key: [1; 32],
                    name: "other".to_owned(),
                },
                1,
            )
            .await
            .unwrap();
        let intruder = server.connect(&other).await;
        let err = expect_error(
            intruder
                .request(Have {
                    vault: v,
                    chunks: vec![ChunkId::from_bytes([1; 32])],
                    ext: Extensions::new(),
                })
                .await,
        );
        assert_eq!(err.code, ErrorCode::NotFound);
        let err = expect_error(
            intruder
                .request(dooz_protocol::CreateVault {
                    vault: v,
                    ext: Extensions::new(),
                })
                .await,
        );
        assert_eq!(err.code, ErrorCode::AlreadyExists);
        server.server.shutdown().await;
    })
    .await;
}
