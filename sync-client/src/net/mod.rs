//! The client side of the `dooz/1` data plane: a QUIC connection to the sync server with typed
//! requests ([`Connection`]).
//!
//! - **TLS.** TLS 1.3, ALPN `dooz/1`, mutual: the client certificate is self-signed by the
//!   device's Ed25519 identity key (`DeviceSecretKeys::tls_pkcs8_der`), and the server's
//!   certificate is pinned by its fingerprint, BLAKE3 of its DER (as `dooz-server` prints it and
//!   the enrolment code carries it). Names and dates are not checked: the pin is the identity.
//! - **Requests.** One request per bidirectional stream, so requests on one connection run in
//!   parallel ([`Connection`] is cheap to clone and share between tasks). `Hello` is sent once,
//!   by [`Connection::connect`], before anything else.
//! - **Chunks.** [`Connection::put_chunk`] sends a `PutChunk` header carrying the length and
//!   BLAKE3 of the sealed bytes, then the raw bytes; [`Connection::get_chunk`] hashes the raw
//!   body as it arrives and refuses bytes whose BLAKE3 is not the one the `ChunkData` header
//!   announced ([`NetError::Integrity`]).
//! - **Enrolment.** [`Connection::enrol`] redeems an enrolment code over ALPN `dooz-enrol/1`
//!   with the same device certificate and pinning, before the device may connect to sync.
//! - **Errors.** An `Error` response becomes [`NetError::Server`]; a connection the server
//!   closed with one of its close codes becomes a typed error saying what to do
//!   ([`NetError::NotEnrolled`], [`NetError::Revoked`], [`NetError::ServerShuttingDown`]).
//!   [`NetError::is_retryable`] tells the engine whether to reconnect and try again.

mod enrol;
mod frame_io;
mod tls;
mod transport;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use dooz_crypto::DeviceSecretKeys;
use dooz_protocol::{
    Change, Changed, ChunkId, CommitEntry, CommitResult, DeviceId, EntryKey, EnvelopeInfo, Epoch,
    ErrorCode, Extensions, HelloOk, HistoryPage, Message, Request, Response, Seq, VaultId,
    VaultInfo, encoded_len,
};
use quinn::crypto::rustls::QuicClientConfig;

use frame_io::{FrameIoError, FrameReader, write_frame};
pub use tls::{parse_server_fingerprint, server_fingerprint_hex};

/// The protocol revision this client speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// Application close codes of data-plane connections (`docs/PROTOCOL.md`, "Connection close
/// codes").
mod close_code {
    pub(super) const DONE: u64 = 0;
    pub(super) const UNKNOWN_DEVICE: u64 = 1;
    pub(super) const REVOKED: u64 = 2;
    pub(super) const SHUTTING_DOWN: u64 = 3;
    pub(super) const INTERNAL: u64 = 4;
}

/// A request to the server failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The server address does not resolve.
    #[error(
        "cannot resolve the server address {server}: {reason}; check the address in the enrolment"
    )]
    Resolve {
        /// The address as given.
        server: String,
        /// What went wrong.
        reason: String,
    },
    /// TLS or the QUIC endpoint could not be set up locally.
    #[error("cannot set up the connection to {server}: {reason}")]
    Setup {
        /// The server.
        server: String,
        /// What went wrong.
        reason: String,
    },
    /// The server's certificate is not the pinned one.
    #[error(
        "the server at {server} presented a certificate whose fingerprint is not the pinned one \
         ({expected}); you may be talking to another server: check the address, or enrol again \
         with a fresh enrolment code"
    )]
    ServerCertMismatch {
        /// The server.
        server: String,
        /// The pinned fingerprint, hex.
        expected: String,
    },
    /// This device is not enrolled on the server.
    #[error(
        "this device is not enrolled on {server}: run `dooz enroll <code>` with an enrolment code from the server's admin"
    )]
    NotEnrolled {
        /// The server.
        server: String,
    },
    /// The server refused an enrolment code: its token is unknown, expired or used up.
    #[error("{}", enrol::refused_message(server, reason))]
    EnrolmentRefused {
        /// The server.
        server: String,
        /// What the server said.
        reason: String,
    },
    /// This device was revoked.
    #[error(
        "this device was revoked on {server} and may not sync any more; ask the account's admin, then enrol it again with `dooz enroll <code>`"
    )]
    Revoked {
        /// The server.
        server: String,
    },
    /// The server is shutting down (retry later).
    #[error(
        "the server at {server} is shutting down; dooz retries by itself, or run the command again later"
    )]
    ServerShuttingDown {
        /// The server.
        server: String,
    },
    /// The server closed the connection for another reason.
    #[error("the server at {server} closed the connection (code {code}): {reason}")]
    Closed {
        /// The server.
        server: String,
        /// The application close code.
        code: u64,
        /// The reason the server gave.
        reason: String,
    },
    /// The connection failed or was lost (timeout, reset, network down).
    #[error(
        "the connection to {server} failed: {reason}; dooz retries by itself, check the network if it persists"
    )]
    Connection {
        /// The server.
        server: String,
        /// What quinn reported.
        reason: String,
        /// Whether trying again may help.
        retryable: bool,
    },
    /// The server answered the request with an `Error`. Quotas (`QuotaExceeded`) and an
    /// inactive subscription (`SubscriptionInactive`) read as what they mean for the user.
    #[error("{}", server_message(code, message))]
    Server {
        /// What went wrong, for programs.
        code: ErrorCode,
        /// What went wrong and what to do, from the server.
        message: String,
    },
    /// The server's answer broke the protocol (malformed, unexpected message, bad framing).
    #[error(
        "the server at {server} sent an invalid answer to {request}: {reason}; upgrade dooz or the server"
    )]
    Protocol {
        /// The server.
        server: String,
        /// The request.
        request: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// A downloaded chunk's bytes do not hash to the BLAKE3 the server announced.
    #[error(
        "chunk {chunk} arrived corrupted: its BLAKE3 does not match the one the server announced; the transfer or the server's copy is damaged"
    )]
    Integrity {
        /// The chunk.
        chunk: ChunkId,
    },
}

