//! Every backend and adapter runs the conformance suite; adapter-specific behaviour and URL
//! opening are tested here too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use anyhow::Result;
use bytes::Bytes;
use dooz_storage::conformance::{ConformanceReport, run_all};
use dooz_storage::{
    BlobKey, BlobStore, FaultInjecting, LocalDir, Metered, ObjectStoreBackend, Op, Prefixed,
    PutFaultMode, StorageError, StorageUrl, open_url,
};

fn key(s: &str) -> BlobKey {
    BlobKey::new(s).unwrap()
}

/// Checks a report lists every check the suite has.
fn assert_complete(report: &ConformanceReport) {
    assert_eq!(report.passed.len(), 11, "{:?}", report.passed);
    assert!(report.calls.requests() > 100, "{:?}", report.calls);
}

mod backends {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory() -> Result<()> {
        let report = run_all(&ObjectStoreBackend::memory()).await?;
        assert_complete(&report);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn local_dir() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = LocalDir::open(dir.path().join("blobs"))?;
        assert_complete(&run_all(&store).await?);
        // The suite cleaned up, and no temporary file survived a put.
        assert!(store.list(None).await?.is_empty());
        let mut stack = vec![dir.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(d)? {
                let entry = entry?;
                assert!(entry.file_type()?.is_dir(), "left behind: {entry:?}");
                stack.push(entry.path());
            }
        }
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prefixed_memory() -> Result<()> {
        let shared = Arc::new(ObjectStoreBackend::memory());
        let outside = key("tenant-1/vault-20/kept");
        shared
            .put(&outside, Bytes::from_static(b"other vault"))
            .await?;

        let store = Prefixed::new(Arc::clone(&shared), key("tenant-1/vault-2"));
        assert_complete(&run_all(&store).await?);
        // Nothing outside the prefix was touched or listed.
        assert_eq!(shared.get(&outside).await?, &b"other vault"[..]);
        assert!(store.list(None).await?.is_empty());
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn metered_local_counts_exactly() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Metered::new(LocalDir::open(dir.path())?);
        let report = run_all(&store).await?;
        assert_complete(&report);
        let snap = store.snapshot();
        assert_eq!(snap, report.calls);
        // The suite's own figures, independent of how it is run: it put the 8 MiB blob once
        // and read it back once whole, and some calls failed on purpose (missing blobs, bad
        // ranges).
        assert!(
            snap.bytes_in > 8 << 20 && snap.bytes_out > 8 << 20,
            "{snap:?}"
        );
        assert!(
            snap.get.failed >= 2 && snap.get_range.failed >= 6,
            "{snap:?}"
        );
        assert_eq!(snap.put.failed + snap.delete.failed + snap.list.failed, 0);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fault_injecting_at_zero() -> Result<()> {
        let store = FaultInjecting::new(ObjectStoreBackend::memory(), 42)
            .with_fail_rate(None, 0.0)?
            .with_put_mode(PutFaultMode::AfterWrite);
        assert_complete(&run_all(&store).await?);
        assert_eq!(store.injected(), 0);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shared_through_arc_dyn() -> Result<()> {
        let store: Arc<dyn BlobStore> = open_url("memory://")?;
        let boxed: Box<dyn BlobStore> = Box::new(Arc::clone(&store));
        assert_complete(&run_all(&boxed).await?);
        Ok(())
    }
}

mod faults {
    use super::*;

    #[tokio::test]
    async fn rate_one_fails_every_call_before_writing() -> Result<()> {
        let store =
            FaultInjecting::new(ObjectStoreBackend::memory(), 7).with_fail_rate(None, 1.0)?;
        let k = key("a/b");
        let results = [
            store.put(&k, Bytes::from_static(b"x")).await.map(|_| ()),
            store.get(&k).await.map(|_| ()),
            store.get_range(&k, 0..1).await.map(|_| ()),
            store.head(&k).await.map(|_| ()),
            store.delete(&k).await,
            store.list(None).await.map(|_| ()),
        ];
        for (op, result) in Op::ALL.iter().zip(results) {
            let err = result.unwrap_err();
            assert!(
                matches!(&err, StorageError::Injected { op: got, .. } if got == op),
                "{op}: {err:?}"
            );
            assert!(err.is_retryable() && !err.is_not_found());
            assert_eq!(store.injected_for(*op), 1);
        }
        assert_eq!(store.injected(), 6);
        // BeforeWrite: the put never reached the inner store.
        assert!(store.inner().get(&k).await.unwrap_err().is_not_found());
        Ok(())
    }

    #[tokio::test]
    async fn after_write_mode_lands_the_write_then_fails() -> Result<()> {
        let store = FaultInjecting::new(ObjectStoreBackend::memory(), 7)
            .with_fail_rate(Some(Op::Put), 1.0)?
            .with_put_mode(PutFaultMode::AfterWrite);
        let k = key("chunk");
        let err = store.put(&k, Bytes::from_static(b"v1")).await.unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        // The write landed, and reads are not failed.
        assert_eq!(store.get(&k).await?, &b"v1"[..]);
        // The store comes back; the retried put of the same bytes is harmless.
        store.set_fail_rate(Some(Op::Put), 0.0)?;
        store.put(&k, Bytes::from_static(b"v1")).await?;
        assert_eq!(store.get(&k).await?, &b"v1"[..]);
        assert_eq!(store.injected(), 1);
        Ok(())
    }

    /// The ok/failed pattern of 1000 gets through a store with `seed` and rate 0.3.
    async fn pattern(seed: u64) -> (Vec<bool>, u64) {
        let store = FaultInjecting::new(ObjectStoreBackend::memory(), seed)
            .with_fail_rate(Some(Op::Get), 0.3)
            .unwrap();
        let k = key("k");
        store.put(&k, Bytes::from_static(b"v")).await.unwrap();
        let mut outcomes = Vec::new();
        for _ in 0..1000 {
            match store.get(&k).await {
                Ok(v) => {
                    assert_eq!(v, &b"v"[..]);
                    outcomes.push(true);
                }
                Err(e) => {
                    assert!(
                        matches!(e, StorageError::Injected { op: Op::Get, .. }),
                        "{e:?}"
                    );
                    outcomes.push(false);
                }
            }
        }
        (outcomes, store.injected())
    }

    #[tokio::test]
    async fn seeded_fraction_is_deterministic() {
        let (a, injected_a) = pattern(2024).await;
        let (b, injected_b) = pattern(2024).await;
        let (c, _) = pattern(2025).await;
        assert_eq!(a, b, "same seed, same failures");
        assert_ne!(a, c, "another seed, other failures");
        let failures = a.iter().filter(|ok| !**ok).count() as u64;
        assert_eq!(failures, injected_a);
        assert_eq!(injected_a, injected_b);
        // Deterministic, so this is a fixed number; the band checks the rate is honoured.
        assert!(
            (250..=350).contains(&failures),
            "{failures} of 1000 failed at rate 0.3"
        );
    }

    #[tokio::test]
    async fn faults_compose_with_metering() -> Result<()> {
        let store = Metered::new(
            FaultInjecting::new(ObjectStoreBackend::memory(), 1)
                .with_fail_rate(Some(Op::Head), 1.0)?,
        );
        let k = key("k");
        store.put(&k, Bytes::from_static(b"abc")).await?;
        assert!(store.head(&k).await.unwrap_err().is_retryable());
        let snap = store.snapshot();
        assert_eq!((snap.head.ok, snap.head.failed), (0, 1));
        assert_eq!((snap.put.ok, snap.bytes_in), (1, 3));
        assert_eq!(store.inner().injected(), 1);
        Ok(())
    }
}

mod urls {
    use super::*;

    #[tokio::test]
    async fn memory_url_opens_a_fresh_store() -> Result<()> {
        let a = open_url("memory://")?;
        let b = open_url("memory://")?;
        a.put(&key("k"), Bytes::from_static(b"v")).await?;
        assert_eq!(a.get(&key("k")).await?, &b"v"[..]);
        assert!(b.get(&key("k")).await.unwrap_err().is_not_found());
        Ok(())
    }

    #[tokio::test]
    async fn file_url_creates_the_directory_and_persists() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("new/nested/store");
        let url = url_for(&root);
        {
            let store = open_url(&url)?;
            store
                .put(&key("t/v/c"), Bytes::from_static(b"data"))
                .await?;
        }
        assert!(root.is_dir());
        assert_eq!(std::fs::read(root.join("t/v/c"))?, b"data");
        // Reopening, by URL or by plain path, sees the blob.
        let again = open_url(&url)?;
        assert_eq!(again.get(&key("t/v/c")).await?, &b"data"[..]);
        let by_path = open_url(root.to_str().unwrap())?;
        assert_eq!(by_path.head(&key("t/v/c")).await?.size, 4);
        Ok(())
    }

    fn url_for(path: &std::path::Path) -> String {
        url::Url::from_file_path(path).unwrap().to_string()
    }

    #[test]
    fn local_path_that_is_a_file_fails_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        let err = open_url(file.to_str().unwrap()).unwrap_err();
        assert!(matches!(err, StorageError::Open { .. }), "{err:?}");
        assert!(
            err.to_string().contains("cannot open local blob directory"),
            "{err}"
        );
    }

    #[test]
    fn unsupported_and_invalid_urls_say_what_works() {
        // s3:// parses; tests/s3.rs opens it against a real server.
        assert!(matches!(
            StorageUrl::parse("s3://bucket/tenants").unwrap(),
            StorageUrl::S3(_)
        ));
        let err = open_url("s3://bucket/tenants?endpoint=http://example.com").unwrap_err();
        assert!(err.to_string().contains("allow_http"), "{err}");

        let err = open_url("ftp://host/x").unwrap_err();
        assert!(matches!(&err, StorageError::UnsupportedScheme { scheme, .. } if scheme == "ftp"));
        assert!(err.to_string().contains("memory://"), "{err}");

        let err = open_url("").unwrap_err();
        assert!(matches!(err, StorageError::InvalidUrl { .. }), "{err:?}");

        assert_eq!(StorageUrl::parse("memory://").unwrap(), StorageUrl::Memory);
    }
}
