//! Frames over quinn streams: the async driver of `dooz_protocol`'s sans-IO codec.
//!
//! [`FrameReader`] reads frames from a [`quinn::RecvStream`] with a [`FrameDecoder`], never
//! reading past the frame it is decoding (so a raw chunk body that follows a `PutChunk` or
//! `ChunkData` header stays on the stream until [`FrameReader::read_raw_body`] asks for it), and
//! refuses a length prefix over its cap as soon as the prefix arrives. [`write_frame`] and
//! [`write_frame_with_body`] encode and send. The same code serves the server and, copied, the
//! client.

use bytes::{Bytes, BytesMut};
use dooz_protocol::limits::{self, LimitError};
use dooz_protocol::{
    DecodeError, EncodeError, ErrorCode, ErrorResponse, FrameDecoder, LEN_PREFIX, MAX_FRAME_LEN,
    Message, encode,
};
use quinn::{ReadError, RecvStream, SendStream, WriteError};
use thiserror::Error;

/// Raw body bytes hashed at once (a multiple of BLAKE3's 1 KiB chunk).
const HASH_BATCH: usize = 64 * 1024;

/// Reading or writing a frame failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FrameIoError {
    /// The bytes are not a valid frame (or the length prefix is over the reader's cap).
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A raw body length is over [`limits::MAX_CHUNK_LEN`].
    #[error("raw chunk body: {0}")]
    Limit(#[from] LimitError),
    /// The stream ended inside a raw body.
    #[error(
        "the stream ended after {received} of the {expected} bytes of the raw chunk body: \
         send exactly the length given in the header"
    )]
    Truncated {
        /// The length announced in the header.
        expected: usize,
        /// The bytes that arrived.
        received: usize,
    },
    /// Bytes followed where the stream should have ended.
    #[error(
        "{0} unexpected bytes after the {1}: send one request per stream and then finish the \
         stream"
    )]
    TrailingBytes(usize, &'static str),
    /// A message could not be encoded.
    #[error("could not encode the message: {0}")]
    Encode(#[from] EncodeError),
    /// Reading from the stream failed (reset, connection lost, ...).
    #[error("could not read from the stream: {0}")]
    Read(#[from] ReadError),
    /// Writing to the stream failed (stopped, connection lost, ...).
    #[error("could not write to the stream: {0}")]
    Write(#[from] WriteError),
}

impl FrameIoError {
    /// The `Error` response to send back for this failure, when the stream can still carry one
    /// (`None` for read and write failures: the stream or connection is gone).
    pub fn to_error_response(&self) -> Option<ErrorResponse> {
        match self {
            Self::Decode(e) => Some(e.to_error_response()),
            Self::Limit(_) => Some(ErrorResponse::new(ErrorCode::TooLarge, self.to_string())),
            Self::Truncated { .. } | Self::TrailingBytes(..) => {
                Some(ErrorResponse::new(ErrorCode::BadRequest, self.to_string()))
            }
            Self::Encode(_) => Some(ErrorResponse::new(
                ErrorCode::Internal,
                "the server could not encode its answer",
            )),
            Self::Read(_) | Self::Write(_) => None,
        }
    }

    /// Whether the failure came from the transport (stream reset or stopped, connection lost)
    /// rather than from the bytes.
    pub fn is_transport(&self) -> bool {
        matches!(self, Self::Read(_) | Self::Write(_))
    }
}

/// A raw chunk body read from a stream, with the BLAKE3 of its bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct RawBody {
    /// The bytes.
    pub bytes: Bytes,
    /// BLAKE3 of `bytes`, computed while they arrived.
    pub blake3: [u8; 32],
}

impl std::fmt::Debug for RawBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawBody")
            .field("len", &self.bytes.len())
            .field("blake3", &blake3::Hash::from(self.blake3).to_hex().as_str())
            .finish()
    }
}

/// Reads frames (and raw chunk bodies) from the receive side of a stream.
#[derive(Debug)]
pub struct FrameReader {
    recv: RecvStream,
    decoder: FrameDecoder,
    max_frame_len: u32,
    last_frame_len: usize,
}

impl FrameReader {
    /// A reader accepting frames up to [`MAX_FRAME_LEN`].
    pub fn new(recv: RecvStream) -> Self {
        Self {
            recv,
            decoder: FrameDecoder::new(),
            max_frame_len: MAX_FRAME_LEN,
            last_frame_len: 0,
        }
    }

    /// Caps the frame bodies this reader accepts below [`MAX_FRAME_LEN`] (a larger value is
    /// clamped to it). A prefix over the cap is [`DecodeError::FrameTooLarge`], reported as
    /// soon as its 4 bytes are read.
    pub fn with_max_frame_len(mut self, max: u32) -> Self {
        self.max_frame_len = max.min(MAX_FRAME_LEN);
        self
    }