/// The message of [`NetError::Server`]: what went wrong and what to do.
fn server_message(code: &ErrorCode, message: &str) -> String {
    use dooz_protocol::Resource;
    const KEPT: &str =
        "local changes are kept on this device and sync once the server accepts them";
    match code {
        ErrorCode::QuotaExceeded {
            resource: Resource::StorageBytes,
            limit,
            used,
        } => format!(
            "the account's storage quota is full: {} of {} used; ask the operator to upgrade the \
             plan or delete files ({KEPT})",
            human_bytes(*used),
            human_bytes(*limit)
        ),
        ErrorCode::QuotaExceeded {
            resource: Resource::Devices,
            limit,
            used,
        } => format!(
            "the account has {used} of the {limit} devices its plan allows: revoke a device you \
             no longer use, or ask the operator to upgrade the plan"
        ),
        ErrorCode::QuotaExceeded {
            resource: Resource::Vaults,
            limit,
            used,
        } => format!(
            "the account has {used} of the {limit} vaults its plan allows: ask the operator to \
             upgrade the plan"
        ),
        ErrorCode::QuotaExceeded {
            resource,
            limit,
            used,
        } => format!(
            "the account's quota of {resource} is used up ({used} of {limit}): ask the operator \
             to upgrade the plan ({KEPT})"
        ),
        ErrorCode::SubscriptionInactive if message.is_empty() => format!(
            "the account's subscription is not active: ask the operator to reactivate it ({KEPT})"
        ),
        ErrorCode::SubscriptionInactive => format!("{message}; ask the operator ({KEPT})"),
        _ => format!("the server refused the request ({code}): {message}"),
    }
}

/// `n` bytes for people: `512 B`, `10.0 MiB`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    // Display only: the precision lost converting to f64 does not show at one decimal.
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match UNITS.get(unit) {
        Some(name) if unit > 0 => format!("{value:.1} {name}"),
        _ => format!("{n} B"),
    }
}

impl NetError {
    /// Whether the same request may succeed if tried again later, on a new connection if the
    /// old one is gone.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Resolve { .. } | Self::ServerShuttingDown { .. } => true,
            Self::Connection { retryable, .. } => *retryable,
            Self::Closed { code, .. } => {
                matches!(*code, close_code::DONE | close_code::INTERNAL)
            }
            Self::Server { code, .. } => code.is_retryable(),
            // A corrupted transfer may be a transient fault: refetching is the right move.
            Self::Integrity { .. } => true,
            Self::Setup { .. }
            | Self::ServerCertMismatch { .. }
            | Self::NotEnrolled { .. }
            | Self::EnrolmentRefused { .. }
            | Self::Revoked { .. }
            | Self::Protocol { .. } => false,
        }
    }

    /// Whether the connection this came from is unusable (reconnect before retrying).
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            Self::Connection { .. }
                | Self::Closed { .. }
                | Self::ServerShuttingDown { .. }
                | Self::NotEnrolled { .. }
                | Self::Revoked { .. }
        )
    }
}

/// Protocol traffic of one vault as the server meters it (docs/METERING.md): frames as encoded,
/// chunk bodies the server stored or sent, one request per answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Bytes sent: request frames, and chunk bodies the server answered `ChunkStored` to (the
    /// server's ingress).
    pub sent_bytes: u64,
    /// Bytes received: answer frames, chunk bodies and change notifications (the server's
    /// egress).
    pub received_bytes: u64,
    /// Requests answered.
    pub requests: u64,
    /// Requests sent that got no complete answer (the stream or connection was lost): the
    /// server may have counted them or not (docs/METERING.md, "Crashes").
    pub unanswered: u64,
    /// Bytes of those requests (frames and bodies).
    pub unanswered_sent_bytes: u64,
}

/// Counts the traffic of one or more connections per vault (`None`: requests that name no
/// vault), counting a request once its whole answer has arrived. Share one meter between the
/// connections of a device (`Connector::with_traffic_meter`) to count across reconnects.
#[derive(Debug, Default)]
pub struct TrafficMeter {
    by_vault: std::sync::Mutex<std::collections::BTreeMap<Option<VaultId>, Traffic>>,
    /// Answered uploads per chunk, when tracked.
    uploads: Option<std::sync::Mutex<UploadLog>>,
}

type UploadLog = std::collections::HashMap<(VaultId, ChunkId), Vec<(u64, u64)>>;

impl TrafficMeter {
    /// A meter that also remembers every answered upload per chunk (memory grows with the
    /// chunks uploaded), for [`repeated_uploads`](Self::repeated_uploads).
    pub fn tracking_uploads() -> Self {
        Self {
            by_vault: Default::default(),
            uploads: Some(Default::default()),
        }
    }

