//! A server in a temp dir and minimal clients that speak the protocol frame by frame.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dooz_protocol::{
    ALPN, ChunkData, CreateVault, DeviceId, Extensions, Hello, HelloOk, Message, PROTOCOL_VERSION,
    Response, VaultId,
};
use dooz_server::config::ServerSettings;
use dooz_server::frame_io::{FrameReader, RawBody, write_frame, write_frame_with_body};
use dooz_server::policy::PolicySource;
use dooz_server::service::{CloseCode, Server, ServerParts};
use dooz_server::tls::{DeviceCert, SERVER_NAME};
use dooz_server::transport::{TransportTuning, client_config, client_endpoint};
use dooz_server::{AccountRecord, DeviceRegistration};
use tempfile::TempDir;

/// Fails a test that hangs instead of hanging the run. Not a timing assertion: every await in
/// these tests waits for an event that comes at once when the code works.
pub(crate) async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .expect("the test did not finish within 60 s: something hangs")
}

/// A running server on 127.0.0.1 with its data in a temp dir.
pub(crate) struct TestServer {
    pub(crate) server: Server,
    pub(crate) account: AccountRecord,
    _dir: TempDir,
}

impl TestServer {
    pub(crate) async fn start() -> Self {
        Self::start_with_policy(Arc::new(dooz_server::policy::Unlimited)).await
    }

    /// A server whose account policies come from `policy`.
    pub(crate) async fn start_with_policy(policy: Arc<dyn PolicySource>) -> Self {
        Self::start_with(
            |_| {},
            |mut parts| {
                parts.policy = policy;
                parts
            },
        )
        .await
    }

    /// A server that stores every chunk as a blob of its own (packing off).
    pub(crate) async fn start_unpacked() -> Self {
        Self::start_with(|s| s.pack_max_chunk_bytes = 0, |parts| parts).await
    }

