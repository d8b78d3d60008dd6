//! The SDK with no server: everything local works, and errors say what is wrong.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dooz_sdk::{Change, Client, Error, Event};
use tokio::io::AsyncWriteExt as _;

fn open(dir: &tempfile::TempDir) -> Client {
    Client::open(dir.path().join("dooz")).unwrap()
}

#[tokio::test]
async fn values_live_on_the_device_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir);
    assert!(!client.is_enrolled().unwrap());
    let vault = client.create_vault("notes").unwrap();
    let mut events = vault.watch();

    vault.put("a.md", b"one").await.unwrap();
    vault.put("dir/b.md", b"two").await.unwrap();
    vault.put("dir/sub/c.md", vec![7u8; 100_000]).await.unwrap();
    vault.put("a.md", b"one, edited").await.unwrap();
    assert_eq!(vault.get("a.md").await.unwrap().unwrap(), b"one, edited");
    assert_eq!(vault.get("missing").await.unwrap(), None);
    // A prefix of keys is not a value.
    assert_eq!(vault.get("dir").await.unwrap(), None);

    let keys = |list: Vec<dooz_sdk::KeyInfo>| {
        list.into_iter()
            .map(|k| (k.key, k.size))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        keys(vault.list("").await.unwrap()),
        [
            ("a.md".to_owned(), 11),
            ("dir/b.md".to_owned(), 3),
            ("dir/sub/c.md".to_owned(), 100_000)
        ]
    );
    assert_eq!(
        keys(vault.list("dir/s").await.unwrap()),
        [("dir/sub/c.md".to_owned(), 100_000)]
    );
    assert_eq!(keys(vault.list("di").await.unwrap()).len(), 2);
    assert!(vault.list("nothing/here").await.unwrap().is_empty());

    assert!(vault.delete("dir/sub/c.md").await.unwrap());
    assert!(!vault.delete("dir/sub/c.md").await.unwrap());
    assert!(!vault.delete("dir").await.unwrap());
    // The emptied directory went with its last key: "dir/sub" can hold a value now.
    vault.put("dir/sub", b"a value").await.unwrap();

    // Every local change was an event, in order.
    let mut got = Vec::new();
    while let Ok(Some(e)) =
        // Each call reported its event before it returned: take what is buffered.
        tokio::time::timeout(std::time::Duration::ZERO, events.next_event()).await
    {
        if let Event::Local { key, change, .. } = e {
            got.push((key, matches!(change, Change::Delete)));
        }
    }
    let want: Vec<(String, bool)> = [
        ("a.md", false),
        ("dir/b.md", false),
        ("dir/sub/c.md", false),
        ("a.md", false),
        ("dir/sub/c.md", true),
        ("dir/sub", false),
    ]
    .into_iter()
    .map(|(k, d)| (k.to_owned(), d))
    .collect();
    assert_eq!(got, want);

    // Reopened, the client has its vault and values; the vault waits to be created on a
    // server.
    let id = vault.id();
    drop((vault, events, client));
    let client = open(&dir);
    let vaults = client.vaults().unwrap();
    assert_eq!(vaults.len(), 1);
    assert_eq!(
        (vaults[0].name.as_str(), vaults[0].id, vaults[0].pending),
        ("notes", id, true)
    );
    let vault = client.vault("notes").unwrap();
    assert_eq!(vault.get("a.md").await.unwrap().unwrap(), b"one, edited");
    assert_eq!(client.vault(&id.to_string()).unwrap().id(), id);
}

