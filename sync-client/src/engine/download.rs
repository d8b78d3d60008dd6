//! Download: pull into the remote-state tree, resolve conflicts, apply remote changes.

use std::collections::{HashSet, VecDeque};
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dooz_crypto::{ChunkId, EntryKey, VersionId};
use tokio::task::JoinHandle;

use super::upload::p_chunk;
use super::{Engine, EngineError, SyncReport, conflicted_copy_name, utc_date};
use crate::TEMP_FILE_PREFIX;
use crate::index::{
    Change, ChunkRef, ConflictKind, EntryKind, EntryState, LocalEntry, RelPath, RemoteEntry,
    SyncedEntry, VaultBatch,
};
use crate::net::NetError;
use crate::record::{EntryRecord, RecordChunks};

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
fn inode_of(meta: &fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.ino()
}

#[cfg(not(unix))]
fn inode_of(_meta: &fs::Metadata) -> u64 {
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

impl Engine {
    /// Pulls the vault's log since the cursor into the remote-state tree; returns how many
    /// changes arrived.
    pub async fn pull(&self) -> Result<u64, EngineError> {
        let vault = self.protocol_vault();
        let mut count = 0u64;
        let mut cursor = self.vault.cursor()?;
        loop {
            let page = self.conn.pull(vault, cursor, 0).await?;
            let mut entries = Vec::with_capacity(page.changes.len());
            for c in &page.changes {
                let entry = EntryKey::from_bytes(*c.entry.as_bytes());
                let version = VersionId(*c.version.as_bytes());
                let record = EntryRecord::open(&self.keyring, &entry, &version, &c.record)
                    .map_err(|e| EngineError::Integrity {
                        path: format!("entry {entry}"),
                        reason: e.to_string(),
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
                entries.push((record.path, remote));
            }
            count += entries.len() as u64;
            let next = if page.next > cursor { page.next } else { cursor };
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
        for conflict in self.vault.conflicts()? {
            report.conflicts += 1;
            let path = conflict.path;
            match conflict.kind {
                ConflictKind::BothModified | ConflictKind::BothAdded => {
                    self.keep_conflicted_copy(&path)?;
                }
                ConflictKind::DeletedLocally => {
                    // Keep the remote modification: it is restored below.
                    let mut b = VaultBatch::new();
                    b.remove_local(&path);
                    self.vault.commit(b)?;
                }
                ConflictKind::DeletedRemotely => {
                    // Keep the local modification: it uploads as a new file whose parent is
                    // the remote deletion.
                    let mut b = VaultBatch::new();
                    b.remove_base(&path);
                    self.vault.commit(b)?;
                }
            }
        }
        let mut deletions = Vec::new();
        for change in self.vault.remote_changes()? {
            match change {
                Change::Added { path, .. } | Change::Modified { path, .. } => {
                    self.apply_remote(&path, &mut report).await?;
                }
                Change::Renamed { from, to, .. } => {
                    self.apply_remote(&to, &mut report).await?;
                    deletions.push(from);
                }
                Change::Deleted { path, .. } => deletions.push(path),
            }
        }
        // Children before their directories.
        deletions.sort();
        for path in deletions.iter().rev() {
            self.apply_delete(path)?;
            report.applied += 1;
        }
        Ok(report)
    }

    /// Moves the local version of `path` aside as a conflicted copy (picked up by the next
    /// scan and uploaded).
    fn keep_conflicted_copy(&self, path: &RelPath) -> Result<(), EngineError> {
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
        match fs::rename(&full, &target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(EngineError::io("rename to a conflicted copy", &full)(e)),
        }
        tracing::info!(path = %path, copy = %copy, "conflict: kept the local version as a copy");
        let mut b = VaultBatch::new();
        b.remove_local(path);
        self.vault.commit(b)?;
        Ok(())
    }

    /// Removes `path` from the folder and the index after a remote deletion.
    fn apply_delete(&self, path: &RelPath) -> Result<(), EngineError> {
        let full = path.to_path(&self.root);
        match fs::symlink_metadata(&full) {
            Ok(meta) if meta.is_dir() => {
                if fs::remove_dir(&full).is_err() {
                    // Not empty: files this device added inside keep it alive (they upload).
                    let mut b = VaultBatch::new();
                    b.remove_base(path);
                    self.vault.commit(b)?;
                    return Ok(());
                }
            }
            Ok(_) => fs::remove_file(&full).map_err(EngineError::io("delete", &full))?,
            Err(_) => {}
        }
        let mut b = VaultBatch::new();
        b.remove_local(path).remove_base(path);
        self.vault.commit(b)?;
        Ok(())
    }

    /// Makes the folder hold the remote head of `path`.
    async fn apply_remote(
        &self,
        path: &RelPath,
        report: &mut SyncReport,
    ) -> Result<(), EngineError> {
        let Some(remote) = self.vault.remote(path)? else {
            return Ok(());
        };
        let Some(state) = remote.state else {
            self.apply_delete(path)?;
            report.applied += 1;
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
                let inode = self.write_file(path, &state, &remote.chunks, report).await?;
                LocalEntry {
                    state,
                    inode,
                    chunks: remote.chunks.clone(),
                    racy: false,
                }
            }
            // The scanner does not sync symlinks yet.
            EntryKind::Symlink => return Ok(()),
        };
        let mut b = VaultBatch::new();
        b.put_local(path, &local);
        if let Some(base) = SyncedEntry::from_remote(&remote) {
            b.put_base(path, &base);
        }
        self.vault.commit(b)?;
        report.applied += 1;
        Ok(())
    }

    /// Writes the file `path` in `state` from `chunks` through a temp file; returns its inode.
    async fn write_file(
        &self,
        path: &RelPath,
        state: &EntryState,
        chunks: &[ChunkRef],
        report: &mut SyncReport,
    ) -> Result<u64, EngineError> {
        let full = path.to_path(&self.root);
        let dir = full
            .parent()
            .map_or_else(|| self.root.clone(), Path::to_path_buf);
        fs::create_dir_all(&dir).map_err(EngineError::io("create directory", &dir))?;
        let tmp = dir.join(format!("{TEMP_FILE_PREFIX}{}", random_suffix()));
        let result = self.fill_temp(path, &tmp, state, chunks, report).await;
        let result = result.and_then(|()| {
            fs::rename(&tmp, &full).map_err(EngineError::io("rename into place", &full))?;
            sync_dir(&dir);
            let meta = fs::symlink_metadata(&full).map_err(EngineError::io("stat", &full))?;
            Ok(inode_of(&meta))
        });
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    async fn fill_temp(
        &self,
        path: &RelPath,
        tmp: &Path,
        state: &EntryState,
        chunks: &[ChunkRef],
        report: &mut SyncReport,
    ) -> Result<(), EngineError> {
        let mut file = File::create(tmp).map_err(EngineError::io("create", tmp))?;
        let wanted: HashSet<ChunkId> = chunks.iter().map(|c| c.id).collect();
        let local = self.vault.find_local_chunks(&wanted)?;
        let vault = self.protocol_vault();
        let window = self.options.parallel_transfers.max(1);
        let mut hasher = blake3::Hasher::new();
        let mut written = 0u64;
        let mut queue: VecDeque<Piece> = VecDeque::new();
        let mut next = chunks.iter();
        loop {
            while queue.len() < window {
                let Some(c) = next.next() else { break };
                let reused = local
                    .get(&c.id)
                    .and_then(|loc| self.read_local_chunk(&loc.path, loc.offset, c));
                if let Some(data) = reused {
                    report.chunks_reused += 1;
                    queue.push_back(Piece::Ready(data));
                    continue;
                }
                let conn = self.conn.clone();
                let keyring = Arc::clone(&self.keyring);
                let id = c.id;
                let shown = path.to_string();
                queue.push_back(Piece::Fetching(tokio::spawn(async move {
                    let sealed = conn.get_chunk(vault, p_chunk(&id)).await.map_err(|e| match e {
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
            let Some(piece) = queue.pop_front() else { break };
            let data = match piece {
                Piece::Ready(d) => d,
                Piece::Fetching(h) => {
                    let r = h.await.map_err(|e| EngineError::Task(e.to_string()));
                    match r.and_then(|r| r) {
                        Ok(d) => {
                            report.chunks_downloaded += 1;
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
            file.write_all(&data).map_err(EngineError::io("write", tmp))?;
        }
        if written != state.size || hasher.finalize().as_bytes() != &state.content_hash.0 {
            return Err(EngineError::Integrity {
                path: path.to_string(),
                reason: "the assembled content does not match the size and hash in its record"
                    .to_owned(),
            });
        }
        set_mode(&file, state.mode).map_err(EngineError::io("set the mode of", tmp))?;
        file.set_modified(mtime_of(state.mtime_ns))
            .map_err(EngineError::io("set the mtime of", tmp))?;
        file.sync_all().map_err(EngineError::io("fsync", tmp))?;
        Ok(())
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