    /// For each chunk uploaded and answered `ChunkStored` more than once, every upload but the
    /// last, per vault: uploads the server acknowledged and then lost (a crash before the chunk
    /// was durable), which the server does not count (docs/METERING.md). Empty unless the meter
    /// was made with [`tracking_uploads`](Self::tracking_uploads).
    pub fn repeated_uploads(&self) -> std::collections::BTreeMap<VaultId, Traffic> {
        let mut out: std::collections::BTreeMap<VaultId, Traffic> = Default::default();
        if let Some(log) = &self.uploads {
            let log = log
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for ((vault, _), uploads) in log.iter() {
                if let Some((_, earlier)) = uploads.split_last() {
                    let t = out.entry(*vault).or_default();
                    for (sent, received) in earlier {
                        t.sent_bytes += sent;
                        t.received_bytes += received;
                        t.requests += 1;
                    }
                }
            }
        }
        out.retain(|_, t| t.requests > 0);
        out
    }

    fn upload(&self, vault: VaultId, chunk: ChunkId, sent: u64, received: u64) {
        if let Some(log) = &self.uploads {
            log.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry((vault, chunk))
                .or_default()
                .push((sent, received));
        }
    }

    /// The traffic so far, per vault.
    pub fn snapshot(&self) -> std::collections::BTreeMap<Option<VaultId>, Traffic> {
        self.by_vault
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn unanswered(&self, vault: Option<VaultId>, sent: u64) {
        let mut map = self
            .by_vault
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let t = map.entry(vault).or_default();
        t.unanswered += 1;
        t.unanswered_sent_bytes += sent;
    }

    fn add(&self, vault: Option<VaultId>, sent: u64, received: u64, requests: u64) {
        let mut map = self
            .by_vault
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let t = map.entry(vault).or_default();
        t.sent_bytes += sent;
        t.received_bytes += received;
        t.requests += requests;
    }
}

/// Byte counters of one connection (what went over the wire as chunk bodies).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Chunks uploaded with `PutChunk`.
    pub chunks_sent: u64,
    /// Sealed bytes uploaded in chunk bodies.
    pub chunk_bytes_sent: u64,
    /// Chunks downloaded with `GetChunk`.
    pub chunks_received: u64,
    /// Sealed bytes downloaded in chunk bodies.
    pub chunk_bytes_received: u64,
}

#[derive(Default)]
struct Counters {
    chunks_sent: AtomicU64,
    chunk_bytes_sent: AtomicU64,
    chunks_received: AtomicU64,
    chunk_bytes_received: AtomicU64,
}

struct Inner {
    server: String,
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    hello: HelloOk,
    counters: Counters,
    traffic: Arc<TrafficMeter>,
}

/// An authenticated connection to the sync server. Clones share the connection; requests from
/// several tasks run in parallel on their own streams.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("server", &self.inner.server)
            .field("device", &self.inner.hello.device)
            .finish_non_exhaustive()
    }
}

fn conn_error(server: &str, e: quinn::ConnectionError) -> NetError {
    use quinn::ConnectionError as E;
    let server = server.to_owned();
    match e {
        E::ApplicationClosed(close) => {
            let reason = String::from_utf8_lossy(&close.reason).into_owned();
            match close.error_code.into_inner() {
                close_code::UNKNOWN_DEVICE => NetError::NotEnrolled { server },
                close_code::REVOKED => NetError::Revoked { server },
                close_code::SHUTTING_DOWN => NetError::ServerShuttingDown { server },
                code => NetError::Closed {
                    server,
                    code,
                    reason,
                },
            }
        }
        E::TimedOut | E::Reset | E::ConnectionClosed(_) | E::LocallyClosed | E::CidsExhausted => {
            NetError::Connection {
                server,
                reason: e.to_string(),
                retryable: true,
            }
        }
        E::VersionMismatch | E::TransportError(_) => NetError::Connection {
            server,
            reason: e.to_string(),
            retryable: false,
        },
    }
}

impl Connection {
    /// Connects to `server_addr` (`host:port`), pins the server certificate whose BLAKE3 is
    /// `server_fingerprint`, authenticates as the device owning `keys`, and exchanges
    /// `Hello`/`HelloOk`. Must be called inside a Tokio runtime.
    pub async fn connect(
        server_addr: &str,
        server_fingerprint: &[u8; 32],
        keys: &DeviceSecretKeys,
    ) -> Result<Self, NetError> {
        Self::connect_metered(
            server_addr,
            server_fingerprint,
            keys,
            Arc::new(TrafficMeter::default()),
        )
        .await
    }

    /// [`connect`](Self::connect), counting the connection's traffic (its `Hello` included)
    /// into `traffic`.
    pub async fn connect_metered(
        server_addr: &str,
        server_fingerprint: &[u8; 32],
        keys: &DeviceSecretKeys,
        traffic: Arc<TrafficMeter>,
    ) -> Result<Self, NetError> {
        Self::connect_tuned(
            server_addr,
            server_fingerprint,
            keys,
            traffic,
            transport::IDLE_TIMEOUT,
        )
        .await
    }

