//! Three SDK clients share a vault through a real server on loopback QUIC: two online, one
//! cut off by a relay that comes back later. They converge; each watch stream delivers every
//! remote change once; the conflict the offline device meets carries both versions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use dooz_sdk::{Change, ClientOptions, Event, Resolution, Status, Vault};
use support::{Relay, Seen, TestServer, client};

async fn contents(vault: &Vault) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for k in vault.list("").await.unwrap() {
        let v = vault.get(&k.key).await.unwrap().unwrap();
        out.insert(k.key, v);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_converge_with_one_offline() {
    let server = TestServer::start().await;
    let relay = Relay::start(server.addr()).await;
    let options = ClientOptions::default()
        .connect_timeout(Duration::from_millis(500))
        .idle_timeout(Duration::from_secs(2));
    let (a, _da) = client("ana-laptop", &server.code().await, options.clone()).await;
    let (b, _db) = client("ana-phone", &server.code().await, options.clone()).await;
    let (c, _dc) = client("ana-tablet", &server.code_for(relay.addr).await, options).await;

    // A makes the vault and pairs B and C with it.
    let va = a.create_vault("notes").unwrap();
    for joiner in [&b, &c] {
        let invite = a.pair_invite().await.unwrap();
        let code = invite.code().to_owned();
        let (paired, joined) = tokio::join!(invite.complete(), joiner.pair_join(&code));
        assert_eq!(paired.unwrap().vaults, ["notes"]);
        assert_eq!(joined.unwrap().len(), 1);
    }
    let vb = b.vault("notes").unwrap();
    let vc = c.vault("notes").unwrap();
    assert_eq!(va.id(), vb.id());
    assert_eq!(va.id(), vc.id());

    // C goes offline; everyone syncs in the background.
    relay.set_online(false);
    let mut seen_a = Seen::new(va.watch());
    let mut seen_b = Seen::new(vb.watch());
    let mut seen_c = Seen::new(c.watch());
    let sync_a = a.start_sync().unwrap();
    let sync_b = b.start_sync().unwrap();
    let sync_c = c.start_sync().unwrap();

    for i in 0..5 {
        va.put(&format!("a/{i}.md"), format!("from A {i}"))
            .await
            .unwrap();
        vb.put(&format!("b/{i}.md"), format!("from B {i}"))
            .await
            .unwrap();
        vc.put(&format!("c/{i}.md"), format!("from C {i}"))
            .await
            .unwrap();
    }
    va.put("shared.md", "A's version").await.unwrap();
    vc.put("shared.md", "C's version, written offline")
        .await
        .unwrap();
    va.put("gone.md", "short-lived").await.unwrap();

    // Offline, C still reads its own writes, and says it is offline.
    assert_eq!(vc.get("c/3.md").await.unwrap().unwrap(), b"from C 3");
    seen_c
        .until("C to report being offline", |ev| {
            ev.iter()
                .any(|e| matches!(e, Event::Status(Status::Offline { .. })))
        })
        .await;

    // A and B exchange their changes meanwhile.
    seen_b
        .until("B to get A's values", |ev| {
            ev.iter()
                .filter(|e| matches!(e, Event::Remote { key, .. } if key.starts_with("a/") || key == "gone.md" || key == "shared.md"))
                .count()
                == 7
        })
        .await;
    va.delete("gone.md").await.unwrap();
    seen_a
        .until("A to get B's values", |ev| {
            ev.iter()
                .filter(|e| matches!(e, Event::Remote { key, .. } if key.starts_with("b/")))
                .count()
                == 5
        })
        .await;
    seen_b
        .until("B to see the deletion", |ev| {
            ev.iter().any(|e| {
                matches!(e, Event::Remote { key, change: Change::Delete, .. } if key == "gone.md")
            })
        })
        .await;
    assert!(seen_c.remote_keys().is_empty(), "C is offline");

    // C comes back: it reconnects by itself and meets the conflict on shared.md.
    relay.set_online(true);
    seen_c
        .until("C's conflict", |ev| {
            ev.iter().any(|e| matches!(e, Event::Conflict(_)))
        })
        .await;
    let conflict = seen_c
        .events
        .iter()
        .find_map(|e| match e {
            Event::Conflict(c) => Some(c.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(conflict.key, "shared.md");
    assert_eq!(conflict.resolution, Resolution::KeepBoth);
    let ours = conflict.ours.clone().unwrap();
    let theirs = conflict.theirs.clone().unwrap();
    assert_eq!(
        ours.value.as_deref(),
        Some(&b"C's version, written offline"[..])
    );
    assert_eq!(theirs.value.as_deref(), Some(&b"A's version"[..]));
    assert_eq!(theirs.key.as_deref(), Some("shared.md"));
    assert!(theirs.version.is_some());
    assert_eq!(
        ours.content_hash,
        *blake3::hash(b"C's version, written offline").as_bytes()
    );
    let copy = ours.key.clone().unwrap();
    assert!(
        copy.starts_with("shared (conflicted copy from ana-tablet "),
        "{copy}"
    );
    assert_eq!(
        vc.get(&copy).await.unwrap().unwrap(),
        b"C's version, written offline"
    );

    // Everyone converges on the same contents.
    let mut expected = BTreeMap::new();
    for i in 0..5 {
        for (dev, who) in [("a", "A"), ("b", "B"), ("c", "C")] {
            expected.insert(
                format!("{dev}/{i}.md"),
                format!("from {who} {i}").into_bytes(),
            );
        }
    }
    expected.insert("shared.md".to_owned(), b"A's version".to_vec());
    expected.insert(copy.clone(), b"C's version, written offline".to_vec());
    let done = |want: usize, prefixes: &'static [&'static str]| {
        move |ev: &[Event]| {
            ev.iter()
                .filter(|e| matches!(e, Event::Remote { key, .. } if prefixes.iter().any(|p| key.starts_with(p))))
                .count()
                >= want
        }
    };
    // C gets A's 5 + B's 5 (shared.md came as the conflict; gone.md was gone already).
    seen_c.until("C to catch up", done(10, &["a/", "b/"])).await;
    // A and B each get C's 5 values and the conflicted copy.
    seen_a
        .until("A to get C's values", done(6, &["c/", "shared ("]))
        .await;
    seen_b
        .until("B to get C's values", done(6, &["c/", "shared ("]))
        .await;
    for vault in [&va, &vb, &vc] {
        assert_eq!(contents(vault).await, expected, "{}", vault.name());
    }

    // Exactly once: no remote change came twice, and none is an echo of the device's own.
    for (who, seen, own) in [
        ("A", &seen_a, "a/"),
        ("B", &seen_b, "b/"),
        ("C", &seen_c, "c/"),
    ] {
        for ((key, change), n) in seen.remote_counts() {
            assert_eq!(n, 1, "{who} saw {key} {change} {n} times");
            assert!(!key.starts_with(own), "{who} was told about its own {key}");
        }
    }
    // B saw A's 5 puts, gone.md put and deleted, shared.md, C's 5 and the copy: 14 changes.
    assert_eq!(
        seen_b.remote_counts().len(),
        14,
        "{:#?}",
        seen_b.remote_counts()
    );

    for handle in [sync_a, sync_b, sync_c] {
        handle.stop().await.unwrap();
    }
}
