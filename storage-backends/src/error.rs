//! The crate's error type and the operation kinds it names.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

/// A boxed error from a backend, kept as the `source` of a [`StorageError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// One kind of [`BlobStore`](crate::BlobStore) operation.
///
/// Errors name the operation that failed; [`Metered`](crate::Metered) counts requests per kind
/// and [`FaultInjecting`](crate::FaultInjecting) takes a failure rate per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// [`BlobStore::put`](crate::BlobStore::put)
    Put,
    /// [`BlobStore::get`](crate::BlobStore::get)
    Get,
    /// [`BlobStore::get_range`](crate::BlobStore::get_range)
    GetRange,
    /// [`BlobStore::head`](crate::BlobStore::head)
    Head,
    /// [`BlobStore::delete`](crate::BlobStore::delete)
    Delete,
    /// [`BlobStore::list`](crate::BlobStore::list) and
    /// [`BlobStore::list_stream`](crate::BlobStore::list_stream)
    List,
}

impl Op {
    /// Every operation kind, in declaration order.
    pub const ALL: [Op; 6] = [
        Op::Put,
        Op::Get,
        Op::GetRange,
        Op::Head,
        Op::Delete,
        Op::List,
    ];

    /// The operation's name as written in errors and logs (`"get_range"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::GetRange => "get_range",
            Op::Head => "head",
            Op::Delete => "delete",
            Op::List => "list",
        }
    }

    /// Position in [`Op::ALL`], for per-kind counter arrays.
    pub(crate) fn index(self) -> usize {
        match self {
            Op::Put => 0,
            Op::Get => 1,
            Op::GetRange => 2,
            Op::Head => 3,
            Op::Delete => 4,
            Op::List => 5,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a failed blob-store call or store configuration went wrong with.
///
/// Classify with [`is_retryable`](Self::is_retryable) (transient: try again later) and
/// [`is_not_found`](Self::is_not_found). Every other variant is permanent: retrying the same call
/// gives the same answer until something outside the program changes.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No blob is stored under the key.
    #[error("blob `{key}` not found")]
    NotFound {
        /// The key that was asked for.
        key: String,
    },

    /// A string is not a valid [`BlobKey`](crate::BlobKey).
    #[error(
        "invalid blob key {key:?}: {reason}; a key is '/'-separated segments of A-Z a-z 0-9 \
         '.' '_' '-', at most 1024 bytes, with no empty, '.' or '..' segment"
    )]
    InvalidKey {
        /// The rejected key (shortened if it was very long).
        key: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A byte range does not lie within the blob; ranges need `start <= end <= size`.
    #[error(
        "byte range {}..{} does not fit blob `{key}` of {size} bytes; a range needs \
         start <= end <= size",
        range.start, range.end
    )]
    InvalidRange {
        /// The blob's key.
        key: String,
        /// The range that was asked for.
        range: Range<u64>,
        /// The blob's size in bytes.
        size: u64,
    },

    /// The storage URL's scheme names a backend this build cannot open (yet).
    #[error("unsupported storage URL scheme `{scheme}` in {url:?}: {hint}")]
    UnsupportedScheme {
        /// The scheme, e.g. `s3`.
        scheme: String,
        /// The whole URL.
        url: String,
        /// What is supported instead, or when it will be.
        hint: String,
    },

    /// The storage URL is malformed or carries something the backend does not accept.
    #[error("invalid storage URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it and what to write instead.
        reason: String,
    },

    /// A store or adapter was configured with an impossible value.
    #[error("invalid storage configuration: {reason}")]
    InvalidConfig {
        /// What is wrong and what is allowed.
        reason: String,
    },

    /// A local store directory could not be created or opened.
    #[error(
        "cannot open local blob directory {}: {source}; check that the path is a directory \
         this process may create and write",
        path.display()
    )]
    Open {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// The backend is temporarily unreachable or overloaded; the call may succeed if retried.
    #[error("storage unavailable during {op} of `{key}` (transient, retry later): {source}")]
    Unavailable {
        /// The operation that failed.
        op: Op,
        /// The key or list prefix it was for.
        key: String,
        /// The underlying error.
        source: BoxError,
    },

    /// The backend refused the call: missing permission or bad credentials.
    #[error(
        "permission denied during {op} of `{key}`: {source}; check the storage credentials or \
         the directory's permissions"
    )]
    Permission {
        /// The operation that failed.
        op: Op,
        /// The key or list prefix it was for.
        key: String,
        /// The underlying error.
        source: BoxError,
    },

    /// A local I/O error that retrying will not fix (disk full, read-only file system, ...).
    #[error("I/O error during {op} of `{key}`: {source}")]
    Io {
        /// The operation that failed.
        op: Op,
        /// The key or list prefix it was for.
        key: String,
        /// The underlying error.
        source: std::io::Error,
    },

    /// The key cannot be stored because a blob and a key nested under it would collide
    /// (file-system backends cannot hold both `a/b` and `a/b/c`).
    #[error(
        "cannot {op} blob `{key}`: it collides with `{conflicting}`; a local store cannot hold \
         both a blob and blobs nested under its key"
    )]
    KeyConflict {
        /// The operation that failed.
        op: Op,
        /// The key that was asked for.
        key: String,
        /// The existing blob or directory it collides with.
        conflicting: String,
    },

    /// Any other backend failure; permanent.
    #[error("storage backend error during {op} of `{key}`: {source}")]
    Backend {
        /// The operation that failed.
        op: Op,
        /// The key or list prefix it was for.
        key: String,
        /// The underlying error.
        source: BoxError,
    },

    /// The bucket a call went to does not exist (an S3 `NoSuchBucket` answer); permanent.
    #[error(
        "the storage bucket does not exist (during {op} of `{key}`): {source}; create the \
         bucket, or fix the bucket name in the storage URL or configuration"
    )]
    NoSuchBucket {
        /// The operation that failed.
        op: Op,
        /// The key or list prefix it was for.
        key: String,
        /// The underlying error.
        source: BoxError,
    },

    /// [`Retrying`](crate::Retrying) gave up on a transient failure after its bound; still
    /// retryable (later, e.g. when the backend is back).
    #[error(
        "{op} of `{key}` still failing after {attempts} attempts over {elapsed:?} (transient, \
         retry later): {last}"
    )]
    RetriesExhausted {
        /// The operation that failed.
        op: Op,
        /// The key or list prefix it was for.
        key: String,
        /// How many times the call was made.
        attempts: u32,
        /// Time from the first attempt to giving up.
        elapsed: std::time::Duration,
        /// The last attempt's error.
        last: Box<StorageError>,
    },

    /// [`validate`](fn@crate::validate) found the store unusable: one step of its probe failed.
    #[error("storage validation failed at the {step} step (probe blob `{probe}`): {source}")]
    Validation {
        /// Which step failed: `list`, `write`, `read`, `read back` (wrong bytes) or `delete`.
        step: &'static str,
        /// The probe blob's key.
        probe: String,
        /// What went wrong.
        source: Box<StorageError>,
    },

    /// A failure injected on purpose by [`FaultInjecting`](crate::FaultInjecting); retryable.
    #[error("injected fault during {op} of `{key}` (fault-injection adapter; retry the call)")]
    Injected {
        /// The operation that was failed.
        op: Op,
        /// The key or list prefix it was for.
        key: String,
    },
}

