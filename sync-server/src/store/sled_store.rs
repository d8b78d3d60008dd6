//! [`SledStore`]: the embedded metadata store, sled underneath.
//!
//! Layout in [`codec`](super::codec). Writes that touch several trees run in one sled
//! transaction (sled serialises transactions, so a commit's seqs are handed out under one lock
//! and a crash recovers all of a transaction or none of it). Readers do not lock: a reader can
//! see part of a transaction that is being applied, so [`pull`](MetaStore::pull) stops at the
//! first gap in the log and [`history`](MetaStore::history) skips versions whose log record is
//! not there yet; both see everything once `commit` has returned.
//!
//! sled calls block, so every call that scans or writes runs on tokio's blocking pool; point
//! reads run inline.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use dooz_protocol::limits::{MAX_ENVELOPE_LEN, MAX_ENVELOPES, MAX_HISTORY_PAGE, MAX_PULL_PAGE};
use dooz_protocol::{
    Change, ChunkId, CommitEntry, CommitResult, DeviceId, EntryKey, EnvelopeInfo, Epoch, Seq,
    VaultId, VaultInfo,
};
use sled::Tree;
use sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionError, Transactional,
    TransactionalTree,
};

use crate::store::api::{
    AccountId, AccountRecord, AccountUsage, ChangePage, ChunkLocation, ChunkRecord, ChunkState,
    DeviceRecord, DeviceRegistration, EntryHead, HOUR_SECS, MAX_PAGE_BYTES, MetaStore, PackId,
    PackInfo, PackedChunk, StorageHour, TenantId, TenantRecord, TrafficCounts, TrafficKey,
    VaultRecord, VaultStorage, VersionPage, change_size_bound, check_name, hour_spans, page_limit,
};
use crate::store::codec::{
    self, ACCOUNT_DEVICES, ACCOUNT_VAULTS, AccountV1, ChunkStateV1, ChunkV1, DeviceV1, EnvelopeV1,
    GaugeV1, HeadV1, LogV1, PackLocV1, PackV1, RotationDueV1, StorageHourV1, Stored, TenantV1,
    TokenV1, TrafficV1, VaultV1, decode, encode,
};
use crate::store::error::StoreError;
use crate::store::token::{self, EnrolmentToken};

/// A `versions-v1` key and its seq.
type VersionAt = (sled::IVec, Seq);

/// The embedded metadata store: a sled database in a directory of its own.
///
/// Cheap to clone (the handles are shared). Open a directory from one process at a time: sled
/// locks it.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
}

struct Inner {
    db: sled::Db,
    meta: Tree,
    tenants: Tree,
    tenant_names: Tree,
    accounts: Tree,
    account_names: Tree,
    tokens: Tree,
    devices: Tree,
    account_devices: Tree,
    vaults: Tree,
    account_vaults: Tree,
    chunks: Tree,
    log: Tree,
    heads: Tree,
    versions: Tree,
    envelopes: Tree,
    usage: Tree,
    chunk_locs: Tree,
    packs: Tree,
    rotations: Tree,
    traffic: Tree,
    meter: Tree,
    /// Makes traffic counts durable with one small append and `fdatasync` instead of a sled
    /// flush (see [`TrafficJournal`]); `None` for temporary stores, which flush.
    journal: Option<std::sync::Mutex<TrafficJournal>>,
}

/// When [`MetaStore::add_traffic`] counts reach the disk (docs/METERING.md, "Durability").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TrafficSync {
    /// Written to the journal file before `add_traffic` returns, so a killed process loses
    /// nothing; `fdatasync`ed within this interval, so a power loss or kernel crash can lose
    /// the counts of that last interval (reads only: uploads count with their chunk records).
    Interval(std::time::Duration),
    /// `fdatasync`ed before `add_traffic` returns: nothing lost even on power loss, at the cost of
    /// a disk flush before every answer that is not an upload (benches/RESULTS.md). The default.
    #[default]
    Always,
}

/// File name of the traffic journal in the store's directory.
const TRAFFIC_JOURNAL_FILE: &str = "traffic.journal";
/// Size of the journal file, written with zeros once: records overwrite it in place, so an
/// `fdatasync` writes data blocks only, never file-system metadata (on ext4 a metadata commit
/// would also write back every dirty page of the blobs being uploaded).
const TRAFFIC_JOURNAL_LEN: u64 = 16 * 1024 * 1024;
/// Batches kept in memory before they are folded into `traffic-v1`.
const TRAFFIC_FOLD_BATCHES: u64 = 512;

/// Write-ahead journal of traffic batches, with the counts not yet folded into sled.
///
/// [`MetaStore::add_traffic`] must be durable when it returns, and it runs before every answer
/// that is not a stored upload (those count with their chunk records). A sled flush per batch
/// is heavier than one small write and `fdatasync` (benches/RESULTS.md, "Metering overhead"). So
/// a batch is written in place into a preallocated file and synced ([`TrafficSync`]), and kept
/// in memory (`pending`); every
/// [`TRAFFIC_FOLD_BATCHES`] batches the pending counts go into `traffic-v1` together with
/// `b"traffic-applied"` (the last batch's sequence number) in `meta-v1`, in one sled
/// transaction. Readers see sled plus `pending`.
///
/// After a crash, [`TrafficJournal::open`] reads the records from the start of the file: those up
/// to the marker sled kept are skipped, the following ones (consecutive sequence numbers) are
/// applied, and the first record that is torn, zero or out of sequence ends the replay (a batch
/// whose write never returned had its requests never answered). When the file is full, the
/// pending counts are folded, sled is flushed, and writing starts again at the start.
///
/// Record: `len u32 BE || first 8 bytes of BLAKE3(payload) || payload`, payload
/// `postcard((seq u64, Vec<(key, TrafficV1)>))`.
struct TrafficJournal {
    file: Arc<std::fs::File>,
    path: PathBuf,
    sync: TrafficSync,
    /// Set when a record was written and not synced yet (interval mode).
    dirty: Arc<std::sync::atomic::AtomicBool>,
    /// Where the next record goes.
    offset: u64,
    next_seq: u64,
    /// Counts of batches written but not folded into sled, by `traffic-v1` key.
    pending: std::collections::BTreeMap<Vec<u8>, TrafficV1>,
    pending_batches: u64,
    /// Folds so far: a reader that read sled while this changed reads again.
    folds: u64,
}

/// `meta-v1` key of the last journal batch applied to `traffic-v1`.
const TRAFFIC_APPLIED_KEY: &[u8] = b"traffic-applied";

type TrafficBatch = (u64, Vec<(Vec<u8>, TrafficV1)>);

fn add_counts(row: &mut TrafficV1, add: &TrafficV1) {
    row.ingress = row.ingress.saturating_add(add.ingress);
    row.egress = row.egress.saturating_add(add.egress);
    row.requests = row.requests.saturating_add(add.requests);
}

impl TrafficJournal {
    /// Opens the journal at `path`, applies the batches sled does not have yet, flushes, and
    /// starts writing at the start of the file.
    fn open(inner: &Inner, path: &Path, sync: TrafficSync) -> Result<Self, StoreError> {
        use std::io::{Read as _, Write as _};
        let io = |e: std::io::Error| journal_error(path, e);
        let applied = match inner.meta.get(TRAFFIC_APPLIED_KEY)? {
            Some(v) => codec::decode_u64(codec::META, &v)?,
            None => 0,
        };
        let mut bytes = Vec::new();
        match std::fs::File::open(path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes).map_err(io)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let mut at = 0usize;
        let mut last = applied;
        let mut replayed = 0u64;
        while let Some(head) = bytes.get(at..at + 12) {
            let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
            let Some(payload) = bytes.get(at + 12..at + 12 + len).filter(|_| len > 0) else {
                break;
            };
            if blake3::hash(payload).as_bytes().get(..8) != head.get(4..12) {
                break;
            }
            let Ok((seq, rows)) = postcard::from_bytes::<TrafficBatch>(payload) else {
                break;
            };
            if seq > applied {
                if seq != last + 1 {
                    break;
                }
                inner.apply_traffic(seq, rows.iter().map(|(k, v)| (k.as_slice(), v)))?;
                last = seq;
                replayed += 1;
            }
            at += 12 + len;
        }
        if replayed > 0 {
            tracing::info!(
                batches = replayed,
                "traffic counts replayed from the journal"
            );
        }
        inner.flush()?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        let have = file.metadata().map_err(io)?.len();
        if have < TRAFFIC_JOURNAL_LEN {
            use std::io::Seek as _;
            file.seek(std::io::SeekFrom::Start(have)).map_err(io)?;
            let zeros = vec![0u8; 1024 * 1024];
            let mut left = TRAFFIC_JOURNAL_LEN - have;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                file.write_all(zeros.get(..n).unwrap_or_default())
                    .map_err(io)?;
                left -= n as u64;
            }
        }
        // Records already replayed stay behind the new ones; replay skips them by sequence.
        file.sync_all().map_err(io)?;
        let file = Arc::new(file);
        let dirty = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if let TrafficSync::Interval(every) = sync {
            // Syncs what was written since the last tick; ends with the journal.
            let weak = Arc::downgrade(&file);
            let flag = Arc::clone(&dirty);
            let shown = path.display().to_string();
            std::thread::Builder::new()
                .name("traffic-journal-sync".to_owned())
                .spawn(move || {
                    loop {
                        std::thread::sleep(every);
                        let Some(file) = weak.upgrade() else { return };
                        if flag.swap(false, std::sync::atomic::Ordering::AcqRel)
                            && let Err(e) = file.sync_data()
                        {
                            flag.store(true, std::sync::atomic::Ordering::Release);
                            tracing::error!(journal = %shown, error = %e, "could not sync the traffic journal");
                        }
                    }
                })
                .map_err(io)?;
        }
        Ok(Self {
            file,
            path: path.to_owned(),
            sync,
            dirty,
            offset: 0,
            next_seq: last + 1,
            pending: std::collections::BTreeMap::new(),
            pending_batches: 0,
            folds: 0,
        })
    }

    /// Writes a batch and makes it durable; keeps its counts pending. Folds (and, at the end of
    /// the file, flushes and starts again at the start) when it is time.
    fn append(&mut self, inner: &Inner, rows: Vec<(Vec<u8>, TrafficV1)>) -> Result<(), StoreError> {
        use std::os::unix::fs::FileExt as _;
        let path = self.path.clone();
        let io = |e: std::io::Error| journal_error(&path, e);
        let seq = self.next_seq;
        let batch: TrafficBatch = (seq, rows);
        let payload = postcard::to_stdvec(&batch).map_err(|e| StoreError::InvalidInput {
            what: "traffic batch",
            reason: e.to_string(),
        })?;
        let len = u32::try_from(payload.len()).map_err(|_| StoreError::InvalidInput {
            what: "traffic batch",
            reason: format!("{} bytes is too long", payload.len()),
        })?;
        let mut record = Vec::with_capacity(12 + payload.len());
        record.extend_from_slice(&len.to_be_bytes());
        record.extend_from_slice(
            blake3::hash(&payload)
                .as_bytes()
                .get(..8)
                .unwrap_or_default(),
        );
        record.extend_from_slice(&payload);
        // Room for this record and a zero header after it, or start again at the start.
        if self.offset + record.len() as u64 + 12 > TRAFFIC_JOURNAL_LEN {
            self.fold(inner)?;
            inner.flush()?;
            self.offset = 0;
        }
        let mut out = record;
        // A zero length after the record ends a replay there, before records of an earlier
        // pass through the file.
        out.extend_from_slice(&[0u8; 12]);
        let written = self
            .file
            .write_all_at(&out, self.offset)
            .and_then(|()| match self.sync {
                TrafficSync::Always => self.file.sync_data(),
                TrafficSync::Interval(_) => {
                    self.dirty.store(true, std::sync::atomic::Ordering::Release);
                    Ok(())
                }
            });
        if let Err(e) = written {
            // The batch's answers will not be sent: make sure a replay never counts it (best
            // effort; the next append overwrites the same place anyway).
            let _ = self.file.write_all_at(&[0u8; 12], self.offset);
            let _ = self.file.sync_data();
            return Err(io(e));
        }
        self.offset += (out.len() - 12) as u64;
        self.next_seq += 1;
        for (key, add) in batch.1 {
            add_counts(self.pending.entry(key).or_default(), &add);
        }
        self.pending_batches += 1;
        // The batch is durable now: a failed fold must not fail it (its answers go out and are
        // counted); the counts stay pending and the next append folds them.
        if self.pending_batches >= TRAFFIC_FOLD_BATCHES
            && let Err(e) = self.fold(inner)
        {
            tracing::warn!(error = %e, "could not fold traffic counts into the store; will retry");
        }
        Ok(())
    }

    /// Moves the pending counts into `traffic-v1` with the last batch's sequence number.
    fn fold(&mut self, inner: &Inner) -> Result<(), StoreError> {
        if self.pending_batches == 0 {
            return Ok(());
        }
        inner.apply_traffic(
            self.next_seq - 1,
            self.pending.iter().map(|(k, v)| (k.as_slice(), v)),
        )?;
        self.pending.clear();
        self.pending_batches = 0;
        self.folds += 1;
        Ok(())
    }
}

/// Traffic counts as `traffic-v1` rows, a key once.
fn traffic_rows(batch: &[(TrafficKey, TrafficCounts)]) -> Vec<(Vec<u8>, TrafficV1)> {
    let mut merged: std::collections::BTreeMap<[u8; codec::TRAFFIC_KEY_LEN], TrafficV1> =
        std::collections::BTreeMap::new();
    for (k, counts) in batch {
        let key = codec::traffic_key(
            k.tenant.get(),
            k.hour,
            k.account.get(),
            k.vault.as_ref(),
            k.device.as_ref(),
        );
        add_counts(
            merged.entry(key).or_default(),
            &TrafficV1 {
                ingress: counts.ingress_bytes,
                egress: counts.egress_bytes,
                requests: counts.requests,
            },
        );
    }
    merged.into_iter().map(|(k, v)| (k.to_vec(), v)).collect()
}

