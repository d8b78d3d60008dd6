//! Per-tenant blob backends: a [`BlobStore`] that sends each operation to the backend of the
//! tenant its key belongs to (blob keys start with the tenant id: `<tenant>/<vault hex>/...`),
//! or to the server's default backend. Tenants that bring their own bucket get their own
//! backend; while a tenant's blobs move from one backend to another, reads try the new backend
//! first and then the old one, writes go to the new one, and deletes go to both.
//!
//! [`migrate`] moves a tenant's blobs: for each blob under `<tenant>/` in the old backend it
//! copies the blob to the new one (unless it is there already), then deletes it from the old
//! one. A reader that missed a blob in the new backend and then finds it gone from the old one
//! (the copy finished in between) looks in the new backend again, so reads keep working
//! throughout. Progress is visible through [`Migration`].

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use dooz_storage::{BlobKey, BlobMeta, BlobStore, StorageError};
use futures::StreamExt as _;
use futures::stream::BoxStream;

use crate::store::TenantId;

/// Where one tenant's blobs are.
#[derive(Debug, Clone)]
pub enum Route {
    /// In this backend.
    Store(Arc<dyn BlobStore>),
    /// Moving from `old` to `new`.
    Moving {
        /// Where they go.
        new: Arc<dyn BlobStore>,
        /// Where they were.
        old: Arc<dyn BlobStore>,
    },
}

/// The progress of one tenant's migration.
#[derive(Debug, Default)]
pub struct Migration {
    /// Blobs found in the old backend (known once listing finished).
    pub total: AtomicU64,
    /// Blobs moved so far.
    pub moved: AtomicU64,
    /// Bytes moved so far.
    pub bytes: AtomicU64,
    /// Whether the listing finished (`total` is final).
    pub listed: AtomicBool,
}

/// The routing backend.
#[derive(Debug)]
pub struct TenantRouted {
    default: Arc<dyn BlobStore>,
    routes: RwLock<HashMap<TenantId, Route>>,
}

fn tenant_of(key: &BlobKey) -> Option<TenantId> {
    key.segments()
        .next()
        .and_then(|s| s.parse::<u64>().ok())
        .map(TenantId::new)
}

impl TenantRouted {
    /// Every tenant on `default` until routed elsewhere.
    pub fn new(default: Arc<dyn BlobStore>) -> Self {
        Self {
            default,
            routes: RwLock::new(HashMap::new()),
        }
    }

    /// The server's default backend.
    pub fn default_store(&self) -> &Arc<dyn BlobStore> {
        &self.default
    }

    /// Sets where `tenant`'s blobs are; `None`: the default backend.
    pub fn set_route(&self, tenant: TenantId, route: Option<Route>) {
        let mut routes = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        match route {
            Some(r) => routes.insert(tenant, r),
            None => routes.remove(&tenant),
        };
    }

    /// Where `tenant`'s blobs are now.
    pub fn route(&self, tenant: TenantId) -> Route {
        self.routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&tenant)
            .cloned()
            .unwrap_or_else(|| Route::Store(Arc::clone(&self.default)))
    }

    fn route_of(&self, key: &BlobKey) -> Route {
        match tenant_of(key) {
            Some(t) => self.route(t),
            None => Route::Store(Arc::clone(&self.default)),
        }
    }
}

/// Reads from `new`, then `old`, then `new` again (a copy may have finished in between).
macro_rules! read {
    ($self:ident, $key:ident, |$s:ident| $call:expr) => {
        match $self.route_of($key) {
            Route::Store($s) => $call,
            Route::Moving { new, old } => {
                let first = {
                    let $s = &new;
                    $call
                };
                match first {
                    Err(e) if e.is_not_found() => {
                        let second = {
                            let $s = &old;
                            $call
                        };
                        match second {
                            Err(e) if e.is_not_found() => {
                                let $s = &new;
                                $call
                            }
                            other => other,
                        }
                    }
                    other => other,
                }
            }
        }
    };
}

#[async_trait]
impl BlobStore for TenantRouted {
    async fn put(&self, key: &BlobKey, data: Bytes) -> Result<(), StorageError> {
        match self.route_of(key) {
            Route::Store(s) | Route::Moving { new: s, .. } => s.put(key, data).await,
        }
    }

    async fn get(&self, key: &BlobKey) -> Result<Bytes, StorageError> {
        read!(self, key, |s| s.get(key).await)
    }

    async fn get_range(&self, key: &BlobKey, range: Range<u64>) -> Result<Bytes, StorageError> {
        read!(self, key, |s| s.get_range(key, range.clone()).await)
    }

    async fn head(&self, key: &BlobKey) -> Result<BlobMeta, StorageError> {
        read!(self, key, |s| s.head(key).await)
    }

    async fn delete(&self, key: &BlobKey) -> Result<(), StorageError> {
        match self.route_of(key) {
            Route::Store(s) => s.delete(key).await,
            Route::Moving { new, old } => {
                new.delete(key).await?;
                old.delete(key).await
            }
        }
    }

