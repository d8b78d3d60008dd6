//! Garbage collection: uploads no commit took are freed; a chunk committed while a collection
//! runs is never lost.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dooz_protocol::{ChunkId, ErrorCode, Extensions, GetChunk, PutChunk, Response, VaultId};
use dooz_server::service::ServerParts;

use crate::commit::{commit, entry};
use crate::harness::{Client, TestServer, vault, within};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn body(n: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32 ^ n.wrapping_mul(131)) as u8)
        .collect()
}

fn chunk_id(n: u32) -> ChunkId {
    ChunkId::from_bytes(*blake3::hash(&[b"gc".as_slice(), &n.to_be_bytes()].concat()).as_bytes())
}

async fn put(client: &Client, v: VaultId, n: u32, body: &[u8]) {
    let response = client
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
        .await;
    assert!(matches!(response, Response::ChunkStored(_)), "{response:?}");
}

async fn read(client: &Client, v: VaultId, chunk: ChunkId) -> Vec<u8> {
    let (_, body) = client
        .get_chunk(GetChunk {
            vault: v,
            chunk,
            ext: Extensions::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("committed chunk {chunk:?} unreadable: {e:?}"));
    body.bytes.to_vec()
}

/// A server whose collections take every pending upload (no grace) and run only when asked.
async fn start(packing: bool, pack_min_age: Duration) -> TestServer {
    TestServer::start_with(
        |s| {
            s.gc_pending_grace_secs = 0;
            s.gc_interval_secs = 0;
            if !packing {
                s.pack_max_chunk_bytes = 0;
            }
        },
        move |mut parts: ServerParts| {
            parts.limits.gc.pack_min_age = pack_min_age;
            parts
        },
    )
    .await
}

/// Uploads then commits chunks, many times, each upload starting a collection that runs while
/// the device commits and takes every pending chunk it sees. A commit may fail with missing chunks (the collection took
/// them first); the device then uploads again. No committed chunk is ever missing.
async fn race_uploads_with_collections(packing: bool) {
    within(async {
        let server = Arc::new(start(packing, Duration::from_secs(600)).await);
        let device = server.enrolled_device().await;
        let client = server.connect(&device).await;
        let v = vault(if packing { 1 } else { 2 });
        client.create_vault(v).await;

        // One collection per signal, on its own task: it runs while the device commits.
        let (go, mut signals) = tokio::sync::mpsc::unbounded_channel::<()>();
        let collector = {
            let server = Arc::clone(&server);
            tokio::spawn(async move {
                let mut runs = 0u64;
                let mut deleted = 0u64;
                while signals.recv().await.is_some() {
                    // Everything pending counts as old.
                    let report = server.server.collect_garbage(unix_now() + 5).await.unwrap();
                    deleted += report.chunks_deleted;
                    runs += 1;
                }
                (runs, deleted)
            })
        };

        let mut committed = Vec::new();
        let mut retries = 0;
        for n in 0..150u32 {
            let data = body(n, 2000 + (n as usize * 37) % 3000);
            let mut first = true;
            loop {
                put(&client, v, n, &data).await;
                if packing && n % 2 == 0 {
                    // Recorded as pending in a written pack, for the collection to see.
                    server.server.seal_open_packs().await;
                }
                if std::mem::take(&mut first) {
                    go.send(()).unwrap();
                }
                let e = entry(n as u8, None, 1, vec![chunk_id(n)]);
                match commit(&client, v, vec![e]).await {
                    Response::Committed(c) => {
                        assert!(
                            matches!(c.results[..], [dooz_protocol::CommitResult::Applied { .. }]),
                            "{c:?}"
                        );
                        break;
                    }
                    Response::Error(e) if e.code == ErrorCode::NotFound => {
                        // Collected between upload and commit: upload again.
                        retries += 1;
                    }
                    other => panic!("unexpected answer to Commit: {other:?}"),
                }
            }
            committed.push((chunk_id(n), data));
            // A chunk just committed reads back while collections keep running.
            let (id, data) = committed.last().unwrap();
            assert_eq!(&read(&client, v, *id).await, data);
        }
        drop(go);
        let (runs, deleted) = collector.await.unwrap();
        assert_eq!(runs, 150);
        // One more collection after the fact takes nothing committed.
        server.server.collect_garbage(unix_now() + 5).await.unwrap();
        for (id, data) in &committed {
            assert_eq!(&read(&client, v, *id).await, data);
        }
        eprintln!("packing {packing}: {runs} collections, {deleted} chunks collected, {retries} re-uploads");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_racing_packed_uploads_never_lose_a_committed_chunk() {
    race_uploads_with_collections(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_racing_blob_uploads_never_lose_a_committed_chunk() {
    race_uploads_with_collections(false).await;
}

/// After a collection, the stored bytes are those of the committed chunks, and the blob store
/// holds nothing else than what they need.
#[tokio::test]
async fn uploads_no_commit_took_are_freed() {
    within(async {
        let server = start(true, Duration::ZERO).await;
        let device = server.enrolled_device().await;
        let client = server.connect(&device).await;
        let v = vault(3);
        client.create_vault(v).await;

        // Committed: a packed chunk and one big enough to be a blob of its own.
        let (a, big) = (body(1, 5000), body(2, 1_200_000));
        put(&client, v, 1, &a).await;
        put(&client, v, 2, &big).await;
        let r = commit(
            &client,
            v,
            vec![entry(1, None, 1, vec![chunk_id(1), chunk_id(2)])],
        )
        .await;
        assert!(matches!(r, Response::Committed(_)), "{r:?}");
        let live = (a.len() + big.len()) as u64;

        // Never committed: two packed chunks (in a pack of their own) and a big one.
        put(&client, v, 3, &body(3, 7000)).await;
        put(&client, v, 4, &body(4, 9000)).await;
        put(&client, v, 5, &body(5, 1_100_000)).await;
        server.server.seal_open_packs().await;
        let usage = |server: &TestServer| {
            let store = Arc::clone(server.server.store());
            let account = server.account.id;
            async move { store.account_usage(account).await.unwrap().stored_bytes }
        };
        assert_eq!(usage(&server).await, live + 7000 + 9000 + 1_100_000);
        let blobs_before = server.server.blobs().list(None).await.unwrap();
        assert_eq!(blobs_before.len(), 4, "{blobs_before:?}");

        let report = server.server.collect_garbage(unix_now() + 5).await.unwrap();
        assert_eq!(report.chunks_deleted, 3, "{report:?}");
        assert_eq!(report.chunk_bytes_deleted, 7000 + 9000 + 1_100_000);
        assert_eq!(report.packs_deleted, 1, "{report:?}");
        assert_eq!(usage(&server).await, live);

        // Left: the committed chunk's pack and the committed big blob, nothing else.
        let blobs = server.server.blobs().list(None).await.unwrap();
        assert_eq!(blobs.len(), 2, "{blobs:?}");
        let packs: Vec<_> = blobs
            .iter()
            .filter(|b| b.key.as_str().contains("/packs/"))
            .collect();
        let own: Vec<_> = blobs
            .iter()
            .filter(|b| b.key.as_str().contains("/chunks/"))
            .collect();
        assert_eq!((packs.len(), own.len()), (1, 1));
        assert_eq!(own[0].size, big.len() as u64);
        // The pack holds the committed chunk and its index, nothing of the freed ones.
        let index = dooz_server::service::read_pack_index(
            &server.server.blobs().get(&packs[0].key).await.unwrap(),
        )
        .unwrap();
        assert_eq!(index.len(), 1);
        assert_eq!(index[0].chunk, chunk_id(1));

        assert_eq!(read(&client, v, chunk_id(1)).await, a);
        assert_eq!(read(&client, v, chunk_id(2)).await, big);
        // A second collection finds nothing more.
        let again = server.server.collect_garbage(unix_now() + 5).await.unwrap();
        assert_eq!((again.chunks_deleted, again.packs_deleted), (0, 0));
        server_shutdown(server).await;
    })
    .await;
}

async fn server_shutdown(server: TestServer) {
    server.server.shutdown().await;
}

async fn history_versions(client: &Client, v: VaultId, entry: u8) -> Vec<dooz_protocol::VersionId> {
    match client
        .request(dooz_protocol::History {
            vault: v,
            entry: dooz_protocol::EntryKey::from_bytes([entry; 32]),
            limit: 0,
            before: None,
            ext: Extensions::new(),
        })
        .await
    {
        Response::HistoryPage(page) => page.versions.iter().map(|c| c.version).collect(),
        other => panic!("unexpected answer to History: {other:?}"),
    }
}

/// With a plan that keeps no earlier versions (retention 0 days), a collection forgets every
/// version but the heads and frees the chunks only they used; after it the stored bytes are
/// exactly those of the heads' chunks. Devices that pull late still get the whole log (and
/// apply the heads).
#[tokio::test]
async fn versions_past_retention_are_forgotten_and_only_their_chunks_freed() {
    use dooz_server::policy::{Access, AccountPolicy, Limits};
    within(async {
        let policy = Arc::new(crate::policy::TestPolicy::new(AccountPolicy {
            access: Access::Full,
            limits: Limits {
                retention_days: Some(0),
                ..Limits::default()
            },
        }));
        let server = TestServer::start_with(
            |s| {
                s.gc_pending_grace_secs = 0;
                s.gc_interval_secs = 0;
            },
            move |mut parts: ServerParts| {
                parts.policy = policy;
                parts.limits.gc.pack_min_age = Duration::ZERO;
                parts
            },
        )
        .await;
        let device = server.enrolled_device().await;
        let client = server.connect(&device).await;
        let v = vault(4);
        client.create_vault(v).await;
        let sizes = [
            (10, 5000),
            (11, 1_200_000),
            (12, 6000),
            (13, 7000),
            (14, 8000),
        ];
        for (n, len) in sizes {
            put(&client, v, n, &body(n, len)).await;
        }
        // Entry 1: versions 1 → 2 → 3; chunk 13 is in both 1 and 3. Entry 2: one version.
        for e in [
            entry(1, None, 1, vec![chunk_id(10), chunk_id(13)]),
            entry(1, Some(1), 2, vec![chunk_id(11)]),
            entry(1, Some(2), 3, vec![chunk_id(12), chunk_id(13)]),
            entry(2, None, 4, vec![chunk_id(14)]),
        ] {
            let r = commit(&client, v, vec![e]).await;
            assert!(matches!(r, Response::Committed(_)), "{r:?}");
        }
        assert_eq!(history_versions(&client, v, 1).await.len(), 3);
        let usage = || {
            let store = Arc::clone(server.server.store());
            let account = server.account.id;
            async move { store.account_usage(account).await.unwrap().stored_bytes }
        };
        let all: u64 = sizes.iter().map(|(_, l)| *l as u64).sum();
        assert_eq!(usage().await, all);

        // First run: versions 1 and 2 are forgotten; chunks 10 and 11 (theirs alone) released.
        let now = unix_now() + 5;
        let first = server.server.collect_garbage(now).await.unwrap();
        assert_eq!(
            (
                first.versions_expired,
                first.chunks_released,
                first.chunks_deleted
            ),
            (2, 2, 0),
            "{first:?}"
        );
        assert_eq!(
            history_versions(&client, v, 1).await,
            vec![dooz_protocol::VersionId::from_bytes([3; 16])]
        );
        // Second run, past the grace period: they are deleted, nothing else.
        let second = server.server.collect_garbage(now + 1).await.unwrap();
        assert_eq!(second.chunks_deleted, 2, "{second:?}");
        assert_eq!(second.chunk_bytes_deleted, 5000 + 1_200_000);
        let live = 6000 + 7000 + 8000;
        assert_eq!(usage().await, live, "stored bytes = the heads' chunks");
        for n in [12, 13, 14] {
            let len = sizes.iter().find(|(m, _)| *m == n).unwrap().1;
            assert_eq!(read(&client, v, chunk_id(n)).await, body(n, len));
        }
        for n in [10, 11] {
            let missing = client
                .get_chunk(GetChunk {
                    vault: v,
                    chunk: chunk_id(n),
                    ext: Extensions::new(),
                })
                .await;
            assert!(missing.is_err(), "chunk {n} should be gone");
        }
        // The log is whole: a device that pulls from the start still sees every change.
        match client
            .request(dooz_protocol::Pull {
                vault: v,
                since: dooz_protocol::Seq::ZERO,
                limit: 0,
                ext: Extensions::new(),
            })
            .await
        {
            Response::Changes(page) => assert_eq!(page.changes.len(), 4),
            other => panic!("unexpected answer to Pull: {other:?}"),
        }
        // A chunk referenced again by a new commit is kept, and nothing more goes.
        let r = commit(&client, v, vec![entry(2, Some(4), 5, vec![chunk_id(13)])]).await;
        assert!(matches!(r, Response::Committed(_)), "{r:?}");
        let third = server.server.collect_garbage(now + 2).await.unwrap();
        assert_eq!(
            (third.versions_expired, third.chunks_released),
            (1, 1),
            "{third:?}"
        );
        let fourth = server.server.collect_garbage(now + 3).await.unwrap();
        assert_eq!(
            fourth.chunks_deleted, 1,
            "chunk 14, of the forgotten version 4"
        );
        assert_eq!(usage().await, 6000 + 7000);
        assert_eq!(read(&client, v, chunk_id(13)).await, body(13, 7000));
        server_shutdown(server).await;
    })
    .await;
}

/// A pack that is mostly garbage is rewritten with its live chunks alone; the old pack goes in
/// the next run, and the live chunks read back the same throughout.
#[tokio::test]
async fn packs_mostly_garbage_are_repacked() {
    within(async {
        let server = start(true, Duration::ZERO).await;
        let device = server.enrolled_device().await;
        let client = server.connect(&device).await;
        let v = vault(5);
        client.create_vault(v).await;
        // One pack: a committed chunk and three that no commit takes.
        let kept = body(20, 4000);
        put(&client, v, 20, &kept).await;
        for n in 21..24 {
            put(&client, v, n, &body(n, 6000)).await;
        }
        let r = commit(&client, v, vec![entry(7, None, 70, vec![chunk_id(20)])]).await;
        assert!(matches!(r, Response::Committed(_)), "{r:?}");
        server.server.seal_open_packs().await;
        let packs = || async {
            let blobs = server.server.blobs().list(None).await.unwrap();
            blobs
                .into_iter()
                .filter(|b| b.key.as_str().contains("/packs/"))
                .collect::<Vec<_>>()
        };
        let before = packs().await;
        assert_eq!(before.len(), 1, "{before:?}");

        // The run frees the three and, the pack being mostly garbage now, repacks it.
        let first = server.server.collect_garbage(unix_now() + 5).await.unwrap();
        assert_eq!(first.chunks_deleted, 3, "{first:?}");
        assert_eq!(
            (first.packs_repacked, first.chunks_repacked),
            (1, 1),
            "{first:?}"
        );
        assert_eq!(read(&client, v, chunk_id(20)).await, kept);
        assert_eq!(packs().await.len(), 2, "old and new until the next run");

        // The next run deletes the old pack; the new one holds the live chunk alone.
        let second = server.server.collect_garbage(unix_now() + 6).await.unwrap();
        assert_eq!(
            (second.packs_deleted, second.packs_repacked),
            (1, 0),
            "{second:?}"
        );
        let after = packs().await;
        assert_eq!(after.len(), 1);
        assert_ne!(after[0].key, before[0].key);
        assert!(
            after[0].size < before[0].size / 3,
            "{} vs {}",
            after[0].size,
            before[0].size
        );
        let index = dooz_server::service::read_pack_index(
            &server.server.blobs().get(&after[0].key).await.unwrap(),
        )
        .unwrap();
        assert_eq!(index.len(), 1);
        assert_eq!(index[0].chunk, chunk_id(20));
        assert_eq!(read(&client, v, chunk_id(20)).await, kept);
        let third = server.server.collect_garbage(unix_now() + 7).await.unwrap();
        assert_eq!(
            (third.packs_deleted, third.packs_repacked),
            (0, 0),
            "{third:?}"
        );
        server_shutdown(server).await;
    })
    .await;
}
