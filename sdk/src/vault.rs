//! A vault: values by key, streaming, history, sync ([`Vault`]).

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use dooz_client::{
    AppliedChange, Engine, EntryKind, IGNORE_FILE_NAME, RelPath, Resolution, SyncReport,
    TEMP_FILE_PREFIX, VaultIndex, keyring_from_index,
};
use dooz_crypto::{DeviceId, VaultId, VersionId};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};

use crate::background::Trigger;
use crate::client::Inner;
use crate::events::{Change, ConflictEvent, Event, EventStream, Side, Status, system_time};
use crate::keys::key_path;
use crate::{Error, Result};

/// Prefix of the SDK's own temporary files (inside the engine's, so that scans skip them).
const SDK_TEMP_PREFIX: &str = ".dooz-tmp-sdk-";
/// Buffer of streaming puts: values are copied through it, never held whole.
const STREAM_BUFFER: usize = 1024 * 1024;

/// One vault's state shared by every [`Vault`] handle and background sync.
pub(crate) struct VaultShared {
    pub(crate) id: VaultId,
    pub(crate) name: String,
    pub(crate) root: PathBuf,
    /// A key-value vault whose folder the SDK owns (empty directories are removed).
    pub(crate) managed: bool,
    index: VaultIndex,
    /// The sync engine, made at the first sync (it needs a connection).
    engine: tokio::sync::Mutex<Option<Engine>>,
}

impl VaultShared {
    pub(crate) fn new(
        id: VaultId,
        name: String,
        root: PathBuf,
        managed: bool,
        index: VaultIndex,
    ) -> Self {
        Self {
            id,
            name,
            root,
            managed,
            index,
            engine: tokio::sync::Mutex::new(None),
        }
    }

