//! `dooz sync --watch`: the library's [`Watcher`] (file notifications, debouncing, server
//! pushes, periodic rescans, reconnects) with what it reports turned into output.
//!
//! Output: one line (or `--json` object, the fields of a one-off `sync` plus `trigger`) per
//! vault at start-up and then per sync that sent or received something. Trouble is warned
//! about on stderr once, not on every retry: one warning per outage of the server, one per
//! vault and error while a vault keeps failing. Errors that need a person (not enrolled,
//! revoked, another server) end the watch with exit code 1. The first Ctrl-C stops the
//! watcher (a sync in progress is abandoned, safely: the next one resumes it); a second one
//! exits at once.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use anyhow::Context as _;
use dooz_client::{
    Connector, EngineError, NetError, StopHandle, Trigger, VaultMeta, WatchEvent, WatchOptions,
    Watcher,
};
use dooz_crypto::VaultId;
use tokio_util::sync::CancellationToken;

use crate::home::{Enrolled, Opened};
use crate::output::{Out, unix_now};
use crate::sync::{did_something, is_fatal, is_fatal_net, report_sync};

/// `dooz sync [VAULT] --watch` for `vaults`, until Ctrl-C or an error that needs a person.
pub(crate) async fn watch(
    home: &Opened,
    enrolled: &Enrolled,
    vaults: &[(String, VaultMeta)],
    connector: Connector,
    out: &Out,
) -> anyhow::Result<()> {
    let interrupted = CancellationToken::new();
    on_interrupt(interrupted.clone())?;

    // The engines need a connection to start with; a watch waits for the server as long as
    // it takes (the watcher reconnects by itself later on).
    let conn = tokio::select! {
        () = interrupted.cancelled() => return Ok(()),
        conn = crate::sync::connect_retrying(&connector, out, true) => conn?,
    };
    crate::sync::maintain(home, enrolled, &conn, out).await;
    let mut engines = Vec::with_capacity(vaults.len());
    for (name, meta) in vaults {
        engines.push(crate::sync::engine(
            home,
            enrolled,
            name,
            meta,
            conn.clone(),
            out,
        )?);
    }
    let options = WatchOptions::default();
    let rescan_secs = options.rescan_interval.map(|d| d.as_secs());
    let watcher = Watcher::new(engines, connector, options)?;
    let stop = watcher.stop_handle();
    let stopper = {
        let stop = stop.clone();
        let interrupted = interrupted.clone();
        tokio::spawn(async move {
            interrupted.cancelled().await;
            stop.stop();
        })
    };

    let mut report = Reporter {
        out,
        home,
        names: vaults.iter().map(|(n, m)| (m.vault, n.clone())).collect(),
        stop,
        rescan_secs,
        started: None,
        outage: false,
        failing: HashMap::new(),
        notify_warned: HashSet::new(),
        fatal: None,
    };
    let engines = watcher.run(|event| report.on_event(event)).await;
    stopper.abort();
    for engine in &engines {
        let conn = engine.connection();
        if conn.close_reason().is_none() {
            conn.close().await;
        }
    }
    match report.fatal {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Listens for Ctrl-C from now on (registered before this returns, so none is missed): the
/// first cancels `token`, a second exits at once.
fn on_interrupt(token: CancellationToken) -> anyhow::Result<()> {
    const STOPPING: &str = "stopping (press Ctrl-C again to quit at once)";
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupts = signal(SignalKind::interrupt()).context("cannot listen for Ctrl-C")?;
        tokio::spawn(async move {
            if interrupts.recv().await.is_some() {
                eprintln!("{STOPPING}");
                token.cancel();
                if interrupts.recv().await.is_some() {
                    std::process::exit(130);
                }
            }
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("{STOPPING}");
            token.cancel();
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    Ok(())
}

/// Turns [`WatchEvent`]s into output, remembering what was already said.
struct Reporter<'a> {
    out: &'a Out,
    home: &'a Opened,
    names: HashMap<VaultId, String>,
    stop: StopHandle,
    rescan_secs: Option<u64>,
    /// The sync in progress (vaults sync one at a time) and when it began.
    started: Option<(VaultId, Instant)>,
    /// The server is unreachable and that was said.
    outage: bool,
    /// Vaults whose last sync failed for a reason other than the server being unreachable,
    /// with the error said.
    failing: HashMap<VaultId, String>,
    /// Vaults (`None`: all) whose file-notification trouble was said.
    notify_warned: HashSet<Option<VaultId>>,
    /// An error that needs a person; the watcher was stopped.
    fatal: Option<anyhow::Error>,
}

impl Reporter<'_> {
    fn name(&self, vault: VaultId) -> String {
        self.names
            .get(&vault)
            .cloned()
            .unwrap_or_else(|| vault.to_string())
    }

    fn on_event(&mut self, event: WatchEvent) {
        match event {
            WatchEvent::Subscribed => self.reachable(),
            WatchEvent::Disconnected { error } => {
                if is_fatal_net(&error) {
                    self.fatal(anyhow::Error::new(error).context("the server refused this device"));
                } else {
                    self.unreachable(&error);
                }
            }
            WatchEvent::NotifyFailed { vault, error } => {
                if self.notify_warned.insert(vault) {
                    let which = match vault {
                        Some(v) => format!(" for vault {:?}", self.name(v)),
                        None => String::new(),
                    };
                    self.out.warn(&format!(
                        "file notifications{which} failed: {error}; local changes are found by \
                         the periodic rescan{}",
                        self.every()
                    ));
                }
            }
            WatchEvent::Watching {
                vaults,
                file_notifications,
            } => {
                let what = if vaults == 1 {
                    "1 vault".to_owned()
                } else {
                    format!("{vaults} vaults")
                };
                let how = if file_notifications {
                    String::new()
                } else {
                    format!(" (local changes by rescan only{})", self.every())
                };
                self.out.hint(&format!(
                    "watching {what} for changes{how}; press Ctrl-C to stop"
                ));
            }
            WatchEvent::SyncStarted { vault, trigger } => {
                tracing::debug!(%vault, %trigger, "sync started");
                self.started = Some((vault, Instant::now()));
            }
            WatchEvent::Synced {
                vault,
                trigger,
                report,
            } => {
                let elapsed = match self.started.take() {
                    Some((v, at)) if v == vault => at.elapsed(),
                    _ => std::time::Duration::ZERO,
                };
                if let Err(e) = self.home.index.set_last_sync(vault, unix_now()) {
                    tracing::warn!(error = %e, "cannot record the time of the last sync");
                }
                self.reachable();
                let name = self.name(vault);
                if self.failing.remove(&vault).is_some() {
                    self.out.hint(&format!("{name}: syncing again"));
                }
                if trigger == Trigger::Startup || did_something(&report) {
                    report_sync(self.out, &name, vault, &report, elapsed, Some(trigger));
                }
            }
            WatchEvent::SyncFailed {
                vault,
                trigger,
                error,
                retry_in,
            } => {
                self.started = None;
                tracing::debug!(%vault, %trigger, %error, "sync failed");
                if is_fatal(&error) {
                    let name = self.name(vault);
                    self.fatal(
                        anyhow::Error::new(error).context(format!("vault {name:?} did not sync")),
                    );
                } else if is_unreachable(&error) {
                    if let EngineError::Net(e) = &error {
                        self.unreachable(e);
                    }
                } else {
                    let said = format!("{error:#}");
                    if self.failing.get(&vault) != Some(&said) {
                        self.out.warn(&format!(
                            "vault {:?} did not sync: {said}; retrying in {} s and after the \
                             next change",
                            self.name(vault),
                            retry_in.as_secs().max(1)
                        ));
                        self.failing.insert(vault, said);
                    }
                }
            }
            WatchEvent::NothingToSync { vault, trigger } => {
                tracing::debug!(%vault, %trigger, "nothing to sync");
            }
            WatchEvent::Stopped => tracing::debug!("watcher stopped"),
            other => tracing::debug!(?other, "watch event"),
        }
    }

    /// `" (every N s)"`, the rescan period.
    fn every(&self) -> String {
        self.rescan_secs
            .map(|s| format!(" (every {s} s)"))
            .unwrap_or_default()
    }

    /// The server cannot be reached: said once per outage.
    fn unreachable(&mut self, error: &NetError) {
        if !self.outage {
            self.outage = true;
            // A refusal (an inactive subscription, say) explains itself and says what is kept.
            let text = match error {
                NetError::Server { .. } => format!("the server refuses to sync: {error}"),
                _ => format!(
                    "lost the server: {error}; local changes are kept and sent when it is back"
                ),
            };
            self.out.warn(&text);
        } else {
            tracing::debug!(%error, "still unreachable");
        }
    }

    /// The server answered: the outage (if any) is over.
    fn reachable(&mut self) {
        if std::mem::take(&mut self.outage) {
            self.out.hint("connected to the server again");
        }
    }

    fn fatal(&mut self, error: anyhow::Error) {
        if self.fatal.is_none() {
            self.fatal = Some(error);
        }
        self.stop.stop();
    }
}

/// Whether a failed sync means the server is unreachable (rather than trouble with the vault).
fn is_unreachable(error: &EngineError) -> bool {
    matches!(
        error,
        EngineError::Net(e) if e.is_connection_lost() || matches!(e, NetError::Resolve { .. })
    )
}
