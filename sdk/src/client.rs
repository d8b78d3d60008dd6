//! The client: one device's data dir, its enrolment, its vaults ([`Client`]).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dooz_client::{
    Connection, Connector, DeviceRecord, EngineOptions, EnrolmentCode, Index, IndexError,
    Invitation, Joining, NOT_ENROLLED_ADDR, PairingCode, Progress, Resolution,
};
use dooz_crypto::{DeviceId, DeviceSecretKeys, Epoch, VaultId, VaultKey};

use crate::background::{self, SyncHandle};
use crate::events::{EventStream, Hub, system_time};
use crate::vault::{Vault, VaultShared};
use crate::{Error, Result};

/// Directory of the client's index inside the data dir (the `dooz` CLI's layout, so
/// `dooz --home <data dir>` can inspect an SDK client).
const INDEX_DIR: &str = "index";
/// Directory of the key-value vaults' folders inside the data dir.
const VAULTS_DIR: &str = "vaults";
/// File listing vaults made offline and not yet created on the server (one id per line).
const UNREGISTERED_FILE: &str = "unregistered-vaults";
/// Decides conflicts the app's way: given both sides, says which to keep.
pub type ConflictFn = Arc<dyn Fn(&ConflictInfo) -> Resolution + Send + Sync>;

/// What happens when this device and another changed the same key since they last agreed.
/// Whatever the policy, a [`ConflictEvent`](crate::ConflictEvent) reports the conflict with
/// both versions. A change against a deletion always keeps the change (nothing is lost).
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum ConflictPolicy {
    /// Keep both: the other device's value takes the key, this device's moves to
    /// `key (conflicted copy from <device> <date>)` beside it. Nothing is lost; the app can
    /// merge and delete the copy. The default.
    #[default]
    KeepBoth,
    /// The version modified last wins (ties broken by content hash, so every device picks the
    /// same); the other is discarded (a remote loser stays in the key's history).
    LastWriterWins,
    /// The app decides, per conflict between two files (a file against a directory keeps
    /// both). Called during a sync, on a runtime thread: it must return quickly and not
    /// block (no I/O, no waiting on the app's UI).
    Custom(ConflictFn),
}

impl fmt::Debug for ConflictPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::KeepBoth => f.write_str("KeepBoth"),
            Self::LastWriterWins => f.write_str("LastWriterWins"),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// The two sides of a conflict, as a [`ConflictPolicy::Custom`] callback sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConflictInfo {
    /// The key.
    pub key: String,
    /// This device's version.
    pub ours: VersionInfo,
    /// The other device's version.
    pub theirs: VersionInfo,
}

/// Size, time and content hash of one version.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct VersionInfo {
    /// Length in bytes.
    pub size: u64,
    /// Modification time.
    pub modified: std::time::SystemTime,
    /// BLAKE3 of the content.
    pub content_hash: [u8; 32],
}

impl ConflictPolicy {
    /// The engine's resolver for this policy (`None`: keep both).
    pub(crate) fn resolver(&self) -> Option<dooz_client::ConflictResolver> {
        match self {
            Self::KeepBoth => None,
            Self::LastWriterWins => Some(Arc::new(|c: &dooz_client::Conflict| {
                match (&c.local, &c.remote) {
                    (Some(l), Some(r)) => {
                        let ours = (l.mtime_ns, l.content_hash.0);
                        let theirs = (r.mtime_ns, r.content_hash.0);
                        if ours > theirs {
                            Resolution::KeepLocal
                        } else {
                            Resolution::KeepRemote
                        }
                    }
                    _ => Resolution::KeepBoth,
                }
            })),
            Self::Custom(decide) => {
                let decide = Arc::clone(decide);
                Some(Arc::new(move |c: &dooz_client::Conflict| {
                    let (Some(l), Some(r)) = (&c.local, &c.remote) else {
                        return Resolution::KeepBoth;
                    };
                    let info = |s: &dooz_client::EntryState| VersionInfo {
                        size: s.size,
                        modified: system_time(s.mtime_ns),
                        content_hash: s.content_hash.0,
                    };
                    decide(&ConflictInfo {
                        key: c.path.as_str().to_owned(),
                        ours: info(l),
                        theirs: info(r),
                    })
                }))
            }
        }
    }
}