#[tokio::test]
async fn streaming_values_and_abandoned_writes() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir);
    let vault = client.create_vault("media").unwrap();

    // 5 MiB through put_reader, read back through reader.
    let data: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let n = vault.put_reader("video.bin", &data[..]).await.unwrap();
    assert_eq!(n, data.len() as u64);
    let mut reader = vault.reader("video.bin").await.unwrap().unwrap();
    assert_eq!(reader.len(), data.len() as u64);
    let mut back = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut back)
        .await
        .unwrap();
    assert_eq!(back, data);

    // A writer dropped before commit leaves the old value and no temporary file.
    let mut w = vault.writer("video.bin").await.unwrap();
    w.write_all(b"half a new value").await.unwrap();
    assert_eq!(w.written(), 16);
    drop(w);
    assert_eq!(vault.get("video.bin").await.unwrap().unwrap(), data);
    let names: Vec<String> = std::fs::read_dir(vault.folder())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["video.bin"]);

    // A committed writer replaces it.
    let mut w = vault.writer("video.bin").await.unwrap();
    w.write_all(b"small now").await.unwrap();
    assert_eq!(w.commit().await.unwrap(), 9);
    assert_eq!(vault.get("video.bin").await.unwrap().unwrap(), b"small now");

    // A reader opened before a put reads the old value to its end.
    vault.put("doc", vec![1u8; 300_000]).await.unwrap();
    let mut old = vault.reader("doc").await.unwrap().unwrap();
    vault.put("doc", b"new").await.unwrap();
    let mut got = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut old, &mut got)
        .await
        .unwrap();
    assert_eq!(got, vec![1u8; 300_000]);

    // A reader that fails midway leaves the key as it was.
    struct Failing(usize);
    impl tokio::io::AsyncRead for Failing {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if self.0 == 0 {
                return std::task::Poll::Ready(Err(std::io::Error::other("camera unplugged")));
            }
            self.0 -= 1;
            let n = buf.remaining().min(1000);
            buf.put_slice(&[9u8; 1000][..n]);
            std::task::Poll::Ready(Ok(()))
        }
    }
    let err = vault.put_reader("doc", Failing(3000)).await.unwrap_err();
    assert!(err.to_string().contains("camera unplugged"), "{err}");
    assert_eq!(vault.get("doc").await.unwrap().unwrap(), b"new");
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let client = open(&dir);
    let vault = client.create_vault("v").unwrap();

    for key in [
        "",
        "/etc/passwd",
        "a/../b",
        "a//b",
        ".dooz-tmp-x",
        "x/.doozignore",
    ] {
        let err = vault.put(key, b"x").await.unwrap_err();
        assert!(matches!(err, Error::InvalidKey { .. }), "{key:?}: {err}");
        assert!(!err.is_retryable());
        assert!(
            matches!(vault.get(key).await, Err(Error::InvalidKey { .. })),
            "{key:?}"
        );
    }
    vault.put("a/b", b"x").await.unwrap();
    let err = vault.put("a", b"x").await.unwrap_err();
    assert!(matches!(err, Error::KeyCollision { .. }), "{err}");
    assert!(err.to_string().contains("a/"), "{err}");
    let err = vault.put("a/b/c", b"x").await.unwrap_err();
    assert!(matches!(err, Error::KeyCollision { .. }), "{err}");
    assert!(err.to_string().contains("\"a/b\" holds a value"), "{err}");

    assert!(matches!(
        client.create_vault("v"),
        Err(Error::VaultExists { .. })
    ));
    assert!(matches!(
        client.create_vault(""),
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(
        client.vault("nope"),
        Err(Error::NoSuchVault { .. })
    ));

    // Anything needing the server says the device is not enrolled.
    let err = vault.sync().await.unwrap_err();
    assert!(matches!(err, Error::NotEnrolled), "{err}");
    assert!(matches!(
        vault.history("a/b").await,
        Err(Error::NotEnrolled)
    ));
    assert!(matches!(
        client.pair_invite().await,
        Err(Error::NotEnrolled)
    ));
    let err = client.enrol("dooz1-not-a-code").await.unwrap_err();
    assert!(matches!(err, Error::BadCode(_)), "{err}");
    assert!(matches!(
        client.pair_join("nonsense").await,
        Err(Error::BadCode(_))
    ));
    assert!(
        client
            .recover("twelve words that are not the right ones at all sorry")
            .await
            .is_err()
    );

    // One background sync at a time; an unenrolled client's waits for enrolment.
    let handle = client.start_sync().unwrap();
    assert!(matches!(client.start_sync(), Err(Error::AlreadySyncing)));
    assert!(handle.is_running());
    handle.stop().await.unwrap();
    client.start_sync().unwrap().stop().await.unwrap();

    // Another process cannot open the same data dir.
    assert!(Client::open(dir.path().join("dooz")).is_err());
}
