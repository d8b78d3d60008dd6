//! Frames over quinn streams, for the client: the async driver of `dooz_protocol`'s sans-IO
//! codec (modelled on the server's `frame_io`). [`FrameReader`] never reads past the frame it
//! is decoding, so the raw chunk body after a `ChunkData` header stays on the stream until
//! [`FrameReader::read_raw_body`] asks for it.

use bytes::{Bytes, BytesMut};
use dooz_protocol::limits::{self, LimitError};
use dooz_protocol::{
    DecodeError, EncodeError, FrameDecoder, LEN_PREFIX, MAX_FRAME_LEN, Message, encode,
};
use quinn::{ReadError, RecvStream, SendStream, WriteError};

/// Reading or writing a frame failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameIoError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("raw chunk body: {0}")]
    Limit(#[from] LimitError),
    #[error("the stream ended after {received} of the {expected} bytes of the raw chunk body")]
    Truncated { expected: usize, received: usize },
    #[error("{0} unexpected bytes after the {1}")]
    TrailingBytes(usize, &'static str),
    #[error("could not encode the message: {0}")]
    Encode(#[from] EncodeError),
    #[error("could not read from the stream: {0}")]
    Read(#[from] ReadError),
    #[error("could not write to the stream: {0}")]
    Write(#[from] WriteError),
}

/// A raw chunk body with the BLAKE3 of its bytes, computed while they arrived.
pub(crate) struct RawBody {
    pub(crate) bytes: Bytes,
    pub(crate) blake3: [u8; 32],
}

/// Reads frames (and raw chunk bodies) from the receive side of a stream.
pub(crate) struct FrameReader {
    recv: RecvStream,
    decoder: FrameDecoder,
    last_frame_len: usize,
}

impl FrameReader {
    pub(crate) fn new(recv: RecvStream) -> Self {
        Self {
            recv,
            decoder: FrameDecoder::new(),
            last_frame_len: 0,
        }
    }

    /// Bytes of the last frame `read_frame` returned, length prefix included.
    pub(crate) fn last_frame_len(&self) -> usize {
        self.last_frame_len
    }

    fn needed(&self) -> Result<usize, DecodeError> {
        let buffered = self.decoder.buffered();
        let Some(prefix) = buffered.first_chunk::<LEN_PREFIX>() else {
            return Ok(LEN_PREFIX - buffered.len());
        };
        let len = u32::from_be_bytes(*prefix);
        if len > MAX_FRAME_LEN {
            return Err(DecodeError::FrameTooLarge {
                len,
                max: MAX_FRAME_LEN,
            });
        }
        Ok((LEN_PREFIX + len as usize).saturating_sub(buffered.len()))
    }

    /// The next frame; `Ok(None)` when the stream finished cleanly between frames.
    pub(crate) async fn read_frame(&mut self) -> Result<Option<Message>, FrameIoError> {
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
            match self.recv.read_chunk(needed.max(1), true).await? {
                Some(chunk) => self.decoder.push(&chunk.bytes),
                None if self.decoder.buffered().is_empty() => return Ok(None),
                None => {
                    self.decoder.finish()?;
                    return Err(DecodeError::Incomplete { needed }.into());
                }
            }
        }
    }

    /// Reads exactly `len` raw bytes, hashing them as they arrive.
    pub(crate) async fn read_raw_body(&mut self, len: u32) -> Result<RawBody, FrameIoError> {
        let expected = limits::check_chunk_len(len)?;
        let head = self.decoder.take_buffered();
        if head.len() > expected {
            return Err(FrameIoError::TrailingBytes(
                head.len() - expected,
                "raw chunk body",
            ));
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update(&head);
        let mut buf = BytesMut::with_capacity(expected);
        buf.extend_from_slice(&head);
        while buf.len() < expected {
            match self.recv.read_chunk(expected - buf.len(), true).await? {
                Some(chunk) => {
                    hasher.update(&chunk.bytes);
                    buf.extend_from_slice(&chunk.bytes);
                }
                None => {
                    return Err(FrameIoError::Truncated {
                        expected,
                        received: buf.len(),
                    });
                }
            }
        }
        Ok(RawBody {
            bytes: buf.freeze(),
            blake3: *hasher.finalize().as_bytes(),
        })
    }

    /// Waits for the peer to finish the stream; bytes before the end are an error.
    pub(crate) async fn expect_end(&mut self, after: &'static str) -> Result<(), FrameIoError> {
        let buffered = self.decoder.take_buffered().len();
        if buffered > 0 {
            return Err(FrameIoError::TrailingBytes(buffered, after));
        }
        match self.recv.read_chunk(64 * 1024, true).await? {
            None => Ok(()),
            Some(chunk) => Err(FrameIoError::TrailingBytes(chunk.bytes.len(), after)),
        }
    }
}

/// Encodes `msg` and writes it, followed by `body` if any. The stream is not finished.
pub(crate) async fn write_frame(
    send: &mut SendStream,
    msg: &Message,
    body: Option<Bytes>,
) -> Result<(), FrameIoError> {
    let mut head = Vec::new();
    encode(msg, &mut head)?;
    match body {
        None => send.write_all(&head).await?,
        Some(body) => {
            send.write_all_chunks(&mut [Bytes::from(head), body])
                .await?
        }
    }
    Ok(())
}