/// Settings of a [`Client`].
#[derive(Clone)]
#[non_exhaustive]
pub struct ClientOptions {
    /// This device's name, shown to the account's other devices and in conflicted copies'
    /// names. Default: the host name.
    pub device_name: Option<String>,
    /// How conflicts are resolved. Default: keep both.
    pub conflict_policy: ConflictPolicy,
    /// How long a connection attempt may take before the server counts as unreachable.
    /// Default 5 s.
    pub connect_timeout: Duration,
    /// Background sync runs a full sync of every vault at least this often (for changes made
    /// behind the SDK's back, such as files edited in a synced folder). Default 10 s.
    pub sync_interval: Duration,
    /// A connection that hears nothing from the server for this long is declared dead (and
    /// background sync reports [`Status::Offline`](crate::Status) and reconnects). Default
    /// 30 s; shorter notices a vanished network sooner, for a few more keep-alive packets.
    pub idle_timeout: Duration,
    /// Conflict events carry the content of versions up to this many bytes. Default 1 MiB.
    pub inline_conflict_values: u64,
    /// Tuning of the sync engine (parallel transfers, memory budget).
    pub engine: EngineOptions,
    /// Where every sync's progress goes (phases and bytes, for progress bars of long
    /// uploads and downloads); `None` by default. Called from the engine's tasks: keep it
    /// quick.
    pub progress: Option<Arc<dyn Progress>>,
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("device_name", &self.device_name)
            .field("conflict_policy", &self.conflict_policy)
            .field("connect_timeout", &self.connect_timeout)
            .field("sync_interval", &self.sync_interval)
            .field("idle_timeout", &self.idle_timeout)
            .field("inline_conflict_values", &self.inline_conflict_values)
            .field("engine", &self.engine)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            device_name: None,
            conflict_policy: ConflictPolicy::default(),
            connect_timeout: Duration::from_secs(5),
            sync_interval: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            inline_conflict_values: 1024 * 1024,
            engine: EngineOptions::default(),
            progress: None,
        }
    }
}

impl ClientOptions {
    /// Sets [`ClientOptions::device_name`].
    pub fn device_name(mut self, name: impl Into<String>) -> Self {
        self.device_name = Some(name.into());
        self
    }

    /// Sets [`ClientOptions::conflict_policy`].
    pub fn conflict_policy(mut self, policy: ConflictPolicy) -> Self {
        self.conflict_policy = policy;
        self
    }

    /// Sets [`ClientOptions::connect_timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`ClientOptions::sync_interval`].
    pub fn sync_interval(mut self, interval: Duration) -> Self {
        self.sync_interval = interval;
        self
    }

    /// Sets [`ClientOptions::idle_timeout`].
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Sets [`ClientOptions::progress`].
    pub fn progress(mut self, sink: Arc<dyn Progress>) -> Self {
        self.progress = Some(sink);
        self
    }

    /// Sets [`ClientOptions::engine`].
    pub fn engine(mut self, engine: EngineOptions) -> Self {
        self.engine = engine;
        self
    }
}

/// What enrolment told about this device.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Enrolment {
    /// The server (`host:port`).
    pub server: String,
    /// The tenant the device's account belongs to.
    pub tenant: String,
    /// The account.
    pub account: String,
}

/// A vault this device knows.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct VaultSummary {
    /// Its name on this device.
    pub name: String,
    /// Its id (the same on every device).
    pub id: VaultId,
    /// The folder it is bound to on this device, if opened.
    pub folder: Option<PathBuf>,
    /// Whether it was made offline and is not on the server yet (it is created there by the
    /// next sync).
    pub pending: bool,
}

/// The device that answered a pairing code.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PairedDevice {
    /// Its id.
    pub device: DeviceId,
    /// Its name.
    pub name: String,
    /// The vaults handed over.
    pub vaults: Vec<String>,
}

/// A pairing in progress on the inviting device: show [`PairingInvite::code`] to the new
/// device, then [`PairingInvite::complete`].
pub struct PairingInvite {
    client: Client,
    conn: Connection,
    invitation: Invitation,
    code: String,
}

