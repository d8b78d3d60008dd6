//! The sync engine of one vault: upload local changes, download remote ones, resolve
//! conflicts (see [`Engine`]).
//!
//! One [`Engine::sync`] round:
//!
//! 1. **Scan** the folder into the local-state tree (size + mtime + inode first, hashing and
//!    chunking only what changed), so that local edits are known before anything is written.
//! 2. **Download** ([`Engine::download`]): pull the vault's log since the cursor into the
//!    remote-state tree, then apply every remote change that does not conflict. File contents
//!    are assembled from chunks already on disk where possible (`find_local_chunks`, checked
//!    against their keyed id) and downloaded otherwise (BLAKE3 of the sealed bytes, then the
//!    AEAD and the chunk id when opening), written to a `.dooz-tmp-*` file, checked against
//!    the content hash, fsynced and renamed over the old copy, then given their mode and mtime.
//!    A corrupted chunk stops that file with [`EngineError::Integrity`] and leaves the old copy
//!    untouched. **Conflicts** keep both versions: the remote one takes the name, the local one
//!    is renamed to `name (conflicted copy from <device> <date>).ext` and uploads as a new
//!    file; a file modified on one side and deleted on the other is kept.
//! 3. **Upload** ([`Engine::upload`]): for each local change, journal the new version
//!    (`begin_upload`) before sending anything, ask the server which of the files' chunks it
//!    lacks (`Have`, in batches), read + seal + `PutChunk` those with bounded parallelism and a
//!    memory budget, record acknowledgements durably in batches, then `Commit` with the synced
//!    base as parent and `finish_upload` each applied entry. A rename re-commits the same chunk
//!    ids at the new path, so it moves no chunk bytes. A `Conflict` answer drops the pending
//!    upload and leaves the path to the next download. After a kill, the journal gives back
//!    the same version ids and the acknowledged chunks are not sent again.
//!
//! **Progress.** [`Engine::set_progress`] installs a [`Progress`] sink that hears each phase
//! begin, advance and finish ([`SyncPhase`]: scanning, pulling, downloading and uploading N of
//! M bytes, committing), enough to draw progress bars. Without one, a report costs a branch.
//!
//! **Watch mode** ([`Watcher`](crate::Watcher), in `watch.rs`) runs
//! [`Engine::sync_with_reconnect`] when files change, when the server pushes a change and
//! periodically. Two cheap checks let it skip syncs that would do nothing:
//! [`Engine::local_paths_changed`] compares notified paths with the local-state tree (the
//! engine's own downloads match it, so they do not echo back), and
//! [`Engine::pull_has_changes`] pulls and looks for anything to apply.

mod changes;
mod download;
mod history;
mod progress;
mod upload;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dooz_crypto::{EpochKeys, Keyring, SealError, VaultId};

use crate::index::{Index, IndexError, VaultIndex};
use crate::net::{Connection, Connector, NetError};
use crate::record::RecordError;
use crate::scanner::{ScanError, ScanReport, Scanner};
use crate::{Chunker, ChunkerConfig, IgnoreRules};

pub use changes::{AppliedChange, ConflictResolver, Resolution};
pub use history::EntryVersion;
use progress::Reporter;
pub use progress::{Progress, ProgressEvent, SyncPhase};

/// Tuning of an [`Engine`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineOptions {
    /// Chunk uploads or downloads in flight at once.
    pub parallel_transfers: usize,
    /// Upper bound on the sealed chunk bytes held in memory by uploads in flight.
    pub memory_budget: usize,
    /// Sync rounds [`Engine::sync`] runs at most while uploads keep meeting conflicts.
    pub max_rounds: u32,
    /// Chunker configuration (must be the vault's: equal for every device).
    pub chunker: ChunkerConfig,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            parallel_transfers: 32,
            memory_budget: 64 * 1024 * 1024,
            max_rounds: 4,
            chunker: ChunkerConfig::DEFAULT,
        }
    }
}

