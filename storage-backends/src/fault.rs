//! Failing a chosen fraction of calls, deterministically, for tests.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::store::list_target;
use crate::{BlobKey, BlobMeta, BlobStore, Op, StorageError};

/// When an injected put failure happens relative to the write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum PutFaultMode {
    /// The put fails before anything is written (a request that never arrived).
    #[default]
    BeforeWrite,
    /// The write lands, then the caller gets an error (a lost response). Callers must treat a
    /// retried put of the same bytes as harmless.
    AfterWrite,
}

/// Fails a chosen fraction of calls per operation kind with [`StorageError::Injected`]
/// (retryable), from a seeded PRNG, so a test sees the same failures on every run.
///
/// Every call draws the next number from a SplitMix64 sequence started at the seed, whatever its
/// kind or rate, and fails if the number falls below its kind's rate. The same seed and the same
/// sequence of calls therefore fail the same calls. Concurrent calls draw in the order they
/// start. A rate of `0.0` never fails and `1.0` always fails. Rates can be changed while the
/// store is in use, e.g. to take a store down and bring it back.
#[derive(Debug)]
pub struct FaultInjecting<S> {
    inner: S,
    /// `f64` bits per [`Op::index`].
    rates: [AtomicU64; 6],
    put_mode: PutFaultMode,
    state: AtomicU64,
    injected: [AtomicU64; 6],
}

impl<S: BlobStore> FaultInjecting<S> {
    /// Wraps `inner` with every rate at zero; set rates with
    /// [`with_fail_rate`](Self::with_fail_rate) or [`set_fail_rate`](Self::set_fail_rate).
    pub fn new(inner: S, seed: u64) -> Self {
        Self {
            inner,
            rates: Default::default(),
            put_mode: PutFaultMode::default(),
            state: AtomicU64::new(seed),
            injected: Default::default(),
        }
    }

    /// Sets the failure rate of `op` (`None`: every kind) to `rate`, builder style.
    ///
    /// # Errors
    ///
    /// [`StorageError::InvalidConfig`] unless `0.0 <= rate <= 1.0`.
    pub fn with_fail_rate(self, op: Option<Op>, rate: f64) -> Result<Self, StorageError> {
        self.set_fail_rate(op, rate)?;
        Ok(self)
    }

    /// Chooses when injected put failures happen.
    pub fn with_put_mode(mut self, mode: PutFaultMode) -> Self {
        self.put_mode = mode;
        self
    }

    /// Sets the failure rate of `op` (`None`: every kind) to `rate`.
    ///
    /// # Errors
    ///
    /// [`StorageError::InvalidConfig`] unless `0.0 <= rate <= 1.0`.
    pub fn set_fail_rate(&self, op: Option<Op>, rate: f64) -> Result<(), StorageError> {
        if !(0.0..=1.0).contains(&rate) {
            return Err(StorageError::InvalidConfig {
                reason: format!("a fault rate must be between 0.0 and 1.0, got {rate}"),
            });
        }
        let ops: &[Op] = match &op {
            Some(op) => std::slice::from_ref(op),
            None => &Op::ALL,
        };
        for op in ops {
            if let Some(slot) = self.rates.get(op.index()) {
                slot.store(rate.to_bits(), Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// The failure rate of `op`.
    pub fn fail_rate(&self, op: Op) -> f64 {
        self.rates
            .get(op.index())
            .map_or(0.0, |r| f64::from_bits(r.load(Ordering::Relaxed)))
    }

    /// Faults injected so far, all kinds.
    pub fn injected(&self) -> u64 {
        self.injected
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Faults injected so far into calls of `op`.
    pub fn injected_for(&self, op: Op) -> u64 {
        self.injected
            .get(op.index())
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner store.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Draws the next number and decides whether this call of `op` fails.
    fn roll(&self, op: Op, key: &str) -> Result<(), StorageError> {
        let sample = splitmix64_next(&self.state);
        // The top 53 bits as a uniform float in [0, 1).
        let unit = (sample >> 11) as f64 / (1u64 << 53) as f64;
        if unit < self.fail_rate(op) {
            if let Some(counter) = self.injected.get(op.index()) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            tracing::debug!(%op, key, "injecting a storage fault");
            return Err(StorageError::Injected {
                op,
                key: key.to_owned(),
            });
        }
        Ok(())
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014) over an atomic state.
fn splitmix64_next(state: &AtomicU64) -> u64 {
    const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut z = state
        .fetch_add(GAMMA, Ordering::Relaxed)
        .wrapping_add(GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[async_trait]
impl<S: BlobStore> BlobStore for FaultInjecting<S> {
    async fn put(&self, key: &BlobKey, data: Bytes) -> Result<(), StorageError> {
        match (self.roll(Op::Put, key.as_str()), self.put_mode) {
            (Ok(()), _) => self.inner.put(key, data).await,
            (Err(injected), PutFaultMode::BeforeWrite) => Err(injected),
            (Err(injected), PutFaultMode::AfterWrite) => {
                self.inner.put(key, data).await?;
                Err(injected)
            }
        }
    }

    async fn get(&self, key: &BlobKey) -> Result<Bytes, StorageError> {
        self.roll(Op::Get, key.as_str())?;
        self.inner.get(key).await
    }

    async fn get_range(&self, key: &BlobKey, range: Range<u64>) -> Result<Bytes, StorageError> {
        self.roll(Op::GetRange, key.as_str())?;
        self.inner.get_range(key, range).await
    }

    async fn head(&self, key: &BlobKey) -> Result<BlobMeta, StorageError> {
        self.roll(Op::Head, key.as_str())?;
        self.inner.head(key).await
    }

    async fn delete(&self, key: &BlobKey) -> Result<(), StorageError> {
        self.roll(Op::Delete, key.as_str())?;
        self.inner.delete(key).await
    }

    fn list_stream(
        &self,
        prefix: Option<&BlobKey>,
    ) -> BoxStream<'_, Result<BlobMeta, StorageError>> {
        match self.roll(Op::List, list_target(prefix)) {
            Ok(()) => self.inner.list_stream(prefix),
            Err(injected) => futures::stream::once(futures::future::ready(Err(injected))).boxed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ObjectStoreBackend;

    #[test]
    fn splitmix64_matches_the_reference() {
        // Reference outputs of Vigna's splitmix64.c seeded with 0.
        let state = AtomicU64::new(0);
        assert_eq!(splitmix64_next(&state), 0xe220_a839_7b1d_cdaf);
        assert_eq!(splitmix64_next(&state), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(splitmix64_next(&state), 0x06c4_5d18_8009_454f);
    }

    #[test]
    fn rates_are_validated() {
        let store = FaultInjecting::new(ObjectStoreBackend::memory(), 1);
        for bad in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            let err = store.set_fail_rate(None, bad).unwrap_err();
            assert!(err.to_string().contains("between 0.0 and 1.0"), "{err}");
        }
        store.set_fail_rate(Some(Op::Get), 0.5).unwrap();
        assert_eq!(store.fail_rate(Op::Get), 0.5);
        assert_eq!(store.fail_rate(Op::Put), 0.0);
    }
}
