//! Typed error codes: what a server answers instead of the expected response.
//!
//! On the wire an [`ErrorCode`] is `{code: u16 varint, detail: bytes}`. `code` is the stable
//! number listed on [`ErrorCode`]; `detail` holds the variant's fields (postcard) and may only
//! grow by fields appended at its end, which older peers skip. A code this build does not know decodes to
//! [`ErrorCode::Unknown`], never to a decode failure, and the accompanying message text is still
//! shown to the user.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::ext::Extensions;
use crate::ids::VersionId;
use crate::limits::MAX_ERROR_MESSAGE_LEN;

/// A resource that a quota limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "u16", into = "u16")]
#[non_exhaustive]
pub enum Resource {
    /// Sealed bytes stored (chunks, records, envelopes).
    StorageBytes,
    /// Bytes sent from the server to devices.
    EgressBytes,
    /// Bytes received by the server from devices.
    IngressBytes,
    /// Registered devices.
    Devices,
    /// Vaults.
    Vaults,
    /// Requests.
    Requests,
    /// A resource this build does not know (sent by a newer peer). Encodes as 0.
    Unknown,
}

impl Resource {
    /// The stable wire number of this resource (0 for `Unknown`).
    pub const fn code(self) -> u16 {
        match self {
            Self::Unknown => 0,
            Self::StorageBytes => 1,
            Self::EgressBytes => 2,
            Self::IngressBytes => 3,
            Self::Devices => 4,
            Self::Vaults => 5,
            Self::Requests => 6,
        }
    }
}

impl From<u16> for Resource {
    fn from(code: u16) -> Self {
        match code {
            1 => Self::StorageBytes,
            2 => Self::EgressBytes,
            3 => Self::IngressBytes,
            4 => Self::Devices,
            5 => Self::Vaults,
            6 => Self::Requests,
            _ => Self::Unknown,
        }
    }
}

impl From<Resource> for u16 {
    fn from(r: Resource) -> Self {
        r.code()
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::StorageBytes => "storage bytes",
            Self::EgressBytes => "egress bytes",
            Self::IngressBytes => "ingress bytes",
            Self::Devices => "devices",
            Self::Vaults => "vaults",
            Self::Requests => "requests",
            Self::Unknown => "an unknown resource",
        })
    }
}

/// The number of an error code this build does not know. Only the decoder makes these, so an
/// `ErrorCode::Unknown` never carries a code that has a variant of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UnknownCode(u16);

impl UnknownCode {
    /// The numeric code the peer sent.
    pub const fn get(self) -> u16 {
        self.0
    }
}

/// Why a request failed, with the stable numbers it travels as (also in `docs/PROTOCOL.md`):
///
/// | code | variant | detail | retryable |
/// |---:|---|---|---|
/// | 1 | `Unauthenticated` | | no |
/// | 2 | `Revoked` | | no |
/// | 3 | `NotFound` | | no |
/// | 4 | `Conflict` | `head: Option<VersionId>` | no (re-read, merge, retry) |
/// | 5 | `QuotaExceeded` | `resource: u16, limit: u64, used: u64` | no |
/// | 6 | `SubscriptionInactive` | | no |
/// | 7 | `RateLimited` | `retry_after_ms: u64` | yes, after the delay |
/// | 8 | `TooLarge` | | no |
/// | 9 | `BadRequest` | | no |
/// | 10 | `Unsupported` | | no |
/// | 11 | `Internal` | | yes |
/// | 12 | `AlreadyExists` | | no |
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "ErrorCodeWire", into = "ErrorCodeWire")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The device is not known to the server (or sent no client certificate).
    Unauthenticated,
    /// The device was revoked; it must not retry.
    Revoked,
    /// The vault, chunk, entry or pairing slot does not exist (or is not visible to this device;
    /// expired and used pairing slots are also "not found").
    NotFound,
    /// Compare-and-swap on an entry's parent failed: `head` is the entry's current version.
    Conflict {
        /// The entry's current head, `None` if it has none.
        head: Option<VersionId>,
    },
    /// A quota would be exceeded by this request.
    QuotaExceeded {
        /// What ran out.
        resource: Resource,
        /// The quota.
        limit: u64,
        /// The amount already used.
        used: u64,
    },
    /// The tenant's subscription does not allow access right now.
    SubscriptionInactive,
    /// Too many requests: retry after the given delay.
    RateLimited {
        /// How long to wait before retrying, in milliseconds.
        retry_after_ms: u64,
    },
    /// A frame, chunk or field was over a protocol or server limit.
    TooLarge,
    /// The request was malformed or inconsistent (including a chunk whose BLAKE3 did not match).
    BadRequest,
    /// The peer does not support this message type, version or critical extension.
    Unsupported,
    /// The server failed; retrying may succeed.
    Internal,
    /// The thing to create exists already (for example a vault id owned by someone else).
    AlreadyExists,
    /// A code this build does not know, sent by a newer peer. Treat it as a failure that is not
    /// retryable and show the message.
    Unknown(UnknownCode),
}

