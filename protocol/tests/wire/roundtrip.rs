//! Every message type encodes and decodes back to itself, one-shot and streaming.

use std::collections::BTreeSet;

use dooz_protocol::{
    FrameDecoder, LEN_PREFIX, Message, decode_body, decode_frame, encode, encode_to_vec,
    encoded_len, message_types,
};
use proptest::collection::vec;
use proptest::prelude::*;

use crate::strategies::{message, requests, responses, samples};

/// Encodes `msg` and checks every way of decoding it gives it back.
fn check_round_trip(msg: &Message) -> Result<Vec<u8>, TestCaseError> {
    let mut wire = vec![0xee]; // encode appends: keep what was there
    encode(msg, &mut wire).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(wire.remove(0), 0xee);
    prop_assert_eq!(wire.len(), encoded_len(msg));
    prop_assert_eq!(&wire, &encode_to_vec(msg).unwrap());

    // Layout: prefix = body length, then type id and version.
    let body_len = u32::from_be_bytes(wire[..4].try_into().unwrap()) as usize;
    prop_assert_eq!(body_len, wire.len() - LEN_PREFIX);
    prop_assert_eq!(u16::from_be_bytes([wire[4], wire[5]]), msg.type_id());
    prop_assert_eq!(wire[6], msg.version());

    let (back, used) = decode_frame(&wire).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&back, msg);
    prop_assert_eq!(used, wire.len());
    prop_assert_eq!(&decode_body(&wire[LEN_PREFIX..]).unwrap(), msg);

    let mut decoder = FrameDecoder::new();
    for (i, byte) in wire.iter().enumerate() {
        prop_assert_eq!(
            decoder.next_frame(),
            Ok(None),
            "frame complete after {} bytes",
            i
        );
        decoder.push(std::slice::from_ref(byte));
    }
    prop_assert_eq!(decoder.next_frame(), Ok(Some(msg.clone())));
    prop_assert_eq!(decoder.next_frame(), Ok(None));
    prop_assert!(decoder.finish().is_ok());
    Ok(wire)
}

#[test]
fn samples_cover_every_message_type() {
    let sampled: BTreeSet<u16> = samples().iter().map(Message::type_id).collect();
    let known: BTreeSet<u16> = message_types().map(|t| t.type_id).collect();
    assert_eq!(sampled, known);
    let named: BTreeSet<&str> = requests()
        .iter()
        .map(|r| r.0)
        .chain(responses().iter().map(|r| r.0))
        .collect();
    let known: BTreeSet<&str> = message_types().map(|t| t.name).collect();
    assert_eq!(named, known, "a strategy per message type");
}

#[test]
fn samples_round_trip() {
    for msg in samples() {
        check_round_trip(&msg).unwrap();
    }
}

#[test]
fn every_request_type_round_trips() {
    for (name, strategy) in requests() {
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(48));
        runner
            .run(&strategy, |req| {
                check_round_trip(&Message::Request(req)).map(drop)
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn every_response_type_round_trips() {
    for (name, strategy) in responses() {
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(48));
        runner
            .run(&strategy, |resp| {
                check_round_trip(&Message::Response(resp)).map(drop)
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Many frames back to back, fed in arbitrary pieces, come out in order.
    #[test]
    fn streams_of_frames_in_any_pieces(
        msgs in vec(message(), 1..6),
        cuts in vec(1usize..40, 1..50),
    ) {
        let mut wire = Vec::new();
        for m in &msgs {
            encode(m, &mut wire).unwrap();
        }
        // One shot, frame after frame.
        let mut rest = &wire[..];
        for m in &msgs {
            let (back, used) = decode_frame(rest).unwrap();
            prop_assert_eq!(&back, m);
            rest = &rest[used..];
        }
        prop_assert!(rest.is_empty());

        // Streaming, in the given piece sizes (cycled).
        let mut decoder = FrameDecoder::new();
        let mut got = Vec::new();
        let mut pos = 0;
        for cut in cuts.iter().cycle() {
            if pos >= wire.len() {
                break;
            }
            let end = (pos + cut).min(wire.len());
            decoder.push(&wire[pos..end]);
            pos = end;
            while let Some(m) = decoder.next_frame().unwrap() {
                got.push(m);
            }
        }
        prop_assert_eq!(got, msgs);
        prop_assert!(decoder.finish().is_ok());
    }

    /// Cutting a frame anywhere gives Incomplete (one-shot) and None (streaming).
    #[test]
    fn any_truncation_is_incomplete(msg in message(), cut in any::<prop::sample::Index>()) {
        let wire = encode_to_vec(&msg).unwrap();
        let k = cut.index(wire.len());
        let needed = if k < LEN_PREFIX { LEN_PREFIX - k } else { wire.len() - k };
        prop_assert_eq!(
            decode_frame(&wire[..k]).unwrap_err(),
            dooz_protocol::DecodeError::Incomplete { needed }
        );
        let mut decoder = FrameDecoder::new();
        decoder.push(&wire[..k]);
        prop_assert_eq!(decoder.next_frame(), Ok(None));
    }
}