    /// The engine, made if need be, on the client's current connection.
    async fn ready_engine<'a>(
        &self,
        inner: &Inner,
        slot: &'a mut Option<Engine>,
    ) -> Result<&'a mut Engine> {
        let conn = inner.connection().await?;
        inner.register_pending(&conn).await?;
        let engine = match slot {
            Some(engine) => {
                engine.set_connection(conn);
                engine
            }
            None => {
                let keyring = keyring_from_index(&inner.index, self.id)?;
                let mut engine = Engine::new(
                    self.index.clone(),
                    keyring,
                    conn,
                    inner.record()?.device_name,
                    inner.options.engine.clone(),
                )?;
                engine.set_conflict_resolver(inner.options.conflict_policy.resolver());
                engine.set_progress(inner.options.progress.clone());
                engine.record_changes(true);
                slot.insert(engine)
            }
        };
        Ok(engine)
    }

    /// One sync of this vault; reports what arrived as events.
    pub(crate) async fn sync(&self, inner: &Inner) -> Result<SyncReport> {
        self.sync_on(inner, Trigger::Full)
            .await
            .map(|r| r.unwrap_or_default())
    }

    /// A sync if `trigger` calls for one: always for [`Trigger::Full`]; after a pull that
    /// brings something for [`Trigger::Pull`]; if a notified file differs from the index for
    /// [`Trigger::Paths`]. `Ok(None)`: nothing to do.
    pub(crate) async fn sync_on(
        &self,
        inner: &Inner,
        trigger: Trigger,
    ) -> Result<Option<SyncReport>> {
        let mut slot = self.engine.lock().await;
        if let Trigger::Paths(paths) = &trigger
            && let Some(engine) = slot.as_ref()
            && !engine.local_paths_changed(paths)?
        {
            return Ok(None);
        }
        let engine = self.ready_engine(inner, &mut slot).await?;
        if let Trigger::Pull = trigger {
            match engine.pull_has_changes().await {
                Ok(false) => return Ok(None),
                Ok(true) => {}
                Err(e) => {
                    if e.is_connection_lost() {
                        inner.drop_connection().await;
                    }
                    return Err(e.into());
                }
            }
        }
        let connector = inner.connector()?;
        let result = engine.sync_with_reconnect(&connector, 1).await;
        let changes = engine.take_changes();
        // Reported before the next sync may start, so events keep their order.
        self.emit_changes(inner, changes);
        drop(slot);
        match result {
            Ok(report) => {
                inner.hub.emit(Event::Status(Status::Synced {
                    vault: self.id,
                    report,
                }));
                Ok(Some(report))
            }
            Err(e) => {
                if e.is_connection_lost() {
                    inner.drop_connection().await;
                }
                Err(e.into())
            }
        }
    }

    /// Turns what a download applied into events.
    fn emit_changes(&self, inner: &Inner, changes: Vec<AppliedChange>) {
        // The change a conflict concerns is reported by the conflict event.
        let mut conflicted: HashSet<RelPath> = HashSet::new();
        for change in changes {
            match change {
                AppliedChange::Written {
                    path,
                    version,
                    state,
                } => {
                    if conflicted.remove(&path) || state.kind != EntryKind::File {
                        continue;
                    }
                    inner.hub.emit(Event::Remote {
                        vault: self.id,
                        key: path.as_str().to_owned(),
                        change: Change::Put {
                            size: state.size,
                            version: Some(version),
                        },
                    });
                }
                AppliedChange::Deleted { path, dir } => {
                    if conflicted.remove(&path) || dir {
                        continue;
                    }
                    inner.hub.emit(Event::Remote {
                        vault: self.id,
                        key: path.as_str().to_owned(),
                        change: Change::Delete,
                    });
                }
                AppliedChange::Conflict {
                    conflict,
                    remote_version,
                    resolution,
                    copy,
                } => {
                    let key = conflict.path.as_str().to_owned();
                    let limit = inner.options.inline_conflict_values;
                    let (ours_at, theirs_at) = match resolution {
                        Resolution::KeepLocal => (Some(conflict.path.clone()), None),
                        Resolution::KeepRemote => (None, Some(conflict.path.clone())),
                        _ => (copy, Some(conflict.path.clone())),
                    };
                    let side = |state: &dooz_client::EntryState,
                                at: Option<RelPath>,
                                version: Option<VersionId>| Side {
                        value: at
                            .as_ref()
                            .and_then(|p| read_if(&p.to_path(&self.root), state, limit)),
                        key: at.map(|p| p.as_str().to_owned()),
                        size: state.size,
                        modified: system_time(state.mtime_ns),
                        content_hash: state.content_hash.0,
                        version,
                    };
                    let ours = conflict.local.as_ref().map(|s| side(s, ours_at, None));
                    let theirs = conflict
                        .remote
                        .as_ref()
                        .map(|s| side(s, theirs_at, remote_version));
                    if resolution != Resolution::KeepLocal {
                        conflicted.insert(conflict.path.clone());
                    }
                    inner.hub.emit(Event::Conflict(Box::new(ConflictEvent {
                        vault: self.id,
                        key,
                        ours,
                        theirs,
                        resolution,
                    })));
                }
                _ => {}
            }
        }
    }
}

/// The content of `path` if it is `state`'s (same hash) and at most `limit` bytes.
fn read_if(path: &Path, state: &dooz_client::EntryState, limit: u64) -> Option<Vec<u8>> {
    if state.kind != EntryKind::File || state.size > limit {
        return None;
    }
    let data = std::fs::read(path).ok()?;
    (blake3::hash(&data).as_bytes() == &state.content_hash.0).then_some(data)
}

/// A vault, opened on this device: values by key. Cheap to clone.
///
/// Keys are `/`-separated paths (`notes/2026/today.md`): a key and the keys below it cannot
/// both hold values (`a` and `a/b`). Values are bytes of any length; the streaming variants
/// ([`Vault::put_reader`], [`Vault::writer`], [`Vault::reader`]) never hold a value whole
/// in memory.
///
/// Every write is atomic and durable when it returns: the value goes to a temporary file,
/// which is flushed to disk and renamed over the key, so a crash leaves the old value or the
/// new one, never a mix. Reads and writes work with no server; changes sync when one is
/// reachable ([`Vault::sync`], [`Client::start_sync`](crate::Client::start_sync)).
#[derive(Clone)]
pub struct Vault {
    inner: Arc<Inner>,
    shared: Arc<VaultShared>,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("name", &self.shared.name)
            .field("id", &self.shared.id)
            .finish_non_exhaustive()
    }
}

