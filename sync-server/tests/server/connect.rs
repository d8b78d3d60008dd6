//! Admission: enrolled devices get in, unknown and revoked ones are refused before any request.

use dooz_protocol::{ALPN, ErrorCode, Extensions, Hello, PROTOCOL_VERSION, Response};
use dooz_server::service::{CloseCode, EnrolRequest, EnrolmentCode};
use dooz_server::tls::{DeviceCert, ENROL_ALPN, parse_fingerprint};

use crate::harness::{TestServer, closed_by_server, device_id, expect_error, within};

#[tokio::test]
async fn enrolled_device_says_hello() {
    within(async {
        let server = TestServer::start().await;
        let device = server.enrolled_device().await;
        let client = server.connect(&device).await;
        let ok = client.hello().await;
        assert_eq!(ok.device, device_id(&device));
        assert_eq!(ok.protocol_version, PROTOCOL_VERSION);
        assert_eq!(ok.tenant, "default");
        assert_eq!(ok.account, "default");
        assert!(ok.server_version.starts_with("dooz-server "));
        assert_eq!(server.server.connected_devices(), 1);
        server.server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn unknown_device_is_refused_with_its_close_code() {
    within(async {
        let server = TestServer::start().await;
        let stranger = DeviceCert::generate().unwrap();
        let (code, reason) = closed_by_server(server.try_connect(&stranger, ALPN).await).await;
        assert_eq!(code, CloseCode::UnknownDevice);
        assert!(reason.contains("not enrolled"), "{reason}");
        assert!(
            reason.contains(&format!("{:#}", device_id(&stranger))),
            "{reason}"
        );
        server.server.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn revoked_device_is_refused_and_cut_off() {
    within(async {
        let server = TestServer::start().await;
        let device = server.enrolled_device().await;
        let client = server.connect(&device).await;
        client.hello().await;

        // Revoking closes the open connection at once ...
        server
            .server
            .revoke_device(device_id(&device))
            .await
            .unwrap();
        let (code, reason) = closed_by_server(Ok(client)).await;
        assert_eq!(code, CloseCode::Revoked);
        assert!(reason.contains("revoked"), "{reason}");

        // ... and refuses new ones.
        let (code, _) = closed_by_server(server.try_connect(&device, ALPN).await).await;
        assert_eq!(code, CloseCode::Revoked);
        assert_eq!(server.server.connected_devices(), 0);
        server.server.shutdown().await;
    })
    .await;
}

fn enrol_hello(token: &str, name: &str) -> Hello {
    let request = EnrolRequest {
        token: token.to_owned(),
        exchange_key: [3; 32],
        device_name: name.to_owned(),
    };
    Hello {
        protocol_version: PROTOCOL_VERSION,
        client_name: "tests".to_owned(),
        client_version: "0".to_owned(),
        ext: Extensions::new().with(request.to_extension().unwrap()),
    }
}

#[tokio::test]
async fn device_enrols_over_the_wire_with_a_code() {
    within(async {
        let server = TestServer::start().await;
        let code = dooz_server::service::mint_enrolment_code(
            server.server.store().as_ref(),
            server.account.id,
            &server.addr().to_string(),
            server.server.fingerprint(),
            false,
            std::time::Duration::from_secs(600),
        )
        .await
        .unwrap();
        // The code survives being printed and pasted, and pins this server.
        let code: EnrolmentCode = code.to_string().parse().unwrap();
        assert_eq!(code.address, server.addr().to_string());
        assert_eq!(
            code.fingerprint,
            parse_fingerprint(server.server.fingerprint()).unwrap()
        );

        let device = DeviceCert::generate().unwrap();
        let enrol = server.try_connect(&device, ENROL_ALPN).await.unwrap();
        match enrol.request(enrol_hello(&code.token, "laptop")).await {
            Response::HelloOk(ok) => assert_eq!(ok.device, device_id(&device)),
            other => panic!("enrolment failed: {other:?}"),
        }
        let (close, _) = closed_by_server(Ok(enrol)).await;
        assert_eq!(close, CloseCode::Done);
        let record = server
            .server
            .store()
            .device(device_id(&device))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.name, "laptop");
        assert_eq!(record.exchange_key, [3; 32]);

        // Now it syncs like any device.
        server.connect(&device).await.hello().await;

        // The one-use token is spent: a second device is refused, with the reason.
        let other = DeviceCert::generate().unwrap();
        let enrol = server.try_connect(&other, ENROL_ALPN).await.unwrap();
        let err = expect_error(enrol.request(enrol_hello(&code.token, "phone")).await);
        assert_eq!(err.code, ErrorCode::Unauthenticated);
        assert!(err.message.contains("already used"), "{}", err.message);
        let (code, _) = closed_by_server(server.try_connect(&other, ALPN).await).await;
        assert_eq!(code, CloseCode::UnknownDevice);
        server.server.shutdown().await;
    })
    .await;
}
