//! Packing: small sealed chunks gathered into pack objects of about 16 MiB.
//!
//! One blob per 16–22 KB chunk made the server's disk, not the network, the limit of an initial
//! sync (about 50,000 file creates and renames per GiB; see `benches/RESULTS.md`). `PutChunk`
//! bodies of at most [`PackSettings::max_chunk`] bytes are therefore appended to the vault's
//! *open pack* in memory and answered at once. A pack is *sealed* (written as one blob, then its
//! chunks recorded in the metadata store in one transaction) when it reaches
//! [`PackSettings::target_bytes`], when a commit names one of its chunks, when it has been open
//! for [`PackSettings::idle`], when all open packs together hold more than
//! [`PackSettings::max_buffered`], and at shutdown.
//!
//! The metadata store learns of a packed chunk only after its pack was completely written, so a
//! record never points into a partial pack. A crash loses the open packs: their chunks were never
//! recorded, so the commit that names them fails with missing chunks and the device uploads them
//! again, exactly as for a blob lost before it was synced. Until then, `Have` counts chunks in
//! open and sealing packs as present, and a commit waits for the packs of the chunks it names.
//!
//! The pack object's layout (`docs/FORMAT.md`, "Packs") carries its own index, so packs can be
//! checked and the store rebuilt from them:
//!
//! ```text
//! pack    = "DZPK" || version u8 (1) || sealed chunk bytes, back to back || index || trailer
//! index   = count × (chunk id (32) || offset u64 BE || len u32 BE || blake3 of the sealed bytes (32))
//! trailer = index offset u64 BE || count u32 BE
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dooz_protocol::{ChunkId, VaultId};
use dooz_storage::{BlobKey, BlobStore};
use thiserror::Error;
use tokio::sync::watch;

use crate::service::quota::Reservation;
use crate::store::{MetaStore, PackId, PackedChunk, TenantId, TrafficCounts, TrafficKey};

/// Magic bytes at the start of every pack.
pub(crate) const PACK_MAGIC: &[u8; 4] = b"DZPK";
/// Format version of packs written now.
pub(crate) const PACK_VERSION: u8 = 1;
const HEADER_LEN: usize = 5;
const INDEX_ENTRY_LEN: usize = 32 + 8 + 4 + 32;
const TRAILER_LEN: usize = 8 + 4;

/// When packs are sealed, and which chunks go into them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackSettings {
    /// Chunks of at most this many sealed bytes are packed; larger ones are blobs of their own.
    /// 0 turns packing off.
    pub max_chunk: u32,
    /// A pack is sealed once it holds this many bytes.
    pub target_bytes: u32,
    /// Bytes all open packs may hold together; past it, a pack is sealed at its next chunk.
    pub max_buffered: u64,
    /// An open pack is sealed after this long even if nothing asks for it.
    pub idle: Duration,
}

impl Default for PackSettings {
    fn default() -> Self {
        Self {
            max_chunk: 1024 * 1024,
            target_bytes: 16 * 1024 * 1024,
            max_buffered: 256 * 1024 * 1024,
            idle: Duration::from_secs(5),
        }
    }
}

/// A pack object that could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PackFormatError {
    /// Too short, wrong magic or version, or an index that does not fit.
    #[error("not a valid pack: {0}")]
    Invalid(&'static str),
}

/// The blob key of a pack: `<tenant>/<vault>/packs/<hex pack id>`.
pub(crate) fn pack_key(
    tenant: TenantId,
    vault: VaultId,
    pack: PackId,
) -> Result<BlobKey, dooz_storage::StorageError> {
    BlobKey::new(&format!(
        "{tenant}/{}/packs/{}",
        vault.to_hex(),
        pack.to_hex()
    ))
}

/// The blob key of a chunk stored on its own: `<tenant>/<vault>/chunks/<2 hex>/<hex id>`.
pub(crate) fn chunk_blob_key(
    tenant: TenantId,
    vault: VaultId,
    chunk: ChunkId,
) -> Result<BlobKey, dooz_storage::StorageError> {
    let hex = chunk.to_hex();
    let shard = hex.get(..2).unwrap_or("00");
    BlobKey::new(&format!("{tenant}/{}/chunks/{shard}/{hex}", vault.to_hex()))
}