    /// A server from the default test settings changed by `settings`, and parts changed by
    /// `parts`.
    pub(crate) async fn start_with(
        settings: impl FnOnce(&mut ServerSettings),
        parts: impl FnOnce(ServerParts) -> ServerParts,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerSettings {
            data_dir: dir.path().to_owned(),
            listen: "127.0.0.1:0".parse().unwrap(),
            shutdown_grace_secs: 10,
            ..ServerSettings::default()
        };
        settings(&mut config);
        let config = config.validate().unwrap();
        let (opened, bootstrap) = ServerParts::open(&config).await.unwrap();
        assert!(bootstrap.first_start);
        let server = Server::start(parts(opened)).unwrap();
        Self {
            server,
            account: bootstrap.account,
            _dir: dir,
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// A new device, enrolled in the default account through the store.
    pub(crate) async fn enrolled_device(&self) -> DeviceCert {
        let device = DeviceCert::generate().unwrap();
        let token = self
            .server
            .store()
            .create_enrolment_token(self.account.id, u64::MAX / 2, false)
            .await
            .unwrap();
        self.server
            .store()
            .redeem_enrolment(
                token.expose(),
                DeviceRegistration {
                    device: device.device_id().unwrap(),
                    identity_key: device.identity_key().unwrap(),
                    exchange_key: [7; 32],
                    name: "test device".to_owned(),
                },
                1,
            )
            .await
            .unwrap();
        device
    }

    /// Connects `device` with ALPN `alpn`; the handshake's result.
    pub(crate) async fn try_connect(
        &self,
        device: &DeviceCert,
        alpn: &[u8],
    ) -> Result<Client, quinn::ConnectionError> {
        let tuning = TransportTuning::default();
        let config = client_config(device, self.server.fingerprint(), alpn, &tuning).unwrap();
        let endpoint = client_endpoint("127.0.0.1:0".parse().unwrap(), config, &tuning).unwrap();
        let conn = endpoint.connect(self.addr(), SERVER_NAME).unwrap().await?;
        Ok(Client {
            conn,
            _endpoint: endpoint,
        })
    }

    /// Connects an enrolled device for syncing.
    pub(crate) async fn connect(&self, device: &DeviceCert) -> Client {
        self.try_connect(device, ALPN).await.unwrap()
    }
}

/// One client connection.
pub(crate) struct Client {
    pub(crate) conn: quinn::Connection,
    /// Kept so that the endpoint lives as long as the connection.
    _endpoint: quinn::Endpoint,
}

impl Client {
    /// Sends one request on a new stream and reads the one response.
    pub(crate) async fn request(&self, req: impl Into<Message>) -> Response {
        let (mut send, recv) = self.conn.open_bi().await.unwrap();
        write_frame(&mut send, &req.into()).await.unwrap();
        send.finish().unwrap();
        read_response(&mut FrameReader::new(recv)).await
    }

    /// Sends a `PutChunk` header and `body` on a new stream and reads the response.
    pub(crate) async fn put_chunk(&self, req: dooz_protocol::PutChunk, body: &[u8]) -> Response {
        let (mut send, recv) = self.conn.open_bi().await.unwrap();
        let msg = Message::from(req);
        write_frame_with_body(&mut send, &msg, Bytes::copy_from_slice(body))
            .await
            .unwrap();
        send.finish().unwrap();
        read_response(&mut FrameReader::new(recv)).await
    }

    /// `GetChunk`: the `ChunkData` header and the body, or the error.
    pub(crate) async fn get_chunk(
        &self,
        req: dooz_protocol::GetChunk,
    ) -> Result<(ChunkData, RawBody), dooz_protocol::ErrorResponse> {
        let (mut send, recv) = self.conn.open_bi().await.unwrap();
        write_frame(&mut send, &req.into()).await.unwrap();
        send.finish().unwrap();
        let mut reader = FrameReader::new(recv);
        match read_response(&mut reader).await {
            Response::ChunkData(data) => {
                let body = reader.read_raw_body(data.len).await.unwrap();
                reader.expect_end("chunk body").await.unwrap();
                Ok((data, body))
            }
            Response::Error(e) => Err(e),
            other => panic!("unexpected answer to GetChunk: {other:?}"),
        }
    }

    /// Sends raw bytes on a new stream, finishes it, and reads the response.
    pub(crate) async fn raw(&self, bytes: &[u8]) -> Response {
        let (mut send, recv) = self.conn.open_bi().await.unwrap();
        // The server may stop reading early (an oversized prefix): a failed write is fine.
        let _ = send.write_all(bytes).await;
        let _ = send.finish();
        read_response(&mut FrameReader::new(recv)).await
    }

    pub(crate) async fn hello(&self) -> HelloOk {
        match self
            .request(Hello {
                protocol_version: PROTOCOL_VERSION,
                client_name: "dooz-server tests".to_owned(),
                client_version: "0".to_owned(),
                ext: Extensions::new(),
            })
            .await
        {
            Response::HelloOk(ok) => ok,
            other => panic!("unexpected answer to Hello: {other:?}"),
        }
    }

    pub(crate) async fn create_vault(&self, vault: VaultId) {
        match self
            .request(CreateVault {
                vault,
                ext: Extensions::new(),
            })
            .await
        {
            Response::VaultCreated(created) => assert_eq!(created.vault, vault),
            other => panic!("unexpected answer to CreateVault: {other:?}"),
        }
    }
}

/// Reads one response frame; the stream must end after it (for answers without a body).
pub(crate) async fn read_response(reader: &mut FrameReader) -> Response {
    match reader.read_frame().await.unwrap() {
        Some(Message::Response(response)) => response,
        other => panic!("expected a response, got {other:?}"),
    }
}

/// The error of an `Error` response.
pub(crate) fn expect_error(response: Response) -> dooz_protocol::ErrorResponse {
    match response {
        Response::Error(e) => e,
        other => panic!("expected an Error, got {other:?}"),
    }
}

/// Waits until the server closes the connection and returns the close code and reason.
pub(crate) async fn closed_by_server(
    result: Result<Client, quinn::ConnectionError>,
) -> (CloseCode, String) {
    let error = match result {
        Ok(client) => client.conn.closed().await,
        Err(e) => e,
    };
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => (
            CloseCode::from_code(close.error_code.into_inner()).expect("one of our close codes"),
            String::from_utf8(close.reason.to_vec()).unwrap(),
        ),
        other => panic!("expected an application close, got {other}"),
    }
}

pub(crate) fn device_id(device: &DeviceCert) -> DeviceId {
    device.device_id().unwrap()
}

/// A vault id for tests.
pub(crate) fn vault(n: u8) -> VaultId {
    VaultId::from_bytes([n; 16])
}
