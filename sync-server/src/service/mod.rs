//! The data-plane service: the QUIC accept loop, connection admission, and one request per
//! bidirectional stream.
//!
//! # Goals
//!
//! - Refuse unknown and revoked devices before any request, with a [`CloseCode`] and a reason
//!   that says what to do; close a device's connections at once when it is revoked
//!   ([`Server::revoke_device`]).
//! - Serve requests on parallel streams, bounded per connection (QUIC stream limit) and
//!   server-wide in chunk bytes held in memory (a semaphore of bytes).
//! - Never store a chunk whose BLAKE3 does not match its header; never overwrite a committed
//!   chunk's blob.
//! - Answer every malformed, oversized or unknown frame with an `Error` and close only that
//!   stream: the connection and other clients go on.
//! - Push `Changed{vault, seq}` to subscribed connections as commits land.
//! - Pairing slots (`pairing`): one-use mailboxes between two devices of an account, 15
//!   minutes at most, refusals typed as unknown / expired / used.
//! - Shut down gracefully: stop accepting, let requests in flight finish (within a grace
//!   period), close connections with [`CloseCode::ShuttingDown`].
//! - Enforce each account's policy ([`crate::policy`]): a blocked subscription refuses every
//!   request, a read-only one refuses writes, both with `SubscriptionInactive`; hard limits on
//!   stored bytes, vaults and devices answer `QuotaExceeded` *before* the bytes or the new vault
//!   or device are accepted.
//!
//! # Non-goals
//!
//! - Metering of traffic: a later issue. Pairing slots live in memory ([`pairing`]).
//! - Several server instances sharing one store: commits are broadcast in-process only.

mod admin;
mod codes;
mod connection;
mod enrolment;
mod gc;
mod handlers;
pub(crate) mod meter;
mod pack;
mod pairing;
mod quota;
mod recovery;
mod rotation;
pub mod routed;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dooz_protocol::{DeviceId, Seq, VaultId};
use dooz_storage::{BlobStore, LocalDir, Retrying, StorageError, open_url};
use quinn::Endpoint;
use thiserror::Error;
use tokio::sync::{Semaphore, broadcast};
use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::config::{BlobLocation, ServerConfig, ServiceLimits};
use crate::policy::{PolicySource, Unlimited};
use crate::store::{
    AccountRecord, DeviceRecord, MetaStore, SledStore, StoreError, TenantId, TenantRecord,
};
use crate::tls::{ServerIdentity, TlsError};
use crate::transport::{TransportError, TransportTuning, server_endpoint};

#[cfg(unix)]
pub use admin::{ADMIN_SOCKET_FILE, AdminSocket, admin_call};
pub use admin::{AdminError, AdminRequest, AdminResponse, ensure_account, mint_enrolment_code};
pub use codes::{CloseCode, SHUTTING_DOWN_REASON};
pub use enrolment::{
    ENROL_EXTENSION_TAG, ENROLMENT_CODE_PREFIX, EnrolRequest, EnrolmentCode, EnrolmentCodeError,
};
pub use gc::{GcReport, GcSettings};
pub use pack::{PackFormatError, PackSettings, read_pack_index};

/// Server-wide metering totals since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeterTotals {
    /// Metered bytes received.
    pub ingress_bytes: u64,
    /// Metered bytes sent.
    pub egress_bytes: u64,
    /// Requests metered.
    pub requests: u64,
    /// Store writes that carried them (group commits).
    pub batches: u64,
    /// Store writes that failed (their requests were answered with an error).
    pub failures: u64,
}

/// Directory of the metadata store inside the data dir.
pub const STORE_DIR: &str = "meta";

/// Commits remembered for subscribers that fall behind; past it they get the current heads.
const CHANGES_CAPACITY: usize = 1024;

/// Upload locks: a chunk's blob is written and recorded under one of these, picked by the
/// chunk id, so that two uploads of the same pending chunk cannot leave the record and the
/// blob disagreeing.
const UPLOAD_LOCKS: usize = 64;

/// Starting or running the server failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The metadata store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The blob store could not be opened.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The TLS identity could not be loaded or made.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The QUIC endpoint could not start.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A file or directory could not be used.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
}