/// A key and its value's size and time, as [`Vault::list`] gives them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyInfo {
    /// The key.
    pub key: String,
    /// The value's length in bytes.
    pub size: u64,
    /// When it was last written.
    pub modified: SystemTime,
}

/// One version of a key, as [`Vault::history`] gives them (newest first).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Version {
    /// The version's id (what [`Vault::restore`] takes).
    pub id: VersionId,
    /// The vault's commit number that made it the head.
    pub seq: u64,
    /// The device that wrote it.
    pub device: DeviceId,
    /// `None` when this version deleted the key; else its size.
    pub size: Option<u64>,
    /// Its modification time (`None` for a deletion).
    pub modified: Option<SystemTime>,
}

impl Vault {
    pub(crate) fn new(inner: Arc<Inner>, shared: Arc<VaultShared>) -> Self {
        Self { inner, shared }
    }

    /// The vault's id, the same on every device.
    pub fn id(&self) -> VaultId {
        self.shared.id
    }

    /// Its name on this device.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The folder holding its values on this device.
    pub fn folder(&self) -> &Path {
        &self.shared.root
    }

    /// Stores `value` under `key` (replacing any value). Durable when it returns.
    pub async fn put(&self, key: &str, value: impl AsRef<[u8]>) -> Result<()> {
        let mut writer = self.writer(key).await?;
        writer
            .write_all(value.as_ref())
            .await
            .map_err(Error::io("write", &writer.temp_path()))?;
        writer.commit().await?;
        Ok(())
    }

    /// Stores what `reader` gives, to its end, under `key`, through a 1 MiB buffer: values of
    /// many GiB never sit in memory. Returns the length stored. If reading fails, the key
    /// keeps its old value.
    pub async fn put_reader<R>(&self, key: &str, mut reader: R) -> Result<u64>
    where
        R: AsyncRead + Unpin + Send,
    {
        let mut writer = self.writer(key).await?;
        let mut buf = vec![0u8; STREAM_BUFFER];
        loop {
            // Fill the buffer (small reads are common), then write it in one go.
            let mut filled = 0;
            while filled < buf.len() {
                let n = reader
                    .read(&mut buf[filled..])
                    .await
                    .map_err(|source| Error::Io {
                        action: "read the value to put under",
                        path: PathBuf::from(key),
                        source,
                    })?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                break;
            }
            writer
                .write_all(&buf[..filled])
                .await
                .map_err(Error::io("write", &writer.temp_path()))?;
            if filled < buf.len() {
                break;
            }
        }
        writer.commit().await
    }

