//! The `BlobStore` trait.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use futures::stream::BoxStream;

use crate::{BlobKey, StorageError};

/// A stored blob's key and size, as returned by [`BlobStore::head`] and [`BlobStore::list`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlobMeta {
    /// The blob's key.
    pub key: BlobKey,
    /// The blob's size in bytes.
    pub size: u64,
}

/// A flat store of opaque byte blobs under [`BlobKey`]s.
///
/// Implementations must uphold these rules; `conformance::run_all` (cargo feature
/// `conformance`) checks them:
///
/// - `put` is atomic: a reader sees either the old blob or the whole new one, never a part.
/// - `get_range` needs `start <= end <= size` and returns
///   [`StorageError::InvalidRange`] otherwise; an empty range within the blob returns no bytes.
/// - `delete` of a missing key succeeds.
/// - A missing blob gives [`StorageError::NotFound`] from `get`, `get_range` and `head`.
/// - `list(Some(p))` returns the blobs whose keys lie strictly under `p` by whole segments: `a/b`
///   lists `a/b/x` but neither `a/bc/x` nor a blob named exactly `a/b`.
#[async_trait]
pub trait BlobStore: Send + Sync + fmt::Debug + 'static {
    /// Stores `data` under `key`, replacing any blob there.
    async fn put(&self, key: &BlobKey, data: Bytes) -> Result<(), StorageError>;

    /// Reads the whole blob.
    async fn get(&self, key: &BlobKey) -> Result<Bytes, StorageError>;

    /// Reads bytes `range.start..range.end` of the blob.
    async fn get_range(&self, key: &BlobKey, range: Range<u64>) -> Result<Bytes, StorageError>;

    /// The blob's key and size.
    async fn head(&self, key: &BlobKey) -> Result<BlobMeta, StorageError>;

    /// Removes the blob; succeeds if there is none.
    async fn delete(&self, key: &BlobKey) -> Result<(), StorageError>;

    /// Stores `data` under `key` like [`put`](Self::put) (atomically), but the blob need not
    /// survive a crash until a later [`sync`](Self::sync) names it. Backends that have nothing
    /// cheaper make it durable at once: the default calls `put`.
    async fn put_unsynced(&self, key: &BlobKey, data: Bytes) -> Result<(), StorageError> {
        self.put(key, data).await
    }

    /// Makes durable the blobs that [`put_unsynced`](Self::put_unsynced) wrote, and checks that
    /// each is there whole. Returns the keys of the blobs that are missing or whose size is not
    /// the one given (a crash lost them); every other blob named is durable when this returns
    /// `Ok`. The default (for backends whose puts are durable at once) reports none lost.
    async fn sync(&self, blobs: &[BlobMeta]) -> Result<Vec<BlobKey>, StorageError> {
        let _ = blobs;
        Ok(Vec::new())
    }

    /// Streams the blobs under `prefix` (or all blobs), in no particular order.
    fn list_stream(
        &self,
        prefix: Option<&BlobKey>,
    ) -> BoxStream<'_, Result<BlobMeta, StorageError>>;

    /// The blobs under `prefix` (or all blobs), sorted by key.
    async fn list(&self, prefix: Option<&BlobKey>) -> Result<Vec<BlobMeta>, StorageError> {
        let mut blobs: Vec<BlobMeta> = self.list_stream(prefix).try_collect().await?;
        blobs.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        Ok(blobs)
    }
}

macro_rules! delegate_blob_store {
    ($ptr:ident) => {
        #[async_trait]
        impl<T: BlobStore + ?Sized> BlobStore for $ptr<T> {
            async fn put(&self, key: &BlobKey, data: Bytes) -> Result<(), StorageError> {
                (**self).put(key, data).await
            }

            async fn get(&self, key: &BlobKey) -> Result<Bytes, StorageError> {
                (**self).get(key).await
            }

            async fn get_range(
                &self,
                key: &BlobKey,
                range: Range<u64>,
            ) -> Result<Bytes, StorageError> {
                (**self).get_range(key, range).await
            }

            async fn head(&self, key: &BlobKey) -> Result<BlobMeta, StorageError> {
                (**self).head(key).await
            }

            async fn delete(&self, key: &BlobKey) -> Result<(), StorageError> {
                (**self).delete(key).await
            }

            async fn put_unsynced(&self, key: &BlobKey, data: Bytes) -> Result<(), StorageError> {
                (**self).put_unsynced(key, data).await
            }

            async fn sync(&self, blobs: &[BlobMeta]) -> Result<Vec<BlobKey>, StorageError> {
                (**self).sync(blobs).await
            }

            fn list_stream(
                &self,
                prefix: Option<&BlobKey>,
            ) -> BoxStream<'_, Result<BlobMeta, StorageError>> {
                (**self).list_stream(prefix)
            }

            async fn list(&self, prefix: Option<&BlobKey>) -> Result<Vec<BlobMeta>, StorageError> {
                (**self).list(prefix).await
            }
        }
    };
}

delegate_blob_store!(Arc);
delegate_blob_store!(Box);

/// How errors and logs name the target of a list call.
pub(crate) fn list_target(prefix: Option<&BlobKey>) -> &str {
    prefix.map_or("(all blobs)", BlobKey::as_str)
}