/// Adds rows to `traffic-v1` inside a transaction.
fn tx_add_traffic<'a>(
    traffic: &TransactionalTree,
    rows: impl IntoIterator<Item = (&'a [u8], &'a TrafficV1)>,
) -> ConflictableTransactionResult<(), StoreError> {
    for (key, add) in rows {
        let mut row = tx_get_decoded::<TrafficV1>(traffic, key)?.unwrap_or_default();
        add_counts(&mut row, add);
        tx_insert(traffic, key, &row)?;
    }
    Ok(())
}

fn journal_error(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Backend {
        backend: "traffic journal",
        retryable: true,
        source: Box::new(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", path.display()),
        )),
    }
}

impl SledStore {
    /// Opens (or creates) the store in directory `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, TrafficSync::default())
    }

    /// [`open`](Self::open), with how traffic counts are made durable.
    pub fn open_with(path: impl AsRef<Path>, sync: TrafficSync) -> Result<Self, StoreError> {
        let path = path.as_ref();
        let journal = path.join(TRAFFIC_JOURNAL_FILE);
        Self::from_config(sled::Config::new().path(path), Some((journal, sync)))
    }

    /// A store that lives in a temporary directory and disappears when dropped (tests).
    pub fn temporary() -> Result<Self, StoreError> {
        Self::from_config(sled::Config::new().temporary(true), None)
    }

    fn from_config(
        config: sled::Config,
        journal: Option<(PathBuf, TrafficSync)>,
    ) -> Result<Self, StoreError> {
        let db = config.open()?;
        let tree = |name: &str| db.open_tree(name);
        let inner = Inner {
            meta: tree(codec::META)?,
            tenants: tree(codec::TENANTS)?,
            tenant_names: tree(codec::TENANT_NAMES)?,
            accounts: tree(codec::ACCOUNTS)?,
            account_names: tree(codec::ACCOUNT_NAMES)?,
            tokens: tree(codec::TOKENS)?,
            devices: tree(codec::DEVICES)?,
            account_devices: tree(codec::ACCOUNT_DEVICES)?,
            vaults: tree(codec::VAULTS)?,
            account_vaults: tree(codec::ACCOUNT_VAULTS)?,
            chunks: tree(codec::CHUNKS)?,
            log: tree(codec::LOG)?,
            heads: tree(codec::HEADS)?,
            versions: tree(codec::VERSIONS)?,
            envelopes: tree(codec::ENVELOPES)?,
            usage: tree(codec::USAGE)?,
            chunk_locs: tree(codec::CHUNK_LOCS)?,
            packs: tree(codec::PACKS)?,
            rotations: tree(codec::ROTATIONS)?,
            traffic: tree(codec::TRAFFIC)?,
            meter: tree(codec::METER)?,
            journal: None,
            db,
        };
        match inner.meta.get(codec::FORMAT_KEY)? {
            Some(v) => {
                let found = codec::decode_u32(codec::META, &v)?;
                if found != codec::FORMAT_VERSION {
                    return Err(StoreError::IncompatibleFormat {
                        found,
                        supported: codec::FORMAT_VERSION,
                    });
                }
            }
            None => {
                inner
                    .meta
                    .insert(codec::FORMAT_KEY, &codec::FORMAT_VERSION.to_be_bytes())?;
                inner.db.flush()?;
            }
        }
        if inner.meta.get(codec::USAGE_BUILT_KEY)?.is_none() {
            inner.build_usage()?;
        }
        if inner.meta.get(codec::METER_BUILT_KEY)?.is_none() {
            inner.build_gauges()?;
        }
        let mut inner = inner;
        if let Some((path, sync)) = journal {
            inner.journal = Some(std::sync::Mutex::new(TrafficJournal::open(
                &inner, &path, sync,
            )?));
        }
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Runs `f` on tokio's blocking pool.
    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        match tokio::task::spawn_blocking(move || f(&inner)).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(StoreError::Unavailable {
                reason: format!("the store task did not finish: {e}"),
            }),
        }
    }

    /// A raw tree, for tests that damage stored bytes.
    #[cfg(test)]
    pub(crate) fn raw_tree(&self, name: &str) -> Tree {
        self.inner.db.open_tree(name).unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Turns a [`StoreError`] inside a transaction closure into an abort.
trait OrAbort<T> {
    fn or_abort(self) -> ConflictableTransactionResult<T, StoreError>;
}

impl<T> OrAbort<T> for Result<T, StoreError> {
    fn or_abort(self) -> ConflictableTransactionResult<T, StoreError> {
        self.map_err(ConflictableTransactionError::Abort)
    }
}

fn tx_result<T>(r: Result<T, TransactionError<StoreError>>) -> Result<T, StoreError> {
    r.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => e.into(),
    })
}

fn fail<T>(e: StoreError) -> ConflictableTransactionResult<T, StoreError> {
    Err(ConflictableTransactionError::Abort(e))
}

fn get_decoded<T: Stored>(tree: &Tree, key: &[u8]) -> Result<Option<T>, StoreError> {
    tree.get(key)?.map(|v| decode(&v)).transpose()
}

fn tx_get_decoded<T: Stored>(
    tree: &TransactionalTree,
    key: &[u8],
) -> ConflictableTransactionResult<Option<T>, StoreError> {
    tree.get(key)?.map(|v| decode(&v)).transpose().or_abort()
}

fn tx_insert<T: Stored>(
    tree: &TransactionalTree,
    key: &[u8],
    value: &T,
) -> ConflictableTransactionResult<(), StoreError> {
    tree.insert(key, encode(value).or_abort()?)?;
    Ok(())
}

/// The next id of a `meta-v1` counter (ids start at 1).
fn tx_next_id(
    meta: &TransactionalTree,
    key: &[u8],
) -> ConflictableTransactionResult<u64, StoreError> {
    let current = match meta.get(key)? {
        Some(v) => codec::decode_u64(codec::META, &v).or_abort()?,
        None => 0,
    };
    let Some(next) = current.checked_add(1) else {
        return fail(StoreError::corrupt(
            codec::META,
            "an id counter is exhausted",
        ));
    };
    meta.insert(key, &next.to_be_bytes())?;
    Ok(next)
}

/// What a change of stored bytes is about: the vault (with its tenant and account) and when.
#[derive(Clone, Copy)]
struct StoredAt<'a> {
    tenant: u64,
    account: u64,
    vault: &'a VaultId,
    now: u64,
}

impl<'a> StoredAt<'a> {
    fn new(v: &VaultV1, vault: &'a VaultId, now: u64) -> Self {
        Self {
            tenant: v.tenant,
            account: v.account,
            vault,
            now,
        }
    }
}

/// Adds `new` and takes `old` bytes from the account's stored bytes and the vault's gauge, in a
/// transaction (with `meter`, the `meter-v1` tree).
fn tx_adjust_usage(
    usage: &TransactionalTree,
    meter: &TransactionalTree,
    at: StoredAt<'_>,
    old: u64,
    new: u64,
) -> ConflictableTransactionResult<(), StoreError> {
    let key = at.account.to_be_bytes();
    let current = match usage.get(key)? {
        Some(v) => codec::decode_u64(codec::USAGE, &v).or_abort()?,
        None => 0,
    };
    // The counter holds the sum of lengths it was given, so `old` is in it; saturate anyway
    // rather than wrap on a damaged store.
    let next = current.saturating_sub(old).saturating_add(new);
    usage.insert(&key, &next.to_be_bytes())?;
    tx_set_gauge(meter, at, |stored| {
        stored.saturating_sub(old).saturating_add(new)
    })
}

/// Moves a vault's gauge to `change(stored)` at `at.now`, first folding the time since its last
/// change into the hour rows.
fn tx_set_gauge(
    meter: &TransactionalTree,
    at: StoredAt<'_>,
    change: impl Fn(u64) -> u64,
) -> ConflictableTransactionResult<(), StoreError> {
    let gkey = codec::gauge_key(at.tenant, at.vault);
    let mut gauge = tx_get_decoded::<GaugeV1>(meter, &gkey)?.unwrap_or(GaugeV1 {
        account: at.account,
        stored: 0,
        since: at.now,
    });
    // A clock that went back does not rewrite the past: the change counts at `since`.
    let now = at.now.max(gauge.since);
    if gauge.stored > 0 {
        for (hour, seconds) in hour_spans(gauge.since, now) {
            let hkey = codec::storage_hour_key(at.tenant, at.vault, hour);
            let mut row = tx_get_decoded::<StorageHourV1>(meter, &hkey)?.unwrap_or(StorageHourV1 {
                max: 0,
                byte_seconds: 0,
            });
            row.max = row.max.max(gauge.stored);
            row.byte_seconds = row
                .byte_seconds
                .saturating_add(u128::from(gauge.stored) * u128::from(seconds));
            tx_insert(meter, &hkey, &row)?;
        }
    }
    gauge.stored = change(gauge.stored);
    gauge.since = now;
    if gauge.stored > 0 {
        let hkey = codec::storage_hour_key(at.tenant, at.vault, now / HOUR_SECS);
        let mut row = tx_get_decoded::<StorageHourV1>(meter, &hkey)?.unwrap_or(StorageHourV1 {
            max: 0,
            byte_seconds: 0,
        });
        row.max = row.max.max(gauge.stored);
        tx_insert(meter, &hkey, &row)?;
    }
    tx_insert(meter, &gkey, &gauge)
}

fn vault_not_found(vault: &VaultId) -> StoreError {
    StoreError::not_found(format!("vault {vault}"))
}

fn device_record(device: DeviceId, d: DeviceV1) -> DeviceRecord {
    DeviceRecord {
        device,
        tenant: TenantId::new(d.tenant),
        account: AccountId::new(d.account),
        identity_key: d.identity_key,
        exchange_key: d.exchange_key,
        name: d.name,
        revoked_at: d.revoked_at,
        created_at: d.created_at,
        last_seen: d.last_seen,
    }
}

fn vault_record(vault: VaultId, v: &VaultV1) -> VaultRecord {
    VaultRecord {
        vault,
        tenant: TenantId::new(v.tenant),
        account: AccountId::new(v.account),
        created_at: v.created_at,
        head_seq: Seq::new(v.head_seq),
        latest_epoch: Epoch::new(v.latest_epoch),
    }
}

fn chunk_record(chunk: ChunkId, c: &ChunkV1, loc: Option<PackLocV1>) -> ChunkRecord {
    ChunkRecord {
        chunk,
        sealed_len: c.sealed_len,
        blake3: c.blake3,
        state: match c.state {
            ChunkStateV1::Pending { since } => ChunkState::Pending { since },
            ChunkStateV1::Committed { at } => ChunkState::Committed { at },
        },
        location: match loc {
            None => ChunkLocation::Blob,
            Some(l) => ChunkLocation::Packed {
                pack: PackId::from_bytes(l.pack),
                offset: l.offset,
            },
        },
    }
}

fn change(seq: Seq, l: LogV1) -> Change {
    Change {
        seq,
        entry: l.entry,
        version: l.version,
        parent: l.parent,
        record: l.record,
        chunks: l.chunks,
        epoch: Epoch::new(l.epoch),
        device: l.device,
    }
}

impl Inner {
    fn vault_v1(&self, vault: &VaultId) -> Result<VaultV1, StoreError> {
        get_decoded::<VaultV1>(&self.vaults, vault.as_bytes())?
            .ok_or_else(|| vault_not_found(vault))
    }

    fn device_v1(&self, device: &DeviceId) -> Result<Option<DeviceV1>, StoreError> {
        get_decoded(&self.devices, device.as_bytes())
    }

    fn account_v1(&self, account: AccountId) -> Result<AccountV1, StoreError> {
        get_decoded::<AccountV1>(&self.accounts, &account.get().to_be_bytes())?
            .ok_or_else(|| StoreError::not_found(format!("account {account}")))
    }

    /// Builds `usage-v1` from `chunks-v1` (stores written before the counters existed), then
    /// marks it built. Idempotent: a crash before the mark makes the next open build it again
    /// from scratch.
    fn build_usage(&self) -> Result<(), StoreError> {
        let mut accounts: std::collections::HashMap<VaultId, u64> =
            std::collections::HashMap::new();
        let mut totals: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
        for item in &self.chunks {
            let (k, v) = item?;
            let vault = codec::chunk_key_vault(&k)?;
            let account = match accounts.get(&vault) {
                Some(a) => *a,
                None => {
                    let a = self.vault_v1(&vault)?.account;
                    accounts.insert(vault, a);
                    a
                }
            };
            let c: ChunkV1 = decode(&v)?;
            let total = totals.entry(account).or_default();
            *total = total.saturating_add(c.sealed_len);
        }
        self.usage.clear()?;
        for (account, total) in totals {
            self.usage
                .insert(account.to_be_bytes(), &total.to_be_bytes())?;
        }
        self.meta.insert(codec::USAGE_BUILT_KEY, &[])?;
        self.flush()
    }

    /// Builds the storage gauges of `meter-v1` from `chunks-v1` (stores written before they
    /// existed): each vault's gauge starts now with the bytes it holds.
    fn build_gauges(&self) -> Result<(), StoreError> {
        let now = crate::service::unix_now();
        let mut totals: std::collections::BTreeMap<VaultId, u64> =
            std::collections::BTreeMap::new();
        for item in &self.chunks {
            let (k, v) = item?;
            let vault = codec::chunk_key_vault(&k)?;
            let c: ChunkV1 = decode(&v)?;
            let total = totals.entry(vault).or_default();
            *total = total.saturating_add(c.sealed_len);
        }
        for (vault, stored) in totals {
            let v = self.vault_v1(&vault)?;
            let gauge = GaugeV1 {
                account: v.account,
                stored,
                since: now,
            };
            self.meter
                .insert(codec::gauge_key(v.tenant, &vault), encode(&gauge)?)?;
            let row = StorageHourV1 {
                max: stored,
                byte_seconds: 0,
            };
            self.meter.insert(
                codec::storage_hour_key(v.tenant, &vault, now / HOUR_SECS),
                encode(&row)?,
            )?;
        }
        self.meta.insert(codec::METER_BUILT_KEY, &[])?;
        self.flush()
    }

