//! Upload of local changes: journal, `Have`, seal + `PutChunk` in parallel, `Commit`.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dooz_crypto::{ChunkId, Keyring, VersionId};
use dooz_protocol::limits::{MAX_CHUNKS_PER_ENTRY, MAX_COMMIT_ENTRIES, MAX_HAVE_IDS};
use dooz_protocol::{CommitEntry, CommitResult, ErrorCode};
use tokio::task::JoinSet;

use super::progress::SyncPhase;
use super::{Engine, EngineError, SyncReport};
use crate::index::{
    Change, ChunkRef, EntryState, PendingUpload, RelPath, RemoteEntry, SyncedEntry, VaultBatch,
};
use crate::net::NetError;
use crate::record::EntryRecord;

/// Commit batches stay well under the 8 MiB frame limit.
const COMMIT_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Acknowledgements older than this are not trusted: the server collects pending chunks that
/// no commit references after a grace period, so such chunks are asked about again.
const ACK_TRUST_SECS: u64 = 3600;
/// Acknowledgements are written to the index (not flushed) every this many chunks; they are
/// flushed at the end of the upload, on error, and by the index's background flush.
const ACK_BATCH: usize = 64;

/// One entry to commit.
struct Upload {
    path: RelPath,
    pending: PendingUpload,
    chunks: Vec<ChunkRef>,
}

/// Where to read one chunk to upload.
#[derive(Clone)]
struct Source {
    path: RelPath,
    offset: u64,
    len: u32,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(super) fn p_chunk(id: &ChunkId) -> dooz_protocol::ChunkId {
    dooz_protocol::ChunkId::from_bytes(*id.as_bytes())
}

/// Reads `len` bytes at `offset` of `root/path`, checks they are chunk `id`, and seals them.
fn read_and_seal(
    keyring: &Keyring,
    root: &std::path::Path,
    id: &ChunkId,
    src: &Source,
) -> Result<Option<Vec<u8>>, EngineError> {
    use std::io::{Read, Seek, SeekFrom};
    let full = src.path.to_path(root);
    let mut file = match File::open(&full) {
        Ok(f) => f,
        // Gone since the scan: the next scan notices.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(EngineError::io("open", &full)(e)),
    };
    file.seek(SeekFrom::Start(src.offset))
        .map_err(EngineError::io("read", &full))?;
    let mut buf = vec![0u8; src.len as usize];
    match file.read_exact(&mut buf) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(EngineError::io("read", &full)(e)),
    }
    if keyring.identity().chunk_id(&buf) != *id {
        // Changed since the scan.
        return Ok(None);
    }
    let epoch = keyring.latest().ok_or(EngineError::NoVaultKey {
        vault: keyring.vault(),
    })?;
    Ok(Some(epoch.seal_chunk(id, &buf)?))
}

impl Engine {
    /// Parent version of a new version of `path`: the synced base, or the remote tombstone
    /// when both sides agree the path is deleted.
    fn parent_of(&self, path: &RelPath) -> Result<Option<VersionId>, EngineError> {
        if let Some(base) = self.vault.base(path)? {
            return Ok(Some(base.version));
        }
        Ok(self
            .vault
            .remote(path)?
            .filter(RemoteEntry::is_deleted)
            .map(|r| r.version))
    }

