//! Garbage collection of uploads that no commit took, and of packs nothing points into.
//!
//! A run walks every vault: each chunk still *pending* after [`GcSettings::pending_grace`] is
//! deleted (its record in one store transaction that checks it is still pending since the
//! same moment, then its blob), and each pack with no live chunk left is forgotten and deleted.
//! There is no global lock: a commit that names a chunk either lands before the chunk's
//! delete (the chunk is committed then, and the compare in the transaction keeps it), or after
//! it (the commit fails with missing chunks and the device uploads the chunk again). A chunk's
//! record and blob are deleted under the chunk's upload lock, so an upload of the same chunk
//! cannot slip its blob in between. Packs are deleted only when older than the grace period
//! and [`GcSettings::pack_min_age`] too, so a pack whose chunks are being recorded is never
//! taken for empty.
//!
//! **Version retention.** For an account whose plan sets `retention_days`, a run first forgets
//! every version whose entry's next version was committed more than that many days ago (heads
//! are never forgotten; `History` no longer lists them, the commit log keeps their records so
//! a device that pulls late still applies the heads), then *releases* every committed chunk no
//! kept version references: it becomes pending since now, so the pending-chunk collection
//! above deletes it after the grace period, and a commit that references it again before that
//! makes it committed again. A chunk released while a commit was referencing it anew (between
//! the scan of kept versions and the release) is found by the next run's scan, which comes long
//! before the grace period ends, and made committed again instead of deleted. After a run past
//! the grace period the stored bytes are those of the kept versions' chunks.
//!
//! **Repacking.** A pack whose live chunks are less than half its bytes (and older than the
//! grace period and [`GcSettings::pack_min_age`]) has its live chunks copied into a new pack,
//! which is written completely before the chunks' locations move to it in one store
//! transaction (a chunk deleted or moved meanwhile stays as it is). The old pack, empty then, is
//! deleted by a later run, so a reader that looked a chunk up just before the move still finds
//! the old pack.

use std::time::Duration;

use crate::service::{Shared, pack};
use crate::store::{ChunkLocation, ChunkState, StoreError};

/// When garbage is collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcSettings {
    /// Uploads no commit referenced within this long are deleted. Default 24 h.
    pub pending_grace: Duration,
    /// How often a run starts; `None`: only when asked ([`Server::collect_garbage`]).
    ///
    /// [`Server::collect_garbage`]: crate::service::Server::collect_garbage
    pub interval: Option<Duration>,
    /// A pack is deleted only once it is this old by the wall clock (whatever `now` a run is
    /// given), so that a pack whose chunks are being recorded right now is never taken for
    /// empty: sled readers may see part of a transaction. Default 10 min.
    pub pack_min_age: Duration,
}

impl Default for GcSettings {
    fn default() -> Self {
        Self {
            pending_grace: Duration::from_secs(24 * 3600),
            interval: Some(Duration::from_secs(3600)),
            pack_min_age: Duration::from_secs(600),
        }
    }
}

/// What a garbage-collection run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GcReport {
    /// Vaults walked.
    pub vaults: u64,
    /// Pending chunks deleted.
    pub chunks_deleted: u64,
    /// Their sealed bytes.
    pub chunk_bytes_deleted: u64,
    /// Packs deleted.
    pub packs_deleted: u64,
    /// Their bytes.
    pub pack_bytes_deleted: u64,
    /// Versions forgotten because their plan's retention ran out.
    pub versions_expired: u64,
    /// Committed chunks that no kept version references any more, now pending (deleted by a
    /// later run, after the grace period, unless a commit references them again).
    pub chunks_released: u64,
    /// Pending chunks found referenced by a kept version, made committed again.
    pub chunks_kept: u64,
    /// Packs mostly garbage whose live chunks were copied into a new pack.
    pub packs_repacked: u64,
    /// Chunks moved by repacking.
    pub chunks_repacked: u64,
}

