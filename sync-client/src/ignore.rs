//! `.doozignore`: which paths of a synced folder are left alone; see [`IgnoreRules`].

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use ::ignore::Match;
use ::ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::index::RelPath;

/// Name of an ignore file.
pub const IGNORE_FILE_NAME: &str = ".doozignore";

/// Prefix of the temporary files the client writes (downloads land in one, then are renamed).
pub const TEMP_FILE_PREFIX: &str = ".dooz-tmp-";

/// Largest `.doozignore` read; a bigger one is refused as a likely mistake.
pub const MAX_IGNORE_FILE_LEN: u64 = 1024 * 1024;

/// An ignore file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IgnoreError {
    /// The file could not be read.
    #[error("cannot read the ignore file {path:?}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file is larger than [`MAX_IGNORE_FILE_LEN`].
    #[error(
        "the ignore file {path:?} is larger than {MAX_IGNORE_FILE_LEN} bytes; keep it to patterns"
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The file is not UTF-8.
    #[error("the ignore file {path:?} is not valid UTF-8; save it as UTF-8")]
    NotUtf8 {
        /// The file.
        path: PathBuf,
    },
    /// A line is not a valid pattern.
    #[error(
        "the ignore file {path:?}, line {line}: {pattern:?} is not a valid pattern ({reason}); fix or remove the line"
    )]
    BadPattern {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The line.
        pattern: String,
        /// What the pattern parser said.
        reason: String,
    },
}

/// The ignore rules of one synced folder: built-in rules plus the `.doozignore` files loaded.
///
/// A `.doozignore` file in the folder root, or in any directory below it, holds patterns in
/// gitignore syntax, matched relative to the directory holding the file; a deeper file's
/// patterns take precedence, and `!pattern` re-includes. `.doozignore` files themselves sync
/// like any other file, so every device ignores the same paths.
///
/// Always ignored, whatever the files say: the client's own temporary files (names starting with
/// [`TEMP_FILE_PREFIX`]) and the index directory when it lives inside the folder.
///
/// An ignored path is left alone in both directions: the scanner neither records nor deletes
/// it, and a download should not write it.
#[derive(Debug, Clone)]
pub struct IgnoreRules {
    root: PathBuf,
    /// The index directory, when it is inside the folder.
    index_dir: Option<RelPath>,
    /// Matchers by the directory holding the file ("" for the root).
    matchers: BTreeMap<String, Gitignore>,
}

