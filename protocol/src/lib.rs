//! `dooz-protocol`: the wire protocol of the Dooz Sync data plane, sans-IO.
//!
//! Devices talk to the sync server over QUIC (ALPN [`ALPN`] = `dooz/1`, mutual TLS), one request
//! per bidirectional stream. This crate defines what goes on those streams: the messages, the
//! framing codec, the limits and the typed error codes. The server and the client drive it with
//! their own IO; here there is only bytes in, messages out. The full specification, with the
//! flows step by step, is `docs/PROTOCOL.md`.
//!
//! # Goals
//!
//! - Every message of the protocol as a plain serde type, encoded with postcard inside a
//!   length-prefixed frame: `len:u32 BE | type_id:u16 BE | version:u8 | payload`.
//! - Bounded memory on hostile input: a hard frame limit checked on the 4-byte prefix, before
//!   any of the body is buffered, and per-field [`limits`] checked on both encode and decode.
//! - Room to grow: every message type is versioned and every message ends with
//!   [`Extensions`]. An old peer answers what it cannot read with a clear
//!   [`ErrorCode::Unsupported`] ("upgrade dooz"), never a panic or a silent misread.
//! - Typed errors: an [`ErrorCode`] with stable numbers, `is_retryable()`, and a fallback for
//!   codes from newer peers.
//! - Enrolment codes (`dooz1-...`) and the enrolment request on `Hello` ([`EnrolmentCode`],
//!   [`EnrolRequest`], ALPN [`ENROL_ALPN`]), so that the server and the client share one reader
//!   and writer of each.
//! - Deterministic and fuzzable: no IO, no clocks, no randomness.
//!
//! # Non-goals
//!
//! - Transport: QUIC, TLS, certificates and stream handling live in `dooz-server` and
//!   `dooz-client`.
//! - Cryptography: ids here are plain byte newtypes; sealed records, chunks and envelopes are
//!   opaque bytes. Verifying a chunk body's BLAKE3 is the driver's job (this crate does not
//!   depend on `dooz-crypto`; it uses `blake3` only for the check bytes of enrolment codes).
//! - Request/response state machines: the codec does not check that a response answers the
//!   request on its stream; the drivers do.
//! - Raw chunk bodies: they follow a `PutChunk`/`ChunkData` header unframed, and the driver
//!   streams them (see [`Message::raw_body_len`] and [`limits::check_chunk_len`]).
//!
//! # Example
//!
//! ```
//! use dooz_protocol::{
//!     Extensions, FrameDecoder, Message, Pull, Request, Seq, VaultId, decode_frame, encode,
//!     encoded_len,
//! };
//!
//! let pull = Message::from(Pull {
//!     vault: VaultId::from_bytes([7; 16]),
//!     since: Seq::new(41),
//!     limit: 100,
//!     ext: Extensions::new(),
//! });
//! let mut wire = Vec::new();
//! encode(&pull, &mut wire)?;
//! assert_eq!(wire.len(), encoded_len(&pull));
//!
//! // One shot ...
//! let (msg, used) = decode_frame(&wire)?;
//! assert_eq!((&msg, used), (&pull, wire.len()));
//!
//! // ... or streaming, as bytes arrive.
//! let mut decoder = FrameDecoder::new();
//! let (head, tail) = wire.split_at(5);
//! decoder.push(head);
//! assert_eq!(decoder.next_frame()?, None);
//! decoder.push(tail);
//! match decoder.next_frame()? {
//!     Some(Message::Request(Request::Pull(p))) => assert_eq!(p.since, Seq::new(41)),
//!     other => panic!("unexpected {other:?}"),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod base32;
mod codec;
mod enrolment;
mod error_code;
mod ext;
mod ids;
pub mod limits;
mod messages;
mod pairing;
mod wire_bytes;

/// ALPN protocol id of the data plane. A peer that speaks another major protocol uses another id,
/// so the TLS handshake fails clearly instead of frames being misread.
pub const ALPN: &[u8] = b"dooz/1";

/// Protocol revision within `dooz/1`, exchanged in `Hello`/`HelloOk`; both sides use the lower.
pub const PROTOCOL_VERSION: u16 = 1;

pub use crate::codec::{
    BODY_HEADER, DecodeError, EncodeError, FrameDecoder, LEN_PREFIX, decode_body, decode_frame,
    encode, encode_to_vec, encoded_len,
};
pub use crate::enrolment::{
    ENROL_ALPN, ENROL_EXTENSION_TAG, ENROLMENT_CODE_PREFIX, EnrolRequest, EnrolmentCode,
    EnrolmentCodeError,
};
pub use crate::error_code::{ErrorCode, ErrorResponse, Resource, UnknownCode};
pub use crate::ext::{Extension, Extensions};
pub use crate::ids::{ChunkId, DeviceId, EntryKey, Epoch, Seq, SlotId, VaultId, VersionId};
pub use crate::limits::{LimitError, MAX_FRAME_LEN};
pub use crate::messages::{
    Ack, Change, Changed, Changes, ChunkData, ChunkStored, Commit, CommitEntry, CommitResult,
    Committed, CreateVault, EnvelopeInfo, Envelopes, GetChunk, GetEnvelopes, Have, Hello, HelloOk,
    History, HistoryPage, ListVaults, Message, MessageType, Missing, PairingAwaitReply,
    PairingOpen, PairingPayload, PairingPost, PairingReply, PairingTake, Pull, PutChunk,
    PutEnvelope, Request, Response, Subscribe, Subscribed, VaultCreated, VaultInfo, Vaults,
    message_type, message_types,
};
pub use crate::pairing::{
    NEW_EPOCH_TAG, RECOVERY_ENVELOPES_TAG, RECOVERY_RECIPIENT, REVOKED_DEVICES_TAG, ROSTER_EPOCH,
    ROTATION_DUE_TAG, SLOT_REFUSAL_TAG, SlotRefusal, revoked_devices, revoked_devices_extension,
    rotation_due, rotation_due_extension,
};
