//! Opening a store from a URL.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use url::Url;

use crate::{BlobStore, LocalDir, ObjectStoreBackend, S3Config, StorageError};

/// The URL forms [`open_url`] accepts, for error messages.
const SUPPORTED: &str = "supported are memory://, file:///absolute/path, plain directory \
                         paths (relative ones resolve against the working directory) and \
                         s3://bucket/prefix?endpoint=URL&region=NAME";

/// A parsed storage location: which backend, and where.
///
/// Parsing is separate from opening so configuration can be checked before anything is created.
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
    /// `s3://bucket/prefix?endpoint=..&region=..&path_style=..&allow_http=..`: an S3 or
    /// S3-compatible bucket; credentials come from the environment when opened.
    S3(S3Config),
}

impl StorageUrl {
    /// Parses `memory://`, `file:///abs/path`, a plain absolute or relative path, or
    /// `s3://bucket[/prefix][?endpoint=URL&region=NAME&path_style=true|false&allow_http=true|false]`
    /// (defaults: AWS's endpoint, `us-east-1`, path-style, http only to loopback).
    ///
    /// # Errors
    ///
    /// [`StorageError::UnsupportedScheme`] for unknown schemes;
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
        if matches!(url.scheme(), "s3" | "s3a") {
            return Ok(Self::S3(S3Config::from_url(input, &url)?));
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

    /// Opens the store; a local directory is created if missing. An S3 bucket is not
    /// contacted (see [`S3Config::open`]).
    ///
    /// # Errors
    ///
    /// [`StorageError::Open`] if a local directory cannot be created;
    /// [`StorageError::InvalidConfig`] if an S3 bucket has no credentials.
    pub fn open(&self) -> Result<Arc<dyn BlobStore>, StorageError> {
        match self {
            Self::Memory => Ok(Arc::new(ObjectStoreBackend::memory())),
            Self::Local { path } => Ok(Arc::new(LocalDir::open(path)?)),
            Self::S3(config) => config.open(),
        }
    }
}

impl FromStr for StorageUrl {
    type Err = StorageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Opens the blob store a URL names: `memory://`, `file:///abs/path`, a plain path, or
/// `s3://bucket/prefix?endpoint=URL&region=NAME`.
///
/// Local directories are created if missing; S3 credentials come from `AWS_ACCESS_KEY_ID` and
/// `AWS_SECRET_ACCESS_KEY`. Shorthand for [`StorageUrl::parse`] then [`StorageUrl::open`].
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
    fn s3_parses_and_others_list_what_works() {
        let StorageUrl::S3(config) =
            StorageUrl::parse("s3://bucket/prefix?endpoint=http://127.0.0.1:9000").unwrap()
        else {
            panic!("not s3");
        };
        assert_eq!(config.bucket, "bucket");
        assert_eq!(config.prefix.unwrap().as_str(), "prefix");

        let msg = StorageUrl::parse("gs://bucket").unwrap_err().to_string();
        assert!(msg.contains("`gs`") && msg.contains("memory://") && msg.contains("file:///"));
        assert!(msg.contains("s3://"), "{msg}");
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
