//! The SDK's errors ([`Error`]).

use std::path::PathBuf;

use dooz_client::{EngineError, IndexError, NetError, PairingError, RecoveryError};

/// What went wrong in an SDK call. Every variant says what to do; [`Error::is_retryable`] tells
/// whether the same call may succeed later (the server was unreachable or busy).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key cannot name a value.
    #[error("{key:?} is not a usable key: {reason}")]
    InvalidKey {
        /// The key as given.
        key: String,
        /// Why.
        reason: String,
    },
    /// A value cannot be stored at the key because of another key: a key is a path, so `a`
    /// and `a/b` cannot both hold values.
    #[error("{key:?} cannot hold a value: {reason}")]
    KeyCollision {
        /// The key as given.
        key: String,
        /// Which other key is in the way.
        reason: String,
    },
    /// No vault has this name (or id) on this device.
    #[error(
        "no vault named {name:?} on this device; create it with `Client::create_vault`, or get \
         it from another device of the account with `Client::pair_join` or `Client::recover`"
    )]
    NoSuchVault {
        /// The name asked for.
        name: String,
    },
    /// A vault with this name exists already.
    #[error("a vault named {name:?} exists already on this device; pick another name")]
    VaultExists {
        /// The name.
        name: String,
    },
    /// The vault name is not usable.
    #[error("{name:?} is not a usable vault name: use 1 to 255 bytes without control characters")]
    InvalidName {
        /// The name as given.
        name: String,
    },
    /// The vault is bound to another folder on this device.
    #[error(
        "vault {name:?} is bound to {} on this device already; open it with `Client::vault`, or \
         use another data dir for a second copy", bound.display()
    )]
    BoundElsewhere {
        /// The vault.
        name: String,
        /// Where it is bound.
        bound: PathBuf,
    },
    /// The call needs the server, and this device has not enrolled with one.
    #[error(
        "this device is not enrolled with a server yet: call `Client::enrol` with an enrolment \
         code from the server's admin (`dooz-server admin enrol-code`). Values can be put and \
         read meanwhile; they sync once the device is enrolled"
    )]
    NotEnrolled,
    /// The device is enrolled on another server and has vaults there.
    #[error(
        "this device is enrolled on {server} and has vaults there; to use another server, open \
         the client on another data dir"
    )]
    EnrolledElsewhere {
        /// The server it is enrolled on.
        server: String,
    },
    /// The server could not be reached in time (retryable: the call works once it is back).
    #[error("cannot reach the server {server}: {reason}; the change is kept and syncs later")]
    Offline {
        /// The server's address.
        server: String,
        /// What happened.
        reason: String,
    },
    /// Talking to the server failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// Syncing failed.
    #[error(transparent)]
    Sync(#[from] EngineError),
    /// The local index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// Pairing failed.
    #[error(transparent)]
    Pairing(#[from] PairingError),
    /// Recovery failed.
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
    /// A code (enrolment or pairing) could not be read.
    #[error("{0}")]
    BadCode(String),
    /// A file could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Background sync is running already for this client.
    #[error("background sync is running already; stop its handle before starting another")]
    AlreadySyncing,
    /// A key could not be made (the OS random number generator failed).
    #[error("cannot make a key: {0}")]
    Crypto(String),
    /// An internal task failed.
    #[error("an internal task failed: {0}")]
    Task(String),
}

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }

    /// Whether the same call may succeed later: the server was unreachable, busy or the
    /// connection dropped. Errors of the call's input (keys, names, codes) and integrity
    /// errors are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Offline { .. } => true,
            Self::Net(e) => e.is_retryable(),
            Self::Sync(e) => e.is_retryable(),
            Self::Pairing(PairingError::Net(e)) => e.is_retryable(),
            Self::Recovery(RecoveryError::Net(e)) => e.is_retryable(),
            _ => false,
        }
    }

    /// Whether this is [`Error::Offline`], or a lost connection.
    pub fn is_offline(&self) -> bool {
        match self {
            Self::Offline { .. } => true,
            Self::Net(e) => e.is_connection_lost(),
            Self::Sync(e) => e.is_connection_lost(),
            _ => false,
        }
    }
}

/// The SDK's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
