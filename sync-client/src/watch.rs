//! Watch mode: keep one or several vault folders in sync as they change (see [`Watcher`]).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dooz_crypto::VaultId;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::TEMP_FILE_PREFIX;
use crate::engine::{Engine, EngineError, SyncReport};
use crate::net::{Connector, NetError};

/// Paths remembered per vault between two syncs; beyond this the next check is a full sync.
const MAX_PENDING_PATHS: usize = 4096;
/// Notification errors kept for reporting between two turns of the loop.
const MAX_PENDING_ERRORS: usize = 16;
/// Back-off of the subscription's reconnects.
const RESUBSCRIBE_MIN: Duration = Duration::from_millis(200);
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(10);
/// First delay before retrying a failed sync (doubling up to [`WatchOptions::retry_max_delay`]).
const RETRY_MIN: Duration = Duration::from_secs(1);

/// Tuning of a [`Watcher`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchOptions {
    /// Sync once the folder has seen no notification for this long. Default 300 ms.
    pub quiet: Duration,
    /// ... but no later than this after the first notification of a burst, even if changes
    /// keep coming. Default 2 s (never less than `quiet`).
    pub max_delay: Duration,
    /// A full sync (scan and pull) of every vault at least this often, for notifications the
    /// OS dropped. `None`: never. Default 60 s.
    pub rescan_interval: Option<Duration>,
    /// Attempts of one sync ([`Engine::sync_with_reconnect`]'s `max_attempts`). Default 5.
    pub max_attempts: u32,
    /// After a failed sync, retry after 1 s, doubling up to this. Default 60 s.
    pub retry_max_delay: Duration,
    /// Sync every vault once when the watcher starts (catching up on what changed while it
    /// was not running). Default `true`.
    pub sync_on_start: bool,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            quiet: Duration::from_millis(300),
            max_delay: Duration::from_secs(2),
            rescan_interval: Some(Duration::from_secs(60)),
            max_attempts: 5,
            retry_max_delay: Duration::from_secs(60),
            sync_on_start: true,
        }
    }
}

/// A [`Watcher`] cannot be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WatchError {
    /// No engine was given.
    #[error("nothing to watch: bind a folder to a vault first (`dooz add <VAULT> <DIR>`)")]
    NoVaults,
    /// Two engines sync the same vault.
    #[error("vault {vault} is given twice; watch each vault with one engine")]
    DuplicateVault {
        /// The vault.
        vault: VaultId,
    },
}

/// What started a sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Trigger {
    /// The watcher started ([`WatchOptions::sync_on_start`]).
    Startup,
    /// Files changed in the folder.
    LocalChange,
    /// The server pushed a change of the vault (or the subscription was re-opened).
    RemoteChange,
    /// The periodic rescan ([`WatchOptions::rescan_interval`]), or too many notifications to
    /// check one by one.
    Rescan,
    /// A retry after a failed sync.
    Retry,
}

impl Trigger {
    /// A short lower-case name, for display.
    pub fn name(self) -> &'static str {
        match self {
            Self::Startup => "startup",
            Self::LocalChange => "local change",
            Self::RemoteChange => "remote change",
            Self::Rescan => "rescan",
            Self::Retry => "retry",
        }
    }
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a [`Watcher`] reports to its caller, in order.
#[derive(Debug)]
#[non_exhaustive]
pub enum WatchEvent {
    /// The server subscription is open (at start, and again after each reconnect).
    Subscribed,
    /// The subscription was lost or could not be opened; the watcher keeps reconnecting (with
    /// back-off) and meanwhile relies on file notifications and rescans.
    Disconnected {
        /// Why.
        error: NetError,
    },
    /// File notifications could not be set up or reported an error; changes are still found
    /// by the periodic rescan.
    NotifyFailed {
        /// The vault, when the error concerns one.
        vault: Option<VaultId>,
        /// What went wrong.
        error: String,
    },
    /// Start-up is done (subscription attempted, start-up syncs run): from now on every
    /// change is noticed.
    Watching {
        /// Vaults watched.
        vaults: usize,
        /// Whether file notifications work for every folder (if not, local changes are found
        /// by the periodic rescan only).
        file_notifications: bool,
    },
    /// A sync began.
    SyncStarted {
        /// The vault.
        vault: VaultId,
        /// Why.
        trigger: Trigger,
    },
    /// A sync finished.
    Synced {
        /// The vault.
        vault: VaultId,
        /// Why it ran.
        trigger: Trigger,
        /// What it did.
        report: SyncReport,
    },
    /// A sync failed; it is retried after `retry_in` (and on the next change).
    SyncFailed {
        /// The vault.
        vault: VaultId,
        /// Why it ran.
        trigger: Trigger,
        /// What went wrong.
        error: EngineError,
        /// When the watcher tries again.
        retry_in: Duration,
    },
    /// A notification or push was checked and there was nothing to sync (for example the
    /// engine's own downloads, or a push about this device's own commit).
    NothingToSync {
        /// The vault.
        vault: VaultId,
        /// What was checked.
        trigger: Trigger,
    },
    /// The watcher stopped (the last event).
    Stopped,
}