/// Reads a pack's index (and checks it against the pack's length).
pub fn read_pack_index(pack: &[u8]) -> Result<Vec<PackedChunk>, PackFormatError> {
    let bad = PackFormatError::Invalid;
    if pack.len() < HEADER_LEN + TRAILER_LEN {
        return Err(bad("shorter than header and trailer"));
    }
    if pack.get(..4) != Some(PACK_MAGIC.as_slice()) {
        return Err(bad("wrong magic"));
    }
    if pack.get(4) != Some(&PACK_VERSION) {
        return Err(bad("unknown version"));
    }
    let trailer_at = pack.len() - TRAILER_LEN;
    let trailer = pack.get(trailer_at..).ok_or(bad("no trailer"))?;
    let index_at = u64::from_be_bytes(array(trailer, 0)?);
    let count = u32::from_be_bytes(array(trailer, 8)?);
    let index_at = usize::try_from(index_at).map_err(|_| bad("index offset out of range"))?;
    let index_len = usize::try_from(count)
        .ok()
        .and_then(|c| c.checked_mul(INDEX_ENTRY_LEN))
        .ok_or(bad("index too long"))?;
    if index_at < HEADER_LEN || index_at.checked_add(index_len) != Some(trailer_at) {
        return Err(bad("index does not end at the trailer"));
    }
    let index = pack
        .get(index_at..trailer_at)
        .ok_or(bad("index out of range"))?;
    let mut out = Vec::with_capacity(index.len() / INDEX_ENTRY_LEN);
    for entry in index.chunks_exact(INDEX_ENTRY_LEN) {
        let chunk = ChunkId::from_bytes(array(entry, 0)?);
        let offset = u64::from_be_bytes(array(entry, 32)?);
        let len = u32::from_be_bytes(array(entry, 40)?);
        let blake3 = array(entry, 44)?;
        let end = offset.checked_add(u64::from(len));
        if offset < HEADER_LEN as u64 || end.is_none_or(|end| end > index_at as u64) {
            return Err(bad("a chunk lies outside the data section"));
        }
        out.push(PackedChunk {
            chunk,
            offset,
            sealed_len: u64::from(len),
            blake3,
        });
    }
    Ok(out)
}

fn array<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], PackFormatError> {
    bytes
        .get(at..at + N)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or(PackFormatError::Invalid("truncated field"))
}

/// The open packs and the packs being sealed, per vault.
pub(crate) struct Packer {
    settings: PackSettings,
    vaults: Mutex<HashMap<VaultId, VaultPacks>>,
    /// Bytes in open packs, all vaults.
    buffered: AtomicUsize,
}

#[derive(Default)]
struct VaultPacks {
    open: Option<OpenPack>,
    sealing: Vec<Arc<Sealing>>,
}

struct OpenPack {
    id: PackId,
    tenant: TenantId,
    bytes: Vec<u8>,
    chunks: Vec<PackedChunk>,
    ids: HashSet<ChunkId>,
    /// Quota reservations of the chunks, released once they are recorded (or lost).
    reservations: Vec<Reservation>,
    /// Metered traffic of the uploads that brought the chunks, recorded with them.
    traffic: Vec<(TrafficKey, TrafficCounts)>,
    opened: Instant,
}

struct Sealing {
    id: PackId,
    ids: HashSet<ChunkId>,
    /// Turns true when the pack is sealed or failed to be.
    done: watch::Receiver<bool>,
}

/// A pack to write and record; run it with [`SealJob::run`], on a task of its own.
/// What [`Packer::add`] did with a chunk.
pub(crate) enum Added {
    /// A pack not written yet holds the chunk already: nothing was added (nor its traffic).
    Held,
    /// Added, with its traffic; the job to run if the pack is to be sealed now.
    Packed(Option<Box<SealJob>>),
}

pub(crate) struct SealJob {
    vault: VaultId,
    pack: OpenPack,
    done: watch::Sender<bool>,
}

/// A wait for packs being sealed.
pub(crate) struct SealWait(Vec<watch::Receiver<bool>>);

impl SealWait {
    /// Returns when every pack waited for is sealed or failed to be.
    pub(crate) async fn wait(self) {
        for mut done in self.0 {
            // A dropped sender means the job is gone: nothing more to wait for.
            let _ = done.wait_for(|done| *done).await;
        }
    }
}

impl Packer {
    pub(crate) fn new(settings: PackSettings) -> Self {
        Self {
            settings,
            vaults: Mutex::new(HashMap::new()),
            buffered: AtomicUsize::new(0),
        }
    }

