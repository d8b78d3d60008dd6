//! `BlobStore` over any `object_store::ObjectStore`.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, PutPayload};

use crate::store::list_target;
use crate::{BlobKey, BlobMeta, BlobStore, Op, StorageError};

/// A [`BlobStore`] over any [`object_store::ObjectStore`]: in-memory, and S3 and S3-compatible
/// buckets (built by [`S3Config`](crate::S3Config)).
///
/// Keys map one to one onto object paths (every [`BlobKey`] is a valid object path without
/// escaping). Errors are mapped onto [`StorageError`]: missing objects become
/// [`NotFound`](StorageError::NotFound), refused credentials
/// [`Permission`](StorageError::Permission), an S3 `NoSuchBucket`
/// [`NoSuchBucket`](StorageError::NoSuchBucket), network-level failures (refused connections,
/// timeouts) and HTTP 5xx, 429 and 408 answers [`Unavailable`](StorageError::Unavailable) (which
/// [`Retrying`](crate::Retrying) retries), everything else
/// [`Backend`](StorageError::Backend). `put` is as atomic as the object store's own put, which
/// holds for every `object_store` implementation (a single PUT request, or a map insert).
///
/// Objects whose names are not valid [`BlobKey`]s (written by something else) are skipped by
/// listings, with a warning in the log.
#[derive(Debug, Clone)]
pub struct ObjectStoreBackend {
    store: Arc<dyn ObjectStore>,
}

impl ObjectStoreBackend {
    /// Wraps an object store.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self { store }
    }

    /// A new, empty in-memory store ([`object_store::memory::InMemory`]).
    pub fn memory() -> Self {
        Self::new(Arc::new(object_store::memory::InMemory::new()))
    }

    /// The wrapped object store.
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }
}

fn path(key: &BlobKey) -> Path {
    // Every segment of a BlobKey is a legal object path part, so nothing gets escaped.
    Path::from(key.as_str())
}

#[async_trait]
impl BlobStore for ObjectStoreBackend {
    async fn put(&self, key: &BlobKey, data: Bytes) -> Result<(), StorageError> {
        self.store
            .put(&path(key), PutPayload::from(data))
            .await
            .map(|_| ())
            .map_err(|e| StorageError::from_object_store(Op::Put, key.as_str(), e))
    }

    async fn get(&self, key: &BlobKey) -> Result<Bytes, StorageError> {
        let result = self
            .store
            .get(&path(key))
            .await
            .map_err(|e| StorageError::from_object_store(Op::Get, key.as_str(), e))?;
        result
            .bytes()
            .await
            .map_err(|e| StorageError::from_object_store(Op::Get, key.as_str(), e))
    }

