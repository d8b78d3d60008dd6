//! QUIC endpoints tuned for throughput: socket buffers, flow-control windows, stream limits.
//!
//! # Choices
//!
//! - **Socket buffers.** quinn leaves `SO_SNDBUF`/`SO_RCVBUF` at the kernel default (about
//!   208 KiB on Linux), which drops packets in bursts at a few hundred MB/s. The UDP socket is
//!   built with socket2 and both buffers are asked for 4 MiB before quinn gets it
//!   ([`bind_udp`]); the kernel caps them at `net.core.{w,r}mem_max`. A reference loopback run
//!   gave 420 MB/s with the defaults and ~550 MB/s with 4 MiB buffers.
//! - **GSO and MTU discovery** stay on (quinn's defaults: segmentation offload, and PMTUD from
//!   1200 bytes up to 1452). Raising the discovery bound (8952, with the endpoint's
//!   `max_udp_payload_size` to match) was tried on loopback and made uploads slower: under
//!   load, lost 9 KB packets tripped quinn's black-hole detection, which fell back to 1200.
//! - **Flow-control windows = bandwidth × RTT.** A stream window must hold what one stream can
//!   have in flight: a chunk upload is at most 16 MiB (`MAX_CHUNK_LEN`), and at 1 GB/s × 10 ms
//!   that is 10 MB, so the per-stream receive window is 16 MiB and one stream can carry a whole
//!   chunk without waiting for window updates. The connection window bounds what all streams of
//!   one connection may have buffered at the receiver together: 64 MiB is 4 maximal chunks, 64
//!   typical ones, and covers 1 GB/s at up to ~60 ms RTT. The send window matches it. On slower
//!   or farther links these are upper bounds, not allocations: quinn buffers only what arrives.
//! - **Streams.** One request per bidirectional stream; a connection may have at most 256 open at
//!   once (the server's bound on concurrent requests per connection; clients pipeline up to
//!   that). Unidirectional streams are not used (0). Clients accept no streams from the server.
//! - **Liveness.** Keep-alive every 5 s, idle timeout 30 s: a device behind NAT keeps its
//!   mapping, and a vanished peer is noticed within 30 s.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, EndpointConfig, IdleTimeout, TransportConfig, VarInt};
use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;

use crate::tls::{DeviceCert, ServerIdentity, TlsError, client_tls_config, server_tls_config};

/// Transport tuning shared by the server and the client. [`Default`] holds the values described
/// in the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportTuning {
    /// `SO_SNDBUF` and `SO_RCVBUF` asked for on the UDP socket, in bytes.
    pub socket_buffer_bytes: usize,
    /// Per-stream receive window, in bytes.
    pub stream_window_bytes: u32,
    /// Per-connection receive window, in bytes.
    pub connection_window_bytes: u64,
    /// Per-connection send window, in bytes.
    pub send_window_bytes: u64,
    /// Bidirectional streams a peer may have open at once on one connection (the server's
    /// bound on concurrent requests per connection).
    pub max_concurrent_bidi_streams: u32,
    /// Keep-alive interval.
    pub keep_alive: Duration,
    /// Idle timeout: a connection with no traffic this long is closed.
    pub idle_timeout: Duration,
}

