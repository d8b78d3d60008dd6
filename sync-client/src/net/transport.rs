//! The client's QUIC endpoint, tuned like the server's (see `dooz-server`'s `transport`
//! module): 4 MiB UDP socket buffers (quinn leaves the kernel default), 16 MiB stream and
//! 64 MiB connection windows (bandwidth × RTT, so one stream carries a whole chunk without
//! waiting for window updates), a 16 MiB send window (the most unacknowledged data quinn buffers:
//! it bounds the client's memory during an upload, and is still 1 Gbit/s × 128 ms), GSO and MTU discovery on (quinn's defaults), keep-alive 5 s,
//! idle timeout 30 s, and no streams accepted from the server.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use quinn::{Endpoint, EndpointConfig, IdleTimeout, TransportConfig, VarInt};
use socket2::{Domain, Protocol, Socket, Type};

const SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;
const STREAM_WINDOW_BYTES: u32 = 16 * 1024 * 1024;
const CONNECTION_WINDOW_BYTES: u32 = 64 * 1024 * 1024;
const SEND_WINDOW_BYTES: u64 = 16 * 1024 * 1024;
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Default idle timeout (the server's is the same; the lower of the two applies).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The transport config of client connections.
pub(crate) fn transport_config() -> TransportConfig {
    transport_config_with(IDLE_TIMEOUT)
}

/// The transport config of client connections declared dead after `idle` of silence, with
/// keep-alives every third of it (at most every 5 s).
pub(crate) fn transport_config_with(idle: Duration) -> TransportConfig {
    let idle = idle.max(Duration::from_millis(300));
    let idle_ms = u32::try_from(idle.as_millis()).unwrap_or(u32::MAX);
    let mut config = TransportConfig::default();
    config
        .max_concurrent_bidi_streams(VarInt::from_u32(0))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW_BYTES))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW_BYTES))
        .send_window(SEND_WINDOW_BYTES)
        .keep_alive_interval(Some(KEEP_ALIVE.min(idle / 3)))
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(idle_ms))));
    config
}

/// A UDP socket bound to `addr` with large buffers, non-blocking, ready for quinn. A kernel
/// that caps the buffers is not an error.
fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    for (what, result) in [
        ("send", socket.set_send_buffer_size(SOCKET_BUFFER_BYTES)),
        ("receive", socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES)),
    ] {
        if let Err(e) = result {
            tracing::debug!(
                "could not set the UDP {what} buffer to {SOCKET_BUFFER_BYTES} bytes: {e}"
            );
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A client endpoint for talking to `server` (bound to the unspecified address of its family,
/// any port), using `config` for its connections. Must be called inside a Tokio runtime.
pub(crate) fn client_endpoint(
    server: SocketAddr,
    config: quinn::ClientConfig,
) -> io::Result<Endpoint> {
    let bind: SocketAddr = if server.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let socket = bind_udp(bind)?;
    let mut endpoint = Endpoint::new(
        EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}