    /// A writer for a new value of `key` ([`AsyncWrite`]): write to it, then
    /// [`ValueWriter::commit`]. Dropped without committing, it leaves the key as it was.
    pub async fn writer(&self, key: &str) -> Result<ValueWriter> {
        let path = key_path(key)?;
        let target = path.to_path(&self.shared.root);
        let root = self.shared.root.clone();
        let key_owned = key.to_owned();
        let check_target = target.clone();
        let temp = tokio::task::spawn_blocking(move || {
            prepare_parents(&root, &path, &key_owned)?;
            if std::fs::symlink_metadata(&check_target).is_ok_and(|m| m.is_dir()) {
                return Err(Error::KeyCollision {
                    key: key_owned.clone(),
                    reason: format!("other keys start with \"{key_owned}/\""),
                });
            }
            Ok(root.join(format!("{SDK_TEMP_PREFIX}{}", random_hex())))
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .await
            .map_err(Error::io("create", &temp))?;
        Ok(ValueWriter {
            file,
            temp: Some(temp),
            target,
            key: key.to_owned(),
            written: 0,
            vault: self.clone(),
        })
    }

    /// The value of `key`, or `None` if the key holds none.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let path = key_path(key)?.to_path(&self.shared.root);
        // One trip to the blocking pool: open, check, read.
        tokio::task::spawn_blocking(move || -> Result<Option<Vec<u8>>> {
            use std::io::Read as _;
            let mut file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if is_absent(&e) => return Ok(None),
                Err(e) => return Err(Error::io("open", &path)(e)),
            };
            let meta = file.metadata().map_err(Error::io("stat", &path))?;
            if !meta.is_file() {
                return Ok(None);
            }
            let mut out = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
            file.read_to_end(&mut out)
                .map_err(Error::io("read", &path))?;
            Ok(Some(out))
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?
    }

    /// A reader of the value of `key` ([`AsyncRead`]), or `None` if the key holds none. It
    /// reads the value as it was when opened, even if the key changes meanwhile.
    pub async fn reader(&self, key: &str) -> Result<Option<ValueReader>> {
        let path = key_path(key)?.to_path(&self.shared.root);
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(Error::io("open", &path)(e)),
        };
        let meta = file.metadata().await.map_err(Error::io("stat", &path))?;
        if !meta.is_file() {
            return Ok(None);
        }
        Ok(Some(ValueReader {
            file,
            len: meta.len(),
        }))
    }

    /// Deletes the value of `key`; `false` if it held none.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        let path = key_path(key)?;
        let root = self.shared.root.clone();
        let managed = self.shared.managed;
        let deleted = tokio::task::spawn_blocking(move || -> Result<bool> {
            let full = path.to_path(&root);
            match std::fs::symlink_metadata(&full) {
                Ok(m) if m.is_file() => {}
                Ok(_) => return Ok(false),
                Err(e) if is_absent(&e) => return Ok(false),
                Err(e) => return Err(Error::io("stat", &full)(e)),
            }
            std::fs::remove_file(&full).map_err(Error::io("delete", &full))?;
            if let Some(parent) = full.parent() {
                sync_dir(parent);
            }
            if managed {
                // Directories are implicit in a key-value vault: drop those left empty.
                let mut dir = path.parent();
                while let Some(d) = dir {
                    if std::fs::remove_dir(d.to_path(&root)).is_err() {
                        break;
                    }
                    dir = d.parent();
                }
            }
            Ok(true)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
        if deleted {
            self.changed(key, Change::Delete);
        }
        Ok(deleted)
    }

    /// The keys starting with `prefix` (all keys for `""`), sorted, with their values' sizes.
    pub async fn list(&self, prefix: &str) -> Result<Vec<KeyInfo>> {
        let root = self.shared.root.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || list_keys(&root, &prefix))
            .await
            .map_err(|e| Error::Task(e.to_string()))?
    }

    /// Every version of `key` the server keeps, newest first. Needs the server.
    pub async fn history(&self, key: &str) -> Result<Vec<Version>> {
        let path = key_path(key)?;
        let mut slot = self.shared.engine.lock().await;
        let engine = self.shared.ready_engine(&self.inner, &mut slot).await?;
        let versions = engine.history(&path).await?;
        Ok(versions
            .into_iter()
            .map(|v| Version {
                id: v.version,
                seq: v.seq.get(),
                device: DeviceId::from_bytes(*v.device.as_bytes()),
                size: v.state.map(|s| s.size),
                modified: v.state.map(|s| system_time(s.mtime_ns)),
            })
            .collect())
    }

    /// Makes `version` of `key` (from [`Vault::history`]) its value again, as a new version:
    /// history is never rewritten. Needs the server; syncs the vault.
    pub async fn restore(&self, key: &str, version: &VersionId) -> Result<()> {
        let path = key_path(key)?;
        let mut slot = self.shared.engine.lock().await;
        let engine = self.shared.ready_engine(&self.inner, &mut slot).await?;
        let result = engine.restore(&path, version).await;
        let changes = engine.take_changes();
        self.shared.emit_changes(&self.inner, changes);
        drop(slot);
        result?;
        let size = std::fs::metadata(path.to_path(&self.shared.root)).map_or(0, |m| m.len());
        self.changed(
            key,
            Change::Put {
                size,
                version: None,
            },
        );
        Ok(())
    }

    /// Syncs the vault once: sends local changes, applies remote ones (reported as events).
    /// Needs the server: [`Error::Offline`] if it cannot be reached in time (nothing is
    /// lost; sync again later, or let background sync do it).
    pub async fn sync(&self) -> Result<SyncReport> {
        self.shared.sync(&self.inner).await
    }

    /// A stream of this vault's [`Event`]s from now on.
    pub fn watch(&self) -> EventStream {
        self.inner.hub.subscribe(Some(self.shared.id))
    }

    /// Reports a local change and wakes background sync.
    fn changed(&self, key: &str, change: Change) {
        self.inner.hub.emit(Event::Local {
            vault: self.shared.id,
            key: key.to_owned(),
            change,
        });
        self.inner.wake.vault(self.shared.id);
    }
}

/// Writes a new value of a key; see [`Vault::writer`].
pub struct ValueWriter {
    file: tokio::fs::File,
    /// The temporary file (`None` once renamed).
    temp: Option<PathBuf>,
    target: PathBuf,
    key: String,
    written: u64,
    vault: Vault,
}

impl fmt::Debug for ValueWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValueWriter")
            .field("key", &self.key)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl ValueWriter {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn temp_path(&self) -> PathBuf {
        self.temp.clone().unwrap_or_default()
    }

    /// Makes what was written the key's value: flushed to disk, then renamed over the key.
    /// Returns its length.
    pub async fn commit(mut self) -> Result<u64> {
        let temp = self.temp_path();
        self.file.flush().await.map_err(Error::io("write", &temp))?;
        // From here the commit runs to its end even if the caller stops waiting: the blocking
        // task owns the temporary file and reports the change itself.
        self.temp = None;
        let target = self.target.clone();
        let key = self.key.clone();
        let vault = self.vault.clone();
        let size = self.written;
        tokio::task::spawn_blocking(move || -> Result<u64> {
            let done = rename_into_place(&temp, &target, &key, &vault.shared.root);
            if done.is_err() {
                let _ = std::fs::remove_file(&temp);
            }
            done?;
            vault.changed(
                &key,
                Change::Put {
                    size,
                    version: None,
                },
            );
            Ok(size)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?
    }
}

/// Stamps `temp` with the time, syncs it, renames it over `target` (the value of `key`) and
/// syncs the directories.
fn rename_into_place(temp: &Path, target: &Path, key: &str, root: &Path) -> Result<()> {
    // The value's time is the commit's, to the nanosecond (file systems stamp writes with a
    // coarse clock): last-writer-wins compares these.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(temp)
        .map_err(Error::io("open", temp))?;
    file.set_modified(SystemTime::now())
        .map_err(Error::io("set the time of", temp))?;
    file.sync_all().map_err(Error::io("flush to disk", temp))?;
    drop(file);
    let mut renamed = std::fs::rename(temp, target);
    if let Err(e) = &renamed
        && e.kind() == std::io::ErrorKind::NotFound
        && let Ok(path) = key_path(key)
    {
        // A delete or a sync removed a directory the key needs, emptied meanwhile: make it
        // again, once.
        prepare_parents(root, &path, key)?;
        renamed = std::fs::rename(temp, target);
    }
    match renamed {
        Ok(()) => {}
        Err(_) if std::fs::symlink_metadata(target).is_ok_and(|m| m.is_dir()) => {
            return Err(Error::KeyCollision {
                reason: format!("other keys start with \"{key}/\""),
                key: key.to_owned(),
            });
        }
        Err(e) => return Err(Error::io("rename into place", target)(e)),
    }
    if let Some(parent) = target.parent() {
        sync_dir(parent);
    }
    if target.parent() != Some(root) {
        sync_dir(root);
    }
    Ok(())
}

impl Drop for ValueWriter {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            let _ = std::fs::remove_file(temp);
        }
    }
}

impl AsyncWrite for ValueWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.file).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            this.written += *n as u64;
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().file).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().file).poll_shutdown(cx)
    }
}

