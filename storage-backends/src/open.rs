//! Opening a store from a URL.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use url::Url;

use crate::{BlobStore, LocalDir, ObjectStoreBackend, StorageError};

/// The URL forms [`open_url`] accepts, for error messages.
const SUPPORTED: &str = "supported are memory://, file:///absolute/path and plain directory \
                         paths (relative ones resolve against the working directory)";

/// A parsed storage location: which backend, and where.
///
/// Parsing is separate from opening so configuration can be checked before anything is created.
/// New backends (S3 and S3-compatible buckets, tenant-provided storage) add variants.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageUrl {
    /// `memory://`: a fresh, empty in-memory store; its contents die with it.
    Memory,
    /// `file:///abs/path` or a plain path: a [`LocalDir`] rooted at an absolute `path`.
    Local {
        /// The store's root directory, absolute.
        path: PathBuf,
    },
}

impl StorageUrl {
    /// Parses `memory://`, `file:///abs/path`, or a plain absolute or relative path.
    ///
    /// # Errors
    ///
    /// [`StorageError::UnsupportedScheme`] for `s3://` (not wired yet) and unknown schemes;
    /// [`StorageError::InvalidUrl`] for malformed URLs and options this build does not accept.
    pub fn parse(input: &str) -> Result<Self, StorageError> {
        let invalid = |reason: &str| StorageError::InvalidUrl {
            url: input.to_owned(),
            reason: reason.to_owned(),
        };
        if input.trim().is_empty() {
            return Err(invalid(&format!("it is empty; {SUPPORTED}")));
        }
        let url = match Url::parse(input) {
            Ok(url) => url,
            Err(url::ParseError::RelativeUrlWithoutBase) => return Self::local_path(input),
            Err(e) => return Err(invalid(&format!("{e}; {SUPPORTED}"))),
        };
        if url.scheme().len() == 1 {
            // A Windows drive letter (`C:\data`) parses as a one-letter scheme.
            return Self::local_path(input);
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid(
                "query parameters and fragments are not supported; remove the '?...' or '#...'",
            ));
        }
        match url.scheme() {
            "memory" => {
                if url.host_str().is_some_and(|h| !h.is_empty()) || !matches!(url.path(), "" | "/")
                {
                    return Err(invalid("memory:// takes no host or path; write memory://"));
                }
                Ok(Self::Memory)
            }
            "file" => {
                if url
                    .host_str()
                    .is_some_and(|h| !h.is_empty() && h != "localhost")
                {
                    return Err(invalid(
                        "file URLs must name a local path (file:///abs/path), not a host",
                    ));
                }
                let path = url.to_file_path().map_err(|()| {
                    invalid("it is not an absolute local path; write file:///abs/path")
                })?;
                Ok(Self::Local { path })
            }
            scheme @ ("s3" | "s3a") => Err(StorageError::UnsupportedScheme {
                scheme: scheme.to_owned(),
                url: input.to_owned(),
                hint: format!(
                    "S3 and S3-compatible buckets are coming (a later issue wires them in); \
                     for now {SUPPORTED}"
                ),
            }),
            scheme => Err(StorageError::UnsupportedScheme {
                scheme: scheme.to_owned(),
                url: input.to_owned(),
                hint: SUPPORTED.to_owned(),
            }),
        }
    }

    fn local_path(input: &str) -> Result<Self, StorageError> {
        let path = std::path::absolute(input).map_err(|e| StorageError::InvalidUrl {
            url: input.to_owned(),
            reason: format!("cannot make the path absolute: {e}"),
        })?;
        Ok(Self::Local { path })
    }

    /// Opens the store; a local directory is created if missing.
    ///
    /// # Errors
    ///
    /// [`StorageError::Open`] if a local directory cannot be created.
    pub fn open(&self) -> Result<Arc<dyn BlobStore>, StorageError> {
        match self {
            Self::Memory => Ok(Arc::new(ObjectStoreBackend::memory())),
            Self::Local { path } => Ok(Arc::new(LocalDir::open(path)?)),
        }
    }
}

impl FromStr for StorageUrl {
    type Err = StorageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Opens the blob store a URL names: `memory://`, `file:///abs/path`, or a plain path.
///
/// Local directories are created if missing. `s3://` gives [`StorageError::UnsupportedScheme`]
/// until S3 support lands. Shorthand for [`StorageUrl::parse`] then [`StorageUrl::open`].
///
/// # Errors
///
/// See [`StorageUrl::parse`] and [`StorageUrl::open`].
pub fn open_url(url: &str) -> Result<Arc<dyn BlobStore>, StorageError> {
    StorageUrl::parse(url)?.open()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn reason(url: &str) -> String {
        match StorageUrl::parse(url) {
            Err(StorageError::InvalidUrl { reason, .. }) => reason,
            other => panic!("{url:?} should be invalid, got {other:?}"),
        }
    }

    #[test]
    fn parses_supported_forms() {
        assert_eq!(StorageUrl::parse("memory://").unwrap(), StorageUrl::Memory);
        assert_eq!(StorageUrl::parse("memory:").unwrap(), StorageUrl::Memory);
        assert_eq!(
            StorageUrl::parse("file:///srv/dooz%20blobs").unwrap(),
            StorageUrl::Local {
                path: PathBuf::from("/srv/dooz blobs")
            }
        );
        assert_eq!(
            StorageUrl::parse("file://localhost/srv/b").unwrap(),
            StorageUrl::Local {
                path: PathBuf::from("/srv/b")
            }
        );
        assert_eq!(
            "/srv/blobs".parse::<StorageUrl>().unwrap(),
            StorageUrl::Local {
                path: PathBuf::from("/srv/blobs")
            }
        );
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            StorageUrl::parse("data/blobs").unwrap(),
            StorageUrl::Local {
                path: cwd.join("data/blobs")
            }
        );
        let StorageUrl::Local { path } = StorageUrl::parse("./x").unwrap() else {
            panic!("not local");
        };
        assert!(path.is_absolute() && path.ends_with(Path::new("x")));
    }

    #[test]
    fn s3_is_announced_and_others_list_what_works() {
        let err = StorageUrl::parse("s3://bucket/prefix").unwrap_err();
        let StorageError::UnsupportedScheme { scheme, hint, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(scheme, "s3");
        assert!(
            hint.contains("S3") && hint.contains("later issue"),
            "{hint}"
        );

        let msg = StorageUrl::parse("gs://bucket").unwrap_err().to_string();
        assert!(msg.contains("`gs`") && msg.contains("memory://") && msg.contains("file:///"));
        assert!(msg.contains("plain directory paths"), "{msg}");
    }

    #[test]
    fn rejects_malformed_urls() {
        assert!(reason("").contains("empty"));
        assert!(reason("  ").contains("empty"));
        assert!(reason("memory://name").contains("no host or path"));
        assert!(reason("memory:///x").contains("no host or path"));
        assert!(reason("file://server/share").contains("not a host"));
        assert!(reason("file:///x?sync=false").contains("query"));
        assert!(reason("http://[::1").contains("supported"));
    }
}
