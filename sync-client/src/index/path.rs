//! [`RelPath`]: a path inside a synced folder, as the index stores it.

use std::fmt;
use std::path::{Component, Path, PathBuf};

/// A path relative to a synced folder's root: UTF-8, components separated by `/`, no empty, `.`
/// or `..` components, no leading or trailing `/`, no NUL. The folder root itself is not a
/// `RelPath`.
///
/// This is the form every index tree keys its entries by (the UTF-8 bytes, no terminator) and
/// the name a file is synced under, whatever the local platform's separator.
///
/// ```
/// use dooz_client::RelPath;
///
/// let p = RelPath::new("photos/2024/cat.jpg")?;
/// assert_eq!(p.file_name(), "cat.jpg");
/// assert_eq!(p.parent().map(|p| p.to_string()), Some("photos/2024".to_string()));
/// assert!(RelPath::new("../escape").is_err());
/// # Ok::<(), dooz_client::PathError>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(String);

/// Why a name cannot be a [`RelPath`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// A name on disk is not valid UTF-8.
    #[error(
        "the name {path:?} is not valid UTF-8; Dooz syncs only UTF-8 names, rename the file to sync it"
    )]
    NotUtf8 {
        /// The path, with invalid bytes replaced by U+FFFD.
        path: String,
    },
    /// The path is empty (the folder root is not an entry).
    #[error("the path is empty; name a file or directory inside the folder")]
    Empty,
    /// The path is absolute or has a component that is empty, `.` or `..`.
    #[error(
        "the path {path:?} is not a plain relative path (component {component:?}); use names separated by '/' with no '.', '..' or empty parts"
    )]
    NotRelative {
        /// The path as given (lossy).
        path: String,
        /// The offending component.
        component: String,
    },
    /// The path contains a NUL byte.
    #[error("the path {path:?} contains a NUL byte, which no file system allows")]
    Nul {
        /// The path as given (lossy).
        path: String,
    },
    /// A file system path is not inside the folder root.
    #[error("{path:?} is not inside the synced folder {root:?}")]
    NotUnderRoot {
        /// The path as given.
        path: PathBuf,
        /// The folder root.
        root: PathBuf,
    },
}

impl RelPath {
    /// Validates `path` (`/`-separated, see the [type docs](RelPath)).
    pub fn new(path: impl Into<String>) -> Result<Self, PathError> {
        let path = path.into();
        validate(&path)?;
        Ok(Self(path))
    }

    /// Converts a relative file system path (made only of normal components) to a `RelPath`.
    /// Names that are not UTF-8 give [`PathError::NotUtf8`].
    pub fn from_path(path: &Path) -> Result<Self, PathError> {
        let mut out = String::new();
        for component in path.components() {
            match component {
                Component::Normal(name) => {
                    let Some(name) = name.to_str() else {
                        return Err(PathError::NotUtf8 {
                            path: path.to_string_lossy().into_owned(),
                        });
                    };
                    if !out.is_empty() {
                        out.push('/');
                    }
                    out.push_str(name);
                }
                other => {
                    return Err(PathError::NotRelative {
                        path: path.to_string_lossy().into_owned(),
                        component: other.as_os_str().to_string_lossy().into_owned(),
                    });
                }
            }
        }
        Self::new(out)
    }

    /// The `RelPath` of `path`, a file system path inside `root` (neither is touched on disk).
    pub fn from_path_under(root: &Path, path: &Path) -> Result<Self, PathError> {
        let rel = path
            .strip_prefix(root)
            .map_err(|_| PathError::NotUnderRoot {
                path: path.to_path_buf(),
                root: root.to_path_buf(),
            })?;
        Self::from_path(rel)
    }

    /// Parses index key bytes (UTF-8 of a valid `RelPath`).
    pub(crate) fn from_key(key: &[u8]) -> Result<Self, PathError> {
        let s = std::str::from_utf8(key).map_err(|_| PathError::NotUtf8 {
            path: String::from_utf8_lossy(key).into_owned(),
        })?;
        Self::new(s)
    }

    /// The path as a `/`-separated string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The index key: the path's UTF-8 bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The path with `name` appended; `name` must be one valid component.
    pub fn join(&self, name: &str) -> Result<Self, PathError> {
        validate_component(&self.0, name)?;
        Ok(Self(format!("{}/{name}", self.0)))
    }

    /// A top-level path made of one component.
    pub fn top(name: &str) -> Result<Self, PathError> {
        validate_component(name, name)?;
        Ok(Self(name.to_string()))
    }

