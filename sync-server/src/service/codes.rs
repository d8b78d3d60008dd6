//! Application close codes of data-plane connections (documented in `docs/PROTOCOL.md`,
//! "Connection close codes").

use std::fmt;

use quinn::VarInt;

/// Why the server closed a connection: the QUIC application close code, sent with a reason
/// string that says what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseCode {
    /// `0`: nothing wrong; the exchange is over (for example after enrolment).
    Done,
    /// `1`: the device's certificate key is not enrolled on this server.
    UnknownDevice,
    /// `2`: the device was revoked. It must not reconnect.
    Revoked,
    /// `3`: the server is shutting down. Reconnect later.
    ShuttingDown,
    /// `4`: the server failed to admit the connection. Reconnect later.
    Internal,
    /// `5`: the peer broke the protocol at the connection level (for example opened an
    /// enrolment connection without an enrolment request).
    ProtocolViolation,
}

impl CloseCode {
    /// Every code, in number order.
    pub const ALL: [Self; 6] = [
        Self::Done,
        Self::UnknownDevice,
        Self::Revoked,
        Self::ShuttingDown,
        Self::Internal,
        Self::ProtocolViolation,
    ];

    /// The code's number.
    pub const fn code(self) -> u32 {
        match self {
            Self::Done => 0,
            Self::UnknownDevice => 1,
            Self::Revoked => 2,
            Self::ShuttingDown => 3,
            Self::Internal => 4,
            Self::ProtocolViolation => 5,
        }
    }

    /// The code as a QUIC varint.
    pub const fn varint(self) -> VarInt {
        VarInt::from_u32(self.code())
    }

    /// The code with this number, if it is one of ours.
    pub fn from_code(code: u64) -> Option<Self> {
        Self::ALL.into_iter().find(|c| u64::from(c.code()) == code)
    }

    /// Whether a client may reconnect after this code (later, with back-off).
    pub const fn may_reconnect(self) -> bool {
        matches!(self, Self::Done | Self::ShuttingDown | Self::Internal)
    }

    /// Closes `conn` with this code and `reason`.
    pub fn close(self, conn: &quinn::Connection, reason: &str) {
        conn.close(self.varint(), reason.as_bytes());
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Done => "done",
            Self::UnknownDevice => "unknown device",
            Self::Revoked => "device revoked",
            Self::ShuttingDown => "server shutting down",
            Self::Internal => "server error",
            Self::ProtocolViolation => "protocol violation",
        };
        write!(f, "{name} ({})", self.code())
    }
}

/// Reason sent with [`CloseCode::ShuttingDown`].
pub const SHUTTING_DOWN_REASON: &str = "server shutting down; reconnect later";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_and_distinct() {
        for (i, c) in CloseCode::ALL.into_iter().enumerate() {
            assert_eq!(c.code() as usize, i);
            assert_eq!(CloseCode::from_code(u64::from(c.code())), Some(c));
        }
        assert_eq!(CloseCode::from_code(99), None);
        assert!(!CloseCode::Revoked.may_reconnect());
        assert!(CloseCode::ShuttingDown.may_reconnect());
    }
}