    /// Whether a chunk of `len` sealed bytes goes into a pack.
    pub(crate) fn packs(&self, len: u32) -> bool {
        self.settings.max_chunk > 0 && len <= self.settings.max_chunk
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<VaultId, VaultPacks>> {
        self.vaults.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `chunk` is in an open pack of `vault` or one being sealed.
    pub(crate) fn holds(&self, vault: VaultId, chunk: &ChunkId) -> bool {
        self.lock().get(&vault).is_some_and(|v| v.holds(chunk))
    }

    /// `chunks` without those held in `vault`'s open and sealing packs.
    pub(crate) fn not_held(&self, vault: VaultId, mut chunks: Vec<ChunkId>) -> Vec<ChunkId> {
        if let Some(v) = self.lock().get(&vault) {
            chunks.retain(|c| !v.holds(c));
        }
        chunks
    }

    /// Appends a chunk to `vault`'s open pack (opening one if needed); a chunk held already is
    /// left alone. Returns the job that seals the pack when it is full enough.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add(
        &self,
        vault: VaultId,
        tenant: TenantId,
        chunk: ChunkId,
        sealed: &[u8],
        blake3: [u8; 32],
        reservation: Option<Reservation>,
        traffic: Option<(TrafficKey, TrafficCounts)>,
    ) -> Result<Added, getrandom::Error> {
        let mut vaults = self.lock();
        let v = vaults.entry(vault).or_default();
        if v.holds(&chunk) {
            return Ok(Added::Held);
        }
        let open = match &mut v.open {
            Some(open) => open,
            empty @ None => empty.insert(OpenPack::new(tenant, &self.settings)?),
        };
        let offset = open.bytes.len() as u64;
        open.bytes.extend_from_slice(sealed);
        open.chunks.push(PackedChunk {
            chunk,
            offset,
            sealed_len: sealed.len() as u64,
            blake3,
        });
        open.ids.insert(chunk);
        open.reservations.extend(reservation);
        open.traffic.extend(traffic);
        let full = open.bytes.len() >= self.settings.target_bytes as usize;
        let total = self.buffered.fetch_add(sealed.len(), Ordering::Relaxed) + sealed.len();
        let over = total as u64 > self.settings.max_buffered;
        Ok(Added::Packed(if full || over {
            self.start_sealing(vault, v).map(Box::new)
        } else {
            None
        }))
    }

    /// Starts sealing the open pack of `vault` if it holds any of `chunks`, and returns that job
    /// (to run) and a wait for every pack of `vault` being sealed that holds any of them.
    pub(crate) fn seal_for(
        &self,
        vault: VaultId,
        chunks: &[ChunkId],
    ) -> (Option<SealJob>, SealWait) {
        let mut vaults = self.lock();
        let Some(v) = vaults.get_mut(&vault) else {
            return (None, SealWait(Vec::new()));
        };
        let job = match &v.open {
            Some(open) if chunks.iter().any(|c| open.ids.contains(c)) => {
                self.start_sealing(vault, v)
            }
            _ => None,
        };
        let waits = v
            .sealing
            .iter()
            .filter(|s| chunks.iter().any(|c| s.ids.contains(c)))
            .map(|s| s.done.clone())
            .collect();
        (job, SealWait(waits))
    }

    /// Jobs for the open packs opened before `now - idle` (every open pack with `all`).
    pub(crate) fn idle_jobs(&self, now: Instant, all: bool) -> Vec<SealJob> {
        let mut vaults = self.lock();
        let idle = self.settings.idle;
        let mut jobs = Vec::new();
        for (vault, v) in vaults.iter_mut() {
            let due = v
                .open
                .as_ref()
                .is_some_and(|o| all || now.saturating_duration_since(o.opened) >= idle);
            if due {
                jobs.extend(self.start_sealing(*vault, v));
            }
        }
        vaults.retain(|_, v| v.open.is_some() || !v.sealing.is_empty());
        jobs
    }

    /// Moves the open pack of `v` to its sealing packs.
    fn start_sealing(&self, vault: VaultId, v: &mut VaultPacks) -> Option<SealJob> {
        let pack = v.open.take()?;
        // `add` counted the chunks' bytes, not the header.
        self.buffered
            .fetch_sub(pack.bytes.len() - HEADER_LEN, Ordering::Relaxed);
        let (done, rx) = watch::channel(false);
        v.sealing.push(Arc::new(Sealing {
            id: pack.id,
            ids: pack.ids.clone(),
            done: rx,
        }));
        Some(SealJob { vault, pack, done })
    }

    /// Forgets a sealing pack once its job has ended.
    fn finished(&self, vault: VaultId, id: PackId) {
        let mut vaults = self.lock();
        if let Some(v) = vaults.get_mut(&vault) {
            v.sealing.retain(|s| s.id != id);
            if v.open.is_none() && v.sealing.is_empty() {
                vaults.remove(&vault);
            }
        }
    }
}

impl VaultPacks {
    fn holds(&self, chunk: &ChunkId) -> bool {
        self.open.as_ref().is_some_and(|o| o.ids.contains(chunk))
            || self.sealing.iter().any(|s| s.ids.contains(chunk))
    }
}

impl OpenPack {
    fn new(tenant: TenantId, settings: &PackSettings) -> Result<Self, getrandom::Error> {
        let mut bytes = Vec::with_capacity(
            (settings.target_bytes as usize).saturating_add(settings.max_chunk as usize),
        );
        bytes.extend_from_slice(PACK_MAGIC);
        bytes.push(PACK_VERSION);
        Ok(Self {
            id: PackId::random()?,
            tenant,
            bytes,
            chunks: Vec::new(),
            ids: HashSet::new(),
            reservations: Vec::new(),
            traffic: Vec::new(),
            opened: Instant::now(),
        })
    }