/// Stops a running [`Watcher`]; cheap to clone, usable from any thread.
#[derive(Clone, Debug)]
pub struct StopHandle(CancellationToken);

impl StopHandle {
    /// Asks the watcher to stop. [`Watcher::run`] returns soon after: a sync in progress is
    /// abandoned, which is safe (it resumes on the next sync, as after a kill).
    pub fn stop(&self) {
        self.0.cancel();
    }

    /// Whether [`StopHandle::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.0.is_cancelled()
    }
}

/// Changes noticed for one vault and not handled yet; shared with the notification thread and
/// the subscription task.
#[derive(Default)]
struct Pending {
    /// Paths notified since the last check.
    paths: HashSet<PathBuf>,
    /// Too many paths, or the OS lost notifications: sync without checking.
    overflow: bool,
    /// First and last notification of the current burst.
    first: Option<Instant>,
    last: Option<Instant>,
    /// The server pushed a change.
    remote: bool,
}

impl Pending {
    #[cfg(test)]
    fn local(&self) -> bool {
        self.first.is_some()
    }

    fn touch(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    fn take_local(&mut self) -> (Vec<PathBuf>, bool) {
        self.first = None;
        self.last = None;
        let overflow = std::mem::take(&mut self.overflow);
        (self.paths.drain().collect(), overflow)
    }
}

/// What the notification callback needs to know of one vault.
struct Folder {
    root: PathBuf,
    index_dir: PathBuf,
}

struct Shared {
    folders: Vec<Folder>,
    pending: Mutex<Vec<Pending>>,
    errors: Mutex<Vec<(Option<usize>, String)>>,
    wake: Notify,
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<Pending>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The vault whose folder holds `path` (the innermost one if folders nest).
    fn folder_of(&self, path: &Path) -> Option<usize> {
        self.folders
            .iter()
            .enumerate()
            .filter(|(_, f)| path.starts_with(&f.root))
            .max_by_key(|(_, f)| f.root.as_os_str().len())
            .map(|(i, _)| i)
    }

    /// Records one file notification.
    fn note(&self, event: &notify::Event) {
        use notify::EventKind;
        use notify::event::{AccessKind, AccessMode};
        // Reads (the scanner's and uploads' own included) change nothing; a file closed
        // after writing extends the burst.
        if let EventKind::Access(kind) = event.kind
            && kind != AccessKind::Close(AccessMode::Write)
        {
            return;
        }
        let now = Instant::now();
        let mut woke = false;
        let mut pending = self.pending();
        if event.need_rescan() || event.paths.is_empty() {
            for p in pending.iter_mut() {
                p.overflow = true;
                p.touch(now);
            }
            woke = true;
        }
        for path in &event.paths {
            let Some(i) = self.folder_of(path) else {
                continue;
            };
            let (Some(folder), Some(p)) = (self.folders.get(i), pending.get_mut(i)) else {
                continue;
            };
            if path.starts_with(&folder.index_dir)
                || path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(TEMP_FILE_PREFIX))
            {
                continue;
            }
            if path == &folder.root {
                // The folder itself was moved, deleted or changed mode: look at everything.
                p.overflow = true;
            } else if !p.overflow {
                if p.paths.len() >= MAX_PENDING_PATHS {
                    p.overflow = true;
                    p.paths.clear();
                } else {
                    p.paths.insert(path.clone());
                }
            }
            p.touch(now);
            woke = true;
        }
        drop(pending);
        if woke {
            self.wake.notify_one();
        }
    }

