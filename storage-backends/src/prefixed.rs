//! Scoping a store under a key prefix.

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::store::list_target;
use crate::{BlobKey, BlobMeta, BlobStore, Op, StorageError};

/// Scopes every key of an inner store under a fixed prefix, such as `<tenant>/<vault>`.
///
/// Key `k` is stored as `<prefix>/k`; listings return keys with the prefix stripped. Because
/// [`BlobKey`]s have no `..` or absolute form, no key reaches outside the prefix, and listings
/// never show blobs outside it. Errors about a missing blob or a bad range name the caller's
/// key; other errors keep the full inner key for the operator.
#[derive(Debug, Clone)]
pub struct Prefixed<S> {
    inner: S,
    prefix: BlobKey,
}

impl<S: BlobStore> Prefixed<S> {
    /// Scopes `inner` under `prefix`.
    pub fn new(inner: S, prefix: BlobKey) -> Self {
        Self { inner, prefix }
    }

    /// The prefix.
    pub fn prefix(&self) -> &BlobKey {
        &self.prefix
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner store.
    pub fn into_inner(self) -> S {
        self.inner
    }

    fn scoped(&self, key: &BlobKey) -> Result<BlobKey, StorageError> {
        self.prefix.join_key(key)
    }
}

/// Names the caller's key instead of the inner one in caller-facing errors.
fn outer_error(err: StorageError, key: &BlobKey) -> StorageError {
    match err {
        StorageError::NotFound { .. } => StorageError::NotFound {
            key: key.to_string(),
        },
        StorageError::InvalidRange { range, size, .. } => StorageError::InvalidRange {
            key: key.to_string(),
            range,
            size,
        },
        other => other,
    }
}

#[async_trait]
impl<S: BlobStore> BlobStore for Prefixed<S> {
    async fn put(&self, key: &BlobKey, data: Bytes) -> Result<(), StorageError> {
        let scoped = self.scoped(key)?;
        self.inner
            .put(&scoped, data)
            .await
            .map_err(|e| outer_error(e, key))
    }

    async fn get(&self, key: &BlobKey) -> Result<Bytes, StorageError> {
        let scoped = self.scoped(key)?;
        self.inner
            .get(&scoped)
            .await
            .map_err(|e| outer_error(e, key))
    }

    async fn get_range(&self, key: &BlobKey, range: Range<u64>) -> Result<Bytes, StorageError> {
        let scoped = self.scoped(key)?;
        self.inner
            .get_range(&scoped, range)
            .await
            .map_err(|e| outer_error(e, key))
    }

    async fn head(&self, key: &BlobKey) -> Result<BlobMeta, StorageError> {
        let scoped = self.scoped(key)?;
        let meta = self
            .inner
            .head(&scoped)
            .await
            .map_err(|e| outer_error(e, key))?;
        Ok(BlobMeta {
            key: key.clone(),
            size: meta.size,
        })
    }

    async fn delete(&self, key: &BlobKey) -> Result<(), StorageError> {
        let scoped = self.scoped(key)?;
        self.inner
            .delete(&scoped)
            .await
            .map_err(|e| outer_error(e, key))
    }

    async fn put_unsynced(&self, key: &BlobKey, data: Bytes) -> Result<(), StorageError> {
        let scoped = self.scoped(key)?;
        self.inner
            .put_unsynced(&scoped, data)
            .await
            .map_err(|e| outer_error(e, key))
    }

    async fn sync(&self, blobs: &[BlobMeta]) -> Result<Vec<BlobKey>, StorageError> {
        let scoped = blobs
            .iter()
            .map(|b| {
                Ok(BlobMeta {
                    key: self.scoped(&b.key)?,
                    size: b.size,
                })
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        let lost = self.inner.sync(&scoped).await?;
        Ok(lost
            .into_iter()
            .filter_map(|k| k.strip_prefix(&self.prefix))
            .collect())
    }

    fn list_stream(
        &self,
        prefix: Option<&BlobKey>,
    ) -> BoxStream<'_, Result<BlobMeta, StorageError>> {
        let scope = match prefix {
            Some(p) => match self.scoped(p) {
                Ok(scope) => scope,
                Err(e) => return futures::stream::once(futures::future::ready(Err(e))).boxed(),
            },
            None => self.prefix.clone(),
        };
        let target = list_target(prefix).to_owned();
        self.inner
            .list_stream(Some(&scope))
            .map(move |item| {
                let meta = item?;
                match meta.key.strip_prefix(&self.prefix) {
                    Some(key) => Ok(BlobMeta {
                        key,
                        size: meta.size,
                    }),
                    None => Err(StorageError::Backend {
                        op: Op::List,
                        key: target.clone(),
                        source: format!(
                            "the inner store listed `{}`, which is outside the prefix `{}`",
                            meta.key, self.prefix
                        )
                        .into(),
                    }),
                }
            })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ObjectStoreBackend;
    use std::sync::Arc;

    fn key(s: &str) -> BlobKey {
        BlobKey::new(s).unwrap()
    }

    #[tokio::test]
    async fn scopes_keys_and_listings() {
        let shared = Arc::new(ObjectStoreBackend::memory());
        let a = Prefixed::new(Arc::clone(&shared), key("tenant-a/vault-1"));
        let b = Prefixed::new(Arc::clone(&shared), key("tenant-a/vault-10"));
        a.put(&key("c/1"), Bytes::from_static(b"a1")).await.unwrap();
        b.put(&key("c/1"), Bytes::from_static(b"b1")).await.unwrap();

        assert_eq!(a.get(&key("c/1")).await.unwrap(), &b"a1"[..]);
        assert_eq!(
            shared.get(&key("tenant-a/vault-1/c/1")).await.unwrap(),
            &b"a1"[..]
        );
        // "vault-1" must not list "vault-10"'s blobs.
        let listed = a.list(None).await.unwrap();
        assert_eq!(
            listed,
            [BlobMeta {
                key: key("c/1"),
                size: 2
            }]
        );
        assert_eq!(a.list(Some(&key("c"))).await.unwrap(), listed);
        assert_eq!(a.head(&key("c/1")).await.unwrap().key, key("c/1"));

        let err = a.get(&key("missing")).await.unwrap_err();
        assert!(
            matches!(&err, StorageError::NotFound { key } if key == "missing"),
            "{err:?}"
        );
        let err = a.get_range(&key("c/1"), 0..9).await.unwrap_err();
        assert!(
            matches!(&err, StorageError::InvalidRange { key, size: 2, .. } if key == "c/1"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn keys_too_long_after_prefixing_are_rejected() {
        let store = Prefixed::new(ObjectStoreBackend::memory(), key("p"));
        let long = key(&"k".repeat(BlobKey::MAX_LEN));
        let err = store.put(&long, Bytes::new()).await.unwrap_err();
        assert!(matches!(err, StorageError::InvalidKey { .. }), "{err:?}");
        let err = store.list(Some(&long)).await.unwrap_err();
        assert!(matches!(err, StorageError::InvalidKey { .. }), "{err:?}");
    }
}