impl ErrorCode {
    /// The stable wire number of this code.
    pub const fn code(&self) -> u16 {
        match self {
            Self::Unauthenticated => 1,
            Self::Revoked => 2,
            Self::NotFound => 3,
            Self::Conflict { .. } => 4,
            Self::QuotaExceeded { .. } => 5,
            Self::SubscriptionInactive => 6,
            Self::RateLimited { .. } => 7,
            Self::TooLarge => 8,
            Self::BadRequest => 9,
            Self::Unsupported => 10,
            Self::Internal => 11,
            Self::AlreadyExists => 12,
            Self::Unknown(c) => c.0,
        }
    }

    /// Whether the same request may succeed if sent again later (after
    /// [`retry_after`](Self::retry_after) when that is given).
    pub const fn is_retryable(&self) -> bool {
        matches!(self, Self::RateLimited { .. } | Self::Internal)
    }

    /// How long to wait before retrying, when the server said.
    pub const fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after_ms } => Some(Duration::from_millis(*retry_after_ms)),
            _ => None,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unauthenticated => f.write_str("unauthenticated"),
            Self::Revoked => f.write_str("device revoked"),
            Self::NotFound => f.write_str("not found"),
            Self::Conflict { head: Some(head) } => {
                write!(f, "conflict: the entry's head is {head}")
            }
            Self::Conflict { head: None } => f.write_str("conflict: the entry has no head"),
            Self::QuotaExceeded {
                resource,
                limit,
                used,
            } => {
                write!(f, "quota exceeded: {used} of {limit} {resource} used")
            }
            Self::SubscriptionInactive => f.write_str("subscription inactive"),
            Self::RateLimited { retry_after_ms } => {
                write!(f, "rate limited: retry after {retry_after_ms} ms")
            }
            Self::TooLarge => f.write_str("too large"),
            Self::BadRequest => f.write_str("bad request"),
            Self::Unsupported => f.write_str("unsupported"),
            Self::Internal => f.write_str("internal server error"),
            Self::AlreadyExists => f.write_str("already exists"),
            Self::Unknown(c) => write!(f, "error code {} (unknown to this build)", c.0),
        }
    }
}

/// How an [`ErrorCode`] travels: its number and its fields as an opaque, append-only detail.
#[derive(Serialize, Deserialize)]
struct ErrorCodeWire {
    code: u16,
    #[serde(with = "crate::wire_bytes")]
    detail: Vec<u8>,
}

/// A known code whose detail did not decode.
#[derive(Debug)]
struct BadDetail(u16);

impl fmt::Display for BadDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error code {} has a malformed detail", self.0)
    }
}

/// Decodes the start of `detail`, ignoring fields a newer peer appended.
fn detail<T: for<'de> Deserialize<'de>>(code: u16, detail: &[u8]) -> Result<T, BadDetail> {
    postcard::take_from_bytes(detail)
        .map(|(v, _rest)| v)
        .map_err(|_| BadDetail(code))
}

impl TryFrom<ErrorCodeWire> for ErrorCode {
    type Error = BadDetail;

    fn try_from(w: ErrorCodeWire) -> Result<Self, BadDetail> {
        Ok(match w.code {
            1 => Self::Unauthenticated,
            2 => Self::Revoked,
            3 => Self::NotFound,
            4 => Self::Conflict {
                head: detail(4, &w.detail)?,
            },
            5 => {
                let (resource, limit, used) = detail(5, &w.detail)?;
                Self::QuotaExceeded {
                    resource,
                    limit,
                    used,
                }
            }
            6 => Self::SubscriptionInactive,
            7 => Self::RateLimited {
                retry_after_ms: detail(7, &w.detail)?,
            },
            8 => Self::TooLarge,
            9 => Self::BadRequest,
            10 => Self::Unsupported,
            11 => Self::Internal,
            12 => Self::AlreadyExists,
            other => Self::Unknown(UnknownCode(other)),
        })
    }
}

impl From<ErrorCode> for ErrorCodeWire {
    fn from(c: ErrorCode) -> Self {
        // Serializing these small tuples into a Vec cannot fail.
        let detail = match &c {
            ErrorCode::Conflict { head } => postcard::to_allocvec(head),
            ErrorCode::QuotaExceeded {
                resource,
                limit,
                used,
            } => postcard::to_allocvec(&(resource, limit, used)),
            ErrorCode::RateLimited { retry_after_ms } => postcard::to_allocvec(retry_after_ms),
            _ => Ok(Vec::new()),
        }
        .unwrap_or_default();
        Self {
            code: c.code(),
            detail,
        }
    }
}

/// The `Error` response: a typed code plus a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Error)]
#[error("{code}: {message}")]
pub struct ErrorResponse {
    /// What went wrong, for programs.
    pub code: ErrorCode,
    /// What went wrong and what to do, for people; shown verbatim. At most
    /// [`MAX_ERROR_MESSAGE_LEN`] bytes.
    pub message: String,
    /// Extensions.
    pub ext: Extensions,
}