/// Unix seconds now (0 if the clock is before 1970).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the server is made of: stores, identity and settings. [`open`](Self::open) builds it
/// from a [`ServerConfig`]; tests may assemble one by hand.
pub struct ServerParts {
    /// The metadata store.
    pub store: Arc<dyn MetaStore>,
    /// The blob store for sealed chunks.
    pub blobs: Arc<dyn BlobStore>,
    /// The server's TLS identity.
    pub identity: ServerIdentity,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// QUIC tuning.
    pub tuning: TransportTuning,
    /// Service limits.
    pub limits: ServiceLimits,
    /// How long shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
    /// Where account policies (access, limits) come from; [`Unlimited`] when no control plane
    /// is configured.
    pub policy: Arc<dyn PolicySource>,
}

impl std::fmt::Debug for ServerParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerParts")
            .field("blobs", &self.blobs)
            .field("identity", &self.identity)
            .field("listen", &self.listen)
            .field("tuning", &self.tuning)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// The default tenant and account, made on first start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap {
    /// The default tenant.
    pub tenant: TenantRecord,
    /// The default account, to which enrolment codes add devices.
    pub account: AccountRecord,
    /// Whether they were made just now (first start).
    pub first_start: bool,
}

impl ServerParts {
    /// Opens everything under the config's data dir, making what is missing: the directory,
    /// the sled store (`meta/`), the blob store (`blobs/` by default), the TLS identity, and
    /// the default tenant and account.
    pub async fn open(config: &ServerConfig) -> Result<(Self, Bootstrap), ServerError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::Io {
            action: "create the data dir",
            path: config.data_dir.clone(),
            source,
        })?;
        let identity = ServerIdentity::load_or_create(&config.data_dir)?;
        let store: Arc<dyn MetaStore> = match &config.metadata {
            crate::config::MetadataLocation::Sled => Arc::new(SledStore::open_with(
                config.data_dir.join(STORE_DIR),
                config.traffic_sync,
            )?),
            crate::config::MetadataLocation::Postgres { url, pool_size } => {
                Arc::new(crate::store::PgStore::connect(url, *pool_size).await?)
            }
        };
        let blobs: Arc<dyn BlobStore> = match &config.blobs {
            BlobLocation::Dir(dir) => Arc::new(LocalDir::open(dir)?),
            // Remote backends fail transiently; retry with backoff before answering
            // `Internal` (which devices retry too).
            BlobLocation::Url(url) => Arc::new(Retrying::new(open_url(url)?)),
        };
        let bootstrap = ensure_account(
            store.as_ref(),
            &config.default_tenant,
            &config.default_account,
        )
        .await?;
        Ok((
            Self {
                store,
                blobs,
                identity,
                listen: config.listen,
                tuning: config.tuning.clone(),
                limits: config.limits,
                shutdown_grace: config.shutdown_grace,
                policy: Arc::new(Unlimited),
            },
            bootstrap,
        ))
    }
}

/// State shared by the accept loop, connections and requests.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn MetaStore>,
    /// Every blob operation goes through `routes` (each tenant's backend).
    pub(crate) blobs: Arc<dyn BlobStore>,
    pub(crate) routes: Arc<routed::TenantRouted>,
    /// Progress of tenants' blob moves since start.
    pub(crate) migrations: Mutex<HashMap<TenantId, Arc<routed::Migration>>>,
    /// `(vault, seq)` of every commit that applied something.
    pub(crate) changes: broadcast::Sender<(VaultId, Seq)>,
    /// The newest seq announced on `changes` per vault: a commit is announced by the handler
    /// that made it and again by the store's events (several instances), once.
    announced: Mutex<HashMap<VaultId, Seq>>,
    /// Chunk bytes that may be held in memory at once; one permit per byte.
    pub(crate) inflight: Arc<Semaphore>,
    pub(crate) limits: ServiceLimits,
    /// Account policies: source, cache, upload reservations.
    pub(crate) policies: quota::Policies,
    pub(crate) grace: Duration,
    /// Cancelled when shutdown begins.
    pub(crate) cancel: CancellationToken,
    /// Open packs of small chunks and packs being sealed.
    pub(crate) packer: pack::Packer,
    /// Tasks sealing packs; shutdown waits for them.
    pub(crate) seal_tasks: tokio_util::task::TaskTracker,
    /// Open connections of admitted devices, by device and connection id.
    connections: Mutex<HashMap<DeviceId, HashMap<usize, quinn::Connection>>>,
    upload_locks: Vec<tokio::sync::Mutex<()>>,
    /// Pairing slots (in memory).
    pub(crate) pairing: pairing::Slots,
    /// Owners of vaults requests named (they never change), so that a request costs no store
    /// read for them; at most [`VAULT_OWNERS_CACHED`].
    vault_owners: Mutex<HashMap<VaultId, VaultOwner>>,
    /// The traffic meter.
    pub(crate) meter: meter::Meter,
}