    fn add_traffic(&self, batch: &[(TrafficKey, TrafficCounts)]) -> Result<(), StoreError> {
        let rows = traffic_rows(batch);
        match &self.journal {
            Some(journal) => journal
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .append(self, rows),
            None => {
                let seq = match self.meta.get(TRAFFIC_APPLIED_KEY)? {
                    Some(v) => codec::decode_u64(codec::META, &v)? + 1,
                    None => 1,
                };
                self.apply_traffic(seq, rows.iter().map(|(k, v)| (k.as_slice(), v)))?;
                self.flush()
            }
        }
    }

    /// Adds counts to `traffic-v1` and records journal batch `seq` applied, in one transaction.
    fn apply_traffic<'a>(
        &self,
        seq: u64,
        rows: impl Iterator<Item = (&'a [u8], &'a TrafficV1)> + Clone,
    ) -> Result<(), StoreError> {
        tx_result((&self.traffic, &self.meta).transaction(|(traffic, meta)| {
            tx_add_traffic(traffic, rows.clone())?;
            meta.insert(TRAFFIC_APPLIED_KEY, &seq.to_be_bytes())?;
            Ok(())
        }))
    }

    /// The tenants `tenant` names: itself, or every tenant.
    fn tenant_ids(&self, tenant: Option<TenantId>) -> Result<Vec<u64>, StoreError> {
        match tenant {
            Some(t) => Ok(vec![t.get()]),
            None => {
                let mut out = Vec::new();
                for item in &self.tenants {
                    let (k, _) = item?;
                    let id = <[u8; 8]>::try_from(k.as_ref())
                        .map_err(|_| StoreError::corrupt(codec::TENANTS, "a key is not 8 bytes"))?;
                    out.push(u64::from_be_bytes(id));
                }
                Ok(out)
            }
        }
    }

    fn traffic(
        &self,
        tenant: Option<TenantId>,
        hours: std::ops::Range<u64>,
    ) -> Result<Vec<(TrafficKey, TrafficCounts)>, StoreError> {
        let mut out = Vec::new();
        if hours.is_empty() {
            return Ok(out);
        }
        for t in self.tenant_ids(tenant)? {
            let start = codec::traffic_key(t, hours.start, 0, None, None);
            let end = codec::traffic_key(t, hours.end, 0, None, None);
            let rows = loop {
                // The pending counts are copied under the journal's lock and sled is read
                // without it (appends go on meanwhile); a fold in between (counts moved from
                // one to the other) makes the reader read again.
                let snapshot = |j: &Option<std::sync::MutexGuard<'_, TrafficJournal>>| {
                    j.as_ref().map(|j| {
                        let pending: Vec<(Vec<u8>, TrafficV1)> = j
                            .pending
                            .range(start.to_vec()..end.to_vec())
                            .map(|(k, v)| (k.clone(), *v))
                            .collect();
                        (j.folds, pending)
                    })
                };
                let lock = || {
                    self.journal
                        .as_ref()
                        .map(|j| j.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
                };
                let before = snapshot(&lock());
                let mut rows: std::collections::BTreeMap<Vec<u8>, TrafficV1> =
                    std::collections::BTreeMap::new();
                for item in self.traffic.range(start..end) {
                    let (k, v) = item?;
                    rows.insert(k.to_vec(), decode(&v)?);
                }
                let folds_after = lock().map(|j| j.folds);
                match before {
                    Some((folds, _)) if Some(folds) != folds_after => continue,
                    Some((_, pending)) => {
                        for (k, add) in pending {
                            add_counts(rows.entry(k).or_default(), &add);
                        }
                        break rows;
                    }
                    None => break rows,
                }
            };
            for (k, row) in rows {
                let (tenant, hour, account, vault, device) = codec::traffic_key_parts(&k)?;
                let counts = TrafficCounts {
                    ingress_bytes: row.ingress,
                    egress_bytes: row.egress,
                    requests: row.requests,
                };
                if counts.is_zero() {
                    continue;
                }
                let key = TrafficKey {
                    tenant: TenantId::new(tenant),
                    hour,
                    account: AccountId::new(account),
                    vault,
                    device,
                };
                out.push((key, counts));
            }
        }
        Ok(out)
    }

    fn storage_gauges(&self, tenant: Option<TenantId>) -> Result<Vec<VaultStorage>, StoreError> {
        let mut out = Vec::new();
        for t in self.tenant_ids(tenant)? {
            let mut prefix = vec![b'g'];
            prefix.extend_from_slice(&t.to_be_bytes());
            for item in self.meter.scan_prefix(&prefix) {
                let (k, v) = item?;
                let (tenant, vault) = codec::gauge_key_parts(&k)?;
                let g: GaugeV1 = decode(&v)?;
                if g.stored == 0 {
                    continue;
                }
                out.push(VaultStorage {
                    tenant: TenantId::new(tenant),
                    account: AccountId::new(g.account),
                    vault,
                    stored_bytes: g.stored,
                    since: g.since,
                });
            }
        }
        Ok(out)
    }

    fn storage_hours(
        &self,
        tenant: Option<TenantId>,
        hours: std::ops::Range<u64>,
        now: u64,
    ) -> Result<Vec<StorageHour>, StoreError> {
        let mut out = Vec::new();
        if hours.is_empty() {
            return Ok(out);
        }
        // Vaults of deleted accounts have no gauge any more but keep their rows: find every
        // vault with rows through the row keys, and the owners through the gauges or the rows'
        // tenant scan.
        for t in self.tenant_ids(tenant)? {
            let read_gauges =
                || -> Result<std::collections::HashMap<VaultId, GaugeV1>, StoreError> {
                    let mut m = std::collections::HashMap::new();
                    let mut prefix = vec![b'g'];
                    prefix.extend_from_slice(&t.to_be_bytes());
                    for item in self.meter.scan_prefix(&prefix) {
                        let (k, v) = item?;
                        let (_, vault) = codec::gauge_key_parts(&k)?;
                        m.insert(vault, decode::<GaugeV1>(&v)?);
                    }
                    Ok(m)
                };
            // A change between reading the gauges and the rows folds time into the rows that
            // the gauges read before would count again: read until both agree.
            let (gauges, mut by_vault) = loop {
                let gauges = read_gauges()?;
                let mut prefix = vec![b'h'];
                prefix.extend_from_slice(&t.to_be_bytes());
                let mut by_vault: std::collections::BTreeMap<VaultId, Vec<(u64, StorageHourV1)>> =
                    std::collections::BTreeMap::new();
                for item in self.meter.scan_prefix(&prefix) {
                    let (k, v) = item?;
                    let hour = codec::storage_hour_key_hour(&k)?;
                    if !hours.contains(&hour) {
                        continue;
                    }
                    let vault = k
                        .get(9..25)
                        .and_then(|b| <[u8; 16]>::try_from(b).ok())
                        .map(VaultId::from_bytes)
                        .ok_or_else(|| StoreError::corrupt(codec::METER, "a short hour key"))?;
                    by_vault
                        .entry(vault)
                        .or_default()
                        .push((hour, decode::<StorageHourV1>(&v)?));
                }
                if read_gauges()? == gauges {
                    break (gauges, by_vault);
                }
            };
            for vault in gauges.keys() {
                by_vault.entry(*vault).or_default();
            }
            for (vault, rows) in by_vault {
                let gauge = gauges.get(&vault).copied();
                let account = match gauge {
                    Some(g) => g.account,
                    None => match get_decoded::<VaultV1>(&self.vaults, vault.as_bytes())? {
                        Some(v) => v.account,
                        // A deleted account's vault: its rows still count for the tenant.
                        None => 0,
                    },
                };
                let mut merged: std::collections::BTreeMap<u64, (u64, u128)> = rows
                    .into_iter()
                    .map(|(h, r)| (h, (r.max, r.byte_seconds)))
                    .collect();
                // The time since the gauge's last change is not in the rows yet.
                if let Some(g) = gauge
                    && g.stored > 0
                {
                    for (hour, seconds) in hour_spans(g.since, now.max(g.since)) {
                        if !hours.contains(&hour) {
                            continue;
                        }
                        let e = merged.entry(hour).or_insert((0, 0));
                        e.0 = e.0.max(g.stored);
                        e.1 =
                            e.1.saturating_add(u128::from(g.stored) * u128::from(seconds));
                    }
                }
                for (hour, (max_bytes, byte_seconds)) in merged {
                    if max_bytes == 0 && byte_seconds == 0 {
                        continue;
                    }
                    out.push(StorageHour {
                        tenant: TenantId::new(t),
                        account: AccountId::new(account),
                        vault,
                        hour,
                        max_bytes,
                        byte_seconds,
                    });
                }
            }
        }
        Ok(out)
    }

    fn account_usage(&self, account: AccountId) -> Result<AccountUsage, StoreError> {
        self.account_v1(account)?;
        let stored_bytes = match self.usage.get(account.get().to_be_bytes())? {
            Some(v) => codec::decode_u64(codec::USAGE, &v)?,
            None => 0,
        };
        let devices = self
            .list_devices(account)?
            .iter()
            .filter(|d| !d.is_revoked())
            .count();
        let mut vaults = 0u64;
        for item in self.account_vaults.scan_prefix(account.get().to_be_bytes()) {
            item?;
            vaults = vaults.saturating_add(1);
        }
        Ok(AccountUsage {
            stored_bytes,
            devices: u64::try_from(devices).unwrap_or(u64::MAX),
            vaults,
        })
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn create_tenant(&self, name: &str) -> Result<TenantId, StoreError> {
        check_name("tenant name", name)?;
        let id = tx_result((&self.meta, &self.tenants, &self.tenant_names).transaction(
            |(meta, tenants, names)| {
                if names.get(name.as_bytes())?.is_some() {
                    return fail(StoreError::already_exists(format!("tenant {name:?}")));
                }
                let id = tx_next_id(meta, codec::NEXT_TENANT_KEY)?;
                tx_insert(
                    tenants,
                    &id.to_be_bytes(),
                    &TenantV1 {
                        name: name.to_owned(),
                    },
                )?;
                names.insert(name.as_bytes(), &id.to_be_bytes())?;
                Ok(id)
            },
        ))?;
        self.flush()?;
        Ok(TenantId::new(id))
    }

    fn create_account(&self, tenant: TenantId, name: &str) -> Result<AccountId, StoreError> {
        check_name("account name", name)?;
        let name_key = codec::account_name_key(tenant.get(), name);
        let id = tx_result(
            (
                &self.meta,
                &self.tenants,
                &self.accounts,
                &self.account_names,
            )
                .transaction(|(meta, tenants, accounts, names)| {
                    if tenants.get(tenant.get().to_be_bytes())?.is_none() {
                        return fail(StoreError::not_found(format!("tenant {tenant}")));
                    }
                    if names.get(&name_key)?.is_some() {
                        return fail(StoreError::already_exists(format!(
                            "account {name:?} in tenant {tenant}"
                        )));
                    }
                    let id = tx_next_id(meta, codec::NEXT_ACCOUNT_KEY)?;
                    tx_insert(
                        accounts,
                        &id.to_be_bytes(),
                        &AccountV1 {
                            tenant: tenant.get(),
                            name: name.to_owned(),
                        },
                    )?;
                    names.insert(name_key.as_slice(), &id.to_be_bytes())?;
                    Ok(id)
                }),
        )?;
        self.flush()?;
        Ok(AccountId::new(id))
    }

    fn create_enrolment_token(
        &self,
        account: AccountId,
        expires_at: u64,
        reusable: bool,
    ) -> Result<EnrolmentToken, StoreError> {
        let acc = self.account_v1(account)?;
        let token = EnrolmentToken::generate()?;
        let hash = token.hash();
        let record = TokenV1 {
            hash,
            tenant: acc.tenant,
            account: account.get(),
            expires_at,
            reusable,
            used_at: None,
            uses: 0,
        };
        let fresh =
            self.tokens
                .compare_and_swap(hash, None as Option<&[u8]>, Some(encode(&record)?))?;
        if fresh.is_err() {
            // 128 random bits collided: the random number generator is broken.
            return Err(StoreError::Unavailable {
                reason: "a freshly generated enrolment token already exists".to_owned(),
            });
        }
        self.flush()?;
        Ok(token)
    }

    fn redeem_enrolment(
        &self,
        token: &str,
        reg: &DeviceRegistration,
        now: u64,
    ) -> Result<DeviceRecord, StoreError> {
        let hash = token::presented_hash(token).ok_or(StoreError::TokenInvalid)?;
        check_name("device name", &reg.name)?;
        if *blake3::hash(&reg.identity_key).as_bytes() != *reg.device.as_bytes() {
            return Err(StoreError::InvalidInput {
                what: "device id",
                reason: "it is not the BLAKE3 hash of the device's identity key".to_owned(),
            });
        }
        let device = tx_result(
            (
                &self.tokens,
                &self.accounts,
                &self.devices,
                &self.account_devices,
            )
                .transaction(|(tokens, accounts, devices, account_devices)| {
                    let Some(mut tok) = tx_get_decoded::<TokenV1>(tokens, &hash)? else {
                        return fail(StoreError::TokenInvalid);
                    };
                    if !token::hashes_match(&tok.hash, &hash) {
                        return fail(StoreError::TokenInvalid);
                    }
                    if now >= tok.expires_at {
                        return fail(StoreError::TokenExpired);
                    }
                    if !tok.reusable && tok.used_at.is_some() {
                        return fail(StoreError::TokenUsed);
                    }
                    if accounts.get(tok.account.to_be_bytes())?.is_none() {
                        return fail(StoreError::not_found(format!("account {}", tok.account)));
                    }
                    if let Some(existing) =
                        tx_get_decoded::<DeviceV1>(devices, reg.device.as_bytes())?
                    {
                        return fail(if existing.revoked_at.is_some() {
                            StoreError::DeviceRevoked { device: reg.device }
                        } else {
                            StoreError::already_exists(format!("device {}", reg.device))
                        });
                    }
                    let device = DeviceV1 {
                        tenant: tok.tenant,
                        account: tok.account,
                        identity_key: reg.identity_key,
                        exchange_key: reg.exchange_key,
                        name: reg.name.clone(),
                        revoked_at: None,
                        created_at: now,
                        last_seen: now,
                    };
                    tx_insert(devices, reg.device.as_bytes(), &device)?;
                    account_devices.insert(
                        codec::account_member_key(tok.account, reg.device.as_bytes()),
                        &[],
                    )?;
                    tok.used_at = tok.used_at.or(Some(now));
                    tok.uses = tok.uses.saturating_add(1);
                    tx_insert(tokens, &hash, &tok)?;
                    Ok(device)
                }),
        )?;
        self.flush()?;
        Ok(device_record(reg.device, device))
    }

    /// Updates a device record in a transaction; `f` sees the current record.
    fn update_device(
        &self,
        device: DeviceId,
        f: impl Fn(&mut DeviceV1) -> Result<(), StoreError>,
    ) -> Result<DeviceV1, StoreError> {
        tx_result(self.devices.transaction(|devices| {
            let Some(mut d) = tx_get_decoded::<DeviceV1>(devices, device.as_bytes())? else {
                return fail(StoreError::not_found(format!("device {device}")));
            };
            f(&mut d).or_abort()?;
            tx_insert(devices, device.as_bytes(), &d)?;
            Ok(d)
        }))
    }

    fn list_devices(&self, account: AccountId) -> Result<Vec<DeviceRecord>, StoreError> {
        self.account_v1(account)?;
        let mut out = Vec::new();
        for item in self
            .account_devices
            .scan_prefix(account.get().to_be_bytes())
        {
            let (k, _) = item?;
            let device = DeviceId::from_bytes(codec::account_member(ACCOUNT_DEVICES, &k)?);
            // An index entry always has its device; a missing one is damage.
            let d = self.device_v1(&device)?.ok_or_else(|| {
                StoreError::corrupt(ACCOUNT_DEVICES, format!("device {device} is not stored"))
            })?;
            out.push(device_record(device, d));
        }
        Ok(out)
    }

    fn create_vault(
        &self,
        account: AccountId,
        vault: VaultId,
        now: u64,
    ) -> Result<(VaultV1, bool), StoreError> {
        let (record, created) = tx_result(
            (&self.accounts, &self.vaults, &self.account_vaults).transaction(
                |(accounts, vaults, account_vaults)| {
                    let Some(acc) =
                        tx_get_decoded::<AccountV1>(accounts, &account.get().to_be_bytes())?
                    else {
                        return fail(StoreError::not_found(format!("account {account}")));
                    };
                    if let Some(existing) = tx_get_decoded::<VaultV1>(vaults, vault.as_bytes())? {
                        if existing.account == account.get() {
                            return Ok((existing, false));
                        }
                        return fail(StoreError::already_exists(format!("vault {vault}")));
                    }
                    let record = VaultV1 {
                        tenant: acc.tenant,
                        account: account.get(),
                        created_at: now,
                        head_seq: 0,
                        latest_epoch: 0,
                    };
                    tx_insert(vaults, vault.as_bytes(), &record)?;
                    account_vaults.insert(
                        codec::account_member_key(account.get(), vault.as_bytes()),
                        &[],
                    )?;
                    Ok((record, true))
                },
            ),
        )?;
        if created {
            self.flush()?;
        }
        Ok((record, created))
    }

    fn delete_account(&self, account: AccountId, now: u64) -> Result<Vec<VaultId>, StoreError> {
        let record = self.account_v1(account)?;
        let prefix = account.get().to_be_bytes();
        let mut vaults = Vec::new();
        for item in self.account_vaults.scan_prefix(prefix) {
            let (k, _) = item?;
            let vault = VaultId::from_bytes(codec::account_member(ACCOUNT_VAULTS, &k)?);
            // The vault's storage ends now; its hour rows stay for usage reports, and its gauge
            // (at zero) keeps the account they belong to.
            if let Some(v) = get_decoded::<VaultV1>(&self.vaults, vault.as_bytes())? {
                let at = StoredAt::new(&v, &vault, now);
                tx_result(
                    self.meter
                        .transaction(|meter| tx_set_gauge(meter, at, |_| 0)),
                )?;
            }
            for tree in [
                &self.chunks,
                &self.chunk_locs,
                &self.packs,
                &self.log,
                &self.heads,
                &self.versions,
                &self.envelopes,
                &self.rotations,
            ] {
                for item in tree.scan_prefix(vault.as_bytes()) {
                    let (k, _) = item?;
                    tree.remove(k)?;
                }
            }
            self.vaults.remove(vault.as_bytes())?;
            self.account_vaults.remove(k)?;
            vaults.push(vault);
        }
        for item in self.account_devices.scan_prefix(prefix) {
            let (k, _) = item?;
            let device: [u8; 32] = codec::account_member(ACCOUNT_DEVICES, &k)?;
            self.devices.remove(device)?;
            self.account_devices.remove(k)?;
        }
        for item in &self.tokens {
            let (k, v) = item?;
            let token: TokenV1 = decode(&v)?;
            if token.account == account.get() {
                self.tokens.remove(k)?;
            }
        }
        self.usage.remove(prefix)?;
        self.account_names
            .remove(codec::account_name_key(record.tenant, &record.name))?;
        self.accounts.remove(prefix)?;
        self.flush()?;
        Ok(vaults)
    }

    fn list_vaults(&self, account: AccountId) -> Result<Vec<VaultInfo>, StoreError> {
        self.account_v1(account)?;
        let mut out = Vec::new();
        for item in self.account_vaults.scan_prefix(account.get().to_be_bytes()) {
            let (k, _) = item?;
            let vault = VaultId::from_bytes(codec::account_member(ACCOUNT_VAULTS, &k)?);
            let v = get_decoded::<VaultV1>(&self.vaults, vault.as_bytes())?.ok_or_else(|| {
                StoreError::corrupt(ACCOUNT_VAULTS, format!("vault {vault} is not stored"))
            })?;
            out.push(vault_record(vault, &v).info());
        }
        Ok(out)
    }

    fn missing_chunks(
        &self,
        vault: &VaultId,
        chunks: &[ChunkId],
    ) -> Result<Vec<ChunkId>, StoreError> {
        self.vault_v1(vault)?;
        let mut seen = HashSet::with_capacity(chunks.len());
        let mut missing = Vec::new();
        for chunk in chunks {
            if seen.insert(*chunk) && !self.chunks.contains_key(codec::chunk_key(vault, chunk))? {
                missing.push(*chunk);
            }
        }
        Ok(missing)
    }

    #[allow(clippy::too_many_arguments)]
    fn record_chunk(
        &self,
        vault: &VaultId,
        chunk: &ChunkId,
        sealed_len: u64,
        blake3: [u8; 32],
        now: u64,
        traffic: &[(Vec<u8>, TrafficV1)],
    ) -> Result<ChunkRecord, StoreError> {
        // A vault's owner never changes, so it may be read outside the transaction.
        let v = self.vault_v1(vault)?;
        let at = StoredAt::new(&v, vault, now);
        let key = codec::chunk_key(vault, chunk);
        let fresh = ChunkV1 {
            sealed_len,
            blake3,
            state: ChunkStateV1::Pending { since: now },
        };
        // The record, its location and the account's stored bytes change together, or not at
        // all.
        tx_result(
            (
                &self.chunks,
                &self.chunk_locs,
                &self.usage,
                &self.meter,
                &self.traffic,
            )
                .transaction(|(chunks, locs, usage, meter, traffic_tree)| {
                    tx_add_traffic(traffic_tree, traffic.iter().map(|(k, v)| (k.as_slice(), v)))?;
                    let old_len = match tx_get_decoded::<ChunkV1>(chunks, &key)? {
                        None => 0,
                        Some(existing) => {
                            let same =
                                existing.sealed_len == sealed_len && existing.blake3 == blake3;
                            if same || matches!(existing.state, ChunkStateV1::Committed { .. }) {
                                let loc = tx_get_decoded::<PackLocV1>(locs, &key)?;
                                return Ok(chunk_record(*chunk, &existing, loc));
                            }
                            existing.sealed_len
                        }
                    };
                    tx_insert(chunks, &key, &fresh)?;
                    // Its bytes are the blob now, not a range of a pack.
                    locs.remove(key.as_slice())?;
                    tx_adjust_usage(usage, meter, at, old_len, sealed_len)?;
                    Ok(chunk_record(*chunk, &fresh, None))
                }),
        )
    }

    fn record_packed_chunks(
        &self,
        vault: &VaultId,
        pack: &PackId,
        pack_len: u64,
        packed: &[PackedChunk],
        now: u64,
        traffic: &[(Vec<u8>, TrafficV1)],
    ) -> Result<(), StoreError> {
        let v = self.vault_v1(vault)?;
        let at = StoredAt::new(&v, vault, now);
        let pack_record = PackV1 {
            len: pack_len,
            chunks: u32::try_from(packed.len()).unwrap_or(u32::MAX),
            created_at: now,
        };
        tx_result(
            (
                &self.chunks,
                &self.chunk_locs,
                &self.packs,
                &self.usage,
                &self.meter,
                &self.traffic,
            )
                .transaction(|(chunks, locs, packs, usage, meter, traffic_tree)| {
                    tx_add_traffic(traffic_tree, traffic.iter().map(|(k, v)| (k.as_slice(), v)))?;
                    tx_insert(
                        packs,
                        &codec::pack_key(vault, pack.as_bytes()),
                        &pack_record,
                    )?;
                    for p in packed {
                        let key = codec::chunk_key(vault, &p.chunk);
                        let old_len = match tx_get_decoded::<ChunkV1>(chunks, &key)? {
                            None => 0,
                            Some(existing) => {
                                let same = existing.sealed_len == p.sealed_len
                                    && existing.blake3 == p.blake3;
                                if same || matches!(existing.state, ChunkStateV1::Committed { .. })
                                {
                                    continue;
                                }
                                existing.sealed_len
                            }
                        };
                        let fresh = ChunkV1 {
                            sealed_len: p.sealed_len,
                            blake3: p.blake3,
                            state: ChunkStateV1::Pending { since: now },
                        };
                        tx_insert(chunks, &key, &fresh)?;
                        tx_insert(
                            locs,
                            &key,
                            &PackLocV1 {
                                pack: *pack.as_bytes(),
                                offset: p.offset,
                            },
                        )?;
                        tx_adjust_usage(usage, meter, at, old_len, p.sealed_len)?;
                    }
                    Ok(())
                }),
        )?;
        self.flush()
    }

    fn all_vaults(&self) -> Result<Vec<VaultRecord>, StoreError> {
        let mut out = Vec::new();
        for item in &self.vaults {
            let (k, v) = item?;
            let id = <[u8; 16]>::try_from(k.as_ref())
                .map_err(|_| StoreError::corrupt(codec::VAULTS, "a key is not 16 bytes"))?;
            out.push(vault_record(
                VaultId::from_bytes(id),
                &decode::<VaultV1>(&v)?,
            ));
        }
        Ok(out)
    }

    fn pending_chunks_before(
        &self,
        vault: &VaultId,
        before: u64,
    ) -> Result<Vec<ChunkRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.chunks.scan_prefix(vault.as_bytes()) {
            let (k, v) = item?;
            let c: ChunkV1 = decode(&v)?;
            if let ChunkStateV1::Pending { since } = c.state
                && since < before
            {
                let id = k
                    .get(16..48)
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| StoreError::corrupt(codec::CHUNKS, "a key is not 48 bytes"))?;
                let loc = get_decoded::<PackLocV1>(&self.chunk_locs, &k)?;
                out.push(chunk_record(ChunkId::from_bytes(id), &c, loc));
            }
        }
        Ok(out)
    }

    fn collect_pending_chunk(
        &self,
        vault: &VaultId,
        chunk: &ChunkId,
        since: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        self.remove_pending(vault, chunk, Some(since), now)
    }

    fn expire_versions(&self, vault: &VaultId, superseded_before: u64) -> Result<u64, StoreError> {
        self.vault_v1(vault)?;
        // Versions of each entry in seq order: (key, seq).
        let mut expired = 0u64;
        let mut current: Option<([u8; 32], Vec<VersionAt>)> = None;
        let mut flush_entry = |versions: Vec<VersionAt>| -> Result<(), StoreError> {
            // The last version is the head: kept. Each earlier one was superseded when the
            // next one was committed.
            for pair in versions.windows(2) {
                let [(key, _), (_, next_seq)] = pair else {
                    continue;
                };
                let next = get_decoded::<LogV1>(&self.log, &codec::log_key(vault, *next_seq))?
                    .ok_or_else(|| {
                        StoreError::corrupt(codec::LOG, format!("seq {next_seq} is not logged"))
                    })?;
                if next.committed_at < superseded_before && self.versions.remove(key)?.is_some() {
                    expired += 1;
                }
            }
            Ok(())
        };
        for item in self.versions.scan_prefix(vault.as_bytes()) {
            let (k, _) = item?;
            let entry: [u8; 32] = k
                .get(16..48)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| StoreError::corrupt(codec::VERSIONS, "a key is not 56 bytes"))?;
            let seq = codec::version_key_seq(&k)?;
            match &mut current {
                Some((e, versions)) if *e == entry => versions.push((k, seq)),
                _ => {
                    if let Some((_, versions)) = current.take() {
                        flush_entry(versions)?;
                    }
                    current = Some((entry, vec![(k, seq)]));
                }
            }
        }
        if let Some((_, versions)) = current.take() {
            flush_entry(versions)?;
        }
        if expired > 0 {
            self.flush()?;
        }
        Ok(expired)
    }

    fn retained_chunks(&self, vault: &VaultId) -> Result<HashSet<ChunkId>, StoreError> {
        self.vault_v1(vault)?;
        let mut keep = HashSet::new();
        for item in self.versions.scan_prefix(vault.as_bytes()) {
            let (k, _) = item?;
            let seq = codec::version_key_seq(&k)?;
            let logged =
                get_decoded::<LogV1>(&self.log, &codec::log_key(vault, seq))?.ok_or_else(|| {
                    StoreError::corrupt(codec::LOG, format!("seq {seq} is not logged"))
                })?;
            keep.extend(logged.chunks);
        }
        Ok(keep)
    }

    fn release_chunks(
        &self,
        vault: &VaultId,
        keep: &HashSet<ChunkId>,
        now: u64,
    ) -> Result<u64, StoreError> {
        let mut released = 0u64;
        for item in self.chunks.scan_prefix(vault.as_bytes()) {
            let (k, v) = item?;
            let c: ChunkV1 = decode(&v)?;
            let id = k
                .get(16..48)
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .map(ChunkId::from_bytes)
                .ok_or_else(|| StoreError::corrupt(codec::CHUNKS, "a key is not 48 bytes"))?;
            if !matches!(c.state, ChunkStateV1::Committed { .. }) || keep.contains(&id) {
                continue;
            }
            let done = tx_result(self.chunks.transaction(|chunks| {
                match tx_get_decoded::<ChunkV1>(chunks, &k)? {
                    Some(mut c) if matches!(c.state, ChunkStateV1::Committed { .. }) => {
                        c.state = ChunkStateV1::Pending { since: now };
                        tx_insert(chunks, &k, &c)?;
                        Ok(true)
                    }
                    _ => Ok(false),
                }
            }))?;
            if done {
                released += 1;
            }
        }
        if released > 0 {
            self.flush()?;
        }
        Ok(released)
    }

    fn keep_chunk(
        &self,
        vault: &VaultId,
        chunk: &ChunkId,
        since: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        let key = codec::chunk_key(vault, chunk);
        let kept = tx_result(self.chunks.transaction(|chunks| {
            match tx_get_decoded::<ChunkV1>(chunks, &key)? {
                Some(mut c) if c.state == (ChunkStateV1::Pending { since }) => {
                    c.state = ChunkStateV1::Committed { at: now };
                    tx_insert(chunks, &key, &c)?;
                    Ok(true)
                }
                _ => Ok(false),
            }
        }))?;
        if kept {
            self.flush()?;
        }
        Ok(kept)
    }

    fn relocate_packed_chunks(
        &self,
        vault: &VaultId,
        old: &PackId,
        new: &PackId,
        new_len: u64,
        moves: &[(ChunkId, u64, u64)],
        now: u64,
    ) -> Result<u64, StoreError> {
        self.vault_v1(vault)?;
        let record = PackV1 {
            len: new_len,
            chunks: u32::try_from(moves.len()).unwrap_or(u32::MAX),
            created_at: now,
        };
        let moved = tx_result(
            (&self.chunk_locs, &self.packs).transaction(|(locs, packs)| {
                tx_insert(packs, &codec::pack_key(vault, new.as_bytes()), &record)?;
                let mut moved = 0u64;
                for (chunk, from, to) in moves {
                    let key = codec::chunk_key(vault, chunk);
                    match tx_get_decoded::<PackLocV1>(locs, &key)? {
                        Some(loc) if loc.pack == *old.as_bytes() && loc.offset == *from => {
                            let to = PackLocV1 {
                                pack: *new.as_bytes(),
                                offset: *to,
                            };
                            tx_insert(locs, &key, &to)?;
                            moved += 1;
                        }
                        _ => {}
                    }
                }
                Ok(moved)
            }),
        )?;
        self.flush()?;
        Ok(moved)
    }

    fn packs(&self, vault: &VaultId) -> Result<Vec<PackInfo>, StoreError> {
        let mut packs = std::collections::BTreeMap::new();
        for item in self.packs.scan_prefix(vault.as_bytes()) {
            let (k, v) = item?;
            let id = k
                .get(16..32)
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
                .ok_or_else(|| StoreError::corrupt(codec::PACKS, "a key is not 32 bytes"))?;
            let p: PackV1 = decode(&v)?;
            packs.insert(
                id,
                PackInfo {
                    pack: PackId::from_bytes(id),
                    len: p.len,
                    created_at: p.created_at,
                    live_chunks: 0,
                    live_bytes: 0,
                },
            );
        }
        for item in self.chunk_locs.scan_prefix(vault.as_bytes()) {
            let (k, v) = item?;
            let loc: PackLocV1 = decode(&v)?;
            if let Some(info) = packs.get_mut(&loc.pack) {
                let len = get_decoded::<ChunkV1>(&self.chunks, &k)?.map_or(0, |c| c.sealed_len);
                info.live_chunks += 1;
                info.live_bytes += len;
            }
        }
        Ok(packs.into_values().collect())
    }

    fn delete_pack(&self, vault: &VaultId, pack: &PackId) -> Result<bool, StoreError> {
        let removed = self
            .packs
            .remove(codec::pack_key(vault, pack.as_bytes()))?
            .is_some();
        self.flush()?;
        Ok(removed)
    }

    /// A chunk's record with its location.
    fn chunk_record(
        &self,
        vault: &VaultId,
        chunk: &ChunkId,
    ) -> Result<Option<ChunkRecord>, StoreError> {
        let key = codec::chunk_key(vault, chunk);
        let Some(c) = get_decoded::<ChunkV1>(&self.chunks, &key)? else {
            return Ok(None);
        };
        let loc = get_decoded::<PackLocV1>(&self.chunk_locs, &key)?;
        Ok(Some(chunk_record(*chunk, &c, loc)))
    }

    fn forget_chunk(&self, vault: &VaultId, chunk: &ChunkId, now: u64) -> Result<bool, StoreError> {
        self.remove_pending(vault, chunk, None, now)
    }

    /// Removes a pending chunk's record and location and lowers the account's stored bytes,
    /// in one transaction; with `since`, only if it is still pending since then. Returns
    /// whether it removed the record (flushed when it did).
    fn remove_pending(
        &self,
        vault: &VaultId,
        chunk: &ChunkId,
        since: Option<u64>,
        now: u64,
    ) -> Result<bool, StoreError> {
        let v = self.vault_v1(vault)?;
        let at = StoredAt::new(&v, vault, now);
        let key = codec::chunk_key(vault, chunk);
        let removed = tx_result(
            (&self.chunks, &self.chunk_locs, &self.usage, &self.meter).transaction(
                |(chunks, locs, usage, meter)| match tx_get_decoded::<ChunkV1>(chunks, &key)? {
                    Some(existing)
                        if matches!(existing.state, ChunkStateV1::Pending { since: s }
                        if since.is_none_or(|since| since == s)) =>
                    {
                        chunks.remove(key.as_slice())?;
                        locs.remove(key.as_slice())?;
                        tx_adjust_usage(usage, meter, at, existing.sealed_len, 0)?;
                        Ok(true)
                    }
                    _ => Ok(false),
                },
            ),
        )?;
        if removed {
            self.flush()?;
        }
        Ok(removed)
    }

    fn commit(
        &self,
        vault: &VaultId,
        device: &DeviceId,
        entries: &[CommitEntry],
        now: u64,
    ) -> Result<Vec<CommitResult>, StoreError> {
        // Every chunk named, each once, in order of first mention.
        let mut seen = HashSet::new();
        let referenced: Vec<ChunkId> = entries
            .iter()
            .flat_map(|e| e.chunks.iter().copied())
            .filter(|c| seen.insert(*c))
            .collect();

        let (results, applied) = tx_result(
            (
                &self.vaults,
                &self.chunks,
                &self.log,
                &self.heads,
                &self.versions,
            )
                .transaction(|(vaults, chunks, log, heads, versions)| {
                    let Some(mut v) = tx_get_decoded::<VaultV1>(vaults, vault.as_bytes())? else {
                        return fail(vault_not_found(vault));
                    };

                    let mut known = Vec::with_capacity(referenced.len());
                    let mut missing = Vec::new();
                    for chunk in &referenced {
                        match tx_get_decoded::<ChunkV1>(chunks, &codec::chunk_key(vault, chunk))? {
                            Some(c) => known.push((*chunk, c)),
                            None => missing.push(*chunk),
                        }
                    }
                    if !missing.is_empty() {
                        return fail(StoreError::MissingChunks {
                            vault: *vault,
                            chunks: missing,
                        });
                    }

                    let mut results = Vec::with_capacity(entries.len());
                    let mut used: HashSet<ChunkId> = HashSet::new();
                    for e in entries {
                        let head_key = codec::head_key(vault, &e.entry);
                        let head = tx_get_decoded::<HeadV1>(heads, &head_key)?;
                        let head_version = head.map(|h| h.version);
                        if head_version != e.parent {
                            results.push(CommitResult::Conflict {
                                entry: e.entry,
                                head: head_version,
                            });
                            continue;
                        }
                        let Some(next) = v.head_seq.checked_add(1) else {
                            return fail(StoreError::corrupt(
                                codec::VAULTS,
                                format!("vault {vault} has exhausted its seq numbers"),
                            ));
                        };
                        v.head_seq = next;
                        let seq = Seq::new(next);
                        let record = LogV1 {
                            entry: e.entry,
                            version: e.version,
                            parent: e.parent,
                            record: e.record.clone(),
                            chunks: e.chunks.clone(),
                            epoch: e.epoch.get(),
                            device: *device,
                            committed_at: now,
                        };
                        tx_insert(log, &codec::log_key(vault, seq), &record)?;
                        tx_insert(
                            heads,
                            &head_key,
                            &HeadV1 {
                                version: e.version,
                                seq: next,
                            },
                        )?;
                        versions.insert(&codec::version_key(vault, &e.entry, seq)[..], &[])?;
                        v.latest_epoch = v.latest_epoch.max(e.epoch.get());
                        used.extend(e.chunks.iter().copied());
                        results.push(CommitResult::Applied {
                            entry: e.entry,
                            seq,
                            version: e.version,
                        });
                    }

                    let applied = results
                        .iter()
                        .any(|r| matches!(r, CommitResult::Applied { .. }));
                    for (chunk, mut c) in known {
                        if used.contains(&chunk) && matches!(c.state, ChunkStateV1::Pending { .. })
                        {
                            c.state = ChunkStateV1::Committed { at: now };
                            tx_insert(chunks, &codec::chunk_key(vault, &chunk), &c)?;
                        }
                    }
                    if applied {
                        tx_insert(vaults, vault.as_bytes(), &v)?;
                    }
                    Ok((results, applied))
                }),
        )?;
        if applied {
            self.flush()?;
        }
        Ok(results)
    }

    fn pull(&self, vault: &VaultId, since: Seq, limit: u32) -> Result<ChangePage, StoreError> {
        let head = self.vault_v1(vault)?.head_seq;
        let limit = page_limit(limit, MAX_PULL_PAGE);
        let mut page = ChangePage {
            changes: Vec::new(),
            next: since,
            more: false,
        };
        let Some(first) = since.get().checked_add(1) else {
            return Ok(page);
        };
        let start = codec::log_key(vault, Seq::new(first));
        let end = codec::log_key(vault, Seq::new(u64::MAX));
        let mut bytes = 0usize;
        let mut expected = first;
        for item in self.log.range(start..=end) {
            if page.changes.len() >= limit {
                break;
            }
            let (k, v) = item?;
            let seq = codec::log_key_seq(&k)?;
            if seq.get() != expected {
                // A commit is being applied right now; its seqs show up all at once shortly.
                break;
            }
            let c = change(seq, decode::<LogV1>(&v)?);
            let size = change_size_bound(&c);
            if !page.changes.is_empty() && bytes.saturating_add(size) > MAX_PAGE_BYTES {
                break;
            }
            bytes = bytes.saturating_add(size);
            page.changes.push(c);
            page.next = seq;
            expected = expected.saturating_add(1);
        }
        page.more = page.next.get() < head;
        Ok(page)
    }

    fn history(
        &self,
        vault: &VaultId,
        entry: &EntryKey,
        limit: u32,
        before: Option<Seq>,
    ) -> Result<VersionPage, StoreError> {
        self.vault_v1(vault)?;
        let limit = page_limit(limit, MAX_HISTORY_PAGE);
        let start = codec::version_key(vault, entry, Seq::ZERO);
        let mut page = VersionPage {
            versions: Vec::new(),
            next: None,
        };
        let range = match before {
            Some(before) => self
                .versions
                .range(start..codec::version_key(vault, entry, before)),
            None => self
                .versions
                .range(start..=codec::version_key(vault, entry, Seq::new(u64::MAX))),
        };
        let mut bytes = 0usize;
        for item in range.rev() {
            let (k, _) = item?;
            let seq = codec::version_key_seq(&k)?;
            if page.versions.len() >= limit {
                // There is at least one more version: the next page starts below the last one
                // returned.
                page.next = page.versions.last().map(|c| c.seq);
                break;
            }
            // The log record is written in the same transaction; until it shows, the version is
            // still being committed and is not part of the history yet.
            let Some(log) = get_decoded::<LogV1>(&self.log, &codec::log_key(vault, seq))? else {
                continue;
            };
            let c = change(seq, log);
            let size = change_size_bound(&c);
            if !page.versions.is_empty() && bytes.saturating_add(size) > MAX_PAGE_BYTES {
                page.next = page.versions.last().map(|c| c.seq);
                break;
            }
            bytes = bytes.saturating_add(size);
            page.versions.push(c);
        }
        Ok(page)
    }

    /// Stores an envelope. With `new_epoch` it must start the vault's next epoch (see
    /// [`MetaStore::start_epoch`]). An envelope newer than a due rotation's epoch ends it, in the
    /// same transaction.
    fn put_envelope(
        &self,
        vault: &VaultId,
        epoch: Epoch,
        recipient: &DeviceId,
        sender: &DeviceId,
        envelope: &[u8],
        new_epoch: bool,
    ) -> Result<(), StoreError> {
        if envelope.len() > MAX_ENVELOPE_LEN {
            return Err(StoreError::InvalidInput {
                what: "envelope",
                reason: format!(
                    "it is {} bytes long, the limit is {MAX_ENVELOPE_LEN}",
                    envelope.len()
                ),
            });
        }
        let value = encode(&EnvelopeV1 {
            envelope: envelope.to_vec(),
        })?;
        let key = codec::envelope_key(vault, recipient, epoch, sender);
        tx_result(
            (&self.vaults, &self.envelopes, &self.rotations).transaction(
                |(vaults, envelopes, rotations)| {
                    let Some(mut v) = tx_get_decoded::<VaultV1>(vaults, vault.as_bytes())? else {
                        return fail(vault_not_found(vault));
                    };
                    let roster = epoch == dooz_protocol::ROSTER_EPOCH;
                    if new_epoch && (roster || epoch.get() != v.latest_epoch.saturating_add(1)) {
                        return fail(StoreError::EpochTaken {
                            vault: *vault,
                            epoch: epoch.get(),
                            newest: v.latest_epoch,
                        });
                    }
                    if !roster && epoch.get() > v.latest_epoch {
                        v.latest_epoch = epoch.get();
                        tx_insert(vaults, vault.as_bytes(), &v)?;
                    }
                    if !roster
                        && tx_get_decoded::<RotationDueV1>(rotations, vault.as_bytes())?
                            .is_some_and(|due| epoch.get() > due.epoch)
                    {
                        rotations.remove(vault.as_bytes())?;
                    }
                    envelopes.insert(&key[..], value.as_slice())?;
                    Ok(())
                },
            ),
        )?;
        self.flush()
    }

    /// Revokes `device` and, in the same transaction, marks every vault of its account for key
    /// rotation (a vault marked already keeps its older mark).
    fn revoke_device(&self, device: DeviceId, now: u64) -> Result<DeviceV1, StoreError> {
        let Some(current) = self.device_v1(&device)? else {
            return Err(StoreError::not_found(format!("device {device}")));
        };
        let mut vaults = Vec::new();
        for item in self
            .account_vaults
            .scan_prefix(current.account.to_be_bytes())
        {
            let (k, _) = item?;
            vaults.push(VaultId::from_bytes(codec::account_member(
                ACCOUNT_VAULTS,
                &k,
            )?));
        }
        // The vaults' newest epochs are read inside the transaction: an epoch started just
        // before the revocation (perhaps wrapped to this device) must not end the rotation.
        let d = tx_result((&self.devices, &self.rotations, &self.vaults).transaction(
            |(devices, rotations, vault_tree)| {
                let Some(mut d) = tx_get_decoded::<DeviceV1>(devices, device.as_bytes())? else {
                    return fail(StoreError::not_found(format!("device {device}")));
                };
                if d.revoked_at.is_none() {
                    d.revoked_at = Some(now);
                    tx_insert(devices, device.as_bytes(), &d)?;
                    for vault in &vaults {
                        let Some(v) = tx_get_decoded::<VaultV1>(vault_tree, vault.as_bytes())?
                        else {
                            continue;
                        };
                        if rotations.get(vault.as_bytes())?.is_none() {
                            let due = RotationDueV1 {
                                epoch: v.latest_epoch,
                                since: now,
                            };
                            tx_insert(rotations, vault.as_bytes(), &due)?;
                        }
                    }
                }
                Ok(d)
            },
        ))?;
        self.flush()?;
        Ok(d)
    }

    /// The vaults of `account` whose key must be rotated.
    fn rotations_due(&self, account: AccountId) -> Result<Vec<VaultId>, StoreError> {
        let mut out = Vec::new();
        for info in self.list_vaults(account)? {
            if self.rotations.contains_key(info.vault.as_bytes())? {
                out.push(info.vault);
            }
        }
        Ok(out)
    }

    fn envelopes_for(
        &self,
        vault: &VaultId,
        recipient: &DeviceId,
    ) -> Result<Vec<EnvelopeInfo>, StoreError> {
        self.vault_v1(vault)?;
        let mut out = Vec::new();
        // Newest first, so that a cap keeps the newest, then back to oldest first.
        for item in self
            .envelopes
            .scan_prefix(codec::envelope_prefix(vault, recipient))
            .rev()
            .take(MAX_ENVELOPES)
        {
            let (k, v) = item?;
            let (epoch, sender) = codec::envelope_key_parts(&k)?;
            out.push(EnvelopeInfo {
                epoch,
                recipient: *recipient,
                sender,
                envelope: decode::<EnvelopeV1>(&v)?.envelope,
            });
        }
        out.reverse();
        Ok(out)
    }
}

