//! Validated blob keys.

use std::fmt;
use std::str::FromStr;

use crate::StorageError;

/// A validated, relative blob key such as `tenant-1/vault-7/chunks/ab12`.
///
/// A key is one or more segments separated by `/`. Each segment is non-empty, is made of ASCII
/// letters, digits, `.`, `_` and `-`, and is neither `.` nor `..`. The whole key is at most
/// [`BlobKey::MAX_LEN`] bytes. These rules make every key a valid object-store path, a safe
/// relative file path on any file system, and impossible to escape a prefix with: there is no way
/// to write `..`, an absolute path, a `#` temporary-file suffix or a percent escape.
///
/// Keys compare and sort as byte strings.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlobKey(String);

impl BlobKey {
    /// The longest key in bytes.
    pub const MAX_LEN: usize = 1024;

    /// Validates `key`.
    ///
    /// # Errors
    ///
    /// [`StorageError::InvalidKey`] saying which rule the key breaks.
    pub fn new(key: &str) -> Result<Self, StorageError> {
        validate(key)?;
        Ok(Self(key.to_owned()))
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }

    /// This key followed by `/` and `rest`, where `rest` is one or more segments.
    ///
    /// # Errors
    ///
    /// [`StorageError::InvalidKey`] if `rest` is not a valid key or the result is too long.
    pub fn join(&self, rest: &str) -> Result<Self, StorageError> {
        validate(rest)?;
        let joined = format!("{}/{rest}", self.0);
        check_len(&joined)?;
        Ok(Self(joined))
    }

    /// This key followed by `/` and another key.
    ///
    /// # Errors
    ///
    /// [`StorageError::InvalidKey`] if the result is longer than [`BlobKey::MAX_LEN`].
    pub fn join_key(&self, rest: &BlobKey) -> Result<Self, StorageError> {
        let joined = format!("{}/{}", self.0, rest.0);
        check_len(&joined)?;
        Ok(Self(joined))
    }

    /// The key's segments, in order.
    pub fn segments(&self) -> impl Iterator<Item = &str> + '_ {
        self.0.split('/')
    }

    /// True if `prefix`'s segments are the first segments of this key; a key starts with
    /// itself. `a/b/c` starts with `a` and `a/b`; `a/bc` does not start with `a/b`.
    pub fn starts_with(&self, prefix: &BlobKey) -> bool {
        self.0 == prefix.0 || self.strip_prefix(prefix).is_some()
    }

    /// The rest of this key below `prefix`, if the key lies strictly under it: `a/b/c` minus `a`
    /// is `b/c`; `a` minus `a` and `ab` minus `a` are `None`.
    pub fn strip_prefix(&self, prefix: &BlobKey) -> Option<BlobKey> {
        let rest = self.0.strip_prefix(prefix.as_str())?.strip_prefix('/')?;
        // The rest of a valid key after a segment boundary is itself a valid key.
        Some(Self(rest.to_owned()))
    }
}

