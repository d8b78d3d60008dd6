//! Bad input: truncation, oversized prefixes, unknown types and versions, extensions, limits,
//! trailing bytes and arbitrary bytes. Nothing panics; every case has its own error.

use dooz_protocol::limits::{
    MAX_CHUNK_LEN, MAX_COMMIT_ENTRIES, MAX_EXTENSIONS, MAX_HAVE_IDS, MAX_SEALED_RECORD_LEN,
};
use dooz_protocol::{
    ChunkId, Commit, CommitEntry, DecodeError, EncodeError, EntryKey, Epoch, ErrorCode,
    ErrorResponse, Extension, Extensions, FrameDecoder, Have, LEN_PREFIX, MAX_FRAME_LEN, Message,
    Pull, PutChunk, Request, Response, Seq, VaultId, VersionId, decode_body, decode_frame, encode,
    encode_to_vec,
};
use proptest::collection::vec;
use proptest::prelude::*;
use serde::Serialize;

use crate::strategies::{message, samples};

const PULL: u16 = 0x000a;
const HAVE: u16 = 0x0006;

/// A frame built by hand: any type id, version and payload, no checks.
fn raw_frame(type_id: u16, version: u8, payload: &[u8]) -> Vec<u8> {
    let body_len = u32::try_from(3 + payload.len()).unwrap();
    let mut f = body_len.to_be_bytes().to_vec();
    f.extend_from_slice(&type_id.to_be_bytes());
    f.push(version);
    f.extend_from_slice(payload);
    f
}

/// A frame whose payload is `value` in postcard, bypassing the encoder's limit checks.
fn unchecked_frame<T: Serialize>(type_id: u16, value: &T) -> Vec<u8> {
    raw_frame(type_id, 1, &postcard::to_allocvec(value).unwrap())
}

fn pull(ext: Extensions) -> Pull {
    Pull {
        vault: VaultId::from_bytes([1; 16]),
        since: Seq::new(5),
        limit: 10,
        ext,
    }
}

/// Decodes one-shot and streaming (byte by byte) and checks both give the same result.
fn decode_both(frame: &[u8]) -> Result<Message, DecodeError> {
    let one_shot = decode_frame(frame).map(|(m, used)| {
        assert_eq!(used, frame.len());
        m
    });
    let mut decoder = FrameDecoder::new();
    let mut streamed = None;
    for b in frame {
        decoder.push(std::slice::from_ref(b));
        match decoder.next_frame() {
            Ok(None) => {}
            other => {
                streamed = Some(other.map(|m| m.unwrap()));
                break;
            }
        }
    }
    assert_eq!(
        streamed,
        Some(one_shot.clone()),
        "streaming and one-shot disagree"
    );
    one_shot
}

#[test]
fn every_truncation_of_every_sample_is_incomplete() {
    for msg in samples() {
        let wire = encode_to_vec(&msg).unwrap();
        for k in 0..wire.len() {
            let needed = if k < LEN_PREFIX {
                LEN_PREFIX - k
            } else {
                wire.len() - k
            };
            assert_eq!(
                decode_frame(&wire[..k]),
                Err(DecodeError::Incomplete { needed }),
                "{} cut at {k}",
                msg.name()
            );
            let mut decoder = FrameDecoder::new();
            decoder.push(&wire[..k]);
            assert_eq!(decoder.next_frame(), Ok(None), "{} cut at {k}", msg.name());
            if k > 0 {
                assert_eq!(decoder.finish(), Err(DecodeError::Incomplete { needed }));
            }
        }
    }
}

