//! Background sync ([`SyncHandle`]): syncs opened vaults after local changes, on the server's
//! pushes and periodically, reconnecting by itself.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
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

/// What wakes background sync: vaults with local changes, and vaults the server says changed.
#[derive(Debug, Default)]
pub(crate) struct Wake {
    dirty: Mutex<Dirty>,
    all: AtomicBool,
    notify: Notify,
}

/// Vaults to sync.
#[derive(Debug, Default)]
struct Dirty {
    /// Changed here through the SDK (a put, a delete): a full sync.
    local: HashSet<VaultId>,
    /// Changed on the server: a pull first, and a full sync only if it brings something (the
    /// server also pushes this device's own commits).
    remote: HashSet<VaultId>,
    /// Paths of a folder vault the OS notified: a full sync only if one differs from the index
    /// (the engine's own downloads do not).
    paths: HashMap<VaultId, Vec<PathBuf>>,
}

/// Notified paths kept per vault between two passes; beyond, the vault gets a full sync.
const MAX_NOTIFIED_PATHS: usize = 4096;

impl Wake {
    fn lock(&self) -> std::sync::MutexGuard<'_, Dirty> {
        self.dirty.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `vault` changed here.
    pub(crate) fn vault(&self, vault: VaultId) {
        self.lock().local.insert(vault);
        self.notify.notify_one();
    }

    /// `vault` changed on the server.
    fn remote(&self, vault: VaultId) {
        self.lock().remote.insert(vault);
        self.notify.notify_one();
    }

    /// Files of folder vault `vault` changed (an OS notification).
    fn paths(&self, vault: VaultId, paths: Vec<PathBuf>) {
        {
            let mut dirty = self.lock();
            let kept = dirty.paths.entry(vault).or_default();
            kept.extend(paths);
            if kept.len() > MAX_NOTIFIED_PATHS {
                dirty.paths.remove(&vault);
                dirty.local.insert(vault);
            }
        }
        self.notify.notify_one();
    }

    /// Every vault should sync (enrolment changed).
    pub(crate) fn all(&self) {
        self.all.store(true, Ordering::SeqCst);
        self.notify.notify_one();
    }

    /// What to sync now: full syncs (`None`: all vaults), pull checks, notified paths.
    fn take(&self) -> Taken {
        let dirty = std::mem::take(&mut *self.lock());
        let full = if self.all.swap(false, Ordering::SeqCst) {
            None
        } else {
            Some(dirty.local)
        };
        (full, dirty.remote, dirty.paths)
    }
}

type Taken = (
    Option<HashSet<VaultId>>,
    HashSet<VaultId>,
    HashMap<VaultId, Vec<PathBuf>>,
);

/// Runs background sync until stopped ([`SyncHandle::stop`]) or dropped.
#[derive(Debug)]
#[must_use = "background sync stops when its handle is dropped"]
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
    /// When the server accepted the subscription (`None`: never).
    opened: Arc<Mutex<Option<Instant>>>,
}

/// Clears [`Inner::syncing`] however the loop ends (a panic in an app's conflict callback
/// included).
struct SyncingFlag(Arc<Inner>);

impl Drop for SyncingFlag {
    fn drop(&mut self) {
        *self
            .0
            .syncing
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = false;
    }
}

