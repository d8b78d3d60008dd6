//! Change events ([`Event`]) and the streams that deliver them ([`EventStream`]).

use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dooz_client::{Resolution, SyncReport};
use dooz_crypto::{VaultId, VersionId};
use tokio::sync::mpsc;

/// What happened, as [`Client::watch`](crate::Client::watch) and
/// [`Vault::watch`](crate::Vault::watch) report it.
///
/// Each remote change is delivered once to every stream open when it is applied: changes are
/// reported after the local store has recorded them, and a change applied again after a crash
/// (because it had not been recorded) is reported by the run that records it. A stream buffers
/// what its reader has not taken yet.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// This client changed a value (a put, a delete, a restore).
    Local {
        /// The vault.
        vault: VaultId,
        /// The key.
        key: String,
        /// What changed.
        change: Change,
    },
    /// Another device's change arrived and is in the local store.
    Remote {
        /// The vault.
        vault: VaultId,
        /// The key.
        key: String,
        /// What changed.
        change: Change,
    },
    /// This device and another changed the same key since they last agreed. The event carries
    /// both versions and says what was kept (see [`ConflictPolicy`](crate::ConflictPolicy)). The
    /// remote change it concerns is delivered by this event, not also as [`Event::Remote`].
    Conflict(Box<ConflictEvent>),
    /// Sync and connection status.
    Status(Status),
}

impl Event {
    /// The vault the event concerns, if one.
    pub fn vault(&self) -> Option<VaultId> {
        match self {
            Self::Local { vault, .. } | Self::Remote { vault, .. } => Some(*vault),
            Self::Conflict(c) => Some(c.vault),
            Self::Status(s) => s.vault(),
        }
    }
}

/// A change of one value.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// The key holds a new value.
    Put {
        /// Its length in bytes.
        size: u64,
        /// The version, when known (remote changes).
        version: Option<VersionId>,
    },
    /// The key was deleted.
    Delete,
}

/// A conflict: both sides changed `key`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConflictEvent {
    /// The vault.
    pub vault: VaultId,
    /// The key both sides changed.
    pub key: String,
    /// This device's version (`None`: deleted here).
    pub ours: Option<Side>,
    /// The other device's version (`None`: deleted there).
    pub theirs: Option<Side>,
    /// What was kept.
    pub resolution: Resolution,
}

/// One side of a conflict.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Side {
    /// The key this version can be read under now: `key` for the version that was kept there,
    /// the conflicted copy's key for ours when both are kept, `None` when it was not kept
    /// (a remote version not kept stays in the key's history: see `version`).
    pub key: Option<String>,
    /// Its length in bytes.
    pub size: u64,
    /// Its modification time.
    pub modified: SystemTime,
    /// BLAKE3 of its content.
    pub content_hash: [u8; 32],
    /// Its version id (the remote side).
    pub version: Option<VersionId>,
    /// The content itself, when it is on this device and at most
    /// [`ClientOptions::inline_conflict_values`](crate::ClientOptions) bytes.
    pub value: Option<Vec<u8>>,
}

/// Sync and connection status.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// Background sync reached the server (at start and after each reconnect).
    Online,
    /// Background sync lost the server or cannot reach it; it keeps trying. Values can be put
    /// and read meanwhile.
    Offline {
        /// Why.
        reason: String,
    },
    /// A vault synced.
    Synced {
        /// The vault.
        vault: VaultId,
        /// What the sync did.
        report: SyncReport,
    },
    /// A sync failed.
    SyncFailed {
        /// The vault.
        vault: VaultId,
        /// What went wrong.
        error: String,
        /// Whether it is retried by itself (and after how long), or needs the app.
        retry_in: Option<Duration>,
    },
}

impl Status {
    fn vault(&self) -> Option<VaultId> {
        match self {
            Self::Synced { vault, .. } | Self::SyncFailed { vault, .. } => Some(*vault),
            Self::Online | Self::Offline { .. } => None,
        }
    }
}

/// A stream of [`Event`]s ([`futures::Stream`]); ends when the client is dropped.
#[derive(Debug)]
pub struct EventStream {
    rx: mpsc::UnboundedReceiver<Event>,
    vault: Option<VaultId>,
}

impl EventStream {
    /// The next event (`None` once the client is gone).
    pub async fn next_event(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        loop {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(event)) => {
                    // A vault's stream has its events and the client-wide ones (status).
                    if self.vault.is_none() || event.vault().is_none_or(|v| Some(v) == self.vault) {
                        return Poll::Ready(Some(event));
                    }
                }
                other => return other,
            }
        }
    }
}

impl futures::Stream for EventStream {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.get_mut().poll_event(cx)
    }
}

/// Where events go: every open stream.
#[derive(Debug, Default)]
pub(crate) struct Hub {
    subscribers: Mutex<Vec<mpsc::UnboundedSender<Event>>>,
}

impl Hub {
    pub(crate) fn subscribe(&self, vault: Option<VaultId>) -> EventStream {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().push(tx);
        EventStream { rx, vault }
    }

    pub(crate) fn emit(&self, event: Event) {
        self.lock().retain(|tx| tx.send(event.clone()).is_ok());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<mpsc::UnboundedSender<Event>>> {
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The index's nanosecond times as a [`SystemTime`].
pub(crate) fn system_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns.unsigned_abs())
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_nanos(ns.unsigned_abs()))
            .unwrap_or(UNIX_EPOCH)
    }
}
