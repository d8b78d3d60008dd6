//! Garbage, oversized frames and unknown message types get an `Error`; the connection and
//! other clients go on.

use dooz_protocol::{Ack, ErrorCode, MAX_FRAME_LEN, Message, encode_to_vec};

use crate::harness::{TestServer, expect_error, within};

#[tokio::test]
async fn bad_frames_get_errors_and_the_server_goes_on() {
    within(async {
        let server = TestServer::start().await;
        let abuser = server.connect(&server.enrolled_device().await).await;
        let bystander = server.connect(&server.enrolled_device().await).await;
        bystander.hello().await;

        // Garbage: a small length prefix, then bytes that are no message, then the end.
        let garbage = [
            0, 0, 0, 9, 0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04, 0x05,
        ];
        let err = expect_error(abuser.raw(&garbage).await);
        assert_eq!(err.code, ErrorCode::Unsupported, "{}", err.message);
        bystander.hello().await;

        // Random-looking bytes whose "prefix" is huge.
        let noise: Vec<u8> = (0u32..4096)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let err = expect_error(abuser.raw(&noise).await);
        assert_eq!(err.code, ErrorCode::TooLarge, "{}", err.message);

        // A stream that ends inside a frame.
        let err = expect_error(abuser.raw(&[0, 0, 0, 50, 0, 1, 1]).await);
        assert_eq!(err.code, ErrorCode::BadRequest, "{}", err.message);
        bystander.hello().await;

        // An oversized length prefix is refused as soon as it arrives, before any body.
        let mut oversized = (MAX_FRAME_LEN + 1).to_be_bytes().to_vec();
        oversized.extend_from_slice(&[0; 64]);
        let err = expect_error(abuser.raw(&oversized).await);
        assert_eq!(err.code, ErrorCode::TooLarge);
        assert!(err.message.contains("over the"), "{}", err.message);
        bystander.hello().await;

        // An unknown message type.
        let unknown = [0, 0, 0, 4, 0x12, 0x34, 0x02, 0x00];
        let err = expect_error(abuser.raw(&unknown).await);
        assert_eq!(err.code, ErrorCode::Unsupported);
        assert!(err.message.contains("0x1234"), "{}", err.message);
        assert!(err.message.contains("upgrade dooz"), "{}", err.message);

        // A known request in a version from the future.
        let err = expect_error(abuser.raw(&[0, 0, 0, 4, 0x00, 0x03, 0x09, 0x00]).await);
        assert_eq!(err.code, ErrorCode::Unsupported);

        // A response where a request belongs.
        let ack = encode_to_vec(&Message::from(Ack::default())).unwrap();
        let err = expect_error(abuser.raw(&ack).await);
        assert_eq!(err.code, ErrorCode::BadRequest);

        // The abusing connection itself still works, and so does everyone else.
        abuser.hello().await;
        bystander.hello().await;
        server.server.shutdown().await;
    })
    .await;
}
