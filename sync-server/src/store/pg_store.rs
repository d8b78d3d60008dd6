//! [`PgStore`]: the metadata store on PostgreSQL, for several server instances sharing one
//! database (docs/SCALE-OUT.md).
//!
//! Layout: `pg_schema.sql` (migration 1), one table per sled tree. Every write is one
//! transaction at READ COMMITTED; what must be serialised takes a row lock first:
//! - a commit locks its vault's row (`SELECT … FOR UPDATE`), reads the entry heads, and moves
//!   the head seq with `UPDATE … WHERE head_seq = <read>` (compare-and-swap), so seqs stay
//!   gap-free whichever instance commits;
//! - chunk records, the account's stored bytes and the vault's storage gauge change together,
//!   the gauge row locked;
//! - traffic counters are added with `INSERT … ON CONFLICT DO UPDATE SET n = n + excluded.n`,
//!   rows in key order (no deadlock between two batches), and are durable when the
//!   transaction's commit returns (`synchronous_commit` on, PostgreSQL's default).
//!
//! A transaction that PostgreSQL aborts as a deadlock or serialization failure runs again, a few
//! times. Commits and revocations are announced to every instance with `NOTIFY` in the same
//! transaction ([`PgStore::events`]).
//!
//! Values: every u64 is a BIGINT holding the same 64 bits (times and seqs stay below 2^63, so
//! SQL orders them right); byte-seconds (u128) are NUMERIC.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use dooz_protocol::limits::{MAX_ENVELOPE_LEN, MAX_ENVELOPES, MAX_HISTORY_PAGE, MAX_PULL_PAGE};
use dooz_protocol::{
    Change, ChunkId, CommitEntry, CommitResult, DeviceId, EntryKey, EnvelopeInfo, Epoch, Seq,
    VaultId, VaultInfo, VersionId,
};
use tokio::sync::broadcast;
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;

use crate::store::api::{
    AccountId, AccountRecord, AccountUsage, ChangePage, ChunkLocation, ChunkRecord, ChunkState,
    DeviceRecord, DeviceRegistration, EntryHead, HOUR_SECS, MAX_PAGE_BYTES, MetaStore, PackId,
    PackInfo, PackedChunk, StorageHour, StoreEvent, TenantId, TenantRecord, TrafficCounts,
    TrafficKey, VaultRecord, VaultStorage, VersionPage, change_size_bound, check_name, hour_spans,
    page_limit,
};
use crate::store::error::StoreError;
use crate::store::token::{self, EnrolmentToken};

/// The schema version this build writes and reads.
pub const PG_SCHEMA_VERSION: i64 = 1;

/// The migrations, in order: `MIGRATIONS[n]` takes the schema from version `n` to `n + 1`.
const MIGRATIONS: &[&str] = &[include_str!("pg_schema.sql")];

/// Advisory lock key that serialises migrations of one database (any constant will do).
const MIGRATION_LOCK: i64 = 0x646f_6f7a_5f6d_6967;

/// The channel commits and revocations are announced on is this followed by a hash of the
/// schema's name (NOTIFY channels are per database; stores in two schemas stay apart).
const EVENTS_CHANNEL: &str = "dooz_events";

/// Times a transaction runs when PostgreSQL aborts it as a deadlock or serialization failure.
const TX_ATTEMPTS: u32 = 10;

/// How often the event listener checks that its connection answers (and how long it waits).
const HEARTBEAT: Duration = Duration::from_secs(10);

/// Events buffered for slow subscribers of [`PgStore::events`].
const EVENTS_CAPACITY: usize = 4096;

/// Connections the pool keeps at most, by default.
pub const DEFAULT_POOL_SIZE: usize = 32;

const BACKEND: &str = "postgres";

/// The PostgreSQL metadata store. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// The NOTIFY channel of this store's schema.
    channel: Arc<str>,
    events: broadcast::Sender<StoreEvent>,
    /// Stops the listener task when the last handle goes.
    _listener: Arc<ListenerGuard>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

struct ListenerGuard(tokio_util::sync::CancellationToken);

impl Drop for ListenerGuard {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A failure inside a transaction: the store's own, or PostgreSQL's (which may mean "run the
/// transaction again").
#[derive(Debug)]
enum TxError {
    Store(StoreError),
    Pg(tokio_postgres::Error),
}

impl From<StoreError> for TxError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl From<tokio_postgres::Error> for TxError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Pg(e)
    }
}

impl From<TxError> for StoreError {
    fn from(e: TxError) -> Self {
        match e {
            TxError::Store(e) => e,
            TxError::Pg(e) => pg_error(e),
        }
    }
}

/// A PostgreSQL error as a store error; connection trouble and aborted transactions are
/// retryable.
fn pg_error(e: tokio_postgres::Error) -> StoreError {
    let retryable = match e.code() {
        Some(code) => {
            let c = code.code();
            c.starts_with("08") // connection exception
                || c.starts_with("40") // transaction rollback (serialization, deadlock)
                || c.starts_with("53") // insufficient resources (too many connections)
                || c.starts_with("55P03") // lock not available (lock_timeout)
                || c.starts_with("57") // operator intervention (shutdown, statement timeout)
        }
        // No SQL state: a lost connection or an I/O error is transient; a row that does not
        // convert is not.
        None => {
            e.is_closed()
                || std::error::Error::source(&e)
                    .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some())
        }
    };
    StoreError::Backend {
        backend: BACKEND,
        retryable,
        source: Box::new(e),
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Backend {
        backend: BACKEND,
        retryable: true,
        source: Box::new(e),
    }
}

/// Whether PostgreSQL aborted the transaction so that running it again may succeed.
fn is_conflict(e: &TxError) -> bool {
    matches!(e, TxError::Pg(e) if pg_conflict(e))
}

/// Whether the error is a deadlock or serialization failure.
fn pg_conflict(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
            || *c == tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED
    })
}

fn is_unique_violation(e: &TxError) -> bool {
    matches!(e, TxError::Pg(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION))
}

/// Runs `$body` (which may use `?` on store and PostgreSQL errors, and names the transaction
/// `$tx`) in a transaction, again when PostgreSQL aborts it as a deadlock or serialization
/// failure; evaluates to `Result<T, TxError>`.
macro_rules! in_tx {
    ($store:expr, |$tx:ident| $body:block) => {{
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut client = $store.client().await?;
            let outcome: Result<_, TxError> = async {
                let $tx = client.transaction().await?;
                let value = $body;
                $tx.commit().await?;
                Ok(value)
            }
            .await;
            match outcome {
                Err(e) if attempt < TX_ATTEMPTS && is_conflict(&e) => {
                    tokio::time::sleep(Duration::from_millis(u64::from(attempt) * 2)).await;
                }
                other => break other,
            }
        }
    }};
}

// ---------------------------------------------------------------------------------------------
// Statements in a transaction, prepared once per connection (each statement is then one round
// trip instead of two)