    /// Records a notification error: rescan the vaults concerned and tell the caller.
    fn note_error(&self, error: &notify::Error) {
        let vaults: Vec<usize> = if error.paths.is_empty() {
            (0..self.folders.len()).collect()
        } else {
            let mut v: Vec<usize> = error
                .paths
                .iter()
                .filter_map(|p| self.folder_of(p))
                .collect();
            v.dedup();
            v
        };
        let now = Instant::now();
        {
            let mut pending = self.pending();
            for &i in &vaults {
                if let Some(p) = pending.get_mut(i) {
                    p.overflow = true;
                    p.touch(now);
                }
            }
        }
        {
            let mut errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
            if errors.len() < MAX_PENDING_ERRORS {
                let vault = (vaults.len() == 1)
                    .then(|| vaults.first().copied())
                    .flatten();
                errors.push((vault, error.to_string()));
            }
        }
        self.wake.notify_one();
    }

    /// Marks vault `i` as changed on the server.
    fn note_remote(&self, i: usize) {
        if let Some(p) = self.pending().get_mut(i) {
            p.remote = true;
        }
        self.wake.notify_one();
    }
}

/// One watched vault.
struct Slot {
    engine: Engine,
    vault: VaultId,
    /// When the next periodic rescan is due.
    next_rescan: Option<Instant>,
    /// After a failure: when to retry, and the back-off so far.
    retry_at: Option<Instant>,
    backoff: Duration,
}

/// What the subscription task tells the main loop.
enum SubEvent {
    Subscribed,
    Disconnected(NetError),
}

