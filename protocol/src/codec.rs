//! The framing codec: messages to bytes and back, without IO.
//!
//! ```text
//! frame = len:u32 BE | body            (len = body length, at most MAX_FRAME_LEN)
//! body  = type_id:u16 BE | version:u8 | payload (postcard of the message struct)
//! ```

use std::fmt;

use postcard::ser_flavors::{Flavor, Size};
use thiserror::Error;

use crate::error_code::{ErrorCode, ErrorResponse};
use crate::ext::is_known_extension;
use crate::limits::{LimitError, MAX_FRAME_LEN};
use crate::messages::{Message, message_type};

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// Bytes of the body header (type id + version) before the payload.
pub const BODY_HEADER: usize = 3;

/// Names a message type in error messages: `message type 0x0009 (Commit)`.
struct TypeName(u16);

impl fmt::Display for TypeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match message_type(self.0) {
            Some(t) => write!(f, "message type {:#06x} ({})", self.0, t.name),
            None => write!(f, "message type {:#06x}", self.0),
        }
    }
}

/// Names where a malformed input was found.
struct Where(Option<u16>);

impl fmt::Display for Where {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(t) => TypeName(t).fmt(f),
            None => f.write_str("frame"),
        }
    }
}

/// A message could not be encoded. Nothing was written to the output.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded body would be over [`MAX_FRAME_LEN`]; split the content (fewer entries or
    /// ids per message).
    #[error(
        "{}: frame body of {len} bytes is over the {max}-byte limit; send fewer items per message",
        TypeName(*type_id)
    )]
    FrameTooLarge {
        /// The message's type id.
        type_id: u16,
        /// The body length it would have had.
        len: usize,
        /// [`MAX_FRAME_LEN`].
        max: u32,
    },
    /// A field was over a protocol [limit](crate::limits).
    #[error("{}: {limit}", TypeName(*type_id))]
    LimitExceeded {
        /// The message's type id.
        type_id: u16,
        /// Which limit.
        limit: LimitError,
    },
    /// postcard refused the message (not expected for any message of this crate).
    #[error("{}: could not serialize: {reason}", TypeName(*type_id))]
    Serialize {
        /// The message's type id.
        type_id: u16,
        /// postcard's reason.
        reason: String,
    },
}

/// Bytes could not be decoded into a message.
///
/// [`to_error_response`](Self::to_error_response) turns any of these into the `Error` response
/// to send back, with a message that the peer can show verbatim.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ends inside a frame: at least `needed` more bytes are required.
    #[error("the frame is incomplete: at least {needed} more bytes are needed")]
    Incomplete {
        /// How many more bytes are needed at least.
        needed: usize,
    },
    /// The length prefix announces a body over [`MAX_FRAME_LEN`]. Rejected before any of the
    /// body is buffered; the stream cannot be resynchronised and must be closed.
    #[error(
        "frame body of {len} bytes announced, over the {max}-byte limit: the peer is broken or \
         does not speak dooz/1"
    )]
    FrameTooLarge {
        /// The announced body length.
        len: u32,
        /// [`MAX_FRAME_LEN`].
        max: u32,
    },
    /// A type id this build does not know (from a newer peer, or garbage).
    #[error(
        "received {} v{version}, which this build of dooz does not know: upgrade dooz",
        TypeName(*type_id)
    )]
    UnknownMessage {
        /// The type id.
        type_id: u16,
        /// The version it came with.
        version: u8,
    },
    /// A known type in a version newer than this build reads.
    #[error(
        "received {} v{version}; this build of dooz supports it up to v{max}: upgrade dooz",
        TypeName(*type_id)
    )]
    UnsupportedVersion {
        /// The type id.
        type_id: u16,
        /// The version received.
        version: u8,
        /// The newest version this build reads.
        max: u8,
    },
    /// A critical extension this build does not know.
    #[error(
        "received {} with critical extension {tag:#x}, which this build of dooz does not know: \
         upgrade dooz",
        TypeName(*type_id)
    )]
    UnsupportedExtension {
        /// The type id.
        type_id: u16,
        /// The extension's tag.
        tag: u32,
    },
    /// A field was over a protocol [limit](crate::limits).
    #[error("received {}: {limit}", TypeName(*type_id))]
    LimitExceeded {
        /// The type id.
        type_id: u16,
        /// Which limit.
        limit: LimitError,
    },
    /// The bytes are not a valid encoding (bad varint, bad UTF-8, truncated payload, trailing
    /// bytes, a body shorter than its header, ...).
    #[error("malformed {}: {reason}", Where(*type_id))]
    Malformed {
        /// The type id, when the body got that far.
        type_id: Option<u16>,
        /// What was wrong.
        reason: String,
    },
}