async fn run(inner: Arc<Inner>, cancel: CancellationToken) {
    let _flag = SyncingFlag(Arc::clone(&inner));
    let interval = inner.options.sync_interval.max(Duration::from_millis(100));
    let mut online: Option<bool> = None;
    let mut sub: Option<Sub> = None;
    let mut sub_retry_at = Instant::now();
    let mut sub_backoff = MIN_BACKOFF;
    // After a failure: no sync of the failed vaults before `retry_at`, and none at all while
    // the server is unreachable (`offline`).
    let mut retry_at: Option<Instant> = None;
    let mut offline = false;
    let mut backoff = MIN_BACKOFF;
    let mut failed: HashSet<VaultId> = HashSet::new();
    let mut pending_checks: HashSet<VaultId> = HashSet::new();
    let mut pending_paths: HashMap<VaultId, Vec<PathBuf>> = HashMap::new();
    let mut next_full = Instant::now();
    // File notifications of folder vaults (key-value vaults change only through the SDK).
    let mut watchers: HashMap<VaultId, Option<notify::RecommendedWatcher>> = HashMap::new();
    'outer: while !cancel.is_cancelled() {
        // Taken before the vaults are listed: a vault opened in between keeps its wake-up for
        // the next pass (its notify permit makes that pass immediate).
        let (local, remote, notified) = inner.wake.take();
        let enrolled = inner.record().is_ok_and(|r| !r.server_addr.is_empty());
        let opened = inner.opened();
        let ids: Vec<VaultId> = opened.iter().map(|s| s.id).collect();
        for shared in opened.iter().filter(|s| !s.managed) {
            if let std::collections::hash_map::Entry::Vacant(slot) = watchers.entry(shared.id) {
                slot.insert(watch_folder(&inner, shared.id, shared.root.clone()).await);
            }
        }
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
            let opened_at = Arc::new(Mutex::new(None));
            sub = Some(Sub {
                vaults: ids.clone(),
                task: tokio::spawn(subscription(
                    Arc::clone(&inner),
                    ids.clone(),
                    sub_cancel.clone(),
                    Arc::clone(&opened_at),
                )),
                cancel: sub_cancel,
                opened: opened_at,
            });
        }

        // What to sync now: full syncs, pull checks for the server's pushes, and notified
        // paths to check against the index.
        let mut due: HashSet<VaultId> = local.unwrap_or_else(|| ids.iter().copied().collect());
        pending_checks.extend(remote);
        for (id, paths) in notified {
            pending_paths.entry(id).or_default().extend(paths);
        }
        if now >= next_full {
            due.extend(ids.iter().copied());
        }
        let waiting = retry_at.is_some_and(|t| now < t);
        if waiting {
            // Keep what came in for the retry; while offline, wait for it entirely.
            if offline {
                failed.extend(due.iter().copied());
            }
            due.retain(|id| !offline && !failed.contains(id));
        } else {
            due.extend(failed.drain());
            retry_at = None;
            offline = false;
        }
        // Checks wait with their vault's retry (a check cannot stand in for the full sync a
        // failed vault owes).
        let held = |id: &VaultId| waiting && (offline || failed.contains(id));
        let mut triggers: Vec<(std::sync::Arc<crate::vault::VaultShared>, Trigger)> = Vec::new();
        for shared in &opened {
            let id = shared.id;
            if due.contains(&id) {
                pending_checks.remove(&id);
                pending_paths.remove(&id);
                triggers.push((std::sync::Arc::clone(shared), Trigger::Full));
            } else if held(&id) {
            } else if let Some(paths) = pending_paths.remove(&id) {
                pending_checks.remove(&id);
                triggers.push((std::sync::Arc::clone(shared), Trigger::Paths(paths)));
            } else if pending_checks.remove(&id) {
                triggers.push((std::sync::Arc::clone(shared), Trigger::Pull));
            }
        }
        if enrolled {
            let mut rest = triggers.into_iter();
            while let Some((shared, trigger)) = rest.next() {
                let full = matches!(trigger, Trigger::Full);
                let result = tokio::select! {
                    () = cancel.cancelled() => break 'outer,
                    r = shared.sync_on(&inner, trigger) => r,
                };
                match result {
                    Ok(report) => {
                        if full || report.is_some() {
                            failed.remove(&shared.id);
                            backoff = MIN_BACKOFF;
                        }
                        if online != Some(true) {
                            online = Some(true);
                            inner.hub.emit(Event::Status(Status::Online));
                        }
                    }
                    Err(e) => {
                        let unreachable = e.is_offline();
                        if unreachable && online != Some(false) {
                            online = Some(false);
                            inner.hub.emit(Event::Status(Status::Offline {
                                reason: e.to_string(),
                            }));
                        }
                        // Retryable failures come back, as a full sync, after a back-off;
                        // others at the next periodic sync.
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
                        if unreachable && retry_in.is_some() {
                            // The others would fail the same way: retry them all together.
                            offline = true;
                            failed.extend(rest.by_ref().map(|(s, _)| s.id));
                            break;
                        }
                    }
                }
            }
        }
        // The next periodic sync counts from the end of this pass, so a slow pass does not
        // run the next one at once.
        if now >= next_full {
            next_full = Instant::now() + interval;
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
            let opened_at = *s.opened.lock().unwrap_or_else(PoisonError::into_inner);
            if opened_at.is_some_and(|t| t.elapsed() > SUB_HEALTHY) {
                sub_backoff = MIN_BACKOFF;
            }
            sub_retry_at = Instant::now() + sub_backoff;
            sub_backoff = (sub_backoff * 2).min(MAX_BACKOFF);
        }
    }
    drop(watchers);
    if let Some(s) = sub.take() {
        s.cancel.cancel();
        let _ = s.task.await;
    }
}

/// Watches a folder vault's folder (recursively, set up off the runtime: it walks the folder),
/// waking its sync on every change but the SDK's and the engine's temporary files. `None` if
/// the OS refuses: the periodic sync still finds the changes.
async fn watch_folder(
    inner: &Arc<Inner>,
    vault: VaultId,
    root: std::path::PathBuf,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let weak = Arc::downgrade(inner);
    let handler = move |res: notify::Result<notify::Event>| {
        let Some(inner) = weak.upgrade() else { return };
        match res {
            Ok(event) => {
                if matches!(event.kind, notify::EventKind::Access(_)) {
                    return;
                }
                let paths: Vec<PathBuf> = event
                    .paths
                    .into_iter()
                    .filter(|p| {
                        !p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with(dooz_client::TEMP_FILE_PREFIX))
                    })
                    .collect();
                if !paths.is_empty() {
                    inner.wake.paths(vault, paths);
                }
            }
            // Events were lost: sync to find out.
            Err(_) => inner.wake.vault(vault),
        }
    };
    let shown = root.clone();
    let made = tokio::task::spawn_blocking(move || {
        let mut watcher = notify::recommended_watcher(handler)?;
        watcher.watch(&root, notify::RecursiveMode::Recursive)?;
        Ok::<_, notify::Error>(watcher)
    })
    .await;
    match made {
        Ok(Ok(watcher)) => Some(watcher),
        Ok(Err(e)) => {
            tracing::warn!(folder = %shown.display(), error = %e, "no file notifications; relying on periodic syncs");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "setting up file notifications failed");
            None
        }
    }
}

/// Why a vault syncs.
pub(crate) enum Trigger {
    /// A full sync.
    Full,
    /// The server changed: pull, and sync only if that brings something.
    Pull,
    /// These files changed: sync only if one differs from the index.
    Paths(Vec<PathBuf>),
}

/// Subscribes to `vaults` and wakes their sync on each push, until the subscription breaks
/// or is cancelled.
async fn subscription(
    inner: Arc<Inner>,
    vaults: Vec<VaultId>,
    cancel: CancellationToken,
    opened: Arc<Mutex<Option<Instant>>>,
) {
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
        *opened.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        // Changes committed before the subscription opened are fetched by a pull.
        for v in &vaults {
            inner.wake.remote(*v);
        }
        while let Some(changed) = stream.next().await? {
            inner.wake.remote(VaultId(*changed.vault.as_bytes()));
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
