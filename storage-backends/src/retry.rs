//! Retrying transient failures with exponential backoff and full jitter, within a bound.

use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::time::Instant;

use crate::store::list_target;
use crate::{BlobKey, BlobMeta, BlobStore, Op, StorageError};

/// How [`Retrying`] retries: how often, how long, and how far apart.
///
/// The wait before retry `n` (1-based) is drawn uniformly from
/// `0..=min(max_backoff, initial_backoff * 2^(n-1))` ("full jitter"), so clients that failed
/// together do not come back together. A call gives up when it has made `max_attempts`
/// attempts, or when the next wait would end past `max_elapsed` since the first attempt.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per call, the first included (at least 1). Default 8.
    pub max_attempts: u32,
    /// Time from the first attempt after which no retry starts. Default 30 s.
    pub max_elapsed: Duration,
    /// The cap of the first wait. Default 50 ms.
    pub initial_backoff: Duration,
    /// The largest cap of any wait. Default 5 s.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            max_elapsed: Duration::from_secs(30),
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// Sets [`max_attempts`](Self::max_attempts).
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Sets [`max_elapsed`](Self::max_elapsed).
    pub fn with_max_elapsed(mut self, elapsed: Duration) -> Self {
        self.max_elapsed = elapsed;
        self
    }

    /// Sets [`initial_backoff`](Self::initial_backoff) and [`max_backoff`](Self::max_backoff).
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }

    fn check(&self) -> Result<(), StorageError> {
        if self.max_attempts == 0 {
            return Err(StorageError::InvalidConfig {
                reason: "a retry policy needs max_attempts >= 1 (1: no retries)".to_owned(),
            });
        }
        if self.initial_backoff > self.max_backoff {
            return Err(StorageError::InvalidConfig {
                reason: format!(
                    "a retry policy's initial backoff ({:?}) exceeds its max backoff ({:?})",
                    self.initial_backoff, self.max_backoff
                ),
            });
        }
        Ok(())
    }

    /// The cap of the wait before retry `retry` (1-based).
    fn cap(&self, retry: u32) -> Duration {
        let factor = 1u32 << retry.saturating_sub(1).min(30);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// Retries the calls of an inner store that fail with a transient error
/// ([`StorageError::is_retryable`]), per a [`RetryPolicy`]; permanent errors (a missing blob,
/// bad credentials, a missing bucket, ...) return at once.
///
/// When the bound is reached, the call fails with [`StorageError::RetriesExhausted`], which is
/// itself retryable: the backend may come back later. Every operation is safe to repeat: puts
/// are whole-object writes of the same bytes, deletes of a missing blob succeed.
/// [`list_stream`](BlobStore::list_stream) collects the whole listing (with retries) before
/// yielding it, since a listing cannot resume half-way.
#[derive(Debug)]
pub struct Retrying<S> {
    inner: S,
    policy: RetryPolicy,
    /// SplitMix64 state for the jitter.
    rng: AtomicU64,
    retries: AtomicU64,
}

impl<S: BlobStore> Retrying<S> {
    /// Wraps `inner` with the default [`RetryPolicy`].
    pub fn new(inner: S) -> Self {
        let mut seed = [0u8; 8];
        // A fixed seed is fine if the OS has no randomness to give: jitter only spreads load.
        let seed = match getrandom::getrandom(&mut seed) {
            Ok(()) => u64::from_le_bytes(seed),
            Err(_) => 0x9e37_79b9_7f4a_7c15,
        };
        Self {
            inner,
            policy: RetryPolicy::default(),
            rng: AtomicU64::new(seed),
            retries: AtomicU64::new(0),
        }
    }

    /// Replaces the policy.
    ///
    /// # Errors
    ///
    /// [`StorageError::InvalidConfig`] if `max_attempts` is 0 or the initial backoff exceeds
    /// the max.
    pub fn with_policy(mut self, policy: RetryPolicy) -> Result<Self, StorageError> {
        policy.check()?;
        self.policy = policy;
        Ok(self)
    }

    /// The policy in force.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Retries made so far (attempts after the first), over all calls.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// A uniform draw from `0..=cap`.
    fn jitter(&self, cap: Duration) -> Duration {
        let mut z = self
            .rng
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(z % nanos.saturating_add(1))
    }

    async fn run<T, F, Fut>(&self, op: Op, key: &str, mut call: F) -> Result<T, StorageError>
    where
        F: FnMut() -> Fut + Send,
        Fut: Future<Output = Result<T, StorageError>> + Send,
    {
        let start = Instant::now();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let err = match call().await {
                Ok(value) => return Ok(value),
                Err(e) if !e.is_retryable() => return Err(e),
                Err(e) => e,
            };
            let wait = self.jitter(self.policy.cap(attempts));
            let elapsed = start.elapsed();
            if attempts >= self.policy.max_attempts
                || elapsed.saturating_add(wait) > self.policy.max_elapsed
            {
                tracing::warn!(%op, key, attempts, ?elapsed, error = %err, "giving up retrying");
                return Err(StorageError::RetriesExhausted {
                    op,
                    key: key.to_owned(),
                    attempts,
                    elapsed,
                    last: Box::new(err),
                });
            }
            tracing::debug!(%op, key, attempts, ?wait, error = %err, "retrying a transient failure");
            self.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(wait).await;
        }
    }
}