impl DecodeError {
    /// The `Error` response to send back for this failure. The message is this error's text,
    /// which names the message type and version and says what to do.
    pub fn to_error_response(&self) -> ErrorResponse {
        let code = match self {
            Self::UnknownMessage { .. }
            | Self::UnsupportedVersion { .. }
            | Self::UnsupportedExtension { .. } => ErrorCode::Unsupported,
            Self::FrameTooLarge { .. } | Self::LimitExceeded { .. } => ErrorCode::TooLarge,
            Self::Incomplete { .. } | Self::Malformed { .. } => ErrorCode::BadRequest,
        };
        ErrorResponse::new(code, self.to_string())
    }

    /// Whether the stream can carry on after this error (a whole frame was consumed). After
    /// `Incomplete` wait for more bytes; after `FrameTooLarge` close the stream.
    pub fn is_frame_consumed(&self) -> bool {
        !matches!(self, Self::Incomplete { .. } | Self::FrameTooLarge { .. })
    }

    fn malformed(type_id: Option<u16>, reason: impl Into<String>) -> Self {
        Self::Malformed {
            type_id,
            reason: reason.into(),
        }
    }
}

/// Appends to a borrowed `Vec` (postcard's own flavors want to own theirs).
struct Append<'a>(&'a mut Vec<u8>);

impl Flavor for Append<'_> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// The number of bytes [`encode`] writes for `msg`: length prefix, body header and payload.
///
/// Use it to pack as much as fits into one frame (compare with [`MAX_FRAME_LEN`] + 4) before
/// encoding. It does not check limits.
pub fn encoded_len(msg: &Message) -> usize {
    // Serializing into a size counter cannot fail for the messages of this crate.
    LEN_PREFIX + BODY_HEADER + msg.serialize_payload(Size::default()).unwrap_or(0)
}

/// Appends one frame holding `msg` to `out`.
///
/// Fails without writing anything when a field is over a [limit](crate::limits) or the body
/// would be over [`MAX_FRAME_LEN`]. For `PutChunk` and `ChunkData`, the caller writes the raw
/// body after the frame.
pub fn encode(msg: &Message, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let type_id = msg.type_id();
    msg.check_limits()
        .map_err(|limit| EncodeError::LimitExceeded { type_id, limit })?;
    let frame_len = encoded_len(msg);
    let body_len = frame_len - LEN_PREFIX;
    let prefix = u32::try_from(body_len)
        .ok()
        .filter(|&len| len <= MAX_FRAME_LEN)
        .ok_or(EncodeError::FrameTooLarge {
            type_id,
            len: body_len,
            max: MAX_FRAME_LEN,
        })?;

    let start = out.len();
    out.reserve(frame_len);
    out.extend_from_slice(&prefix.to_be_bytes());
    out.extend_from_slice(&type_id.to_be_bytes());
    out.push(msg.version());
    if let Err(e) = msg.serialize_payload(Append(out)) {
        out.truncate(start);
        return Err(EncodeError::Serialize {
            type_id,
            reason: e.to_string(),
        });
    }
    debug_assert_eq!(out.len() - start, frame_len);
    Ok(())
}

/// [`encode`] into a new `Vec`.
pub fn encode_to_vec(msg: &Message) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode(msg, &mut out)?;
    Ok(out)
}