/// Keeps the folders of one or several vaults in sync as they change.
///
/// Three things trigger a sync of a vault:
///
/// - **File notifications** (the `notify` crate: inotify, FSEvents, ReadDirectoryChangesW) on
///   the vault's folder, debounced: the watcher waits until the folder has been quiet for
///   [`WatchOptions::quiet`], but no longer than [`WatchOptions::max_delay`] after the first
///   notification. Before syncing it checks the notified paths against the local index
///   ([`Engine::local_paths_changed`]): notifications of the engine's own writes (temp files,
///   downloaded files already recorded in the index, the index itself) find nothing, so
///   downloads never echo back as syncs or uploads.
/// - **Server pushes**: a `Subscribe` stream on a connection of its own, re-opened after a
///   lost connection (and followed by a pull, since pushes may have been missed meanwhile).
///   A push first pulls ([`Engine::pull_has_changes`]); the full sync runs only if there is
///   something to apply, so a push about this device's own commit costs one pull.
/// - **A periodic full rescan** every [`WatchOptions::rescan_interval`], the safety net for
///   notifications the OS dropped.
///
/// Syncs run [`Engine::sync_with_reconnect`]. A failed sync is retried with back-off; the
/// watcher keeps running and reports the failure ([`WatchEvent::SyncFailed`]). All engines
/// must talk to the server `connector` connects to; vaults sync one at a time.
///
/// ```no_run
/// # async fn demo(engines: Vec<dooz_client::Engine>, connector: dooz_client::Connector)
/// # -> Result<(), Box<dyn std::error::Error>> {
/// use dooz_client::{WatchEvent, WatchOptions, Watcher};
///
/// let watcher = Watcher::new(engines, connector, WatchOptions::default())?;
/// let stop = watcher.stop_handle();
/// // e.g. on Ctrl-C: `stop.stop()`.
/// # stop.stop();
/// let engines = watcher
///     .run(|event| match event {
///         WatchEvent::Synced { vault, report, .. } => println!("{vault}: {report:?}"),
///         WatchEvent::SyncFailed { vault, error, .. } => eprintln!("{vault}: {error}"),
///         _ => {}
///     })
///     .await;
/// # drop(engines);
/// # Ok(()) }
/// ```
pub struct Watcher {
    slots: Vec<Slot>,
    connector: Arc<Connector>,
    options: WatchOptions,
    cancel: CancellationToken,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field(
                "vaults",
                &self.slots.iter().map(|s| s.vault).collect::<Vec<_>>(),
            )
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Watcher {
    /// A watcher of `engines` (one per vault), reconnecting and subscribing with `connector`.
    pub fn new(
        engines: Vec<Engine>,
        connector: Connector,
        options: WatchOptions,
    ) -> Result<Self, WatchError> {
        if engines.is_empty() {
            return Err(WatchError::NoVaults);
        }
        let mut seen = HashSet::new();
        let mut slots = Vec::with_capacity(engines.len());
        for engine in engines {
            let vault = engine.vault_index().vault();
            if !seen.insert(vault) {
                return Err(WatchError::DuplicateVault { vault });
            }
            slots.push(Slot {
                engine,
                vault,
                next_rescan: None,
                retry_at: None,
                backoff: RETRY_MIN,
            });
        }
        Ok(Self {
            slots,
            connector: Arc::new(connector),
            options,
            cancel: CancellationToken::new(),
        })
    }

    /// A handle that stops [`Watcher::run`].
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.cancel.clone())
    }

    /// Watches until stopped ([`StopHandle::stop`]), calling `on_event` with what happens,
    /// then gives the engines back. Never fails: sync and connection errors are reported as
    /// events and retried.
    pub async fn run<F: FnMut(WatchEvent) + Send>(self, mut on_event: F) -> Vec<Engine> {
        let Self {
            mut slots,
            connector,
            options,
            cancel,
        } = self;
        let quiet = options.quiet;
        let max_delay = options.max_delay.max(quiet);
        let shared = Arc::new(Shared {
            folders: slots
                .iter()
                .map(|s| Folder {
                    root: s.engine.root().to_path_buf(),
                    index_dir: s.engine.vault_index().index().path().to_path_buf(),
                })
                .collect(),
            pending: Mutex::new(slots.iter().map(|_| Pending::default()).collect()),
            errors: Mutex::new(Vec::new()),
            wake: Notify::new(),
        });

        // File notifications, set up off the runtime (a recursive watch walks the folder).
        let (fs_watcher, file_notifications) = start_notify(&shared, &slots, &mut on_event).await;

        // The subscription, on a connection of its own; wait for its first attempt so that
        // the start-up syncs see every commit made before it.
        let (sub_tx, mut sub_rx) = mpsc::unbounded_channel();
        let (first_tx, first_rx) = oneshot::channel();
        let sub_cancel = cancel.child_token();
        let subscription = tokio::spawn(subscription_task(
            Arc::clone(&connector),
            slots
                .iter()
                .map(|s| dooz_protocol::VaultId::from_bytes(s.vault.0))
                .collect(),
            Arc::clone(&shared),
            sub_tx,
            first_tx,
            sub_cancel.clone(),
        ));
        tokio::select! {
            () = cancel.cancelled() => {}
            _ = first_rx => {}
        }
        while let Ok(e) = sub_rx.try_recv() {
            on_event(sub_event(e));
        }

        let mut running = !cancel.is_cancelled();
        if running {
            let now = Instant::now();
            for slot in &mut slots {
                slot.next_rescan = options.rescan_interval.map(|d| now + d);
            }
            if options.sync_on_start {
                for i in 0..slots.len() {
                    if let Some(p) = shared.pending().get_mut(i) {
                        p.take_local();
                    }
                    if let Some(slot) = slots.get_mut(i)
                        && !run_sync(
                            slot,
                            &connector,
                            &options,
                            &cancel,
                            Trigger::Startup,
                            &mut on_event,
                        )
                        .await
                    {
                        running = false;
                        break;
                    }
                }
            }
        }
        if running {
            on_event(WatchEvent::Watching {
                vaults: slots.len(),
                file_notifications,
            });
        }

        let mut turn = 0usize;
        while running {
            // Register for a wake-up before looking, so that none is lost.
            let woken = shared.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            while let Ok(e) = sub_rx.try_recv() {
                on_event(sub_event(e));
            }
            report_notify_errors(&shared, &slots, &mut on_event);

            let now = Instant::now();
            let mut next_wake: Option<Instant> = None;
            let mut due = None;
            let n = slots.len();
            for k in 0..n {
                let i = (turn + k) % n;
                let Some(slot) = slots.get(i) else { continue };
                let pending = shared.pending();
                let Some(p) = pending.get(i) else { continue };
                let mut wake_at = |at: Instant| {
                    next_wake = Some(next_wake.map_or(at, |w| w.min(at)));
                };
                let found = if let Some(at) = slot.retry_at {
                    // Backing off: the retry's full sync covers whatever else happened.
                    if now >= at {
                        Some(Trigger::Retry)
                    } else {
                        wake_at(at);
                        None
                    }
                } else if slot.next_rescan.is_some_and(|at| now >= at) {
                    Some(Trigger::Rescan)
                } else if p.remote {
                    Some(Trigger::RemoteChange)
                } else {
                    let mut found = None;
                    if let (Some(first), Some(last)) = (p.first, p.last) {
                        let at = (last + quiet).min(first + max_delay);
                        if now >= at {
                            found = Some(Trigger::LocalChange);
                        } else {
                            wake_at(at);
                        }
                    }
                    if let Some(at) = slot.next_rescan {
                        wake_at(at);
                    }
                    found
                };
                drop(pending);
                if let Some(trigger) = found {
                    due = Some((i, trigger));
                    break;
                }
            }

            let Some((i, trigger)) = due else {
                let sleep = async {
                    match next_wake {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = cancel.cancelled() => running = false,
                    () = &mut woken => {}
                    Some(e) = sub_rx.recv() => on_event(sub_event(e)),
                    () = sleep => {}
                }
                continue;
            };
            turn = i + 1;
            let Some(slot) = slots.get_mut(i) else {
                continue;
            };
            running = handle(
                slot,
                i,
                trigger,
                &shared,
                &connector,
                &options,
                &cancel,
                &mut on_event,
            )
            .await;
        }

        sub_cancel.cancel();
        let _ = subscription.await;
        drop(fs_watcher);
        on_event(WatchEvent::Stopped);
        slots.into_iter().map(|s| s.engine).collect()
    }
}