impl fmt::Debug for PairingInvite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PairingInvite").finish_non_exhaustive()
    }
}

impl PairingInvite {
    /// The code to enter (or scan) on the new device: valid once, for 15 minutes. It carries
    /// a secret: show it only to the new device.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// Waits for the new device, then hands it every vault key this device holds, wrapped so
    /// that only it can open them.
    pub async fn complete(self) -> Result<PairedDevice> {
        let inner = &self.client.inner;
        let keys = inner.keys()?;
        let paired = self
            .invitation
            .complete(&self.conn, &keys, &inner.index)
            .await;
        self.conn.close().await;
        let paired = paired?;
        Ok(PairedDevice {
            device: paired.device,
            name: paired.name,
            vaults: paired.vaults.into_iter().map(|v| v.name).collect(),
        })
    }
}

/// One device's Dooz client: its keys, enrolment, vaults and sync. Cheap to clone; clones
/// share everything.
///
/// Everything lives in one data dir: the index (sled), and the folders of key-value vaults.
/// One process at a time may open a data dir.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub(crate) dir: PathBuf,
    pub(crate) index: Index,
    pub(crate) options: ClientOptions,
    pub(crate) hub: Hub,
    /// Vaults opened, by id.
    vaults: Mutex<HashMap<VaultId, Arc<VaultShared>>>,
    /// The connection shared by every vault (`None` until the first need, or after it broke).
    conn: tokio::sync::Mutex<Option<Connection>>,
    /// Makes connections (rebuilt after enrolment).
    connector: Mutex<Option<Arc<Connector>>>,
    /// Wakes background sync: which vaults have local changes.
    pub(crate) wake: background::Wake,
    /// Whether background sync runs.
    pub(crate) syncing: Mutex<bool>,
    /// Vaults made offline and not yet created on the server (kept in memory; the file
    /// `unregistered-vaults` is rewritten at each change).
    unregistered: Mutex<Vec<VaultId>>,
}