/// Reads the length prefix at the start of `bytes`: `Ok(None)` when fewer than 4 bytes are there,
/// the body length otherwise, rejected at once when over the limit.
fn body_len(bytes: &[u8]) -> Result<Option<usize>, DecodeError> {
    let Some(prefix) = bytes.first_chunk::<LEN_PREFIX>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*prefix);
    if len > MAX_FRAME_LEN {
        return Err(DecodeError::FrameTooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    // MAX_FRAME_LEN fits any usize this crate builds for.
    Ok(Some(len as usize))
}

/// Decodes the first frame of `bytes`, returning the message and the number of bytes it used.
///
/// Short input gives [`DecodeError::Incomplete`] with the number of bytes still needed; an
/// oversized length prefix is rejected as soon as its 4 bytes are there.
pub fn decode_frame(bytes: &[u8]) -> Result<(Message, usize), DecodeError> {
    let Some(len) = body_len(bytes)? else {
        return Err(DecodeError::Incomplete {
            needed: LEN_PREFIX - bytes.len(),
        });
    };
    let total = LEN_PREFIX + len;
    let Some(body) = bytes.get(LEN_PREFIX..total) else {
        return Err(DecodeError::Incomplete {
            needed: total - bytes.len(),
        });
    };
    Ok((decode_body(body)?, total))
}

/// Decodes a frame body (type id, version, payload) without its length prefix.
///
/// The payload must be consumed exactly: trailing bytes are [`DecodeError::Malformed`].
pub fn decode_body(body: &[u8]) -> Result<Message, DecodeError> {
    let Some((&[t0, t1, version], payload)) = body.split_first_chunk::<BODY_HEADER>() else {
        return Err(DecodeError::malformed(
            None,
            format!(
                "body of {} bytes is shorter than the 3-byte message header",
                body.len()
            ),
        ));
    };
    let type_id = u16::from_be_bytes([t0, t1]);
    let Some(known) = message_type(type_id) else {
        return Err(DecodeError::UnknownMessage { type_id, version });
    };
    if version == 0 {
        return Err(DecodeError::malformed(
            Some(type_id),
            "version 0 is reserved",
        ));
    }
    if version > known.version {
        return Err(DecodeError::UnsupportedVersion {
            type_id,
            version,
            max: known.version,
        });
    }
    // Every version this build knows of every type has the same payload layout so far; a type
    // that gains a v2 dispatches on `version` here.
    let (msg, rest) = match Message::decode_payload(type_id, payload) {
        Some(Ok(decoded)) => decoded,
        Some(Err(e)) => return Err(DecodeError::malformed(Some(type_id), e.to_string())),
        None => return Err(DecodeError::UnknownMessage { type_id, version }),
    };
    if !rest.is_empty() {
        return Err(DecodeError::malformed(
            Some(type_id),
            format!("{} trailing bytes after the payload", rest.len()),
        ));
    }
    msg.check_limits()
        .map_err(|limit| DecodeError::LimitExceeded { type_id, limit })?;
    if let Some(ext) = msg
        .ext()
        .iter()
        .find(|e| e.critical && !is_known_extension(type_id, e.tag))
    {
        return Err(DecodeError::UnsupportedExtension {
            type_id,
            tag: ext.tag,
        });
    }
    Ok(msg)
}

/// Streaming frame decoder: push bytes as they arrive, pull messages out.
///
/// It holds at most one partial frame plus whatever one `push` added: drain it with
/// [`next_frame`](Self::next_frame) until `None` before pushing more. A length prefix over
/// [`MAX_FRAME_LEN`] fails the decoder as soon as its 4 bytes are pushed, and everything pushed
/// after is dropped.
///
/// After a `PutChunk` or `ChunkData` header ([`Message::raw_body_len`]) the next bytes on the
/// stream are the raw chunk body, not a frame: take the ones already buffered with
/// [`take_buffered`](Self::take_buffered).
///
/// ```
/// use dooz_protocol::{Ack, FrameDecoder, Message, encode};
///
/// let mut wire = Vec::new();
/// encode(&Message::from(Ack::default()), &mut wire)?;
/// let mut decoder = FrameDecoder::new();
/// for byte in &wire {
///     assert_eq!(decoder.next_frame()?, None);
///     decoder.push(std::slice::from_ref(byte));
/// }
/// assert_eq!(decoder.next_frame()?, Some(Message::from(Ack::default())));
/// decoder.finish()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    failed: Option<DecodeError>,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes received from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        self.buf.extend_from_slice(bytes);
        if let Err(e) = body_len(&self.buf) {
            self.fail(e);
        }
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    ///
    /// An error in a frame's body (unknown type, bad payload, ...) consumes that frame, so the
    /// next call continues after it; an oversized length prefix fails the decoder for good
    /// (every later call returns the same error).
    pub fn next_frame(&mut self) -> Result<Option<Message>, DecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let len = match body_len(&self.buf) {
            Ok(Some(len)) => len,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.fail(e.clone());
                return Err(e);
            }
        };
        let total = LEN_PREFIX + len;
        let Some(body) = self.buf.get(LEN_PREFIX..total) else {
            return Ok(None);
        };
        let result = decode_body(body);
        // Whatever follows may be a raw chunk body rather than a frame: it is looked at only by
        // the next `push` or `next_frame`.
        self.buf.drain(..total);
        result.map(Some)
    }

    /// Call at the end of the stream: `Err(Incomplete)` if it ended inside a frame, the
    /// decoder's failure if it failed, `Ok` otherwise.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        match decode_frame(&self.buf) {
            Err(e @ DecodeError::Incomplete { .. }) => Err(e),
            // A complete frame is still buffered: the caller stopped calling `next_frame`.
            _ => Err(DecodeError::malformed(
                None,
                "undecoded frame left at the end of the stream",
            )),
        }
    }

    /// Bytes buffered but not yet decoded.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Takes the bytes buffered but not yet decoded, leaving the decoder empty: after a
    /// `PutChunk`/`ChunkData` header these are the start of the raw chunk body.
    pub fn take_buffered(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    fn fail(&mut self, e: DecodeError) {
        self.failed = Some(e);
        self.buf = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_code::ErrorCode;
    use crate::ext::Extensions;
    use crate::ids::{Seq, VaultId};
    use crate::messages::Pull;

    /// The example frames of docs/PROTOCOL.md, as written there (spaces between fields).
    const PULL_EXAMPLE: &str = "00000016 000a 01 000102030405060708090a0b0c0d0e0f 2a 64 00";
    const ERROR_EXAMPLE: &str = "00000014 8000 01 03 00 0d 6e6f2073756368207661756c74 00";

    const PROTOCOL_MD: &str = include_str!("../../docs/PROTOCOL.md");

    fn example_pull() -> Message {
        let mut vault = [0u8; 16];
        vault.iter_mut().zip(0u8..).for_each(|(b, i)| *b = i);
        Pull {
            vault: VaultId::from_bytes(vault),
            since: Seq::new(42),
            limit: 100,
            ext: Extensions::new(),
        }
        .into()
    }

    fn example_error() -> Message {
        ErrorResponse::new(ErrorCode::NotFound, "no such vault").into()
    }

    #[test]
    fn example_frames_match_the_spec() {
        for (msg, spaced) in [
            (example_pull(), PULL_EXAMPLE),
            (example_error(), ERROR_EXAMPLE),
        ] {
            let wire = encode_to_vec(&msg).unwrap();
            assert_eq!(
                hex::encode(&wire),
                spaced.replace(' ', ""),
                "{}",
                msg.name()
            );
            assert_eq!(decode_frame(&wire).unwrap(), (msg, wire.len()));
            assert!(
                PROTOCOL_MD.contains(spaced),
                "docs/PROTOCOL.md lacks the example {spaced}"
            );
        }
    }

    #[test]
    fn spec_lists_every_message_type_and_error_code() {
        for t in crate::messages::message_types() {
            let row = format!("| `{:#06x}` | {} | {} |", t.type_id, t.name, t.version);
            assert!(
                PROTOCOL_MD.contains(&row),
                "docs/PROTOCOL.md lacks the row {row}"
            );
        }
        for code in 1..=12u16 {
            let row = format!("\n| {code} | `");
            assert!(
                PROTOCOL_MD.contains(&row),
                "docs/PROTOCOL.md lacks error code {code}"
            );
        }
    }

    #[test]
    fn encode_appends_and_leaves_output_alone_on_error() {
        let mut out = b"previous".to_vec();
        encode(&example_pull(), &mut out).unwrap();
        assert!(out.starts_with(b"previous"));
        assert_eq!(decode_frame(&out[8..]).unwrap().0, example_pull());
    }

    #[test]
    fn finish_reports_a_stream_cut_inside_a_frame() {
        let wire = encode_to_vec(&example_pull()).unwrap();
        let mut d = FrameDecoder::new();
        assert_eq!(d.finish(), Ok(()));
        d.push(&wire[..10]);
        assert_eq!(
            d.finish(),
            Err(DecodeError::Incomplete {
                needed: wire.len() - 10
            })
        );
        d.push(&wire[10..]);
        assert!(matches!(d.finish(), Err(DecodeError::Malformed { .. })));
        assert_eq!(d.next_frame().unwrap(), Some(example_pull()));
        assert_eq!(d.finish(), Ok(()));
    }

    #[test]
    fn error_messages_name_the_type() {
        let e = DecodeError::UnknownMessage {
            type_id: 0x1234,
            version: 2,
        };
        assert_eq!(
            e.to_string(),
            "received message type 0x1234 v2, which this build of dooz does not know: upgrade dooz"
        );
        let e = DecodeError::Malformed {
            type_id: None,
            reason: "x".into(),
        };
        assert_eq!(e.to_string(), "malformed frame: x");
        let e = DecodeError::FrameTooLarge {
            len: u32::MAX,
            max: MAX_FRAME_LEN,
        };
        assert!(e.to_string().contains("4294967295"));
        assert!(!e.is_frame_consumed());
    }
}
