//! SDK clients against a real server on loopback QUIC: conflict policies, history and restore,
//! folder sync, offline vault creation with recovery, and a server that goes away.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dooz_sdk::{
    ClientOptions, ConflictEvent, ConflictInfo, ConflictPolicy, Error, Event, Resolution, Vault,
};
use support::{Seen, TestServer, client};

fn conflicts(seen: &Seen) -> Vec<ConflictEvent> {
    seen.events
        .iter()
        .filter_map(|e| match e {
            Event::Conflict(c) => Some((**c).clone()),
            _ => None,
        })
        .collect()
}

/// Two clients sharing vault "v" (paired), with `policy` on the second.
async fn pair_of(
    server: &TestServer,
    policy: ConflictPolicy,
) -> (
    (dooz_sdk::Client, Vault),
    (dooz_sdk::Client, Vault),
    Vec<tempfile::TempDir>,
) {
    let (a, da) = client("a", &server.code().await, ClientOptions::default()).await;
    let (b, db) = client(
        "b",
        &server.code().await,
        ClientOptions::default().conflict_policy(policy),
    )
    .await;
    let va = a.create_vault("v").unwrap();
    let invite = a.pair_invite().await.unwrap();
    let code = invite.code().to_owned();
    let (paired, joined) = tokio::join!(invite.complete(), b.pair_join(&code));
    paired.unwrap();
    assert_eq!(joined.unwrap()[0].name, "v");
    let vb = b.vault("v").unwrap();
    ((a, va), (b, vb), vec![da, db])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_writer_wins_and_history_restores_the_loser() {
    let server = TestServer::start().await;
    let ((_a, va), (_b, vb), _dirs) = pair_of(&server, ConflictPolicy::LastWriterWins).await;
    let mut seen_a = Seen::new(va.watch());
    let mut seen_b = Seen::new(vb.watch());

    // B writes last: B's version wins on B and reaches A.
    va.put("k", "from A").await.unwrap();
    va.sync().await.unwrap();
    vb.put("k", "from B, later").await.unwrap();
    vb.sync().await.unwrap();
    let c = conflicts(seen_b_drain(&mut seen_b).await);
    assert_eq!(c.len(), 1, "{c:#?}");
    assert_eq!(c[0].resolution, Resolution::KeepLocal);
    let (ours, theirs) = (c[0].ours.clone().unwrap(), c[0].theirs.clone().unwrap());
    assert_eq!(
        (ours.key.as_deref(), ours.value.as_deref()),
        (Some("k"), Some(&b"from B, later"[..]))
    );
    assert_eq!(theirs.key, None, "A's version was not kept");
    assert_eq!(theirs.content_hash, *blake3::hash(b"from A").as_bytes());
    let a_version = theirs.version.unwrap();
    va.sync().await.unwrap();
    assert_eq!(va.get("k").await.unwrap().unwrap(), b"from B, later");
    seen_a
        .until("A to hear of B's version", |ev| {
            ev.iter()
                .any(|e| matches!(e, Event::Remote { key, .. } if key == "k"))
        })
        .await;
    assert_eq!(vb.list("").await.unwrap().len(), 1, "no conflicted copy");

    // The loser is in the history, and can be restored.
    let history = va.history("k").await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[1].id, a_version);
    assert_eq!(history[0].size, Some(13));
    va.restore("k", &a_version).await.unwrap();
    assert_eq!(va.get("k").await.unwrap().unwrap(), b"from A");
    vb.sync().await.unwrap();
    assert_eq!(vb.get("k").await.unwrap().unwrap(), b"from A");
    assert_eq!(va.history("k").await.unwrap().len(), 3);
    let err = va
        .restore("k", &dooz_sdk::VersionId([9; 16]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no version"), "{err}");

    // A writes last: A's version wins, B's is discarded.
    vb.put("k", "from B, earlier").await.unwrap();
    va.put("k", "from A, later").await.unwrap();
    va.sync().await.unwrap();
    vb.sync().await.unwrap();
    let c = conflicts(seen_b_drain(&mut seen_b).await);
    let last = c.last().unwrap();
    assert_eq!(last.resolution, Resolution::KeepRemote);
    assert_eq!(last.ours.as_ref().unwrap().key, None);
    assert_eq!(
        last.theirs.as_ref().unwrap().value.as_deref(),
        Some(&b"from A, later"[..])
    );
    assert_eq!(vb.get("k").await.unwrap().unwrap(), b"from A, later");
    va.sync().await.unwrap();
    assert_eq!(va.get("k").await.unwrap().unwrap(), b"from A, later");
}

/// Takes what the stream has buffered (a sync reports its events before it returns), without
/// waiting for more.
async fn seen_b_drain(seen: &mut Seen) -> &Seen {
    seen.drain_ready().await;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_policy_sees_both_sides_and_decides() {
    let server = TestServer::start().await;
    let asked: Arc<Mutex<Vec<ConflictInfo>>> = Arc::default();
    let log = Arc::clone(&asked);
    let policy = ConflictPolicy::Custom(Arc::new(move |c: &ConflictInfo| {
        log.lock().unwrap().push(c.clone());
        if c.key.ends_with(".mine") {
            Resolution::KeepLocal
        } else {
            Resolution::KeepRemote
        }
    }));
    let ((_a, va), (_b, vb), _dirs) = pair_of(&server, policy).await;
    va.put("x.mine", "A1").await.unwrap();
    va.put("y.theirs", "A2").await.unwrap();
    va.sync().await.unwrap();
    vb.put("x.mine", "B1").await.unwrap();
    vb.put("y.theirs", "B2").await.unwrap();
    vb.sync().await.unwrap();
    va.sync().await.unwrap();
    let mut asked = asked.lock().unwrap().clone();
    asked.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(asked.len(), 2);
    assert_eq!(asked[0].ours.content_hash, *blake3::hash(b"B1").as_bytes());
    assert_eq!(
        asked[0].theirs.content_hash,
        *blake3::hash(b"A1").as_bytes()
    );
    assert_eq!((asked[1].ours.size, asked[1].theirs.size), (2, 2));
    for v in [&va, &vb] {
        assert_eq!(v.get("x.mine").await.unwrap().unwrap(), b"B1");
        assert_eq!(v.get("y.theirs").await.unwrap().unwrap(), b"A2");
        assert_eq!(v.list("").await.unwrap().len(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folder_sync_and_key_value_views_of_one_vault() {
    let server = TestServer::start().await;
    let (c, _dc) = client("c", &server.code().await, ClientOptions::default()).await;
    let (d, _dd) = client("d", &server.code().await, ClientOptions::default()).await;
    c.create_vault("camera").unwrap();
    let invite = c.pair_invite().await.unwrap();
    let code = invite.code().to_owned();
    let (p, j) = tokio::join!(invite.complete(), d.pair_join(&code));
    p.unwrap();
    j.unwrap();

    // On D the vault is a folder of the user's; files written there by any program sync.
    let folder = tempfile::tempdir().unwrap();
    let on_d = d.open_folder("camera", folder.path()).unwrap();
    assert_eq!(on_d.folder(), folder.path().canonicalize().unwrap());
    let elsewhere = tempfile::tempdir().unwrap();
    let err = d.open_folder("camera", elsewhere.path()).unwrap_err();
    assert!(matches!(err, Error::BoundElsewhere { .. }), "{err}");
    assert_eq!(d.vault("camera").unwrap().folder(), on_d.folder());

    std::fs::create_dir_all(folder.path().join("2026")).unwrap();
    std::fs::write(folder.path().join("2026/beach.jpg"), vec![42u8; 300_000]).unwrap();
    on_d.sync().await.unwrap();
    let on_c = c.vault("camera").unwrap();
    let mut seen_c = Seen::new(on_c.watch());
    on_c.sync().await.unwrap();
    assert_eq!(
        on_c.get("2026/beach.jpg").await.unwrap().unwrap(),
        vec![42u8; 300_000]
    );
    seen_c
        .until("the photo's event", |ev| {
            ev.iter()
                .any(|e| matches!(e, Event::Remote { key, .. } if key == "2026/beach.jpg"))
        })
        .await;

    // And back: a value put on C is a file in D's folder.
    on_c.put("2026/notes.txt", b"sunny").await.unwrap();
    on_c.sync().await.unwrap();
    on_d.sync().await.unwrap();
    assert_eq!(
        std::fs::read(folder.path().join("2026/notes.txt")).unwrap(),
        b"sunny"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_made_offline_is_created_on_sync_and_recovery_regains_it() {
    let server = TestServer::start().await;
    let (a, _da) = client("a", &server.code().await, ClientOptions::default()).await;
    let va = a.create_vault("diary").unwrap();
    va.put("day1", "dear diary").await.unwrap();
    assert!(a.vaults().unwrap()[0].pending);
    let words = a
        .set_up_recovery()
        .await
        .unwrap()
        .expect("the account's first secret");
    assert!(!a.vaults().unwrap()[0].pending, "created on the server");
    assert_eq!(words.split_whitespace().count(), 12);
    assert_eq!(a.set_up_recovery().await.unwrap(), None, "shown once");
    va.sync().await.unwrap();

    // A later vault made offline is wrapped to the secret when it is created on the server.
    let later = a.create_vault("later").unwrap();
    later.put("x", "y").await.unwrap();
    later.sync().await.unwrap();

    // Every device lost: a fresh one regains both vaults with the words.
    let (fresh, _df) = client("new phone", &server.code().await, ClientOptions::default()).await;
    let mut got: Vec<String> = fresh
        .recover(&words)
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    got.sort();
    assert_eq!(got.len(), 2, "{got:?}");
    let diary = fresh.vault(&va.id().to_string()).unwrap();
    diary.sync().await.unwrap();
    assert_eq!(diary.get("day1").await.unwrap().unwrap(), b"dear diary");
    let later2 = fresh.vault(&later.id().to_string()).unwrap();
    later2.sync().await.unwrap();
    assert_eq!(later2.get("x").await.unwrap().unwrap(), b"y");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_goes_away_is_offline_and_retryable() {
    let mut server = TestServer::start().await;
    let options = ClientOptions::default()
        .connect_timeout(Duration::from_millis(500))
        .idle_timeout(Duration::from_secs(2));
    let (a, _da) = client("a", &server.code().await, options.clone()).await;
    let (b, _db) = client("b", &server.code().await, options).await;
    let va = a.create_vault("v").unwrap();
    va.sync().await.unwrap();
    let invite = a.pair_invite().await.unwrap();
    let code = invite.code().to_owned();
    let (p, j) = tokio::join!(invite.complete(), b.pair_join(&code));
    p.unwrap();
    j.unwrap();
    let vb = b.vault("v").unwrap();
    let mut seen_b = Seen::new(vb.watch());
    let bg = b.start_sync().unwrap();

    server.stop().await;
    va.put("while-down", "kept").await.unwrap();
    let err = va.sync().await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.is_offline(), "{err}");
    assert_eq!(va.get("while-down").await.unwrap().unwrap(), b"kept");
    seen_b
        .until("B to notice", |ev| {
            ev.iter()
                .any(|e| matches!(e, Event::Status(dooz_sdk::Status::Offline { .. })))
        })
        .await;

    server.restart();
    va.sync().await.unwrap();
    seen_b
        .until("B to get the value once the server is back", |ev| {
            ev.iter()
                .any(|e| matches!(e, Event::Remote { key, .. } if key == "while-down"))
        })
        .await;
    assert_eq!(vb.get("while-down").await.unwrap().unwrap(), b"kept");
    bg.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_sync_sees_folder_edits_through_file_notifications() {
    let server = TestServer::start().await;
    // No periodic sync to fall back on: only notifications can find the edit.
    let options = ClientOptions::default().sync_interval(Duration::from_secs(3600));
    let (c, _dc) = client("c", &server.code().await, options.clone()).await;
    let (d, _dd) = client("d", &server.code().await, options).await;
    let folder = tempfile::tempdir().unwrap();
    let on_c = c.create_folder("docs", folder.path()).unwrap();
    let invite = c.pair_invite().await.unwrap();
    let code = invite.code().to_owned();
    let (p, j) = tokio::join!(invite.complete(), d.pair_join(&code));
    p.unwrap();
    j.unwrap();
    let on_d = d.vault("docs").unwrap();
    let mut seen_d = Seen::new(on_d.watch());
    let mut seen_c = Seen::new(on_c.watch());
    let bg_c = c.start_sync().unwrap();
    let bg_d = d.start_sync().unwrap();
    // Both have synced once (start-up) before the edit.
    for seen in [&mut seen_c, &mut seen_d] {
        seen.until("a first sync", |ev| {
            ev.iter()
                .any(|e| matches!(e, Event::Status(dooz_sdk::Status::Synced { .. })))
        })
        .await;
    }
    // Let every wake-up so far play out: D answers C's first edit, and C hears the answer.
    std::fs::write(folder.path().join("first.txt"), "one").unwrap();
    seen_d
        .until("the first edit", |ev| {
            ev.iter()
                .any(|e| matches!(e, Event::Remote { key, .. } if key == "first.txt"))
        })
        .await;
    on_d.put("ack", "got it").await.unwrap();
    seen_c
        .until("the answer", |ev| {
            ev.iter()
                .any(|e| matches!(e, Event::Remote { key, .. } if key == "ack"))
        })
        .await;
    // Now nothing is pending on C (the notification of its own download of "ack" matches
    // the index, so it syncs nothing): only the file notification can sync this edit.
    std::fs::write(
        folder.path().join("report.txt"),
        "written by another program",
    )
    .unwrap();
    seen_d
        .until("the edit to arrive", |ev| {
            ev.iter()
                .any(|e| matches!(e, Event::Remote { key, .. } if key == "report.txt"))
        })
        .await;
    assert_eq!(
        on_d.get("report.txt").await.unwrap().unwrap(),
        b"written by another program"
    );
    bg_c.stop().await.unwrap();
    bg_d.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_against_a_directory_keeps_both_whatever_the_policy() {
    let server = TestServer::start().await;
    let ((_a, va), (_b, vb), _dirs) = pair_of(&server, ConflictPolicy::LastWriterWins).await;
    let mut seen_b = Seen::new(vb.watch());
    va.put("a/b", "a value under a").await.unwrap();
    va.sync().await.unwrap();
    vb.put("a", "a value at a").await.unwrap();
    vb.sync().await.unwrap();
    va.sync().await.unwrap();
    vb.sync().await.unwrap();
    let c = conflicts(seen_b_drain(&mut seen_b).await);
    assert_eq!(c.len(), 1, "{c:#?}");
    assert_eq!(c[0].resolution, Resolution::KeepBoth);
    let copy = c[0].ours.as_ref().unwrap().key.clone().unwrap();
    for v in [&va, &vb] {
        assert_eq!(v.get("a/b").await.unwrap().unwrap(), b"a value under a");
        assert_eq!(v.get(&copy).await.unwrap().unwrap(), b"a value at a");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncs_report_progress_for_progress_bars() {
    use dooz_sdk::{ProgressEvent, SyncPhase};
    let server = TestServer::start().await;
    let uploaded = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let phases: Arc<Mutex<Vec<SyncPhase>>> = Arc::default();
    let (up, ph) = (Arc::clone(&uploaded), Arc::clone(&phases));
    let options = ClientOptions::default().progress(Arc::new(move |e: ProgressEvent| match e {
        ProgressEvent::Begin { phase, .. } => ph.lock().unwrap().push(phase),
        ProgressEvent::Advance {
            phase: SyncPhase::Uploading,
            delta,
            ..
        } => {
            up.fetch_add(delta, std::sync::atomic::Ordering::SeqCst);
        }
        _ => {}
    }));
    let (a, _da) = client("a", &server.code().await, options).await;
    let vault = a.create_vault("v").unwrap();
    // Incompressible and without repeats, so that every byte is sent once.
    let mut value = vec![0u8; 600_000];
    blake3::Hasher::new().finalize_xof().fill(&mut value);
    vault.put("big.bin", &value).await.unwrap();
    vault.sync().await.unwrap();
    assert_eq!(uploaded.load(std::sync::atomic::Ordering::SeqCst), 600_000);
    let phases = phases.lock().unwrap().clone();
    for phase in [
        SyncPhase::Scanning,
        SyncPhase::Pulling,
        SyncPhase::Uploading,
        SyncPhase::Committing,
    ] {
        assert!(phases.contains(&phase), "{phase:?} in {phases:?}");
    }
}