/// A u64 as the BIGINT holding its bits (the PostgreSQL store's convention).
#[allow(clippy::cast_possible_wrap)]
const fn bigint(x: u64) -> i64 {
    x as i64
}

fn key_part<const N: usize>(
    tree: &'static str,
    k: &[u8],
    at: usize,
) -> Result<[u8; N], StoreError> {
    k.get(at..at + N)
        .and_then(|b| <[u8; N]>::try_from(b).ok())
        .ok_or_else(|| StoreError::corrupt(tree, format!("a key of {} bytes", k.len())))
}

impl SledStore {
    /// The last tenant and account ids handed out (deleted ones included), for a migration.
    pub(crate) fn id_counters(&self) -> Result<(u64, u64), StoreError> {
        let read = |key: &[u8]| -> Result<u64, StoreError> {
            match self.inner.meta.get(key)? {
                Some(v) => codec::decode_u64(codec::META, &v),
                None => Ok(0),
            }
        };
        Ok((
            read(codec::NEXT_TENANT_KEY)?,
            read(codec::NEXT_ACCOUNT_KEY)?,
        ))
    }

    /// Every row of `table` (a table of the PostgreSQL schema, see `store::migrate`), read
    /// from the matching trees, handed to `sink` one by one. Blocks: run it off the runtime.
    pub(crate) fn export_table(
        &self,
        table: &str,
        sink: &mut dyn FnMut(Vec<crate::store::migrate::Value>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        use crate::store::migrate::Value::{Bool, Bytes, Int, Numeric, Text};
        let s = &self.inner;
        let int = |x: u64| Int(Some(bigint(x)));
        let opt = |x: Option<u64>| Int(x.map(bigint));
        let bytes = |b: &[u8]| Bytes(Some(b.to_vec()));
        match table {
            "tenants" => {
                for item in &s.tenants {
                    let (k, v) = item?;
                    let t: TenantV1 = decode(&v)?;
                    let id = u64::from_be_bytes(key_part(codec::TENANTS, &k, 0)?);
                    sink(vec![int(id), Text(t.name)])?;
                }
            }
            "accounts" => {
                for item in &s.accounts {
                    let (k, v) = item?;
                    let a: AccountV1 = decode(&v)?;
                    let stored = match s.usage.get(&k)? {
                        Some(u) => codec::decode_u64(codec::USAGE, &u)?,
                        None => 0,
                    };
                    let id = u64::from_be_bytes(key_part(codec::ACCOUNTS, &k, 0)?);
                    sink(vec![int(id), int(a.tenant), Text(a.name), int(stored)])?;
                }
            }
            "tokens" => {
                for item in &s.tokens {
                    let (_, v) = item?;
                    let t: TokenV1 = decode(&v)?;
                    sink(vec![
                        bytes(&t.hash),
                        int(t.tenant),
                        int(t.account),
                        int(t.expires_at),
                        Bool(t.reusable),
                        opt(t.used_at),
                        int(t.uses),
                    ])?;
                }
            }
            "devices" => {
                for item in &s.devices {
                    let (k, v) = item?;
                    let d: DeviceV1 = decode(&v)?;
                    sink(vec![
                        bytes(&k),
                        int(d.tenant),
                        int(d.account),
                        bytes(&d.identity_key),
                        bytes(&d.exchange_key),
                        Text(d.name),
                        opt(d.revoked_at),
                        int(d.created_at),
                        int(d.last_seen),
                    ])?;
                }
            }
            "vaults" => {
                for item in &s.vaults {
                    let (k, v) = item?;
                    let v: VaultV1 = decode(&v)?;
                    sink(vec![
                        bytes(&k),
                        int(v.tenant),
                        int(v.account),
                        int(v.created_at),
                        int(v.head_seq),
                        Int(Some(i64::from(v.latest_epoch))),
                    ])?;
                }
            }
            "chunks" => {
                for item in &s.chunks {
                    let (k, v) = item?;
                    let c: ChunkV1 = decode(&v)?;
                    let loc = get_decoded::<PackLocV1>(&s.chunk_locs, &k)?;
                    let (pending, committed) = match c.state {
                        ChunkStateV1::Pending { since } => (Some(since), None),
                        ChunkStateV1::Committed { at } => (None, Some(at)),
                    };
                    sink(vec![
                        bytes(&key_part::<16>(codec::CHUNKS, &k, 0)?),
                        bytes(&key_part::<32>(codec::CHUNKS, &k, 16)?),
                        int(c.sealed_len),
                        bytes(&c.blake3),
                        opt(pending),
                        opt(committed),
                        Bytes(loc.map(|l| l.pack.to_vec())),
                        opt(loc.map(|l| l.offset)),
                    ])?;
                }
            }
            "packs" => {
                for item in &s.packs {
                    let (k, v) = item?;
                    let p: PackV1 = decode(&v)?;
                    sink(vec![
                        bytes(&key_part::<16>(codec::PACKS, &k, 0)?),
                        bytes(&key_part::<16>(codec::PACKS, &k, 16)?),
                        int(p.len),
                        Int(Some(i64::from(p.chunks))),
                        int(p.created_at),
                    ])?;
                }
            }
            "log" => {
                for item in &s.log {
                    let (k, v) = item?;
                    let l: LogV1 = decode(&v)?;
                    let mut chunks = Vec::with_capacity(l.chunks.len() * 32);
                    for c in &l.chunks {
                        chunks.extend_from_slice(c.as_bytes());
                    }
                    sink(vec![
                        bytes(&key_part::<16>(codec::LOG, &k, 0)?),
                        int(codec::log_key_seq(&k)?.get()),
                        bytes(l.entry.as_bytes()),
                        bytes(l.version.as_bytes()),
                        Bytes(l.parent.map(|p| p.as_bytes().to_vec())),
                        Bytes(Some(l.record)),
                        Bytes(Some(chunks)),
                        Int(Some(i64::from(l.epoch))),
                        bytes(l.device.as_bytes()),
                        int(l.committed_at),
                    ])?;
                }
            }
            "heads" => {
                for item in &s.heads {
                    let (k, v) = item?;
                    let h: HeadV1 = decode(&v)?;
                    sink(vec![
                        bytes(&key_part::<16>(codec::HEADS, &k, 0)?),
                        bytes(&key_part::<32>(codec::HEADS, &k, 16)?),
                        bytes(h.version.as_bytes()),
                        int(h.seq),
                    ])?;
                }
            }
            "versions" => {
                for item in &s.versions {
                    let (k, _) = item?;
                    sink(vec![
                        bytes(&key_part::<16>(codec::VERSIONS, &k, 0)?),
                        bytes(&key_part::<32>(codec::VERSIONS, &k, 16)?),
                        int(codec::version_key_seq(&k)?.get()),
                    ])?;
                }
            }
            "envelopes" => {
                for item in &s.envelopes {
                    let (k, v) = item?;
                    let e: EnvelopeV1 = decode(&v)?;
                    let (epoch, sender) = codec::envelope_key_parts(&k)?;
                    sink(vec![
                        bytes(&key_part::<16>(codec::ENVELOPES, &k, 0)?),
                        bytes(&key_part::<32>(codec::ENVELOPES, &k, 16)?),
                        Int(Some(i64::from(epoch.get()))),
                        bytes(sender.as_bytes()),
                        Bytes(Some(e.envelope)),
                    ])?;
                }
            }
            "rotations" => {
                for item in &s.rotations {
                    let (k, v) = item?;
                    let r: RotationDueV1 = decode(&v)?;
                    sink(vec![bytes(&k), Int(Some(i64::from(r.epoch))), int(r.since)])?;
                }
            }
            "traffic" => {
                for item in &s.traffic {
                    let (k, v) = item?;
                    let t: TrafficV1 = decode(&v)?;
                    let (tenant, hour, account, vault, device) = codec::traffic_key_parts(&k)?;
                    sink(vec![
                        int(tenant),
                        int(hour),
                        int(account),
                        Bytes(Some(
                            vault.map(|v| v.as_bytes().to_vec()).unwrap_or_default(),
                        )),
                        Bytes(Some(
                            device.map(|d| d.as_bytes().to_vec()).unwrap_or_default(),
                        )),
                        int(t.ingress),
                        int(t.egress),
                        int(t.requests),
                    ])?;
                }
            }
            "gauges" => {
                for item in s.meter.scan_prefix(b"g") {
                    let (k, v) = item?;
                    let (tenant, vault) = codec::gauge_key_parts(&k)?;
                    let g: GaugeV1 = decode(&v)?;
                    sink(vec![
                        int(tenant),
                        bytes(vault.as_bytes()),
                        int(g.account),
                        int(g.stored),
                        int(g.since),
                    ])?;
                }
            }
            "storage_hours" => {
                for item in s.meter.scan_prefix(b"h") {
                    let (k, v) = item?;
                    let h: StorageHourV1 = decode(&v)?;
                    sink(vec![
                        int(u64::from_be_bytes(key_part(codec::METER, &k, 1)?)),
                        bytes(&key_part::<16>(codec::METER, &k, 9)?),
                        int(codec::storage_hour_key_hour(&k)?),
                        int(h.max),
                        Numeric(h.byte_seconds.to_string()),
                    ])?;
                }
            }
            other => {
                return Err(StoreError::InvalidInput {
                    what: "table",
                    reason: format!("{other:?} is not a table of the schema"),
                });
            }
        }
        Ok(())
    }
}

#[async_trait]
impl MetaStore for SledStore {
    async fn create_tenant(&self, name: &str) -> Result<TenantId, StoreError> {
        let name = name.to_owned();
        self.blocking(move |s| s.create_tenant(&name)).await
    }