impl StorageError {
    /// True for transient failures ([`Unavailable`](Self::Unavailable),
    /// [`Injected`](Self::Injected), [`RetriesExhausted`](Self::RetriesExhausted), and a
    /// [`Validation`](Self::Validation) that failed on one of these) that may succeed when the
    /// same call is retried.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unavailable { .. } | Self::Injected { .. } | Self::RetriesExhausted { .. } => {
                true
            }
            Self::Validation { source, .. } => source.is_retryable(),
            _ => false,
        }
    }

    /// True if the blob does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }

    /// The error [`BlobKey::new`](crate::BlobKey::new) returns, with a long key shortened.
    pub(crate) fn invalid_key(key: &str, reason: impl Into<String>) -> Self {
        const SHOWN: usize = 80;
        let key = if key.chars().count() > SHOWN {
            let mut short: String = key.chars().take(SHOWN).collect();
            short.push_str("...");
            short
        } else {
            key.to_owned()
        };
        Self::InvalidKey {
            key,
            reason: reason.into(),
        }
    }

    /// Classifies an I/O error from a local operation.
    pub(crate) fn from_io(op: Op, key: &str, source: std::io::Error) -> Self {
        let key = key.to_owned();
        match classify(op, source.kind()) {
            Class::NotFound => Self::NotFound { key },
            Class::Permission => Self::Permission {
                op,
                key,
                source: Box::new(source),
            },
            Class::Transient => Self::Unavailable {
                op,
                key,
                source: Box::new(source),
            },
            // `classify` never answers NoSuchBucket.
            Class::Permanent | Class::NoSuchBucket => Self::Io { op, key, source },
        }
    }

    /// Classifies an error from an `object_store` call.
    pub(crate) fn from_object_store(op: Op, key: &str, source: object_store::Error) -> Self {
        use object_store::Error as E;
        let key = key.to_owned();
        let class = match &source {
            // S3's error code, in the response body kept in the message.
            _ if mentions(&source, "<Code>NoSuchBucket</Code>") => Class::NoSuchBucket,
            E::NotFound { .. } => Class::NotFound,
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => Class::Permission,
            // Local and HTTP stores wrap I/O failures in `Generic`; classify by the I/O kind,
            // then by what the HTTP client says.
            E::Generic { .. } => find_io_error(&source)
                .map(|io| classify(op, io.kind()))
                .or_else(|| classify_http(&source))
                .unwrap_or(Class::Permanent),
            _ => Class::Permanent,
        };
        let source: BoxError = Box::new(source);
        match class {
            Class::NoSuchBucket => Self::NoSuchBucket { op, key, source },
            Class::NotFound => Self::NotFound { key },
            Class::Permission => Self::Permission { op, key, source },
            Class::Transient => Self::Unavailable { op, key, source },
            Class::Permanent => Self::Backend { op, key, source },
        }
    }
}