    /// Journals the upload of `path` in `state` (reusing a pending upload of the same state,
    /// left by an interrupted run).
    fn plan(
        &self,
        path: &RelPath,
        state: Option<EntryState>,
        journal: &mut VaultBatch,
    ) -> Result<Upload, EngineError> {
        let chunks = match state {
            Some(_) => self
                .vault
                .local(path)?
                .map(|l| l.chunks)
                .unwrap_or_default(),
            None => Vec::new(),
        };
        if chunks.len() > MAX_CHUNKS_PER_ENTRY {
            return Err(EngineError::TooManyChunks {
                path: path.to_string(),
                chunks: chunks.len(),
                max: MAX_CHUNKS_PER_ENTRY,
            });
        }
        let parent = self.parent_of(path)?;
        if let Some(p) = self.vault.pending_upload(path)?
            && p.state == state
            && p.parent == parent
        {
            return Ok(Upload {
                path: path.clone(),
                pending: p,
                chunks,
            });
        }
        let pending = PendingUpload {
            version: VersionId::generate().map_err(|e| EngineError::Task(e.to_string()))?,
            parent,
            state,
            started_at: now_secs(),
        };
        journal.put_pending(path, &pending);
        Ok(Upload {
            path: path.clone(),
            pending,
            chunks,
        })
    }

    /// Uploads every local change (the local-state tree against the synced base; scan
    /// first) and commits it.
    pub async fn upload(&mut self) -> Result<SyncReport, EngineError> {
        let mut report = SyncReport::default();
        let mut uploads = Vec::new();
        let mut journal = VaultBatch::new();
        for change in self.vault.local_changes()? {
            match change {
                Change::Added { path, state }
                | Change::Modified {
                    path, after: state, ..
                } => {
                    uploads.push(self.plan(&path, Some(state), &mut journal)?);
                }
                Change::Deleted { path, .. } => {
                    uploads.push(self.plan(&path, None, &mut journal)?);
                }
                Change::Renamed {
                    from, to, after, ..
                } => {
                    uploads.push(self.plan(&to, Some(after), &mut journal)?);
                    uploads.push(self.plan(&from, None, &mut journal)?);
                }
            }
        }
        if uploads.is_empty() {
            return Ok(report);
        }
        // The new versions are durable before the first chunk leaves.
        self.vault.commit(journal)?;
        let unreadable = self.send_chunks(&uploads, &mut report).await?;
        let mut ready = Vec::with_capacity(uploads.len());
        let mut aborted = VaultBatch::new();
        for u in uploads {
            if u.chunks.iter().any(|c| unreadable.contains(&c.id)) {
                // The file changed after the scan: the next round rescans and uploads it.
                aborted.remove_pending(&u.path);
                report.changed_during_upload += 1;
            } else {
                ready.push(u);
            }
        }
        if report.changed_during_upload > 0 {
            self.vault.commit(aborted)?;
        }
        self.commit_uploads(ready, &mut report).await?;
        Ok(report)
    }

