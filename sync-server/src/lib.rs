//! `dooz-server`: the Dooz Sync server.
//!
//! Built by the sync issue and the ones after it, this crate will hold the QUIC data plane
//! (quinn + rustls, mutual TLS, one request per stream), the metadata store (sled by default,
//! PostgreSQL for several instances), the axum control plane under `/v1`, and metering.
//! It stores sealed chunks through `dooz-storage` and never holds a vault key.
//!
//! ## Metadata store
//!
//! [`MetaStore`] is the one trait the service keeps its metadata behind: tenants, accounts,
//! enrolment tokens (hashed), devices, vaults, chunk records, each vault's gap-free commit log
//! with per-entry compare-and-swap, entry heads and envelopes. [`SledStore`] is the embedded
//! engine; errors are [`StoreError`]s, which map to wire codes with `to_error_code()`.
//!
//! ```
//! use dooz_protocol::{CommitEntry, CommitResult, DeviceId, EntryKey, Epoch, Seq, VaultId, VersionId};
//! use dooz_server::{DeviceRegistration, MetaStore, SledStore};
//!
//! let now = 1_700_000_000;
//! let rt = tokio::runtime::Builder::new_current_thread().build()?;
//! rt.block_on(async {
//!     let store = SledStore::temporary()?;
//!     let tenant = store.create_tenant("acme").await?;
//!     let account = store.create_account(tenant, "ana").await?;
//!     let token = store.create_enrolment_token(account, now + 900, false).await?;
//!     let identity_key = [1; 32];
//!     let registration = DeviceRegistration {
//!         device: DeviceId::from_bytes(*blake3::hash(&identity_key).as_bytes()),
//!         identity_key,
//!         exchange_key: [2; 32],
//!         name: "laptop".into(),
//!     };
//!     let device = store.redeem_enrolment(token.expose(), registration, now).await?.device;
//!
//!     let vault = VaultId::from_bytes([7; 16]);
//!     store.create_vault(account, vault, now).await?;
//!     let entry = CommitEntry {
//!         entry: EntryKey::from_bytes([3; 32]),
//!         parent: None,
//!         version: VersionId::from_bytes([4; 16]),
//!         record: b"sealed record".to_vec(),
//!         chunks: vec![],
//!         epoch: Epoch::ZERO,
//!     };
//!     let results = store.commit(vault, device, vec![entry], now).await?;
//!     assert!(matches!(results[0], CommitResult::Applied { seq, .. } if seq == Seq::new(1)));
//!     assert_eq!(store.pull(vault, Seq::ZERO, 0).await?.changes.len(), 1);
//!     Ok::<_, dooz_server::StoreError>(())
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Account policies
//!
//! [`policy`] is the seam between the control plane and the data plane: a
//! [`PolicySource`](policy::PolicySource) says what each account may do
//! ([`Access`](policy::Access) and [`Limits`](policy::Limits)); the service refuses what it
//! forbids with `SubscriptionInactive` or `QuotaExceeded`, before anything is accepted, and
//! [`MetaStore::account_usage`] gives the usage it counts. Without a control plane every account
//! is [`Unlimited`](policy::Unlimited).
//!
//! ## Data plane
//!
//! [`Server`] serves the QUIC data plane: mutual TLS where a device's certificate key is its
//! identity ([`tls`]), endpoints tuned for throughput ([`transport`]), frames over streams
//! ([`frame_io`]), and the accept loop, admission, one request per stream, subscriptions,
//! enrolment codes and the admin socket ([`service`]). [`config`] turns settings with
//! documented defaults into a validated [`ServerConfig`]; the `dooz-server` binary wraps it all.
//! The wire protocol, close codes and enrolment are specified in `docs/PROTOCOL.md`.
//!
//! ```
//! use dooz_protocol::{ALPN, Extensions, Hello, Message, PROTOCOL_VERSION, Response};
//! use dooz_server::config::ServerSettings;
//! use dooz_server::frame_io::{FrameReader, write_frame};
//! use dooz_server::tls::{DeviceCert, SERVER_NAME};
//! use dooz_server::transport::{TransportTuning, client_config, client_endpoint};
//! use dooz_server::{DeviceRegistration, Server, ServerParts};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! let dir = tempfile::tempdir()?;
//! let config = ServerSettings {
//!     data_dir: dir.path().into(),
//!     listen: "127.0.0.1:0".parse()?,
//!     ..Default::default()
//! }
//! .validate()?;
//! let (parts, bootstrap) = ServerParts::open(&config).await?;
//! let server = Server::start(parts)?;
//!
//! // Enrol a device (through the store here; devices redeem an enrolment code).
//! let device = DeviceCert::generate()?;
//! let store = server.store();
//! let token = store
//!     .create_enrolment_token(bootstrap.account.id, u64::MAX / 2, false)
//!     .await?;
//! let registration = DeviceRegistration {
//!     device: device.device_id()?,
//!     identity_key: device.identity_key()?,
//!     exchange_key: [0; 32],
//!     name: "laptop".into(),
//! };
//! store.redeem_enrolment(token.expose(), registration, 0).await?;
//!
//! // Connect, pinning the server certificate, and say Hello on a stream of its own.
//! let tuning = TransportTuning::default();
//! let client = client_config(&device, server.fingerprint(), ALPN, &tuning)?;
//! let endpoint = client_endpoint("127.0.0.1:0".parse()?, client, &tuning)?;
//! let conn = endpoint.connect(server.local_addr(), SERVER_NAME)?.await?;
//! let (mut send, recv) = conn.open_bi().await?;
//! let hello = Hello {
//!     protocol_version: PROTOCOL_VERSION,
//!     client_name: "doc".into(),
//!     client_version: "0".into(),
//!     ext: Extensions::new(),
//! };
//! write_frame(&mut send, &hello.into()).await?;
//! send.finish()?;
//! match FrameReader::new(recv).read_frame().await? {
//!     Some(Message::Response(Response::HelloOk(ok))) => assert_eq!(ok.device, device.device_id()?),
//!     other => panic!("unexpected answer {other:?}"),
//! }
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```

pub mod config;
pub mod control;
pub mod frame_io;
pub mod metering;
pub mod policy;
pub mod service;
pub mod tls;
pub mod transport;

mod store;

pub use store::{
    AccountId, AccountRecord, AccountUsage, ChangePage, ChunkLocation, ChunkRecord, ChunkState,
    DEFAULT_POOL_SIZE, DeviceRecord, DeviceRegistration, EnrolmentToken, EntryHead, HOUR_SECS,
    MAX_PAGE_BYTES, MetaStore, MigrationReport, PG_SCHEMA_VERSION, PackId, PackedChunk, PgStore,
    SledStore, StorageHour, StoreError, StoreEvent, TableSum, TenantId, TenantRecord,
    TrafficCounts, TrafficKey, TrafficSync, VaultRecord, VaultStorage, VersionPage,
    migrate_sled_to_postgres,
};

pub use config::{ServerConfig, ServerSettings};
pub use service::{Bootstrap, CloseCode, EnrolmentCode, Server, ServerError, ServerParts};