/// Checks every rule, reporting the first one broken.
fn validate(key: &str) -> Result<(), StorageError> {
    if key.is_empty() {
        return Err(StorageError::invalid_key(key, "the key is empty"));
    }
    check_len(key)?;
    if key.starts_with('/') {
        return Err(StorageError::invalid_key(
            key,
            "it starts with '/'; keys are relative",
        ));
    }
    if key.ends_with('/') {
        return Err(StorageError::invalid_key(key, "it ends with '/'"));
    }
    if let Some((i, c)) = key
        .char_indices()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
    {
        return Err(StorageError::invalid_key(
            key,
            format!("it contains {c:?} at byte {i}"),
        ));
    }
    for segment in key.split('/') {
        match segment {
            "" => {
                return Err(StorageError::invalid_key(
                    key,
                    "it has an empty segment ('//')",
                ));
            }
            "." | ".." => {
                return Err(StorageError::invalid_key(
                    key,
                    format!("it has a {segment:?} segment"),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_len(key: &str) -> Result<(), StorageError> {
    if key.len() > BlobKey::MAX_LEN {
        return Err(StorageError::invalid_key(
            key,
            format!(
                "it is {} bytes long; the limit is {}",
                key.len(),
                BlobKey::MAX_LEN
            ),
        ));
    }
    Ok(())
}

impl fmt::Debug for BlobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobKey({:?})", self.0)
    }
}

impl fmt::Display for BlobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for BlobKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for BlobKey {
    type Err = StorageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for BlobKey {
    type Error = StorageError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl TryFrom<String> for BlobKey {
    type Error = StorageError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        validate(&s)?;
        Ok(Self(s))
    }
}

impl From<BlobKey> for String {
    fn from(key: BlobKey) -> Self {
        key.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(key: &str) -> String {
        match BlobKey::new(key) {
            Err(StorageError::InvalidKey { reason, .. }) => reason,
            other => panic!("{key:?} should be rejected, got {other:?}"),
        }
    }

    #[test]
    fn accepts_valid_keys() {
        for key in [
            "a",
            "A-Z_a.z-0",
            "tenant-1/vault-2/chunks/ab/ab12cd",
            "...",
            ".hidden/x..y",
            "-",
        ] {
            assert_eq!(BlobKey::new(key).unwrap().as_str(), key);
        }
        let max = "k".repeat(BlobKey::MAX_LEN);
        assert!(BlobKey::new(&max).is_ok());
    }

    #[test]
    fn rejects_invalid_keys_with_reasons() {
        assert!(reason("").contains("empty"));
        assert!(reason("/a").contains("starts with '/'"));
        assert!(reason("a/").contains("ends with '/'"));
        assert!(reason("a//b").contains("empty segment"));
        assert!(reason(".").contains("\".\""));
        assert!(reason("..").contains("\"..\""));
        assert!(reason("a/../b").contains("\"..\""));
        assert!(reason("a/./b").contains("\".\""));
        assert!(reason("a b").contains("' ' at byte 1"));
        assert!(reason("a\\b").contains("'\\\\'"));
        assert!(reason("a#1").contains("'#'"));
        assert!(reason("a%2Fb").contains("'%'"));
        assert!(reason("a?b").contains("'?'"));
        assert!(reason("é").contains("'é'"));
        assert!(reason("a\0b").contains("'\\0'"));
        assert!(reason(&"k".repeat(BlobKey::MAX_LEN + 1)).contains("1025 bytes"));
    }

    #[test]
    fn error_message_explains_the_rules() {
        let msg = BlobKey::new("a b").unwrap_err().to_string();
        assert!(
            msg.contains("\"a b\"") && msg.contains("at most 1024 bytes"),
            "{msg}"
        );
    }

    #[test]
    fn join_validates_and_cannot_escape() {
        let base = BlobKey::new("t/v").unwrap();
        assert_eq!(base.join("chunks/x").unwrap().as_str(), "t/v/chunks/x");
        assert!(base.join("..").is_err());
        assert!(base.join("../other").is_err());
        assert!(base.join("/abs").is_err());
        assert!(base.join("").is_err());
        let long = BlobKey::new(&"k".repeat(BlobKey::MAX_LEN)).unwrap();
        assert!(base.join_key(&long).is_err());
        assert!(base.join(long.as_str()).is_err());
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let key = BlobKey::new("a/b/c").unwrap();
        let a = BlobKey::new("a").unwrap();
        let ab = BlobKey::new("a/b").unwrap();
        assert_eq!(key.strip_prefix(&a).unwrap().as_str(), "b/c");
        assert_eq!(key.strip_prefix(&ab).unwrap().as_str(), "c");
        assert!(key.strip_prefix(&key).is_none());
        assert!(key.starts_with(&key) && key.starts_with(&a));
        let abc = BlobKey::new("a/bc/x").unwrap();
        assert!(abc.strip_prefix(&ab).is_none());
        assert!(!abc.starts_with(&ab));
        assert_eq!(key.segments().collect::<Vec<_>>(), ["a", "b", "c"]);
    }

    #[test]
    fn conversions_validate() {
        assert!(BlobKey::try_from(String::from("a/../b")).is_err());
        assert!("a/b".parse::<BlobKey>().is_ok());
        assert_eq!(
            format!("{:?}", BlobKey::new("x").unwrap()),
            "BlobKey(\"x\")"
        );
        assert_eq!(String::from(BlobKey::new("x/y").unwrap()), "x/y");
    }
}
