//! What `dooz sync --watch` waits for between syncs: a head change pushed by the server
//! (`Subscribe`), a periodic tick that rescans the folders, or Ctrl-C.
//!
//! A stand-in for the library watcher (file notifications, debouncing): swap it in here, the
//! sync loop in `sync.rs` only calls [`Waiter::wait`].

use std::sync::Arc;
use std::time::Duration;

use dooz_client::{Connection, Subscription, VaultMeta};
use dooz_crypto::VaultId;
use tokio::sync::Notify;

use crate::home::Opened;

/// Rescan period: local edits are picked up at most this long after they happen.
const TICK: Duration = Duration::from_secs(10);

/// Why the wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// The server has commits this device has not pulled.
    Changed,
    /// The rescan period passed.
    Tick,
    /// The user asked to stop (Ctrl-C).
    Stop,
}

/// Waits between syncs.
pub(crate) struct Waiter {
    index: dooz_client::Index,
    vaults: Vec<VaultId>,
    subscription: Option<(Connection, Subscription)>,
    stop: Arc<Notify>,
    stopping: bool,
}

impl Waiter {
    /// A waiter for `vaults`. Installs the Ctrl-C handler: the first Ctrl-C stops after the
    /// sync in progress, a second one exits at once.
    pub(crate) fn new(home: &Opened, vaults: &[(String, VaultMeta)]) -> Self {
        let stop = Arc::new(Notify::new());
        let notify = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("stopping after the sync in progress (Ctrl-C again to quit now)");
                notify.notify_one();
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
        Self {
            index: home.index.clone(),
            vaults: vaults.iter().map(|(_, m)| m.vault).collect(),
            subscription: None,
            stop,
            stopping: false,
        }
    }

    /// Whether the server's `seq` for `vault` is past what this device pulled.
    fn is_news(&self, vault: VaultId, seq: dooz_protocol::Seq) -> bool {
        match self.index.vault(vault).and_then(|v| v.cursor()) {
            Ok(cursor) => seq > cursor,
            Err(_) => true,
        }
    }

    /// Waits for a change on the server, the next tick or Ctrl-C, over `conn`.
    pub(crate) async fn wait(&mut self, conn: &Connection) -> Wake {
        if self.stopping {
            return Wake::Stop;
        }
        // A subscription lives on one connection: renew it when the engine reconnected.
        if self
            .subscription
            .as_ref()
            .is_some_and(|(c, _)| c.close_reason().is_some() || c.server() != conn.server())
            || conn.close_reason().is_some()
        {
            self.subscription = None;
        }
        if self.subscription.is_none() && conn.close_reason().is_none() {
            let ids = self
                .vaults
                .iter()
                .map(|v| dooz_protocol::VaultId::from_bytes(v.0))
                .collect();
            match conn.subscribe(ids).await {
                Ok(sub) => self.subscription = Some((conn.clone(), sub)),
                Err(e) => tracing::debug!(error = %e, "cannot subscribe; rescanning on a timer"),
            }
        }
        let tick = tokio::time::sleep(TICK);
        tokio::pin!(tick);
        loop {
            let next = async {
                match self.subscription.as_mut() {
                    Some((_, sub)) => sub.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.stop.notified() => {
                    self.stopping = true;
                    return Wake::Stop;
                }
                () = &mut tick => return Wake::Tick,
                changed = next => match changed {
                    Ok(Some(c)) => {
                        let vault = VaultId(*c.vault.as_bytes());
                        if self.is_news(vault, c.seq) {
                            return Wake::Changed;
                        }
                        // Our own commits come back too: nothing to pull.
                    }
                    Ok(None) | Err(_) => {
                        // Lost: the next wait subscribes again; until then, the tick.
                        self.subscription = None;
                    }
                },
            }
        }
    }
}