fn sub_event(e: SubEvent) -> WatchEvent {
    match e {
        SubEvent::Subscribed => WatchEvent::Subscribed,
        SubEvent::Disconnected(error) => WatchEvent::Disconnected { error },
    }
}

fn report_notify_errors(shared: &Shared, slots: &[Slot], on_event: &mut impl FnMut(WatchEvent)) {
    let errors = std::mem::take(&mut *shared.errors.lock().unwrap_or_else(PoisonError::into_inner));
    for (i, error) in errors {
        let vault = i.and_then(|i| slots.get(i)).map(|s| s.vault);
        tracing::warn!(?vault, %error, "file notifications failed; relying on rescans");
        on_event(WatchEvent::NotifyFailed { vault, error });
    }
}

/// Sets up file notifications for every folder; returns the watcher (dropping it stops
/// them) and whether every folder is watched.
async fn start_notify(
    shared: &Arc<Shared>,
    slots: &[Slot],
    on_event: &mut impl FnMut(WatchEvent),
) -> (Option<notify::RecommendedWatcher>, bool) {
    use notify::Watcher as _;
    let handler = {
        let shared = Arc::clone(shared);
        move |res: notify::Result<notify::Event>| match res {
            Ok(event) => shared.note(&event),
            Err(error) => shared.note_error(&error),
        }
    };
    let roots: Vec<(VaultId, PathBuf)> = slots
        .iter()
        .map(|s| (s.vault, s.engine.root().to_path_buf()))
        .collect();
    let setup = tokio::task::spawn_blocking(move || {
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(e) => return (None, vec![(None, e.to_string())]),
        };
        let mut failures = Vec::new();
        for (vault, root) in roots {
            if let Err(e) = watcher.watch(&root, notify::RecursiveMode::Recursive) {
                failures.push((Some(vault), format!("cannot watch {}: {e}", root.display())));
            }
        }
        (Some(watcher), failures)
    })
    .await;
    let (watcher, failures) = match setup {
        Ok(r) => r,
        Err(e) => (None, vec![(None, e.to_string())]),
    };
    let all = watcher.is_some() && failures.is_empty();
    for (vault, error) in failures {
        tracing::warn!(?vault, %error, "file notifications unavailable; relying on rescans");
        on_event(WatchEvent::NotifyFailed { vault, error });
    }
    (watcher, all)
}

