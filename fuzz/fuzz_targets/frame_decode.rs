//! Streaming and one-shot frame decoding of arbitrary bytes: never panics,
//! and both decoders agree on what they accept.
#![no_main]

use dooz_protocol::{FrameDecoder, decode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks how the streaming decoder is fed (1..=32 bytes a push).
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(step % 32) + 1;

    let mut one_shot = Vec::new();
    let mut input = rest;
    while let Ok((msg, used)) = decode_frame(input) {
        one_shot.push(msg);
        input = &input[used..];
    }

    let mut decoder = FrameDecoder::new();
    let mut streamed = Vec::new();
    'feed: for piece in rest.chunks(step) {
        decoder.push(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(msg)) => streamed.push(msg),
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
    }
    // The streaming decoder stops at the first bad frame, as the one-shot loop does.
    assert_eq!(one_shot, streamed);
});