/// The engine failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// Talking to the server failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The local index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// Scanning the folder failed.
    #[error(transparent)]
    Scan(#[from] ScanError),
    /// A file could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Downloaded data failed its integrity checks; the local copy was left as it was.
    #[error(
        "integrity error in {path}: {reason}; the previous local copy was left intact. The server's \
         copy may be damaged: sync again, and if it persists re-upload the file from a device \
         that has a good copy"
    )]
    Integrity {
        /// The file (relative path).
        path: String,
        /// What failed.
        reason: String,
    },
    /// A record could not be made or read.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A chunk could not be sealed.
    #[error("cannot seal a chunk: {0}")]
    Seal(#[from] SealError),
    /// The device holds no key for the vault.
    #[error(
        "this device has no key for vault {vault}; pair it with a device that has, or create the vault here"
    )]
    NoVaultKey {
        /// The vault.
        vault: VaultId,
    },
    /// A file has more chunks than one version may reference.
    #[error(
        "{path} has {chunks} chunks, more than one version may reference ({max}); files this large are not supported yet"
    )]
    TooManyChunks {
        /// The file.
        path: String,
        /// Its chunk count.
        chunks: usize,
        /// The limit.
        max: usize,
    },
    /// The server kept answering that chunks it had acknowledged are gone.
    #[error(
        "the server no longer has chunks it acknowledged for {entries} entries, even after they \
         were sent again; sync again later, and if it persists check the server's blob storage"
    )]
    ChunksLost {
        /// Entries left uncommitted (still journalled).
        entries: u64,
    },
    /// A background task failed.
    #[error("an internal task failed: {0}")]
    Task(String),
    /// Bringing the vault keys up to date failed.
    #[error("could not bring the vault keys up to date: {0}")]
    Keys(#[source] Box<crate::RotationError>),
    /// The server keeps no such version of the entry.
    #[error("{path} has no version {version} on the server; list its versions with `dooz history`")]
    VersionNotFound {
        /// The entry (relative path).
        path: String,
        /// The version asked for.
        version: String,
    },
    /// The version asked for deletes the entry: there is nothing to restore.
    #[error(
        "version {version} of {path} is its deletion, so there is no content to restore; pick \
         an earlier version from `dooz history`"
    )]
    RestoreDeletion {
        /// The entry (relative path).
        path: String,
        /// The version asked for.
        version: String,
    },
    /// The file changed in the folder since the last sync: restoring would overwrite it.
    #[error(
        "{path} changed in the folder since the last sync; sync first (so the change is kept as \
         a version of its own), then restore"
    )]
    ChangedLocally {
        /// The entry (relative path).
        path: String,
    },
}

impl EngineError {
    fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Self + 'a {
        move |source| Self::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }

    /// Whether running the sync again later may succeed (network trouble, a busy server).
    /// Integrity errors are not: the damaged copy stays damaged.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Net(e) => e.is_retryable(),
            Self::ChunksLost { .. } => true,
            _ => false,
        }
    }

    /// Whether the connection is gone (reconnect before retrying).
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, Self::Net(e) if e.is_connection_lost())
    }
}

/// What one sync did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Entries committed (files, directories, deletions).
    pub committed: u64,
    /// Chunks uploaded.
    pub chunks_uploaded: u64,
    /// Sealed bytes uploaded.
    pub bytes_uploaded: u64,
    /// Chunks the server already had (deduplicated, renamed or acknowledged before a restart).
    pub chunks_skipped: u64,
    /// Commits refused because the entry moved on the server (resolved by the next download).
    pub commit_conflicts: u64,
    /// Files left for the next round because they changed while being uploaded.
    pub changed_during_upload: u64,
    /// Remote changes applied to the folder.
    pub applied: u64,
    /// Remote changes not applied because the local file changed since the scan (the next
    /// round treats them as conflicts, keeping both).
    pub changed_locally: u64,
    /// Chunks downloaded.
    pub chunks_downloaded: u64,
    /// Chunks taken from files already on disk.
    pub chunks_reused: u64,
    /// Conflicts resolved by keeping a conflicted copy (or the surviving modification).
    pub conflicts: u64,
    /// Entries not committed because the server no longer had chunks this device had seen
    /// acknowledged (lost in a server crash, or collected): they are re-sent next round.
    pub missing_on_server: u64,
    /// Sync rounds run.
    pub rounds: u32,
}

