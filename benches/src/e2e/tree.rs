//! Folder trees: size ([`tree_stats`]), copy ([`copy_tree`]) and byte-for-byte comparison
//! ([`compare_trees`]).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// Files, directories and bytes under a root.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeStats {
    /// Regular files.
    pub files: usize,
    /// Directories (not counting the root).
    pub dirs: usize,
    /// Bytes in regular files.
    pub bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    kind: Kind,
    len: u64,
    mode: u32,
}

/// Every entry under `root`, by path relative to it; symlinks are not followed.
fn walk(root: &Path) -> io::Result<BTreeMap<PathBuf, Entry>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for dirent in fs::read_dir(root.join(&rel))? {
            let dirent = dirent?;
            let path = rel.join(dirent.file_name());
            let meta = fs::symlink_metadata(root.join(&path))?;
            let ft = meta.file_type();
            let kind = if ft.is_file() {
                Kind::File
            } else if ft.is_dir() {
                stack.push(path.clone());
                Kind::Dir
            } else if ft.is_symlink() {
                Kind::Symlink
            } else {
                Kind::Other
            };
            let entry = Entry {
                kind,
                len: meta.len(),
                mode: meta.permissions().mode() & 0o7777,
            };
            out.insert(path, entry);
        }
    }
    Ok(out)
}

/// Counts the files, directories and file bytes under `root`.
pub fn tree_stats(root: &Path) -> io::Result<TreeStats> {
    let mut stats = TreeStats::default();
    for entry in walk(root)?.values() {
        match entry.kind {
            Kind::File => {
                stats.files += 1;
                stats.bytes += entry.len;
            }
            Kind::Dir => stats.dirs += 1,
            Kind::Symlink | Kind::Other => {}
        }
    }
    Ok(stats)
}

/// Copies the regular files and directories under `src` to `dst` (made if missing), with
/// their permissions; returns what was copied.
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<TreeStats> {
    fs::create_dir_all(dst)?;
    let entries = walk(src)?;
    let mut stats = TreeStats::default();
    // BTreeMap order puts every directory before what it holds.
    for (rel, entry) in &entries {
        let to = dst.join(rel);
        match entry.kind {
            Kind::Dir => {
                fs::create_dir_all(&to)?;
                stats.dirs += 1;
            }
            Kind::File => {
                stats.bytes += fs::copy(src.join(rel), &to)?;
                stats.files += 1;
            }
            Kind::Symlink | Kind::Other => {}
        }
    }
    Ok(stats)
}

/// How two trees differ; paths are relative to the roots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeDiff {
    /// Entries only in the left tree.
    pub only_left: Vec<PathBuf>,
    /// Entries only in the right tree.
    pub only_right: Vec<PathBuf>,
    /// Entries of different kinds (file, directory, symlink).
    pub kind: Vec<PathBuf>,
    /// Files whose bytes differ.
    pub content: Vec<PathBuf>,
    /// Files with the same bytes whose permission bits differ.
    pub mode: Vec<PathBuf>,
    /// Files compared byte for byte.
    pub files_compared: usize,
    /// Bytes compared.
    pub bytes_compared: u64,
}

impl TreeDiff {
    /// Same entries, same kinds, same bytes (permission bits are checked by
    /// [`TreeDiff::is_exact`]).
    pub fn is_identical(&self) -> bool {
        self.only_left.is_empty()
            && self.only_right.is_empty()
            && self.kind.is_empty()
            && self.content.is_empty()
    }

    /// Identical, and the files' permission bits are the same too.
    pub fn is_exact(&self) -> bool {
        self.is_identical() && self.mode.is_empty()
    }

