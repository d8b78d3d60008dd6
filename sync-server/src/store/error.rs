//! What can go wrong in the metadata store, and how it travels on the wire.

use dooz_protocol::{ChunkId, DeviceId, ErrorCode, VaultId};
use thiserror::Error;

/// A metadata store operation failed.
///
/// The variants say what was wrong; [`to_error_code`](Self::to_error_code) maps them to the
/// wire and [`is_retryable`](Self::is_retryable) says whether the same call may succeed later.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The thing asked for does not exist (a tenant, account, device or vault).
    #[error("{what} not found")]
    NotFound {
        /// What was looked for, e.g. `"vault 0011223344556677"`.
        what: String,
    },
    /// The thing to create exists already (owned by someone else when it is a vault).
    #[error("{what} already exists")]
    AlreadyExists {
        /// What exists, e.g. `"device 0011223344556677"`.
        what: String,
    },
    /// An argument was out of range (an empty or over-long name, for example).
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// The argument.
        what: &'static str,
        /// What was wrong with it.
        reason: String,
    },
    /// A commit referenced chunks that the vault does not have; nothing was applied. Upload
    /// them (`Have`, then `PutChunk`) and commit again.
    #[error(
        "{} chunk(s) referenced by the commit are not stored in vault {vault} (first: {}); \
         upload them, then commit again",
        chunks.len(),
        chunks.first().map(ToString::to_string).unwrap_or_default()
    )]
    MissingChunks {
        /// The vault.
        vault: VaultId,
        /// The chunk ids it lacks, in the order the commit named them (each once).
        chunks: Vec<ChunkId>,
    },
    /// No enrolment token matches: mistyped, never issued, or from another server.
    #[error("the enrolment token is not valid; ask the server's admin for a new enrolment code")]
    TokenInvalid,
    /// The enrolment token's lifetime is over.
    #[error("the enrolment token has expired; ask the server's admin for a new enrolment code")]
    TokenExpired,
    /// The one-use enrolment token was used already.
    #[error(
        "the enrolment token was already used; ask the server's admin for a new enrolment code"
    )]
    TokenUsed,
    /// The device was revoked; it must not retry.
    #[error("device {device} was revoked")]
    DeviceRevoked {
        /// The device.
        device: DeviceId,
    },
    /// A new epoch of a vault's key was started by another device first: the vault's newest
    /// epoch is `newest`, so an epoch can only be started as `newest + 1`.
    #[error(
        "epoch {epoch} of vault {vault} cannot be started: the vault's newest epoch is {newest} \
         (another device rotated the key first); fetch its key instead"
    )]
    EpochTaken {
        /// The vault.
        vault: VaultId,
        /// The epoch asked for.
        epoch: u32,
        /// The vault's newest epoch.
        newest: u32,
    },
    /// The store was written by a newer (or unknown) version of the server.
    #[error(
        "the metadata store has format version {found}, this server reads version {supported}; \
         run a newer dooz-server or restore a backup"
    )]
    IncompatibleFormat {
        /// The version found on disk.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// Stored bytes did not decode: the store is damaged (or was written by a buggy build).
    #[error("the metadata store is damaged: undecodable data in {tree}: {detail}")]
    Corrupt {
        /// The tree (table) holding the bad data.
        tree: &'static str,
        /// What did not decode.
        detail: String,
    },
    /// The storage engine failed.
    #[error("the {backend} metadata store failed")]
    Backend {
        /// Which engine (`"sled"`, later `"postgres"`).
        backend: &'static str,
        /// Whether the failure is transient (an IO error, a lost connection).
        retryable: bool,
        /// The engine's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The store's worker task did not finish (the runtime is shutting down).
    #[error("the metadata store is unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
}

impl StoreError {
    pub(crate) fn not_found(what: impl Into<String>) -> Self {
        Self::NotFound { what: what.into() }
    }

    pub(crate) fn already_exists(what: impl Into<String>) -> Self {
        Self::AlreadyExists { what: what.into() }
    }

    pub(crate) fn corrupt(tree: &'static str, detail: impl Into<String>) -> Self {
        Self::Corrupt {
            tree,
            detail: detail.into(),
        }
    }

    /// Whether the same call may succeed if made again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Backend { retryable, .. } => *retryable,
            Self::Unavailable { .. } => true,
            _ => false,
        }
    }

    /// The error code that answers a request which failed with this error.
    ///
    /// Internal failures (damage, engine errors) all become [`ErrorCode::Internal`]; their details
    /// belong in the server's log, not on the wire.
    pub fn to_error_code(&self) -> ErrorCode {
        match self {
            Self::NotFound { .. } | Self::MissingChunks { .. } => ErrorCode::NotFound,
            Self::AlreadyExists { .. } => ErrorCode::AlreadyExists,
            Self::EpochTaken { .. } => ErrorCode::Conflict { head: None },
            Self::InvalidInput { .. } => ErrorCode::BadRequest,
            Self::TokenInvalid | Self::TokenExpired | Self::TokenUsed => ErrorCode::Unauthenticated,
            Self::DeviceRevoked { .. } => ErrorCode::Revoked,
            Self::IncompatibleFormat { .. }
            | Self::Corrupt { .. }
            | Self::Backend { .. }
            | Self::Unavailable { .. } => ErrorCode::Internal,
        }
    }
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        let retryable = matches!(e, sled::Error::Io(_));
        Self::Backend {
            backend: "sled",
            retryable,
            source: Box::new(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_retryability() {
        let missing = StoreError::MissingChunks {
            vault: VaultId::from_bytes([1; 16]),
            chunks: vec![ChunkId::from_bytes([2; 32])],
        };
        assert_eq!(missing.to_error_code(), ErrorCode::NotFound);
        assert!(missing.to_string().contains("upload them"), "{missing}");
        assert_eq!(
            StoreError::TokenUsed.to_error_code(),
            ErrorCode::Unauthenticated
        );
        let revoked = StoreError::DeviceRevoked {
            device: DeviceId::from_bytes([3; 32]),
        };
        assert_eq!(revoked.to_error_code(), ErrorCode::Revoked);
        assert!(!revoked.is_retryable());
        let io = StoreError::from(sled::Error::Io(std::io::Error::other("disk")));
        assert!(io.is_retryable());
        assert_eq!(io.to_error_code(), ErrorCode::Internal);
        let corrupt = StoreError::corrupt("log-v1", "bad");
        assert!(!corrupt.is_retryable());
        assert_eq!(corrupt.to_error_code(), ErrorCode::Internal);
        assert_eq!(
            StoreError::not_found("vault 00").to_error_code(),
            ErrorCode::NotFound
        );
    }
}
