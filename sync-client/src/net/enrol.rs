//! Enrolment: redeeming an enrolment code (`dooz1-...`) so that the server registers this
//! device (`docs/PROTOCOL.md`, "Enrolment").
//!
//! The device dials the address in the code with ALPN `dooz-enrol/1`, presents its device
//! certificate (made from its identity key, as for syncing) and pins the server certificate by
//! the fingerprint in the code. Its one request is `Hello` carrying an
//! [`EnrolRequest`](dooz_protocol::EnrolRequest); the answer is `HelloOk` (enrolled) or an
//! `Error`, after which the server closes the connection. The device then connects again with
//! ALPN `dooz/1` ([`Connection::connect`]) to sync.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dooz_crypto::DeviceSecretKeys;
use dooz_protocol::{
    EnrolRequest, EnrolmentCode, ErrorCode, Extensions, HelloOk, Request, Response,
};
use quinn::crypto::rustls::QuicClientConfig;

use super::{
    Connection, NetError, PROTOCOL_VERSION, conn_error, request_on, server_fingerprint_hex, tls,
    transport, unexpected,
};

/// How long to wait for the connection close to go out after the answer.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The text of [`NetError::EnrolmentRefused`]: what the server said, and what to do.
pub(super) fn refused_message(server: &str, reason: &str) -> String {
    let mut out = format!("the server at {server} refused the enrolment code: {reason}");
    if !reason.contains("new enrolment code") {
        out.push_str(
            "; ask the server's admin for a new enrolment code (`dooz-server admin enrol-code`)",
        );
    }
    out
}

impl Connection {
    /// Enrols the device owning `keys` on the server named in `code`, under `device_name`
    /// (1 to 256 bytes, shown to the account's other devices). Returns the server's `HelloOk`:
    /// the device id as the server knows it, its tenant and account. Enrolling a device that is
    /// already enrolled (and not revoked) answers `HelloOk` again.
    ///
    /// Errors: [`NetError::EnrolmentRefused`] when the token is unknown, expired or used up
    /// (ask for a new code), [`NetError::Revoked`] for a revoked device,
    /// [`NetError::ServerCertMismatch`] when the server is not the one the code pins, and the
    /// usual connection errors. Must be called inside a Tokio runtime.
    pub async fn enrol(
        code: &EnrolmentCode,
        keys: &DeviceSecretKeys,
        device_name: &str,
    ) -> Result<HelloOk, NetError> {
        let server = code.address.clone();
        let setup = |reason: String| NetError::Setup {
            server: server.clone(),
            reason,
        };
        let request = EnrolRequest {
            token: code.token.clone(),
            exchange_key: keys.public().exchange,
            device_name: device_name.to_owned(),
        };
        let extension = request.to_extension().map_err(|e| setup(e.to_string()))?;
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(code.address.as_str())
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
            code.fingerprint,
            dooz_protocol::ENROL_ALPN,
            mismatch.clone(),
        )
        .map_err(|e| setup(e.to_string()))?;
        let quic = QuicClientConfig::try_from(tls).map_err(|e| setup(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(Arc::new(transport::transport_config()));

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
                        expected: server_fingerprint_hex(&code.fingerprint),
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
            ext: Extensions::new().with(extension),
        };
        let answer = request_on(
            &server,
            &conn,
            &super::TrafficMeter::default(),
            Request::Hello(hello),
            None,
        )
        .await;
        conn.close(quinn::VarInt::from_u32(0), b"enrolment done");
        let _ = tokio::time::timeout(CLOSE_WAIT, endpoint.wait_idle()).await;
        let ok = match answer {
            Ok((Response::HelloOk(ok), _)) => ok,
            Ok((other, _)) => return Err(unexpected(&server, "Hello", &other)),
            Err(NetError::Server {
                code: ErrorCode::Unauthenticated,
                message,
            }) => {
                return Err(NetError::EnrolmentRefused {
                    server,
                    reason: message,
                });
            }
            Err(NetError::Server {
                code: ErrorCode::Revoked,
                ..
            }) => return Err(NetError::Revoked { server }),
            Err(e) => return Err(e),
        };
        if ok.device.as_bytes() != keys.device_id().as_bytes() {
            return Err(NetError::Protocol {
                server,
                request: "Hello",
                reason: "the server enrolled another device than this one".to_owned(),
            });
        }
        Ok(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_say_to_ask_for_a_new_code() {
        let e = NetError::EnrolmentRefused {
            server: "s:1".to_owned(),
            reason: "the enrolment token has expired".to_owned(),
        };
        let text = e.to_string();
        assert!(
            text.contains("expired") && text.contains("new enrolment code"),
            "{text}"
        );
        assert!(!e.is_retryable());
        // A server message that already says what to do is not repeated.
        let text = refused_message(
            "s:1",
            "used; ask the server's admin for a new enrolment code",
        );
        assert_eq!(text.matches("new enrolment code").count(), 1);
    }
}