    /// The child `name` of `dir`, or the top-level `name` when `dir` is `None` (the root).
    pub fn child(dir: Option<&RelPath>, name: &str) -> Result<Self, PathError> {
        match dir {
            Some(dir) => dir.join(name),
            None => Self::top(name),
        }
    }

    /// The last component.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The containing directory, or `None` for a top-level entry.
    pub fn parent(&self) -> Option<RelPath> {
        self.0
            .rsplit_once('/')
            .map(|(dir, _)| Self(dir.to_string()))
    }

    /// Whether `self` is `other` or inside it.
    pub fn starts_with(&self, other: &RelPath) -> bool {
        self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }

    /// The components, outermost first.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The file system path of this entry under `root`.
    pub fn to_path(&self, root: &Path) -> PathBuf {
        let mut out = root.to_path_buf();
        out.extend(self.0.split('/'));
        out
    }
}

fn validate(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    path.split('/')
        .try_for_each(|component| validate_component(path, component))
}

fn validate_component(path: &str, component: &str) -> Result<(), PathError> {
    if component.contains('\0') {
        return Err(PathError::Nul {
            path: path.to_string(),
        });
    }
    if component.is_empty() || component == "." || component == ".." || component.contains('/') {
        return Err(PathError::NotRelative {
            path: path.to_string(),
            component: component.to_string(),
        });
    }
    Ok(())
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelPath({:?})", self.0)
    }
}

impl AsRef<str> for RelPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for RelPath {
    type Err = PathError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for RelPath {
    type Error = PathError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_paths() {
        for ok in [
            "a",
            "a/b",
            "dir/sub/file.txt",
            ".hidden",
            "a b/ c",
            "..x",
            "é/ü",
        ] {
            let p = RelPath::new(ok).unwrap();
            assert_eq!(p.as_str(), ok);
            assert_eq!(RelPath::from_key(p.as_bytes()).unwrap(), p);
        }
    }

    #[test]
    fn rejects_bad_paths() {
        assert_eq!(RelPath::new(""), Err(PathError::Empty));
        for bad in ["/a", "a/", "a//b", "./a", "a/../b", "..", "."] {
            assert!(
                matches!(RelPath::new(bad), Err(PathError::NotRelative { .. })),
                "{bad}"
            );
        }
        assert!(matches!(RelPath::new("a\0b"), Err(PathError::Nul { .. })));
        assert!(RelPath::new("a").unwrap().join("b/c").is_err());
        assert!(RelPath::new("a").unwrap().join("..").is_err());
        assert!(RelPath::from_key(&[0xff, b'a']).is_err());
    }

    #[test]
    fn parts() {
        let p = RelPath::new("a/b/c.txt").unwrap();
        assert_eq!(p.file_name(), "c.txt");
        assert_eq!(p.parent().unwrap().as_str(), "a/b");
        assert_eq!(RelPath::new("top").unwrap().parent(), None);
        assert_eq!(p.components().collect::<Vec<_>>(), ["a", "b", "c.txt"]);
        assert!(p.starts_with(&RelPath::new("a/b").unwrap()));
        assert!(p.starts_with(&p));
        assert!(
            !RelPath::new("a/bc")
                .unwrap()
                .starts_with(&RelPath::new("a/b").unwrap())
        );
        assert_eq!(
            RelPath::child(None, "x").unwrap(),
            RelPath::new("x").unwrap()
        );
        assert_eq!(
            p.to_path(Path::new("/root")),
            PathBuf::from("/root/a/b/c.txt")
        );
    }

    #[test]
    fn from_file_system_paths() {
        let root = Path::new("/sync/folder");
        let p = RelPath::from_path_under(root, Path::new("/sync/folder/x/y")).unwrap();
        assert_eq!(p.as_str(), "x/y");
        assert!(matches!(
            RelPath::from_path_under(root, Path::new("/elsewhere/x")),
            Err(PathError::NotUnderRoot { .. })
        ));
        assert!(matches!(
            RelPath::from_path(Path::new("../x")),
            Err(PathError::NotRelative { .. })
        ));
        assert_eq!(RelPath::from_path(Path::new("")), Err(PathError::Empty));
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_names_are_reported() {
        use std::os::unix::ffi::OsStrExt;
        let name = std::ffi::OsStr::from_bytes(b"bad\xffname");
        let err = RelPath::from_path(Path::new(name)).unwrap_err();
        assert!(matches!(err, PathError::NotUtf8 { .. }));
        assert!(err.to_string().contains("not valid UTF-8"), "{err}");
    }
}