    /// [`connect_metered`](Self::connect_metered) with the connection declared dead after
    /// `idle_timeout` without hearing from the server (keep-alives every third of it, at most
    /// 5 s).
    async fn connect_tuned(
        server_addr: &str,
        server_fingerprint: &[u8; 32],
        keys: &DeviceSecretKeys,
        traffic: Arc<TrafficMeter>,
        idle_timeout: std::time::Duration,
    ) -> Result<Self, NetError> {
        let server = server_addr.to_owned();
        let setup = |reason: String| NetError::Setup {
            server: server.clone(),
            reason,
        };
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(server_addr)
            .await
            .map_err(|e| NetError::Resolve {
                server: server.clone(),
                reason: e.to_string(),
            })?
            .collect();
        let device = tls::DeviceCert::from_pkcs8(&keys.tls_pkcs8_der())
            .map_err(|e| setup(format!("cannot make the device certificate: {e}")))?;
        let mismatch = Arc::new(AtomicBool::new(false));
        let tls = tls::client_tls_config(
            &device,
            *server_fingerprint,
            dooz_protocol::ALPN,
            mismatch.clone(),
        )
        .map_err(|e| setup(e.to_string()))?;
        let quic = QuicClientConfig::try_from(tls).map_err(|e| setup(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(Arc::new(transport::transport_config_with(idle_timeout)));
        // Every address the name resolves to, in order, until one answers.
        let mut last = NetError::Resolve {
            server: server.clone(),
            reason: "no address found".to_owned(),
        };
        let mut opened = None;
        for addr in addrs {
            let endpoint = transport::client_endpoint(addr, config.clone())
                .map_err(|e| setup(format!("cannot open a UDP socket: {e}")))?;
            let connecting = endpoint
                .connect(addr, tls::SERVER_NAME)
                .map_err(|e| setup(e.to_string()))?;
            match connecting.await {
                Ok(conn) => {
                    opened = Some((endpoint, conn));
                    break;
                }
                Err(_) if mismatch.load(Ordering::Relaxed) => {
                    return Err(NetError::ServerCertMismatch {
                        server,
                        expected: server_fingerprint_hex(server_fingerprint),
                    });
                }
                Err(e) => last = conn_error(&server, e),
            }
        }
        let Some((endpoint, conn)) = opened else {
            return Err(last);
        };
        let hello = dooz_protocol::Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: "dooz".to_owned(),
            client_version: env!("CARGO_PKG_VERSION").to_owned(),
            ext: Extensions::default(),
        };
        let answer = request_on(&server, &conn, &traffic, Request::Hello(hello), None).await;
        let hello = match answer {
            Ok((Response::HelloOk(ok), _)) => ok,
            Ok((other, _)) => return Err(unexpected(&server, "Hello", &other)),
            Err(NetError::Server {
                code: ErrorCode::Unauthenticated,
                ..
            }) => return Err(NetError::NotEnrolled { server }),
            Err(NetError::Server {
                code: ErrorCode::Revoked,
                ..
            }) => return Err(NetError::Revoked { server }),
            Err(e) => return Err(e),
        };
        if hello.device.as_bytes() != keys.device_id().as_bytes() {
            return Err(NetError::Protocol {
                server,
                request: "Hello",
                reason: "the server named another device than this one".to_owned(),
            });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                server,
                endpoint,
                conn,
                hello,
                counters: Counters::default(),
                traffic,
            }),
        })
    }

    /// The server's `HelloOk`: its version and this device's id, tenant and account.
    pub fn hello(&self) -> &HelloOk {
        &self.inner.hello
    }

    /// The server address this connection was made to.
    pub fn server(&self) -> &str {
        &self.inner.server
    }

    /// This device's id as the server knows it.
    pub fn device(&self) -> DeviceId {
        self.inner.hello.device
    }

    /// Chunk bytes moved so far on this connection.
    pub fn stats(&self) -> NetStats {
        let c = &self.inner.counters;
        NetStats {
            chunks_sent: c.chunks_sent.load(Ordering::Relaxed),
            chunk_bytes_sent: c.chunk_bytes_sent.load(Ordering::Relaxed),
            chunks_received: c.chunks_received.load(Ordering::Relaxed),
            chunk_bytes_received: c.chunk_bytes_received.load(Ordering::Relaxed),
        }
    }

    /// The meter counting this connection's traffic as the server meters it.
    pub fn traffic(&self) -> &Arc<TrafficMeter> {
        &self.inner.traffic
    }

    /// Whether the connection is closed (by either side, or lost); if so, the reason.
    pub fn close_reason(&self) -> Option<NetError> {
        self.inner
            .conn
            .close_reason()
            .map(|e| conn_error(&self.inner.server, e))
    }

    /// Closes the connection (requests in flight fail) and waits briefly for the close to be
    /// sent.
    pub async fn close(&self) {
        self.inner
            .conn
            .close(quinn::VarInt::from_u32(0), b"client done");
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            self.inner.endpoint.wait_idle(),
        )
        .await;
    }

    async fn request(&self, req: Request) -> Result<Response, NetError> {
        request_on(
            &self.inner.server,
            &self.inner.conn,
            &self.inner.traffic,
            req,
            None,
        )
        .await
        .map(|(r, _)| r)
    }

    /// Sends one request and returns its answer, an `Error` answer included: its extensions
    /// say more than [`NetError::Server`] keeps (pairing refusals, for one).
    pub async fn request_answer(&self, req: Request) -> Result<Response, NetError> {
        let server = &self.inner.server;
        let name = req.name();
        let vault = req.vault();
        let (mut send, recv) = self
            .inner
            .conn
            .open_bi()
            .await
            .map_err(|e| conn_error(server, e))?;
        let mut reader = FrameReader::new(recv);
        let msg = Message::Request(req);
        let sent = encoded_len(&msg) as u64;
        write_frame(&mut send, &msg, None)
            .await
            .map_err(|e| io_error(server, name, e))?;
        let _ = send.finish();
        let resp = read_answer(server, name, &mut reader).await?;
        reader
            .expect_end("answer")
            .await
            .map_err(|e| io_error(server, name, e))?;
        let received = reader.last_frame_len() as u64;
        self.inner.traffic.add(vault, sent, received, 1);
        Ok(resp)
    }

    /// Creates a vault (idempotent for a vault this account already has).
    pub async fn create_vault(&self, vault: VaultId) -> Result<(), NetError> {
        let req = dooz_protocol::CreateVault {
            vault,
            ext: Extensions::default(),
        };
        match self.request(Request::CreateVault(req)).await? {
            Response::VaultCreated(_) => Ok(()),
            other => Err(unexpected(&self.inner.server, "CreateVault", &other)),
        }
    }

    /// The account's vaults.
    pub async fn list_vaults(&self) -> Result<Vec<VaultInfo>, NetError> {
        let req = dooz_protocol::ListVaults {
            ext: Extensions::default(),
        };
        match self.request(Request::ListVaults(req)).await? {
            Response::Vaults(v) => Ok(v.vaults),
            other => Err(unexpected(&self.inner.server, "ListVaults", &other)),
        }
    }

    /// Stores a sealed device envelope of `vault`'s key at `epoch` for `recipient`.
    pub async fn put_envelope(
        &self,
        vault: VaultId,
        epoch: Epoch,
        recipient: DeviceId,
        envelope: Vec<u8>,
    ) -> Result<(), NetError> {
        let req = dooz_protocol::PutEnvelope {
            vault,
            epoch,
            recipient,
            envelope,
            ext: Extensions::default(),
        };
        match self.request(Request::PutEnvelope(req)).await? {
            Response::Ok(_) => Ok(()),
            other => Err(unexpected(&self.inner.server, "PutEnvelope", &other)),
        }
    }

    /// Starts epoch `epoch` of `vault`'s key with the envelope this device (`me`) wrapped to
    /// itself. The server stores it only as the vault's next epoch; a device that rotated first
    /// makes this fail with [`ErrorCode::Conflict`](dooz_protocol::ErrorCode::Conflict).
    pub async fn start_epoch(
        &self,
        vault: VaultId,
        epoch: Epoch,
        me: DeviceId,
        envelope: Vec<u8>,
    ) -> Result<(), NetError> {
        let req = dooz_protocol::PutEnvelope {
            vault,
            epoch,
            recipient: me,
            envelope,
            ext: Extensions::new().with(dooz_protocol::Extension::critical(
                dooz_protocol::NEW_EPOCH_TAG,
                Vec::new(),
            )),
        };
        match self.request(Request::PutEnvelope(req)).await? {
            Response::Ok(_) => Ok(()),
            other => Err(unexpected(&self.inner.server, "PutEnvelope", &other)),
        }
    }

    /// The envelopes of `vault` addressed to this device.
    pub async fn get_envelopes(&self, vault: VaultId) -> Result<Vec<EnvelopeInfo>, NetError> {
        let req = dooz_protocol::GetEnvelopes {
            vault,
            ext: Extensions::default(),
        };
        match self.request(Request::GetEnvelopes(req)).await? {
            Response::Envelopes(e) => Ok(e.envelopes),
            other => Err(unexpected(&self.inner.server, "GetEnvelopes", &other)),
        }
    }

    /// Which of `chunks` (at most `MAX_HAVE_IDS`) the vault lacks, in request order.
    pub async fn have(
        &self,
        vault: VaultId,
        chunks: Vec<ChunkId>,
    ) -> Result<Vec<ChunkId>, NetError> {
        let req = dooz_protocol::Have {
            vault,
            chunks,
            ext: Extensions::default(),
        };
        match self.request(Request::Have(req)).await? {
            Response::Missing(m) => Ok(m.chunks),
            other => Err(unexpected(&self.inner.server, "Have", &other)),
        }
    }

    /// Uploads one sealed chunk: a `PutChunk` header with the length and BLAKE3 of `sealed`,
    /// then the bytes themselves.
    pub async fn put_chunk(
        &self,
        vault: VaultId,
        chunk: ChunkId,
        sealed: Bytes,
    ) -> Result<(), NetError> {
        let server = &self.inner.server;
        let len = u32::try_from(sealed.len())
            .ok()
            .filter(|&l| l <= dooz_protocol::limits::MAX_CHUNK_LEN)
            .ok_or_else(|| NetError::Server {
                code: ErrorCode::TooLarge,
                message: format!(
                    "sealed chunk {chunk} is {} bytes, over the protocol limit of {} (not sent)",
                    sealed.len(),
                    dooz_protocol::limits::MAX_CHUNK_LEN
                ),
            })?;
        let req = dooz_protocol::PutChunk {
            vault,
            chunk,
            len,
            blake3: *blake3::hash(&sealed).as_bytes(),
            ext: Extensions::default(),
        };
        let (resp, _) = request_on(
            server,
            &self.inner.conn,
            &self.inner.traffic,
            Request::PutChunk(req),
            Some(sealed),
        )
        .await?;
        match resp {
            Response::ChunkStored(s) if s.chunk == chunk => {
                let c = &self.inner.counters;
                c.chunks_sent.fetch_add(1, Ordering::Relaxed);
                c.chunk_bytes_sent
                    .fetch_add(u64::from(len), Ordering::Relaxed);
                Ok(())
            }
            Response::ChunkStored(_) => Err(NetError::Protocol {
                server: server.clone(),
                request: "PutChunk",
                reason: "ChunkStored named another chunk".to_owned(),
            }),
            other => Err(unexpected(server, "PutChunk", &other)),
        }
    }

    /// Downloads one sealed chunk, checking its bytes against the BLAKE3 in the `ChunkData`
    /// header. The caller still opens (and so authenticates) the sealed bytes.
    pub async fn get_chunk(&self, vault: VaultId, chunk: ChunkId) -> Result<Bytes, NetError> {
        let server = &self.inner.server;
        let req = dooz_protocol::GetChunk {
            vault,
            chunk,
            ext: Extensions::default(),
        };
        let (resp, body) = request_on(
            server,
            &self.inner.conn,
            &self.inner.traffic,
            Request::GetChunk(req),
            None,
        )
        .await?;
        match (resp, body) {
            (Response::ChunkData(_), Some(body)) => {
                let c = &self.inner.counters;
                c.chunks_received.fetch_add(1, Ordering::Relaxed);
                c.chunk_bytes_received
                    .fetch_add(body.len() as u64, Ordering::Relaxed);
                Ok(body)
            }
            (other, _) => Err(unexpected(server, "GetChunk", &other)),
        }
    }

    /// Commits entries (at most `MAX_COMMIT_ENTRIES`, within one frame); one result per entry,
    /// in request order.
    pub async fn commit(
        &self,
        vault: VaultId,
        entries: Vec<CommitEntry>,
    ) -> Result<Vec<CommitResult>, NetError> {
        let n = entries.len();
        let req = dooz_protocol::Commit {
            vault,
            entries,
            ext: Extensions::default(),
        };
        match self.request(Request::Commit(req)).await? {
            Response::Committed(c) if c.results.len() == n => Ok(c.results),
            Response::Committed(c) => Err(NetError::Protocol {
                server: self.inner.server.clone(),
                request: "Commit",
                reason: format!("{} results for {n} entries", c.results.len()),
            }),
            other => Err(unexpected(&self.inner.server, "Commit", &other)),
        }
    }

    /// One page of the vault's commit log after `since` (`limit` 0: the server's default).
    pub async fn pull(&self, vault: VaultId, since: Seq, limit: u32) -> Result<PullPage, NetError> {
        let req = dooz_protocol::Pull {
            vault,
            since,
            limit,
            ext: Extensions::default(),
        };
        match self.request(Request::Pull(req)).await? {
            Response::Changes(c) => Ok(PullPage {
                changes: c.changes,
                next: c.next,
                more: c.more,
            }),
            other => Err(unexpected(&self.inner.server, "Pull", &other)),
        }
    }

    /// One page of an entry's versions, newest first, before `before`.
    pub async fn history(
        &self,
        vault: VaultId,
        entry: EntryKey,
        limit: u32,
        before: Option<Seq>,
    ) -> Result<HistoryPage, NetError> {
        let req = dooz_protocol::History {
            vault,
            entry,
            limit,
            before,
            ext: Extensions::default(),
        };
        match self.request(Request::History(req)).await? {
            Response::HistoryPage(h) => Ok(h),
            other => Err(unexpected(&self.inner.server, "History", &other)),
        }
    }

    /// Subscribes to head changes of `vaults`: the returned [`Subscription`] yields a
    /// `Changed` each time one of them moves. A new subscription replaces the old one.
    pub async fn subscribe(&self, vaults: Vec<VaultId>) -> Result<Subscription, NetError> {
        let server = self.inner.server.clone();
        let req = dooz_protocol::Subscribe {
            vaults,
            ext: Extensions::default(),
        };
        let (mut send, recv) = self
            .inner
            .conn
            .open_bi()
            .await
            .map_err(|e| conn_error(&server, e))?;
        let msg = Message::Request(Request::Subscribe(req));
        let sent = encoded_len(&msg) as u64;
        write_frame(&mut send, &msg, None)
            .await
            .map_err(|e| io_error(&server, "Subscribe", e))?;
        let _ = send.finish();
        let mut reader = FrameReader::new(recv);
        let answer = read_response(&server, "Subscribe", &mut reader).await;
        if matches!(answer, Ok(_) | Err(NetError::Server { .. })) {
            let received = reader.last_frame_len() as u64;
            self.inner.traffic.add(None, sent, received, 1);
        }
        match answer? {
            Response::Subscribed(_) => Ok(Subscription {
                server,
                reader,
                _send: send,
                traffic: Arc::clone(&self.inner.traffic),
            }),
            other => Err(unexpected(&server, "Subscribe", &other)),
        }
    }
}