    async fn tenant(&self, id: TenantId) -> Result<Option<TenantRecord>, StoreError> {
        Ok(
            get_decoded::<TenantV1>(&self.inner.tenants, &id.get().to_be_bytes())?
                .map(|t| TenantRecord { id, name: t.name }),
        )
    }

    async fn tenant_by_name(&self, name: &str) -> Result<Option<TenantRecord>, StoreError> {
        let Some(id) = self.inner.tenant_names.get(name.as_bytes())? else {
            return Ok(None);
        };
        let id = TenantId::new(codec::decode_u64(codec::TENANT_NAMES, &id)?);
        self.tenant(id).await
    }

    async fn create_account(&self, tenant: TenantId, name: &str) -> Result<AccountId, StoreError> {
        let name = name.to_owned();
        self.blocking(move |s| s.create_account(tenant, &name))
            .await
    }

    async fn account(&self, id: AccountId) -> Result<Option<AccountRecord>, StoreError> {
        Ok(
            get_decoded::<AccountV1>(&self.inner.accounts, &id.get().to_be_bytes())?.map(|a| {
                AccountRecord {
                    id,
                    tenant: TenantId::new(a.tenant),
                    name: a.name,
                }
            }),
        )
    }

    async fn account_by_name(
        &self,
        tenant: TenantId,
        name: &str,
    ) -> Result<Option<AccountRecord>, StoreError> {
        let key = codec::account_name_key(tenant.get(), name);
        let Some(id) = self.inner.account_names.get(key)? else {
            return Ok(None);
        };
        let id = AccountId::new(codec::decode_u64(codec::ACCOUNT_NAMES, &id)?);
        self.account(id).await
    }

