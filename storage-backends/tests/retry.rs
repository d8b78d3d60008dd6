//! `Retrying` over `FaultInjecting`: transient faults are retried within the bound, permanent
//! errors are not. Time is paused: backoff waits take no real time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use dooz_storage::conformance::run_all;
use dooz_storage::{
    BlobKey, BlobStore, FaultInjecting, Metered, ObjectStoreBackend, Op, PutFaultMode, RetryPolicy,
    Retrying, StorageError,
};

fn key(s: &str) -> BlobKey {
    BlobKey::new(s).unwrap()
}

fn faulty(rate: f64, seed: u64) -> FaultInjecting<Metered<ObjectStoreBackend>> {
    FaultInjecting::new(Metered::new(ObjectStoreBackend::memory()), seed)
        .with_fail_rate(None, rate)
        .unwrap()
        .with_put_mode(PutFaultMode::AfterWrite)
}

/// Every kind of call, many times; each must succeed and return the right answer.
async fn workload(store: &dyn BlobStore) -> Result<()> {
    for i in 0..100u32 {
        let k = key(&format!("w/{}/{i}", i % 7));
        let data = Bytes::from(format!("blob number {i}"));
        store.put(&k, data.clone()).await?;
        assert_eq!(store.get(&k).await?, data);
        assert_eq!(store.get_range(&k, 5..11).await?, &data[5..11]);
        assert_eq!(store.head(&k).await?.size, data.len() as u64);
        store.put_unsynced(&k, data.clone()).await?;
        let meta = store.head(&k).await?;
        assert!(store.sync(&[meta]).await?.is_empty());
        if i % 2 == 0 {
            store.delete(&k).await?;
        }
    }
    assert_eq!(store.list(None).await?.len(), 50);
    assert_eq!(store.list(Some(&key("w/3"))).await?.len(), 7);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn twenty_percent_faults_every_operation_succeeds() -> Result<()> {
    for seed in [1, 2, 3] {
        let store = Retrying::new(faulty(0.2, seed));
        workload(&store).await?;
        let injected = store.inner().injected();
        assert!(injected > 50, "seed {seed}: only {injected} faults");
        assert_eq!(store.retries(), injected);
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn twenty_percent_faults_pass_conformance() -> Result<()> {
    let store = Retrying::new(faulty(0.2, 99));
    let report = run_all(&store).await?;
    assert_eq!(report.passed.len(), 11);
    assert!(store.inner().injected() > 10);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn all_faults_surface_after_max_attempts() -> Result<()> {
    let policy = RetryPolicy::default().with_max_attempts(5);
    let store = Retrying::new(faulty(1.0, 4)).with_policy(policy)?;
    let err = store.get(&key("k")).await.unwrap_err();
    let StorageError::RetriesExhausted {
        op,
        attempts,
        elapsed,
        last,
        ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!((*op, *attempts), (Op::Get, 5));
    assert!(*elapsed <= store.policy().max_elapsed);
    assert!(matches!(**last, StorageError::Injected { op: Op::Get, .. }));
    assert!(err.is_retryable(), "the backend may come back");
    assert!(err.to_string().contains("after 5 attempts"), "{err}");
    assert_eq!(store.inner().injected(), 5);
    assert_eq!(store.retries(), 4);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn all_faults_surface_within_max_elapsed() -> Result<()> {
    let policy = RetryPolicy::default()
        .with_max_attempts(u32::MAX)
        .with_max_elapsed(Duration::from_secs(20))
        .with_backoff(Duration::from_millis(100), Duration::from_secs(2));
    let store = Retrying::new(faulty(1.0, 5)).with_policy(policy)?;
    let start = tokio::time::Instant::now();
    let err = store
        .put(&key("k"), Bytes::from_static(b"v"))
        .await
        .unwrap_err();
    let StorageError::RetriesExhausted {
        attempts, elapsed, ..
    } = err
    else {
        panic!("{err:?}");
    };
    assert!(elapsed <= Duration::from_secs(20), "{elapsed:?}");
    assert!(start.elapsed() <= Duration::from_secs(20));
    // At most 2 s apart, so a 20 s budget takes at least 10 attempts.
    assert!(attempts >= 10, "{attempts}");
    assert_eq!(u64::from(attempts), store.inner().injected());
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_return_at_once() -> Result<()> {
    let store = Retrying::new(faulty(0.0, 6));
    let err = store.get(&key("missing")).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    store.put(&key("k"), Bytes::from_static(b"abc")).await?;
    let err = store.get_range(&key("k"), 2..9).await.unwrap_err();
    assert!(matches!(err, StorageError::InvalidRange { .. }), "{err:?}");
    assert_eq!(store.retries(), 0);
    let calls = store.inner().inner().snapshot();
    assert_eq!((calls.get.failed, calls.get_range.failed), (1, 1));
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn list_stream_retries_the_whole_listing() -> Result<()> {
    use futures::TryStreamExt;
    let store = Retrying::new(faulty(0.0, 7));
    for i in 0..5 {
        store.put(&key(&format!("p/{i}")), Bytes::new()).await?;
    }
    store.inner().set_fail_rate(Some(Op::List), 0.5)?;
    for _ in 0..10 {
        let listed: Vec<_> = store.list_stream(Some(&key("p"))).try_collect().await?;
        assert_eq!(listed.len(), 5);
    }
    assert!(store.retries() > 0);
    Ok(())
}