/// Reads a value; see [`Vault::reader`].
#[derive(Debug)]
pub struct ValueReader {
    file: tokio::fs::File,
    len: u64,
}

impl ValueReader {
    /// The value's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the value is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl AsyncRead for ValueReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().file).poll_read(cx, buf)
    }
}

fn is_absent(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

/// Makes the directories above `path`, refusing if one of them is a value.
fn prepare_parents(root: &Path, path: &RelPath, key: &str) -> Result<()> {
    let mut dir = root.to_path_buf();
    let parts: Vec<&str> = path.components().collect();
    let Some((_, parents)) = parts.split_last() else {
        return Ok(());
    };
    for (i, part) in parents.iter().enumerate() {
        dir.push(part);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::KeyCollision {
                    key: key.to_owned(),
                    reason: format!("key {:?} holds a value", parts[..=i].join("/")),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&dir)
                    .or_else(|e| {
                        if e.kind() == std::io::ErrorKind::AlreadyExists {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })
                    .map_err(Error::io("create directory", &dir))?;
                // The new directory's name is durable once its parent is synced.
                if let Some(parent) = dir.parent() {
                    sync_dir(parent);
                }
            }
            Err(e) => return Err(Error::io("stat", &dir)(e)),
        }
    }
    Ok(())
}