impl SyncReport {
    fn add(&mut self, o: &SyncReport) {
        self.committed += o.committed;
        self.chunks_uploaded += o.chunks_uploaded;
        self.bytes_uploaded += o.bytes_uploaded;
        self.chunks_skipped += o.chunks_skipped;
        self.commit_conflicts += o.commit_conflicts;
        self.changed_during_upload += o.changed_during_upload;
        self.applied += o.applied;
        self.changed_locally += o.changed_locally;
        self.chunks_downloaded += o.chunks_downloaded;
        self.chunks_reused += o.chunks_reused;
        self.conflicts += o.conflicts;
        self.missing_on_server += o.missing_on_server;
        self.rounds += o.rounds;
    }
}

/// Builds a vault's keyring from the keys the index holds.
pub fn keyring_from_index(index: &Index, vault: VaultId) -> Result<Keyring, EngineError> {
    let keys = index.vault_keys(vault)?;
    let mut iter = keys.iter();
    let Some((first_epoch, first_key)) = iter.next() else {
        return Err(EngineError::NoVaultKey { vault });
    };
    let mut ring = Keyring::from_first_epoch(vault, *first_epoch, first_key);
    for (epoch, key) in iter {
        ring.insert_epoch(EpochKeys::derive(vault, *epoch, key))
            .map_err(|e| EngineError::Task(e.to_string()))?;
    }
    Ok(ring)
}

/// Syncs one vault's folder with the server.
pub struct Engine {
    vault: VaultIndex,
    root: PathBuf,
    keyring: Arc<Keyring>,
    conn: Connection,
    device_name: String,
    options: EngineOptions,
    /// The ignore rules of the last scan: downloads skip what they ignore.
    ignore: Option<IgnoreRules>,
    /// Where progress goes (nowhere by default).
    progress: Reporter,
    /// Decides conflicts between two modifications (`None`: keep both).
    resolver: Option<ConflictResolver>,
    /// Applied changes not taken yet, when recording ([`Engine::record_changes`]).
    changes: Option<std::sync::Mutex<Vec<AppliedChange>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("vault", &self.vault.vault())
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine for `vault` (bound to its folder in the index), sealing with `keyring`,
    /// talking over `conn`. `device_name` goes into the names of conflicted copies.
    pub fn new(
        vault: VaultIndex,
        keyring: Keyring,
        conn: Connection,
        device_name: impl Into<String>,
        options: EngineOptions,
    ) -> Result<Self, EngineError> {
        let root = vault.meta()?.root;
        let progress = Reporter::new(vault.vault(), None);
        Ok(Self {
            vault,
            root,
            keyring: Arc::new(keyring),
            conn,
            device_name: device_name.into(),
            options,
            ignore: None,
            progress,
            resolver: None,
            changes: None,
        })
    }

    /// Decides conflicts between two modifications of a path with `resolver` from now on
    /// (`None`: [`Resolution::KeepBoth`], the default).
    pub fn set_conflict_resolver(&mut self, resolver: Option<ConflictResolver>) {
        self.resolver = resolver;
    }

    /// Starts (or stops, dropping what was not taken) recording the remote changes and
    /// conflicts downloads apply, for [`Engine::take_changes`].
    pub fn record_changes(&mut self, on: bool) {
        self.changes = on.then(|| std::sync::Mutex::new(Vec::new()));
    }

    /// The changes recorded since the last call, in the order they were committed (empty
    /// when not recording).
    pub fn take_changes(&mut self) -> Vec<AppliedChange> {
        self.changes.as_mut().map_or_else(Vec::new, |m| {
            std::mem::take(
                m.get_mut()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            )
        })
    }

    /// Appends to the change log (when recording).
    fn note_changes(&self, changes: impl IntoIterator<Item = AppliedChange>) {
        if let Some(log) = &self.changes {
            log.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend(changes);
        }
    }

    /// Whether changes are being recorded.
    fn recording(&self) -> bool {
        self.changes.is_some()
    }

