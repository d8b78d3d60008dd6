//! Background sync ([`SyncHandle`]): syncs opened vaults after local changes, on the server's
//! pushes and periodically, reconnecting by itself.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dooz_crypto::VaultId;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, Inner};
use crate::events::{Event, Status};
use crate::{Error, Result};

/// First retry delay after a failed sync or subscription; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A subscription that lived this long was healthy: its back-off starts over.
const SUB_HEALTHY: Duration = Duration::from_secs(10);

/// What wakes background sync: vaults with local changes or remote pushes.
#[derive(Debug, Default)]
pub(crate) struct Wake {
    dirty: Mutex<HashSet<VaultId>>,
    all: AtomicBool,
    notify: Notify,
}

impl Wake {
    /// `vault` has something to sync.
    pub(crate) fn vault(&self, vault: VaultId) {
        self.dirty
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(vault);
        self.notify.notify_one();
    }

    /// Every vault should sync (enrolment changed).
    pub(crate) fn all(&self) {
        self.all.store(true, Ordering::SeqCst);
        self.notify.notify_one();
    }

    /// The vaults to sync now (`None`: all of them).
    fn take(&self) -> Option<HashSet<VaultId>> {
        let dirty = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(PoisonError::into_inner));
        if self.all.swap(false, Ordering::SeqCst) {
            None
        } else {
            Some(dirty)
        }
    }
}

/// Runs background sync until stopped ([`SyncHandle::stop`]) or dropped.
#[derive(Debug)]
pub struct SyncHandle {
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl SyncHandle {
    /// Stops background sync and waits for it to end. A sync in progress is abandoned, which
    /// is safe: it resumes where it stopped on the next sync (as after a crash); every put
    /// that returned is on disk either way.
    pub async fn stop(mut self) -> Result<()> {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            task.await.map_err(|e| Error::Task(e.to_string()))?;
        }
        Ok(())
    }

    /// Whether it still runs.
    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for SyncHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Starts background sync of `client`.
pub(crate) fn start(client: &Client) -> Result<SyncHandle> {
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| Error::Task("background sync needs a Tokio runtime".to_owned()))?;
    let inner = Arc::clone(&client.inner);
    {
        let mut syncing = inner.syncing.lock().unwrap_or_else(PoisonError::into_inner);
        if *syncing {
            return Err(Error::AlreadySyncing);
        }
        *syncing = true;
    }
    let cancel = CancellationToken::new();
    let task = runtime.spawn(run(inner, cancel.clone()));
    Ok(SyncHandle {
        cancel,
        task: Some(task),
    })
}

/// The server subscription, on a connection of its own.
struct Sub {
    vaults: Vec<VaultId>,
    task: JoinHandle<()>,
    cancel: CancellationToken,
    started: Instant,
}