    /// Sends the chunks of `uploads` the server lacks; returns the ids whose bytes were no
    /// longer on disk as scanned.
    async fn send_chunks(
        &self,
        uploads: &[Upload],
        report: &mut SyncReport,
    ) -> Result<HashSet<ChunkId>, EngineError> {
        // Every chunk once, with a place to read it from.
        let mut sources: HashMap<ChunkId, Source> = HashMap::new();
        let mut order = Vec::new();
        for u in uploads {
            let mut offset = 0u64;
            for c in &u.chunks {
                if let std::collections::hash_map::Entry::Vacant(slot) = sources.entry(c.id) {
                    slot.insert(Source {
                        path: u.path.clone(),
                        offset,
                        len: c.len,
                    });
                    order.push(c.id);
                }
                offset += u64::from(c.len);
            }
        }
        // Chunks acknowledged before an interruption are not asked about again.
        let mut ask = Vec::new();
        let trusted_since = now_secs().saturating_sub(ACK_TRUST_SECS);
        for id in order {
            if self
                .vault
                .acked_at(&id)?
                .is_some_and(|at| at >= trusted_since)
            {
                report.chunks_skipped += 1;
            } else {
                ask.push(id);
            }
        }
        let vault = self.protocol_vault();
        let mut missing = Vec::new();
        for batch in ask.chunks(MAX_HAVE_IDS) {
            let ids = batch.iter().map(p_chunk).collect();
            let lacking: HashSet<dooz_protocol::ChunkId> =
                self.conn.have(vault, ids).await?.into_iter().collect();
            for id in batch {
                if lacking.contains(&p_chunk(id)) {
                    missing.push(*id);
                } else {
                    report.chunks_skipped += 1;
                }
            }
        }
        let parallel = self.options.parallel_transfers.max(1);
        let budget = self.options.memory_budget.max(1);
        let phase = (!missing.is_empty()).then(|| {
            let total = missing
                .iter()
                .filter_map(|id| sources.get(id))
                .map(|s| u64::from(s.len))
                .sum();
            self.progress.begin(SyncPhase::Uploading, Some(total))
        });
        let mut tasks: JoinSet<Result<(ChunkId, Option<u64>), EngineError>> = JoinSet::new();
        let mut unreadable = HashSet::new();
        let mut in_flight_bytes = 0usize;
        let mut acked = Vec::new();
        let mut queue = missing.into_iter();
        loop {
            // Fill the window.
            while tasks.len() < parallel && (in_flight_bytes < budget || tasks.is_empty()) {
                let Some(id) = queue.next() else { break };
                let Some(src) = sources.get(&id).cloned() else {
                    continue;
                };
                in_flight_bytes += src.len as usize;
                let keyring = Arc::clone(&self.keyring);
                let root: PathBuf = self.root.clone();
                let conn = self.conn.clone();
                tasks.spawn(async move {
                    let sealed = tokio::task::spawn_blocking(move || {
                        read_and_seal(&keyring, &root, &id, &src)
                    })
                    .await
                    .map_err(|e| EngineError::Task(e.to_string()))??;
                    let Some(sealed) = sealed else {
                        return Ok((id, None));
                    };
                    let n = sealed.len() as u64;
                    conn.put_chunk(vault, p_chunk(&id), Bytes::from(sealed))
                        .await?;
                    Ok((id, Some(n)))
                });
            }
            let Some(done) = tasks.join_next().await else {
                break;
            };
            let done = done.map_err(|e| EngineError::Task(e.to_string()))?;
            match done {
                Ok((id, Some(n))) => {
                    if let Some(src) = sources.get(&id) {
                        in_flight_bytes = in_flight_bytes.saturating_sub(src.len as usize);
                        if let Some(phase) = &phase {
                            phase.advance(u64::from(src.len));
                        }
                    }
                    report.chunks_uploaded += 1;
                    report.bytes_uploaded += n;
                    acked.push(id);
                    if acked.len() >= ACK_BATCH {
                        self.vault.note_acked(&acked)?;
                        acked.clear();
                    }
                }
                Ok((id, None)) => {
                    if let Some(src) = sources.get(&id) {
                        in_flight_bytes = in_flight_bytes.saturating_sub(src.len as usize);
                        if let Some(phase) = &phase {
                            phase.advance(u64::from(src.len));
                        }
                    }
                    unreadable.insert(id);
                }
                Err(e) => {
                    // Keep what was acknowledged so far.
                    self.vault.record_acked(&acked)?;
                    return Err(e);
                }
            }
        }
        self.vault.record_acked(&acked)?;
        Ok(unreadable)
    }