impl Client {
    /// Opens (or makes) the client in `dir` with default options. Makes this device's keys
    /// on first use. No server is needed: values can be put and read at once, and sync once
    /// the device is enrolled.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(dir, ClientOptions::default())
    }

    /// [`Client::open`] with options.
    pub fn open_with(dir: impl AsRef<Path>, options: ClientOptions) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        dooz_client::create_private_dir(&dir).map_err(Error::io("create the data dir", &dir))?;
        let index = Index::open(dir.join(INDEX_DIR))?;
        if let Some(name) = &options.device_name {
            check_device_name(name)?;
        }
        match index.device()? {
            Some(mut record) => {
                if let Some(name) = &options.device_name
                    && *name != record.device_name
                {
                    record.device_name.clone_from(name);
                    index.set_device(&record)?;
                }
            }
            None => {
                let keys =
                    DeviceSecretKeys::generate().map_err(|e| Error::Crypto(e.to_string()))?;
                index.set_device(&DeviceRecord {
                    server_addr: NOT_ENROLLED_ADDR.to_owned(),
                    server_fingerprint: [0; 32],
                    device_name: options
                        .device_name
                        .clone()
                        .unwrap_or_else(dooz_client::default_device_name),
                    keys,
                })?;
            }
        }
        let unregistered = read_unregistered(&dir.join(UNREGISTERED_FILE))?;
        Ok(Self {
            inner: Arc::new(Inner {
                dir,
                index,
                options,
                hub: Hub::default(),
                vaults: Mutex::new(HashMap::new()),
                conn: tokio::sync::Mutex::new(None),
                connector: Mutex::new(None),
                wake: background::Wake::default(),
                syncing: Mutex::new(false),
                unregistered: Mutex::new(unregistered),
            }),
        })
    }

    /// The data dir.
    pub fn data_dir(&self) -> &Path {
        &self.inner.dir
    }

    /// This device's id.
    pub fn device_id(&self) -> Result<DeviceId> {
        Ok(self.inner.record()?.keys.device_id())
    }

    /// This device's name.
    pub fn device_name(&self) -> Result<String> {
        Ok(self.inner.record()?.device_name)
    }

    /// Whether this device has enrolled with a server.
    pub fn is_enrolled(&self) -> Result<bool> {
        Ok(self.inner.record()?.server_addr != NOT_ENROLLED_ADDR)
    }

    /// Enrols this device with a server, with an enrolment code from its admin
    /// (`dooz-server admin enrol-code`, or the control plane). The device joins the code's
    /// account. Enrolling again with a code for the same server is fine.
    pub async fn enrol(&self, code: &str) -> Result<Enrolment> {
        let code: EnrolmentCode = code
            .trim()
            .parse()
            .map_err(|e| Error::BadCode(format!("{e}")))?;
        let inner = &self.inner;
        let mut record = inner.record()?;
        if record.server_addr != NOT_ENROLLED_ADDR
            && record.server_fingerprint != code.fingerprint
            && !inner.index.vault_names()?.is_empty()
        {
            return Err(Error::EnrolledElsewhere {
                server: record.server_addr,
            });
        }
        let keys = copy_keys(&record.keys);
        let hello = dooz_client::Connection::enrol(&code, &keys, &record.device_name).await?;
        record.server_addr.clone_from(&code.address);
        record.server_fingerprint = code.fingerprint;
        inner.index.set_device(&record)?;
        inner.index.flush()?;
        *inner.connector_slot() = None;
        *inner.conn.lock().await = None;
        inner.wake.all();
        Ok(Enrolment {
            server: code.address,
            tenant: hello.tenant.to_string(),
            account: hello.account.to_string(),
        })
    }

    /// Makes a vault named `name`, with a fresh key only this account's devices get. Works
    /// offline: the vault is created on the server by the next sync. Opened as a key-value
    /// vault (see [`Client::vault`]); [`Client::create_folder`] makes one bound to a folder.
    pub fn create_vault(&self, name: &str) -> Result<Vault> {
        self.make_vault(name)?;
        self.vault(name)
    }

    /// Makes a vault named `name` (as [`Client::create_vault`]) bound to the folder `dir`
    /// (as [`Client::open_folder`]).
    pub fn create_folder(&self, name: &str, dir: impl AsRef<Path>) -> Result<Vault> {
        self.make_vault(name)?;
        self.open_folder(name, dir)
    }

    fn make_vault(&self, name: &str) -> Result<()> {
        check_vault_name(name)?;
        let inner = &self.inner;
        if inner.index.vault_by_name(name)?.is_some() {
            return Err(Error::VaultExists {
                name: name.to_owned(),
            });
        }
        let vault = VaultId::generate().map_err(|e| Error::Crypto(e.to_string()))?;
        let key = VaultKey::generate().map_err(|e| Error::Crypto(e.to_string()))?;
        inner.add_unregistered(vault)?;
        inner.index.put_vault_key(vault, Epoch::FIRST, &key)?;
        inner.index.set_vault_name(name, vault)?;
        inner.index.flush()?;
        Ok(())
    }

    /// The vaults this device knows (made here, paired or recovered), by name.
    pub fn vaults(&self) -> Result<Vec<VaultSummary>> {
        let inner = &self.inner;
        let bound = inner.index.vaults()?;
        let pending = inner.unregistered();
        let mut out = Vec::new();
        for (name, id) in inner.index.vault_names()? {
            if inner.index.vault_keys(id)?.is_empty() {
                continue;
            }
            out.push(VaultSummary {
                folder: bound.iter().find(|m| m.vault == id).map(|m| m.root.clone()),
                pending: pending.contains(&id),
                name,
                id,
            });
        }
        Ok(out)
    }

    /// The summaries of `ids`, for what pairing and recovery received.
    fn summaries_of(&self, ids: impl Iterator<Item = VaultId>) -> Result<Vec<VaultSummary>> {
        let ids: Vec<VaultId> = ids.collect();
        Ok(self
            .vaults()?
            .into_iter()
            .filter(|v| ids.contains(&v.id))
            .collect())
    }

    /// Opens the vault named `name` (or whose id is `name`) for key-value use. A vault not
    /// bound on this device yet is bound to a folder inside the data dir; a vault bound to a
    /// folder of the user's ([`Client::open_folder`]) opens on that folder, each file a key.
    pub fn vault(&self, name: &str) -> Result<Vault> {
        let id = self.inner.vault_id(name)?;
        if let Some(meta) = self
            .inner
            .index
            .vaults()?
            .into_iter()
            .find(|m| m.vault == id)
        {
            return self.inner.open_vault(id, name, &meta.root, false);
        }
        let root = self.inner.dir.join(VAULTS_DIR).join(id.to_string());
        self.inner.open_vault(id, name, &root, true)
    }

    /// Opens the vault named `name` bound to the folder `dir` (made if missing): folder sync.
    /// Files in the folder are the vault's values, keyed by their path inside it; edits made
    /// to the folder by other programs sync too (found by the periodic sync of
    /// [`ClientOptions::sync_interval`], or at once by [`Vault::sync`]).
    pub fn open_folder(&self, name: &str, dir: impl AsRef<Path>) -> Result<Vault> {
        let id = self.inner.vault_id(name)?;
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(Error::io("create the folder", dir))?;
        let root = dir
            .canonicalize()
            .map_err(Error::io("resolve the folder", dir))?;
        if let Some(meta) = self
            .inner
            .index
            .vaults()?
            .into_iter()
            .find(|m| m.vault == id)
            && meta.root != root
        {
            return Err(Error::BoundElsewhere {
                name: name.to_owned(),
                bound: meta.root,
            });
        }
        self.inner.open_vault(id, name, &root, false)
    }

    /// A stream of every vault's [`Event`](crate::Event)s from now on.
    pub fn watch(&self) -> EventStream {
        self.inner.hub.subscribe(None)
    }

    /// Syncs every opened vault once (see [`Vault::sync`]); returns the first error after
    /// trying them all.
    pub async fn sync(&self) -> Result<()> {
        let vaults: Vec<Arc<VaultShared>> = self.inner.opened();
        let mut first = None;
        for shared in vaults {
            if let Err(e) = shared.sync(&self.inner).await
                && first.is_none()
            {
                first = Some(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Starts background sync of every opened vault (and those opened later): at once after
    /// each local change, when the server pushes another device's change, and every
    /// [`ClientOptions::sync_interval`]. It reconnects by itself with back-off while the server
    /// is unreachable, reporting [`Status`](crate::Status) events. Needs a Tokio runtime.
    pub fn start_sync(&self) -> Result<SyncHandle> {
        background::start(self)
    }

    /// Opens a pairing for a new device of the account: show the code on this device, enter
    /// it on the new one ([`Client::pair_join`]), then [`PairingInvite::complete`]. The server
    /// never sees the vault keys.
    pub async fn pair_invite(&self) -> Result<PairingInvite> {
        let inner = &self.inner;
        let conn = inner.connection().await?;
        inner.register_pending(&conn).await?;
        let keys = inner.keys()?;
        let invitation = Invitation::open(&conn, &keys).await?;
        let code = invitation.code().encode().as_str().to_owned();
        Ok(PairingInvite {
            client: self.clone(),
            conn,
            invitation,
            code,
        })
    }

    /// Answers a pairing code shown by another device of the account
    /// ([`PairingInvite::code`]) and receives its vault keys, checked to come from that
    /// device. Returns the vaults received; open them with [`Client::vault`].
    pub async fn pair_join(&self, code: &str) -> Result<Vec<VaultSummary>> {
        let code: PairingCode = code
            .trim()
            .parse()
            .map_err(|e| Error::BadCode(format!("{e}")))?;
        let inner = &self.inner;
        let conn = inner.connection().await?;
        let keys = inner.keys()?;
        let name = inner.record()?.device_name;
        let got = async {
            Joining::post(&conn, &keys, code, &name)
                .await?
                .finish(&conn, &keys, &inner.index)
                .await
        }
        .await?;
        inner.index.flush()?;
        self.summaries_of(got.iter().map(|v| v.vault))
    }

    /// Sets up the account's recovery secret if it has none yet, returning its 12 words once
    /// (show them to the user to write down), and wraps every vault key this device holds to
    /// it. `None`: the secret exists already and every key is wrapped to it.
    pub async fn set_up_recovery(&self) -> Result<Option<String>> {
        let inner = &self.inner;
        let conn = inner.connection().await?;
        inner.register_pending(&conn).await?;
        let words = dooz_client::set_up_recovery(&conn, &inner.index).await?;
        inner.index.flush()?;
        Ok(words.map(|w| w.as_str().to_owned()))
    }

    /// Regains every vault of the account with the 12 recovery words, on a fresh device
    /// enrolled in the account. Returns the vaults regained; open them with
    /// [`Client::vault`].
    pub async fn recover(&self, words: &str) -> Result<Vec<VaultSummary>> {
        let secret = dooz_client::parse_recovery_words(words)?;
        let inner = &self.inner;
        let conn = inner.connection().await?;
        let got = dooz_client::recover(&conn, &secret, &inner.index).await?;
        inner.index.flush()?;
        self.summaries_of(got.iter().map(|v| v.vault))
    }
}

impl Inner {
    pub(crate) fn record(&self) -> Result<DeviceRecord> {
        self.index
            .device()?
            .ok_or_else(|| Error::Task("the device record is missing from the index".to_owned()))
    }

    pub(crate) fn keys(&self) -> Result<DeviceSecretKeys> {
        Ok(copy_keys(&self.record()?.keys))
    }

    fn connector_slot(&self) -> std::sync::MutexGuard<'_, Option<Arc<Connector>>> {
        self.connector
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A connector to the device's server.
    pub(crate) fn connector(&self) -> Result<Arc<Connector>> {
        let mut slot = self.connector_slot();
        if let Some(c) = slot.as_ref() {
            return Ok(Arc::clone(c));
        }
        let record = self.record()?;
        if record.server_addr == NOT_ENROLLED_ADDR {
            return Err(Error::NotEnrolled);
        }
        let c = Arc::new(
            Connector::new(record.server_addr, record.server_fingerprint, record.keys)
                .with_idle_timeout(self.options.idle_timeout),
        );
        *slot = Some(Arc::clone(&c));
        Ok(c)
    }

    /// The shared connection, connecting (within the connect timeout) if there is none.
    pub(crate) async fn connection(&self) -> Result<Connection> {
        let connector = self.connector()?;
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref()
            && conn.close_reason().is_none()
        {
            return Ok(conn.clone());
        }
        *slot = None;
        let server = connector.server_addr().to_owned();
        let conn =
            match tokio::time::timeout(self.options.connect_timeout, connector.connect()).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) if e.is_retryable() => {
                    return Err(Error::Offline {
                        server,
                        reason: e.to_string(),
                    });
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    return Err(Error::Offline {
                        server,
                        reason: format!(
                            "no answer within {} ms",
                            self.options.connect_timeout.as_millis()
                        ),
                    });
                }
            };
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets the shared connection (after it broke).
    pub(crate) async fn drop_connection(&self) {
        *self.conn.lock().await = None;
    }

    fn vault_id(&self, name: &str) -> Result<VaultId> {
        if let Some(id) = self.index.vault_by_name(name)? {
            return Ok(id);
        }
        if let Ok(id) = name.parse::<VaultId>()
            && self.index.vault_names()?.iter().any(|(_, v)| *v == id)
        {
            return Ok(id);
        }
        Err(Error::NoSuchVault {
            name: name.to_owned(),
        })
    }

    /// Binds (if need be) and opens vault `id` on `root`.
    fn open_vault(
        self: &Arc<Self>,
        id: VaultId,
        name: &str,
        root: &Path,
        managed: bool,
    ) -> Result<Vault> {
        if let Some(shared) = self.vaults_lock().get(&id) {
            return Ok(Vault::new(Arc::clone(self), Arc::clone(shared)));
        }
        if self.index.vault_keys(id)?.is_empty() {
            return Err(Error::NoSuchVault {
                name: name.to_owned(),
            });
        }
        std::fs::create_dir_all(root).map_err(Error::io("create the vault's folder", root))?;
        let root = root
            .canonicalize()
            .map_err(Error::io("resolve the vault's folder", root))?;
        let vault_index = match self.index.add_vault(id, &root) {
            Ok(v) => v,
            Err(IndexError::VaultExists { root: existing, .. }) if existing == root => {
                self.index.vault(id)?
            }
            Err(IndexError::VaultExists { root: existing, .. }) => {
                return Err(Error::BoundElsewhere {
                    name: name.to_owned(),
                    bound: existing,
                });
            }
            Err(e) => return Err(e.into()),
        };
        crate::vault::remove_stale_temp_files(&root);
        let shared = Arc::new(VaultShared::new(
            id,
            name.to_owned(),
            root,
            managed,
            vault_index,
        ));
        let shared = Arc::clone(self.vaults_lock().entry(id).or_insert(shared));
        self.wake.vault(id);
        Ok(Vault::new(Arc::clone(self), shared))
    }

    fn vaults_lock(&self) -> std::sync::MutexGuard<'_, HashMap<VaultId, Arc<VaultShared>>> {
        self.vaults.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every opened vault.
    pub(crate) fn opened(&self) -> Vec<Arc<VaultShared>> {
        let mut v: Vec<_> = self.vaults_lock().values().cloned().collect();
        v.sort_by_key(|s| s.id);
        v
    }

    fn unregistered_lock(&self) -> std::sync::MutexGuard<'_, Vec<VaultId>> {
        self.unregistered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Vaults made offline and not yet created on the server.
    pub(crate) fn unregistered(&self) -> Vec<VaultId> {
        self.unregistered_lock().clone()
    }

    /// Records `ids` as the vaults not yet created on the server, on disk and in memory.
    fn set_unregistered(&self, list: &mut Vec<VaultId>, ids: Vec<VaultId>) -> Result<()> {
        let text: String = ids.iter().map(|id| format!("{id}\n")).collect();
        crate::vault::write_atomically(
            &self.dir,
            &self.dir.join(UNREGISTERED_FILE),
            text.as_bytes(),
        )?;
        *list = ids;
        Ok(())
    }

    fn add_unregistered(&self, id: VaultId) -> Result<()> {
        let mut list = self.unregistered_lock();
        let mut ids = list.clone();
        ids.push(id);
        self.set_unregistered(&mut list, ids)
    }

    /// Creates on the server the vaults made offline, and wraps their keys to the account's
    /// recovery secret if this device keeps one.
    pub(crate) async fn register_pending(&self, conn: &Connection) -> Result<()> {
        let pending = self.unregistered();
        if pending.is_empty() {
            return Ok(());
        }
        let secret = self.index.recovery_secret()?;
        for id in &pending {
            conn.create_vault(dooz_protocol::VaultId::from_bytes(id.0))
                .await?;
            if let Some(secret) = &secret {
                for (epoch, key) in self.index.vault_keys(*id)? {
                    dooz_client::wrap_vault_to_recovery(conn, secret, *id, epoch, &key).await?;
                }
            }
        }
        let mut list = self.unregistered_lock();
        let left = list
            .iter()
            .copied()
            .filter(|id| !pending.contains(id))
            .collect();
        self.set_unregistered(&mut list, left)
    }
}

/// The vaults listed in the unregistered-vaults file (none if it is missing).
fn read_unregistered(path: &Path) -> Result<Vec<VaultId>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read", path)(e)),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim().parse::<VaultId>().map_err(|_| Error::Io {
                action: "read",
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{l:?} is not a vault id"),
                ),
            })
        })
        .collect()
}

/// A second handle on the same secret keys.
fn copy_keys(keys: &DeviceSecretKeys) -> DeviceSecretKeys {
    DeviceSecretKeys::from_bytes(&keys.to_bytes())
}

fn check_device_name(name: &str) -> Result<()> {
    if !dooz_client::is_usable_device_name(name) {
        return Err(Error::InvalidName {
            name: name.to_owned(),
        });
    }
    Ok(())
}

fn check_vault_name(name: &str) -> Result<()> {
    if !dooz_client::is_usable_vault_name(name) {
        return Err(Error::InvalidName {
            name: name.to_owned(),
        });
    }
    Ok(())
}