/// The keys under `root` starting with `prefix`.
fn list_keys(root: &Path, prefix: &str) -> Result<Vec<KeyInfo>> {
    // Walk from the deepest directory the prefix names in full.
    let start = prefix.rfind('/').map_or("", |i| &prefix[..i]);
    let mut out = Vec::new();
    let mut stack = vec![if start.is_empty() {
        root.to_path_buf()
    } else {
        match RelPath::new(start) {
            Ok(p) => p.to_path(root),
            Err(_) => return Ok(out),
        }
    }];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if is_absent(&e) => continue,
            Err(e) => return Err(Error::io("list", &dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(Error::io("list", &dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            // Temporary files, and a folder's ignore rules: not values.
            if name.starts_with(TEMP_FILE_PREFIX) || name == IGNORE_FILE_NAME {
                continue;
            }
            let path = entry.path();
            let Ok(rel) = RelPath::from_path_under(root, &path) else {
                continue;
            };
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if is_absent(&e) => continue,
                Err(e) => return Err(Error::io("stat", &path)(e)),
            };
            if meta.is_dir() {
                let dir_key = format!("{}/", rel.as_str());
                if dir_key.starts_with(prefix) || prefix.starts_with(&dir_key) {
                    stack.push(path);
                }
            } else if meta.is_file() && rel.as_str().starts_with(prefix) {
                out.push(KeyInfo {
                    key: rel.as_str().to_owned(),
                    size: meta.len(),
                    modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

/// Removes temporary files a crashed put left in a vault's folder (only the SDK's own).
pub(crate) fn remove_stale_temp_files(root: &Path) {
    if let Ok(entries) = std::fs::read_dir(root) {
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(SDK_TEMP_PREFIX))
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// Writes `data` to `path` atomically (temp file in `dir`, fsync, rename, fsync `dir`).
pub(crate) fn write_atomically(dir: &Path, path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let temp = dir.join(format!("{SDK_TEMP_PREFIX}{}", random_hex()));
    let result = (|| {
        let mut f = std::fs::File::create(&temp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&temp);
        return Err(Error::io("write", path)(e));
    }
    sync_dir(dir);
    Ok(())
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn random_hex() -> String {
    let mut b = [0u8; 12];
    if getrandom::getrandom(&mut b).is_err() {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        return format!("{nanos:x}");
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}