async fn exec(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, tokio_postgres::Error> {
    let statement = tx.prepare_cached(sql).await?;
    tx.execute(&statement, params).await
}

async fn query_rows(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    let statement = tx.prepare_cached(sql).await?;
    tx.query(&statement, params).await
}

async fn row_opt(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<tokio_postgres::Row>, tokio_postgres::Error> {
    let statement = tx.prepare_cached(sql).await?;
    tx.query_opt(&statement, params).await
}

async fn row_one(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<tokio_postgres::Row, tokio_postgres::Error> {
    let statement = tx.prepare_cached(sql).await?;
    tx.query_one(&statement, params).await
}

// ---------------------------------------------------------------------------------------------
// Value conversions

/// A u64 as the BIGINT holding its bits.
#[allow(clippy::cast_possible_wrap)]
const fn b(x: u64) -> i64 {
    x as i64
}

/// A BIGINT back to the u64 it holds.
#[allow(clippy::cast_sign_loss)]
const fn u(x: i64) -> u64 {
    x as u64
}

/// A u64 bound for a comparison in SQL: values past i64::MAX compare as i64::MAX.
fn bound(x: u64) -> i64 {
    i64::try_from(x).unwrap_or(i64::MAX)
}

fn fixed<const N: usize>(bytes: &[u8], what: &'static str) -> Result<[u8; N], StoreError> {
    <[u8; N]>::try_from(bytes).map_err(|_| {
        StoreError::corrupt(what, format!("a value is {} bytes, not {N}", bytes.len()))
    })
}

fn chunk_list(bytes: &[u8]) -> Result<Vec<ChunkId>, StoreError> {
    if !bytes.len().is_multiple_of(32) {
        return Err(StoreError::corrupt("log", "a chunk list is not whole ids"));
    }
    bytes
        .chunks_exact(32)
        .map(|c| fixed(c, "log").map(ChunkId::from_bytes))
        .collect()
}

fn chunk_bytes(chunks: &[ChunkId]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunks.len() * 32);
    for c in chunks {
        out.extend_from_slice(c.as_bytes());
    }
    out
}

fn vault_not_found(vault: &VaultId) -> StoreError {
    StoreError::not_found(format!("vault {vault}"))
}

const DEVICE_COLUMNS: &str =
    "device, tenant, account, identity_key, exchange_key, name, revoked_at, created_at, last_seen";

fn device_row(row: &tokio_postgres::Row) -> Result<DeviceRecord, TxError> {
    let device: Vec<u8> = row.try_get(0)?;
    let identity: Vec<u8> = row.try_get(3)?;
    let exchange: Vec<u8> = row.try_get(4)?;
    let revoked: Option<i64> = row.try_get(6)?;
    Ok(DeviceRecord {
        device: DeviceId::from_bytes(fixed(&device, "devices")?),
        tenant: TenantId::new(u(row.try_get(1)?)),
        account: AccountId::new(u(row.try_get(2)?)),
        identity_key: fixed(&identity, "devices")?,
        exchange_key: fixed(&exchange, "devices")?,
        name: row.try_get(5)?,
        revoked_at: revoked.map(u),
        created_at: u(row.try_get(7)?),
        last_seen: u(row.try_get(8)?),
    })
}

const VAULT_COLUMNS: &str = "vault, tenant, account, created_at, head_seq, latest_epoch";

fn vault_row(row: &tokio_postgres::Row) -> Result<VaultRecord, TxError> {
    let vault: Vec<u8> = row.try_get(0)?;
    let epoch: i64 = row.try_get(5)?;
    Ok(VaultRecord {
        vault: VaultId::from_bytes(fixed(&vault, "vaults")?),
        tenant: TenantId::new(u(row.try_get(1)?)),
        account: AccountId::new(u(row.try_get(2)?)),
        created_at: u(row.try_get(3)?),
        head_seq: Seq::new(u(row.try_get(4)?)),
        latest_epoch: Epoch::new(
            u32::try_from(epoch)
                .map_err(|_| StoreError::corrupt("vaults", "an epoch is not u32"))?,
        ),
    })
}

const CHUNK_COLUMNS: &str =
    "chunk, sealed_len, blake3, pending_since, committed_at, pack, pack_offset";

fn chunk_row(row: &tokio_postgres::Row) -> Result<ChunkRecord, TxError> {
    let chunk: Vec<u8> = row.try_get(0)?;
    let blake3: Vec<u8> = row.try_get(2)?;
    let pending: Option<i64> = row.try_get(3)?;
    let committed: Option<i64> = row.try_get(4)?;
    let pack: Option<Vec<u8>> = row.try_get(5)?;
    let offset: Option<i64> = row.try_get(6)?;
    let state = match (pending, committed) {
        (Some(since), _) => ChunkState::Pending { since: u(since) },
        (None, Some(at)) => ChunkState::Committed { at: u(at) },
        (None, None) => return Err(StoreError::corrupt("chunks", "a chunk has no state").into()),
    };
    let location = match (pack, offset) {
        (Some(pack), Some(offset)) => ChunkLocation::Packed {
            pack: PackId::from_bytes(fixed(&pack, "chunks")?),
            offset: u(offset),
        },
        _ => ChunkLocation::Blob,
    };
    Ok(ChunkRecord {
        chunk: ChunkId::from_bytes(fixed(&chunk, "chunks")?),
        sealed_len: u(row.try_get(1)?),
        blake3: fixed(&blake3, "chunks")?,
        state,
        location,
    })
}

const LOG_COLUMNS: &str = "seq, entry, version, parent, record, chunks, epoch, device";

fn change_row(row: &tokio_postgres::Row) -> Result<Change, TxError> {
    let entry: Vec<u8> = row.try_get(1)?;
    let version: Vec<u8> = row.try_get(2)?;
    let parent: Option<Vec<u8>> = row.try_get(3)?;
    let chunks: Vec<u8> = row.try_get(5)?;
    let epoch: i64 = row.try_get(6)?;
    let device: Vec<u8> = row.try_get(7)?;
    Ok(Change {
        seq: Seq::new(u(row.try_get(0)?)),
        entry: EntryKey::from_bytes(fixed(&entry, "log")?),
        version: VersionId::from_bytes(fixed(&version, "log")?),
        parent: parent
            .map(|p| fixed(&p, "log").map(VersionId::from_bytes))
            .transpose()?,
        record: row.try_get(4)?,
        chunks: chunk_list(&chunks)?,
        epoch: Epoch::new(
            u32::try_from(epoch).map_err(|_| StoreError::corrupt("log", "an epoch is not u32"))?,
        ),
        device: DeviceId::from_bytes(fixed(&device, "log")?),
    })
}

/// What a change of stored bytes is about.
#[derive(Clone, Copy)]
struct StoredAt<'a> {
    tenant: u64,
    account: u64,
    vault: &'a VaultId,
    now: u64,
}

// ---------------------------------------------------------------------------------------------
// Opening

impl PgStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db`; a
    /// `options=-csearch_path%3Dschema` parameter puts the tables in a schema), applies the
    /// migrations this build has that the database lacks, and starts listening for other
    /// instances' events. `pool_size` connections at most.
    pub async fn connect(url: &str, pool_size: usize) -> Result<Self, StoreError> {
        let config =
            tokio_postgres::Config::from_str(url).map_err(|e| StoreError::InvalidInput {
                what: "PostgreSQL URL",
                reason: e.to_string(),
            })?;
        Self::connect_config(config, pool_size).await
    }

    /// [`connect`](Self::connect) to the tables in `schema` of the database at `url`, creating
    /// the schema if it does not exist (several deployments, or tests, in one database).
    pub async fn connect_schema(
        url: &str,
        schema: &str,
        pool_size: usize,
    ) -> Result<Self, StoreError> {
        let valid = !schema.is_empty()
            && schema.len() <= 63
            && schema
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_');
        if !valid {
            return Err(StoreError::InvalidInput {
                what: "PostgreSQL schema",
                reason: format!("{schema:?} is not 1 to 63 lowercase letters, digits or `_`"),
            });
        }
        let mut config =
            tokio_postgres::Config::from_str(url).map_err(|e| StoreError::InvalidInput {
                what: "PostgreSQL URL",
                reason: e.to_string(),
            })?;
        let (client, connection) = config.connect(NoTls).await.map_err(pg_error)?;
        let driver = tokio::spawn(connection);
        let created = client
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .await;
        drop(client);
        let _ = driver.await;
        match created {
            Ok(()) => {}
            // Two connections creating it at once: one of them loses, and it exists.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {}
            Err(e) => return Err(pg_error(e)),
        }
        config.options(format!("-c search_path={schema}"));
        Self::connect_config(config, pool_size).await
    }

    /// [`connect`](Self::connect) with a parsed configuration.
    pub async fn connect_config(
        config: tokio_postgres::Config,
        pool_size: usize,
    ) -> Result<Self, StoreError> {
        let mut config = config;
        // Fail fast on an unreachable database, notice a dead peer within about a minute, and
        // let PostgreSQL end a session that sits in a transaction (an instance frozen mid-commit
        // holding a vault's row lock) or waits too long for a lock.
        config.connect_timeout(Duration::from_secs(5));
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(15));
        config.keepalives_interval(Duration::from_secs(5));
        config.keepalives_retries(3);
        let session = "-c idle_in_transaction_session_timeout=60s -c lock_timeout=30s";
        let options = match config.get_options() {
            Some(given) if !given.is_empty() => format!("{given} {session}"),
            _ => session.to_owned(),
        };
        config.options(options);
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(2))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| StoreError::Unavailable {
                reason: format!("could not build the PostgreSQL pool: {e}"),
            })?;
        let schema = migrate(&pool).await?;
        // An identifier of at most 63 bytes whatever the schema's name.
        let hash = blake3::hash(schema.as_bytes());
        let channel: Arc<str> = format!(
            "{EVENTS_CHANNEL}_{}",
            hex(hash.as_bytes().get(..8).unwrap_or_default())
        )
        .into();
        let (events, _) = broadcast::channel(EVENTS_CAPACITY);
        let cancel = tokio_util::sync::CancellationToken::new();
        // The first LISTEN is in place before `connect` returns, so no event after it is missed.
        let listening = listen(config, channel.to_string(), events.clone(), cancel.clone()).await?;
        tokio::spawn(listening);
        Ok(Self {
            pool,
            channel,
            events,
            _listener: Arc::new(ListenerGuard(cancel)),
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Runs a read-only statement outside a transaction.
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await.map_err(pg_error)?;
        client.query(&statement, params).await.map_err(pg_error)
    }

    async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<tokio_postgres::Row>, StoreError> {
        Ok(self.query(sql, params).await?.into_iter().next())
    }

    async fn vault_or_not_found(&self, vault: &VaultId) -> Result<VaultRecord, StoreError> {
        let row = self
            .query_opt(
                &format!("SELECT {VAULT_COLUMNS} FROM vaults WHERE vault = $1"),
                &[&vault.as_bytes().as_slice()],
            )
            .await?
            .ok_or_else(|| vault_not_found(vault))?;
        Ok(vault_row(&row)?)
    }

    async fn account_exists(&self, account: AccountId) -> Result<(), StoreError> {
        let found = self
            .query_opt("SELECT 1 FROM accounts WHERE id = $1", &[&b(account.get())])
            .await?;
        match found {
            Some(_) => Ok(()),
            None => Err(StoreError::not_found(format!("account {account}"))),
        }
    }

    /// Whether every table of the store is empty (a migration's target must be).
    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        let any: Vec<String> = crate::store::migrate::TABLES
            .iter()
            .map(|t| format!("(SELECT 1 FROM {} LIMIT 1)", t.name))
            .collect();
        Ok(self
            .query_opt(&any.join(" UNION ALL "), &[])
            .await?
            .is_none())
    }
}

impl PgStore {
    /// Inserts the rows `rows` brings into `table`, in one transaction (for
    /// `store::migrate`); `progress` hears the rows inserted so far.
    pub(crate) async fn import_table(
        &self,
        table: &crate::store::migrate::Table,
        rows: &mut tokio::sync::mpsc::Receiver<crate::store::migrate::Batch>,
        progress: &(dyn Fn(&str, u64) + Send + Sync),
    ) -> Result<(), StoreError> {
        use crate::store::migrate::{Kind, Value};
        let columns: Vec<&str> = table.columns.iter().map(|c| c.0).collect();
        let placeholders: Vec<String> = table
            .columns
            .iter()
            .enumerate()
            .map(|(i, (_, kind))| match kind {
                Kind::Numeric => format!("${}::text::numeric", i + 1),
                _ => format!("${}", i + 1),
            })
            .collect();
        let sql = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            table.name,
            columns.join(", "),
            placeholders.join(", ")
        );
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let statement = tx.prepare(&sql).await.map_err(pg_error)?;
        let mut done = 0u64;
        progress(table.name, 0);
        let mut complete = false;
        while let Some(batch) = rows.recv().await {
            let batch = match batch {
                crate::store::migrate::Batch::Rows(batch) => batch,
                crate::store::migrate::Batch::Done => {
                    complete = true;
                    break;
                }
            };
            // The batch's inserts are pipelined on the connection.
            let inserts = batch.iter().map(|row| {
                let params: Vec<&(dyn ToSql + Sync)> = row
                    .iter()
                    .map(|v| -> &(dyn ToSql + Sync) {
                        match v {
                            Value::Int(x) => x,
                            Value::Bytes(x) => x,
                            Value::Text(x) | Value::Numeric(x) => x,
                            Value::Bool(x) => x,
                        }
                    })
                    .collect();
                let tx = &tx;
                let statement = &statement;
                async move { tx.execute(statement, &params).await }
            });
            futures::future::try_join_all(inserts)
                .await
                .map_err(pg_error)?;
            done += batch.len() as u64;
            progress(table.name, done);
        }
        if !complete {
            // The export failed: nothing of the table is kept (the transaction rolls back).
            return Err(StoreError::Unavailable {
                reason: format!("the export of {} stopped before its end", table.name),
            });
        }
        tx.commit().await.map_err(pg_error)
    }

    /// Counts and checksums `table` as `store::migrate` does for what sled exported.
    pub(crate) async fn table_sum(
        &self,
        table: &crate::store::migrate::Table,
    ) -> Result<crate::store::migrate::TableSum, StoreError> {
        use crate::store::migrate::{Kind, TableSum, Value};
        use futures::TryStreamExt as _;
        let columns: Vec<String> = table
            .columns
            .iter()
            .map(|(name, kind)| match kind {
                Kind::Numeric => format!("{name}::text"),
                _ => (*name).to_owned(),
            })
            .collect();
        let client = self.client().await?;
        let statement = client
            .prepare(&format!(
                "SELECT {} FROM {}",
                columns.join(", "),
                table.name
            ))
            .await
            .map_err(pg_error)?;
        let stream = client
            .query_raw(&statement, std::iter::empty::<&dyn ToSql>())
            .await
            .map_err(pg_error)?;
        futures::pin_mut!(stream);
        let mut sum = TableSum::default();
        while let Some(row) = stream.try_next().await.map_err(pg_error)? {
            let mut values = Vec::with_capacity(table.columns.len());
            for (i, (_, kind)) in table.columns.iter().enumerate() {
                let value = match kind {
                    Kind::Int => Value::Int(row.try_get(i).map_err(pg_error)?),
                    Kind::Bytes => Value::Bytes(row.try_get(i).map_err(pg_error)?),
                    Kind::Text => Value::Text(row.try_get(i).map_err(pg_error)?),
                    Kind::Bool => Value::Bool(row.try_get(i).map_err(pg_error)?),
                    Kind::Numeric => Value::Numeric(row.try_get(i).map_err(pg_error)?),
                };
                values.push(value);
            }
            sum.add(&values);
        }
        Ok(sum)
    }

    /// Moves the tenant and account id sequences past the ids a migration inserted and past
    /// `tenants` and `accounts` (the last ids the old store handed out, deleted ones included,
    /// whose traffic rows may still name them).
    pub(crate) async fn reset_id_sequences(
        &self,
        tenants: u64,
        accounts: u64,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        for (table, floor) in [("tenants", tenants), ("accounts", accounts)] {
            client
                .execute(
                    &format!(
                        "SELECT setval(pg_get_serial_sequence('{table}', 'id'), \
                         GREATEST(COALESCE(max(id), 0), $1, 1), \
                         GREATEST(COALESCE(max(id), 0), $1) > 0) FROM {table}"
                    ),
                    &[&bound(floor)],
                )
                .await
                .map_err(pg_error)?;
        }
        Ok(())
    }
}

/// Applies the migrations the database lacks, under an advisory lock so that instances
/// starting together migrate once. Returns the schema the tables are in.
async fn migrate(pool: &Pool) -> Result<String, StoreError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(pg_error)?;
    exec(&tx, "SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_error)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS dooz_schema (version BIGINT NOT NULL)")
        .await
        .map_err(pg_error)?;
    let found: i64 = match row_opt(&tx, "SELECT version FROM dooz_schema", &[])
        .await
        .map_err(pg_error)?
    {
        Some(row) => row.try_get(0).map_err(pg_error)?,
        None => {
            exec(&tx, "INSERT INTO dooz_schema (version) VALUES (0)", &[])
                .await
                .map_err(pg_error)?;
            0
        }
    };
    if found > PG_SCHEMA_VERSION {
        return Err(StoreError::IncompatibleFormat {
            found: u32::try_from(found).unwrap_or(u32::MAX),
            supported: u32::try_from(PG_SCHEMA_VERSION).unwrap_or(u32::MAX),
        });
    }
    let from = usize::try_from(found).unwrap_or(0);
    for (n, sql) in MIGRATIONS.iter().enumerate().skip(from) {
        tx.batch_execute(sql).await.map_err(pg_error)?;
        let version = i64::try_from(n + 1).unwrap_or(i64::MAX);
        exec(&tx, "UPDATE dooz_schema SET version = $1", &[&version])
            .await
            .map_err(pg_error)?;
        tracing::info!(version, "PostgreSQL schema migrated");
    }
    let schema: String = row_one(&tx, "SELECT current_schema()", &[])
        .await
        .map_err(pg_error)?
        .try_get(0)
        .map_err(pg_error)?;
    tx.commit().await.map_err(pg_error)?;
    Ok(schema)
}

/// A dedicated connection that `LISTEN`s on `channel`: the client (dropping it ends the
/// connection), the notification payloads, and the task that drives the connection.
async fn subscribe(
    config: &tokio_postgres::Config,
    channel: &str,
) -> Result<
    (
        tokio_postgres::Client,
        tokio::sync::mpsc::UnboundedReceiver<String>,
        tokio::task::JoinHandle<()>,
    ),
    StoreError,
> {
    let (client, mut connection) = config.connect(NoTls).await.map_err(pg_error)?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    // The connection must be polled for `LISTEN` to complete: drive it in its own task and
    // take its notifications from the channel.
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = futures::StreamExt::next(&mut messages).await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_owned()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "PostgreSQL event listener lost its connection");
                    return;
                }
            }
        }
    });
    if let Err(e) = client.batch_execute(&format!("LISTEN {channel}")).await {
        driver.abort();
        return Err(pg_error(e));
    }
    Ok((client, rx, driver))
}

/// Listens on `channel` and returns the task that forwards events into `events`, reconnecting
/// with back-off until `cancel`. The first `LISTEN` is in place when this returns, so no event
/// committed after it is missed; after a reconnection the task sends [`StoreEvent::Lagged`]
/// (events may have been missed meanwhile).
async fn listen(
    config: tokio_postgres::Config,
    channel: String,
    events: broadcast::Sender<StoreEvent>,
    cancel: tokio_util::sync::CancellationToken,
) -> Result<impl std::future::Future<Output = ()> + Send + 'static, StoreError> {
    let first = subscribe(&config, &channel).await?;
    Ok(async move {
        let mut current = Some(first);
        let mut backoff = Duration::from_millis(100);
        loop {
            let (client, mut rx, driver) = match current.take() {
                Some(listening) => listening,
                None => {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    match subscribe(&config, &channel).await {
                        Ok(listening) => {
                            backoff = Duration::from_millis(100);
                            let _ = events.send(StoreEvent::Lagged);
                            listening
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "PostgreSQL event listener: reconnecting");
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                            continue;
                        }
                    }
                }
            };
            // A silent connection (a NAT that forgot it, a database that failed over without
            // a reset) is found by a heartbeat, and replaced.
            let mut heartbeat = tokio::time::interval(HEARTBEAT);
            heartbeat.tick().await;
            loop {
                tokio::select! {
                    () = cancel.cancelled() => {
                        driver.abort();
                        return;
                    }
                    _ = heartbeat.tick() => {
                        let alive = tokio::time::timeout(HEARTBEAT, client.simple_query("SELECT 1")).await;
                        if !matches!(alive, Ok(Ok(_))) {
                            tracing::warn!("PostgreSQL event listener: no answer to its heartbeat; reconnecting");
                            driver.abort();
                            break;
                        }
                    }
                    payload = rx.recv() => match payload {
                        Some(payload) => match parse_event(&payload) {
                            Some(event) => { let _ = events.send(event); }
                            None => tracing::warn!(payload, "unknown PostgreSQL event"),
                        },
                        None => break,
                    },
                }
            }
            drop(client);
        }
    })
}

/// An event's payload: `c <vault hex> <seq>` or `r <device hex>`.
fn parse_event(payload: &str) -> Option<StoreEvent> {
    let mut parts = payload.split(' ');
    match (parts.next()?, parts.next()?, parts.next()) {
        ("c", vault, Some(seq)) => Some(StoreEvent::Changed {
            vault: VaultId::from_bytes(hex_bytes(vault)?),
            seq: Seq::new(seq.parse().ok()?),
        }),
        ("r", device, None) => Some(StoreEvent::Revoked {
            device: DeviceId::from_bytes(hex_bytes(device)?),
        }),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

fn hex_bytes<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// Shared pieces of transactions

/// Adds `new` and takes `old` bytes from the account's stored bytes and the vault's gauge.
async fn adjust_usage(
    tx: &deadpool_postgres::Transaction<'_>,
    at: StoredAt<'_>,
    old: u64,
    new: u64,
) -> Result<(), TxError> {
    exec(
        tx,
        "UPDATE accounts SET stored_bytes = GREATEST(stored_bytes - $2, 0) + $3 WHERE id = $1",
        &[&b(at.account), &b(old), &b(new)],
    )
    .await?;
    set_gauge(tx, at, |stored| {
        stored.saturating_sub(old).saturating_add(new)
    })
    .await
}

/// Moves a vault's gauge to `change(stored)` at `at.now`, first folding the time since its
/// last change into the hour rows (the sled store's `tx_set_gauge`).
async fn set_gauge(
    tx: &deadpool_postgres::Transaction<'_>,
    at: StoredAt<'_>,
    change: impl Fn(u64) -> u64,
) -> Result<(), TxError> {
    let vault = at.vault.as_bytes().as_slice();
    exec(
        tx,
        "INSERT INTO gauges (tenant, vault, account, stored, since) VALUES ($1, $2, $3, 0, $4) \
         ON CONFLICT DO NOTHING",
        &[&b(at.tenant), &vault, &b(at.account), &b(at.now)],
    )
    .await?;
    let row = row_one(
        tx,
        "SELECT stored, since FROM gauges WHERE tenant = $1 AND vault = $2 FOR UPDATE",
        &[&b(at.tenant), &vault],
    )
    .await?;
    let (stored, since) = (u(row.try_get(0)?), u(row.try_get(1)?));
    let now = at.now.max(since);
    let mut rows: Vec<(u64, u64, u128)> = Vec::new();
    if stored > 0 {
        for (hour, seconds) in hour_spans(since, now) {
            rows.push((hour, stored, u128::from(stored) * u128::from(seconds)));
        }
    }
    let next = change(stored);
    if next > 0 {
        rows.push((now / HOUR_SECS, next, 0));
    }
    for (hour, max, byte_seconds) in rows {
        exec(
            tx,
            "INSERT INTO storage_hours (tenant, vault, hour, max_bytes, byte_seconds) \
             VALUES ($1, $2, $3, $4, $5::text::numeric) \
             ON CONFLICT (tenant, vault, hour) DO UPDATE SET \
             max_bytes = GREATEST(storage_hours.max_bytes, EXCLUDED.max_bytes), \
             byte_seconds = storage_hours.byte_seconds + EXCLUDED.byte_seconds",
            &[
                &b(at.tenant),
                &vault,
                &b(hour),
                &b(max),
                &byte_seconds.to_string(),
            ],
        )
        .await?;
    }
    exec(
        tx,
        "UPDATE gauges SET stored = $3, since = $4 WHERE tenant = $1 AND vault = $2",
        &[&b(at.tenant), &vault, &b(next), &b(now)],
    )
    .await?;
    Ok(())
}

/// Traffic rows merged by key, in key order (so concurrent batches lock rows in one order).
type TrafficRows = BTreeMap<(u64, u64, u64, Vec<u8>, Vec<u8>), TrafficCounts>;

fn traffic_rows(batch: &[(TrafficKey, TrafficCounts)]) -> TrafficRows {
    let mut rows = TrafficRows::new();
    for (k, counts) in batch {
        let key = (
            k.tenant.get(),
            k.hour,
            k.account.get(),
            k.vault.map(|v| v.as_bytes().to_vec()).unwrap_or_default(),
            k.device.map(|d| d.as_bytes().to_vec()).unwrap_or_default(),
        );
        rows.entry(key).or_default().add(counts);
    }
    rows
}

async fn add_traffic_rows(
    tx: &deadpool_postgres::Transaction<'_>,
    rows: &TrafficRows,
) -> Result<(), TxError> {
    if rows.is_empty() {
        return Ok(());
    }
    let statement = tx.prepare_cached(ADD_TRAFFIC).await?;
    let columns = traffic_columns(rows);
    tx.execute(&statement, &columns.params()).await?;
    Ok(())
}

/// Adds rows of counts to the traffic counters in one statement (rows in key order).
const ADD_TRAFFIC: &str = "INSERT INTO traffic (tenant, hour, account, vault, device, ingress, egress, requests) \
     SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::BIGINT[], $4::BYTEA[], $5::BYTEA[], \
                          $6::BIGINT[], $7::BIGINT[], $8::BIGINT[]) \
     ON CONFLICT (tenant, hour, account, vault, device) DO UPDATE SET \
     ingress = traffic.ingress + EXCLUDED.ingress, \
     egress = traffic.egress + EXCLUDED.egress, \
     requests = traffic.requests + EXCLUDED.requests";

/// Traffic rows as the columns of [`ADD_TRAFFIC`].
struct TrafficColumns {
    tenants: Vec<i64>,
    hours: Vec<i64>,
    accounts: Vec<i64>,
    vaults: Vec<Vec<u8>>,
    devices: Vec<Vec<u8>>,
    ingress: Vec<i64>,
    egress: Vec<i64>,
    requests: Vec<i64>,
}

impl TrafficColumns {
    fn params(&self) -> [&(dyn ToSql + Sync); 8] {
        [
            &self.tenants,
            &self.hours,
            &self.accounts,
            &self.vaults,
            &self.devices,
            &self.ingress,
            &self.egress,
            &self.requests,
        ]
    }
}

fn traffic_columns(rows: &TrafficRows) -> TrafficColumns {
    let mut c = TrafficColumns {
        tenants: Vec::with_capacity(rows.len()),
        hours: Vec::with_capacity(rows.len()),
        accounts: Vec::with_capacity(rows.len()),
        vaults: Vec::with_capacity(rows.len()),
        devices: Vec::with_capacity(rows.len()),
        ingress: Vec::with_capacity(rows.len()),
        egress: Vec::with_capacity(rows.len()),
        requests: Vec::with_capacity(rows.len()),
    };
    for ((tenant, hour, account, vault, device), n) in rows {
        c.tenants.push(b(*tenant));
        c.hours.push(b(*hour));
        c.accounts.push(b(*account));
        c.vaults.push(vault.clone());
        c.devices.push(device.clone());
        c.ingress.push(bound(n.ingress_bytes));
        c.egress.push(bound(n.egress_bytes));
        c.requests.push(bound(n.requests));
    }
    c
}

/// Locks and returns the vault's row.
async fn lock_vault(
    tx: &deadpool_postgres::Transaction<'_>,
    vault: &VaultId,
) -> Result<VaultRecord, TxError> {
    let row = row_opt(
        tx,
        &format!("SELECT {VAULT_COLUMNS} FROM vaults WHERE vault = $1 FOR NO KEY UPDATE"),
        &[&vault.as_bytes().as_slice()],
    )
    .await?
    .ok_or_else(|| vault_not_found(vault))?;
    vault_row(&row)
}

/// Records one chunk (pending, located at `pack` if given) unless it is committed or has the
/// same bytes already; returns the record now held.
async fn put_chunk(
    tx: &deadpool_postgres::Transaction<'_>,
    at: StoredAt<'_>,
    chunk: &ChunkId,
    sealed_len: u64,
    blake3: &[u8; 32],
) -> Result<ChunkRecord, TxError> {
    let vault = at.vault.as_bytes().as_slice();
    let fresh = ChunkRecord {
        chunk: *chunk,
        sealed_len,
        blake3: *blake3,
        state: ChunkState::Pending { since: at.now },
        location: ChunkLocation::Blob,
    };
    // Inserted if absent; a concurrent recorder of the same chunk waits here for ours to end
    // (or we for theirs), and then finds the row below.
    let inserted = exec(
        tx,
        "INSERT INTO chunks (vault, chunk, sealed_len, blake3, pending_since) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (vault, chunk) DO NOTHING",
        &[
            &vault,
            &chunk.as_bytes().as_slice(),
            &b(sealed_len),
            &blake3.as_slice(),
            &b(at.now),
        ],
    )
    .await?;
    if inserted == 1 {
        adjust_usage(tx, at, 0, sealed_len).await?;
        return Ok(fresh);
    }
    let row = row_one(
        tx,
        &format!("SELECT {CHUNK_COLUMNS} FROM chunks WHERE vault = $1 AND chunk = $2 FOR UPDATE"),
        &[&vault, &chunk.as_bytes().as_slice()],
    )
    .await?;
    let record = chunk_row(&row)?;
    let same = record.sealed_len == sealed_len && record.blake3 == *blake3;
    if same || matches!(record.state, ChunkState::Committed { .. }) {
        return Ok(record);
    }
    // A pending chunk uploaded again with other bytes: its blob now holds the new ones.
    exec(
        tx,
        "UPDATE chunks SET sealed_len = $3, blake3 = $4, pending_since = $5, committed_at = NULL, \
         pack = NULL, pack_offset = NULL WHERE vault = $1 AND chunk = $2",
        &[
            &vault,
            &chunk.as_bytes().as_slice(),
            &b(sealed_len),
            &blake3.as_slice(),
            &b(at.now),
        ],
    )
    .await?;
    adjust_usage(tx, at, record.sealed_len, sealed_len).await?;
    Ok(fresh)
}

/// Takes a share lock on the vault's row for a transaction that writes chunk records, so that
/// deleting the vault waits for it (and it for the delete, then finding no vault); returns the
/// owner its stored bytes count for.
async fn share_vault<'a>(
    tx: &deadpool_postgres::Transaction<'_>,
    vault: &'a VaultId,
    now: u64,
) -> Result<StoredAt<'a>, TxError> {
    let row = row_opt(
        tx,
        "SELECT tenant, account FROM vaults WHERE vault = $1 FOR KEY SHARE",
        &[&vault.as_bytes().as_slice()],
    )
    .await?
    .ok_or_else(|| vault_not_found(vault))?;
    Ok(StoredAt {
        tenant: u(row.try_get(0)?),
        account: u(row.try_get(1)?),
        vault,
        now,
    })
}

impl PgStore {
    /// Removes a pending chunk's record (only if still pending since `since`, when given) and
    /// lowers the stored bytes.
    async fn remove_pending(
        &self,
        vault: VaultId,
        chunk: ChunkId,
        since: Option<u64>,
        now: u64,
    ) -> Result<bool, StoreError> {
        Ok(in_tx!(self, |tx| {
            let at = share_vault(&tx, &vault, now).await?;
            let row = row_opt(
                &tx,
                "DELETE FROM chunks WHERE vault = $1 AND chunk = $2 \
                     AND pending_since IS NOT NULL AND ($3::BIGINT IS NULL OR pending_since = $3) \
                     RETURNING sealed_len",
                &[
                    &vault.as_bytes().as_slice(),
                    &chunk.as_bytes().as_slice(),
                    &since.map(b),
                ],
            )
            .await?;
            match row {
                Some(row) => {
                    adjust_usage(&tx, at, u(row.try_get(0)?), 0).await?;
                    true
                }
                None => false,
            }
        })?)
    }

    /// Stores an envelope; with `new_epoch` it must start the vault's next epoch.
    async fn store_envelope(
        &self,
        vault: VaultId,
        epoch: Epoch,
        recipient: DeviceId,
        sender: DeviceId,
        envelope: Vec<u8>,
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
        let roster = epoch == dooz_protocol::ROSTER_EPOCH;
        let e = i64::from(epoch.get());
        Ok(in_tx!(self, |tx| {
            let v = lock_vault(&tx, &vault).await?;
            let latest = v.latest_epoch.get();
            if new_epoch && (roster || epoch.get() != latest.saturating_add(1)) {
                return Err(StoreError::EpochTaken {
                    vault,
                    epoch: epoch.get(),
                    newest: latest,
                }
                .into());
            }
            let id = vault.as_bytes().as_slice();
            if !roster && epoch.get() > latest {
                exec(
                    &tx,
                    "UPDATE vaults SET latest_epoch = $2 WHERE vault = $1",
                    &[&id, &e],
                )
                .await?;
            }
            if !roster {
                exec(
                    &tx,
                    "DELETE FROM rotations WHERE vault = $1 AND epoch < $2",
                    &[&id, &e],
                )
                .await?;
            }
            exec(
                &tx,
                "INSERT INTO envelopes (vault, recipient, epoch, sender, envelope) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (vault, recipient, epoch, sender) \
                 DO UPDATE SET envelope = EXCLUDED.envelope",
                &[
                    &id,
                    &recipient.as_bytes().as_slice(),
                    &e,
                    &sender.as_bytes().as_slice(),
                    &envelope,
                ],
            )
            .await?;
        })?)
    }
}

// ---------------------------------------------------------------------------------------------
// The trait

#[async_trait]
impl MetaStore for PgStore {
    async fn create_tenant(&self, name: &str) -> Result<TenantId, StoreError> {
        check_name("tenant name", name)?;
        let result = in_tx!(self, |tx| {
            let row = row_one(
                &tx,
                "INSERT INTO tenants (name) VALUES ($1) RETURNING id",
                &[&name],
            )
            .await?;
            let id: i64 = row.try_get(0)?;
            id
        });
        match result {
            Ok(id) => Ok(TenantId::new(u(id))),
            Err(e) if is_unique_violation(&e) => {
                Err(StoreError::already_exists(format!("tenant {name:?}")))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn tenant(&self, id: TenantId) -> Result<Option<TenantRecord>, StoreError> {
        let row = self
            .query_opt("SELECT name FROM tenants WHERE id = $1", &[&b(id.get())])
            .await?;
        row.map(|r| {
            Ok(TenantRecord {
                id,
                name: r.try_get(0).map_err(pg_error)?,
            })
        })
        .transpose()
    }

    async fn tenant_by_name(&self, name: &str) -> Result<Option<TenantRecord>, StoreError> {
        let row = self
            .query_opt("SELECT id FROM tenants WHERE name = $1", &[&name])
            .await?;
        row.map(|r| {
            Ok(TenantRecord {
                id: TenantId::new(u(r.try_get(0).map_err(pg_error)?)),
                name: name.to_owned(),
            })
        })
        .transpose()
    }

    async fn create_account(&self, tenant: TenantId, name: &str) -> Result<AccountId, StoreError> {
        check_name("account name", name)?;
        let result = in_tx!(self, |tx| {
            if row_opt(
                &tx,
                "SELECT 1 FROM tenants WHERE id = $1 FOR SHARE",
                &[&b(tenant.get())],
            )
            .await?
            .is_none()
            {
                return Err(StoreError::not_found(format!("tenant {tenant}")).into());
            }
            let row = row_one(
                &tx,
                "INSERT INTO accounts (tenant, name) VALUES ($1, $2) RETURNING id",
                &[&b(tenant.get()), &name],
            )
            .await?;
            let id: i64 = row.try_get(0)?;
            id
        });
        match result {
            Ok(id) => Ok(AccountId::new(u(id))),
            Err(e) if is_unique_violation(&e) => Err(StoreError::already_exists(format!(
                "account {name:?} in tenant {tenant}"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    async fn account(&self, id: AccountId) -> Result<Option<AccountRecord>, StoreError> {
        let row = self
            .query_opt(
                "SELECT tenant, name FROM accounts WHERE id = $1",
                &[&b(id.get())],
            )
            .await?;
        row.map(|r| {
            Ok(AccountRecord {
                id,
                tenant: TenantId::new(u(r.try_get(0).map_err(pg_error)?)),
                name: r.try_get(1).map_err(pg_error)?,
            })
        })
        .transpose()
    }

    async fn account_by_name(
        &self,
        tenant: TenantId,
        name: &str,
    ) -> Result<Option<AccountRecord>, StoreError> {
        let row = self
            .query_opt(
                "SELECT id FROM accounts WHERE tenant = $1 AND name = $2",
                &[&b(tenant.get()), &name],
            )
            .await?;
        row.map(|r| {
            Ok(AccountRecord {
                id: AccountId::new(u(r.try_get(0).map_err(pg_error)?)),
                tenant,
                name: name.to_owned(),
            })
        })
        .transpose()
    }

    async fn create_enrolment_token(
        &self,
        account: AccountId,
        expires_at: u64,
        reusable: bool,
    ) -> Result<EnrolmentToken, StoreError> {
        let row = self
            .query_opt(
                "SELECT tenant FROM accounts WHERE id = $1",
                &[&b(account.get())],
            )
            .await?
            .ok_or_else(|| StoreError::not_found(format!("account {account}")))?;
        let tenant: i64 = row.try_get(0).map_err(pg_error)?;
        let token = EnrolmentToken::generate()?;
        let hash = token.hash();
        let inserted = in_tx!(self, |tx| {
            exec(
                &tx,
                "INSERT INTO tokens (hash, tenant, account, expires_at, reusable) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                &[
                    &hash.as_slice(),
                    &tenant,
                    &b(account.get()),
                    &b(expires_at),
                    &reusable,
                ],
            )
            .await?
        })?;
        if inserted == 0 {
            return Err(StoreError::Unavailable {
                reason: "a freshly generated enrolment token already exists".to_owned(),
            });
        }
        Ok(token)
    }

    async fn redeem_enrolment(
        &self,
        token: &str,
        reg: DeviceRegistration,
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
        let result = in_tx!(self, |tx| {
            let Some(tok) = row_opt(
                &tx,
                "SELECT hash, tenant, account, expires_at, reusable, used_at FROM tokens \
                     WHERE hash = $1 FOR UPDATE",
                &[&hash.as_slice()],
            )
            .await?
            else {
                return Err(StoreError::TokenInvalid.into());
            };
            let stored: Vec<u8> = tok.try_get(0)?;
            if !token::hashes_match(&fixed(&stored, "tokens")?, &hash) {
                return Err(StoreError::TokenInvalid.into());
            }
            let tenant: i64 = tok.try_get(1)?;
            let account: i64 = tok.try_get(2)?;
            let expires_at: i64 = tok.try_get(3)?;
            let reusable: bool = tok.try_get(4)?;
            let used_at: Option<i64> = tok.try_get(5)?;
            if now >= u(expires_at) {
                return Err(StoreError::TokenExpired.into());
            }
            if !reusable && used_at.is_some() {
                return Err(StoreError::TokenUsed.into());
            }
            if row_opt(
                &tx,
                "SELECT 1 FROM accounts WHERE id = $1 FOR SHARE",
                &[&account],
            )
            .await?
            .is_none()
            {
                return Err(StoreError::not_found(format!("account {}", u(account))).into());
            }
            if let Some(existing) = row_opt(
                &tx,
                "SELECT revoked_at FROM devices WHERE device = $1",
                &[&reg.device.as_bytes().as_slice()],
            )
            .await?
            {
                let revoked: Option<i64> = existing.try_get(0)?;
                return Err(if revoked.is_some() {
                    StoreError::DeviceRevoked { device: reg.device }
                } else {
                    StoreError::already_exists(format!("device {}", reg.device))
                }
                .into());
            }
            exec(
                &tx,
                "INSERT INTO devices (device, tenant, account, identity_key, exchange_key, name, \
                 revoked_at, created_at, last_seen) VALUES ($1, $2, $3, $4, $5, $6, NULL, $7, $7)",
                &[
                    &reg.device.as_bytes().as_slice(),
                    &tenant,
                    &account,
                    &reg.identity_key.as_slice(),
                    &reg.exchange_key.as_slice(),
                    &reg.name,
                    &b(now),
                ],
            )
            .await?;
            exec(
                &tx,
                "UPDATE tokens SET used_at = COALESCE(used_at, $2), uses = uses + 1 \
                 WHERE hash = $1",
                &[&hash.as_slice(), &b(now)],
            )
            .await?;
            DeviceRecord {
                device: reg.device,
                tenant: TenantId::new(u(tenant)),
                account: AccountId::new(u(account)),
                identity_key: reg.identity_key,
                exchange_key: reg.exchange_key,
                name: reg.name.clone(),
                revoked_at: None,
                created_at: now,
                last_seen: now,
            }
        });
        match result {
            // Two redemptions for one device at once: the loser sees the winner's row.
            Err(e) if is_unique_violation(&e) => {
                Err(StoreError::already_exists(format!("device {}", reg.device)))
            }
            other => Ok(other?),
        }
    }

    async fn enrolment_token_account(
        &self,
        token: &str,
    ) -> Result<Option<(TenantId, AccountId)>, StoreError> {
        let Some(hash) = token::presented_hash(token) else {
            return Ok(None);
        };
        let Some(row) = self
            .query_opt(
                "SELECT hash, tenant, account FROM tokens WHERE hash = $1",
                &[&hash.as_slice()],
            )
            .await?
        else {
            return Ok(None);
        };
        let stored: Vec<u8> = row.try_get(0).map_err(pg_error)?;
        if !token::hashes_match(&fixed(&stored, "tokens")?, &hash) {
            return Ok(None);
        }
        Ok(Some((
            TenantId::new(u(row.try_get(1).map_err(pg_error)?)),
            AccountId::new(u(row.try_get(2).map_err(pg_error)?)),
        )))
    }

    async fn device(&self, device: DeviceId) -> Result<Option<DeviceRecord>, StoreError> {
        let row = self
            .query_opt(
                &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE device = $1"),
                &[&device.as_bytes().as_slice()],
            )
            .await?;
        Ok(row.map(|r| device_row(&r)).transpose()?)
    }

    async fn touch_device(&self, device: DeviceId, now: u64) -> Result<DeviceRecord, StoreError> {
        let row = self
            .query_opt(
                &format!(
                    "UPDATE devices SET last_seen = GREATEST(last_seen, $2) \
                     WHERE device = $1 AND revoked_at IS NULL RETURNING {DEVICE_COLUMNS}"
                ),
                &[&device.as_bytes().as_slice(), &b(now)],
            )
            .await?;
        match row {
            Some(row) => Ok(device_row(&row)?),
            None => match self.device(device).await? {
                Some(_) => Err(StoreError::DeviceRevoked { device }),
                None => Err(StoreError::not_found(format!("device {device}"))),
            },
        }
    }

    async fn revoke_device(&self, device: DeviceId, now: u64) -> Result<DeviceRecord, StoreError> {
        let id = device.as_bytes().as_slice();
        Ok(in_tx!(self, |tx| {
            let Some(row) = row_opt(
                &tx,
                &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE device = $1 FOR UPDATE"),
                &[&id],
            )
            .await?
            else {
                return Err(StoreError::not_found(format!("device {device}")).into());
            };
            let mut record = device_row(&row)?;
            if record.revoked_at.is_none() {
                record.revoked_at = Some(now);
                exec(
                    &tx,
                    "UPDATE devices SET revoked_at = $2 WHERE device = $1",
                    &[&id, &b(now)],
                )
                .await?;
                // Every vault of the account is due for rotation from its newest epoch, read under
                // the vaults' row locks: an epoch being started now (perhaps wrapped to this
                // device) must not end the rotation.
                let vaults = query_rows(
                    &tx,
                    "SELECT vault, latest_epoch FROM vaults WHERE account = $1 ORDER BY vault \
                     FOR NO KEY UPDATE",
                    &[&b(record.account.get())],
                )
                .await?;
                for v in &vaults {
                    let vault: Vec<u8> = v.try_get(0)?;
                    let epoch: i64 = v.try_get(1)?;
                    exec(
                        &tx,
                        "INSERT INTO rotations (vault, epoch, since) VALUES ($1, $2, $3) \
                         ON CONFLICT (vault) DO NOTHING",
                        &[&vault, &epoch, &b(now)],
                    )
                    .await?;
                }
                exec(
                    &tx,
                    "SELECT pg_notify($1, $2)",
                    &[&&*self.channel, &format!("r {}", hex(id))],
                )
                .await?;
            }
            record
        })?)
    }

    async fn rename_device(
        &self,
        device: DeviceId,
        name: &str,
    ) -> Result<DeviceRecord, StoreError> {
        check_name("device name", name)?;
        let row = self
            .query_opt(
                &format!(
                    "UPDATE devices SET name = $2 WHERE device = $1 RETURNING {DEVICE_COLUMNS}"
                ),
                &[&device.as_bytes().as_slice(), &name],
            )
            .await?
            .ok_or_else(|| StoreError::not_found(format!("device {device}")))?;
        Ok(device_row(&row)?)
    }

    async fn list_devices(&self, account: AccountId) -> Result<Vec<DeviceRecord>, StoreError> {
        self.account_exists(account).await?;
        let rows = self
            .query(
                &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE account = $1 ORDER BY device"),
                &[&b(account.get())],
            )
            .await?;
        Ok(rows.iter().map(device_row).collect::<Result<_, _>>()?)
    }

    async fn account_usage(&self, account: AccountId) -> Result<AccountUsage, StoreError> {
        let row = self
            .query_opt(
                "SELECT stored_bytes, \
                 (SELECT count(*) FROM devices WHERE account = $1 AND revoked_at IS NULL), \
                 (SELECT count(*) FROM vaults WHERE account = $1) \
                 FROM accounts WHERE id = $1",
                &[&b(account.get())],
            )
            .await?
            .ok_or_else(|| StoreError::not_found(format!("account {account}")))?;
        let get = |i: usize| -> Result<u64, StoreError> {
            Ok(u(row.try_get::<_, i64>(i).map_err(pg_error)?))
        };
        Ok(AccountUsage {
            stored_bytes: get(0)?,
            devices: get(1)?,
            vaults: get(2)?,
        })
    }

    async fn delete_account(
        &self,
        account: AccountId,
        now: u64,
    ) -> Result<Vec<VaultId>, StoreError> {
        self.account_exists(account).await?;
        let acc = b(account.get());
        let rows = self
            .query(
                &format!("SELECT {VAULT_COLUMNS} FROM vaults WHERE account = $1 ORDER BY vault"),
                &[&acc],
            )
            .await?;
        let mut vaults = Vec::with_capacity(rows.len());
        for row in &rows {
            let v = vault_row(row)?;
            let id = v.vault;
            // One transaction per vault: its storage ends now (its hour rows stay for usage
            // reports, its gauge at zero keeps the account they belong to), then its rows go.
            in_tx!(self, |tx| {
                // Waits for transactions writing its chunk records (they share-lock the row);
                // those that come later find no vault.
                let locked = row_opt(
                    &tx,
                    "SELECT 1 FROM vaults WHERE vault = $1 FOR UPDATE",
                    &[&id.as_bytes().as_slice()],
                )
                .await?;
                if locked.is_none() {
                    return Ok(());
                }
                let at = StoredAt {
                    tenant: v.tenant.get(),
                    account: v.account.get(),
                    vault: &id,
                    now,
                };
                set_gauge(&tx, at, |_| 0).await?;
                let key = id.as_bytes().as_slice();
                for table in [
                    "chunks",
                    "packs",
                    "log",
                    "heads",
                    "versions",
                    "envelopes",
                    "rotations",
                    "vaults",
                ] {
                    exec(
                        &tx,
                        &format!("DELETE FROM {table} WHERE vault = $1"),
                        &[&key],
                    )
                    .await?;
                }
            })?;
            vaults.push(id);
        }
        in_tx!(self, |tx| {
            exec(&tx, "DELETE FROM devices WHERE account = $1", &[&acc]).await?;
            exec(&tx, "DELETE FROM tokens WHERE account = $1", &[&acc]).await?;
            exec(&tx, "DELETE FROM accounts WHERE id = $1", &[&acc]).await?;
        })?;
        Ok(vaults)
    }

    async fn create_vault(
        &self,
        account: AccountId,
        vault: VaultId,
        now: u64,
    ) -> Result<VaultRecord, StoreError> {
        let id = vault.as_bytes().as_slice();
        Ok(in_tx!(self, |tx| {
            let Some(acc) = row_opt(
                &tx,
                "SELECT tenant FROM accounts WHERE id = $1 FOR SHARE",
                &[&b(account.get())],
            )
            .await?
            else {
                return Err(StoreError::not_found(format!("account {account}")).into());
            };
            let tenant: i64 = acc.try_get(0)?;
            exec(
                &tx,
                "INSERT INTO vaults (vault, tenant, account, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (vault) DO NOTHING",
                &[&id, &tenant, &b(account.get()), &b(now)],
            )
            .await?;
            let row = row_one(
                &tx,
                &format!("SELECT {VAULT_COLUMNS} FROM vaults WHERE vault = $1"),
                &[&id],
            )
            .await?;
            let record = vault_row(&row)?;
            if record.account != account {
                return Err(StoreError::already_exists(format!("vault {vault}")).into());
            }
            record
        })?)
    }

    async fn vault(&self, vault: VaultId) -> Result<Option<VaultRecord>, StoreError> {
        let row = self
            .query_opt(
                &format!("SELECT {VAULT_COLUMNS} FROM vaults WHERE vault = $1"),
                &[&vault.as_bytes().as_slice()],
            )
            .await?;
        Ok(row.map(|r| vault_row(&r)).transpose()?)
    }

    async fn list_vaults(&self, account: AccountId) -> Result<Vec<VaultInfo>, StoreError> {
        self.account_exists(account).await?;
        let rows = self
            .query(
                &format!("SELECT {VAULT_COLUMNS} FROM vaults WHERE account = $1 ORDER BY vault"),
                &[&b(account.get())],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| vault_row(r).map(|v| v.info()))
            .collect::<Result<_, _>>()?)
    }

    async fn missing_chunks(
        &self,
        vault: VaultId,
        chunks: &[ChunkId],
    ) -> Result<Vec<ChunkId>, StoreError> {
        self.vault_or_not_found(&vault).await?;
        let ids: Vec<&[u8]> = chunks.iter().map(|c| c.as_bytes().as_slice()).collect();
        let rows = self
            .query(
                "SELECT chunk FROM chunks WHERE vault = $1 AND chunk = ANY($2)",
                &[&vault.as_bytes().as_slice(), &ids],
            )
            .await?;
        let mut have = HashSet::with_capacity(rows.len());
        for row in &rows {
            let c: Vec<u8> = row.try_get(0).map_err(pg_error)?;
            have.insert(ChunkId::from_bytes(fixed(&c, "chunks")?));
        }
        let mut seen = HashSet::with_capacity(chunks.len());
        Ok(chunks
            .iter()
            .filter(|c| seen.insert(**c) && !have.contains(*c))
            .copied()
            .collect())
    }

    async fn record_chunk(
        &self,
        vault: VaultId,
        chunk: ChunkId,
        sealed_len: u64,
        blake3: [u8; 32],
        now: u64,
    ) -> Result<ChunkRecord, StoreError> {
        self.record_chunk_metered(vault, chunk, sealed_len, blake3, now, Vec::new())
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
        Ok(in_tx!(self, |tx| {
            let at = share_vault(&tx, &vault, now).await?;
            add_traffic_rows(&tx, &rows).await?;
            put_chunk(&tx, at, &chunk, sealed_len, &blake3).await?
        })?)
    }

    async fn record_packed_chunks(
        &self,
        vault: VaultId,
        pack: PackId,
        pack_len: u64,
        chunks: Vec<PackedChunk>,
        now: u64,
    ) -> Result<(), StoreError> {
        self.record_packed_chunks_metered(vault, pack, pack_len, chunks, now, Vec::new())
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
        // Each chunk once, as recording them one after the other would leave it: a repeat
        // with the same bytes keeps the first, one with other bytes replaces it.
        let mut unique: BTreeMap<ChunkId, PackedChunk> = BTreeMap::new();
        for p in &chunks {
            match unique.get(&p.chunk) {
                Some(kept) if kept.sealed_len == p.sealed_len && kept.blake3 == p.blake3 => {}
                _ => {
                    unique.insert(p.chunk, *p);
                }
            }
        }
        // Chunk rows are locked in id order (`unique` is sorted), as the commit locks them.
        let id = vault.as_bytes().as_slice();
        in_tx!(self, |tx| {
            let at = share_vault(&tx, &vault, now).await?;
            add_traffic_rows(&tx, &rows).await?;
            exec(
                &tx,
                "INSERT INTO packs (vault, pack, len, chunks, created_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (vault, pack) DO UPDATE SET \
                 len = EXCLUDED.len, chunks = EXCLUDED.chunks, created_at = EXCLUDED.created_at",
                &[
                    &id,
                    &pack.as_bytes().as_slice(),
                    &b(pack_len),
                    &i64::try_from(chunks.len()).unwrap_or(i64::MAX),
                    &b(now),
                ],
            )
            .await?;
            // Absent chunks are inserted (in id order); a concurrent recorder of one of them
            // waits for this transaction, or this one for it, and finds the row below.
            let (c_ids, c_lens, c_hashes, c_offsets): (
                Vec<Vec<u8>>,
                Vec<i64>,
                Vec<Vec<u8>>,
                Vec<i64>,
            ) = unique
                .values()
                .map(|p| {
                    (
                        p.chunk.as_bytes().to_vec(),
                        b(p.sealed_len),
                        p.blake3.to_vec(),
                        b(p.offset),
                    )
                })
                .fold(
                    (Vec::new(), Vec::new(), Vec::new(), Vec::new()),
                    |mut acc, (c, l, h, o)| {
                        acc.0.push(c);
                        acc.1.push(l);
                        acc.2.push(h);
                        acc.3.push(o);
                        acc
                    },
                );
            let mut inserted: HashSet<ChunkId> = HashSet::new();
            for row in query_rows(
                &tx,
                "INSERT INTO chunks (vault, chunk, sealed_len, blake3, pending_since, pack, \
                 pack_offset) \
                 SELECT $1, c, l, h, $2, $3, o \
                 FROM UNNEST($4::BYTEA[], $5::BIGINT[], $6::BYTEA[], $7::BIGINT[]) AS t(c, l, h, o) \
                 ON CONFLICT (vault, chunk) DO NOTHING RETURNING chunk",
                &[
                    &id,
                    &b(now),
                    &pack.as_bytes().as_slice(),
                    &c_ids,
                    &c_lens,
                    &c_hashes,
                    &c_offsets,
                ],
            )
            .await?
            {
                let c: Vec<u8> = row.try_get(0)?;
                inserted.insert(ChunkId::from_bytes(fixed(&c, "chunks")?));
            }
            let mut new_total: u64 = unique
                .values()
                .filter(|p| inserted.contains(&p.chunk))
                .map(|p| p.sealed_len)
                .fold(0, u64::saturating_add);
            let rest: Vec<&[u8]> = unique
                .keys()
                .filter(|c| !inserted.contains(*c))
                .map(|c| c.as_bytes().as_slice())
                .collect();
            let mut old_total = 0u64;
            if !rest.is_empty() {
                let mut existing: HashMap<ChunkId, ChunkRecord> = HashMap::new();
                for row in query_rows(
                    &tx,
                    &format!(
                        "SELECT {CHUNK_COLUMNS} FROM chunks WHERE vault = $1 AND chunk = ANY($2) \
                         ORDER BY chunk FOR UPDATE"
                    ),
                    &[&id, &rest],
                )
                .await?
                {
                    let record = chunk_row(&row)?;
                    existing.insert(record.chunk, record);
                }
                // A chunk committed already, or pending with the same bytes, keeps its record
                // (its bytes in this pack are garbage); a pending one with other bytes takes
                // the packed ones.
                let (mut w_ids, mut w_lens, mut w_hashes, mut w_offsets) =
                    (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                for p in unique.values() {
                    let Some(r) = existing.get(&p.chunk) else {
                        continue;
                    };
                    if (r.sealed_len == p.sealed_len && r.blake3 == p.blake3)
                        || matches!(r.state, ChunkState::Committed { .. })
                    {
                        continue;
                    }
                    old_total = old_total.saturating_add(r.sealed_len);
                    new_total = new_total.saturating_add(p.sealed_len);
                    w_ids.push(p.chunk.as_bytes().to_vec());
                    w_lens.push(b(p.sealed_len));
                    w_hashes.push(p.blake3.to_vec());
                    w_offsets.push(b(p.offset));
                }
                if !w_ids.is_empty() {
                    exec(
                        &tx,
                        "UPDATE chunks SET sealed_len = t.l, blake3 = t.h, pending_since = $2, \
                         committed_at = NULL, pack = $3, pack_offset = t.o \
                         FROM UNNEST($4::BYTEA[], $5::BIGINT[], $6::BYTEA[], $7::BIGINT[]) AS t(c, l, h, o) \
                         WHERE chunks.vault = $1 AND chunks.chunk = t.c",
                        &[
                            &id,
                            &b(now),
                            &pack.as_bytes().as_slice(),
                            &w_ids,
                            &w_lens,
                            &w_hashes,
                            &w_offsets,
                        ],
                    )
                    .await?;
                }
            }
            if old_total != 0 || new_total != 0 {
                adjust_usage(&tx, at, old_total, new_total).await?;
            }
        })?;
        Ok(())
    }

    async fn all_vaults(&self) -> Result<Vec<VaultRecord>, StoreError> {
        let rows = self
            .query(
                &format!("SELECT {VAULT_COLUMNS} FROM vaults ORDER BY vault"),
                &[],
            )
            .await?;
        Ok(rows.iter().map(vault_row).collect::<Result<_, _>>()?)
    }

    async fn pending_chunks_before(
        &self,
        vault: VaultId,
        before: u64,
    ) -> Result<Vec<ChunkRecord>, StoreError> {
        let rows = self
            .query(
                &format!(
                    "SELECT {CHUNK_COLUMNS} FROM chunks WHERE vault = $1 \
                     AND pending_since IS NOT NULL AND pending_since < $2 ORDER BY chunk"
                ),
                &[&vault.as_bytes().as_slice(), &bound(before)],
            )
            .await?;
        Ok(rows.iter().map(chunk_row).collect::<Result<_, _>>()?)
    }

    async fn collect_pending_chunk(
        &self,
        vault: VaultId,
        chunk: ChunkId,
        since: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        self.remove_pending(vault, chunk, Some(since), now).await
    }

    async fn expire_versions(
        &self,
        vault: VaultId,
        superseded_before: u64,
    ) -> Result<u64, StoreError> {
        self.vault_or_not_found(&vault).await?;
        // A version is superseded when the entry's next version (in seq order) was committed.
        let expired = in_tx!(self, |tx| {
            exec(
                &tx,
                "DELETE FROM versions AS v USING ( \
                   SELECT vault, entry, seq, \
                          lead(seq) OVER (PARTITION BY entry ORDER BY seq) AS next_seq \
                   FROM versions WHERE vault = $1 \
                 ) AS w, log AS l \
                 WHERE w.next_seq IS NOT NULL AND v.vault = w.vault AND v.entry = w.entry \
                   AND v.seq = w.seq AND l.vault = w.vault AND l.seq = w.next_seq \
                   AND l.committed_at < $2",
                &[&vault.as_bytes().as_slice(), &bound(superseded_before)],
            )
            .await?
        })?;
        Ok(expired)
    }

    async fn retained_chunks(&self, vault: VaultId) -> Result<HashSet<ChunkId>, StoreError> {
        self.vault_or_not_found(&vault).await?;
        let rows = self
            .query(
                "SELECT l.chunks FROM versions v JOIN log l ON l.vault = v.vault AND l.seq = v.seq \
                 WHERE v.vault = $1",
                &[&vault.as_bytes().as_slice()],
            )
            .await?;
        let mut keep = HashSet::new();
        for row in &rows {
            let chunks: Vec<u8> = row.try_get(0).map_err(pg_error)?;
            keep.extend(chunk_list(&chunks)?);
        }
        Ok(keep)
    }

    async fn release_chunks(
        &self,
        vault: VaultId,
        keep: HashSet<ChunkId>,
        now: u64,
    ) -> Result<u64, StoreError> {
        let mut keep: Vec<&[u8]> = keep.iter().map(|c| c.as_bytes().as_slice()).collect();
        keep.sort_unstable();
        let released = in_tx!(self, |tx| {
            exec(
                &tx,
                "UPDATE chunks SET pending_since = $2, committed_at = NULL \
                 WHERE vault = $1 AND chunk IN ( \
                   SELECT chunk FROM chunks WHERE vault = $1 AND committed_at IS NOT NULL \
                   AND NOT (chunk = ANY($3)) ORDER BY chunk FOR UPDATE)",
                &[&vault.as_bytes().as_slice(), &b(now), &keep],
            )
            .await?
        })?;
        Ok(released)
    }

    async fn keep_chunk(
        &self,
        vault: VaultId,
        chunk: ChunkId,
        since: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        let kept = in_tx!(self, |tx| {
            exec(
                &tx,
                "UPDATE chunks SET pending_since = NULL, committed_at = $4 \
                 WHERE vault = $1 AND chunk = $2 AND pending_since = $3",
                &[
                    &vault.as_bytes().as_slice(),
                    &chunk.as_bytes().as_slice(),
                    &b(since),
                    &b(now),
                ],
            )
            .await?
        })?;
        Ok(kept > 0)
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
        self.vault_or_not_found(&vault).await?;
        let mut moves = moves;
        moves.sort_by_key(|m| m.0);
        let id = vault.as_bytes().as_slice();
        Ok(in_tx!(self, |tx| {
            exec(
                &tx,
                "INSERT INTO packs (vault, pack, len, chunks, created_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (vault, pack) DO UPDATE SET \
                 len = EXCLUDED.len, chunks = EXCLUDED.chunks, created_at = EXCLUDED.created_at",
                &[
                    &id,
                    &new.as_bytes().as_slice(),
                    &b(new_len),
                    &i64::try_from(moves.len()).unwrap_or(i64::MAX),
                    &b(now),
                ],
            )
            .await?;
            let statement = tx
                .prepare_cached(
                    "UPDATE chunks SET pack = $5, pack_offset = $6 \
                     WHERE vault = $1 AND chunk = $2 AND pack = $3 AND pack_offset = $4",
                )
                .await?;
            let mut moved = 0u64;
            for (chunk, from, to) in &moves {
                moved += tx
                    .execute(
                        &statement,
                        &[
                            &id,
                            &chunk.as_bytes().as_slice(),
                            &old.as_bytes().as_slice(),
                            &b(*from),
                            &new.as_bytes().as_slice(),
                            &b(*to),
                        ],
                    )
                    .await?;
            }
            moved
        })?)
    }

    async fn packs(&self, vault: VaultId) -> Result<Vec<PackInfo>, StoreError> {
        let rows = self
            .query(
                "SELECT p.pack, p.len, p.created_at, count(c.chunk), \
                 COALESCE(sum(c.sealed_len), 0)::BIGINT \
                 FROM packs p LEFT JOIN chunks c ON c.vault = p.vault AND c.pack = p.pack \
                 WHERE p.vault = $1 GROUP BY p.pack, p.len, p.created_at ORDER BY p.pack",
                &[&vault.as_bytes().as_slice()],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let pack: Vec<u8> = r.try_get(0).map_err(pg_error)?;
                Ok(PackInfo {
                    pack: PackId::from_bytes(fixed(&pack, "packs")?),
                    len: u(r.try_get(1).map_err(pg_error)?),
                    created_at: u(r.try_get(2).map_err(pg_error)?),
                    live_chunks: u(r.try_get(3).map_err(pg_error)?),
                    live_bytes: u(r.try_get(4).map_err(pg_error)?),
                })
            })
            .collect()
    }

    async fn delete_pack(&self, vault: VaultId, pack: PackId) -> Result<bool, StoreError> {
        let deleted = in_tx!(self, |tx| {
            exec(
                &tx,
                "DELETE FROM packs WHERE vault = $1 AND pack = $2",
                &[&vault.as_bytes().as_slice(), &pack.as_bytes().as_slice()],
            )
            .await?
        })?;
        Ok(deleted > 0)
    }

    async fn chunk(
        &self,
        vault: VaultId,
        chunk: ChunkId,
    ) -> Result<Option<ChunkRecord>, StoreError> {
        Ok(self
            .chunks(vault, &[chunk])
            .await?
            .into_iter()
            .next()
            .flatten())
    }

    async fn chunks(
        &self,
        vault: VaultId,
        chunks: &[ChunkId],
    ) -> Result<Vec<Option<ChunkRecord>>, StoreError> {
        self.vault_or_not_found(&vault).await?;
        let ids: Vec<&[u8]> = chunks.iter().map(|c| c.as_bytes().as_slice()).collect();
        let rows = self
            .query(
                &format!("SELECT {CHUNK_COLUMNS} FROM chunks WHERE vault = $1 AND chunk = ANY($2)"),
                &[&vault.as_bytes().as_slice(), &ids],
            )
            .await?;
        let mut found = HashMap::with_capacity(rows.len());
        for row in &rows {
            let record = chunk_row(row)?;
            found.insert(record.chunk, record);
        }
        Ok(chunks.iter().map(|c| found.get(c).cloned()).collect())
    }

    async fn forget_chunk(
        &self,
        vault: VaultId,
        chunk: ChunkId,
        now: u64,
    ) -> Result<bool, StoreError> {
        self.remove_pending(vault, chunk, None, now).await
    }

    async fn commit(
        &self,
        vault: VaultId,
        device: DeviceId,
        entries: Vec<CommitEntry>,
        now: u64,
    ) -> Result<Vec<CommitResult>, StoreError> {
        let mut seen = HashSet::new();
        let referenced: Vec<ChunkId> = entries
            .iter()
            .flat_map(|e| e.chunks.iter().copied())
            .filter(|c| seen.insert(*c))
            .collect();
        let mut referenced_sorted: Vec<&[u8]> =
            referenced.iter().map(|c| c.as_bytes().as_slice()).collect();
        referenced_sorted.sort_unstable();
        let mut entry_ids: Vec<&[u8]> = entries
            .iter()
            .map(|e| e.entry.as_bytes().as_slice())
            .collect();
        entry_ids.sort_unstable();
        entry_ids.dedup();
        let id = vault.as_bytes().as_slice();
        let dev = device.as_bytes().as_slice();
        let lock = format!("SELECT {VAULT_COLUMNS} FROM vaults WHERE vault = $1 FOR NO KEY UPDATE");
        let results = in_tx!(self, |tx| {
            // Pipelined (one round trip): the vault's row lock first, then, under it, the
            // chunks named (locked in id order, so that garbage collection cannot take them
            // between this check and the commit) and the entries' heads.
            let lock_params: [&(dyn ToSql + Sync); 1] = [&id];
            let chunk_params: [&(dyn ToSql + Sync); 2] = [&id, &referenced_sorted];
            let head_params: [&(dyn ToSql + Sync); 2] = [&id, &entry_ids];
            // Prepared first (each once per connection), so that the three go out in this
            // order whatever the statement cache holds: the heads are read under the lock.
            let (lock_st, chunk_st, head_st) = futures::try_join!(
                tx.prepare_cached(&lock),
                tx.prepare_cached(
                    "SELECT chunk, pending_since FROM chunks WHERE vault = $1 AND chunk = ANY($2) \
                     ORDER BY chunk FOR UPDATE",
                ),
                tx.prepare_cached(
                    "SELECT entry, version FROM heads WHERE vault = $1 AND entry = ANY($2)"
                ),
            )?;
            let (locked, rows, head_rows) = futures::try_join!(
                tx.query_opt(&lock_st, &lock_params),
                tx.query(&chunk_st, &chunk_params),
                tx.query(&head_st, &head_params),
            )?;
            let v = vault_row(&locked.ok_or_else(|| vault_not_found(&vault))?)?;
            if entries.is_empty() {
                return Ok::<_, TxError>(Vec::new());
            }
            let mut pending: HashSet<ChunkId> = HashSet::new();
            let mut known: HashSet<ChunkId> = HashSet::with_capacity(rows.len());
            for row in &rows {
                let c: Vec<u8> = row.try_get(0)?;
                let c = ChunkId::from_bytes(fixed(&c, "chunks")?);
                let since: Option<i64> = row.try_get(1)?;
                if since.is_some() {
                    pending.insert(c);
                }
                known.insert(c);
            }
            let missing: Vec<ChunkId> = referenced
                .iter()
                .filter(|c| !known.contains(*c))
                .copied()
                .collect();
            if !missing.is_empty() {
                return Err(StoreError::MissingChunks {
                    vault,
                    chunks: missing,
                }
                .into());
            }
            let mut heads: HashMap<EntryKey, VersionId> = HashMap::new();
            for row in head_rows {
                let e: Vec<u8> = row.try_get(0)?;
                let ver: Vec<u8> = row.try_get(1)?;
                heads.insert(
                    EntryKey::from_bytes(fixed(&e, "heads")?),
                    VersionId::from_bytes(fixed(&ver, "heads")?),
                );
            }
            let old_head = v.head_seq.get();
            let mut head = old_head;
            let mut latest_epoch = v.latest_epoch.get();
            let mut results = Vec::with_capacity(entries.len());
            let mut used: HashSet<ChunkId> = HashSet::new();
            // Columns of the log rows to insert.
            let (mut seqs, mut ents, mut vers, mut parents, mut recs, mut chunk_lists, mut epochs) =
                (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
            for e in &entries {
                let current = heads.get(&e.entry).copied();
                if current != e.parent {
                    results.push(CommitResult::Conflict {
                        entry: e.entry,
                        head: current,
                    });
                    continue;
                }
                let Some(next) = head.checked_add(1).filter(|n| i64::try_from(*n).is_ok()) else {
                    return Err(StoreError::corrupt(
                        "vaults",
                        format!("vault {vault} has exhausted its seq numbers"),
                    )
                    .into());
                };
                head = next;
                heads.insert(e.entry, e.version);
                seqs.push(b(next));
                ents.push(e.entry.as_bytes().to_vec());
                vers.push(e.version.as_bytes().to_vec());
                parents.push(e.parent.map(|p| p.as_bytes().to_vec()));
                recs.push(e.record.clone());
                chunk_lists.push(chunk_bytes(&e.chunks));
                epochs.push(i64::from(e.epoch.get()));
                latest_epoch = latest_epoch.max(e.epoch.get());
                used.extend(e.chunks.iter().copied());
                results.push(CommitResult::Applied {
                    entry: e.entry,
                    seq: Seq::new(next),
                    version: e.version,
                });
            }
            if head == old_head {
                return Ok(results);
            }
            // An entry applied twice in one commit ends at its last version.
            let mut last: BTreeMap<Vec<u8>, (Vec<u8>, i64)> = BTreeMap::new();
            for ((e, v), s) in ents.iter().zip(&vers).zip(&seqs) {
                last.insert(e.clone(), (v.clone(), *s));
            }
            let (h_ents, (h_vers, h_seqs)): (Vec<Vec<u8>>, (Vec<Vec<u8>>, Vec<i64>)) =
                last.into_iter().unzip();
            let mut now_committed: Vec<&[u8]> = used
                .iter()
                .filter(|c| pending.contains(*c))
                .map(|c| c.as_bytes().as_slice())
                .collect();
            now_committed.sort_unstable();
            let notice = format!("c {} {head}", hex(id));
            let channel: &str = &self.channel;
            // Pipelined (one round trip): the log rows, heads, history, chunks now committed,
            // the compare-and-swap on the head seq (the row lock makes it hold; the condition
            // proves it), and the notification other instances hear at commit.
            let (now_b, old_b, head_b, epoch_b) =
                (b(now), b(old_head), b(head), i64::from(latest_epoch));
            let log_params: [&(dyn ToSql + Sync); 10] = [
                &id,
                &dev,
                &now_b,
                &seqs,
                &ents,
                &vers,
                &parents,
                &recs,
                &chunk_lists,
                &epochs,
            ];
            let head_params: [&(dyn ToSql + Sync); 4] = [&id, &h_ents, &h_vers, &h_seqs];
            let version_params: [&(dyn ToSql + Sync); 3] = [&id, &ents, &seqs];
            let chunk_params: [&(dyn ToSql + Sync); 3] = [&id, &now_committed, &now_b];
            let vault_params: [&(dyn ToSql + Sync); 4] = [&id, &old_b, &head_b, &epoch_b];
            let notify_params: [&(dyn ToSql + Sync); 2] = [&channel, &notice];
            let (_, _, _, _, swapped, _) = futures::try_join!(
                exec(
                    &tx,
                    "INSERT INTO log (vault, seq, entry, version, parent, record, chunks, epoch, \
                     device, committed_at) \
                     SELECT $1, s, e, v, p, r, c, ep, $2, $3 \
                     FROM UNNEST($4::BIGINT[], $5::BYTEA[], $6::BYTEA[], $7::BYTEA[], $8::BYTEA[], \
                                 $9::BYTEA[], $10::BIGINT[]) AS t(s, e, v, p, r, c, ep)",
                    &log_params,
                ),
                exec(
                    &tx,
                    "INSERT INTO heads (vault, entry, version, seq) \
                     SELECT $1, e, v, s FROM UNNEST($2::BYTEA[], $3::BYTEA[], $4::BIGINT[]) AS t(e, v, s) \
                     ON CONFLICT (vault, entry) DO UPDATE SET version = EXCLUDED.version, seq = EXCLUDED.seq",
                    &head_params,
                ),
                exec(
                    &tx,
                    "INSERT INTO versions (vault, entry, seq) \
                     SELECT $1, e, s FROM UNNEST($2::BYTEA[], $3::BIGINT[]) AS t(e, s)",
                    &version_params,
                ),
                exec(
                    &tx,
                    "UPDATE chunks SET pending_since = NULL, committed_at = $3 \
                     WHERE vault = $1 AND chunk = ANY($2)",
                    &chunk_params,
                ),
                exec(
                    &tx,
                    "UPDATE vaults SET head_seq = $3, latest_epoch = $4 \
                     WHERE vault = $1 AND head_seq = $2",
                    &vault_params,
                ),
                exec(&tx, "SELECT pg_notify($1, $2)", &notify_params),
            )?;
            if swapped != 1 {
                return Err(StoreError::Unavailable {
                    reason: format!("vault {vault}'s head moved during a commit"),
                }
                .into());
            }
            results
        })?;
        Ok(results)
    }

    async fn pull(&self, vault: VaultId, since: Seq, limit: u32) -> Result<ChangePage, StoreError> {
        let limit = page_limit(limit, MAX_PULL_PAGE);
        let mut page = ChangePage {
            changes: Vec::new(),
            next: since,
            more: false,
        };
        let Some(first) = since.get().checked_add(1) else {
            self.vault_or_not_found(&vault).await?;
            return Ok(page);
        };
        let client = self.client().await?;
        let statement = client
            .prepare_cached(&format!(
                "SELECT {LOG_COLUMNS} FROM log WHERE vault = $1 AND seq >= $2 ORDER BY seq LIMIT $3"
            ))
            .await
            .map_err(pg_error)?;
        let rows = client
            .query(
                &statement,
                &[
                    &vault.as_bytes().as_slice(),
                    &bound(first),
                    &i64::try_from(limit).unwrap_or(i64::MAX),
                ],
            )
            .await
            .map_err(pg_error)?;
        drop(client);
        // Read after the page: `more` errs on the side of another pull.
        let head = self.vault_or_not_found(&vault).await?.head_seq;
        let mut bytes = 0usize;
        let mut expected = first;
        for row in &rows {
            let c = change_row(row)?;
            if c.seq.get() != expected {
                break;
            }
            let size = change_size_bound(&c);
            if !page.changes.is_empty() && bytes.saturating_add(size) > MAX_PAGE_BYTES {
                break;
            }
            bytes = bytes.saturating_add(size);
            page.next = c.seq;
            page.changes.push(c);
            expected = expected.saturating_add(1);
        }
        page.more = page.next < head;
        Ok(page)
    }

    async fn history(
        &self,
        vault: VaultId,
        entry: EntryKey,
        limit: u32,
        before: Option<Seq>,
    ) -> Result<VersionPage, StoreError> {
        self.vault_or_not_found(&vault).await?;
        let limit = page_limit(limit, MAX_HISTORY_PAGE);
        let before = before.map_or(i64::MAX, |s| bound(s.get()));
        // One more than the page, to know whether there is a next one.
        let rows = self
            .query(
                &format!(
                    "SELECT {} FROM versions v JOIN log l ON l.vault = v.vault AND l.seq = v.seq \
                     WHERE v.vault = $1 AND v.entry = $2 AND v.seq < $3 \
                     ORDER BY v.seq DESC LIMIT $4",
                    LOG_COLUMNS
                        .split(", ")
                        .map(|c| format!("l.{c}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                &[
                    &vault.as_bytes().as_slice(),
                    &entry.as_bytes().as_slice(),
                    &before,
                    &i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX),
                ],
            )
            .await?;
        let mut page = VersionPage {
            versions: Vec::new(),
            next: None,
        };
        let mut bytes = 0usize;
        for row in &rows {
            if page.versions.len() >= limit {
                page.next = page.versions.last().map(|c| c.seq);
                break;
            }
            let c = change_row(row)?;
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

    async fn head(&self, vault: VaultId) -> Result<Seq, StoreError> {
        Ok(self.vault_or_not_found(&vault).await?.head_seq)
    }

    async fn entry_head(
        &self,
        vault: VaultId,
        entry: EntryKey,
    ) -> Result<Option<EntryHead>, StoreError> {
        self.vault_or_not_found(&vault).await?;
        let row = self
            .query_opt(
                "SELECT version, seq FROM heads WHERE vault = $1 AND entry = $2",
                &[&vault.as_bytes().as_slice(), &entry.as_bytes().as_slice()],
            )
            .await?;
        row.map(|r| {
            let version: Vec<u8> = r.try_get(0).map_err(pg_error)?;
            Ok(EntryHead {
                version: VersionId::from_bytes(fixed(&version, "heads")?),
                seq: Seq::new(u(r.try_get(1).map_err(pg_error)?)),
            })
        })
        .transpose()
    }

    async fn put_envelope(
        &self,
        vault: VaultId,
        epoch: Epoch,
        recipient: DeviceId,
        sender: DeviceId,
        envelope: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.store_envelope(vault, epoch, recipient, sender, envelope, false)
            .await
    }

    async fn start_epoch(
        &self,
        vault: VaultId,
        epoch: Epoch,
        device: DeviceId,
        envelope: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.store_envelope(vault, epoch, device, device, envelope, true)
            .await
    }

    async fn rotations_due(&self, account: AccountId) -> Result<Vec<VaultId>, StoreError> {
        self.account_exists(account).await?;
        let rows = self
            .query(
                "SELECT r.vault FROM rotations r JOIN vaults v ON v.vault = r.vault \
                 WHERE v.account = $1 ORDER BY r.vault",
                &[&b(account.get())],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let v: Vec<u8> = r.try_get(0).map_err(pg_error)?;
                Ok(VaultId::from_bytes(fixed(&v, "rotations")?))
            })
            .collect()
    }

    async fn add_traffic(&self, batch: Vec<(TrafficKey, TrafficCounts)>) -> Result<(), StoreError> {
        let rows = traffic_rows(&batch);
        if rows.is_empty() {
            return Ok(());
        }
        // One statement is its own transaction: durable when it returns.
        let columns = traffic_columns(&rows);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let client = self.client().await?;
            let statement = client.prepare_cached(ADD_TRAFFIC).await.map_err(pg_error)?;
            match client.execute(&statement, &columns.params()).await {
                Ok(_) => return Ok(()),
                Err(e) if attempt < TX_ATTEMPTS && pg_conflict(&e) => {}
                Err(e) => return Err(pg_error(e)),
            }
        }
    }

    async fn traffic(
        &self,
        tenant: Option<TenantId>,
        hours: std::ops::Range<u64>,
    ) -> Result<Vec<(TrafficKey, TrafficCounts)>, StoreError> {
        if hours.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self
            .query(
                "SELECT tenant, hour, account, vault, device, ingress, egress, requests \
                 FROM traffic WHERE ($1::BIGINT IS NULL OR tenant = $1) AND hour >= $2 \
                 AND hour < $3 ORDER BY tenant, hour, account, vault, device",
                &[
                    &tenant.map(|t| b(t.get())),
                    &bound(hours.start),
                    &bound(hours.end),
                ],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let vault: Vec<u8> = r.try_get(3).map_err(pg_error)?;
            let device: Vec<u8> = r.try_get(4).map_err(pg_error)?;
            let counts = TrafficCounts {
                ingress_bytes: u(r.try_get(5).map_err(pg_error)?),
                egress_bytes: u(r.try_get(6).map_err(pg_error)?),
                requests: u(r.try_get(7).map_err(pg_error)?),
            };
            if counts.is_zero() {
                continue;
            }
            out.push((
                TrafficKey {
                    tenant: TenantId::new(u(r.try_get(0).map_err(pg_error)?)),
                    hour: u(r.try_get(1).map_err(pg_error)?),
                    account: AccountId::new(u(r.try_get(2).map_err(pg_error)?)),
                    vault: (!vault.is_empty())
                        .then(|| fixed(&vault, "traffic").map(VaultId::from_bytes))
                        .transpose()?,
                    device: (!device.is_empty())
                        .then(|| fixed(&device, "traffic").map(DeviceId::from_bytes))
                        .transpose()?,
                },
                counts,
            ));
        }
        Ok(out)
    }

    async fn storage_hours(
        &self,
        tenant: Option<TenantId>,
        hours: std::ops::Range<u64>,
        now: u64,
    ) -> Result<Vec<StorageHour>, StoreError> {
        if hours.is_empty() {
            return Ok(Vec::new());
        }
        let t = tenant.map(|t| b(t.get()));
        // Gauges and rows from one snapshot, so time folded between two reads is not counted
        // twice.
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg_error)?;
        let gauges = query_rows(
            &tx,
            "SELECT tenant, vault, account, stored, since FROM gauges \
                 WHERE ($1::BIGINT IS NULL OR tenant = $1)",
            &[&t],
        )
        .await
        .map_err(pg_error)?;
        let rows = query_rows(
            &tx,
            "SELECT h.tenant, h.vault, h.hour, h.max_bytes, h.byte_seconds::text, \
                 COALESCE(g.account, v.account, 0) \
                 FROM storage_hours h \
                 LEFT JOIN gauges g ON g.tenant = h.tenant AND g.vault = h.vault \
                 LEFT JOIN vaults v ON v.vault = h.vault \
                 WHERE ($1::BIGINT IS NULL OR h.tenant = $1) AND h.hour >= $2 AND h.hour < $3",
            &[&t, &bound(hours.start), &bound(hours.end)],
        )
        .await
        .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        drop(client);
        type Key = (u64, VaultId);
        let mut merged: BTreeMap<Key, (u64, BTreeMap<u64, (u64, u128)>)> = BTreeMap::new();
        for r in &rows {
            let vault: Vec<u8> = r.try_get(1).map_err(pg_error)?;
            let key = (
                u(r.try_get(0).map_err(pg_error)?),
                VaultId::from_bytes(fixed(&vault, "storage_hours")?),
            );
            let byte_seconds: String = r.try_get(4).map_err(pg_error)?;
            let byte_seconds = byte_seconds
                .parse::<u128>()
                .map_err(|_| StoreError::corrupt("storage_hours", "byte-seconds is not a u128"))?;
            let account = u(r.try_get(5).map_err(pg_error)?);
            let slot = merged.entry(key).or_insert((account, BTreeMap::new()));
            slot.1.insert(
                u(r.try_get(2).map_err(pg_error)?),
                (u(r.try_get(3).map_err(pg_error)?), byte_seconds),
            );
        }
        for g in &gauges {
            let vault: Vec<u8> = g.try_get(1).map_err(pg_error)?;
            let key = (
                u(g.try_get(0).map_err(pg_error)?),
                VaultId::from_bytes(fixed(&vault, "gauges")?),
            );
            let account = u(g.try_get(2).map_err(pg_error)?);
            let stored = u(g.try_get(3).map_err(pg_error)?);
            let since = u(g.try_get(4).map_err(pg_error)?);
            let slot = merged.entry(key).or_insert((account, BTreeMap::new()));
            slot.0 = account;
            if stored > 0 {
                for (hour, seconds) in hour_spans(since, now.max(since)) {
                    if !hours.contains(&hour) {
                        continue;
                    }
                    let e = slot.1.entry(hour).or_insert((0, 0));
                    e.0 = e.0.max(stored);
                    e.1 = e.1.saturating_add(u128::from(stored) * u128::from(seconds));
                }
            }
        }
        let mut out = Vec::new();
        for ((tenant, vault), (account, by_hour)) in merged {
            for (hour, (max_bytes, byte_seconds)) in by_hour {
                if max_bytes == 0 && byte_seconds == 0 {
                    continue;
                }
                out.push(StorageHour {
                    tenant: TenantId::new(tenant),
                    account: AccountId::new(account),
                    vault,
                    hour,
                    max_bytes,
                    byte_seconds,
                });
            }
        }
        Ok(out)
    }

    async fn storage_gauges(
        &self,
        tenant: Option<TenantId>,
    ) -> Result<Vec<VaultStorage>, StoreError> {
        let rows = self
            .query(
                "SELECT tenant, vault, account, stored, since FROM gauges \
                 WHERE ($1::BIGINT IS NULL OR tenant = $1) AND stored > 0 ORDER BY tenant, vault",
                &[&tenant.map(|t| b(t.get()))],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let vault: Vec<u8> = r.try_get(1).map_err(pg_error)?;
                Ok(VaultStorage {
                    tenant: TenantId::new(u(r.try_get(0).map_err(pg_error)?)),
                    vault: VaultId::from_bytes(fixed(&vault, "gauges")?),
                    account: AccountId::new(u(r.try_get(2).map_err(pg_error)?)),
                    stored_bytes: u(r.try_get(3).map_err(pg_error)?),
                    since: u(r.try_get(4).map_err(pg_error)?),
                })
            })
            .collect()
    }

    async fn envelopes_for(
        &self,
        vault: VaultId,
        recipient: DeviceId,
    ) -> Result<Vec<EnvelopeInfo>, StoreError> {
        self.vault_or_not_found(&vault).await?;
        let rows = self
            .query(
                "SELECT epoch, sender, envelope FROM envelopes WHERE vault = $1 AND recipient = $2 \
                 ORDER BY epoch DESC, sender DESC LIMIT $3",
                &[
                    &vault.as_bytes().as_slice(),
                    &recipient.as_bytes().as_slice(),
                    &i64::try_from(MAX_ENVELOPES).unwrap_or(i64::MAX),
                ],
            )
            .await?;
        let mut out =
            rows.iter()
                .map(|r| {
                    let epoch: i64 = r.try_get(0).map_err(pg_error)?;
                    let sender: Vec<u8> = r.try_get(1).map_err(pg_error)?;
                    Ok(EnvelopeInfo {
                        epoch: Epoch::new(u32::try_from(epoch).map_err(|_| {
                            StoreError::corrupt("envelopes", "an epoch is not u32")
                        })?),
                        recipient,
                        sender: DeviceId::from_bytes(fixed(&sender, "envelopes")?),
                        envelope: r.try_get(2).map_err(pg_error)?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
        out.reverse();
        Ok(out)
    }

    fn events(&self) -> Option<broadcast::Receiver<StoreEvent>> {
        Some(self.events.subscribe())
    }
}

/// A store in a fresh schema of the PostgreSQL that `DOOZ_TEST_POSTGRES` names (`scripts/test`
/// starts a throwaway one; `scripts/postgres.sh` says how).
#[cfg(test)]
pub(crate) async fn test_store() -> PgStore {
    let url = std::env::var("DOOZ_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!(
            "DOOZ_TEST_POSTGRES is not set: run the tests with scripts/test, or start a \
             throwaway PostgreSQL with `eval \"$(bash scripts/postgres.sh start)\"`"
        )
    });
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).unwrap();
    PgStore::connect_schema(&url, &format!("t_{}", hex(&bytes)), 8)
        .await
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::conformance_tests;

    conformance_tests!(test_store().await);

    #[test]
    fn events_round_trip_through_their_payload() {
        let vault = VaultId::from_bytes([7; 16]);
        let device = DeviceId::from_bytes([9; 32]);
        let changed = format!("c {} 42", hex(vault.as_bytes()));
        assert_eq!(
            parse_event(&changed),
            Some(StoreEvent::Changed {
                vault,
                seq: Seq::new(42)
            })
        );
        let revoked = format!("r {}", hex(device.as_bytes()));
        assert_eq!(parse_event(&revoked), Some(StoreEvent::Revoked { device }));
        for bad in ["", "c", "c 00 1", "x 00", "r 0g", "c 07 nope"] {
            assert_eq!(parse_event(bad), None, "{bad:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_handle_on_the_schema_sees_commits_as_events() {
        let store = test_store().await;
        let mut events = store.events().unwrap();
        let tenant = store.create_tenant("events").await.unwrap();
        let account = store.create_account(tenant, "a").await.unwrap();
        let vault = VaultId::from_bytes([3; 16]);
        store.create_vault(account, vault, 1).await.unwrap();
        let entry = dooz_protocol::CommitEntry {
            entry: EntryKey::from_bytes([1; 32]),
            parent: None,
            version: VersionId::from_bytes([2; 16]),
            record: vec![1, 2, 3],
            chunks: Vec::new(),
            epoch: Epoch::new(1),
        };
        store
            .commit(vault, DeviceId::from_bytes([5; 32]), vec![entry], 2)
            .await
            .unwrap();
        loop {
            match events.recv().await.unwrap() {
                StoreEvent::Lagged => continue,
                event => {
                    assert_eq!(
                        event,
                        StoreEvent::Changed {
                            vault,
                            seq: Seq::new(1)
                        }
                    );
                    break;
                }
            }
        }
    }
}
