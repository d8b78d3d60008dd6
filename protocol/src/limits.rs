//! Hard limits of protocol v1.
//!
//! Both sides enforce them: [`encode`](crate::encode) refuses to write a message over a limit, and
//! the decoders refuse to accept one, so a peer never buffers or allocates more than these figures
//! allow. The limits are chosen so that the largest legal single item always fits in one response
//! frame: one maximal commit entry (record plus chunk list) fits in a `Changes` page, and a maximal
//! `Envelopes` answer fits in one frame.
//!
//! Raising a limit is a protocol change: an old peer rejects what it considers too large with
//! [`ErrorCode::TooLarge`](crate::ErrorCode::TooLarge).

use thiserror::Error;

/// Hard limit on a frame body (type id + version + payload), in bytes: 8 MiB. A length prefix
/// above it is rejected as soon as its 4 bytes arrive, before any of the body is buffered.
pub const MAX_FRAME_LEN: u32 = 8 * 1024 * 1024;

/// Largest raw chunk body (`PutChunk`/`ChunkData`) that may follow a header: 16 MiB of sealed
/// bytes. Chunk bodies are not framed, so this is independent of [`MAX_FRAME_LEN`].
pub const MAX_CHUNK_LEN: u32 = 16 * 1024 * 1024;

/// Most chunk ids in one `Have` request (and so in one `Missing` answer).
pub const MAX_HAVE_IDS: usize = 4096;

/// Most entries in one `Commit` (and so results in one `Committed`).
pub const MAX_COMMIT_ENTRIES: usize = 1024;

/// Largest sealed record of one entry version: 4 MiB. Records that would be larger keep their
/// chunk list in chunks of their own.
pub const MAX_SEALED_RECORD_LEN: usize = 4 * 1024 * 1024;

/// Most chunk ids one entry version may reference directly: 65 536 (2 MiB of ids).
pub const MAX_CHUNKS_PER_ENTRY: usize = 65_536;

/// Most changes in one `Changes` page. A `Pull` asking for more (or for 0, "server default") is
/// clamped by the server; the server also ends a page early when the next change would push the
/// frame over [`MAX_FRAME_LEN`].
pub const MAX_PULL_PAGE: u32 = 1024;

/// Most versions in one `HistoryPage`; larger `History` limits are clamped like `Pull`'s.
pub const MAX_HISTORY_PAGE: u32 = 256;

/// Largest sealed envelope (a vault key wrapped to a device or a recovery secret): 1 KiB.
pub const MAX_ENVELOPE_LEN: usize = 1024;

/// Most envelopes in one `Envelopes` answer.
pub const MAX_ENVELOPES: usize = 4096;

/// Most vaults in a `Vaults` answer or a `Subscribe` request.
pub const MAX_VAULTS: usize = 4096;

/// Largest pairing slot payload (`PairingPost`, `PairingReply`, `PairingPayload`): 1 MiB.
pub const MAX_PAIRING_PAYLOAD_LEN: usize = 1024 * 1024;

/// Longest life of a pairing slot, in seconds (15 minutes). Servers clamp
/// `PairingOpen::expires_in_secs` to it.
pub const MAX_PAIRING_SLOT_SECS: u32 = 15 * 60;

/// Most extensions on one message.
pub const MAX_EXTENSIONS: usize = 32;

/// Longest short text field (client and server names and versions, tenant and account ids), in
/// bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 256;

/// Longest error message text, in bytes of UTF-8.
pub const MAX_ERROR_MESSAGE_LEN: usize = 4096;

/// A value was over one of the protocol [limits](self).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{what} is {got}, over the protocol limit of {max}")]
pub struct LimitError {
    /// What was counted, e.g. "chunk ids in Have".
    pub what: &'static str,
    /// The limit.
    pub max: u64,
    /// The value seen (for counts cut short while decoding, at least this many).
    pub got: u64,
}

/// Checks the `len` of a `PutChunk` or `ChunkData` header before reading the raw body that
/// follows it, and returns it as a `usize` to read exactly that many bytes.
///
/// Decoded headers have already passed this check; call it on a header you built yourself or
/// before trusting a length from anywhere else.
///
/// ```
/// use dooz_protocol::limits::{MAX_CHUNK_LEN, check_chunk_len};
/// assert_eq!(check_chunk_len(1024), Ok(1024));
/// assert!(check_chunk_len(MAX_CHUNK_LEN + 1).is_err());
/// ```
pub fn check_chunk_len(len: u32) -> Result<usize, LimitError> {
    check(
        "raw chunk body length",
        u64::from(len),
        u64::from(MAX_CHUNK_LEN),
    )?;
    usize::try_from(len).map_err(|_| LimitError {
        what: "raw chunk body length (for this platform's usize)",
        max: usize::MAX as u64,
        got: u64::from(len),
    })
}

/// `Err` when `got > max`.
pub(crate) fn check(what: &'static str, got: u64, max: u64) -> Result<(), LimitError> {
    if got > max {
        Err(LimitError { what, max, got })
    } else {
        Ok(())
    }
}

/// `Err` when a collection or byte string is longer than `max`.
pub(crate) fn check_len(what: &'static str, got: usize, max: usize) -> Result<(), LimitError> {
    check(what, got as u64, max as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_len_limit() {
        assert_eq!(check_chunk_len(0), Ok(0));
        assert_eq!(check_chunk_len(MAX_CHUNK_LEN), Ok(MAX_CHUNK_LEN as usize));
        let err = check_chunk_len(u32::MAX).unwrap_err();
        assert_eq!(err.got, u64::from(u32::MAX));
        assert_eq!(err.max, u64::from(MAX_CHUNK_LEN));
        assert!(
            err.to_string()
                .contains("over the protocol limit of 16777216"),
            "{err}"
        );
    }

    #[test]
    fn largest_single_items_fit_a_frame() {
        // One maximal commit entry (record + chunk ids + fixed fields) fits one Changes page.
        let change = MAX_SEALED_RECORD_LEN + MAX_CHUNKS_PER_ENTRY * 32 + 256;
        assert!(change < MAX_FRAME_LEN as usize);
        // A maximal Envelopes answer fits one frame.
        let envelopes = MAX_ENVELOPES * (MAX_ENVELOPE_LEN + 2 + 5 + 32 + 32) + 16;
        assert!(envelopes < MAX_FRAME_LEN as usize);
        // A maximal Have fits one frame.
        assert!(MAX_HAVE_IDS * 32 + 64 < MAX_FRAME_LEN as usize);
    }
}
