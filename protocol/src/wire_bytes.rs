//! `#[serde(with = "crate::wire_bytes")]` for `Vec<u8>` fields.
//!
//! postcard writes a byte string exactly as it writes a `Vec<u8>` sequence (varint length, then
//! the bytes), so this changes no byte on the wire; it only lets the decoder copy the bytes in one
//! go instead of visiting them one at a time (records run to megabytes).

use std::fmt;

use serde::de::{SeqAccess, Visitor};
use serde::{Deserializer, Serializer};

pub(crate) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64 * 1024));
            while let Some(b) = seq.next_element::<u8>()? {
                out.push(b);
            }
            Ok(out)
        }
    }

    deserializer.deserialize_byte_buf(BytesVisitor)
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Plain(Vec<u8>);

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Fast(#[serde(with = "super")] Vec<u8>);

    #[test]
    fn same_bytes_on_the_wire() {
        for len in [0usize, 1, 127, 128, 300] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let plain = postcard::to_allocvec(&Plain(data.clone())).unwrap();
            let fast = postcard::to_allocvec(&Fast(data.clone())).unwrap();
            assert_eq!(plain, fast);
            assert_eq!(postcard::from_bytes::<Fast>(&plain).unwrap(), Fast(data));
        }
    }
}