impl Shared {
    /// Runs a pack's sealing on a task of its own (a request that is cancelled does not stop
    /// it), which shutdown waits for.
    pub(crate) fn spawn_seal(self: &Arc<Self>, job: pack::SealJob) {
        let shared = Arc::clone(self);
        self.seal_tasks.spawn(async move {
            job.run(
                &shared.packer,
                shared.blobs.as_ref(),
                shared.store.as_ref(),
                unix_now(),
            )
            .await;
        });
    }

    /// Remembers `conn` as a connection of `device` until the guard drops.
    pub(crate) fn register(
        self: &Arc<Self>,
        device: DeviceId,
        conn: &quinn::Connection,
    ) -> Registration {
        let id = conn.stable_id();
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(device)
            .or_default()
            .insert(id, conn.clone());
        Registration {
            shared: Arc::clone(self),
            device,
            id,
        }
    }

    fn disconnect(&self, device: DeviceId, code: CloseCode, reason: &str) -> usize {
        let conns = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&device)
            .unwrap_or_default();
        for conn in conns.values() {
            code.close(conn, reason);
        }
        conns.len()
    }

    /// The upload lock of a chunk.
    pub(crate) fn upload_lock(&self, chunk: &dooz_protocol::ChunkId) -> &tokio::sync::Mutex<()> {
        let i = usize::from(chunk.as_bytes()[0]) % UPLOAD_LOCKS;
        // `i` is below UPLOAD_LOCKS, the length of the vector.
        &self.upload_locks[i]
    }
}

