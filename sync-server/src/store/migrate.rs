//! Moving a single-node deployment's metadata from sled to PostgreSQL
//! (`dooz-server migrate --from sled:DIR --to postgres://…`, docs/SCALE-OUT.md).
//!
//! Both engines speak one neutral row format: a table of the PostgreSQL schema
//! (`pg_schema.sql`) and its values, column by column. The sled store exports each of its trees
//! as rows of the matching table (journalled traffic counts included: opening the store
//! replays them), the PostgreSQL store inserts them in one transaction per table, ids kept.
//! Then every table is read back from PostgreSQL and compared with what sled exported, by row
//! count and by a checksum that does not depend on row order (the sum, modulo 2^256, of the
//! BLAKE3 hashes of the rows).

use crate::store::error::StoreError;

/// A column's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Int,
    Bytes,
    Text,
    Bool,
    /// NUMERIC, carried as its decimal text.
    Numeric,
}

/// One value of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Int(Option<i64>),
    Bytes(Option<Vec<u8>>),
    Text(String),
    Bool(bool),
    Numeric(String),
}

/// A table of the schema: its name and columns, in `pg_schema.sql` order.
pub(crate) struct Table {
    pub(crate) name: &'static str,
    pub(crate) columns: &'static [(&'static str, Kind)],
}

use Kind::{Bool, Bytes, Int, Numeric, Text};

/// Every table, in an order that satisfies no constraint in particular (there are no foreign
/// keys) but reads well in progress output.
pub(crate) const TABLES: &[Table] = &[
    Table {
        name: "tenants",
        columns: &[("id", Int), ("name", Text)],
    },
    Table {
        name: "accounts",
        columns: &[
            ("id", Int),
            ("tenant", Int),
            ("name", Text),
            ("stored_bytes", Int),
        ],
    },
    Table {
        name: "tokens",
        columns: &[
            ("hash", Bytes),
            ("tenant", Int),
            ("account", Int),
            ("expires_at", Int),
            ("reusable", Bool),
            ("used_at", Int),
            ("uses", Int),
        ],
    },
    Table {
        name: "devices",
        columns: &[
            ("device", Bytes),
            ("tenant", Int),
            ("account", Int),
            ("identity_key", Bytes),
            ("exchange_key", Bytes),
            ("name", Text),
            ("revoked_at", Int),
            ("created_at", Int),
            ("last_seen", Int),
        ],
    },
    Table {
        name: "vaults",
        columns: &[
            ("vault", Bytes),
            ("tenant", Int),
            ("account", Int),
            ("created_at", Int),
            ("head_seq", Int),
            ("latest_epoch", Int),
        ],
    },
    Table {
        name: "chunks",
        columns: &[
            ("vault", Bytes),
            ("chunk", Bytes),
            ("sealed_len", Int),
            ("blake3", Bytes),
            ("pending_since", Int),
            ("committed_at", Int),
            ("pack", Bytes),
            ("pack_offset", Int),
        ],
    },
    Table {
        name: "packs",
        columns: &[
            ("vault", Bytes),
            ("pack", Bytes),
            ("len", Int),
            ("chunks", Int),
            ("created_at", Int),
        ],
    },
    Table {
        name: "log",
        columns: &[
            ("vault", Bytes),
            ("seq", Int),
            ("entry", Bytes),
            ("version", Bytes),
            ("parent", Bytes),
            ("record", Bytes),
            ("chunks", Bytes),
            ("epoch", Int),
            ("device", Bytes),
            ("committed_at", Int),
        ],
    },
    Table {
        name: "heads",
        columns: &[
            ("vault", Bytes),
            ("entry", Bytes),
            ("version", Bytes),
            ("seq", Int),
        ],
    },
    Table {
        name: "versions",
        columns: &[("vault", Bytes), ("entry", Bytes), ("seq", Int)],
    },
    Table {
        name: "envelopes",
        columns: &[
            ("vault", Bytes),
            ("recipient", Bytes),
            ("epoch", Int),
            ("sender", Bytes),
            ("envelope", Bytes),
        ],
    },
    Table {
        name: "rotations",
        columns: &[("vault", Bytes), ("epoch", Int), ("since", Int)],
    },
    Table {
        name: "traffic",
        columns: &[
            ("tenant", Int),
            ("hour", Int),
            ("account", Int),
            ("vault", Bytes),
            ("device", Bytes),
            ("ingress", Int),
            ("egress", Int),
            ("requests", Int),
        ],
    },
    Table {
        name: "gauges",
        columns: &[
            ("tenant", Int),
            ("vault", Bytes),
            ("account", Int),
            ("stored", Int),
            ("since", Int),
        ],
    },
    Table {
        name: "storage_hours",
        columns: &[
            ("tenant", Int),
            ("vault", Bytes),
            ("hour", Int),
            ("max_bytes", Int),
            ("byte_seconds", Numeric),
        ],
    },
];

