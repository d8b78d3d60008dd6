//! Counting requests and bytes.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::{BlobKey, BlobMeta, BlobStore, Op, StorageError};

/// Successful and failed requests of one operation kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct OpCounts {
    /// Requests that returned `Ok`.
    pub ok: u64,
    /// Requests that returned an error.
    pub failed: u64,
}

/// A point-in-time copy of a [`Meter`]'s counters.
///
/// Bytes count only successful calls: `bytes_in` is the payload of successful puts, `bytes_out`
/// the bytes returned by successful gets and range gets. Listings and heads move no blob bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct MeterSnapshot {
    /// Bytes written by successful puts.
    pub bytes_in: u64,
    /// Bytes returned by successful gets and range gets.
    pub bytes_out: u64,
    /// Put requests.
    pub put: OpCounts,
    /// Get requests.
    pub get: OpCounts,
    /// Range-get requests.
    pub get_range: OpCounts,
    /// Head requests.
    pub head: OpCounts,
    /// Delete requests.
    pub delete: OpCounts,
    /// List requests (one per `list` call or `list_stream` stream).
    pub list: OpCounts,
}

impl MeterSnapshot {
    /// The counts for one operation kind.
    pub fn op(&self, op: Op) -> OpCounts {
        match op {
            Op::Put => self.put,
            Op::Get => self.get,
            Op::GetRange => self.get_range,
            Op::Head => self.head,
            Op::Delete => self.delete,
            Op::List => self.list,
        }
    }

    /// Mutable counts for one operation kind.
    pub fn op_mut(&mut self, op: Op) -> &mut OpCounts {
        match op {
            Op::Put => &mut self.put,
            Op::Get => &mut self.get,
            Op::GetRange => &mut self.get_range,
            Op::Head => &mut self.head,
            Op::Delete => &mut self.delete,
            Op::List => &mut self.list,
        }
    }

    /// All requests, successful or not.
    pub fn requests(&self) -> u64 {
        Op::ALL
            .iter()
            .map(|&op| self.op(op).ok + self.op(op).failed)
            .sum()
    }

    /// All failed requests.
    pub fn failed(&self) -> u64 {
        Op::ALL.iter().map(|&op| self.op(op).failed).sum()
    }
}

#[derive(Debug, Default)]
struct Counters {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    ok: [AtomicU64; 6],
    failed: [AtomicU64; 6],
}

/// Shared counters of one or more [`Metered`] stores; cloning shares them.
///
/// Updates are relaxed atomics: a snapshot taken while requests run is not a consistent cut
/// across counters, but every finished request is counted exactly once.
#[derive(Debug, Clone, Default)]
pub struct Meter(Arc<Counters>);

impl Meter {
    /// A meter with every counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current counts.
    pub fn snapshot(&self) -> MeterSnapshot {
        let c = &*self.0;
        let mut snap = MeterSnapshot {
            bytes_in: c.bytes_in.load(Ordering::Relaxed),
            bytes_out: c.bytes_out.load(Ordering::Relaxed),
            ..MeterSnapshot::default()
        };
        for op in Op::ALL {
            let i = op.index();
            *snap.op_mut(op) = OpCounts {
                ok: c.ok.get(i).map_or(0, |a| a.load(Ordering::Relaxed)),
                failed: c.failed.get(i).map_or(0, |a| a.load(Ordering::Relaxed)),
            };
        }
        snap
    }

    /// Sets every counter to zero.
    pub fn reset(&self) {
        let c = &*self.0;
        c.bytes_in.store(0, Ordering::Relaxed);
        c.bytes_out.store(0, Ordering::Relaxed);
        for counter in c.ok.iter().chain(c.failed.iter()) {
            counter.store(0, Ordering::Relaxed);
        }
    }

    fn record(&self, op: Op, ok: bool) {
        let counters = if ok { &self.0.ok } else { &self.0.failed };
        if let Some(counter) = counters.get(op.index()) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn record_result<T>(
        &self,
        op: Op,
        result: &Result<T, StorageError>,
        bytes: impl FnOnce(&T) -> u64,
    ) {
        self.record(op, result.is_ok());
        if let Ok(value) = result {
            let n = bytes(value);
            match op {
                Op::Put => self.0.bytes_in.fetch_add(n, Ordering::Relaxed),
                _ => self.0.bytes_out.fetch_add(n, Ordering::Relaxed),
            };
        }
    }
}

/// Counts requests per operation kind (successful and failed apart) and bytes in and out.
///
/// Wrap any store; read the counts with [`snapshot`](Self::snapshot) or through a [`Meter`]
/// handle, which several stores may share (for example all of one tenant's vaults).
#[derive(Debug, Clone)]
pub struct Metered<S> {
    inner: S,
    meter: Meter,
}

impl<S: BlobStore> Metered<S> {
    /// Meters `inner` with fresh counters.
    pub fn new(inner: S) -> Self {
        Self::with_meter(inner, Meter::new())
    }

    /// Meters `inner` into an existing (possibly shared) meter.
    pub fn with_meter(inner: S, meter: Meter) -> Self {
        Self { inner, meter }
    }

    /// The meter; clone it to keep reading counts after handing the store away.
    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    /// The current counts.
    pub fn snapshot(&self) -> MeterSnapshot {
        self.meter.snapshot()
    }