#[test]
fn oversized_length_prefixes_are_rejected_before_the_body() {
    let too_large = [
        MAX_FRAME_LEN + 1,
        MAX_FRAME_LEN + 2,
        2 * MAX_FRAME_LEN,
        u32::MAX - 1,
        u32::MAX,
    ];
    for len in too_large {
        let expected = DecodeError::FrameTooLarge {
            len,
            max: MAX_FRAME_LEN,
        };
        let prefix = len.to_be_bytes();
        // One-shot: the 4 prefix bytes are enough, with or without some body after them.
        assert_eq!(decode_frame(&prefix).unwrap_err(), expected);
        let mut with_body = prefix.to_vec();
        with_body.extend_from_slice(&[0; 100]);
        assert_eq!(decode_frame(&with_body).unwrap_err(), expected);

        // Streaming, byte by byte: nothing until the 4th byte, then the error, for good.
        let mut decoder = FrameDecoder::new();
        for b in &prefix[..3] {
            decoder.push(std::slice::from_ref(b));
            assert_eq!(decoder.next_frame(), Ok(None));
        }
        decoder.push(&prefix[3..]);
        assert!(
            decoder.buffered().is_empty(),
            "the decoder dropped what it had"
        );
        decoder.push(&[0; 1000]);
        assert!(
            decoder.buffered().is_empty(),
            "nothing is buffered after the failure"
        );
        assert_eq!(decoder.next_frame().unwrap_err(), expected);
        assert_eq!(decoder.next_frame().unwrap_err(), expected);
        assert_eq!(decoder.finish().unwrap_err(), expected);

        let resp = expected.to_error_response();
        assert_eq!(resp.code, ErrorCode::TooLarge);
    }
    // Exactly the limit is legal: the decoder waits for the body.
    let prefix = MAX_FRAME_LEN.to_be_bytes();
    assert_eq!(
        decode_frame(&prefix),
        Err(DecodeError::Incomplete {
            needed: MAX_FRAME_LEN as usize
        })
    );
}

#[test]
fn oversized_prefix_after_a_good_frame() {
    let mut wire = encode_to_vec(&pull(Extensions::new()).into()).unwrap();
    wire.extend_from_slice(&u32::MAX.to_be_bytes());
    let mut decoder = FrameDecoder::new();
    decoder.push(&wire);
    assert_eq!(
        decoder.next_frame(),
        Ok(Some(pull(Extensions::new()).into()))
    );
    assert!(matches!(
        decoder.next_frame(),
        Err(DecodeError::FrameTooLarge { len: u32::MAX, .. })
    ));
}

#[test]
fn unknown_message_type() {
    let frame = raw_frame(0x1234, 2, &[1, 2, 3]);
    let err = decode_both(&frame).unwrap_err();
    assert_eq!(
        err,
        DecodeError::UnknownMessage {
            type_id: 0x1234,
            version: 2
        }
    );
    let resp = err.to_error_response();
    assert_eq!(resp.code, ErrorCode::Unsupported);
    assert!(
        resp.message.contains("message type 0x1234 v2"),
        "{}",
        resp.message
    );
    assert!(resp.message.contains("upgrade dooz"), "{}", resp.message);
    // Response range too, and type 0 (reserved).
    assert!(matches!(
        decode_both(&raw_frame(0xfffe, 1, &[])),
        Err(DecodeError::UnknownMessage { .. })
    ));
    assert!(matches!(
        decode_both(&raw_frame(0, 1, &[])),
        Err(DecodeError::UnknownMessage { .. })
    ));
}

#[test]
fn newer_version_of_a_known_type() {
    let payload = postcard::to_allocvec(&pull(Extensions::new())).unwrap();
    let err = decode_both(&raw_frame(PULL, 2, &payload)).unwrap_err();
    assert_eq!(
        err,
        DecodeError::UnsupportedVersion {
            type_id: PULL,
            version: 2,
            max: 1
        }
    );
    let resp = err.to_error_response();
    assert_eq!(resp.code, ErrorCode::Unsupported);
    assert_eq!(
        resp.message,
        "received message type 0x000a (Pull) v2; this build of dooz supports it up to v1: \
         upgrade dooz"
    );
    // Version 0 is reserved.
    assert!(matches!(
        decode_both(&raw_frame(PULL, 0, &payload)),
        Err(DecodeError::Malformed {
            type_id: Some(PULL),
            ..
        })
    ));
}

