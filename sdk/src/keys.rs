//! Keys: which strings name values, and where a value lives in the vault's folder.

use dooz_client::{IGNORE_FILE_NAME, RelPath, TEMP_FILE_PREFIX};

use crate::{Error, Result};

/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 4096;
/// Longest part of a key between two `/`, in bytes (what file systems allow for one name).
pub const MAX_KEY_PART_LEN: usize = 255;

/// Checks `key` and returns its path in the vault.
pub(crate) fn key_path(key: &str) -> Result<RelPath> {
    let invalid = |reason: String| Error::InvalidKey {
        key: key.to_owned(),
        reason,
    };
    if key.len() > MAX_KEY_LEN {
        return Err(invalid(format!("keys are at most {MAX_KEY_LEN} bytes")));
    }
    let path = RelPath::new(key).map_err(|e| invalid(e.to_string()))?;
    for part in path.components() {
        if part.len() > MAX_KEY_PART_LEN {
            return Err(invalid(format!(
                "each '/'-separated part is at most {MAX_KEY_PART_LEN} bytes"
            )));
        }
        if part.starts_with(TEMP_FILE_PREFIX) {
            return Err(invalid(format!(
                "parts starting with {TEMP_FILE_PREFIX:?} are reserved for temporary files"
            )));
        }
        if part == IGNORE_FILE_NAME {
            return Err(invalid(format!(
                "{IGNORE_FILE_NAME:?} is reserved (it holds ignore rules in synced folders)"
            )));
        }
        if part.contains('\\') || part.chars().any(char::is_control) {
            return Err(invalid(
                "parts may not hold '\\' or control characters".to_owned(),
            ));
        }
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        for good in ["a", "notes/2026/today.md", "ünï cödé", "a.b.c"] {
            assert_eq!(
                key_path(good).map(|p| p.as_str().to_owned()).ok(),
                Some(good.to_owned())
            );
        }
        for bad in [
            "",
            "/abs",
            "a//b",
            "a/../b",
            "./a",
            "a/",
            ".dooz-tmp-x",
            "d/.doozignore",
            "a\\b",
            "tab\there",
            "nul\0",
        ] {
            let err = key_path(bad).expect_err(bad);
            assert!(matches!(err, Error::InvalidKey { .. }), "{bad:?}: {err}");
        }
        let long = "x".repeat(MAX_KEY_PART_LEN + 1);
        assert!(key_path(&long).is_err());
        let longest = vec!["y".repeat(200); 30].join("/");
        assert!(key_path(&longest).is_err());
    }
}