    /// How many more bytes the frame being decoded needs; fails on a prefix over the cap.
    fn needed(&self) -> Result<usize, DecodeError> {
        let buffered = self.decoder.buffered();
        let Some(prefix) = buffered.first_chunk::<LEN_PREFIX>() else {
            return Ok(LEN_PREFIX - buffered.len());
        };
        let len = u32::from_be_bytes(*prefix);
        if len > self.max_frame_len {
            return Err(DecodeError::FrameTooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        // `len` is at most MAX_FRAME_LEN, which fits usize.
        Ok((LEN_PREFIX + len as usize).saturating_sub(buffered.len()))
    }

    /// Reads the next frame: `Ok(None)` when the stream finished cleanly between frames.
    ///
    /// A decode error in a frame's body ([`DecodeError::is_frame_consumed`]) leaves the reader
    /// after that frame; after any other error, stop using the stream.
    pub async fn read_frame(&mut self) -> Result<Option<Message>, FrameIoError> {
        loop {
            let needed = self.needed()?;
            let frame_len = self
                .decoder
                .buffered()
                .first_chunk::<LEN_PREFIX>()
                .map_or(0, |p| LEN_PREFIX + u32::from_be_bytes(*p) as usize);
            if let Some(msg) = self.decoder.next_frame()? {
                self.last_frame_len = frame_len;
                return Ok(Some(msg));
            }
            // Read no further than this frame: what follows may be a raw body.
            match self.recv.read_chunk(needed.max(1), true).await? {
                Some(chunk) => self.decoder.push(&chunk.bytes),
                None if self.decoder.buffered().is_empty() => return Ok(None),
                None => {
                    self.decoder.finish()?;
                    // `finish` fails whenever bytes are buffered; this is not reached.
                    return Err(DecodeError::Incomplete { needed }.into());
                }
            }
        }
    }

    /// Reads exactly `len` raw bytes (the body after a `PutChunk` or `ChunkData` header),
    /// hashing them as they arrive. `len` is checked against [`limits::MAX_CHUNK_LEN`] first.
    ///
    /// Whether the stream ends after the body is not checked: call
    /// [`expect_end`](Self::expect_end) for that.
    pub async fn read_raw_body(&mut self, len: u32) -> Result<RawBody, FrameIoError> {
        let expected = limits::check_chunk_len(len)?;
        let head = self.decoder.take_buffered();
        if head.len() > expected {
            return Err(FrameIoError::TrailingBytes(
                head.len() - expected,
                "raw chunk body",
            ));
        }
        // Bytes are hashed in batches as they arrive: BLAKE3 hashes many 1 KiB chunks at once
        // with SIMD, which single packets (~1.4 KB) would not let it do.
        let mut hasher = blake3::Hasher::new();
        let mut hashed = 0;
        let mut buf = BytesMut::with_capacity(expected);
        buf.extend_from_slice(&head);
        while buf.len() < expected {
            match self.recv.read_chunk(expected - buf.len(), true).await? {
                Some(chunk) => {
                    buf.extend_from_slice(&chunk.bytes);
                    if buf.len() - hashed >= HASH_BATCH {
                        hasher.update(buf.get(hashed..).unwrap_or_default());
                        hashed = buf.len();
                    }
                }
                None => {
                    return Err(FrameIoError::Truncated {
                        expected,
                        received: buf.len(),
                    });
                }
            }
        }
        hasher.update(buf.get(hashed..).unwrap_or_default());
        Ok(RawBody {
            bytes: buf.freeze(),
            blake3: *hasher.finalize().as_bytes(),
        })
    }

    /// Waits for the peer to finish the stream; bytes before the end are
    /// [`FrameIoError::TrailingBytes`] (`after` names what they followed).
    pub async fn expect_end(&mut self, after: &'static str) -> Result<(), FrameIoError> {
        let buffered = self.decoder.take_buffered().len();
        if buffered > 0 {
            return Err(FrameIoError::TrailingBytes(buffered, after));
        }
        match self.recv.read_chunk(64 * 1024, true).await? {
            None => Ok(()),
            Some(chunk) => Err(FrameIoError::TrailingBytes(chunk.bytes.len(), after)),
        }
    }

    /// Bytes of the last frame [`read_frame`](Self::read_frame) returned, length prefix
    /// included (what metering counts for a request).
    pub fn last_frame_len(&self) -> usize {
        self.last_frame_len
    }

    /// The stream, to stop it or read it directly.
    pub fn recv_mut(&mut self) -> &mut RecvStream {
        &mut self.recv
    }

    /// The stream back (bytes buffered by the decoder are dropped).
    pub fn into_inner(self) -> RecvStream {
        self.recv
    }
}

/// Encodes `msg` and writes it. The stream is not finished.
pub async fn write_frame(send: &mut SendStream, msg: &Message) -> Result<(), FrameIoError> {
    let mut buf = Vec::new();
    encode(msg, &mut buf)?;
    send.write_all(&buf).await?;
    Ok(())
}

/// Writes a `PutChunk`/`ChunkData` header followed by its raw body. The stream is not finished.
///
/// The caller makes sure the header's `len` is `body.len()`.
pub async fn write_frame_with_body(
    send: &mut SendStream,
    msg: &Message,
    body: Bytes,
) -> Result<(), FrameIoError> {
    let mut head = Vec::new();
    encode(msg, &mut head)?;
    send.write_all_chunks(&mut [Bytes::from(head), body])
        .await?;
    Ok(())
}