/// Runs one collection as of `now` (unix seconds).
pub(crate) async fn collect(shared: &Shared, now: u64) -> Result<GcReport, StoreError> {
    let grace = shared.limits.gc.pending_grace.as_secs();
    let before = now.saturating_sub(grace);
    let packs_before = super::unix_now().saturating_sub(shared.limits.gc.pack_min_age.as_secs());
    let store = &shared.store;
    let mut report = GcReport::default();
    for vault in store.all_vaults().await? {
        report.vaults += 1;
        let retention = match shared.policies.get(vault.tenant, vault.account).await {
            Ok(policy) => policy.limits.retention_days,
            Err(e) => {
                tracing::warn!(vault = %vault.vault, error = %e, "no policy: versions kept");
                None
            }
        };
        // The chunks kept versions reference: one scan per vault, for the release and for the
        // pending check below.
        let mut keep = None;
        if let Some(days) = retention {
            let superseded_before = now.saturating_sub(days.saturating_mul(24 * 3600));
            report.versions_expired += store
                .expire_versions(vault.vault, superseded_before)
                .await?;
            let kept = store.retained_chunks(vault.vault).await?;
            report.chunks_released += store.release_chunks(vault.vault, kept.clone(), now).await?;
            keep = Some(kept);
        }
        let pending = store.pending_chunks_before(vault.vault, before).await?;
        // A chunk released while a commit referenced it again is pending but kept: made
        // committed again instead of deleted. (Chunks uploaded and never committed are in no
        // kept version.)
        let keep = match keep {
            Some(keep) => keep,
            None if pending.is_empty() => std::collections::HashSet::new(),
            None => store.retained_chunks(vault.vault).await?,
        };
        for record in pending {
            let ChunkState::Pending { since } = record.state else {
                continue;
            };
            let _lock = shared.upload_lock(&record.chunk).lock().await;
            if keep.contains(&record.chunk) {
                if store
                    .keep_chunk(vault.vault, record.chunk, since, now)
                    .await?
                {
                    report.chunks_kept += 1;
                }
                continue;
            }
            if !store
                .collect_pending_chunk(vault.vault, record.chunk, since, now)
                .await?
            {
                continue;
            }
            report.chunks_deleted += 1;
            report.chunk_bytes_deleted += record.sealed_len;
            if record.location == ChunkLocation::Blob {
                let key = pack::chunk_blob_key(vault.tenant, vault.vault, record.chunk);
                delete_blob(shared, key.ok()).await;
            }
        }
        for info in store.packs(vault.vault).await? {
            if info.live_chunks > 0 || info.created_at > before.min(packs_before) {
                continue;
            }
            if store.delete_pack(vault.vault, info.pack).await? {
                report.packs_deleted += 1;
                report.pack_bytes_deleted += info.len;
                let key = pack::pack_key(vault.tenant, vault.vault, info.pack);
                delete_blob(shared, key.ok()).await;
            }
        }
        // Packs that are mostly garbage: their live chunks move to a new pack; the old one,
        // empty then, goes in a later run (readers that looked its chunks up just before the
        // move still find it meanwhile).
        for info in store.packs(vault.vault).await? {
            let old_enough = info.created_at <= before.min(packs_before);
            if info.live_chunks == 0 || !old_enough || info.live_bytes.saturating_mul(2) >= info.len
            {
                continue;
            }
            match repack(shared, &vault, info.pack, now).await {
                Ok(moved) => {
                    report.packs_repacked += 1;
                    report.chunks_repacked += moved;
                }
                Err(e) => {
                    tracing::warn!(vault = %vault.vault, pack = %info.pack, error = %e, "could not repack")
                }
            }
        }
    }
    Ok(report)
}

/// Copies the live chunks of `pack` into a new pack, written completely before the chunks are
/// moved to it (one store transaction); returns how many moved.
async fn repack(
    shared: &Shared,
    vault: &crate::store::VaultRecord,
    old: crate::store::PackId,
    now: u64,
) -> Result<u64, String> {
    let key = pack::pack_key(vault.tenant, vault.vault, old).map_err(|e| e.to_string())?;
    let bytes = shared.blobs.get(&key).await.map_err(|e| e.to_string())?;
    let index = pack::read_pack_index(&bytes).map_err(|e| e.to_string())?;
    let ids: Vec<_> = index.iter().map(|c| c.chunk).collect();
    let records = shared
        .store
        .chunks(vault.vault, &ids)
        .await
        .map_err(|e| e.to_string())?;
    let mut live = Vec::new();
    for (c, record) in index.into_iter().zip(records) {
        let here = record.is_some_and(|r| {
            r.location
                == ChunkLocation::Packed {
                    pack: old,
                    offset: c.offset,
                }
        });
        let start = usize::try_from(c.offset).map_err(|e| e.to_string())?;
        let end = start.saturating_add(usize::try_from(c.sealed_len).map_err(|e| e.to_string())?);
        if here && end <= bytes.len() {
            live.push((c, bytes.slice(start..end)));
        }
    }
    if live.is_empty() {
        return Ok(0);
    }
    let from: Vec<(dooz_protocol::ChunkId, u64)> =
        live.iter().map(|(c, _)| (c.chunk, c.offset)).collect();
    let (new, pack_bytes, placed) =
        pack::build_pack(vault.tenant, live).map_err(|e| e.to_string())?;
    let new_key = pack::pack_key(vault.tenant, vault.vault, new).map_err(|e| e.to_string())?;
    let len = pack_bytes.len() as u64;
    shared
        .blobs
        .put(&new_key, pack_bytes)
        .await
        .map_err(|e| e.to_string())?;
    let moves = from
        .into_iter()
        .zip(placed)
        .map(|((chunk, old_offset), p)| (chunk, old_offset, p.offset))
        .collect();
    shared
        .store
        .relocate_packed_chunks(vault.vault, old, new, len, moves, now)
        .await
        .map_err(|e| e.to_string())
}

async fn delete_blob(shared: &Shared, key: Option<dooz_storage::BlobKey>) {
    let Some(key) = key else { return };
    match shared.blobs.delete(&key).await {
        Ok(()) => {}
        Err(e) if e.is_not_found() => {}
        // The record is gone, so the blob is unreachable garbage; log and go on.
        Err(e) => tracing::warn!(%key, error = %e, "could not delete a garbage blob"),
    }
}