/// Everything needed to connect, and to reconnect after a connection is lost: the server's
/// address, its pinned certificate fingerprint and the device's keys.
pub struct Connector {
    server_addr: String,
    fingerprint: [u8; 32],
    keys: DeviceSecretKeys,
    traffic: Arc<TrafficMeter>,
    idle_timeout: std::time::Duration,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("server_addr", &self.server_addr)
            .field("fingerprint", &server_fingerprint_hex(&self.fingerprint))
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// A connector for the server at `server_addr` (`host:port`) whose certificate has
    /// `fingerprint`, authenticating with `keys`.
    pub fn new(
        server_addr: impl Into<String>,
        fingerprint: [u8; 32],
        keys: DeviceSecretKeys,
    ) -> Self {
        Self {
            server_addr: server_addr.into(),
            fingerprint,
            keys,
            traffic: Arc::new(TrafficMeter::default()),
            idle_timeout: transport::IDLE_TIMEOUT,
        }
    }

    /// Connections it opens are declared dead after `timeout` without hearing from the server
    /// (default 30 s; keep-alives go every third of it, at most every 5 s). Shorter notices a
    /// vanished network sooner, at the cost of more keep-alive packets.
    #[must_use]
    pub fn with_idle_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Counts the traffic of every connection this connector opens into `traffic`.
    #[must_use]
    pub fn with_traffic_meter(mut self, traffic: Arc<TrafficMeter>) -> Self {
        self.traffic = traffic;
        self
    }

