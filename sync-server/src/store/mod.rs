//! The metadata store: everything the server knows besides blob bytes.
//!
//! [`MetaStore`] is the one trait the service talks to; [`SledStore`] is the embedded engine
//! (no set-up), and PostgreSQL joins it when an operator runs several server instances. Both run
//! the same conformance suite (`store::conformance`, in tests).
//!
//! What it holds: minimal tenants and accounts, enrolment tokens (hashed), devices, vaults, chunk
//! records (pending until a commit references them), each vault's gap-free commit log with
//! per-entry compare-and-swap, entry heads, and envelopes. Everything in it is opaque to it:
//! entry keys, records and envelopes are sealed by devices; the server never holds a vault key.
//!
//! **Invariant:** a vault's log holds seqs `1..=head` with no gap, and each entry's versions
//! form one chain (each version's parent is the version before it). A commit is all-or-nothing
//! on disk.

mod api;
mod codec;
#[cfg(test)]
pub(crate) mod conformance;
mod error;
mod migrate;
mod pg_store;
mod sled_store;
mod token;

pub use api::{
    AccountId, AccountRecord, AccountUsage, ChangePage, ChunkLocation, ChunkRecord, ChunkState,
    DeviceRecord, DeviceRegistration, EntryHead, HOUR_SECS, MAX_PAGE_BYTES, MetaStore, PackId,
    PackedChunk, StorageHour, StoreEvent, TenantId, TenantRecord, TrafficCounts, TrafficKey,
    VaultRecord, VaultStorage, VersionPage,
};
pub use error::StoreError;
pub use migrate::{MigrationReport, TableSum, migrate_sled_to_postgres};
pub use pg_store::{DEFAULT_POOL_SIZE, PG_SCHEMA_VERSION, PgStore};
pub use sled_store::{SledStore, TrafficSync};
pub use token::EnrolmentToken;