impl IgnoreRules {
    /// Only the built-in rules, for the folder at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            index_dir: None,
            matchers: BTreeMap::new(),
        }
    }

    /// The built-in rules plus `root/.doozignore` if it exists. Nested files are loaded by the
    /// scanner as it walks ([`IgnoreRules::load_dir`]).
    pub fn load(root: impl Into<PathBuf>) -> Result<Self, IgnoreError> {
        let mut rules = Self::new(root);
        rules.load_dir(None)?;
        Ok(rules)
    }

    /// Also ignores the index directory `dir` if it lies inside the folder. Both paths are
    /// compared as given and, where possible, canonicalized.
    pub fn with_index_dir(mut self, dir: &Path) -> Self {
        let inside = |root: &Path, dir: &Path| RelPath::from_path_under(root, dir).ok();
        self.index_dir = inside(&self.root, dir).or_else(|| {
            let root = fs::canonicalize(&self.root).ok()?;
            let dir = fs::canonicalize(dir).ok()?;
            inside(&root, &dir)
        });
        self
    }

    /// The folder root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Loads `<dir>/.doozignore` (`None`: the root's) if it exists; returns whether it did.
    /// Replaces rules loaded earlier for the same directory.
    pub fn load_dir(&mut self, dir: Option<&RelPath>) -> Result<bool, IgnoreError> {
        let dir_path = match dir {
            Some(d) => d.to_path(&self.root),
            None => self.root.clone(),
        };
        let file = dir_path.join(IGNORE_FILE_NAME);
        let key = dir.map_or_else(String::new, |d| d.as_str().to_string());
        let text = match read_limited(&file) {
            Ok(text) => text,
            Err(IgnoreError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                self.matchers.remove(&key);
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        self.add_patterns(dir, &file, &text)?;
        Ok(true)
    }

    /// Adds the rules of an ignore file with contents `text` as if it were in `dir` (`None`:
    /// the root). `file` only names it in errors.
    pub fn add_patterns(
        &mut self,
        dir: Option<&RelPath>,
        file: &Path,
        text: &str,
    ) -> Result<(), IgnoreError> {
        let dir_path = match dir {
            Some(d) => d.to_path(&self.root),
            None => self.root.clone(),
        };
        let mut builder = GitignoreBuilder::new(&dir_path);
        for (i, line) in text.lines().enumerate() {
            builder
                .add_line(Some(file.to_path_buf()), line)
                .map_err(|e| IgnoreError::BadPattern {
                    path: file.to_path_buf(),
                    line: i + 1,
                    pattern: line.to_string(),
                    reason: e.to_string(),
                })?;
        }
        let matcher = builder.build().map_err(|e| IgnoreError::BadPattern {
            path: file.to_path_buf(),
            line: 0,
            pattern: String::new(),
            reason: e.to_string(),
        })?;
        let key = dir.map_or_else(String::new, |d| d.as_str().to_string());
        self.matchers.insert(key, matcher);
        Ok(())
    }

    /// Whether a name is one of the client's temporary files.
    pub fn is_temp_name(name: &str) -> bool {
        name.starts_with(TEMP_FILE_PREFIX)
    }

    /// Whether `path` is ignored: by a built-in rule, or by the deepest loaded `.doozignore`
    /// (in `path`'s ancestors) with a pattern matching `path` or one of its parents.
    pub fn is_ignored(&self, path: &RelPath, is_dir: bool) -> bool {
        if path.components().any(Self::is_temp_name) {
            return true;
        }
        if let Some(index) = &self.index_dir
            && path.starts_with(index)
        {
            return true;
        }
        if self.matchers.is_empty() {
            return false;
        }
        // Ancestor directories, deepest first, each with the path relative to it.
        let s = path.as_str();
        let mut cuts: Vec<usize> = s.match_indices('/').map(|(i, _)| i).collect();
        cuts.reverse();
        let ancestors = cuts
            .into_iter()
            .map(|i| (s.get(..i).unwrap_or(""), s.get(i + 1..).unwrap_or("")))
            .chain(std::iter::once(("", s)));
        for (dir, rel) in ancestors {
            let Some(matcher) = self.matchers.get(dir) else {
                continue;
            };
            match matcher.matched_path_or_any_parents(Path::new(rel), is_dir) {
                Match::Ignore(_) => return true,
                Match::Whitelist(_) => return false,
                Match::None => {}
            }
        }
        false
    }
}

fn read_limited(path: &Path) -> Result<String, IgnoreError> {
    let read_err = |source| IgnoreError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_IGNORE_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_IGNORE_FILE_LEN {
        return Err(IgnoreError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    String::from_utf8(bytes).map_err(|_| IgnoreError::NotUtf8 {
        path: path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    fn rules(root_patterns: &str) -> IgnoreRules {
        let mut r = IgnoreRules::new("/folder");
        r.add_patterns(None, Path::new("/folder/.doozignore"), root_patterns)
            .unwrap();
        r
    }

    #[test]
    fn gitignore_syntax() {
        let r = rules("*.log\n# comment\n\nbuild/\n/top-only\n!keep.log\ndeep/**/x\n");
        assert!(r.is_ignored(&p("a.log"), false));
        assert!(r.is_ignored(&p("sub/dir/b.log"), false));
        assert!(!r.is_ignored(&p("keep.log"), false));
        assert!(r.is_ignored(&p("build"), true));
        assert!(
            !r.is_ignored(&p("build"), false),
            "build/ matches directories only"
        );
        assert!(
            r.is_ignored(&p("build/out.bin"), false),
            "inside an ignored dir"
        );
        assert!(r.is_ignored(&p("top-only"), false));
        assert!(!r.is_ignored(&p("sub/top-only"), false));
        assert!(r.is_ignored(&p("deep/a/b/x"), false));
        assert!(!r.is_ignored(&p("notes.txt"), false));
    }

    #[test]
    fn builtins_always_apply() {
        let mut r = IgnoreRules::new("/folder").with_index_dir(Path::new("/folder/.dooz/index"));
        assert!(r.is_ignored(&p(".dooz-tmp-123"), false));
        assert!(r.is_ignored(&p("a/.dooz-tmp-x/y"), false));
        assert!(r.is_ignored(&p(".dooz/index"), true));
        assert!(r.is_ignored(&p(".dooz/index/db"), false));
        assert!(!r.is_ignored(&p(".dooz"), true));
        assert!(!r.is_ignored(&p("dooz-tmp-not-ours"), false));
        // Re-including does not beat the built-ins.
        r.add_patterns(None, Path::new(".doozignore"), "!.dooz-tmp-*\n")
            .unwrap();
        assert!(r.is_ignored(&p(".dooz-tmp-123"), false));
        // An index outside the folder is not a path in it.
        let r = IgnoreRules::new("/folder").with_index_dir(Path::new("/elsewhere/index"));
        assert!(!r.is_ignored(&p("elsewhere/index"), true));
    }

    #[test]
    fn nested_files_are_relative_and_take_precedence() {
        let mut r = rules("*.tmp\n");
        r.add_patterns(
            Some(&p("proj")),
            Path::new("/folder/proj/.doozignore"),
            "/out\n!important.tmp\n",
        )
        .unwrap();
        assert!(r.is_ignored(&p("proj/out"), true));
        assert!(!r.is_ignored(&p("out"), true), "anchored to proj/");
        assert!(!r.is_ignored(&p("proj/sub/out"), true));
        assert!(
            r.is_ignored(&p("proj/x.tmp"), false),
            "root rules still apply"
        );
        assert!(!r.is_ignored(&p("proj/important.tmp"), false));
        assert!(r.is_ignored(&p("important.tmp"), false));
    }

    #[test]
    fn files_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            !IgnoreRules::load(dir.path())
                .unwrap()
                .is_ignored(&p("x"), false)
        );
        fs::write(dir.path().join(IGNORE_FILE_NAME), "x\n").unwrap();
        let mut r = IgnoreRules::load(dir.path()).unwrap();
        assert!(r.is_ignored(&p("x"), false));
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub").join(IGNORE_FILE_NAME), "y\n").unwrap();
        assert!(r.load_dir(Some(&p("sub"))).unwrap());
        assert!(r.is_ignored(&p("sub/y"), false));
        assert!(!r.load_dir(Some(&p("none"))).unwrap());

        fs::write(dir.path().join(IGNORE_FILE_NAME), b"\xff\xfe").unwrap();
        assert!(matches!(
            IgnoreRules::load(dir.path()),
            Err(IgnoreError::NotUtf8 { .. })
        ));
        fs::write(dir.path().join(IGNORE_FILE_NAME), "ok\n{unclosed\n").unwrap();
        let err = IgnoreRules::load(dir.path()).unwrap_err();
        assert!(
            matches!(err, IgnoreError::BadPattern { line: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("line 2"), "{err}");
    }
}