    /// A one-line account, naming up to three paths of each kind of difference.
    pub fn describe(&self) -> String {
        if self.is_exact() {
            return format!(
                "identical ({} files, {} bytes)",
                self.files_compared, self.bytes_compared
            );
        }
        let mut parts = Vec::new();
        for (what, paths) in [
            ("only on the left", &self.only_left),
            ("only on the right", &self.only_right),
            ("of another kind", &self.kind),
            ("with other bytes", &self.content),
            ("with other mode bits", &self.mode),
        ] {
            if !paths.is_empty() {
                let some: Vec<_> = paths
                    .iter()
                    .take(3)
                    .map(|p| p.display().to_string())
                    .collect();
                parts.push(format!("{} {what} (e.g. {})", paths.len(), some.join(", ")));
            }
        }
        parts.join("; ")
    }
}

/// Whether two files hold the same bytes.
fn same_bytes(a: &Path, b: &Path) -> io::Result<bool> {
    const BLOCK: usize = 1 << 20;
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; BLOCK], vec![0u8; BLOCK]);
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        if ba.get(..na) != bb.get(..nb) {
            return Ok(false);
        }
        if na < BLOCK {
            return Ok(true);
        }
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..) {
        if rest.is_empty() {
            break;
        }
        match file.read(rest)? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Compares the trees under `left` and `right`: entries, kinds, bytes and permission bits.
pub fn compare_trees(left: &Path, right: &Path) -> io::Result<TreeDiff> {
    let (l, r) = (walk(left)?, walk(right)?);
    let mut diff = TreeDiff::default();
    for (path, le) in &l {
        let Some(re) = r.get(path) else {
            diff.only_left.push(path.clone());
            continue;
        };
        if le.kind != re.kind {
            diff.kind.push(path.clone());
        } else if le.kind == Kind::File {
            diff.files_compared += 1;
            diff.bytes_compared += le.len;
            if le.len != re.len || !same_bytes(&left.join(path), &right.join(path))? {
                diff.content.push(path.clone());
            } else if le.mode != re.mode {
                diff.mode.push(path.clone());
            }
        }
    }
    diff.only_right = r.keys().filter(|p| !l.contains_key(*p)).cloned().collect();
    Ok(diff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, data: &[u8]) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    }

    #[test]
    fn copy_and_compare() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        write(&a, "x/y/z.txt", b"hello");
        write(&a, "x/big.bin", &vec![7u8; 3 << 20]);
        write(&a, "empty", b"");
        fs::create_dir_all(a.join("empty-dir")).unwrap();
        fs::set_permissions(a.join("empty"), fs::Permissions::from_mode(0o755)).unwrap();

        let copied = copy_tree(&a, &b).unwrap();
        assert_eq!(copied, tree_stats(&a).unwrap());
        assert_eq!(
            copied,
            TreeStats {
                files: 3,
                dirs: 3,
                bytes: 5 + (3 << 20)
            }
        );
        let same = compare_trees(&a, &b).unwrap();
        assert!(same.is_exact(), "{}", same.describe());
        assert_eq!(same.files_compared, 3);

        // One byte at the end of the second block.
        let mut big = vec![7u8; 3 << 20];
        big[(2 << 20) + 5] = 8;
        write(&b, "x/big.bin", &big);
        fs::set_permissions(b.join("empty"), fs::Permissions::from_mode(0o644)).unwrap();
        write(&b, "extra", b"!");
        fs::remove_dir(a.join("empty-dir")).unwrap();
        write(&a, "empty-dir", b"now a file");
        let diff = compare_trees(&a, &b).unwrap();
        assert!(!diff.is_identical());
        assert_eq!(diff.content, vec![PathBuf::from("x/big.bin")]);
        assert_eq!(diff.mode, vec![PathBuf::from("empty")]);
        assert_eq!(diff.only_right, vec![PathBuf::from("extra")]);
        assert_eq!(diff.kind, vec![PathBuf::from("empty-dir")]);
        assert!(
            diff.describe()
                .contains("1 with other bytes (e.g. x/big.bin)")
        );

        fs::remove_file(b.join("x/y/z.txt")).unwrap();
        let diff = compare_trees(&a, &b).unwrap();
        assert_eq!(diff.only_left, vec![PathBuf::from("x/y/z.txt")]);
    }
}
