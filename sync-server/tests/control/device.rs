//! A minimal device: enrols with a token from the API and speaks the data-plane protocol frame
//! by frame.

use bytes::Bytes;
use dooz_protocol::{
    ALPN, ChunkId, CreateVault, ENROL_ALPN, EnrolRequest, Extensions, GetChunk, Hello, Message,
    PROTOCOL_VERSION, PutChunk, Response, VaultId,
};
use dooz_server::DeviceRegistration;
use dooz_server::frame_io::{FrameReader, write_frame, write_frame_with_body};
use dooz_server::tls::{DeviceCert, SERVER_NAME};
use dooz_server::transport::{TransportTuning, client_config, client_endpoint};

use crate::harness::{TestApi, within};

/// An enrolled, connected device.
pub(crate) struct Device {
    pub(crate) cert: DeviceCert,
    pub(crate) conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
}

impl Device {
    /// Enrols a new device with `token` (through the store, as the enrolment ALPN would),
    /// connects it and says Hello.
    pub(crate) async fn enrol_and_connect(api: &TestApi, token: &str) -> Self {
        let cert = DeviceCert::generate().unwrap();
        api.server()
            .store()
            .redeem_enrolment(
                token,
                DeviceRegistration {
                    device: cert.device_id().unwrap(),
                    identity_key: cert.identity_key().unwrap(),
                    exchange_key: [7; 32],
                    name: "laptop".to_owned(),
                },
                1,
            )
            .await
            .unwrap();
        let tuning = TransportTuning::default();
        let config = client_config(&cert, api.server().fingerprint(), ALPN, &tuning).unwrap();
        let endpoint = client_endpoint("127.0.0.1:0".parse().unwrap(), config, &tuning).unwrap();
        let conn = within(
            endpoint
                .connect(api.server().local_addr(), SERVER_NAME)
                .unwrap(),
        )
        .await
        .unwrap();
        let device = Self {
            cert,
            conn,
            _endpoint: endpoint,
        };
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: "control tests".into(),
            client_version: "0".into(),
            ext: Extensions::new(),
        };
        match device.request(hello.into()).await {
            Response::HelloOk(ok) => assert_eq!(ok.device, device.cert.device_id().unwrap()),
            other => panic!("unexpected answer to Hello: {other:?}"),
        }
        device
    }

    /// Enrols a new device with `token` over the enrolment ALPN, as `dooz enroll` does; returns
    /// the server's answer and the device's certificate.
    pub(crate) async fn enrol_over_quic(api: &TestApi, token: &str) -> (Response, DeviceCert) {
        let cert = DeviceCert::generate().unwrap();
        let tuning = TransportTuning::default();
        let config = client_config(&cert, api.server().fingerprint(), ENROL_ALPN, &tuning).unwrap();
        let endpoint = client_endpoint("127.0.0.1:0".parse().unwrap(), config, &tuning).unwrap();
        let conn = within(
            endpoint
                .connect(api.server().local_addr(), SERVER_NAME)
                .unwrap(),
        )
        .await
        .unwrap();
        let request = EnrolRequest {
            token: token.to_owned(),
            exchange_key: [7; 32],
            device_name: "phone".to_owned(),
        };
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            client_name: "control tests".into(),
            client_version: "0".into(),
            ext: Extensions::new().with(request.to_extension().unwrap()),
        };
        let device = Self {
            cert,
            conn,
            _endpoint: endpoint,
        };
        let answer = device.request(hello.into()).await;
        (answer, device.cert)
    }

    /// One request on a new stream; the first response frame.
    pub(crate) async fn request(&self, message: Message) -> Response {
        self.send(message, None).await
    }

    async fn send(&self, message: Message, body: Option<&[u8]>) -> Response {
        within(async {
            let (mut send, recv) = self.conn.open_bi().await.unwrap();
            match body {
                Some(body) => {
                    write_frame_with_body(&mut send, &message, Bytes::copy_from_slice(body))
                        .await
                        .unwrap()
                }
                None => write_frame(&mut send, &message).await.unwrap(),
            }
            send.finish().unwrap();
            match FrameReader::new(recv).read_frame().await.unwrap() {
                Some(Message::Response(response)) => response,
                other => panic!("expected a response, got {other:?}"),
            }
        })
        .await
    }

    pub(crate) async fn create_vault(&self, vault: VaultId) -> Response {
        self.request(
            CreateVault {
                vault,
                ext: Extensions::new(),
            }
            .into(),
        )
        .await
    }

    /// Uploads chunk `n` (id `[n; 32]`) with `body`.
    pub(crate) async fn put_chunk(&self, vault: VaultId, n: u8, body: &[u8]) -> Response {
        let req = PutChunk {
            vault,
            chunk: ChunkId::from_bytes([n; 32]),
            len: u32::try_from(body.len()).unwrap(),
            blake3: *blake3::hash(body).as_bytes(),
            ext: Extensions::new(),
        };
        self.send(req.into(), Some(body)).await
    }

    /// Asks for chunk `n`; the header response (`ChunkData` or an error).
    pub(crate) async fn get_chunk(&self, vault: VaultId, n: u8) -> Response {
        self.request(
            GetChunk {
                vault,
                chunk: ChunkId::from_bytes([n; 32]),
                ext: Extensions::new(),
            }
            .into(),
        )
        .await
    }
}