async fn run(inner: Arc<Inner>, cancel: CancellationToken) {
    let interval = inner.options.sync_interval.max(Duration::from_millis(100));
    let mut online: Option<bool> = None;
    let mut sub: Option<Sub> = None;
    let mut sub_retry_at = Instant::now();
    let mut sub_backoff = MIN_BACKOFF;
    let mut retry_at: Option<Instant> = None;
    let mut backoff = MIN_BACKOFF;
    let mut failed: HashSet<VaultId> = HashSet::new();
    let mut next_full = Instant::now();
    'outer: while !cancel.is_cancelled() {
        let enrolled = inner.record().is_ok_and(|r| !r.server_addr.is_empty());
        let opened = inner.opened();
        let ids: Vec<VaultId> = opened.iter().map(|s| s.id).collect();
        let now = Instant::now();

        // Keep a subscription to the opened vaults (renewed when they change).
        if let Some(s) = &sub
            && s.vaults != ids
            && let Some(s) = sub.take()
        {
            s.cancel.cancel();
        }
        if sub.is_none() && enrolled && !ids.is_empty() && now >= sub_retry_at {
            let sub_cancel = cancel.child_token();
            sub = Some(Sub {
                vaults: ids.clone(),
                task: tokio::spawn(subscription(
                    Arc::clone(&inner),
                    ids.clone(),
                    sub_cancel.clone(),
                )),
                cancel: sub_cancel,
                started: now,
            });
        }

        // What to sync now.
        let mut due: HashSet<VaultId> = match inner.wake.take() {
            Some(d) => d,
            None => ids.iter().copied().collect(),
        };
        if now >= next_full {
            due.extend(ids.iter().copied());
            next_full = now + interval;
        }
        if retry_at.is_some_and(|t| now >= t) {
            due.extend(failed.drain());
            retry_at = None;
        }
        if enrolled {
            for shared in opened.iter().filter(|s| due.contains(&s.id)) {
                let result = tokio::select! {
                    () = cancel.cancelled() => break 'outer,
                    r = shared.sync(&inner) => r,
                };
                match result {
                    Ok(_) => {
                        failed.remove(&shared.id);
                        backoff = MIN_BACKOFF;
                        if online != Some(true) {
                            online = Some(true);
                            inner.hub.emit(Event::Status(Status::Online));
                        }
                    }
                    Err(e) => {
                        if e.is_offline() && online != Some(false) {
                            online = Some(false);
                            inner.hub.emit(Event::Status(Status::Offline {
                                reason: e.to_string(),
                            }));
                        }
                        // Every failure is retried: a permanent one at the periodic sync.
                        let retry_in = e.is_retryable().then_some(backoff);
                        if let Some(delay) = retry_in {
                            failed.insert(shared.id);
                            retry_at = Some(Instant::now() + delay);
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        }
                        tracing::warn!(vault = %shared.id, error = %e, "background sync failed");
                        inner.hub.emit(Event::Status(Status::SyncFailed {
                            vault: shared.id,
                            error: e.to_string(),
                            retry_in,
                        }));
                    }
                }
            }
        }

        // Wait for the next reason to sync.
        let mut deadline = next_full;
        if let Some(t) = retry_at {
            deadline = deadline.min(t);
        }
        if sub.is_none() && enrolled && !ids.is_empty() {
            deadline = deadline.min(sub_retry_at);
        }
        let sub_ended = tokio::select! {
            () = cancel.cancelled() => break,
            () = inner.wake.notify.notified() => false,
            () = tokio::time::sleep_until(deadline) => false,
            () = async {
                match &mut sub {
                    Some(s) => { let _ = (&mut s.task).await; }
                    None => std::future::pending::<()>().await,
                }
            } => true,
        };
        if sub_ended && let Some(s) = sub.take() {
            // Broken (or never opened): open it again after a back-off, reset if it had
            // lived a while; meanwhile the periodic sync and local changes still sync.
            if s.started.elapsed() > SUB_HEALTHY {
                sub_backoff = MIN_BACKOFF;
            }
            sub_retry_at = Instant::now() + sub_backoff;
            sub_backoff = (sub_backoff * 2).min(MAX_BACKOFF);
        }
    }
    if let Some(s) = sub.take() {
        s.cancel.cancel();
        let _ = s.task.await;
    }
    *inner.syncing.lock().unwrap_or_else(PoisonError::into_inner) = false;
}

/// Subscribes to `vaults` and wakes their sync on each push, until the subscription breaks
/// or is cancelled.
async fn subscription(inner: Arc<Inner>, vaults: Vec<VaultId>, cancel: CancellationToken) {
    let run = async {
        let connector = inner.connector()?;
        let conn = tokio::time::timeout(inner.options.connect_timeout, connector.connect())
            .await
            .map_err(|_| Error::Offline {
                server: connector.server_addr().to_owned(),
                reason: "no answer".to_owned(),
            })??;
        let ids = vaults
            .iter()
            .map(|v| dooz_protocol::VaultId::from_bytes(v.0))
            .collect();
        let mut stream = conn.subscribe(ids).await?;
        // Changes committed before the subscription opened are fetched by a sync.
        for v in &vaults {
            inner.wake.vault(*v);
        }
        while let Some(changed) = stream.next().await? {
            inner.wake.vault(VaultId(*changed.vault.as_bytes()));
        }
        Ok::<(), Error>(())
    };
    tokio::select! {
        () = cancel.cancelled() => {}
        r = run => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "subscription ended");
            }
        }
    }
}
