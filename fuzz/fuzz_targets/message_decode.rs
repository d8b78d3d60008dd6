//! Message bodies (type id + version + postcard payload): decoding never
//! panics, and whatever decodes re-encodes to a frame that decodes the same.
#![no_main]

use dooz_protocol::{decode_body, decode_frame, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = decode_body(data) {
        let mut frame = Vec::new();
        // A body that decoded is within the limits, so it re-encodes.
        if encode(&msg, &mut frame).is_ok() {
            let (again, used) = decode_frame(&frame).expect("re-encoded frame decodes");
            assert_eq!(used, frame.len());
            assert_eq!(again, msg);
        }
    }
});