    /// Sends [`ProgressEvent`]s to `sink` from now on (`None`: stop reporting). Without a
    /// sink, reporting costs one branch per report.
    pub fn set_progress(&mut self, sink: Option<Arc<dyn Progress>>) {
        self.progress = Reporter::new(self.vault.vault(), sink);
    }

    /// The folder this engine syncs.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The connection (for its byte counters, or to reconnect).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Replaces the connection (after the old one was lost).
    pub fn set_connection(&mut self, conn: Connection) {
        self.conn = conn;
    }

    /// The vault's index.
    pub fn vault_index(&self) -> &VaultIndex {
        &self.vault
    }

    fn protocol_vault(&self) -> dooz_protocol::VaultId {
        dooz_protocol::VaultId::from_bytes(self.vault.vault().0)
    }

    /// Scans the folder into the local-state tree (and remembers its `.doozignore` rules,
    /// which downloads follow).
    pub fn scan(&mut self) -> Result<ScanReport, EngineError> {
        let identity = self.keyring.identity();
        let chunker = Chunker::new(self.options.chunker, identity.chunker_seed().as_bytes());
        let mut scanner = Scanner::new(chunker, |data: &[u8]| identity.chunk_id(data));
        let phase = self.progress.begin(SyncPhase::Scanning, None);
        let mut scanned = 0;
        let report = scanner.scan_with_progress(&self.vault, &mut |p| {
            phase.advance(p.scanned.saturating_sub(scanned));
            scanned = scanned.max(p.scanned);
        })?;
        drop(phase);
        self.ignore = scanner.ignore_rules().cloned();
        Ok(report)
    }

    /// Whether the last scan's rules ignore `path`.
    fn ignored(&self, path: &crate::index::RelPath, is_dir: bool) -> bool {
        self.ignore
            .as_ref()
            .is_some_and(|rules| rules.is_ignored(path, is_dir))
    }

    /// One full sync: scan, download, scan, upload; repeated (up to
    /// [`EngineOptions::max_rounds`]) while uploads meet conflicts.
    pub async fn sync(&mut self) -> Result<SyncReport, EngineError> {
        let mut total = SyncReport::default();
        let mut lost = 0;
        for _ in 0..self.options.max_rounds.max(1) {
            self.scan()?;
            let down = self.download().await?;
            self.scan()?;
            let up = self.upload().await?;
            total.add(&down);
            total.add(&up);
            total.rounds += 1;
            lost = up.missing_on_server;
            if up.commit_conflicts == 0
                && up.changed_during_upload == 0
                && up.missing_on_server == 0
                && down.changed_locally == 0
            {
                break;
            }
        }
        if lost > 0 {
            return Err(EngineError::ChunksLost { entries: lost });
        }
        Ok(total)
    }
}