#[test]
fn unknown_critical_extension_is_rejected() {
    let ext = Extensions::new()
        .with(Extension::optional(7, vec![1]))
        .with(Extension::critical(0x1_0042, vec![2, 3]));
    let frame = unchecked_frame(PULL, &pull(ext.clone()));
    // The encoder writes it (the sender knows what it means) ...
    assert_eq!(encode_to_vec(&pull(ext).into()).unwrap(), frame);
    // ... and this build refuses it.
    let err = decode_both(&frame).unwrap_err();
    assert_eq!(
        err,
        DecodeError::UnsupportedExtension {
            type_id: PULL,
            tag: 0x1_0042
        }
    );
    let resp = err.to_error_response();
    assert_eq!(resp.code, ErrorCode::Unsupported);
    assert!(
        resp.message.contains("critical extension 0x10042"),
        "{}",
        resp.message
    );
}

#[test]
fn unknown_optional_extension_is_kept_and_ignored() {
    let ext = Extensions::new().with(Extension::optional(0x2_0000, b"future".to_vec()));
    let msg: Message = pull(ext).into();
    let frame = encode_to_vec(&msg).unwrap();
    let back = decode_both(&frame).unwrap();
    assert_eq!(back, msg);
    assert_eq!(back.ext().get(0x2_0000).unwrap().value, b"future");
    // Re-encoding forwards it unchanged.
    assert_eq!(encode_to_vec(&back).unwrap(), frame);
}

#[test]
fn trailing_bytes_are_malformed() {
    let mut payload = postcard::to_allocvec(&pull(Extensions::new())).unwrap();
    payload.push(0);
    let err = decode_both(&raw_frame(PULL, 1, &payload)).unwrap_err();
    assert!(
        matches!(&err, DecodeError::Malformed { type_id: Some(PULL), reason } if reason.contains("trailing")),
        "{err}"
    );
    assert_eq!(err.to_error_response().code, ErrorCode::BadRequest);
}

#[test]
fn short_and_truncated_bodies_are_malformed() {
    for body_len in 0u32..3 {
        let mut frame = body_len.to_be_bytes().to_vec();
        frame.extend(std::iter::repeat_n(0, body_len as usize));
        assert!(
            matches!(
                decode_both(&frame),
                Err(DecodeError::Malformed { type_id: None, .. })
            ),
            "body of {body_len}"
        );
    }
    // A complete frame whose payload stops early.
    let payload = postcard::to_allocvec(&pull(Extensions::new())).unwrap();
    let err = decode_both(&raw_frame(PULL, 1, &payload[..payload.len() - 2])).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::Malformed {
                type_id: Some(PULL),
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with("malformed message type 0x000a (Pull)"),
        "{err}"
    );
}

#[test]
fn body_errors_consume_the_frame_and_decoding_continues() {
    let mut wire = raw_frame(0x7777, 1, &[1, 2, 3]);
    encode(&pull(Extensions::new()).into(), &mut wire).unwrap();
    let mut decoder = FrameDecoder::new();
    decoder.push(&wire);
    let err = decoder.next_frame().unwrap_err();
    assert!(err.is_frame_consumed());
    assert_eq!(
        decoder.next_frame(),
        Ok(Some(pull(Extensions::new()).into()))
    );
}

#[test]
fn unknown_error_code_decodes_to_a_fallback() {
    // An Error response from a newer server: code 999 (varint e7 07), detail [1, 2], message.
    let mut payload = vec![0xe7, 0x07, 2, 1, 2];
    payload.extend_from_slice(&postcard::to_allocvec("try the new thing").unwrap());
    payload.push(0); // no extensions
    let msg = decode_both(&raw_frame(0x8000, 1, &payload)).unwrap();
    let Message::Response(Response::Error(ErrorResponse { code, message, .. })) = msg else {
        panic!("not an error: {msg:?}");
    };
    assert_eq!(code.code(), 999);
    assert!(matches!(code, ErrorCode::Unknown(_)));
    assert!(!code.is_retryable());
    assert_eq!(message, "try the new thing");
}