    async fn create_enrolment_token(
        &self,
        account: AccountId,
        expires_at: u64,
        reusable: bool,
    ) -> Result<EnrolmentToken, StoreError> {
        self.blocking(move |s| s.create_enrolment_token(account, expires_at, reusable))
            .await
    }

    async fn redeem_enrolment(
        &self,
        token: &str,
        registration: DeviceRegistration,
        now: u64,
    ) -> Result<DeviceRecord, StoreError> {
        let token = zeroize::Zeroizing::new(token.to_owned());
        self.blocking(move |s| s.redeem_enrolment(&token, &registration, now))
            .await
    }

    async fn enrolment_token_account(
        &self,
        token: &str,
    ) -> Result<Option<(TenantId, AccountId)>, StoreError> {
        let Some(hash) = token::presented_hash(token) else {
            return Ok(None);
        };
        let Some(tok) = get_decoded::<TokenV1>(&self.inner.tokens, &hash)? else {
            return Ok(None);
        };
        if !token::hashes_match(&tok.hash, &hash) {
            return Ok(None);
        }
        Ok(Some((
            TenantId::new(tok.tenant),
            AccountId::new(tok.account),
        )))
    }

    async fn device(&self, device: DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        Ok(self
            .inner
            .device_v1(&device)?
            .map(|d| device_record(device, d)))
    }