/// Cheap checks that let a watcher skip a sync that would find nothing to do.
impl Engine {
    /// Whether any of `paths` (file system paths, as a file notification names them) differs
    /// from what the local-state tree holds, so that a scan would find a local change: a new,
    /// deleted or modified file or directory. Only metadata is read (size, mtime, inode, mode),
    /// as the scanner's cheap check does; a racily clean entry counts as changed.
    ///
    /// Paths outside the folder, the engine's own temp files (`.dooz-tmp-*`), the index
    /// directory and paths the last scan's `.doozignore` rules ignore do not count. A file the
    /// engine itself wrote while downloading matches its entry (the download records the
    /// inode, size and mtime it left on disk), so notifications of the engine's own writes
    /// find nothing here: watch mode does not echo downloads back as uploads.
    pub fn local_paths_changed<P: AsRef<Path>>(&self, paths: &[P]) -> Result<bool, EngineError> {
        let index_dir = self.vault.index().path();
        for path in paths {
            let path = path.as_ref();
            if path.starts_with(index_dir) {
                continue;
            }
            let Ok(rel) = crate::index::RelPath::from_path_under(&self.root, path) else {
                // Outside the folder, the folder itself, or a name the scanner skips.
                continue;
            };
            if rel.file_name().starts_with(crate::TEMP_FILE_PREFIX) {
                continue;
            }
            let entry = self.vault.local(&rel)?;
            let meta = match std::fs::symlink_metadata(path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if entry.is_some() {
                        return Ok(true);
                    }
                    continue;
                }
                // Let a scan find out (and report) what is wrong.
                Err(_) => return Ok(true),
            };
            if self.ignored(&rel, meta.is_dir()) {
                continue;
            }
            let Some(entry) = entry else {
                if meta.is_dir() || meta.is_file() {
                    return Ok(true);
                }
                // Symlinks and special files are not synced.
                continue;
            };
            let same = match entry.state.kind {
                crate::index::EntryKind::Dir => {
                    meta.is_dir() && entry.state.mode == disk_mode(&meta)
                }
                crate::index::EntryKind::File => {
                    meta.is_file()
                        && !entry.racy
                        && entry.state.size == meta.len()
                        && entry.state.mtime_ns == download::mtime_ns_of(&meta)
                        && entry.inode == download::inode_of(&meta)
                        && entry.state.mode == disk_mode(&meta)
                }
                crate::index::EntryKind::Symlink => false,
            };
            if !same {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Pulls the vault's log since the cursor (as [`Engine::pull`]) and tells whether a
    /// download would have anything to apply: a remote change or conflict on a path the last
    /// scan's rules do not ignore. Commits this device made itself are already in its synced
    /// base, so being told about them (as `Subscribe` does) finds nothing.
    pub async fn pull_has_changes(&self) -> Result<bool, EngineError> {
        self.pull().await?;
        for change in self.vault.remote_changes()? {
            let path = change.path();
            let is_dir = self
                .vault
                .remote(path)?
                .and_then(|r| r.state)
                .is_some_and(|st| st.kind == crate::index::EntryKind::Dir);
            if !self.ignored(path, is_dir) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Permission bits as the scanner records them.
#[cfg(unix)]
fn disk_mode(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::MetadataExt;
    meta.mode() & 0o7777
}

/// Permission bits as the scanner records them.
#[cfg(not(unix))]
fn disk_mode(meta: &std::fs::Metadata) -> u32 {
    if meta.permissions().readonly() {
        0o444
    } else {
        0o644
    }
}

impl Engine {
    /// [`Engine::sync`], reconnecting with `connector` when the connection is lost and
    /// retrying retryable failures with exponential back-off (0.2 s doubling up to 10 s), at
    /// most `max_attempts` times in all. A sync interrupted this way resumes where it stopped:
    /// committed entries and acknowledged chunks are not sent again.
    pub async fn sync_with_reconnect(
        &mut self,
        connector: &Connector,
        max_attempts: u32,
    ) -> Result<SyncReport, EngineError> {
        let mut delay = std::time::Duration::from_millis(200);
        let max_delay = std::time::Duration::from_secs(10);
        let mut attempt = 0;
        let mut refreshed = false;
        loop {
            attempt += 1;
            let last = attempt >= max_attempts.max(1);
            let result = if self.conn.close_reason().is_some() {
                match connector.connect().await {
                    Ok(conn) => {
                        self.conn = conn;
                        self.sync().await
                    }
                    Err(e) => Err(EngineError::Net(e)),
                }
            } else {
                self.sync().await
            };
            match result {
                Ok(report) => return Ok(report),
                // Records that do not open may be sealed under an epoch another device made
                // since this engine started (a rotation): fetch the keys once and try again.
                Err(EngineError::Integrity { .. }) if !refreshed => {
                    refreshed = true;
                    let report = self.refresh_keys(connector.keys()).await?;
                    tracing::info!(?report, "records did not open; vault keys refreshed");
                }
                Err(e) if e.is_retryable() && !last => {
                    tracing::warn!(attempt, error = %e, "sync failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(max_delay);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Brings the account's vault keys up to date ([`maintain_keys`](crate::maintain_keys):
    /// drops revoked devices, takes and passes on new epoch keys, rotates vaults the server
    /// marks due), then reloads this engine's keyring from the index if its vault's keys
    /// changed. `me` are this device's keys.
    pub async fn refresh_keys(
        &mut self,
        me: &dooz_crypto::DeviceSecretKeys,
    ) -> Result<crate::KeyReport, EngineError> {
        let report = crate::maintain_keys(&self.conn, me, self.vault.index())
            .await
            .map_err(|e| match e {
                crate::RotationError::Net(n) => EngineError::Net(n),
                crate::RotationError::Index(i) => EngineError::Index(i),
                other => EngineError::Keys(Box::new(other)),
            })?;
        let vault = self.vault.vault();
        let changed = report
            .received
            .iter()
            .chain(&report.rotated)
            .any(|(v, _)| *v == vault);
        if changed {
            self.keyring = Arc::new(keyring_from_index(self.vault.index(), vault)?);
        }
        Ok(report)
    }
}

/// Longest file name most file systems take, in bytes.
const MAX_NAME_BYTES: usize = 255;
/// Longest device name kept in a conflicted copy's name, in bytes.
const MAX_COPY_DEVICE_BYTES: usize = 64;

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncated(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `name (conflicted copy from <device> <date>).ext` for the file name of `path`, shortened (the
/// device name to 64 bytes, then the name's stem, then its extension) to fit in 255 bytes.
pub(crate) fn conflicted_copy_name(file_name: &str, device: &str, date: &str, n: u32) -> String {
    let (stem, ext) = match file_name.rfind('.') {
        Some(i) if i > 0 => (&file_name[..i], &file_name[i..]),
        _ => (file_name, ""),
    };
    let device: String = device
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    let device = truncated(&device, MAX_COPY_DEVICE_BYTES);
    let tag = if n <= 1 {
        format!(" (conflicted copy from {device} {date})")
    } else {
        format!(" (conflicted copy from {device} {date} {n})")
    };
    let room = MAX_NAME_BYTES.saturating_sub(tag.len());
    // The extension keeps what the stem leaves, and at least half the room.
    let ext = truncated(ext, room.saturating_sub(stem.len()).max(room / 2));
    let stem = truncated(stem, room.saturating_sub(ext.len()));
    format!("{stem}{tag}{ext}")
}

/// Today's date in UTC, `YYYY-MM-DD`.
pub(crate) fn utc_date(now: std::time::SystemTime) -> String {
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflicted_copy_names() {
        assert_eq!(
            conflicted_copy_name("report.txt", "laptop", "2026-11-23", 1),
            "report (conflicted copy from laptop 2026-11-23).txt"
        );
        assert_eq!(
            conflicted_copy_name(".bashrc", "a/b", "2026-11-23", 1),
            ".bashrc (conflicted copy from a_b 2026-11-23)"
        );
        assert_eq!(
            conflicted_copy_name("x.tar.gz", "pc", "2026-01-02", 2),
            "x.tar (conflicted copy from pc 2026-01-02 2).gz"
        );
    }

    #[test]
    fn conflicted_copy_names_fit_in_a_file_name() {
        let long = "é".repeat(127); // 254 bytes
        let device = "d".repeat(300);
        let name = conflicted_copy_name(&format!("{long}.txt"), &device, "2026-11-23", 12);
        assert!(name.len() <= 255, "{} bytes", name.len());
        assert!(name.ends_with(" 2026-11-23 12).txt"), "{name}");
        assert!(name.starts_with("éé"));
        let ext = format!("a.{}", "e".repeat(200));
        let name = conflicted_copy_name(&ext, "pc", "2026-11-23", 1);
        assert!(name.len() <= 255, "{} bytes", name.len());
        assert!(
            name.ends_with(&ext[1..]),
            "a long extension that fits is kept: {name}"
        );
        let name = conflicted_copy_name(&"x".repeat(255), "pc", "2026-11-23", 1);
        assert!(name.len() <= 255);
        assert!(
            name.ends_with("(conflicted copy from pc 2026-11-23)"),
            "{name}"
        );
    }

    #[test]
    fn dates() {
        let at = |s: u64| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s);
        assert_eq!(utc_date(at(0)), "1970-01-01");
        assert_eq!(utc_date(at(951_782_400)), "2000-02-29");
        assert_eq!(utc_date(at(1_795_392_000)), "2026-11-23");
    }
}
