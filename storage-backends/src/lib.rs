//! Blob stores for Dooz Sync: a narrow async [`BlobStore`] trait over [`object_store`], the
//! backends behind it, and adapters that wrap any store.
//!
//! The crate stores opaque bytes under validated [`BlobKey`]s and knows nothing of what they
//! hold: the server keeps sealed chunks and packs under `<tenant>/<vault>/...`.
//!
//! - Backends, opened by URL with [`open_url`] (or [`StorageUrl`] to parse first):
//!   - `memory://` ([`ObjectStoreBackend::memory`]), for tests;
//!   - `file:///abs/path` or a plain path ([`LocalDir`]);
//!   - `s3://bucket/prefix?endpoint=http://127.0.0.1:9000&region=us-east-1&path_style=true`: an
//!     S3 or S3-compatible bucket ([`ObjectStoreBackend`] over object_store's `AmazonS3`), with
//!     credentials from `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`. [`S3Config`] is the
//!     same in typed form, with credentials of its own (a tenant-provided bucket).
//! - Adapters: [`Prefixed`] scopes a store under a prefix (a tenant's vault), [`Metered`] counts
//!   requests and bytes, [`Retrying`] retries transient failures with exponential backoff and
//!   full jitter within a [`RetryPolicy`], [`FaultInjecting`] fails a seeded fraction of calls
//!   for tests.
//! - [`validate()`]: a list, write, read and delete of a probe blob, naming the step that
//!   failed.
//! - `conformance` (cargo feature `conformance`): the suite every backend runs.
//! - `testing` (cargo feature `s3-test-server`): [`testing::S3Server`], an S3-compatible server
//!   in the test's process, for tests of this and other crates.
//!
//! # Durability
//!
//! `put` is atomic on every backend: readers see the old blob or the whole new one. On
//! [`LocalDir`], a `put` that returned `Ok` also survives a crash or power loss (on Linux one
//! `syncfs` covers every put waiting at that moment; elsewhere file and directory are fsynced;
//! see its docs). `object_store`'s own local store does not fsync,
//! which is why [`LocalDir`] writes itself. On S3, a PUT that returned is durable (S3 answers
//! only once the object is stored), so `put_unsynced` is a plain put and `sync` reports nothing
//! lost.
//!
//! # Errors
//!
//! Every call returns [`StorageError`]. [`StorageError::is_retryable`] marks transient failures
//! (an unreachable backend, HTTP 5xx, 429 and timeouts, injected faults);
//! [`StorageError::is_not_found`] a missing blob. Wrong credentials
//! ([`StorageError::Permission`]) and a missing bucket ([`StorageError::NoSuchBucket`]) are
//! permanent. The S3 backend makes one attempt per call: wrap it in [`Retrying`].
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use dooz_storage::{BlobKey, BlobStore, Metered, Prefixed, open_url};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), dooz_storage::StorageError> {
//! let store = open_url("memory://")?;
//! let vault = Metered::new(Prefixed::new(store, BlobKey::new("tenant-1/vault-7")?));
//!
//! let key = BlobKey::new("chunks/ab/ab12")?;
//! vault.put(&key, Bytes::from_static(b"sealed bytes")).await?;
//! assert_eq!(vault.get_range(&key, 0..6).await?, &b"sealed"[..]);
//! assert_eq!(vault.head(&key).await?.size, 12);
//! assert!(vault.get(&BlobKey::new("chunks/none")?).await.unwrap_err().is_not_found());
//!
//! let listed = vault.list(Some(&BlobKey::new("chunks")?)).await?;
//! assert_eq!(listed[0].key.as_str(), "chunks/ab/ab12");
//!
//! let meter = vault.snapshot();
//! assert_eq!((meter.bytes_in, meter.bytes_out), (12, 6));
//! assert_eq!(meter.get.failed, 1);
//! # Ok(())
//! # }
//! ```

mod error;
mod fault;
mod key;
mod local;
mod metered;
mod object_store_backend;
mod open;
mod prefixed;
mod retry;
mod s3;
mod store;
mod validate;

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "s3-test-server")]
pub mod testing;

pub use crate::{
    error::{BoxError, Op, StorageError},
    fault::{FaultInjecting, PutFaultMode},
    key::BlobKey,
    local::LocalDir,
    metered::{Meter, MeterSnapshot, Metered, OpCounts},
    object_store_backend::ObjectStoreBackend,
    open::{StorageUrl, open_url},
    prefixed::Prefixed,
    retry::{RetryPolicy, Retrying},
    s3::{S3Config, S3Credentials},
    store::{BlobMeta, BlobStore},
    validate::{PROBE_PREFIX, validate},
};