/// Passes what other instances sharing the store did to this one's devices: commits to
/// subscriptions, revocations to the revoked device's connections (closed at once). Ends at
/// shutdown.
async fn forward_store_events(
    shared: Arc<Shared>,
    mut events: broadcast::Receiver<crate::store::StoreEvent>,
) {
    use crate::store::StoreEvent;
    loop {
        let event = tokio::select! {
            () = shared.cancel.cancelled() => return,
            event = events.recv() => event,
        };
        match event {
            Ok(StoreEvent::Changed { vault, seq }) => shared.announce(vault, seq),
            Ok(StoreEvent::Revoked { device }) => {
                let closed = shared.disconnect(
                    device,
                    CloseCode::Revoked,
                    &connection::revoked_reason(device),
                );
                if closed > 0 {
                    tracing::info!(%device, closed, "device revoked on another instance");
                }
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                // Devices catch up by their periodic sync; a revoked device's next request or
                // connection is refused by the store.
                tracing::warn!("change notifications from the store may have been missed");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// A vault's tenant and account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VaultOwner {
    pub(crate) tenant: TenantId,
    pub(crate) account: crate::store::AccountId,
}

/// Vault owners kept in memory at most (about 64 bytes each); the cache starts again when full.
const VAULT_OWNERS_CACHED: usize = 100_000;

impl Shared {
    /// Tells subscribers that `vault` is at `seq`, unless a newer or equal seq was told.
    pub(crate) fn announce(&self, vault: VaultId, seq: Seq) {
        {
            let mut announced = self
                .announced
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if announced.get(&vault).is_some_and(|told| *told >= seq) {
                return;
            }
            if announced.len() >= VAULT_OWNERS_CACHED {
                announced.clear();
            }
            announced.insert(vault, seq);
        }
        // No subscriber is not an error.
        let _ = self.changes.send((vault, seq));
    }

    /// The cached owner of `vault`.
    pub(crate) fn vault_owner(&self, vault: VaultId) -> Option<VaultOwner> {
        self.vault_owners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&vault)
            .copied()
    }

    /// Caches the owner of `vault`.
    pub(crate) fn remember_vault_owner(&self, vault: VaultId, owner: VaultOwner) {
        let mut owners = self
            .vault_owners
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if owners.len() >= VAULT_OWNERS_CACHED {
            owners.clear();
        }
        owners.insert(vault, owner);
    }
}

/// Unregisters a connection when dropped.
pub(crate) struct Registration {
    shared: Arc<Shared>,
    device: DeviceId,
    id: usize,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut conns = self
            .shared
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(of_device) = conns.get_mut(&self.device) {
            of_device.remove(&self.id);
            if of_device.is_empty() {
                conns.remove(&self.device);
            }
        }
    }
}

/// A running data-plane server.
///
/// Dropping it does not stop it: call [`shutdown`](Self::shutdown).
pub struct Server {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    fingerprint: String,
    accept: tokio::task::JoinHandle<()>,
    sweeper: tokio::task::JoinHandle<()>,
    collector: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds the endpoint and starts accepting connections. Must be called inside a Tokio
    /// runtime.
    pub fn start(parts: ServerParts) -> Result<Self, ServerError> {
        let endpoint = server_endpoint(parts.listen, &parts.identity, &parts.tuning)?;
        let local_addr = endpoint
            .local_addr()
            .map_err(|e| ServerError::Transport(TransportError::Endpoint(e)))?;
        let permits = usize::try_from(parts.limits.max_inflight_bytes)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        let routes = Arc::new(routed::TenantRouted::new(parts.blobs));
        let store_events = parts.store.events();
        let shared = Arc::new(Shared {
            announced: Mutex::new(HashMap::new()),
            store: Arc::clone(&parts.store),
            blobs: Arc::clone(&routes) as Arc<dyn BlobStore>,
            routes,
            migrations: Mutex::new(HashMap::new()),
            changes: broadcast::channel(CHANGES_CAPACITY).0,
            inflight: Arc::new(Semaphore::new(permits)),
            limits: parts.limits,
            policies: quota::Policies::new(parts.policy),
            grace: parts.shutdown_grace,
            cancel: CancellationToken::new(),
            packer: pack::Packer::new(parts.limits.packing),
            seal_tasks: tokio_util::task::TaskTracker::new(),
            connections: Mutex::new(HashMap::new()),
            upload_locks: (0..UPLOAD_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            pairing: pairing::Slots::default(),
            vault_owners: Mutex::new(HashMap::new()),
            meter: meter::Meter::new(Arc::clone(&parts.store), parts.limits.metering),
        });
        let span = tracing::info_span!("server", addr = %local_addr);
        let accept =
            tokio::spawn(accept_loop(Arc::clone(&shared), endpoint).instrument(span.clone()));
        let sweeper = tokio::spawn(seal_idle_packs(Arc::clone(&shared)).instrument(span.clone()));
        let collector =
            tokio::spawn(collect_periodically(Arc::clone(&shared)).instrument(span.clone()));
        if let Some(events) = store_events {
            tokio::spawn(forward_store_events(Arc::clone(&shared), events).instrument(span));
        }
        tracing::info!(addr = %local_addr, fingerprint = parts.identity.fingerprint(), "listening");
        Ok(Self {
            shared,
            local_addr,
            fingerprint: parts.identity.fingerprint().to_owned(),
            accept,
            sweeper,
            collector,
        })
    }

    /// The address the endpoint is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The fingerprint of the server certificate, which devices pin.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The metadata store.
    pub fn store(&self) -> &Arc<dyn MetaStore> {
        &self.shared.store
    }

    /// The blob store: every tenant's blobs, each in its tenant's backend
    /// ([`routed::TenantRouted`]).
    pub fn blobs(&self) -> &Arc<dyn BlobStore> {
        &self.shared.blobs
    }

    /// The server's default blob backend (tenants without a backend of their own).
    pub fn default_blobs(&self) -> &Arc<dyn BlobStore> {
        self.shared.routes.default_store()
    }

    /// Puts `tenant`'s blobs in `store` (`None`: the default backend) at once, without moving
    /// any: for a server starting up with routes it stored.
    pub fn set_tenant_store(&self, tenant: TenantId, store: Option<Arc<dyn BlobStore>>) {
        self.shared
            .routes
            .set_route(tenant, store.map(routed::Route::Store));
    }

    /// Moves `tenant`'s blobs from `old` to `new` (`None`: the default backend) in the
    /// background. New blobs go to `new` at once, reads find blobs in either until the move is
    /// over; then `on_done` gets the result (on failure the tenant stays on both, and a later
    /// call resumes). Progress: [`migration`](Self::migration).
    pub fn migrate_tenant(
        &self,
        tenant: TenantId,
        new: Option<Arc<dyn BlobStore>>,
        old: Option<Arc<dyn BlobStore>>,
        on_done: Box<dyn FnOnce(Result<(), String>) + Send>,
    ) {
        let default = Arc::clone(self.shared.routes.default_store());
        let new = new.unwrap_or_else(|| Arc::clone(&default));
        let old = old.unwrap_or(default);
        if Arc::ptr_eq(&new, &old) {
            // Nothing to move (and moving a backend onto itself would delete what it copies).
            on_done(Ok(()));
            return;
        }
        self.shared.routes.set_route(
            tenant,
            Some(routed::Route::Moving {
                new: Arc::clone(&new),
                old: Arc::clone(&old),
            }),
        );
        let progress = Arc::new(routed::Migration::default());
        self.shared
            .migrations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(tenant, Arc::clone(&progress));
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            let result = routed::migrate(tenant, old.as_ref(), new.as_ref(), &progress).await;
            match &result {
                Ok(()) => {
                    let route = (!Arc::ptr_eq(&new, shared.routes.default_store()))
                        .then(|| routed::Route::Store(new));
                    shared.routes.set_route(tenant, route);
                    tracing::info!(%tenant, blobs = progress.moved.load(std::sync::atomic::Ordering::Relaxed), "tenant blobs moved");
                }
                Err(e) => tracing::error!(%tenant, error = %e, "moving the tenant's blobs failed"),
            }
            on_done(result.map_err(|e| e.to_string()));
        });
    }

    /// The progress of `tenant`'s last blob move since this server started:
    /// `(listed, total, moved, bytes)`.
    pub fn migration(&self, tenant: TenantId) -> Option<(bool, u64, u64, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        self.shared
            .migrations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&tenant)
            .map(|m| {
                (
                    m.listed.load(Relaxed),
                    m.total.load(Relaxed),
                    m.moved.load(Relaxed),
                    m.bytes.load(Relaxed),
                )
            })
    }

    /// How many devices have a connection open now.
    pub fn connected_devices(&self) -> usize {
        self.shared
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Revokes a device in the store and closes its open connections at once
    /// ([`CloseCode::Revoked`]); every vault of its account is marked for key rotation (the
    /// account's devices see it in `Vaults`).
    pub async fn revoke_device(&self, device: DeviceId) -> Result<DeviceRecord, StoreError> {
        let record = self.shared.store.revoke_device(device, unix_now()).await?;
        let closed = self.shared.disconnect(
            device,
            CloseCode::Revoked,
            &connection::revoked_reason(device),
        );
        tracing::info!(%device, closed, "device revoked");
        Ok(record)
    }

    /// Closes every open connection of `device` with `code` and `reason`; returns how many.
    pub fn disconnect_device(&self, device: DeviceId, code: CloseCode, reason: &str) -> usize {
        self.shared.disconnect(device, code, reason)
    }

    /// Runs one garbage collection now, as of `now` (unix seconds): pending uploads older than
    /// [`GcSettings::pending_grace`] and packs nothing points into are deleted. Safe while
    /// devices upload and commit (see the `gc` module).
    pub async fn collect_garbage(&self, now: u64) -> Result<GcReport, StoreError> {
        gc::collect(&self.shared, now).await
    }

    /// Writes every open pack now (they are written anyway when full, when a commit needs
    /// them, after a few idle seconds and at shutdown) and waits for it.
    pub async fn seal_open_packs(&self) {
        for job in self
            .shared
            .packer
            .idle_jobs(std::time::Instant::now(), true)
        {
            job.run(
                &self.shared.packer,
                self.shared.blobs.as_ref(),
                self.shared.store.as_ref(),
                unix_now(),
            )
            .await;
        }
    }

    /// Forgets the account policies cached from the [`PolicySource`] (each is cached for up
    /// to a second), so that the next request of every account sees its policy as it is now.
    /// Call it after changing a plan or a subscription for the change to apply at once.
    pub fn forget_cached_policies(&self) {
        self.shared.policies.forget();
    }

    /// Server-wide metering totals since start (for Prometheus: no per-tenant figures).
    pub fn meter_totals(&self) -> MeterTotals {
        use std::sync::atomic::Ordering::Relaxed;
        let t = self.shared.meter.totals();
        MeterTotals {
            ingress_bytes: t.ingress_bytes.load(Relaxed),
            egress_bytes: t.egress_bytes.load(Relaxed),
            requests: t.requests.load(Relaxed),
            batches: t.batches.load(Relaxed),
            failures: t.failures.load(Relaxed),
        }
    }

    /// Moves the pairing slots' clock forward by `secs`, so tests can see a slot expire without
    /// waiting 15 minutes. Not for production use.
    #[doc(hidden)]
    pub fn advance_pairing_clock(&self, secs: u64) {
        self.shared.pairing.advance_clock(secs);
    }

    /// A token that starts the shutdown when cancelled (for signal handlers).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shared.cancel.clone()
    }

    /// Shuts down gracefully: stops accepting connections, lets requests in flight finish
    /// (within the grace period), closes every connection with [`CloseCode::ShuttingDown`],
    /// and returns when all connection tasks have ended.
    pub async fn shutdown(self) {
        self.shared.cancel.cancel();
        self.wait().await;
    }

    /// Waits until the server has stopped (after [`shutdown_token`](Self::shutdown_token) was
    /// cancelled).
    pub async fn wait(self) {
        if let Err(e) = self.accept.await {
            tracing::error!(error = %e, "the accept loop failed");
        }
        if let Err(e) = self.sweeper.await {
            tracing::error!(error = %e, "the pack sealer failed");
        }
        if let Err(e) = self.collector.await {
            tracing::error!(error = %e, "the garbage collector failed");
        }
        // The connections are closed: no chunk arrives any more. Seal what is open.
        for job in self
            .shared
            .packer
            .idle_jobs(std::time::Instant::now(), true)
        {
            self.shared.spawn_seal(job);
        }
        self.shared.seal_tasks.close();
        self.shared.seal_tasks.wait().await;
    }
}

