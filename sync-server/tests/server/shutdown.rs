//! Graceful shutdown: subscriptions end, connections are closed with the shutdown code, and
//! `shutdown` returns.

use dooz_protocol::{Extensions, Message, Response, Subscribe};
use dooz_server::frame_io::{FrameReader, write_frame};
use dooz_server::service::CloseCode;

use crate::harness::{TestServer, closed_by_server, read_response, vault, within};

#[tokio::test]
async fn shutdown_closes_connections_and_completes() {
    within(async {
        let server = TestServer::start().await;
        let device = server.enrolled_device().await;
        let client = server.connect(&device).await;
        client.hello().await;
        let v = vault(5);
        client.create_vault(v).await;

        // An open subscription must not hold the shutdown up.
        let (mut send, recv) = client.conn.open_bi().await.unwrap();
        let subscribe = Subscribe {
            vaults: vec![v],
            ext: Extensions::new(),
        };
        write_frame(&mut send, &Message::from(subscribe))
            .await
            .unwrap();
        send.finish().unwrap();
        let mut stream = FrameReader::new(recv);
        assert!(matches!(
            read_response(&mut stream).await,
            Response::Subscribed(_)
        ));

        server.server.shutdown().await;

        // The subscription stream was finished, then the connection closed.
        assert_eq!(stream.read_frame().await.unwrap(), None);
        let (code, reason) = closed_by_server(Ok(client)).await;
        assert_eq!(code, CloseCode::ShuttingDown);
        assert!(reason.contains("shutting down"), "{reason}");
    })
    .await;
}