impl ErrorResponse {
    /// An error response; a message over [`MAX_ERROR_MESSAGE_LEN`] bytes is cut (at a character
    /// boundary) so that the response always encodes.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_ERROR_MESSAGE_LEN {
            let mut cut = MAX_ERROR_MESSAGE_LEN;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        Self {
            code,
            message,
            ext: Extensions::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(code: &ErrorCode) -> ErrorCode {
        postcard::from_bytes(&postcard::to_allocvec(code).unwrap()).unwrap()
    }

    #[test]
    fn codes_are_stable() {
        let head = VersionId::from_bytes([1; 16]);
        let all = [
            (ErrorCode::Unauthenticated, 1),
            (ErrorCode::Revoked, 2),
            (ErrorCode::NotFound, 3),
            (ErrorCode::Conflict { head: Some(head) }, 4),
            (
                ErrorCode::QuotaExceeded {
                    resource: Resource::StorageBytes,
                    limit: 10,
                    used: 9,
                },
                5,
            ),
            (ErrorCode::SubscriptionInactive, 6),
            (
                ErrorCode::RateLimited {
                    retry_after_ms: 1500,
                },
                7,
            ),
            (ErrorCode::TooLarge, 8),
            (ErrorCode::BadRequest, 9),
            (ErrorCode::Unsupported, 10),
            (ErrorCode::Internal, 11),
            (ErrorCode::AlreadyExists, 12),
        ];
        for (code, n) in all {
            assert_eq!(code.code(), n);
            assert_eq!(round_trip(&code), code);
            assert_eq!(
                postcard::to_allocvec(&code).unwrap()[0],
                u8::try_from(n).unwrap()
            );
        }
    }

    #[test]
    fn detail_layout() {
        let c = ErrorCode::QuotaExceeded {
            resource: Resource::Devices,
            limit: 5,
            used: 300,
        };
        // code 5, detail of 4 bytes: resource 4, limit 5, used 300 (varint ac 02)
        assert_eq!(postcard::to_allocvec(&c).unwrap(), [5, 4, 4, 5, 0xac, 0x02]);
        let c = ErrorCode::Conflict { head: None };
        assert_eq!(postcard::to_allocvec(&c).unwrap(), [4, 1, 0]);
    }

    #[test]
    fn unknown_codes_and_resources_fall_back() {
        // A newer peer's code 200 with some detail.
        let c: ErrorCode = postcard::from_bytes(&[200, 1, 3, 1, 2, 3]).unwrap();
        assert_eq!(c, ErrorCode::Unknown(UnknownCode(200)));
        assert_eq!(c.code(), 200);
        assert!(!c.is_retryable());
        assert!(c.to_string().contains("200"));
        // A newer resource number.
        let c: ErrorCode = postcard::from_bytes(&[5, 3, 77, 1, 2]).unwrap();
        assert_eq!(
            c,
            ErrorCode::QuotaExceeded {
                resource: Resource::Unknown,
                limit: 1,
                used: 2
            }
        );
        assert_eq!(round_trip(&c), c);
    }

    #[test]
    fn appended_detail_fields_are_skipped() {
        // RateLimited with an extra (future) field after retry_after_ms.
        let c: ErrorCode = postcard::from_bytes(&[7, 3, 100, 0xff, 0x01]).unwrap();
        assert_eq!(
            c,
            ErrorCode::RateLimited {
                retry_after_ms: 100
            }
        );
    }

    #[test]
    fn truncated_detail_is_an_error() {
        assert!(postcard::from_bytes::<ErrorCode>(&[4, 0]).is_err());
        assert!(postcard::from_bytes::<ErrorCode>(&[5, 1, 1]).is_err());
    }

    #[test]
    fn retryability() {
        assert!(ErrorCode::Internal.is_retryable());
        let rl = ErrorCode::RateLimited {
            retry_after_ms: 250,
        };
        assert!(rl.is_retryable());
        assert_eq!(rl.retry_after(), Some(Duration::from_millis(250)));
        assert!(!ErrorCode::Conflict { head: None }.is_retryable());
        assert!(!ErrorCode::Revoked.is_retryable());
        assert_eq!(ErrorCode::Internal.retry_after(), None);
    }

    #[test]
    fn long_messages_are_cut_at_a_char_boundary() {
        let e = ErrorResponse::new(ErrorCode::BadRequest, "é".repeat(MAX_ERROR_MESSAGE_LEN));
        assert!(e.message.len() <= MAX_ERROR_MESSAGE_LEN);
        assert!(e.message.len() >= MAX_ERROR_MESSAGE_LEN - 1);
        assert_eq!(
            ErrorResponse::new(ErrorCode::NotFound, "no such vault").to_string(),
            "not found: no such vault"
        );
    }
}
