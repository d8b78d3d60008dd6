//! Subscribe: commits from one connection are pushed to another as `Changed`.

use dooz_protocol::{Extensions, Message, Response, Seq, Subscribe};
use dooz_server::frame_io::{FrameReader, write_frame};

use crate::commit::{committed, entry};
use crate::harness::{TestServer, expect_error, read_response, vault, within};

#[tokio::test]
async fn subscriber_hears_commits_of_other_connections() {
    within(async {
        let server = TestServer::start().await;
        let writer_device = server.enrolled_device().await;
        let reader_device = server.enrolled_device().await;
        let writer = server.connect(&writer_device).await;
        let reader = server.connect(&reader_device).await;
        let (v, quiet) = (vault(3), vault(4));
        writer.create_vault(v).await;
        writer.create_vault(quiet).await;

        // A vault the account does not have fails the subscription.
        let err = expect_error(
            reader
                .request(Subscribe {
                    vaults: vec![vault(99)],
                    ext: Extensions::new(),
                })
                .await,
        );
        assert_eq!(err.code, dooz_protocol::ErrorCode::NotFound);

        let (mut send, recv) = reader.conn.open_bi().await.unwrap();
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

        // A commit to an unsubscribed vault is not pushed; one to the subscribed vault is.
        committed(&writer, quiet, vec![entry(1, None, 1, vec![])]).await;
        committed(
            &writer,
            v,
            vec![entry(1, None, 1, vec![]), entry(2, None, 2, vec![])],
        )
        .await;
        match read_response(&mut stream).await {
            Response::Changed(changed) => {
                assert_eq!(changed.vault, v);
                assert_eq!(changed.seq, Seq::new(2));
            }
            other => panic!("expected Changed, got {other:?}"),
        }
        committed(&writer, v, vec![entry(1, Some(1), 3, vec![])]).await;
        match read_response(&mut stream).await {
            Response::Changed(changed) => assert_eq!(changed.seq, Seq::new(3)),
            other => panic!("expected Changed, got {other:?}"),
        }

        // A new subscription replaces the old one: the server finishes the old stream.
        let replaced = reader
            .request(Subscribe {
                vaults: vec![quiet],
                ext: Extensions::new(),
            })
            .await;
        assert!(matches!(replaced, Response::Subscribed(_)), "{replaced:?}");
        assert_eq!(stream.read_frame().await.unwrap(), None);
        server.server.shutdown().await;
    })
    .await;
}