    async fn put_unsynced(&self, key: &BlobKey, data: Bytes) -> Result<(), StorageError> {
        match self.route_of(key) {
            Route::Store(s) | Route::Moving { new: s, .. } => s.put_unsynced(key, data).await,
        }
    }

    async fn sync(&self, blobs: &[BlobMeta]) -> Result<Vec<BlobKey>, StorageError> {
        // Group by backend (unsynced writes went to the route's `new` or only store).
        let mut groups: Vec<(Arc<dyn BlobStore>, Vec<BlobMeta>)> = Vec::new();
        for blob in blobs {
            let store = match self.route_of(&blob.key) {
                Route::Store(s) | Route::Moving { new: s, .. } => s,
            };
            match groups.iter_mut().find(|(s, _)| Arc::ptr_eq(s, &store)) {
                Some((_, metas)) => metas.push(blob.clone()),
                None => groups.push((store, vec![blob.clone()])),
            }
        }
        let mut lost = Vec::new();
        for (store, metas) in groups {
            lost.extend(store.sync(&metas).await?);
        }
        Ok(lost)
    }

    fn list_stream(
        &self,
        prefix: Option<&BlobKey>,
    ) -> BoxStream<'_, Result<BlobMeta, StorageError>> {
        let Some(prefix) = prefix else {
            // Every backend: the default one and each tenant's.
            let mut stores: Vec<Arc<dyn BlobStore>> = vec![Arc::clone(&self.default)];
            for route in self
                .routes
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .values()
            {
                let (a, b) = match route {
                    Route::Store(s) => (Arc::clone(s), None),
                    Route::Moving { new, old } => (Arc::clone(new), Some(Arc::clone(old))),
                };
                for s in [Some(a), b].into_iter().flatten() {
                    if !stores.iter().any(|x| Arc::ptr_eq(x, &s)) {
                        stores.push(s);
                    }
                }
            }
            return list_union(stores, None);
        };
        match self.route_of(prefix) {
            Route::Store(s) => list_union(vec![s], Some(prefix.clone())),
            Route::Moving { new, old } => list_union(vec![new, old], Some(prefix.clone())),
        }
    }
}

/// The blobs of several backends under `prefix`, each key once.
fn list_union(
    stores: Vec<Arc<dyn BlobStore>>,
    prefix: Option<BlobKey>,
) -> BoxStream<'static, Result<BlobMeta, StorageError>> {
    let stream = async_stream(stores, prefix);
    Box::pin(stream)
}

fn async_stream(
    stores: Vec<Arc<dyn BlobStore>>,
    prefix: Option<BlobKey>,
) -> impl futures::Stream<Item = Result<BlobMeta, StorageError>> + Send + 'static {
    futures::stream::once(async move {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for store in stores {
            for blob in store.list(prefix.as_ref()).await? {
                if seen.insert(blob.key.clone()) {
                    out.push(Ok(blob));
                }
            }
        }
        Ok::<_, StorageError>(futures::stream::iter(out))
    })
    .map(|r| match r {
        Ok(s) => s.left_stream(),
        Err(e) => futures::stream::iter(vec![Err(e)]).right_stream(),
    })
    .flatten()
}

/// Moves every blob of `tenant` from `old` to `new` (see the module docs), counting progress in
/// `progress`. Stops at the first error, leaving the rest for a later run.
pub async fn migrate(
    tenant: TenantId,
    old: &dyn BlobStore,
    new: &dyn BlobStore,
    progress: &Migration,
) -> Result<(), StorageError> {
    let prefix = BlobKey::new(&tenant.to_string())?;
    // Until a listing of `old` comes back empty: a write routed to `old` just before the route
    // changed may land there after the first listing.
    let mut first = true;
    loop {
        let blobs = old.list(Some(&prefix)).await?;
        if first {
            progress.total.store(
                u64::try_from(blobs.len()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            progress.listed.store(true, Ordering::Relaxed);
            first = false;
        } else if blobs.is_empty() {
            return Ok(());
        } else {
            progress.total.fetch_add(
                u64::try_from(blobs.len()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
        }
        if blobs.is_empty() {
            return Ok(());
        }
        for blob in blobs {
            move_one(old, new, &blob).await?;
            progress.moved.fetch_add(1, Ordering::Relaxed);
            progress.bytes.fetch_add(blob.size, Ordering::Relaxed);
        }
    }
}

/// Copies one blob to `new` unless it is there with the same bytes, then deletes it from
/// `old`.
async fn move_one(
    old: &dyn BlobStore,
    new: &dyn BlobStore,
    blob: &BlobMeta,
) -> Result<(), StorageError> {
    let data = match old.get(&blob.key).await {
        Ok(data) => data,
        // Deleted meanwhile (GC, account deletion): nothing to move.
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(e),
    };
    let there = match new.get(&blob.key).await {
        Ok(existing) => existing == data,
        Err(e) if e.is_not_found() => false,
        Err(e) => return Err(e),
    };
    if !there {
        new.put(&blob.key, data).await?;
    }
    old.delete(&blob.key).await
}