    /// Seals records and commits `uploads` in batches; finishes applied entries.
    async fn commit_uploads(
        &self,
        uploads: Vec<Upload>,
        report: &mut SyncReport,
    ) -> Result<(), EngineError> {
        let keyring = &self.keyring;
        let epoch = keyring.latest().ok_or(EngineError::NoVaultKey {
            vault: self.vault.vault(),
        })?;
        let p_epoch = dooz_protocol::Epoch::new(epoch.epoch().0);
        let vault = self.protocol_vault();
        let mut batch: Vec<(Upload, CommitEntry)> = Vec::new();
        let mut batch_bytes = 0usize;
        let total = uploads.len();
        let phase = (total > 0).then(|| {
            self.progress
                .begin(SyncPhase::Committing, Some(total as u64))
        });
        for (i, u) in uploads.into_iter().enumerate() {
            let record =
                EntryRecord::new(u.path.clone(), u.pending.state.as_ref(), u.chunks.clone());
            let (entry, sealed) = record.seal(keyring.identity(), epoch, &u.pending.version)?;
            let entry_bytes = sealed.len() + 33 * u.chunks.len() + 128;
            let commit_entry = CommitEntry {
                entry: dooz_protocol::EntryKey::from_bytes(*entry.as_bytes()),
                parent: u
                    .pending
                    .parent
                    .map(|v| dooz_protocol::VersionId::from_bytes(v.0)),
                version: dooz_protocol::VersionId::from_bytes(u.pending.version.0),
                record: sealed,
                chunks: u.chunks.iter().map(|c| p_chunk(&c.id)).collect(),
                epoch: p_epoch,
            };
            batch_bytes += entry_bytes;
            batch.push((u, commit_entry));
            if batch.len() >= MAX_COMMIT_ENTRIES
                || batch_bytes >= COMMIT_BATCH_BYTES
                || i + 1 == total
            {
                let entries = batch.len() as u64;
                self.commit_batch(vault, std::mem::take(&mut batch), report)
                    .await?;
                if let Some(phase) = &phase {
                    phase.advance(entries);
                }
                batch_bytes = 0;
            }
        }
        Ok(())
    }

    async fn commit_batch(
        &self,
        vault: dooz_protocol::VaultId,
        batch: Vec<(Upload, CommitEntry)>,
        report: &mut SyncReport,
    ) -> Result<(), EngineError> {
        if batch.is_empty() {
            return Ok(());
        }
        let entries = batch.iter().map(|(_, e)| e.clone()).collect();
        let results = match self.conn.commit(vault, entries).await {
            Ok(results) => results,
            Err(
                e @ NetError::Server {
                    code: ErrorCode::NotFound,
                    ..
                },
            ) => {
                // A chunk the journal says was acknowledged is gone (collected after the grace
                // period, or lost by the server): forget those acknowledgements so that the
                // next run asks `Have` again and re-sends what is missing.
                let mut forget = VaultBatch::new();
                for (u, _) in &batch {
                    for c in &u.chunks {
                        forget.unack(&c.id);
                    }
                }
                self.vault.commit(forget)?;
                // The entries stay journalled: the next round asks `Have` for their chunks,
                // re-sends the missing ones and commits again.
                tracing::warn!(error = %e, "the server lacks acknowledged chunks; re-sending");
                report.missing_on_server += batch.len() as u64;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let mut done = VaultBatch::new();
        for ((u, e), result) in batch.into_iter().zip(results) {
            let entry_key = dooz_crypto::EntryKey::from_bytes(*e.entry.as_bytes());
            let applied_seq = match result {
                CommitResult::Applied { seq, .. } => Some(seq),
                // An earlier attempt of this very version landed (its answer was lost).
                CommitResult::Conflict { head: Some(h), .. } if h == e.version => {
                    Some(self.vault.cursor()?)
                }
                CommitResult::Conflict { .. } => None,
            };
            done.remove_pending(&u.path);
            match applied_seq {
                Some(seq) => {
                    // As `VaultIndex::finish_upload`, for the whole batch at once.
                    let committed = RemoteEntry {
                        entry_key,
                        version: u.pending.version,
                        parent: u.pending.parent,
                        seq,
                        state: u.pending.state,
                        chunks: u.chunks,
                    };
                    done.put_remote(&u.path, &committed);
                    match SyncedEntry::from_remote(&committed) {
                        Some(base) => done.put_base(&u.path, &base),
                        None => done.remove_base(&u.path),
                    };
                    for c in &committed.chunks {
                        done.unack(&c.id);
                    }
                    report.committed += 1;
                }
                None => report.commit_conflicts += 1,
            }
        }
        self.vault.commit(done)?;
        Ok(())
    }
}