    async fn get_range(&self, key: &BlobKey, range: Range<u64>) -> Result<Bytes, StorageError> {
        let invalid = |size: u64| StorageError::InvalidRange {
            key: key.to_string(),
            range: range.clone(),
            size,
        };
        if range.start >= range.end {
            // object_store rejects empty and reversed ranges without looking at the blob; we
            // answer them ourselves, which needs the size.
            let size = self.head(key).await?.size;
            return if range.start == range.end && range.end <= size {
                Ok(Bytes::new())
            } else {
                Err(invalid(size))
            };
        }
        let options = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            ..GetOptions::default()
        };
        let err = |e| StorageError::from_object_store(Op::GetRange, key.as_str(), e);
        match self.store.get_opts(&path(key), options).await {
            Ok(result) => {
                // object_store clamps a range that runs past the end; we do not.
                if range.end > result.meta.size {
                    return Err(invalid(result.meta.size));
                }
                let bytes = result.bytes().await.map_err(err)?;
                let expected = range.end - range.start;
                if bytes.len() as u64 != expected {
                    return Err(StorageError::Backend {
                        op: Op::GetRange,
                        key: key.to_string(),
                        source: format!(
                            "the backend returned {} bytes for a range of {expected}",
                            bytes.len()
                        )
                        .into(),
                    });
                }
                Ok(bytes)
            }
            Err(e @ object_store::Error::NotFound { .. }) => Err(err(e)),
            Err(e) => {
                // A start at or past the end is an error without the size; fetch it to report
                // InvalidRange, and otherwise keep the original error.
                match self.head(key).await {
                    Ok(meta) if range.end > meta.size => Err(invalid(meta.size)),
                    _ => Err(err(e)),
                }
            }
        }
    }

    async fn head(&self, key: &BlobKey) -> Result<BlobMeta, StorageError> {
        let meta = self
            .store
            .head(&path(key))
            .await
            .map_err(|e| StorageError::from_object_store(Op::Head, key.as_str(), e))?;
        Ok(BlobMeta {
            key: key.clone(),
            size: meta.size,
        })
    }

    async fn delete(&self, key: &BlobKey) -> Result<(), StorageError> {
        match self.store.delete(&path(key)).await {
            Ok(()) => Ok(()),
            Err(e) => match StorageError::from_object_store(Op::Delete, key.as_str(), e) {
                // A missing blob is fine; a missing bucket is not.
                e if e.is_not_found() => Ok(()),
                e => Err(e),
            },
        }
    }

    fn list_stream(
        &self,
        prefix: Option<&BlobKey>,
    ) -> BoxStream<'_, Result<BlobMeta, StorageError>> {
        let prefix = prefix.cloned();
        let target = list_target(prefix.as_ref()).to_owned();
        self.store
            .list(prefix.as_ref().map(path).as_ref())
            .filter_map(move |item| {
                let out = match item {
                    Ok(meta) => match BlobKey::new(meta.location.as_ref()) {
                        // Some stores also list the object named exactly like the prefix.
                        Ok(key)
                            if prefix
                                .as_ref()
                                .is_none_or(|p| key.strip_prefix(p).is_some()) =>
                        {
                            Some(Ok(BlobMeta {
                                key,
                                size: meta.size,
                            }))
                        }
                        Ok(_) => None,
                        Err(_) => {
                            tracing::warn!(
                                location = %meta.location,
                                "skipping a stored object whose name is not a valid blob key"
                            );
                            None
                        }
                    },
                    Err(e) => Some(Err(StorageError::from_object_store(Op::List, &target, e))),
                };
                futures::future::ready(out)
            })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lists_skip_foreign_objects_and_the_prefix_itself() {
        let backend = ObjectStoreBackend::memory();
        let raw = backend.object_store();
        raw.put(&Path::from("a/has space"), PutPayload::from_static(b"x"))
            .await
            .unwrap();
        raw.put(&Path::from("a/b"), PutPayload::from_static(b"x"))
            .await
            .unwrap();
        raw.put(&Path::from("a/b/c"), PutPayload::from_static(b"xy"))
            .await
            .unwrap();
        let all = backend.list(None).await.unwrap();
        let keys: Vec<_> = all.iter().map(|m| m.key.as_str()).collect();
        assert_eq!(keys, ["a/b", "a/b/c"]);
        let under = backend
            .list(Some(&BlobKey::new("a/b").unwrap()))
            .await
            .unwrap();
        assert_eq!(
            under,
            [BlobMeta {
                key: BlobKey::new("a/b/c").unwrap(),
                size: 2
            }]
        );
    }

    #[tokio::test]
    async fn reversed_range_is_invalid() {
        let backend = ObjectStoreBackend::memory();
        let key = BlobKey::new("k").unwrap();
        backend
            .put(&key, Bytes::from_static(b"hello"))
            .await
            .unwrap();
        #[allow(clippy::reversed_empty_ranges)]
        let err = backend.get_range(&key, 3..1).await.unwrap_err();
        assert!(
            matches!(err, StorageError::InvalidRange { size: 5, .. }),
            "{err:?}"
        );
    }
}