    /// The meter counting the traffic of the connections it opens.
    pub fn traffic(&self) -> &Arc<TrafficMeter> {
        &self.traffic
    }

    /// The server address.
    pub fn server_addr(&self) -> &str {
        &self.server_addr
    }

    /// The device's keys it authenticates with.
    pub fn keys(&self) -> &DeviceSecretKeys {
        &self.keys
    }

    /// Opens a new connection ([`Connection::connect`]).
    pub async fn connect(&self) -> Result<Connection, NetError> {
        Connection::connect_tuned(
            &self.server_addr,
            &self.fingerprint,
            &self.keys,
            Arc::clone(&self.traffic),
            self.idle_timeout,
        )
        .await
    }
}

/// One page of a vault's commit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullPage {
    /// The changes, in seq order.
    pub changes: Vec<Change>,
    /// The cursor to pull from next.
    pub next: Seq,
    /// Whether more changes follow.
    pub more: bool,
}

/// A subscription stream: head changes pushed by the server.
pub struct Subscription {
    server: String,
    reader: FrameReader,
    _send: quinn::SendStream,
    traffic: Arc<TrafficMeter>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The next head change; `Ok(None)` when the server ended the subscription.
    pub async fn next(&mut self) -> Result<Option<Changed>, NetError> {
        match self.reader.read_frame().await {
            Ok(None) => Ok(None),
            Ok(Some(Message::Response(Response::Changed(c)))) => {
                let len = self.reader.last_frame_len() as u64;
                self.traffic.add(Some(c.vault), 0, len, 0);
                Ok(Some(c))
            }
            Ok(Some(Message::Response(Response::Error(e)))) => Err(NetError::Server {
                code: e.code,
                message: e.message,
            }),
            Ok(Some(other)) => Err(NetError::Protocol {
                server: self.server.clone(),
                request: "Subscribe",
                reason: format!("unexpected {} on the subscription stream", other.name()),
            }),
            Err(e) => Err(io_error(&self.server, "Subscribe", e)),
        }
    }
}