    async fn touch_device(&self, device: DeviceId, now: u64) -> Result<DeviceRecord, StoreError> {
        let d = self
            .blocking(move |s| {
                s.update_device(device, |d| {
                    if d.revoked_at.is_some() {
                        return Err(StoreError::DeviceRevoked { device });
                    }
                    d.last_seen = d.last_seen.max(now);
                    Ok(())
                })
            })
            .await?;
        Ok(device_record(device, d))
    }

    async fn revoke_device(&self, device: DeviceId, now: u64) -> Result<DeviceRecord, StoreError> {
        let d = self.blocking(move |s| s.revoke_device(device, now)).await?;
        Ok(device_record(device, d))
    }

    async fn rename_device(
        &self,
        device: DeviceId,
        name: &str,
    ) -> Result<DeviceRecord, StoreError> {
        check_name("device name", name)?;
        let name = name.to_owned();
        let d = self
            .blocking(move |s| {
                let d = s.update_device(device, |d| {
                    d.name.clone_from(&name);
                    Ok(())
                })?;
                s.flush()?;
                Ok(d)
            })
            .await?;
        Ok(device_record(device, d))
    }

    async fn list_devices(&self, account: AccountId) -> Result<Vec<DeviceRecord>, StoreError> {
        self.blocking(move |s| s.list_devices(account)).await
    }

    async fn account_usage(&self, account: AccountId) -> Result<AccountUsage, StoreError> {
        self.blocking(move |s| s.account_usage(account)).await
    }

    async fn create_vault(
        &self,
        account: AccountId,
        vault: VaultId,
        now: u64,
    ) -> Result<VaultRecord, StoreError> {
        let (v, _created) = self
            .blocking(move |s| s.create_vault(account, vault, now))
            .await?;
        Ok(vault_record(vault, &v))
    }

    async fn vault(&self, vault: VaultId) -> Result<Option<VaultRecord>, StoreError> {
        Ok(
            get_decoded::<VaultV1>(&self.inner.vaults, vault.as_bytes())?
                .map(|v| vault_record(vault, &v)),
        )
    }

    async fn delete_account(
        &self,
        account: AccountId,
        now: u64,
    ) -> Result<Vec<VaultId>, StoreError> {
        self.blocking(move |s| s.delete_account(account, now)).await
    }

    async fn add_traffic(&self, batch: Vec<(TrafficKey, TrafficCounts)>) -> Result<(), StoreError> {
        self.blocking(move |s| s.add_traffic(&batch)).await
    }

    async fn traffic(
        &self,
        tenant: Option<TenantId>,
        hours: std::ops::Range<u64>,
    ) -> Result<Vec<(TrafficKey, TrafficCounts)>, StoreError> {
        self.blocking(move |s| s.traffic(tenant, hours)).await
    }

    async fn storage_hours(
        &self,
        tenant: Option<TenantId>,
        hours: std::ops::Range<u64>,
        now: u64,
    ) -> Result<Vec<StorageHour>, StoreError> {
        self.blocking(move |s| s.storage_hours(tenant, hours, now))
            .await
    }

    async fn storage_gauges(
        &self,
        tenant: Option<TenantId>,
    ) -> Result<Vec<VaultStorage>, StoreError> {
        self.blocking(move |s| s.storage_gauges(tenant)).await
    }

    async fn list_vaults(&self, account: AccountId) -> Result<Vec<VaultInfo>, StoreError> {
        self.blocking(move |s| s.list_vaults(account)).await
    }

    async fn missing_chunks(
        &self,
        vault: VaultId,
        chunks: &[ChunkId],
    ) -> Result<Vec<ChunkId>, StoreError> {
        let chunks = chunks.to_vec();
        self.blocking(move |s| s.missing_chunks(&vault, &chunks))
            .await
    }

    async fn record_chunk(
        &self,
        vault: VaultId,
        chunk: ChunkId,
        sealed_len: u64,
        blake3: [u8; 32],
        now: u64,
    ) -> Result<ChunkRecord, StoreError> {
        self.blocking(move |s| s.record_chunk(&vault, &chunk, sealed_len, blake3, now, &[]))
            .await
    }

    async fn record_chunk_metered(
        &self,
        vault: VaultId,
        chunk: ChunkId,
        sealed_len: u64,
        blake3: [u8; 32],
        now: u64,
        traffic: Vec<(TrafficKey, TrafficCounts)>,
    ) -> Result<ChunkRecord, StoreError> {
        let rows = traffic_rows(&traffic);
        self.blocking(move |s| s.record_chunk(&vault, &chunk, sealed_len, blake3, now, &rows))
            .await
    }

    async fn chunk(
        &self,
        vault: VaultId,
        chunk: ChunkId,
    ) -> Result<Option<ChunkRecord>, StoreError> {
        self.inner.vault_v1(&vault)?;
        self.inner.chunk_record(&vault, &chunk)
    }

    async fn chunks(
        &self,
        vault: VaultId,
        chunks: &[ChunkId],
    ) -> Result<Vec<Option<ChunkRecord>>, StoreError> {
        self.inner.vault_v1(&vault)?;
        chunks
            .iter()
            .map(|chunk| self.inner.chunk_record(&vault, chunk))
            .collect()
    }

    async fn all_vaults(&self) -> Result<Vec<VaultRecord>, StoreError> {
        self.blocking(|s| s.all_vaults()).await
    }

    async fn pending_chunks_before(
        &self,
        vault: VaultId,
        before: u64,
    ) -> Result<Vec<ChunkRecord>, StoreError> {
        self.blocking(move |s| s.pending_chunks_before(&vault, before))
            .await
    }

    async fn collect_pending_chunk(
        &self,
        vault: VaultId,
        chunk: ChunkId,
        since: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        self.blocking(move |s| s.collect_pending_chunk(&vault, &chunk, since, now))
            .await
    }

    async fn expire_versions(
        &self,
        vault: VaultId,
        superseded_before: u64,
    ) -> Result<u64, StoreError> {
        self.blocking(move |s| s.expire_versions(&vault, superseded_before))
            .await
    }

    async fn retained_chunks(&self, vault: VaultId) -> Result<HashSet<ChunkId>, StoreError> {
        self.blocking(move |s| s.retained_chunks(&vault)).await
    }

    async fn release_chunks(
        &self,
        vault: VaultId,
        keep: HashSet<ChunkId>,
        now: u64,
    ) -> Result<u64, StoreError> {
        self.blocking(move |s| s.release_chunks(&vault, &keep, now))
            .await
    }

    async fn keep_chunk(
        &self,
        vault: VaultId,
        chunk: ChunkId,
        since: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        self.blocking(move |s| s.keep_chunk(&vault, &chunk, since, now))
            .await
    }

    async fn relocate_packed_chunks(
        &self,
        vault: VaultId,
        old: PackId,
        new: PackId,
        new_len: u64,
        moves: Vec<(ChunkId, u64, u64)>,
        now: u64,
    ) -> Result<u64, StoreError> {
        self.blocking(move |s| s.relocate_packed_chunks(&vault, &old, &new, new_len, &moves, now))
            .await
    }

    async fn packs(&self, vault: VaultId) -> Result<Vec<PackInfo>, StoreError> {
        self.blocking(move |s| s.packs(&vault)).await
    }

    async fn delete_pack(&self, vault: VaultId, pack: PackId) -> Result<bool, StoreError> {
        self.blocking(move |s| s.delete_pack(&vault, &pack)).await
    }

    async fn record_packed_chunks(
        &self,
        vault: VaultId,
        pack: PackId,
        pack_len: u64,
        chunks: Vec<PackedChunk>,
        now: u64,
    ) -> Result<(), StoreError> {
        self.blocking(move |s| s.record_packed_chunks(&vault, &pack, pack_len, &chunks, now, &[]))
            .await
    }

    async fn record_packed_chunks_metered(
        &self,
        vault: VaultId,
        pack: PackId,
        pack_len: u64,
        chunks: Vec<PackedChunk>,
        now: u64,
        traffic: Vec<(TrafficKey, TrafficCounts)>,
    ) -> Result<(), StoreError> {
        let rows = traffic_rows(&traffic);
        self.blocking(move |s| s.record_packed_chunks(&vault, &pack, pack_len, &chunks, now, &rows))
            .await
    }

    async fn forget_chunk(
        &self,
        vault: VaultId,
        chunk: ChunkId,
        now: u64,
    ) -> Result<bool, StoreError> {
        self.blocking(move |s| s.forget_chunk(&vault, &chunk, now))
            .await
    }

    async fn commit(
        &self,
        vault: VaultId,
        device: DeviceId,
        entries: Vec<CommitEntry>,
        now: u64,
    ) -> Result<Vec<CommitResult>, StoreError> {
        if entries.is_empty() {
            self.inner.vault_v1(&vault)?;
            return Ok(Vec::new());
        }
        self.blocking(move |s| s.commit(&vault, &device, &entries, now))
            .await
    }

    async fn pull(&self, vault: VaultId, since: Seq, limit: u32) -> Result<ChangePage, StoreError> {
        self.blocking(move |s| s.pull(&vault, since, limit)).await
    }

    async fn history(
        &self,
        vault: VaultId,
        entry: EntryKey,
        limit: u32,
        before: Option<Seq>,
    ) -> Result<VersionPage, StoreError> {
        self.blocking(move |s| s.history(&vault, &entry, limit, before))
            .await
    }

    async fn head(&self, vault: VaultId) -> Result<Seq, StoreError> {
        Ok(Seq::new(self.inner.vault_v1(&vault)?.head_seq))
    }

    async fn entry_head(
        &self,
        vault: VaultId,
        entry: EntryKey,
    ) -> Result<Option<EntryHead>, StoreError> {
        self.inner.vault_v1(&vault)?;
        Ok(
            get_decoded::<HeadV1>(&self.inner.heads, &codec::head_key(&vault, &entry))?.map(|h| {
                EntryHead {
                    version: h.version,
                    seq: Seq::new(h.seq),
                }
            }),
        )
    }

    async fn put_envelope(
        &self,
        vault: VaultId,
        epoch: Epoch,
        recipient: DeviceId,
        sender: DeviceId,
        envelope: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.blocking(move |s| s.put_envelope(&vault, epoch, &recipient, &sender, &envelope, false))
            .await
    }

    async fn start_epoch(
        &self,
        vault: VaultId,
        epoch: Epoch,
        device: DeviceId,
        envelope: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.blocking(move |s| s.put_envelope(&vault, epoch, &device, &device, &envelope, true))
            .await
    }

    async fn rotations_due(&self, account: AccountId) -> Result<Vec<VaultId>, StoreError> {
        self.blocking(move |s| s.rotations_due(account)).await
    }