    /// Sets every counter to zero.
    pub fn reset(&self) {
        self.meter.reset();
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner store.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// Counts a list stream once: failed at its first error, else successful when dropped.
struct ListGuard {
    meter: Meter,
    counted: bool,
}

impl ListGuard {
    fn observe<T>(&mut self, item: &Result<T, StorageError>) {
        if item.is_err() && !self.counted {
            self.counted = true;
            self.meter.record(Op::List, false);
        }
    }
}

impl Drop for ListGuard {
    fn drop(&mut self) {
        if !self.counted {
            self.meter.record(Op::List, true);
        }
    }
}

#[async_trait]
impl<S: BlobStore> BlobStore for Metered<S> {
    async fn put(&self, key: &BlobKey, data: Bytes) -> Result<(), StorageError> {
        let len = data.len() as u64;
        let result = self.inner.put(key, data).await;
        self.meter.record_result(Op::Put, &result, |()| len);
        result
    }

    async fn put_unsynced(&self, key: &BlobKey, data: Bytes) -> Result<(), StorageError> {
        let len = data.len() as u64;
        let result = self.inner.put_unsynced(key, data).await;
        self.meter.record_result(Op::Put, &result, |()| len);
        result
    }

    async fn sync(&self, blobs: &[BlobMeta]) -> Result<Vec<BlobKey>, StorageError> {
        self.inner.sync(blobs).await
    }

    async fn get(&self, key: &BlobKey) -> Result<Bytes, StorageError> {
        let result = self.inner.get(key).await;
        self.meter
            .record_result(Op::Get, &result, |b| b.len() as u64);
        result
    }

    async fn get_range(&self, key: &BlobKey, range: Range<u64>) -> Result<Bytes, StorageError> {
        let result = self.inner.get_range(key, range).await;
        self.meter
            .record_result(Op::GetRange, &result, |b| b.len() as u64);
        result
    }

    async fn head(&self, key: &BlobKey) -> Result<BlobMeta, StorageError> {
        let result = self.inner.head(key).await;
        self.meter.record_result(Op::Head, &result, |_| 0);
        result
    }

    async fn delete(&self, key: &BlobKey) -> Result<(), StorageError> {
        let result = self.inner.delete(key).await;
        self.meter.record_result(Op::Delete, &result, |()| 0);
        result
    }

    fn list_stream(
        &self,
        prefix: Option<&BlobKey>,
    ) -> BoxStream<'_, Result<BlobMeta, StorageError>> {
        let mut guard = ListGuard {
            meter: self.meter.clone(),
            counted: false,
        };
        self.inner
            .list_stream(prefix)
            .map(move |item| {
                guard.observe(&item);
                item
            })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ObjectStoreBackend;

    fn key(s: &str) -> BlobKey {
        BlobKey::new(s).unwrap()
    }

    #[tokio::test]
    async fn counts_a_scripted_session_exactly() {
        let store = Metered::new(ObjectStoreBackend::memory());
        store
            .put(&key("a"), Bytes::from(vec![1; 100]))
            .await
            .unwrap();
        store
            .put(&key("b/c"), Bytes::from(vec![2; 50]))
            .await
            .unwrap();
        store.get(&key("a")).await.unwrap();
        store.get(&key("missing")).await.unwrap_err();
        store.get_range(&key("a"), 10..30).await.unwrap();
        store.get_range(&key("a"), 90..101).await.unwrap_err();
        store.head(&key("b/c")).await.unwrap();
        store.delete(&key("a")).await.unwrap();
        store.delete(&key("a")).await.unwrap();
        store.list(None).await.unwrap();
        store.list(Some(&key("b"))).await.unwrap();

        let expected = MeterSnapshot {
            bytes_in: 150,
            bytes_out: 120,
            put: OpCounts { ok: 2, failed: 0 },
            get: OpCounts { ok: 1, failed: 1 },
            get_range: OpCounts { ok: 1, failed: 1 },
            head: OpCounts { ok: 1, failed: 0 },
            delete: OpCounts { ok: 2, failed: 0 },
            list: OpCounts { ok: 2, failed: 0 },
        };
        let snap = store.snapshot();
        assert_eq!(snap, expected);
        assert_eq!(snap.requests(), 11);
        assert_eq!(snap.failed(), 2);

        store.reset();
        assert_eq!(store.snapshot(), MeterSnapshot::default());
    }

    #[tokio::test]
    async fn shared_meter_adds_up_and_list_streams_count_once() {
        let meter = Meter::new();
        let a = Metered::with_meter(ObjectStoreBackend::memory(), meter.clone());
        let b = Metered::with_meter(ObjectStoreBackend::memory(), meter.clone());
        a.put(&key("x"), Bytes::from_static(b"123")).await.unwrap();
        b.put(&key("y"), Bytes::from_static(b"4567")).await.unwrap();
        {
            let mut stream = a.list_stream(None);
            // Dropped after one item: still one list request.
            assert!(stream.next().await.is_some());
        }
        let snap = meter.snapshot();
        assert_eq!(snap.bytes_in, 7);
        assert_eq!(snap.put.ok, 2);
        assert_eq!(snap.list, OpCounts { ok: 1, failed: 0 });
    }
}