fn unexpected(server: &str, request: &'static str, got: &Response) -> NetError {
    NetError::Protocol {
        server: server.to_owned(),
        request,
        reason: format!("unexpected answer {}", got.name()),
    }
}

fn io_error(server: &str, request: &'static str, e: FrameIoError) -> NetError {
    use quinn::{ReadError, WriteError};
    match e {
        FrameIoError::Read(ReadError::ConnectionLost(c))
        | FrameIoError::Write(WriteError::ConnectionLost(c)) => conn_error(server, c),
        FrameIoError::Read(ReadError::Reset(_)) | FrameIoError::Write(WriteError::Stopped(_)) => {
            NetError::Connection {
                server: server.to_owned(),
                reason: format!("the server abandoned the {request} stream"),
                retryable: true,
            }
        }
        other => NetError::Protocol {
            server: server.to_owned(),
            request,
            reason: other.to_string(),
        },
    }
}

async fn read_response(
    server: &str,
    request: &'static str,
    reader: &mut FrameReader,
) -> Result<Response, NetError> {
    match read_answer(server, request, reader).await? {
        Response::Error(e) => Err(NetError::Server {
            code: e.code,
            message: e.message,
        }),
        r => Ok(r),
    }
}

/// Reads the answer to a request, an `Error` answer included.
async fn read_answer(
    server: &str,
    request: &'static str,
    reader: &mut FrameReader,
) -> Result<Response, NetError> {
    match reader.read_frame().await {
        Ok(Some(Message::Response(r))) => Ok(r),
        Ok(Some(Message::Request(r))) => Err(NetError::Protocol {
            server: server.to_owned(),
            request,
            reason: format!("the server sent a request ({})", r.name()),
        }),
        Ok(None) => Err(NetError::Protocol {
            server: server.to_owned(),
            request,
            reason: "the stream ended without an answer".to_owned(),
        }),
        Err(e) => Err(io_error(server, request, e)),
    }
}

/// Sends one request (plus `body` for `PutChunk`) on a new stream and reads the answer (plus
/// the raw body of a `ChunkData`, verified against its header).
async fn request_on(
    server: &str,
    conn: &quinn::Connection,
    traffic: &TrafficMeter,
    req: Request,
    body: Option<Bytes>,
) -> Result<(Response, Option<Bytes>), NetError> {
    let vault = req.vault();
    let chunk = match &req {
        Request::GetChunk(g) => Some(g.chunk),
        _ => None,
    };
    let (mut send, recv) = conn.open_bi().await.map_err(|e| conn_error(server, e))?;
    let mut reader = FrameReader::new(recv);
    let msg = Message::Request(req);
    let frame_len = encoded_len(&msg) as u64;
    let body_len = body.as_ref().map_or(0, |b| b.len() as u64);
    let answered = exchange(
        server,
        &mut send,
        &mut reader,
        traffic,
        vault,
        msg,
        body,
        frame_len,
        body_len,
        chunk,
    )
    .await;
    if let Err(e) = &answered
        && !matches!(e, NetError::Server { .. } | NetError::Integrity { .. })
    {
        traffic.unanswered(vault, frame_len + body_len);
    }
    answered
}