impl Default for TransportTuning {
    fn default() -> Self {
        Self {
            socket_buffer_bytes: 4 * 1024 * 1024,
            stream_window_bytes: 16 * 1024 * 1024,
            connection_window_bytes: 64 * 1024 * 1024,
            send_window_bytes: 64 * 1024 * 1024,
            max_concurrent_bidi_streams: 256,
            keep_alive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Setting up a QUIC endpoint failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TransportError {
    /// TLS could not be configured.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A tuning value is out of range.
    #[error("transport setting {name} = {value} is out of range: {reason}")]
    BadTuning {
        /// The setting.
        name: &'static str,
        /// Its value.
        value: u64,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The UDP socket could not be created or bound.
    #[error(
        "could not bind the UDP socket on {addr}: {source}; is another dooz-server running there? \
         Choose another address with --listen"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The IO error.
        #[source]
        source: io::Error,
    },
    /// quinn could not start the endpoint.
    #[error("could not start the QUIC endpoint: {0}")]
    Endpoint(#[source] io::Error),
}

fn varint(name: &'static str, value: u64) -> Result<VarInt, TransportError> {
    VarInt::from_u64(value).map_err(|_| TransportError::BadTuning {
        name,
        value,
        reason: "over the QUIC varint range",
    })
}

/// The quinn transport config for `tuning`. `accept_streams` is false for clients, which take no
/// streams from the server.
pub fn transport_config(
    tuning: &TransportTuning,
    accept_streams: bool,
) -> Result<TransportConfig, TransportError> {
    let idle =
        IdleTimeout::try_from(tuning.idle_timeout).map_err(|_| TransportError::BadTuning {
            name: "idle_timeout",
            value: u64::try_from(tuning.idle_timeout.as_millis()).unwrap_or(u64::MAX),
            reason: "over the QUIC varint range of milliseconds",
        })?;
    if tuning.keep_alive >= tuning.idle_timeout {
        return Err(TransportError::BadTuning {
            name: "keep_alive",
            value: u64::try_from(tuning.keep_alive.as_millis()).unwrap_or(u64::MAX),
            reason: "must be shorter than the idle timeout",
        });
    }
    let mut config = TransportConfig::default();
    let bidi = if accept_streams {
        tuning.max_concurrent_bidi_streams
    } else {
        0
    };
    config
        .max_concurrent_bidi_streams(VarInt::from_u32(bidi))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(tuning.stream_window_bytes))
        .receive_window(varint(
            "connection_window_bytes",
            tuning.connection_window_bytes,
        )?)
        .send_window(tuning.send_window_bytes)
        .keep_alive_interval(Some(tuning.keep_alive))
        .max_idle_timeout(Some(idle));
    Ok(config)
}

/// A UDP socket bound to `addr` with the tuned buffer sizes, non-blocking, ready for quinn.
///
/// A kernel that caps the buffers below the size asked for is not an error: the sizes it gave
/// are logged.
pub fn bind_udp(addr: SocketAddr, buffer_bytes: usize) -> Result<UdpSocket, TransportError> {
    let bind_err = |source| TransportError::Bind { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(bind_err)?;
    if addr.is_ipv6() {
        // Dual stack where the OS allows it, so `[::]` also takes IPv4.
        let _ = socket.set_only_v6(false);
    }
    for (what, result) in [
        ("send", socket.set_send_buffer_size(buffer_bytes)),
        ("receive", socket.set_recv_buffer_size(buffer_bytes)),
    ] {
        if let Err(e) = result {
            tracing::warn!(%addr, "could not set the UDP {what} buffer to {buffer_bytes} bytes: {e}");
        }
    }
    tracing::debug!(
        %addr,
        send = socket.send_buffer_size().ok(),
        recv = socket.recv_buffer_size().ok(),
        "UDP socket buffers"
    );
    socket.set_nonblocking(true).map_err(bind_err)?;
    socket.bind(&addr.into()).map_err(bind_err)?;
    Ok(socket.into())
}

/// The quinn server config: [`server_tls_config`] plus [`transport_config`].
pub fn server_config(
    identity: &ServerIdentity,
    tuning: &TransportTuning,
) -> Result<quinn::ServerConfig, TransportError> {
    let tls = server_tls_config(identity)?;
    let quic = QuicServerConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(Arc::new(transport_config(tuning, true)?));
    Ok(config)
}

fn runtime() -> Arc<dyn quinn::Runtime> {
    Arc::new(quinn::TokioRuntime)
}

/// A server endpoint on `addr` (port 0 picks a free one). Must be called inside a Tokio
/// runtime.
pub fn server_endpoint(
    addr: SocketAddr,
    identity: &ServerIdentity,
    tuning: &TransportTuning,
) -> Result<Endpoint, TransportError> {
    let socket = bind_udp(addr, tuning.socket_buffer_bytes)?;
    // The stateless-reset key is derived from the server's identity, so a server restarted
    // after a crash resets the connections of its previous run at their first packet: devices
    // reconnect at once instead of waiting for the idle timeout.
    // Connection ids must validate across restarts too, or packets of the previous run are
    // dropped as invalid before a reset is considered.
    let reset = ResetKey(identity.derive_key("dooz-server 2026 stateless reset key"));
    let cid = identity.derive_key("dooz-server 2026 connection id key");
    let cid_key = u64::from_le_bytes([
        cid[0], cid[1], cid[2], cid[3], cid[4], cid[5], cid[6], cid[7],
    ]);
    let mut endpoint_config = EndpointConfig::new(Arc::new(reset));
    endpoint_config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    Endpoint::new(
        endpoint_config,
        Some(server_config(identity, tuning)?),
        socket,
        runtime(),
    )
    .map_err(TransportError::Endpoint)
}

/// A QUIC stateless-reset key: tokens are keyed BLAKE3 of the connection id.
struct ResetKey([u8; 32]);

impl quinn::crypto::HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        let mac = blake3::keyed_hash(&self.0, data);
        for (out, b) in signature_out.iter_mut().zip(mac.as_bytes()) {
            *out = *b;
        }
    }

    fn signature_len(&self) -> usize {
        32
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), quinn::crypto::CryptoError> {
        // `blake3::Hash` compares in constant time.
        let mac = blake3::keyed_hash(&self.0, data);
        let given = <[u8; 32]>::try_from(signature).map_err(|_| quinn::crypto::CryptoError)?;
        if mac == blake3::Hash::from(given) {
            Ok(())
        } else {
            Err(quinn::crypto::CryptoError)
        }
    }
}

/// The quinn client config of a device: [`client_tls_config`] (server pinned by
/// `server_fingerprint`, ALPN `alpn`) plus [`transport_config`].
pub fn client_config(
    device: &DeviceCert,
    server_fingerprint: &str,
    alpn: &[u8],
    tuning: &TransportTuning,
) -> Result<quinn::ClientConfig, TransportError> {
    let tls = client_tls_config(device, server_fingerprint, alpn)?;
    let quic = QuicClientConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(Arc::new(transport_config(tuning, false)?));
    Ok(config)
}

/// A client endpoint bound to `bind` (usually `0.0.0.0:0` or `[::]:0`) whose connections use
/// `config`. Must be called inside a Tokio runtime.
pub fn client_endpoint(
    bind: SocketAddr,
    config: quinn::ClientConfig,
    tuning: &TransportTuning,
) -> Result<Endpoint, TransportError> {
    let socket = bind_udp(bind, tuning.socket_buffer_bytes)?;
    let mut endpoint = Endpoint::new(EndpointConfig::default(), None, socket, runtime())
        .map_err(TransportError::Endpoint)?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_make_a_valid_config() {
        let tuning = TransportTuning::default();
        transport_config(&tuning, true).unwrap();
        transport_config(&tuning, false).unwrap();
    }

    #[test]
    fn bad_tuning_is_refused() {
        let tuning = TransportTuning {
            keep_alive: Duration::from_secs(60),
            ..TransportTuning::default()
        };
        let err = transport_config(&tuning, true).unwrap_err();
        assert!(err.to_string().contains("keep_alive"), "{err}");
        let tuning = TransportTuning {
            connection_window_bytes: u64::MAX,
            ..TransportTuning::default()
        };
        assert!(transport_config(&tuning, true).is_err());
    }

    #[test]
    fn socket_gets_buffers() {
        let socket = bind_udp("127.0.0.1:0".parse().unwrap(), 1 << 20).unwrap();
        let socket = Socket::from(socket);
        // Linux doubles the value asked for (bookkeeping) and caps at rmem_max; either way the
        // buffer is larger than the 208 KiB default.
        assert!(socket.recv_buffer_size().unwrap() >= 256 * 1024);
    }
}
