//! Download: pull into the remote-state tree, resolve conflicts, apply remote changes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dooz_crypto::{ChunkId, EntryKey, Keyring, VersionId};
use tokio::task::{JoinHandle, JoinSet};

use super::progress::{Reporter, SyncPhase};
use super::upload::p_chunk;
use super::{
    AppliedChange, Engine, EngineError, Resolution, SyncReport, conflicted_copy_name, utc_date,
};
use crate::TEMP_FILE_PREFIX;
use crate::index::{
    Change, ChunkLocation, ChunkRef, ConflictKind, ContentHash, EntryKind, EntryState, LocalEntry,
    RelPath, RemoteEntry, SyncedEntry, VaultBatch,
};
use crate::net::{Connection, NetError};
use crate::record::{EntryRecord, RecordChunks};

/// Index updates of applied remote changes are committed at least every this many changes.
const APPLY_BATCH: usize = 256;

/// State of one download's apply phase.
struct Applier {
    /// Writes files.
    writer: FileWriter,
    /// File writes running.
    files: JoinSet<Result<Written, EngineError>>,
    /// Index updates not committed yet.
    batch: VaultBatch,
    /// Changes in `batch`.
    staged: usize,
    /// What `batch` applies, for the change log (when recording).
    changes: Vec<AppliedChange>,
    /// Conflicts resolved by keeping the remote version, logged with its write.
    deferred: HashMap<RelPath, AppliedChange>,
}

/// One chunk of a file being assembled, in file order.
enum Piece {
    Ready(Vec<u8>),
    Fetching(JoinHandle<Result<Vec<u8>, EngineError>>),
}

fn mtime_of(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns.unsigned_abs())
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_nanos(ns.unsigned_abs()))
            .unwrap_or(UNIX_EPOCH)
    }
}

#[cfg(unix)]
fn set_mode(file: &File, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
}

#[cfg(not(unix))]
fn set_mode(file: &File, mode: u32) -> std::io::Result<()> {
    let mut p = file.metadata()?.permissions();
    p.set_readonly(mode & 0o200 == 0);
    file.set_permissions(p)
}

#[cfg(unix)]
pub(super) fn inode_of(meta: &fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.ino()
}

#[cfg(not(unix))]
pub(super) fn inode_of(_meta: &fs::Metadata) -> u64 {
    0
}