#[test]
fn limits_are_enforced_on_both_sides() {
    let vault = VaultId::from_bytes([1; 16]);
    let have = Have {
        vault,
        chunks: vec![ChunkId::from_bytes([2; 32]); MAX_HAVE_IDS + 1],
        ext: Extensions::new(),
    };
    let msg: Message = have.clone().into();
    let mut out = vec![1, 2, 3];
    let err = encode(&msg, &mut out).unwrap_err();
    assert!(
        matches!(&err, EncodeError::LimitExceeded { type_id: HAVE, limit } if limit.got == 4097 && limit.max == 4096),
        "{err}"
    );
    assert_eq!(out, [1, 2, 3], "nothing written on error");
    let err = decode_both(&unchecked_frame(HAVE, &have)).unwrap_err();
    assert!(
        matches!(&err, DecodeError::LimitExceeded { type_id: HAVE, limit } if limit.got == 4097),
        "{err}"
    );
    let resp = err.to_error_response();
    assert_eq!(resp.code, ErrorCode::TooLarge);
    assert!(
        resp.message
            .contains("chunk ids in Have is 4097, over the protocol limit of 4096"),
        "{}",
        resp.message
    );

    // Exactly at the limit is fine.
    let at_limit: Message = Have {
        vault,
        chunks: vec![ChunkId::from_bytes([2; 32]); MAX_HAVE_IDS],
        ext: Extensions::new(),
    }
    .into();
    assert_eq!(
        decode_both(&encode_to_vec(&at_limit).unwrap()).unwrap(),
        at_limit
    );

    // Raw chunk length in a PutChunk header.
    let put = PutChunk {
        vault,
        chunk: ChunkId::from_bytes([3; 32]),
        len: MAX_CHUNK_LEN + 1,
        blake3: [0; 32],
        ext: Extensions::new(),
    };
    assert!(matches!(
        encode_to_vec(&put.clone().into()),
        Err(EncodeError::LimitExceeded { .. })
    ));
    assert!(matches!(
        decode_both(&unchecked_frame(0x0007, &put)),
        Err(DecodeError::LimitExceeded { .. })
    ));

    // Too many extensions, even when the peer declares millions (only a few are kept).
    let many: Vec<Extension> = (0..MAX_EXTENSIONS as u32 + 1)
        .map(|t| Extension::optional(t, Vec::new()))
        .collect();
    let p = pull(many.into());
    assert!(matches!(
        encode_to_vec(&p.clone().into()),
        Err(EncodeError::LimitExceeded { .. })
    ));
    let err = decode_both(&unchecked_frame(PULL, &p)).unwrap_err();
    assert!(
        matches!(&err, DecodeError::LimitExceeded { limit, .. } if limit.what == "extensions"),
        "{err}"
    );
    let huge: Vec<Extension> = (0..100_000)
        .map(|t| Extension::optional(t, Vec::new()))
        .collect();
    assert!(matches!(
        decode_frame(&unchecked_frame(PULL, &pull(huge.into()))),
        Err(DecodeError::LimitExceeded { .. })
    ));

    // Commit entry count and record size.
    let entry = CommitEntry {
        entry: EntryKey::from_bytes([4; 32]),
        parent: None,
        version: VersionId::from_bytes([5; 16]),
        record: Vec::new(),
        chunks: Vec::new(),
        epoch: Epoch::ZERO,
    };
    let commit = Commit {
        vault,
        entries: vec![entry.clone(); MAX_COMMIT_ENTRIES + 1],
        ext: Extensions::new(),
    };
    assert!(matches!(
        encode_to_vec(&commit.into()),
        Err(EncodeError::LimitExceeded { .. })
    ));
    let big = CommitEntry {
        record: vec![0; MAX_SEALED_RECORD_LEN + 1],
        ..entry
    };
    let commit = Commit {
        vault,
        entries: vec![big],
        ext: Extensions::new(),
    };
    assert!(matches!(
        decode_both(&unchecked_frame(0x0009, &commit)),
        Err(DecodeError::LimitExceeded { .. })
    ));
}

