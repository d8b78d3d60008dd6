//! The S3 backend against a real S3-compatible server: `s3s-fs` in this process, on
//! 127.0.0.1, checking SigV4 signatures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use dooz_storage::conformance::run_all;
use dooz_storage::{
    BlobKey, BlobStore, FaultInjecting, Metered, Op, PutFaultMode, RetryPolicy, Retrying, S3Config,
    S3Credentials, StorageError, StorageUrl, validate,
};
use tokio::net::TcpListener;

use dooz_storage::testing::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY};

fn key(s: &str) -> BlobKey {
    BlobKey::new(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_the_bucket() -> Result<()> {
    let server = S3Server::start().await?;
    let store = Metered::new(server.config().open_bucket()?);
    let report = run_all(&store).await?;
    assert_eq!(report.passed.len(), 11, "{:?}", report.passed);
    assert_eq!(store.snapshot(), report.calls);
    assert!(store.list(None).await?.is_empty(), "the suite cleans up");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_under_a_url_prefix() -> Result<()> {
    let server = S3Server::start().await?;
    let url = format!(
        "s3://{BUCKET}/tenant-1/vault-2?endpoint={}&region=eu-west-1&path_style=true",
        server.endpoint()
    );
    let StorageUrl::S3(config) = StorageUrl::parse(&url)? else {
        panic!("not an S3 URL");
    };
    // The environment would supply these; tests cannot set it safely while threads run.
    let store = config
        .with_credentials(S3Credentials::new(ACCESS_KEY, SECRET_KEY))
        .open()?;
    let outside = key("tenant-1/vault-20/kept");
    let bucket = server.config().open_bucket()?;
    bucket.put(&outside, Bytes::from_static(b"other")).await?;

    let report = run_all(&store).await?;
    assert_eq!(report.passed.len(), 11);
    assert_eq!(bucket.get(&outside).await?, &b"other"[..]);
    let all = bucket.list(None).await?;
    assert_eq!(all.len(), 1, "{all:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_through_twenty_percent_faults_on_s3() -> Result<()> {
    let server = S3Server::start().await?;
    let faulty = FaultInjecting::new(server.config().open_bucket()?, 6)
        .with_fail_rate(None, 0.2)?
        .with_put_mode(PutFaultMode::AfterWrite);
    let store = Retrying::new(faulty).with_policy(
        RetryPolicy::default().with_backoff(Duration::from_millis(1), Duration::from_millis(20)),
    )?;
    let report = run_all(&store).await?;
    assert_eq!(report.passed.len(), 11);
    assert!(
        store.inner().injected() > 10,
        "{}",
        store.inner().injected()
    );
    assert_eq!(store.retries(), store.inner().injected());
    Ok(())
}

#[tokio::test]
async fn validate_passes_and_leaves_nothing() -> Result<()> {
    let server = S3Server::start().await?;
    let store = server.config().open()?;
    validate(&*store).await?;
    assert!(store.list(None).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn wrong_credentials_are_a_clear_permanent_error() -> Result<()> {
    let server = S3Server::start().await?;
    for credentials in [
        S3Credentials::new(ACCESS_KEY, "not-the-secret"),
        S3Credentials::new("nobody", SECRET_KEY),
    ] {
        let store = server.config().with_credentials(credentials).open()?;
        let err = store
            .put(&key("a/b"), Bytes::from_static(b"x"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StorageError::Permission { op: Op::Put, .. }),
            "{err:?}"
        );
        assert!(!err.is_retryable());
        assert!(
            err.to_string().contains("check the storage credentials"),
            "{err}"
        );

        // validate says which step failed; Retrying does not retry it.
        let retrying = Retrying::new(Arc::clone(&store));
        let err = validate(&retrying).await.unwrap_err();
        assert!(
            matches!(&err, StorageError::Validation { step: "list", source, .. }
                if matches!(**source, StorageError::Permission { .. })),
            "{err:?}"
        );
        assert!(
            !err.is_retryable() && err.to_string().contains("list step"),
            "{err}"
        );
        // A write with the wrong key is refused too.
        let err = store
            .put(&key("a/b"), Bytes::from_static(b"x"))
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::Permission { .. }), "{err:?}");
        assert_eq!(retrying.retries(), 0);
    }
    Ok(())
}

#[tokio::test]
async fn missing_bucket_is_a_clear_error() -> Result<()> {
    let server = S3Server::start().await?;
    let mut config = server.config();
    config.bucket = "no-such-bucket".to_owned();
    let store = config.open()?;
    // validate lists first: s3s-fs (unlike S3) would create the bucket on a put.
    let err = validate(&*store).await.unwrap_err();
    assert!(
        matches!(&err, StorageError::Validation { step: "list", source, .. }
            if matches!(**source, StorageError::NoSuchBucket { op: Op::List, .. })),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    let msg = err.to_string();
    assert!(
        msg.contains("bucket does not exist") && msg.contains("create the bucket"),
        "{msg}"
    );
    let k = key("a/b");
    for err in [
        store.list(None).await.unwrap_err(),
        store.delete(&k).await.unwrap_err(),
    ] {
        assert!(matches!(err, StorageError::NoSuchBucket { .. }), "{err:?}");
    }
    Ok(())
}

#[tokio::test]
async fn server_down_is_retryable() -> Result<()> {
    // A port that was just free: nothing listens there.
    let addr = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    let store = S3Config::new(BUCKET)
        .with_endpoint(format!("http://{addr}"))
        .with_credentials(S3Credentials::new(ACCESS_KEY, SECRET_KEY))
        .open()?;
    let k = key("a/b");
    let err = store.put(&k, Bytes::from_static(b"x")).await.unwrap_err();
    assert!(
        matches!(err, StorageError::Unavailable { op: Op::Put, .. }),
        "{err:?}"
    );
    assert!(err.is_retryable(), "{err:?}");
    assert!(store.get(&k).await.unwrap_err().is_retryable());
    assert!(store.list(None).await.unwrap_err().is_retryable());

    // Retrying gives up after its bound, and says the failure is still transient.
    let policy = RetryPolicy::default()
        .with_max_attempts(3)
        .with_backoff(Duration::from_millis(1), Duration::from_millis(5));
    let retrying = Retrying::new(store).with_policy(policy)?;
    let err = retrying.head(&k).await.unwrap_err();
    assert!(
        matches!(err, StorageError::RetriesExhausted { attempts: 3, .. }),
        "{err:?}"
    );
    assert!(err.is_retryable());
    let err = validate(&retrying).await.unwrap_err();
    assert!(
        err.is_retryable() && err.to_string().contains("list step"),
        "{err}"
    );
    Ok(())
}