fn random_suffix() -> String {
    match VersionId::generate() {
        Ok(v) => v.0.iter().map(|x| format!("{x:02x}")).collect(),
        Err(_) => format!(
            "{}",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ),
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Opens a logged version (pulled or from `History`) into its path and the remote entry it
/// makes: the record is checked against the entry key and version it was sealed for.
pub(super) fn remote_entry(
    keyring: &Keyring,
    c: &dooz_protocol::Change,
) -> Result<(RelPath, RemoteEntry), EngineError> {
    let entry = EntryKey::from_bytes(*c.entry.as_bytes());
    let version = VersionId(*c.version.as_bytes());
    let record = EntryRecord::open(keyring, &entry, &version, &c.record).map_err(|e| {
        EngineError::Integrity {
            path: format!("entry {entry}"),
            reason: e.to_string(),
        }
    })?;
    let chunks = match &record.chunks {
        RecordChunks::Inline(c) => c.clone(),
        RecordChunks::List { .. } => {
            return Err(EngineError::TooManyChunks {
                path: record.path.to_string(),
                chunks: usize::MAX,
                max: dooz_protocol::limits::MAX_CHUNKS_PER_ENTRY,
            });
        }
    };
    let remote = RemoteEntry {
        entry_key: entry,
        version,
        parent: c.parent.map(|p| VersionId(*p.as_bytes())),
        seq: c.seq,
        state: record.state(),
        chunks,
    };
    Ok((record.path, remote))
}

impl Engine {
    /// Pulls the vault's log since the cursor into the remote-state tree; returns how many
    /// changes arrived.
    pub async fn pull(&self) -> Result<u64, EngineError> {
        let vault = self.protocol_vault();
        let mut count = 0u64;
        let mut cursor = self.vault.cursor()?;
        let phase = self.progress.begin(SyncPhase::Pulling, None);
        loop {
            let page = self.conn.pull(vault, cursor, 0).await?;
            phase.advance(page.changes.len() as u64);
            let mut entries = Vec::with_capacity(page.changes.len());
            for c in &page.changes {
                entries.push(remote_entry(&self.keyring, c)?);
            }
            count += entries.len() as u64;
            let next = if page.next > cursor {
                page.next
            } else {
                cursor
            };
            self.vault
                .apply_pull(entries.iter().map(|(p, e)| (p, e)), next)?;
            if !page.more || next == cursor {
                break;
            }
            cursor = next;
        }
        Ok(count)
    }

    /// Pulls, resolves conflicts and applies remote changes to the folder (scan first, so that
    /// local edits are known and kept).
    pub async fn download(&mut self) -> Result<SyncReport, EngineError> {
        let mut report = SyncReport::default();
        self.pull().await?;
        let mut deferred = HashMap::new();
        for conflict in self.vault.conflicts()? {
            report.conflicts += 1;
            let path = conflict.path.clone();
            let remote = self.vault.remote(&path)?;
            let mut copy = None;
            let resolution = match conflict.kind {
                ConflictKind::BothModified | ConflictKind::BothAdded => {
                    // The resolver decides between two files; a file against a directory
                    // keeps both.
                    let files = [conflict.local, conflict.remote]
                        .iter()
                        .all(|s| s.is_some_and(|s| s.kind == EntryKind::File));
                    let resolution = match &self.resolver {
                        Some(decide) if files => decide(&conflict),
                        _ => Resolution::KeepBoth,
                    };
                    match resolution {
                        Resolution::KeepLocal => {
                            // The remote head becomes the base: the local version uploads
                            // as its successor and the remote one is not applied.
                            if let Some(base) = remote.as_ref().and_then(SyncedEntry::from_remote) {
                                let mut b = VaultBatch::new();
                                b.put_base(&path, &base);
                                self.vault.commit(b)?;
                            }
                        }
                        // Applied below over the local file, as any remote change.
                        Resolution::KeepRemote => {}
                        Resolution::KeepBoth => copy = self.keep_conflicted_copy(&path)?,
                    }
                    resolution
                }
                ConflictKind::DeletedLocally => {
                    // Keep the remote modification: it is restored below.
                    let mut b = VaultBatch::new();
                    b.remove_local(&path);
                    self.vault.commit(b)?;
                    Resolution::KeepRemote
                }
                ConflictKind::DeletedRemotely => {
                    // Keep the local modification: it uploads as a new file whose parent is
                    // the remote deletion.
                    let mut b = VaultBatch::new();
                    b.remove_base(&path);
                    self.vault.commit(b)?;
                    Resolution::KeepLocal
                }
            };
            let change = AppliedChange::Conflict {
                conflict,
                remote_version: remote.map(|r| r.version),
                resolution,
                copy,
            };
            if resolution == Resolution::KeepRemote {
                // Reported with the write that applies the remote version (and not at all if
                // the write is refused: the next round meets the conflict again).
                deferred.insert(path, change);
            } else {
                self.note_changes([change]);
            }
        }
        let changes = self.vault.remote_changes()?;
        // Chunks already on disk, looked up once for every file to write.
        let mut wanted = HashSet::new();
        let mut file_bytes = 0u64;
        for change in &changes {
            if let Change::Added { path, .. }
            | Change::Modified { path, .. }
            | Change::Renamed { to: path, .. } = change
                && let Some(remote) = self.vault.remote(path)?
            {
                wanted.extend(remote.chunks.iter().map(|c| c.id));
                if let Some(state) = &remote.state
                    && state.kind == EntryKind::File
                    && !self.ignored(path, false)
                {
                    file_bytes += state.size;
                }
            }
        }
        let phase = (!changes.is_empty()).then(|| {
            self.progress
                .begin(SyncPhase::Downloading, Some(file_bytes))
        });
        let mut applier = Applier {
            writer: FileWriter {
                conn: self.conn.clone(),
                keyring: Arc::clone(&self.keyring),
                root: self.root.clone(),
                vault: self.protocol_vault(),
                window: self.options.parallel_transfers.max(1),
                local: Arc::new(self.vault.find_local_chunks(&wanted)?),
                progress: self.progress.clone(),
            },
            files: JoinSet::new(),
            batch: VaultBatch::new(),
            staged: 0,
            changes: Vec::new(),
            deferred: if self.recording() {
                deferred
            } else {
                HashMap::new()
            },
        };
        let result = self.apply_changes(changes, &mut applier, &mut report).await;
        // Whatever happened, let running writes finish and record what was written.
        let drained = self.drain_files(&mut applier, &mut report).await;
        let flushed = self.flush_applied(&mut applier);
        drop(phase);
        result?;
        drained?;
        flushed?;
        Ok(report)
    }

    async fn apply_changes(
        &self,
        changes: Vec<Change>,
        applier: &mut Applier,
        report: &mut SyncReport,
    ) -> Result<(), EngineError> {
        let mut deletions = Vec::new();
        for change in changes {
            let path = change.path();
            let is_dir = self
                .vault
                .remote(path)?
                .and_then(|r| r.state)
                .is_some_and(|st| st.kind == EntryKind::Dir);
            if self.ignored(path, is_dir) {
                continue;
            }
            match change {
                Change::Added { path, .. } | Change::Modified { path, .. } => {
                    self.apply_remote(&path, applier, report).await?;
                }
                Change::Renamed { from, to, .. } => {
                    self.apply_remote(&to, applier, report).await?;
                    deletions.push(from);
                }
                Change::Deleted { path, .. } => deletions.push(path),
            }
        }
        // Files are in place before anything is deleted (a rename's source may feed it).
        self.drain_files(applier, report).await?;
        // Children before their directories.
        deletions.sort();
        for path in deletions.iter().rev() {
            if self.apply_delete(path, applier)? {
                report.applied += 1;
            } else {
                report.changed_locally += 1;
            }
        }
        Ok(())
    }

    /// Commits the index updates of applied changes.
    fn flush_applied(&self, applier: &mut Applier) -> Result<(), EngineError> {
        if applier.staged > 0 {
            let batch = std::mem::replace(&mut applier.batch, VaultBatch::new());
            applier.staged = 0;
            let changes = std::mem::take(&mut applier.changes);
            self.vault.commit(batch)?;
            self.note_changes(changes);
        }
        Ok(())
    }

    /// Notes that one more change was applied; commits the index every few hundred.
    fn staged(&self, applier: &mut Applier) -> Result<(), EngineError> {
        applier.staged += 1;
        if applier.staged >= APPLY_BATCH {
            self.flush_applied(applier)?;
        }
        Ok(())
    }

    /// Moves the local version of `path` aside as a conflicted copy (picked up by the next
    /// scan and uploaded).
    fn keep_conflicted_copy(&self, path: &RelPath) -> Result<Option<RelPath>, EngineError> {
        let full = path.to_path(&self.root);
        let date = utc_date(SystemTime::now());
        let mut n = 1;
        let copy = loop {
            let name = conflicted_copy_name(path.file_name(), &self.device_name, &date, n);
            let candidate = RelPath::child(path.parent().as_ref(), &name)
                .map_err(|e| EngineError::Task(e.to_string()))?;
            if fs::symlink_metadata(candidate.to_path(&self.root)).is_err() {
                break candidate;
            }
            n += 1;
        };
        let target = copy.to_path(&self.root);
        let moved = match fs::rename(&full, &target) {
            Ok(()) => Some(copy.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(EngineError::io("rename to a conflicted copy", &full)(e)),
        };
        tracing::info!(path = %path, copy = %copy, "conflict: kept the local version as a copy");
        let mut b = VaultBatch::new();
        b.remove_local(path);
        self.vault.commit(b)?;
        Ok(moved)
    }

    /// Removes `path` from the folder and the index after a remote deletion. `Ok(false)`: the
    /// file changed on disk since the scan, so it is left alone (the next round sees a
    /// modification against a deletion, which keeps the modification).
    fn apply_delete(&self, path: &RelPath, applier: &mut Applier) -> Result<bool, EngineError> {
        let full = path.to_path(&self.root);
        let mut dir = false;
        match fs::symlink_metadata(&full) {
            Ok(meta) if meta.is_dir() => {
                dir = true;
                if fs::remove_dir(&full).is_err() {
                    // Not empty: files this device added inside keep it alive (they upload).
                    applier.batch.remove_base(path);
                    self.staged(applier)?;
                    return Ok(true);
                }
            }
            Ok(meta) => {
                if meta.is_file() {
                    let now = DiskStat::of(&meta);
                    let local = self.vault.local(path)?;
                    let scanned = local.as_ref().map(DiskStat::of_local);
                    if scanned != Some(now) {
                        return Ok(false);
                    }
                    // A racily clean entry may hide an edit of the same size and time: compare
                    // the content.
                    if let Some(l) = local.filter(|l| l.racy)
                        && content_hash_of(&full)? != l.state.content_hash
                    {
                        return Ok(false);
                    }
                }
                fs::remove_file(&full).map_err(EngineError::io("delete", &full))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(EngineError::io("stat", &full)(e)),
        }
        applier.batch.remove_local(path).remove_base(path);
        if self.recording() {
            applier.changes.push(AppliedChange::Deleted {
                path: path.clone(),
                dir,
            });
        }
        self.staged(applier)?;
        Ok(true)
    }

    /// Makes the folder hold the remote head of `path`. Files are written by background tasks
    /// (at most [`EngineOptions::parallel_transfers`](super::EngineOptions) files at once);
    /// their index updates are staged as they finish ([`Engine::join_file`]).
    async fn apply_remote(
        &self,
        path: &RelPath,
        applier: &mut Applier,
        report: &mut SyncReport,
    ) -> Result<(), EngineError> {
        let Some(remote) = self.vault.remote(path)? else {
            return Ok(());
        };
        let Some(state) = remote.state else {
            if self.apply_delete(path, applier)? {
                report.applied += 1;
            } else {
                report.changed_locally += 1;
            }
            return Ok(());
        };
        let full = path.to_path(&self.root);
        let local = match state.kind {
            EntryKind::Dir => {
                fs::create_dir_all(&full).map_err(EngineError::io("create directory", &full))?;
                let dir = File::open(&full).map_err(EngineError::io("open directory", &full))?;
                set_mode(&dir, state.mode).map_err(EngineError::io("set the mode of", &full))?;
                let meta = dir.metadata().map_err(EngineError::io("stat", &full))?;
                let mtime_ns = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
                LocalEntry {
                    state: EntryState::dir(state.mode, mtime_ns),
                    inode: inode_of(&meta),
                    chunks: Vec::new(),
                    racy: false,
                }
            }
            EntryKind::File => {
                while applier.files.len() >= self.options.parallel_transfers.max(1) {
                    self.join_file(applier, report).await?;
                }
                let writer = applier.writer.clone();
                let expected = self.vault.local(path)?.as_ref().map(DiskStat::of_local);
                let path = path.clone();
                applier
                    .files
                    .spawn(async move { writer.write_file(path, remote, state, expected).await });
                return Ok(());
            }
            // The scanner does not sync symlinks yet.
            EntryKind::Symlink => return Ok(()),
        };
        applier.batch.put_local(path, &local);
        if let Some(base) = SyncedEntry::from_remote(&remote) {
            applier.batch.put_base(path, &base);
        }
        if self.recording() {
            applier.changes.extend(applier.deferred.remove(path));
            applier.changes.push(AppliedChange::Written {
                path: path.clone(),
                version: remote.version,
                state,
            });
        }
        report.applied += 1;
        self.staged(applier)
    }

    /// Waits for one file write and stages its index update. `Ok(false)`: none was running.
    async fn join_file(
        &self,
        applier: &mut Applier,
        report: &mut SyncReport,
    ) -> Result<bool, EngineError> {
        let Some(joined) = applier.files.join_next().await else {
            return Ok(false);
        };
        let w = joined.map_err(|e| EngineError::Task(e.to_string()))??;
        report.chunks_downloaded += w.downloaded;
        report.chunks_reused += w.reused;
        let Some(inode) = w.inode else {
            // Edited locally since the scan: the next round sees the conflict.
            report.changed_locally += 1;
            return Ok(true);
        };
        let local = LocalEntry {
            state: w.state,
            inode,
            chunks: w.remote.chunks.clone(),
            racy: false,
        };
        applier.batch.put_local(&w.path, &local);
        if let Some(base) = SyncedEntry::from_remote(&w.remote) {
            applier.batch.put_base(&w.path, &base);
        }
        if self.recording() {
            applier.changes.extend(applier.deferred.remove(&w.path));
            applier.changes.push(AppliedChange::Written {
                path: w.path,
                version: w.remote.version,
                state: w.state,
            });
        }
        report.applied += 1;
        self.staged(applier)?;
        Ok(true)
    }

    /// Waits for every file write still running, staging those that succeed; returns the
    /// first failure.
    async fn drain_files(
        &self,
        applier: &mut Applier,
        report: &mut SyncReport,
    ) -> Result<(), EngineError> {
        let mut first = None;
        loop {
            match self.join_file(applier, report).await {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    if first.is_none() {
                        first = Some(e);
                    }
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Engine {
    /// Writes the content of `remote` (a version of `path` in `state`) into the folder, as a
    /// download would, without touching the index: the next scan sees it as a local change.
    /// Refused if the file changed since the index last saw it.
    pub(super) async fn write_version(
        &self,
        path: &RelPath,
        remote: RemoteEntry,
        state: EntryState,
    ) -> Result<(), EngineError> {
        let full = path.to_path(&self.root);
        match state.kind {
            EntryKind::Dir => {
                fs::create_dir_all(&full).map_err(EngineError::io("create directory", &full))?;
                return Ok(());
            }
            EntryKind::File => {}
            EntryKind::Symlink => {
                return Err(EngineError::Integrity {
                    path: path.to_string(),
                    reason: "symlinks are not synced yet".to_owned(),
                });
            }
        }
        let wanted = remote.chunks.iter().map(|c| c.id).collect();
        let writer = FileWriter {
            conn: self.conn.clone(),
            keyring: Arc::clone(&self.keyring),
            root: self.root.clone(),
            vault: self.protocol_vault(),
            window: self.options.parallel_transfers.max(1),
            local: Arc::new(self.vault.find_local_chunks(&wanted)?),
            progress: self.progress.clone(),
        };
        let expected = self.vault.local(path)?.as_ref().map(DiskStat::of_local);
        let written = writer
            .write_file(path.clone(), remote, state, expected)
            .await?;
        if written.inode.is_none() {
            return Err(EngineError::ChangedLocally {
                path: path.to_string(),
            });
        }
        Ok(())
    }
}

/// A file written by [`FileWriter::write_file`].
struct Written {
    path: RelPath,
    remote: RemoteEntry,
    state: EntryState,
    /// `None`: not written, the local file changed since the scan.
    inode: Option<u64>,
    downloaded: u64,
    reused: u64,
}

/// Writes downloaded files; cheap to clone into a task per file.
#[derive(Clone)]
struct FileWriter {
    conn: Connection,
    keyring: Arc<Keyring>,
    root: PathBuf,
    vault: dooz_protocol::VaultId,
    window: usize,
    /// Where chunks of the files to write already are on disk.
    local: Arc<HashMap<ChunkId, ChunkLocation>>,
    /// Reports bytes written ([`SyncPhase::Downloading`]).
    progress: Reporter,
}

impl FileWriter {
    /// Writes `path` in `state` through a temp file: chunks from disk or the server in
    /// order, content checked against the record, mode and mtime set, fsync, rename.
    async fn write_file(
        self,
        path: RelPath,
        remote: RemoteEntry,
        state: EntryState,
        expected: Option<DiskStat>,
    ) -> Result<Written, EngineError> {
        let full = path.to_path(&self.root);
        let dir = full
            .parent()
            .map_or_else(|| self.root.clone(), Path::to_path_buf);
        fs::create_dir_all(&dir).map_err(EngineError::io("create directory", &dir))?;
        let tmp = dir.join(format!("{TEMP_FILE_PREFIX}{}", random_suffix()));
        let mut counts = (0u64, 0u64);
        let filled = self
            .fill_temp(&path, &tmp, &state, &remote.chunks, &mut counts)
            .await;
        let result = match filled {
            Ok(file) => {
                let (tmp2, full2) = (tmp.clone(), full.clone());
                tokio::task::spawn_blocking(move || {
                    finish_file(file, &tmp2, &full2, &state, expected)
                })
                .await
                .map_err(|e| EngineError::Task(e.to_string()))
                .and_then(|r| r)
            }
            Err(e) => Err(e),
        };
        if !matches!(result, Ok(Some(_))) {
            let _ = fs::remove_file(&tmp);
        }
        match result {
            Ok(inode) => Ok(Written {
                path,
                remote,
                state,
                inode,
                downloaded: counts.0,
                reused: counts.1,
            }),
            Err(e) => Err(e),
        }
    }

    /// Writes the content into a new temp file and checks it; returns the open file.
    async fn fill_temp(
        &self,
        path: &RelPath,
        tmp: &Path,
        state: &EntryState,
        chunks: &[ChunkRef],
        counts: &mut (u64, u64),
    ) -> Result<File, EngineError> {
        let mut file = File::create(tmp).map_err(EngineError::io("create", tmp))?;
        let vault = self.vault;
        let mut hasher = blake3::Hasher::new();
        let mut written = 0u64;
        let mut queue: VecDeque<Piece> = VecDeque::new();
        let mut next = chunks.iter();
        loop {
            while queue.len() < self.window.max(1) {
                let Some(c) = next.next() else { break };
                let reused = self
                    .local
                    .get(&c.id)
                    .and_then(|loc| self.read_local_chunk(&loc.path, loc.offset, c));
                if let Some(data) = reused {
                    counts.1 += 1;
                    queue.push_back(Piece::Ready(data));
                    continue;
                }
                let conn = self.conn.clone();
                let keyring = Arc::clone(&self.keyring);
                let id = c.id;
                let shown = path.to_string();
                queue.push_back(Piece::Fetching(tokio::spawn(async move {
                    let sealed =
                        conn.get_chunk(vault, p_chunk(&id))
                            .await
                            .map_err(|e| match e {
                                NetError::Integrity { .. } => EngineError::Integrity {
                                    path: shown.clone(),
                                    reason: e.to_string(),
                                },
                                other => EngineError::Net(other),
                            })?;
                    tokio::task::spawn_blocking(move || keyring.open_chunk(&id, &sealed))
                        .await
                        .map_err(|e| EngineError::Task(e.to_string()))?
                        .map_err(|e| EngineError::Integrity {
                            path: shown,
                            reason: format!("chunk {id} does not open: {e}"),
                        })
                })));
            }
            let Some(piece) = queue.pop_front() else {
                break;
            };
            let data = match piece {
                Piece::Ready(d) => d,
                Piece::Fetching(h) => {
                    let r = h.await.map_err(|e| EngineError::Task(e.to_string()));
                    match r.and_then(|r| r) {
                        Ok(d) => {
                            counts.0 += 1;
                            d
                        }
                        Err(e) => {
                            for p in queue {
                                if let Piece::Fetching(h) = p {
                                    h.abort();
                                }
                            }
                            return Err(e);
                        }
                    }
                }
            };
            hasher.update(&data);
            written += data.len() as u64;
            file.write_all(&data)
                .map_err(EngineError::io("write", tmp))?;
            self.progress
                .advance(SyncPhase::Downloading, data.len() as u64);
        }
        if written != state.size || hasher.finalize().as_bytes() != &state.content_hash.0 {
            return Err(EngineError::Integrity {
                path: path.to_string(),
                reason: "the assembled content does not match the size and hash in its record"
                    .to_owned(),
            });
        }
        Ok(file)
    }

    /// The plaintext of chunk `c` read from a local file, if it is still there unchanged.
    fn read_local_chunk(&self, path: &RelPath, offset: u64, c: &ChunkRef) -> Option<Vec<u8>> {
        let mut f = File::open(path.to_path(&self.root)).ok()?;
        f.seek(SeekFrom::Start(offset)).ok()?;
        let mut buf = vec![0u8; c.len as usize];
        f.read_exact(&mut buf).ok()?;
        (self.keyring.identity().chunk_id(&buf) == c.id).then_some(buf)
    }
}

/// What the index last saw of a local file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DiskStat {
    size: u64,
    mtime_ns: i64,
    inode: u64,
}

impl DiskStat {
    /// What is on disk.
    fn of(meta: &fs::Metadata) -> Self {
        Self {
            size: meta.len(),
            mtime_ns: mtime_ns_of(meta),
            inode: inode_of(meta),
        }
    }

    /// What the index last saw.
    fn of_local(local: &LocalEntry) -> Self {
        Self {
            size: local.state.size,
            mtime_ns: local.state.mtime_ns,
            inode: local.inode,
        }
    }
}

/// BLAKE3 of a file's content, read in 1 MiB blocks.
fn content_hash_of(path: &Path) -> Result<ContentHash, EngineError> {
    let mut file = File::open(path).map_err(EngineError::io("open", path))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(EngineError::io("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(ContentHash(*hasher.finalize().as_bytes()))
}

pub(super) fn mtime_ns_of(meta: &fs::Metadata) -> i64 {
    match meta.modified().map(|t| t.duration_since(UNIX_EPOCH)) {
        Ok(Ok(d)) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Ok(Err(e)) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
        Err(_) => 0,
    }
}

/// Sets mode and mtime, fsyncs, renames `tmp` over `full` and returns the new inode; `None`
/// (nothing renamed) when the file at `full` is not the one the index last saw, so that an
/// edit made since the scan is never overwritten.
fn finish_file(
    file: File,
    tmp: &Path,
    full: &Path,
    state: &EntryState,
    expected: Option<DiskStat>,
) -> Result<Option<u64>, EngineError> {
    set_mode(&file, state.mode).map_err(EngineError::io("set the mode of", tmp))?;
    file.set_modified(mtime_of(state.mtime_ns))
        .map_err(EngineError::io("set the mtime of", tmp))?;
    file.sync_all().map_err(EngineError::io("fsync", tmp))?;
    drop(file);
    if let Ok(meta) = fs::symlink_metadata(full) {
        let now = DiskStat::of(&meta);
        if expected != Some(now) {
            return Ok(None);
        }
    }
    fs::rename(tmp, full).map_err(EngineError::io("rename into place", full))?;
    if let Some(dir) = full.parent() {
        sync_dir(dir);
    }
    let meta = fs::symlink_metadata(full).map_err(EngineError::io("stat", full))?;
    Ok(Some(inode_of(&meta)))
}