/// How an error should be reported.
enum Class {
    NoSuchBucket,
    NotFound,
    Permission,
    Transient,
    Permanent,
}

/// Classifies an I/O error kind met during `op`.
fn classify(op: Op, kind: std::io::ErrorKind) -> Class {
    use std::io::ErrorKind as K;
    match kind {
        // A missing file, or a path through a file, means a missing blob for reads only; for
        // writes and listings it is a real failure.
        K::NotFound | K::NotADirectory if matches!(op, Op::Get | Op::GetRange | Op::Head) => {
            Class::NotFound
        }
        K::PermissionDenied | K::ReadOnlyFilesystem => Class::Permission,
        K::Interrupted
        | K::WouldBlock
        | K::TimedOut
        | K::ResourceBusy
        | K::ConnectionRefused
        | K::ConnectionReset
        | K::ConnectionAborted
        | K::NotConnected
        | K::BrokenPipe
        | K::HostUnreachable
        | K::NetworkUnreachable
        | K::NetworkDown => Class::Transient,
        _ => Class::Permanent,
    }
}

/// Classifies a failed HTTP request (object_store's cloud stores) by the `reqwest` error or the
/// response status in its source chain.
///
/// object_store keeps its request error type private; its message carries the status as
/// `status code: 503 ...`, which is what is read here.
fn classify_http(err: &(dyn std::error::Error + 'static)) -> Option<Class> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(http) = e.downcast_ref::<reqwest::Error>()
            && (http.is_timeout() || http.is_connect() || http.is_request() || http.is_body())
        {
            return Some(Class::Transient);
        }
        let text = e.to_string();
        if let Some(status) = status_in(&text) {
            return Some(match status {
                // The server asks for a retry: 5xx, 429 Too Many Requests, 408 Request Timeout.
                500.. | 429 | 408 => Class::Transient,
                // Listings come back as `Generic` even when the answer was a refusal.
                401 | 403 => Class::Permission,
                _ => Class::Permanent,
            });
        }
        // A 200 answer whose body is an S3 `InternalError` or `SlowDown`.
        if text.contains("Server returned error response") {
            return Some(Class::Transient);
        }
        current = e.source();
    }
    None
}

/// The HTTP status in an object_store request error's message (`...status code: 503 ...`).
fn status_in(text: &str) -> Option<u16> {
    let (_, rest) = text.split_once("status code: ")?;
    let digits = rest.get(..3)?;
    digits
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| digits.parse().ok())
        .flatten()
}