/// Rows of one table and what they add up to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableSum {
    /// Rows.
    pub rows: u64,
    /// The sum of the rows' BLAKE3 hashes, modulo 2^256 (order-independent).
    pub checksum: [u8; 32],
}

impl TableSum {
    pub(crate) fn add(&mut self, row: &[Value]) {
        let mut h = blake3::Hasher::new();
        for value in row {
            let (tag, bytes): (u8, &[u8]) = match value {
                Value::Int(None) | Value::Bytes(None) => (0, &[]),
                Value::Int(Some(v)) => {
                    h.update(&[1]);
                    h.update(&v.to_be_bytes());
                    continue;
                }
                Value::Bytes(Some(b)) => (2, b),
                Value::Text(t) => (3, t.as_bytes()),
                Value::Bool(b) => (4, if *b { &[1] } else { &[0] }),
                Value::Numeric(n) => (5, n.as_bytes()),
            };
            h.update(&[tag]);
            h.update(&(bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        }
        let hash = h.finalize();
        // Little-endian 256-bit addition.
        let mut carry = 0u16;
        for (sum, add) in self.checksum.iter_mut().zip(hash.as_bytes()) {
            let total = u16::from(*sum) + u16::from(*add) + carry;
            *sum = (total & 0xff) as u8;
            carry = total >> 8;
        }
        self.rows += 1;
    }

    /// The checksum as hex.
    pub fn checksum_hex(&self) -> String {
        self.checksum.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// What a migration moved, table by table: what sled exported and what PostgreSQL holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// `(table, exported from sled, read back from PostgreSQL)`.
    pub tables: Vec<(&'static str, TableSum, TableSum)>,
}

impl MigrationReport {
    /// Whether every table read back equals what was exported.
    pub fn verified(&self) -> bool {
        self.tables.iter().all(|(_, from, to)| from == to)
    }
}

/// Copies every row of `from` into `to`, which must be empty, then checks counts and checksums
/// table by table. `progress` hears `(table, rows copied so far)` now and then.
pub async fn migrate_sled_to_postgres(
    from: &crate::store::SledStore,
    to: &crate::store::PgStore,
    progress: &(dyn Fn(&str, u64) + Send + Sync),
) -> Result<MigrationReport, StoreError> {
    if !to.is_empty().await? {
        return Err(StoreError::InvalidInput {
            what: "migration target",
            reason: "the PostgreSQL store holds data already; migrate into an empty \
                     database (or schema)"
                .to_owned(),
        });
    }
    let mut report = MigrationReport::default();
    for table in TABLES {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Batch>(4);
        let exporter = from.clone();
        let name = table.name;
        let export = tokio::task::spawn_blocking(move || {
            let mut sum = TableSum::default();
            let mut batch = Vec::with_capacity(EXPORT_BATCH);
            exporter.export_table(name, &mut |row| {
                sum.add(&row);
                batch.push(row);
                if batch.len() >= EXPORT_BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(EXPORT_BATCH));
                    if tx.blocking_send(Batch::Rows(full)).is_err() {
                        return Err(StoreError::Unavailable {
                            reason: "the migration's importer stopped".to_owned(),
                        });
                    }
                }
                Ok(())
            })?;
            if !batch.is_empty() {
                let _ = tx.blocking_send(Batch::Rows(batch));
            }
            // Only a complete export lets the importer commit the table.
            let _ = tx.blocking_send(Batch::Done);
            Ok::<_, StoreError>(sum)
        });
        let imported = to.import_table(table, &mut rx, progress).await;
        // Let the exporter finish if the import failed.
        rx.close();
        let exported = match export.await {
            Ok(result) => result?,
            Err(e) => {
                return Err(StoreError::Unavailable {
                    reason: format!("the sled export did not finish: {e}"),
                });
            }
        };
        imported?;
        let read_back = to.table_sum(table).await?;
        report.tables.push((table.name, exported, read_back));
    }
    let (tenants, accounts) = from.id_counters()?;
    to.reset_id_sequences(tenants, accounts).await?;
    Ok(report)
}

/// What the sled reader sends the PostgreSQL writer: rows, then `Done` once the export is
/// complete (without it the writer rolls the table back).
pub(crate) enum Batch {
    Rows(Vec<Vec<Value>>),
    Done,
}

/// Rows sent from the sled reader to the PostgreSQL writer at a time.
const EXPORT_BATCH: usize = 1000;