    /// The pack object: data, index, trailer.
    fn finish(mut self) -> Finished {
        let index_at = self.bytes.len() as u64;
        self.bytes
            .reserve(self.chunks.len() * INDEX_ENTRY_LEN + TRAILER_LEN);
        for c in &self.chunks {
            self.bytes.extend_from_slice(c.chunk.as_bytes());
            self.bytes.extend_from_slice(&c.offset.to_be_bytes());
            // Packed chunks are at most `max_chunk` (≤ MAX_CHUNK_LEN) bytes.
            let len = u32::try_from(c.sealed_len).unwrap_or(u32::MAX);
            self.bytes.extend_from_slice(&len.to_be_bytes());
            self.bytes.extend_from_slice(&c.blake3);
        }
        self.bytes.extend_from_slice(&index_at.to_be_bytes());
        let count = u32::try_from(self.chunks.len()).unwrap_or(u32::MAX);
        self.bytes.extend_from_slice(&count.to_be_bytes());
        (
            Bytes::from(self.bytes),
            self.chunks,
            self.reservations,
            self.traffic,
        )
    }
}

/// A finished pack: its object, its chunks, their reservations and their uploads' traffic.
type Finished = (
    Bytes,
    Vec<PackedChunk>,
    Vec<Reservation>,
    Vec<(TrafficKey, TrafficCounts)>,
);

/// A new pack of `chunks` (each with its sealed bytes), for repacking: its id, the pack object
/// and where each chunk is in it.
pub(crate) fn build_pack(
    tenant: TenantId,
    chunks: Vec<(PackedChunk, Bytes)>,
) -> Result<(PackId, Bytes, Vec<PackedChunk>), getrandom::Error> {
    let settings = PackSettings::default();
    let mut pack = OpenPack::new(tenant, &settings)?;
    for (mut c, bytes) in chunks {
        c.offset = pack.bytes.len() as u64;
        pack.bytes.extend_from_slice(&bytes);
        pack.ids.insert(c.chunk);
        pack.chunks.push(c);
    }
    let id = pack.id;
    let (bytes, chunks, _, _) = pack.finish();
    Ok((id, bytes, chunks))
}

impl SealJob {
    /// Writes the pack durably, then records its chunks. On failure nothing is recorded, and the
    /// chunks count as never uploaded (a commit naming them fails with missing chunks).
    pub(crate) async fn run(
        self,
        packer: &Packer,
        blobs: &dyn BlobStore,
        store: &dyn MetaStore,
        now: u64,
    ) {
        let Self { vault, pack, done } = self;
        let (id, tenant) = (pack.id, pack.tenant);
        let (bytes, chunks, reservations, traffic) = pack.finish();
        let result = seal(blobs, store, tenant, vault, id, bytes, chunks, traffic, now).await;
        if let Err(e) = result {
            tracing::error!(%vault, pack = %id, error = %e, "could not seal a pack; its chunks will be uploaded again");
        }
        drop(reservations);
        packer.finished(vault, id);
        // Nobody waiting is fine.
        let _ = done.send(true);
    }
}

#[allow(clippy::too_many_arguments)]
async fn seal(
    blobs: &dyn BlobStore,
    store: &dyn MetaStore,
    tenant: TenantId,
    vault: VaultId,
    id: PackId,
    bytes: Bytes,
    chunks: Vec<PackedChunk>,
    traffic: Vec<(TrafficKey, TrafficCounts)>,
    now: u64,
) -> Result<(), String> {
    let key = pack_key(tenant, vault, id).map_err(|e| e.to_string())?;
    let len = bytes.len() as u64;
    blobs.put(&key, bytes).await.map_err(|e| e.to_string())?;
    // Uploads count when their chunks are recorded, in that hour: a pack written late never
    // adds to an hour already closed (and maybe exported).
    let hour = crate::service::unix_now() / crate::store::HOUR_SECS;
    let traffic = traffic
        .into_iter()
        .map(|(mut key, counts)| {
            key.hour = hour;
            (key, counts)
        })
        .collect();
    store
        .record_packed_chunks_metered(vault, id, len, chunks, now, traffic)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(target_bytes: u32) -> PackSettings {
        PackSettings {
            target_bytes,
            ..PackSettings::default()
        }
    }

    fn chunk(n: u8) -> ChunkId {
        ChunkId::from_bytes([n; 32])
    }

    fn traffic() -> Option<(TrafficKey, TrafficCounts)> {
        Some((
            TrafficKey {
                tenant: TenantId::new(1),
                hour: 0,
                account: crate::store::AccountId::new(1),
                vault: None,
                device: None,
            },
            TrafficCounts::default(),
        ))
    }

    /// The job of an [`Added`], panicking on `Held`.
    fn job(added: Added) -> Option<SealJob> {
        match added {
            Added::Packed(job) => job.map(|j| *j),
            Added::Held => panic!("the chunk was held already"),
        }
    }

    #[test]
    fn a_pack_is_its_chunks_and_an_index() {
        let packer = Packer::new(settings(1 << 20));
        let vault = VaultId::from_bytes([1; 16]);
        let tenant = TenantId::new(1);
        for n in 0..3u8 {
            let body = vec![n; 100 + usize::from(n)];
            let job = job(packer
                .add(vault, tenant, chunk(n), &body, [n; 32], None, traffic())
                .unwrap());
            assert!(job.is_none());
        }
        assert!(packer.holds(vault, &chunk(1)));
        assert_eq!(
            packer.not_held(vault, vec![chunk(0), chunk(9)]),
            vec![chunk(9)]
        );
        // Adding a held chunk again changes nothing.
        assert!(matches!(
            packer
                .add(vault, tenant, chunk(1), b"other", [7; 32], None, traffic())
                .unwrap(),
            Added::Held
        ));

        let (job, wait) = packer.seal_for(vault, &[chunk(2)]);
        let job = job.unwrap();
        assert_eq!(wait.0.len(), 1);
        // Still held while being sealed.
        assert!(packer.holds(vault, &chunk(0)));
        let (bytes, chunks, _, traffic) = job.pack.finish();
        assert_eq!(
            traffic.len(),
            3,
            "the held chunk's upload is not counted with the pack"
        );
        let index = read_pack_index(&bytes).unwrap();
        assert_eq!(index, chunks);
        assert_eq!(index.len(), 3);
        for (n, c) in index.iter().enumerate() {
            let start = c.offset as usize;
            let body = &bytes[start..start + c.sealed_len as usize];
            assert_eq!(body, vec![n as u8; 100 + n].as_slice());
        }
    }

    #[test]
    fn full_packs_start_sealing() {
        let packer = Packer::new(settings(250));
        let vault = VaultId::from_bytes([2; 16]);
        let tenant = TenantId::new(1);
        let add = |n: u8| {
            job(packer
                .add(vault, tenant, chunk(n), &[n; 100], [n; 32], None, traffic())
                .unwrap())
        };
        assert!(add(0).is_none());
        assert!(add(1).is_none());
        let job = add(2).unwrap();
        assert_eq!(job.pack.chunks.len(), 3);
        // The next chunk opens a new pack.
        assert!(add(3).is_none());
        assert_eq!(packer.idle_jobs(Instant::now(), true).len(), 1);
        assert!(packer.idle_jobs(Instant::now(), true).is_empty());
    }

    #[test]
    fn damaged_packs_are_refused() {
        let packer = Packer::new(settings(1 << 20));
        let vault = VaultId::from_bytes([3; 16]);
        packer
            .add(
                vault,
                TenantId::new(1),
                chunk(1),
                &[1; 50],
                [1; 32],
                None,
                traffic(),
            )
            .unwrap();
        let job = packer.idle_jobs(Instant::now(), true).pop().unwrap();
        let (bytes, _, _, _) = job.pack.finish();
        assert!(read_pack_index(&bytes).is_ok());
        for cut in [0, 4, 5, 16, bytes.len() - 1] {
            assert!(read_pack_index(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut magic = bytes.to_vec();
        magic[0] = b'X';
        assert!(read_pack_index(&magic).is_err());
        let mut count = bytes.to_vec();
        let at = count.len() - 1;
        count[at] = 9;
        assert!(read_pack_index(&count).is_err());
    }
}
