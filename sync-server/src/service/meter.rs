//! Metering data-plane traffic (docs/METERING.md).
//!
//! Every answered request is counted (its request bytes, its answer bytes, one request) in the
//! traffic counters of the store, per tenant, account, vault, device and hour. The count is
//! *durable before the answer's first byte is sent*: [`Meter::record`] returns once the store
//! has the count on disk. Requests answered at the same time share one store transaction and one
//! flush (group commit): whoever finds no write under way writes every count queued so far.
//!
//! So a crash never loses the count of an answer a device received. What a crash can do is count
//! an answer that it cut off before the device had all of it; the device then asks again and
//! that answer is counted too. Those answers are at most the ones in flight at the crash.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

use crate::store::{MetaStore, TrafficCounts, TrafficKey};

type Waiter = oneshot::Sender<Result<(), String>>;

/// The group-committing traffic meter of one server.
pub(crate) struct Meter {
    store: Arc<dyn MetaStore>,
    enabled: bool,
    queue: Mutex<Vec<(TrafficKey, TrafficCounts, Waiter)>>,
    writer: tokio::sync::Mutex<()>,
    totals: MeterTotals,
}

/// Server-wide totals since start, for Prometheus (no per-tenant labels).
#[derive(Debug, Default)]
pub(crate) struct MeterTotals {
    pub(crate) ingress_bytes: AtomicU64,
    pub(crate) egress_bytes: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) failures: AtomicU64,
}

impl Meter {
    pub(crate) fn new(store: Arc<dyn MetaStore>, enabled: bool) -> Self {
        Self {
            store,
            enabled,
            queue: Mutex::new(Vec::new()),
            writer: tokio::sync::Mutex::new(()),
            totals: MeterTotals::default(),
        }
    }

    /// Whether traffic is metered.
    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// Adds traffic counted with its operation (an upload recorded with its chunk) to the
    /// totals.
    pub(crate) fn note(&self, counts: &TrafficCounts) {
        let t = &self.totals;
        t.ingress_bytes
            .fetch_add(counts.ingress_bytes, Ordering::Relaxed);
        t.egress_bytes
            .fetch_add(counts.egress_bytes, Ordering::Relaxed);
        t.requests.fetch_add(counts.requests, Ordering::Relaxed);
    }

    /// Totals since start.
    pub(crate) fn totals(&self) -> &MeterTotals {
        &self.totals
    }

    /// Counts `counts` under `key` and returns once the count is durable (at once when metering
    /// is off). On an error nothing of this count was stored.
    pub(crate) async fn record(
        &self,
        key: TrafficKey,
        counts: TrafficCounts,
    ) -> Result<(), String> {
        if !self.enabled || counts.is_zero() {
            return Ok(());
        }
        let (tx, mut rx) = oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((key, counts, tx));
        {
            let _writing = self.writer.lock().await;
            // A writer before us may have taken our count.
            match rx.try_recv() {
                Ok(result) => return result,
                Err(oneshot::error::TryRecvError::Closed) => {
                    return Err("the meter lost a count".to_owned());
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let batch =
                std::mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner));
            if !batch.is_empty() {
                // On a task of its own: a request cancelled meanwhile does not leave the others
                // waiting, and the write finishes whatever happens to this one.
                let store = Arc::clone(&self.store);
                let write = tokio::spawn(async move {
                    let rows: Vec<(TrafficKey, TrafficCounts)> =
                        batch.iter().map(|(k, c, _)| (*k, *c)).collect();
                    let result = store.add_traffic(rows).await.map_err(|e| e.to_string());
                    let ok = result.is_ok();
                    let mut sum = TrafficCounts::default();
                    for (_, counts, waiter) in batch {
                        sum.add(&counts);
                        let _ = waiter.send(result.clone());
                    }
                    (ok, sum)
                });
                match write.await {
                    Ok((true, sum)) => {
                        let t = &self.totals;
                        t.ingress_bytes
                            .fetch_add(sum.ingress_bytes, Ordering::Relaxed);
                        t.egress_bytes
                            .fetch_add(sum.egress_bytes, Ordering::Relaxed);
                        t.requests.fetch_add(sum.requests, Ordering::Relaxed);
                        t.batches.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((false, _)) | Err(_) => {
                        self.totals.failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        rx.await
            .unwrap_or_else(|_| Err("the meter lost a count".to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AccountId, SledStore, TenantId};

    fn key(account: u64) -> TrafficKey {
        TrafficKey {
            tenant: TenantId::new(1),
            hour: 10,
            account: AccountId::new(account),
            vault: None,
            device: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_counts_are_all_stored_in_fewer_writes() {
        let store = Arc::new(SledStore::temporary().unwrap());
        let meter = Arc::new(Meter::new(store.clone(), true));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200u64 {
            let meter = Arc::clone(&meter);
            tasks.spawn(async move {
                let counts = TrafficCounts {
                    ingress_bytes: i,
                    egress_bytes: 2 * i,
                    requests: 1,
                };
                meter.record(key(i % 3), counts).await
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap().unwrap();
        }
        let rows = store.traffic(Some(TenantId::new(1)), 0..100).await.unwrap();
        let mut total = TrafficCounts::default();
        for (_, c) in &rows {
            total.add(c);
        }
        assert_eq!(total.requests, 200);
        assert_eq!(total.ingress_bytes, (0..200).sum::<u64>());
        assert_eq!(total.egress_bytes, 2 * (0..200).sum::<u64>());
        assert_eq!(rows.len(), 3);
        let batches = meter.totals().batches.load(Ordering::Relaxed);
        assert!((1..=200).contains(&batches), "{batches}");
    }

    #[tokio::test]
    async fn off_counts_nothing() {
        let store = Arc::new(SledStore::temporary().unwrap());
        let meter = Meter::new(store.clone(), false);
        let counts = TrafficCounts {
            ingress_bytes: 1,
            egress_bytes: 1,
            requests: 1,
        };
        meter.record(key(1), counts).await.unwrap();
        assert!(
            store
                .traffic(Some(TenantId::new(1)), 0..100)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