/// Handles one due trigger of vault `i`: checks whether there is anything to do, then syncs.
/// Returns `false` when the watcher was stopped meanwhile.
#[allow(clippy::too_many_arguments)]
async fn handle(
    slot: &mut Slot,
    i: usize,
    trigger: Trigger,
    shared: &Shared,
    connector: &Connector,
    options: &WatchOptions,
    cancel: &CancellationToken,
    on_event: &mut impl FnMut(WatchEvent),
) -> bool {
    let mut trigger = trigger;
    let must_sync = match trigger {
        Trigger::Retry | Trigger::Rescan | Trigger::Startup => {
            // A full sync covers everything noticed so far.
            if let Some(p) = shared.pending().get_mut(i) {
                p.take_local();
                p.remote = false;
            }
            true
        }
        Trigger::RemoteChange => {
            if let Some(p) = shared.pending().get_mut(i) {
                p.remote = false;
            }
            let checked = tokio::select! {
                () = cancel.cancelled() => return false,
                r = slot.engine.pull_has_changes() => r,
            };
            // A failed pull goes to the full sync, which reconnects and reports.
            checked.unwrap_or(true)
        }
        Trigger::LocalChange => {
            let (paths, overflow) = shared
                .pending()
                .get_mut(i)
                .map(Pending::take_local)
                .unwrap_or_default();
            if overflow {
                trigger = Trigger::Rescan;
                true
            } else {
                slot.engine.local_paths_changed(&paths).unwrap_or(true)
            }
        }
    };
    if !must_sync {
        on_event(WatchEvent::NothingToSync {
            vault: slot.vault,
            trigger,
        });
        return true;
    }
    run_sync(slot, connector, options, cancel, trigger, on_event).await
}

/// Runs one full sync of `slot` and reports it. Returns `false` when the watcher was stopped
/// meanwhile (the sync is abandoned).
async fn run_sync(
    slot: &mut Slot,
    connector: &Connector,
    options: &WatchOptions,
    cancel: &CancellationToken,
    trigger: Trigger,
    on_event: &mut impl FnMut(WatchEvent),
) -> bool {
    let vault = slot.vault;
    if trigger == Trigger::Rescan {
        // The periodic safety net also brings the vault keys up to date: a revocation asks for
        // a rotation, and other devices' rotations bring new keys.
        if let Err(error) = slot.engine.refresh_keys(connector.keys()).await {
            tracing::warn!(%vault, %error, "could not bring the vault keys up to date");
        }
    }
    on_event(WatchEvent::SyncStarted { vault, trigger });
    let result = tokio::select! {
        () = cancel.cancelled() => return false,
        r = slot.engine.sync_with_reconnect(connector, options.max_attempts) => r,
    };
    let now = Instant::now();
    match result {
        Ok(report) => {
            slot.retry_at = None;
            slot.backoff = RETRY_MIN;
            slot.next_rescan = options.rescan_interval.map(|d| now + d);
            on_event(WatchEvent::Synced {
                vault,
                trigger,
                report,
            });
        }
        Err(error) => {
            let retry_in = slot.backoff.min(options.retry_max_delay.max(RETRY_MIN));
            slot.retry_at = Some(now + retry_in);
            slot.backoff = (slot.backoff * 2).min(options.retry_max_delay.max(RETRY_MIN));
            tracing::warn!(%vault, %error, ?retry_in, "sync failed");
            on_event(WatchEvent::SyncFailed {
                vault,
                trigger,
                error,
                retry_in,
            });
        }
    }
    true
}

