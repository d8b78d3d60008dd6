//! Extensions: the room every message keeps for fields added later.
//!
//! Every message struct ends with `ext: Extensions`, a list of `{tag, critical, value}`. A peer
//! that does not know a tag keeps a non-critical extension (it survives a decode/encode round
//! trip) and otherwise ignores it; an unknown *critical* extension makes the whole message fail
//! with [`DecodeError::UnsupportedExtension`](crate::DecodeError::UnsupportedExtension), so a
//! field whose meaning must not be silently dropped can be added without a new message version.

use std::fmt;

use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::limits::MAX_EXTENSIONS;

/// One extension field.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Extension {
    /// What the value means. Tags below `0x1_0000` are assigned by this protocol (in
    /// `docs/PROTOCOL.md`); tags from `0x1_0000` up are free for experiments.
    pub tag: u32,
    /// Whether a peer that does not know `tag` must reject the message.
    pub critical: bool,
    /// The value, encoded as the tag's definition says (usually postcard).
    #[serde(with = "crate::wire_bytes")]
    pub value: Vec<u8>,
}

impl Extension {
    /// First tag free for experiments; tags below it are assigned by the protocol.
    pub const FIRST_EXPERIMENTAL_TAG: u32 = 0x1_0000;

    /// A non-critical extension: peers that do not know `tag` ignore it.
    pub fn optional(tag: u32, value: Vec<u8>) -> Self {
        Self {
            tag,
            critical: false,
            value,
        }
    }

    /// A critical extension: peers that do not know `tag` reject the message.
    pub fn critical(tag: u32, value: Vec<u8>) -> Self {
        Self {
            tag,
            critical: true,
            value,
        }
    }
}

impl fmt::Debug for Extension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Extension")
            .field("tag", &format_args!("{:#x}", self.tag))
            .field("critical", &self.critical)
            .field("value_len", &self.value.len())
            .finish()
    }
}

/// The extensions of one message, in the order they were sent. Empty in every message this build
/// makes; kept as received otherwise.
#[derive(Clone, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct Extensions(Vec<Extension>);

impl Extensions {
    /// No extensions.
    pub const fn new() -> Self {
        Self(Vec::new())
    }

    /// Adds an extension at the end.
    pub fn push(&mut self, ext: Extension) {
        self.0.push(ext);
    }

    /// Adds an extension at the end, builder style.
    #[must_use]
    pub fn with(mut self, ext: Extension) -> Self {
        self.0.push(ext);
        self
    }

    /// The first extension with `tag`, if any.
    pub fn get(&self, tag: u32) -> Option<&Extension> {
        self.0.iter().find(|e| e.tag == tag)
    }

    /// All extensions, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Extension> {
        self.0.iter()
    }

    /// How many extensions there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Extensions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.0).finish()
    }
}

impl From<Vec<Extension>> for Extensions {
    fn from(v: Vec<Extension>) -> Self {
        Self(v)
    }
}

impl<'a> IntoIterator for &'a Extensions {
    type Item = &'a Extension;
    type IntoIter = std::slice::Iter<'a, Extension>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Keeps at most `MAX_EXTENSIONS + 1` extensions in memory while decoding, however many the
/// peer declares (each costs 3 bytes on the wire but ~40 in memory). The rest are parsed and
/// dropped; the limit check after decoding then rejects the message as too large.
impl<'de> Deserialize<'de> for Extensions {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Capped;

        impl<'de> Visitor<'de> for Capped {
            type Value = Extensions;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of extensions")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Extensions, A::Error> {
                let keep = MAX_EXTENSIONS + 1;
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(keep));
                while let Some(ext) = seq.next_element::<Extension>()? {
                    if out.len() < keep {
                        out.push(ext);
                    }
                }
                Ok(Extensions(out))
            }
        }

        deserializer.deserialize_seq(Capped)
    }
}

/// Extension tags this build understands, as `(type_id, tag)`; a critical extension not listed
/// here fails the message. `GetEnvelopes` (0x0005) may carry
/// [`RECOVERY_ENVELOPES_TAG`](crate::RECOVERY_ENVELOPES_TAG), `PutEnvelope` (0x0004)
/// [`NEW_EPOCH_TAG`](crate::NEW_EPOCH_TAG).
const KNOWN_EXTENSIONS: &[(u16, u32)] = &[
    (0x0005, crate::pairing::RECOVERY_ENVELOPES_TAG),
    (0x0004, crate::pairing::NEW_EPOCH_TAG),
];

/// Whether this build understands extension `tag` on message type `type_id`.
pub(crate) fn is_known_extension(type_id: u16, tag: u32) -> bool {
    KNOWN_EXTENSIONS.contains(&(type_id, tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_encoding() {
        let ext = Extensions::new().with(Extension::critical(0x1_0001, vec![1, 2, 3]));
        let bytes = postcard::to_allocvec(&ext).unwrap();
        // count, tag varint (3 bytes), critical, value length, value
        assert_eq!(bytes, [1, 0x81, 0x80, 0x04, 1, 3, 1, 2, 3]);
        let back: Extensions = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, ext);
        assert_eq!(
            back.get(0x1_0001).map(|e| e.value.as_slice()),
            Some(&[1u8, 2, 3][..])
        );
        assert!(back.get(7).is_none());
    }

    #[test]
    fn decoding_keeps_at_most_one_over_the_limit() {
        let many: Vec<Extension> = (0..1000)
            .map(|t| Extension::optional(t, Vec::new()))
            .collect();
        let bytes = postcard::to_allocvec(&Extensions::from(many)).unwrap();
        let back: Extensions = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.len(), MAX_EXTENSIONS + 1);
    }

    #[test]
    fn debug_does_not_dump_values() {
        let ext = Extension::optional(0x10, vec![0; 1000]);
        assert_eq!(
            format!("{ext:?}"),
            "Extension { tag: 0x10, critical: false, value_len: 1000 }"
        );
    }
}