/// Runs garbage collection every [`GcSettings::interval`] until shutdown.
async fn collect_periodically(shared: Arc<Shared>) {
    let Some(every) = shared.limits.gc.interval else {
        return;
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: skip it, a start is busy enough.
    tick.tick().await;
    loop {
        tokio::select! {
            () = shared.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let run = tokio::select! {
            () = shared.cancel.cancelled() => return,
            run = gc::collect(&shared, unix_now()) => run,
        };
        match run {
            Ok(report) => tracing::info!(?report, "garbage collected"),
            Err(e) => tracing::warn!(error = %e, "garbage collection failed; next run retries"),
        }
    }
}

/// Seals packs left open for [`PackSettings::idle`] until shutdown begins ([`Server::wait`]
/// seals the rest once the connections are closed).
async fn seal_idle_packs(shared: Arc<Shared>) {
    let idle = shared.limits.packing.idle;
    let mut tick = tokio::time::interval(idle.max(Duration::from_millis(100)) / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        for job in shared.packer.idle_jobs(std::time::Instant::now(), false) {
            shared.spawn_seal(job);
        }
    }
}

fn log_join(joined: Result<(), JoinError>) {
    if let Err(e) = joined
        && e.is_panic()
    {
        tracing::error!(error = %e, "a task panicked");
    }
}

async fn accept_loop(shared: Arc<Shared>, endpoint: Endpoint) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = shared.cancel.cancelled() => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let span = tracing::info_span!(
                    "conn",
                    remote = %incoming.remote_address(),
                    device = tracing::field::Empty,
                );
                conns.spawn(connection::handle(Arc::clone(&shared), incoming).instrument(span));
            }
            Some(joined) = conns.join_next(), if !conns.is_empty() => log_join(joined),
        }
    }
    tracing::info!(connections = conns.len(), "shutting down");
    // New handshakes are refused from now on; connection tasks see the cancellation, let their
    // requests finish and close.
    endpoint.set_server_config(None);
    let drain = async {
        while let Some(joined) = conns.join_next().await {
            log_join(joined);
        }
    };
    if tokio::time::timeout(shared.grace + Duration::from_secs(1), drain)
        .await
        .is_err()
    {
        tracing::warn!("connections did not finish within the grace period; dropping them");
        conns.shutdown().await;
    }
    endpoint.close(
        CloseCode::ShuttingDown.varint(),
        SHUTTING_DOWN_REASON.as_bytes(),
    );
    // Give the close frames a moment to leave.
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    tracing::info!("stopped");
}