    async fn envelopes_for(
        &self,
        vault: VaultId,
        recipient: DeviceId,
    ) -> Result<Vec<EnvelopeInfo>, StoreError> {
        self.blocking(move |s| s.envelopes_for(&vault, &recipient))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::conformance_tests;
    use dooz_protocol::VersionId;

    conformance_tests!(SledStore::temporary().unwrap());

    const NOW: u64 = 1_700_000_000;

    fn registration(n: u8) -> DeviceRegistration {
        let identity_key = [n; 32];
        DeviceRegistration {
            device: DeviceId::from_bytes(*blake3::hash(&identity_key).as_bytes()),
            identity_key,
            exchange_key: [n.wrapping_add(100); 32],
            name: format!("device {n}"),
        }
    }

    fn entry(n: u8, parent: Option<VersionId>, version: u8, chunks: Vec<ChunkId>) -> CommitEntry {
        CommitEntry {
            entry: EntryKey::from_bytes([n; 32]),
            parent,
            version: VersionId::from_bytes([version; 16]),
            record: vec![version; 40],
            chunks,
            epoch: Epoch::new(2),
        }
    }

    /// A store with one device that committed three versions (seqs 1..=3) to `vault`.
    async fn populated(store: &SledStore) -> (AccountId, DeviceId, VaultId) {
        let t = store.create_tenant("t").await.unwrap();
        let a = store.create_account(t, "a").await.unwrap();
        let token = store
            .create_enrolment_token(a, NOW + 60, false)
            .await
            .unwrap();
        let device = store
            .redeem_enrolment(token.expose(), registration(1), NOW)
            .await
            .unwrap()
            .device;
        let vault = VaultId::from_bytes([9; 16]);
        store.create_vault(a, vault, NOW).await.unwrap();
        let c = ChunkId::from_bytes([5; 32]);
        store
            .record_chunk(vault, c, 64, [6; 32], NOW)
            .await
            .unwrap();
        let v1 = VersionId::from_bytes([1; 16]);
        let r = store
            .commit(
                vault,
                device,
                vec![
                    entry(1, None, 1, vec![c]),
                    entry(2, None, 2, vec![]),
                    entry(1, Some(v1), 3, vec![c]),
                ],
                NOW,
            )
            .await
            .unwrap();
        assert!(r.iter().all(|r| matches!(r, CommitResult::Applied { .. })));
        (a, device, vault)
    }

    #[tokio::test]
    async fn traffic_journal_batches_count_once_across_crashes() {
        use crate::store::{TrafficCounts, TrafficKey};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta");
        let tenant = TenantId::new(1);
        let key = TrafficKey {
            tenant,
            hour: 5,
            account: AccountId::new(2),
            vault: None,
            device: None,
        };
        let counts = |n| TrafficCounts {
            ingress_bytes: n,
            egress_bytes: 2 * n,
            requests: 1,
        };
        let total = |store: &SledStore| {
            let rows = store.inner.traffic(Some(tenant), 0..10).unwrap();
            assert!(rows.len() <= 1);
            rows.first().map(|(_, c)| *c).unwrap_or_default()
        };
        let store = SledStore::open(&path).unwrap();
        store.add_traffic(vec![(key, counts(10))]).await.unwrap();
        store.add_traffic(vec![(key, counts(5))]).await.unwrap();
        let journal = path.join(TRAFFIC_JOURNAL_FILE);
        let written = std::fs::read(&journal).unwrap();
        assert!(!written.is_empty(), "batches are journaled");
        // A crash: the process dies without a sled flush.
        drop(store);
        let store = SledStore::open(&path).unwrap();
        assert_eq!(
            total(&store),
            TrafficCounts {
                ingress_bytes: 15,
                egress_bytes: 30,
                requests: 2
            }
        );
        drop(store);

        // sled lost the last batch (its marker is one behind) while the journal has it, and a
        // torn record follows: the batch is applied once, the torn one not at all.
        let store = SledStore::open(&path).unwrap();
        let seq = codec::decode_u64(
            codec::META,
            &store.inner.meta.get(TRAFFIC_APPLIED_KEY).unwrap().unwrap(),
        )
        .unwrap();
        let lost = vec![(
            codec::traffic_key(1, 5, 2, None, None).to_vec(),
            TrafficV1 {
                ingress: 1,
                egress: 1,
                requests: 1,
            },
        )];
        let payload = postcard::to_stdvec(&(seq + 1, lost)).unwrap();
        let mut record = (payload.len() as u32).to_be_bytes().to_vec();
        record.extend_from_slice(&blake3::hash(&payload).as_bytes()[..8]);
        record.extend_from_slice(&payload);
        record.extend_from_slice(&[0, 0, 0, 40, 1, 2, 3]);
        drop(store);
        std::fs::write(&journal, &record).unwrap();
        let store = SledStore::open(&path).unwrap();
        assert_eq!(
            total(&store),
            TrafficCounts {
                ingress_bytes: 16,
                egress_bytes: 31,
                requests: 3
            }
        );
        drop(store);
        let store = SledStore::open(&path).unwrap();
        assert_eq!(
            total(&store).requests,
            3,
            "a replayed batch is not replayed again"
        );
        // New batches continue after the replayed one.
        store.add_traffic(vec![(key, counts(1))]).await.unwrap();
        assert_eq!(total(&store).requests, 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn usage_survives_reopen_and_is_rebuilt_for_old_stores() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta");
        let store = SledStore::open(&path).unwrap();
        let (account, _device, vault) = populated(&store).await;
        store
            .record_chunk(vault, ChunkId::from_bytes([8; 32]), 36, [1; 32], NOW)
            .await
            .unwrap();
        assert_eq!(
            store.account_usage(account).await.unwrap().stored_bytes,
            100
        );
        store.inner.flush().unwrap();
        drop(store);

        let store = SledStore::open(&path).unwrap();
        assert_eq!(
            store.account_usage(account).await.unwrap().stored_bytes,
            100
        );
        // A store written before the counters existed: no counters, no mark.
        store.raw_tree(codec::USAGE).clear().unwrap();
        store
            .raw_tree(codec::META)
            .remove(codec::USAGE_BUILT_KEY)
            .unwrap();
        store.inner.flush().unwrap();
        drop(store);

        let store = SledStore::open(&path).unwrap();
        assert_eq!(
            store.account_usage(account).await.unwrap().stored_bytes,
            100
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rotation_marks_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta");
        let store = SledStore::open(&path).unwrap();
        let (account, device, vault) = populated(&store).await;
        let token = store
            .create_enrolment_token(account, NOW + 60, false)
            .await
            .unwrap();
        store
            .redeem_enrolment(token.expose(), registration(2), NOW)
            .await
            .unwrap();
        store
            .revoke_device(registration(2).device, NOW + 1)
            .await
            .unwrap();
        drop(store);
        let store = SledStore::open(&path).unwrap();
        assert_eq!(store.rotations_due(account).await.unwrap(), vec![vault]);
        store
            .start_epoch(vault, Epoch::new(3), device, vec![1; 90])
            .await
            .unwrap();
        drop(store);
        let store = SledStore::open(&path).unwrap();
        assert!(store.rotations_due(account).await.unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reopen_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta");
        let store = SledStore::open(&path).unwrap();
        let (account, device, vault) = populated(&store).await;
        let used = store
            .create_enrolment_token(account, NOW + 60, false)
            .await
            .unwrap();
        store
            .redeem_enrolment(used.expose(), registration(2), NOW)
            .await
            .unwrap();
        let reusable = store
            .create_enrolment_token(account, NOW + 60, true)
            .await
            .unwrap();
        store
            .revoke_device(registration(2).device, NOW + 1)
            .await
            .unwrap();
        store
            .put_envelope(vault, Epoch::new(4), device, device, vec![7; 90])
            .await
            .unwrap();
        let before = store.pull(vault, Seq::ZERO, 0).await.unwrap();
        drop(store);

        let store = SledStore::open(&path).unwrap();
        let t = store.tenant_by_name("t").await.unwrap().unwrap();
        let a = store.account_by_name(t.id, "a").await.unwrap().unwrap();
        assert_eq!(a.id, account);
        // Counters go on: new ids are new.
        assert_ne!(store.create_tenant("t2").await.unwrap(), t.id);
        assert_ne!(store.create_account(t.id, "b").await.unwrap(), account);

        let d = store.device(device).await.unwrap().unwrap();
        assert_eq!((d.account, d.revoked_at), (account, None));
        assert!(
            store
                .device(registration(2).device)
                .await
                .unwrap()
                .unwrap()
                .is_revoked()
        );
        // Token state survives: the used one stays used, the reusable one still works.
        assert!(matches!(
            store
                .redeem_enrolment(used.expose(), registration(3), NOW)
                .await,
            Err(StoreError::TokenUsed)
        ));
        store
            .redeem_enrolment(reusable.expose(), registration(3), NOW)
            .await
            .unwrap();

        let v = store.vault(vault).await.unwrap().unwrap();
        assert_eq!(
            (v.account, v.head_seq, v.latest_epoch),
            (account, Seq::new(3), Epoch::new(4))
        );
        assert_eq!(store.list_vaults(account).await.unwrap(), vec![v.info()]);
        assert_eq!(store.pull(vault, Seq::ZERO, 0).await.unwrap(), before);
        let c = store
            .chunk(vault, ChunkId::from_bytes([5; 32]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.state, ChunkState::Committed { at: NOW });
        assert_eq!(
            store
                .entry_head(vault, EntryKey::from_bytes([1; 32]))
                .await
                .unwrap(),
            Some(EntryHead {
                version: VersionId::from_bytes([3; 16]),
                seq: Seq::new(3)
            })
        );
        assert_eq!(store.envelopes_for(vault, device).await.unwrap().len(), 1);
        // The log continues gap-free.
        let r = store
            .commit(vault, device, vec![entry(3, None, 4, vec![])], NOW)
            .await
            .unwrap();
        assert!(matches!(r[0], CommitResult::Applied { seq, .. } if seq == Seq::new(4)));
    }

    #[tokio::test]
    async fn corrupt_bytes_are_errors_not_panics() {
        let store = SledStore::temporary().unwrap();
        let (account, device, vault) = populated(&store).await;
        let corrupt = |r: Result<(), StoreError>, tree: &str| match r {
            Err(e @ StoreError::Corrupt { .. }) => {
                assert!(e.to_string().contains(tree), "{e}");
                assert_eq!(e.to_error_code(), dooz_protocol::ErrorCode::Internal);
                assert!(!e.is_retryable());
            }
            other => panic!("expected Corrupt in {tree}, got {other:?}"),
        };

        store
            .raw_tree(codec::LOG)
            .insert(codec::log_key(&vault, Seq::new(2)), &[1, 0xff, 0xff][..])
            .unwrap();
        corrupt(store.pull(vault, Seq::ZERO, 0).await.map(drop), codec::LOG);
        corrupt(
            store
                .history(vault, EntryKey::from_bytes([2; 32]), 0, None)
                .await
                .map(drop),
            codec::LOG,
        );
        // Pages that do not reach the damage still read.
        assert_eq!(
            store
                .pull(vault, Seq::new(2), 0)
                .await
                .unwrap()
                .changes
                .len(),
            1
        );

        store
            .raw_tree(codec::DEVICES)
            .insert(device.as_bytes(), &[7u8][..])
            .unwrap();
        corrupt(store.device(device).await.map(drop), codec::DEVICES);
        corrupt(
            store.touch_device(device, NOW).await.map(drop),
            codec::DEVICES,
        );

        let heads = store.raw_tree(codec::HEADS);
        heads
            .insert(
                codec::head_key(&vault, &EntryKey::from_bytes([2; 32])),
                &[][..],
            )
            .unwrap();
        corrupt(
            store
                .commit(vault, device, vec![entry(2, None, 8, vec![])], NOW)
                .await
                .map(drop),
            codec::HEADS,
        );

        store
            .raw_tree(codec::VAULTS)
            .insert(vault.as_bytes(), &[1, 1][..])
            .unwrap();
        corrupt(store.head(vault).await.map(drop), codec::VAULTS);
        corrupt(
            store
                .commit(vault, device, vec![entry(9, None, 9, vec![])], NOW)
                .await
                .map(drop),
            codec::VAULTS,
        );
        corrupt(store.list_vaults(account).await.map(drop), codec::VAULTS);
    }

    #[tokio::test]
    async fn corrupt_envelopes_and_chunks_are_errors() {
        let store = SledStore::temporary().unwrap();
        let (_account, device, vault) = populated(&store).await;
        store
            .raw_tree(codec::ENVELOPES)
            .insert(&codec::envelope_prefix(&vault, &device)[..], &[1][..])
            .unwrap();
        assert!(matches!(
            store.envelopes_for(vault, device).await,
            Err(StoreError::Corrupt {
                tree: codec::ENVELOPES,
                ..
            })
        ));
        let c = ChunkId::from_bytes([5; 32]);
        store
            .raw_tree(codec::CHUNKS)
            .insert(codec::chunk_key(&vault, &c), &[1, 2][..])
            .unwrap();
        assert!(matches!(
            store.chunk(vault, c).await,
            Err(StoreError::Corrupt {
                tree: codec::CHUNKS,
                ..
            })
        ));
        assert!(matches!(
            store.record_chunk(vault, c, 1, [0; 32], NOW).await,
            Err(StoreError::Corrupt {
                tree: codec::CHUNKS,
                ..
            })
        ));
        assert!(matches!(
            store
                .commit(vault, device, vec![entry(7, None, 7, vec![c])], NOW)
                .await,
            Err(StoreError::Corrupt {
                tree: codec::CHUNKS,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn pull_stops_at_a_gap_of_a_commit_in_flight() {
        let store = SledStore::temporary().unwrap();
        let (_account, _device, vault) = populated(&store).await;
        // What a reader can see while seq 2 of a commit is not applied yet.
        let log = store.raw_tree(codec::LOG);
        let two = log
            .remove(codec::log_key(&vault, Seq::new(2)))
            .unwrap()
            .unwrap();
        let page = store.pull(vault, Seq::ZERO, 0).await.unwrap();
        assert_eq!(page.changes.len(), 1);
        assert_eq!((page.next, page.more), (Seq::new(1), true));
        log.insert(codec::log_key(&vault, Seq::new(2)), two)
            .unwrap();
        let page = store.pull(vault, Seq::ZERO, 0).await.unwrap();
        assert_eq!((page.changes.len(), page.more), (3, false));
    }

    #[test]
    fn damaged_or_newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta");
        drop(SledStore::open(&path).unwrap());
        {
            let db = sled::open(&path).unwrap();
            let meta = db.open_tree(codec::META).unwrap();
            meta.insert(codec::FORMAT_KEY, &2u32.to_be_bytes()).unwrap();
            db.flush().unwrap();
        }
        match SledStore::open(&path) {
            Err(StoreError::IncompatibleFormat {
                found: 2,
                supported: 1,
            }) => {}
            other => panic!("expected IncompatibleFormat, got {other:?}"),
        }
        {
            let db = sled::open(&path).unwrap();
            let meta = db.open_tree(codec::META).unwrap();
            meta.insert(codec::FORMAT_KEY, &[1u8, 2, 3][..]).unwrap();
            db.flush().unwrap();
        }
        assert!(matches!(
            SledStore::open(&path),
            Err(StoreError::Corrupt {
                tree: codec::META,
                ..
            })
        ));
    }
}