/// Keeps a subscription to `vaults` open on a connection of its own, marking vaults changed
/// as the server pushes. After the first attempt (success or not) it signals `first`.
async fn subscription_task(
    connector: Arc<Connector>,
    vaults: Vec<dooz_protocol::VaultId>,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<SubEvent>,
    first: oneshot::Sender<()>,
    cancel: CancellationToken,
) {
    let mut first = Some(first);
    let mut delay = RESUBSCRIBE_MIN;
    let mut conn: Option<crate::net::Connection> = None;
    let mut subscribed_before = false;
    loop {
        let attempt = async {
            let c = match conn.take() {
                Some(c) if c.close_reason().is_none() => c,
                _ => connector.connect().await?,
            };
            let sub = c.subscribe(vaults.clone()).await;
            conn = Some(c);
            sub
        };
        let attempt = tokio::select! {
            () = cancel.cancelled() => break,
            r = attempt => r,
        };
        let mut sub = match attempt {
            Ok(sub) => sub,
            Err(e) => {
                let _ = events.send(SubEvent::Disconnected(e));
                if let Some(tx) = first.take() {
                    let _ = tx.send(());
                }
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(RESUBSCRIBE_MAX);
                continue;
            }
        };
        delay = RESUBSCRIBE_MIN;
        let _ = events.send(SubEvent::Subscribed);
        if let Some(tx) = first.take() {
            let _ = tx.send(());
        }
        if subscribed_before {
            // Pushes may have been missed while disconnected.
            for i in 0..vaults.len() {
                shared.note_remote(i);
            }
        }
        subscribed_before = true;
        loop {
            let next = tokio::select! {
                () = cancel.cancelled() => {
                    if let Some(c) = conn.take() {
                        c.close().await;
                    }
                    return;
                }
                r = sub.next() => r,
            };
            match next {
                Ok(Some(changed)) => {
                    if let Some(i) = vaults.iter().position(|v| *v == changed.vault) {
                        shared.note_remote(i);
                    }
                }
                Ok(None) => {
                    let error = conn
                        .as_ref()
                        .and_then(crate::net::Connection::close_reason)
                        .unwrap_or_else(|| NetError::Connection {
                            server: connector.server_addr().to_owned(),
                            reason: "the server ended the subscription".to_owned(),
                            retryable: true,
                        });
                    let _ = events.send(SubEvent::Disconnected(error));
                    break;
                }
                Err(e) => {
                    let _ = events.send(SubEvent::Disconnected(e));
                    break;
                }
            }
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(RESUBSCRIBE_MAX);
    }
    if let Some(c) = conn.take() {
        c.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(roots: &[&str]) -> Shared {
        Shared {
            folders: roots
                .iter()
                .map(|r| Folder {
                    root: PathBuf::from(r),
                    index_dir: PathBuf::from(r).join(".dooz-index"),
                })
                .collect(),
            pending: Mutex::new(roots.iter().map(|_| Pending::default()).collect()),
            errors: Mutex::new(Vec::new()),
            wake: Notify::new(),
        }
    }

    fn event(kind: notify::EventKind, paths: &[&str]) -> notify::Event {
        let mut e = notify::Event::new(kind);
        for p in paths {
            e = e.add_path(PathBuf::from(p));
        }
        e
    }

    #[test]
    fn notifications_are_filtered_and_routed() {
        use notify::EventKind;
        use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
        let s = shared(&["/v/a", "/v/a/inner", "/v/b"]);
        // Reads, temp files and the index are not changes.
        s.note(&event(
            EventKind::Access(AccessKind::Open(AccessMode::Read)),
            &["/v/a/x"],
        ));
        s.note(&event(
            EventKind::Create(CreateKind::File),
            &["/v/a/.dooz-tmp-0123"],
        ));
        s.note(&event(
            EventKind::Modify(ModifyKind::Any),
            &["/v/a/.dooz-index/db"],
        ));
        s.note(&event(
            EventKind::Create(CreateKind::File),
            &["/elsewhere/x"],
        ));
        assert!(s.pending().iter().all(|p| !p.local()));

        // A rename from a temp file names the final path; nested folders go to the inner one.
        s.note(&event(
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            &["/v/a/.dooz-tmp-0123", "/v/a/file"],
        ));
        s.note(&event(
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            &["/v/a/inner/y"],
        ));
        {
            let p = s.pending();
            assert_eq!(p[0].paths, HashSet::from([PathBuf::from("/v/a/file")]));
            assert_eq!(p[1].paths, HashSet::from([PathBuf::from("/v/a/inner/y")]));
            assert!(!p[2].local());
        }

        // Too many paths, or a lost-events flag: check nothing, sync everything.
        for n in 0..=MAX_PENDING_PATHS {
            s.note(&event(
                EventKind::Create(CreateKind::File),
                &[&format!("/v/b/{n}")],
            ));
        }
        let (paths, overflow) = s.pending()[2].take_local();
        assert!(paths.is_empty() && overflow);
        s.note(&event(EventKind::Other, &[]).set_flag(notify::event::Flag::Rescan));
        assert!(s.pending().iter().all(|p| p.overflow && p.local()));
    }

    #[test]
    fn defaults_are_sane() {
        let o = WatchOptions::default();
        assert!(o.quiet < o.max_delay);
        assert!(o.rescan_interval.is_some() && o.sync_on_start);
        assert_eq!(Trigger::LocalChange.to_string(), "local change");
    }
}