/// Writes a request and reads its answer (see [`request_on`]).
#[allow(clippy::too_many_arguments)]
async fn exchange(
    server: &str,
    send: &mut quinn::SendStream,
    reader: &mut FrameReader,
    traffic: &TrafficMeter,
    vault: Option<VaultId>,
    msg: Message,
    body: Option<Bytes>,
    frame_len: u64,
    body_len: u64,
    chunk: Option<ChunkId>,
) -> Result<(Response, Option<Bytes>), NetError> {
    let name = match &msg {
        Message::Request(r) => r.name(),
        Message::Response(r) => r.name(),
    };
    match write_frame(send, &msg, body).await {
        Ok(()) => {
            let _ = send.finish();
        }
        // The server stops the stream when it refuses a request early (a chunk over its
        // limits, quota): its `Error` answer is still on the way.
        Err(FrameIoError::Write(quinn::WriteError::Stopped(_))) => {}
        Err(e) => return Err(io_error(server, name, e)),
    }
    let resp = match read_response(server, name, reader).await {
        Ok(resp) => resp,
        Err(e @ NetError::Server { .. }) => {
            // An answer all the same: counted as the server counts it.
            let received = reader.last_frame_len() as u64;
            if reader.expect_end("answer").await.is_ok() {
                traffic.add(vault, frame_len, received, 1);
            }
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let answer_len = reader.last_frame_len() as u64;
    let raw = match (&resp, chunk) {
        (Response::ChunkData(data), Some(chunk)) => {
            let raw = reader
                .read_raw_body(data.len)
                .await
                .map_err(|e| io_error(server, name, e))?;
            if raw.blake3 != data.blake3 {
                // Answered in full all the same: counted as the server counts it.
                if reader.expect_end("answer").await.is_ok() {
                    traffic.add(vault, frame_len, answer_len + raw.bytes.len() as u64, 1);
                    return Err(NetError::Integrity { chunk });
                }
                return Err(NetError::Protocol {
                    server: server.to_owned(),
                    request: name,
                    reason: "bytes followed a chunk that failed its check".to_owned(),
                });
            }
            Some(raw.bytes)
        }
        _ => None,
    };
    reader
        .expect_end("answer")
        .await
        .map_err(|e| io_error(server, name, e))?;
    let stored = matches!(resp, Response::ChunkStored(_));
    let sent = frame_len + if stored { body_len } else { 0 };
    let received = answer_len + raw.as_ref().map_or(0, |b| b.len() as u64);
    traffic.add(vault, sent, received, 1);
    if let (Response::ChunkStored(c), Some(vault)) = (&resp, vault) {
        traffic.upload(vault, c.chunk, sent, received);
    }
    Ok((resp, raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_what_to_do_and_whether_to_retry() {
        let e = NetError::NotEnrolled {
            server: "127.0.0.1:4433".to_owned(),
        };
        assert!(e.to_string().contains("dooz enroll"), "{e}");
        assert!(!e.is_retryable());
        let e = NetError::Server {
            code: ErrorCode::Internal,
            message: "x".to_owned(),
        };
        assert!(e.is_retryable());
        let e = NetError::Server {
            code: ErrorCode::NotFound,
            message: "x".to_owned(),
        };
        assert!(!e.is_retryable());
        assert!(
            NetError::ServerShuttingDown {
                server: String::new()
            }
            .is_retryable()
        );
    }

    #[test]
    fn quota_and_subscription_errors_read_as_what_they_mean() {
        let mib = 1024 * 1024;
        let e = NetError::Server {
            code: ErrorCode::QuotaExceeded {
                resource: dooz_protocol::Resource::StorageBytes,
                limit: 10 * mib,
                used: 10 * mib,
            },
            message: "raw".to_owned(),
        };
        assert!(
            e.to_string().starts_with(
                "the account's storage quota is full: 10.0 MiB of 10.0 MiB used; ask the \
                 operator to upgrade the plan or delete files"
            ),
            "{e}"
        );
        assert!(!e.is_retryable());
        let e = NetError::Server {
            code: ErrorCode::SubscriptionInactive,
            message: "the account's subscription is not active: uploads are refused".to_owned(),
        };
        assert!(e.to_string().contains("uploads are refused"), "{e}");
        assert!(e.to_string().contains("local changes are kept"), "{e}");
        assert!(!e.is_retryable());
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }

    #[test]
    fn close_codes_map_to_typed_errors() {
        let close = |code: u32| {
            quinn::ConnectionError::ApplicationClosed(quinn::ApplicationClose {
                error_code: quinn::VarInt::from_u32(code),
                reason: Bytes::from_static(b"why"),
            })
        };
        assert!(matches!(
            conn_error("s", close(1)),
            NetError::NotEnrolled { .. }
        ));
        assert!(matches!(
            conn_error("s", close(2)),
            NetError::Revoked { .. }
        ));
        assert!(matches!(
            conn_error("s", close(3)),
            NetError::ServerShuttingDown { .. }
        ));
        let e = conn_error("s", close(4));
        assert!(matches!(e, NetError::Closed { code: 4, .. }) && e.is_retryable());
        let e = conn_error("s", close(5));
        assert!(!e.is_retryable() && e.to_string().contains("why"));
        assert!(conn_error("s", quinn::ConnectionError::TimedOut).is_retryable());
    }
}