#[async_trait]
impl<S: BlobStore> BlobStore for Retrying<S> {
    async fn put(&self, key: &BlobKey, data: Bytes) -> Result<(), StorageError> {
        self.run(Op::Put, key.as_str(), || self.inner.put(key, data.clone()))
            .await
    }

    async fn get(&self, key: &BlobKey) -> Result<Bytes, StorageError> {
        self.run(Op::Get, key.as_str(), || self.inner.get(key))
            .await
    }

    async fn get_range(&self, key: &BlobKey, range: Range<u64>) -> Result<Bytes, StorageError> {
        self.run(Op::GetRange, key.as_str(), || {
            self.inner.get_range(key, range.clone())
        })
        .await
    }

    async fn head(&self, key: &BlobKey) -> Result<BlobMeta, StorageError> {
        self.run(Op::Head, key.as_str(), || self.inner.head(key))
            .await
    }

    async fn delete(&self, key: &BlobKey) -> Result<(), StorageError> {
        self.run(Op::Delete, key.as_str(), || self.inner.delete(key))
            .await
    }

    async fn put_unsynced(&self, key: &BlobKey, data: Bytes) -> Result<(), StorageError> {
        self.run(Op::Put, key.as_str(), || {
            self.inner.put_unsynced(key, data.clone())
        })
        .await
    }

    async fn sync(&self, blobs: &[BlobMeta]) -> Result<Vec<BlobKey>, StorageError> {
        let target = blobs.first().map_or("(no blobs)", |b| b.key.as_str());
        self.run(Op::Put, target, || self.inner.sync(blobs)).await
    }

    fn list_stream(
        &self,
        prefix: Option<&BlobKey>,
    ) -> BoxStream<'_, Result<BlobMeta, StorageError>> {
        let prefix = prefix.cloned();
        futures::stream::once(async move { self.list(prefix.as_ref()).await })
            .flat_map(|result| match result {
                Ok(blobs) => futures::stream::iter(blobs.into_iter().map(Ok)).boxed(),
                Err(e) => futures::stream::iter([Err(e)]).boxed(),
            })
            .boxed()
    }

    async fn list(&self, prefix: Option<&BlobKey>) -> Result<Vec<BlobMeta>, StorageError> {
        self.run(Op::List, list_target(prefix), || self.inner.list(prefix))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ObjectStoreBackend;

    #[test]
    fn backoff_caps_grow_then_stop() {
        let p = RetryPolicy::default()
            .with_backoff(Duration::from_millis(10), Duration::from_millis(100));
        let caps: Vec<_> = (1..=6).map(|n| p.cap(n).as_millis()).collect();
        assert_eq!(caps, [10, 20, 40, 80, 100, 100]);
        assert_eq!(p.cap(1000), Duration::from_millis(100));
    }

    #[test]
    fn jitter_stays_under_the_cap() {
        let store = Retrying::new(ObjectStoreBackend::memory());
        let cap = Duration::from_millis(7);
        let draws: Vec<_> = (0..1000).map(|_| store.jitter(cap)).collect();
        assert!(draws.iter().all(|d| *d <= cap));
        // Full jitter: draws spread over the whole range.
        assert!(draws.iter().any(|d| *d < cap / 4) && draws.iter().any(|d| *d > cap * 3 / 4));
        assert_eq!(store.jitter(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn bad_policies_are_refused() {
        let zero = RetryPolicy::default().with_max_attempts(0);
        assert!(
            Retrying::new(ObjectStoreBackend::memory())
                .with_policy(zero)
                .is_err()
        );
        let inverted =
            RetryPolicy::default().with_backoff(Duration::from_secs(2), Duration::from_secs(1));
        assert!(
            Retrying::new(ObjectStoreBackend::memory())
                .with_policy(inverted)
                .is_err()
        );
    }
}