#[test]
fn frames_over_the_limit_are_not_encoded() {
    let entry = CommitEntry {
        entry: EntryKey::from_bytes([4; 32]),
        parent: None,
        version: VersionId::from_bytes([5; 16]),
        record: vec![7; MAX_SEALED_RECORD_LEN],
        chunks: Vec::new(),
        epoch: Epoch::ZERO,
    };
    // Each entry is within its limits; together they are over the frame limit.
    let commit: Message = Commit {
        vault: VaultId::from_bytes([1; 16]),
        entries: vec![entry; 2],
        ext: Extensions::new(),
    }
    .into();
    let mut out = Vec::new();
    let err = encode(&commit, &mut out).unwrap_err();
    assert!(
        matches!(
            err,
            EncodeError::FrameTooLarge {
                type_id: 0x0009,
                max: MAX_FRAME_LEN,
                ..
            }
        ),
        "{err}"
    );
    assert!(out.is_empty());
    assert!(
        err.to_string().contains("send fewer items per message"),
        "{err}"
    );
}

#[test]
fn raw_chunk_body_after_a_header_is_left_for_the_driver() {
    // Raw bytes that would read as an oversized length prefix must not trip the decoder.
    let body = vec![0xff; 64];
    let header = PutChunk {
        vault: VaultId::from_bytes([1; 16]),
        chunk: ChunkId::from_bytes([2; 32]),
        len: 64,
        blake3: [9; 32],
        ext: Extensions::new(),
    };
    let mut wire = encode_to_vec(&header.clone().into()).unwrap();
    wire.extend_from_slice(&body);
    let mut decoder = FrameDecoder::new();
    decoder.push(&wire);
    let msg = decoder.next_frame().unwrap().unwrap();
    assert_eq!(msg.raw_body_len(), Some(64));
    assert_eq!(msg, Message::Request(Request::PutChunk(header)));
    assert_eq!(decoder.take_buffered(), body);
    assert!(decoder.buffered().is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary bytes never panic any decoder, and one-shot and streaming agree.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..300), step in 1usize..17) {
        let _ = decode_body(&bytes);
        let mut one_shot = Vec::new();
        let mut rest = &bytes[..];
        while let Ok((m, used)) = decode_frame(rest) {
            one_shot.push(m);
            rest = &rest[used..];
        }
        let mut decoder = FrameDecoder::new();
        let mut streamed = Vec::new();
        'feed: for piece in bytes.chunks(step) {
            decoder.push(piece);
            loop {
                match decoder.next_frame() {
                    Ok(Some(m)) => streamed.push(m),
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
        }
        prop_assert_eq!(one_shot, streamed);
    }

    /// Arbitrary bodies behind a known type id never panic; what decodes re-encodes the same.
    #[test]
    fn arbitrary_payloads_of_known_types(
        idx in any::<prop::sample::Index>(),
        payload in vec(any::<u8>(), 0..200),
    ) {
        let types: Vec<u16> = dooz_protocol::message_types().map(|t| t.type_id).collect();
        let type_id = types[idx.index(types.len())];
        let mut body = type_id.to_be_bytes().to_vec();
        body.push(1);
        body.extend_from_slice(&payload);
        if let Ok(msg) = decode_body(&body) {
            let frame = encode_to_vec(&msg).unwrap();
            prop_assert_eq!(decode_frame(&frame).unwrap().0, msg);
        }
    }

    /// Valid frames with bytes flipped never panic the decoder.
    #[test]
    fn mutated_frames_never_panic(
        msg in message(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut frame = encode_to_vec(&msg).unwrap();
        for (at, x) in flips {
            let i = at.index(frame.len());
            frame[i] ^= x;
        }
        if let Ok((back, _)) = decode_frame(&frame) {
            let again = encode_to_vec(&back).unwrap();
            prop_assert_eq!(decode_frame(&again).unwrap().0, back);
        }
    }
}