/// Whether any error in the source chain mentions `needle` (an S3 error code in a response
/// body kept in the message).
fn mentions(err: &(dyn std::error::Error + 'static), needle: &str) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if e.to_string().contains(needle) {
            return true;
        }
        current = e.source();
    }
    false
}

/// The first `std::io::Error` in an error's source chain.
fn find_io_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut current: Option<&'a (dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error as IoError, ErrorKind};

    #[test]
    fn op_index_matches_all() {
        for (i, op) in Op::ALL.iter().enumerate() {
            assert_eq!(op.index(), i);
        }
        assert_eq!(Op::GetRange.to_string(), "get_range");
    }

    #[test]
    fn io_errors_are_classified() {
        let e = StorageError::from_io(Op::Get, "k", IoError::from(ErrorKind::NotFound));
        assert!(e.is_not_found());
        let e = StorageError::from_io(Op::Put, "k", IoError::from(ErrorKind::NotFound));
        assert!(matches!(e, StorageError::Io { .. }), "{e:?}");
        let e = StorageError::from_io(Op::Put, "k", IoError::from(ErrorKind::PermissionDenied));
        assert!(matches!(e, StorageError::Permission { .. }) && !e.is_retryable());
        let e = StorageError::from_io(Op::Head, "k", IoError::from(ErrorKind::TimedOut));
        assert!(e.is_retryable());
        let e = StorageError::from_io(Op::Put, "k", IoError::from(ErrorKind::StorageFull));
        assert!(matches!(e, StorageError::Io { .. }) && !e.is_retryable());
    }

    #[test]
    fn object_store_errors_are_classified() {
        let nf = object_store::Error::NotFound {
            path: "a/b".into(),
            source: "gone".into(),
        };
        assert!(StorageError::from_object_store(Op::Get, "a/b", nf).is_not_found());

        let denied = object_store::Error::PermissionDenied {
            path: "a".into(),
            source: "no".into(),
        };
        let e = StorageError::from_object_store(Op::Put, "a", denied);
        assert!(matches!(e, StorageError::Permission { .. }));

        let transient = object_store::Error::Generic {
            store: "test",
            source: Box::new(IoError::from(ErrorKind::ConnectionReset)),
        };
        let e = StorageError::from_object_store(Op::Get, "a", transient);
        assert!(e.is_retryable(), "{e:?}");

        let bucket = object_store::Error::NotFound {
            path: "a".into(),
            source: "Server returned non-2xx status code: 404 Not Found: \
                     <Error><Code>NoSuchBucket</Code></Error>"
                .into(),
        };
        let e = StorageError::from_object_store(Op::Put, "a", bucket);
        assert!(matches!(e, StorageError::NoSuchBucket { .. }) && !e.is_retryable());
        assert!(e.to_string().contains("create the bucket"), "{e}");

        let status = |text: &str| object_store::Error::Generic {
            store: "S3",
            source: text.to_owned().into(),
        };
        let e = StorageError::from_object_store(
            Op::Put,
            "a",
            status(
                "Error performing PUT x in 1ms - Server returned non-2xx status code: 503 Service Unavailable: ",
            ),
        );
        assert!(e.is_retryable(), "{e:?}");
        let e = StorageError::from_object_store(
            Op::Put,
            "a",
            status("Server returned non-2xx status code: 400 Bad Request: no"),
        );
        assert!(matches!(e, StorageError::Backend { .. }), "{e:?}");
        let e = StorageError::from_object_store(
            Op::List,
            "a",
            status("Server returned non-2xx status code: 403 Forbidden: <Code>AccessDenied</Code>"),
        );
        assert!(matches!(e, StorageError::Permission { .. }), "{e:?}");
        assert_eq!(status_in("status code: 429 Too Many"), Some(429));
        assert_eq!(status_in("status code: 4x"), None);

        let other = object_store::Error::NotImplemented;
        let e = StorageError::from_object_store(Op::Get, "a", other);
        assert!(matches!(e, StorageError::Backend { .. }) && !e.is_retryable());
    }

    #[test]
    fn long_keys_are_shortened_in_errors() {
        let long = "x".repeat(5000);
        let StorageError::InvalidKey { key, .. } = StorageError::invalid_key(&long, "too long")
        else {
            panic!("wrong variant");
        };
        assert!(key.len() < 100);
    }
}
