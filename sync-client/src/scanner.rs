//! The scanner: walks a vault's folder and brings the local-state tree up to date; see
//! [`Scanner`].

use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, Metadata};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use dooz_crypto::ChunkId;

use crate::chunking::{Chunker, StreamChunker};
use crate::ignore::{IGNORE_FILE_NAME, IgnoreError, IgnoreRules};
use crate::index::{
    ChunkRef, ContentHash, EntryKind, EntryState, IndexError, LocalEntry, PathError, RelPath,
    VaultIndex,
};

/// Files modified this close before a scan started are rehashed by the next scan (2 s covers
/// the coarsest common mtime granularity, FAT's).
pub const RACY_WINDOW_NS: i64 = 2_000_000_000;

/// How often, in hashed bytes, progress is reported within one file.
const PROGRESS_EVERY_BYTES: u64 = 4 * 1024 * 1024;

/// A scan could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScanError {
    /// The folder root cannot be read.
    #[error(
        "cannot read the synced folder {path:?}: {source}; check that it exists and is readable"
    )]
    Root {
        /// The folder.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A `.doozignore` file is unusable.
    #[error(transparent)]
    Ignore(#[from] IgnoreError),
    /// The index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
}

/// Why the scanner passed over a path.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SkipReason {
    /// A symbolic link (not followed, not synced yet).
    Symlink,
    /// A socket, FIFO or device file.
    Special,
    /// The name cannot be synced (for example, not UTF-8).
    BadName(PathError),
    /// The file or directory could not be read; its index entries were kept.
    Unreadable(String),
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Symlink => f.write_str("symbolic links are not synced yet"),
            SkipReason::Special => f.write_str("sockets, FIFOs and device files are not synced"),
            SkipReason::BadName(e) => write!(f, "{e}"),
            SkipReason::Unreadable(e) => write!(f, "cannot be read: {e}"),
        }
    }
}

/// A path the scanner passed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The path relative to the folder (lossy for names that are not UTF-8).
    pub path: String,
    /// Why.
    pub reason: SkipReason,
}

/// What a scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Files and directories looked at (not counting ignored ones).
    pub scanned: u64,
    /// Files read and hashed.
    pub hashed_files: u64,
    /// Bytes read and hashed.
    pub hashed_bytes: u64,
    /// New entries in the local-state tree.
    pub added: u64,
    /// Entries whose state changed (content, kind, mode, or a file's mtime).
    pub modified: u64,
    /// Entries removed from the local-state tree.
    pub deleted: u64,
    /// Paths ignored by `.doozignore` or a built-in rule (ignored directories count once).
    pub ignored: u64,
    /// Paths passed over, and why.
    pub skipped: Vec<Skipped>,
    /// Files that changed while being read: left as they were, rescan later.
    pub unstable: Vec<RelPath>,
}

impl ScanReport {
    /// Whether the scan changed the local-state tree.
    pub fn changed(&self) -> bool {
        self.added + self.modified + self.deleted > 0
    }
}

/// Progress of a running scan, for progress bars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanProgress {
    /// Files and directories looked at so far.
    pub scanned: u64,
    /// Files hashed so far (including the one being hashed).
    pub hashed_files: u64,
    /// Bytes hashed so far.
    pub hashed_bytes: u64,
}

/// Scans a vault's folder into its local-state tree.
///
/// - **Cheap first.** A file whose size, mtime and inode match its local-state entry is not
///   read. Only new or changed files are chunked, their chunk ids computed and their content
///   hashed (BLAKE3), streaming through one reused buffer: memory does not grow with file size
///   (beyond the file's chunk list, 36 bytes per chunk).
/// - **Racily clean files.** A file modified less than [`RACY_WINDOW_NS`] before the scan
///   started could be modified again within the same mtime tick without its size or mtime
///   changing; its entry is marked `racy` and the next scan rehashes it.
/// - **Moving targets.** A file whose size, mtime or inode changed while it was read is left as
///   it was in the index and reported in [`ScanReport::unstable`]; the next scan picks it up.
///   A file or directory that vanishes mid-scan counts as deleted.
/// - **Never a false deletion.** A directory that cannot be read keeps its entries; so do
///   unreadable files and ignored paths.
/// - Symlinks are not followed and not synced yet: they are reported in
///   [`ScanReport::skipped`] with a warning. So are sockets, FIFOs and device files, and names
///   that are not UTF-8.
///
/// Writes to the local-state tree are flushed once, at the end of the scan.
///
///
/// `F` names a chunk's plaintext: the vault's keyed chunk id, usually
/// `|data| keys.chunk_id(data)` with the vault's `dooz_crypto::VaultIdentityKeys`, and the
/// chunker is seeded with the same keys' `chunker_seed()`.
///
/// ```
/// use dooz_client::{Chunker, ChunkerConfig, Index, Scanner};
/// use dooz_crypto::{VaultId, VaultIdentityKeys, VaultKey};
///
/// let folder = tempfile::tempdir()?;
/// std::fs::write(folder.path().join("hello.txt"), b"hello")?;
/// let index = Index::open(folder.path().join(".dooz-index"))?;
///
/// let vault = VaultId::generate()?;
/// let keys = VaultIdentityKeys::derive(vault, &VaultKey::generate()?);
/// let vault_index = index.add_vault(vault, folder.path())?;
///
/// let chunker = Chunker::new(ChunkerConfig::DEFAULT, keys.chunker_seed().as_bytes());
/// let mut scanner = Scanner::new(chunker, |data: &[u8]| keys.chunk_id(data));
/// let report = scanner.scan(&vault_index)?;
/// assert_eq!((report.added, report.hashed_bytes), (1, 5)); // the index dir is ignored
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Scanner<F> {
    chunker: Chunker,
    chunk_id: F,
    buffer: Vec<u8>,
    rules: Option<IgnoreRules>,
}

impl<F> fmt::Debug for Scanner<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scanner")
            .field("chunker", &self.chunker)
            .finish_non_exhaustive()
    }
}

/// The attributes compared to decide whether a file changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stat {
    size: u64,
    mtime_ns: i64,
    inode: u64,
    mode: u32,
}

impl Stat {
    #[cfg(unix)]
    fn of(meta: &Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            size: meta.len(),
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
            inode: meta.ino(),
            mode: meta.mode() & 0o7777,
        }
    }

    #[cfg(not(unix))]
    fn of(meta: &Metadata) -> Self {
        let mtime_ns = meta.modified().ok().map_or(0, system_time_ns);
        Self {
            size: meta.len(),
            mtime_ns,
            inode: 0,
            mode: if meta.permissions().readonly() {
                0o444
            } else {
                0o644
            },
        }
    }
}

fn system_time_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

/// What became of one directory entry.
enum Seen {
    /// It exists (or is kept: ignored, unreadable).
    Present,
    /// It is gone or not syncable: its index entry goes.
    Absent,
}

/// One scan's state.
struct Walk<'a> {
    vault: &'a VaultIndex,
    root: PathBuf,
    rules: IgnoreRules,
    started_ns: i64,
    report: ScanReport,
    progress: &'a mut dyn FnMut(&ScanProgress),
}

impl Walk<'_> {
    fn skip(&mut self, path: String, reason: SkipReason) {
        match &reason {
            SkipReason::Symlink | SkipReason::Special => {
                tracing::debug!(path, %reason, "skipping");
            }
            _ => tracing::warn!(path, %reason, "skipping"),
        }
        self.report.skipped.push(Skipped { path, reason });
    }

    fn progress(&mut self) {
        (self.progress)(&ScanProgress {
            scanned: self.report.scanned,
            hashed_files: self.report.hashed_files,
            hashed_bytes: self.report.hashed_bytes,
        });
    }

    /// Removes `path`'s entry and, for a directory, every entry below it, except ignored ones.
    fn remove_entry(&mut self, path: &RelPath, was_dir: bool) -> Result<(), ScanError> {
        self.vault.remove_local(path)?;
        self.report.deleted += 1;
        if was_dir {
            self.remove_below(path)?;
        }
        Ok(())
    }

    /// Removes every entry strictly below `dir`, except ignored ones.
    fn remove_below(&mut self, dir: &RelPath) -> Result<(), ScanError> {
        let prefix = format!("{dir}/");
        let mut doomed = Vec::new();
        for item in self.vault.local_tree().scan_prefix(prefix.as_bytes()) {
            let (key, value) = item.map_err(|source| IndexError::Storage {
                action: "listing a deleted directory",
                source,
            })?;
            let is_dir = value_is_dir(&value);
            let Ok(path) = RelPath::from_key(&key) else {
                continue;
            };
            if !self.rules.is_ignored(&path, is_dir) {
                doomed.push(path);
            }
        }
        for path in doomed {
            self.vault.remove_local(&path)?;
            self.report.deleted += 1;
        }
        Ok(())
    }

    /// Scans one directory: records its children, queues its subdirectories on `stack`, and
    /// removes index entries of children that are gone.
    fn dir<F: Fn(&[u8]) -> ChunkId>(
        &mut self,
        scanner: &mut Scanner<F>,
        dir: Option<&RelPath>,
        stack: &mut Vec<RelPath>,
    ) -> Result<(), ScanError> {
        let abs = dir.map_or_else(|| self.root.clone(), |d| d.to_path(&self.root));
        let listing = match list_dir(&abs) {
            Ok(listing) => listing,
            Err(source) if dir.is_none() => {
                return Err(ScanError::Root { path: abs, source });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                let shown = dir.map_or_else(String::new, ToString::to_string);
                self.skip(shown, SkipReason::Unreadable(e.to_string()));
                return Ok(());
            }
        };
        if listing.iter().any(|(name, _)| name == IGNORE_FILE_NAME) {
            self.rules.load_dir(dir)?;
        }

        let mut present: HashSet<String> = HashSet::with_capacity(listing.len());
        for (name, file_type) in listing {
            let Some(name) = name.to_str().map(str::to_string) else {
                let shown = match dir {
                    Some(d) => format!("{d}/{}", name.to_string_lossy()),
                    None => name.to_string_lossy().into_owned(),
                };
                let reason = SkipReason::BadName(PathError::NotUtf8 {
                    path: shown.clone(),
                });
                self.skip(shown, reason);
                continue;
            };
            let child = match RelPath::child(dir, &name) {
                Ok(child) => child,
                Err(e) => {
                    self.skip(name, SkipReason::BadName(e));
                    continue;
                }
            };
            let seen = self.child(scanner, &child, file_type, stack)?;
            if let Seen::Present = seen {
                present.insert(name);
            }
            self.progress();
        }
        self.remove_gone(dir, &present)
    }

    /// Records one child of a directory.
    fn child<F: Fn(&[u8]) -> ChunkId>(
        &mut self,
        scanner: &mut Scanner<F>,
        child: &RelPath,
        file_type: io::Result<fs::FileType>,
        stack: &mut Vec<RelPath>,
    ) -> Result<Seen, ScanError> {
        let abs = child.to_path(&self.root);
        let file_type = match file_type {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Seen::Absent),
            Err(e) => {
                self.skip(child.to_string(), SkipReason::Unreadable(e.to_string()));
                return Ok(Seen::Present);
            }
        };
        if self.rules.is_ignored(child, file_type.is_dir()) {
            self.report.ignored += 1;
            return Ok(Seen::Present);
        }
        let existing = self.vault.local(child)?;
        let was_dir = existing
            .as_ref()
            .is_some_and(|e| e.state.kind == EntryKind::Dir);

        if file_type.is_dir() {
            let meta = match fs::symlink_metadata(&abs) {
                Ok(m) if m.is_dir() => m,
                Ok(_) => return Ok(Seen::Present), // replaced mid-scan; next scan sees it
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Seen::Absent),
                Err(e) => {
                    self.skip(child.to_string(), SkipReason::Unreadable(e.to_string()));
                    return Ok(Seen::Present);
                }
            };
            self.report.scanned += 1;
            let stat = Stat::of(&meta);
            let state = EntryState::dir(stat.mode, stat.mtime_ns);
            let changed = match &existing {
                None => {
                    self.report.added += 1;
                    true
                }
                Some(e) if !e.state.same_state(&state) => {
                    self.report.modified += 1;
                    true
                }
                Some(e) => e.inode != stat.inode,
            };
            if changed {
                self.vault.put_local(
                    child,
                    &LocalEntry {
                        state,
                        inode: stat.inode,
                        chunks: Vec::new(),
                        racy: false,
                    },
                )?;
            }
            stack.push(child.clone());
            return Ok(Seen::Present);
        }

        // Anything but a directory: a directory that was here is gone, with its subtree.
        if was_dir {
            self.remove_below(child)?;
        }
        if file_type.is_file() {
            return self.file(scanner, child, &abs, existing);
        }
        let reason = if file_type.is_symlink() {
            SkipReason::Symlink
        } else {
            SkipReason::Special
        };
        self.skip(child.to_string(), reason);
        Ok(Seen::Absent)
    }

    /// Records one regular file, hashing it if its size, mtime or inode changed.
    fn file<F: Fn(&[u8]) -> ChunkId>(
        &mut self,
        scanner: &mut Scanner<F>,
        child: &RelPath,
        abs: &Path,
        existing: Option<LocalEntry>,
    ) -> Result<Seen, ScanError> {
        let meta = match fs::symlink_metadata(abs) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Seen::Absent),
            Err(e) => {
                self.skip(child.to_string(), SkipReason::Unreadable(e.to_string()));
                return Ok(Seen::Present);
            }
        };
        self.report.scanned += 1;
        let stat = Stat::of(&meta);
        if let Some(e) = &existing {
            let s = &e.state;
            if s.kind == EntryKind::File
                && !e.racy
                && s.size == stat.size
                && s.mtime_ns == stat.mtime_ns
                && e.inode == stat.inode
            {
                if s.mode != stat.mode {
                    let mut updated = e.clone();
                    updated.state.mode = stat.mode;
                    self.vault.put_local(child, &updated)?;
                    self.report.modified += 1;
                }
                return Ok(Seen::Present);
            }
        }

        let file = match File::open(abs) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Seen::Absent),
            Err(e) => {
                self.skip(child.to_string(), SkipReason::Unreadable(e.to_string()));
                return Ok(Seen::Present);
            }
        };
        let before = match file.metadata() {
            Ok(m) if m.is_file() => Stat::of(&m),
            Ok(_) => {
                // Replaced by something else between the listing and the open.
                self.report.unstable.push(child.clone());
                return Ok(Seen::Present);
            }
            Err(e) => {
                self.skip(child.to_string(), SkipReason::Unreadable(e.to_string()));
                return Ok(Seen::Present);
            }
        };

        self.report.hashed_files += 1;
        let hashed = scanner.hash(&file, |bytes| {
            self.report.hashed_bytes += bytes;
            (self.progress)(&ScanProgress {
                scanned: self.report.scanned,
                hashed_files: self.report.hashed_files,
                hashed_bytes: self.report.hashed_bytes,
            });
        });
        let (chunks, content_hash, read) = match hashed {
            Ok(h) => h,
            Err(e) => {
                self.skip(child.to_string(), SkipReason::Unreadable(e.to_string()));
                return Ok(Seen::Present);
            }
        };

        // Stable: same size and mtime on the open handle, all of it read, and the path still
        // names the same file.
        let after = file.metadata().ok().map(|m| Stat::of(&m));
        let now = fs::symlink_metadata(abs).ok().map(|m| Stat::of(&m));
        let stable = after == Some(before) && now == Some(before) && read == before.size;
        if !stable {
            tracing::debug!(path = %child, "file changed while being read; will rescan");
            self.report.unstable.push(child.clone());
            return Ok(Seen::Present);
        }

        let entry = LocalEntry {
            state: EntryState {
                kind: EntryKind::File,
                size: before.size,
                mode: before.mode,
                mtime_ns: before.mtime_ns,
                content_hash,
            },
            inode: before.inode,
            chunks,
            racy: before.mtime_ns.saturating_add(RACY_WINDOW_NS) >= self.started_ns,
        };
        match &existing {
            None => self.report.added += 1,
            Some(e) if !e.state.same_state(&entry.state) => self.report.modified += 1,
            Some(_) => {}
        }
        if existing.as_ref() != Some(&entry) {
            self.vault.put_local(child, &entry)?;
        }
        Ok(Seen::Present)
    }

    /// Removes index entries that are direct children of `dir` and not in `present` (unless
    /// ignored), with their subtrees.
    fn remove_gone(
        &mut self,
        dir: Option<&RelPath>,
        present: &HashSet<String>,
    ) -> Result<(), ScanError> {
        let prefix = dir.map_or_else(Vec::new, |d| format!("{d}/").into_bytes());
        let tree = self.vault.local_tree().clone();
        let mut gone = Vec::new();
        let mut iter = tree.range(prefix.clone()..);
        while let Some(item) = iter.next() {
            let (key, value) = item.map_err(|source| IndexError::Storage {
                action: "listing a directory's entries",
                source,
            })?;
            let Some(rest) = key.strip_prefix(prefix.as_slice()) else {
                break;
            };
            if let Some(slash) = rest.iter().position(|&b| b == b'/') {
                // A deeper entry: jump past this child's subtree ('0' sorts right after '/').
                let mut next = key.get(..prefix.len() + slash).unwrap_or(&key).to_vec();
                next.push(b'0');
                iter = tree.range(next..);
                continue;
            }
            let name = String::from_utf8_lossy(rest);
            if present.contains(name.as_ref()) {
                continue;
            }
            let Ok(path) = RelPath::from_key(&key) else {
                continue;
            };
            let is_dir = value_is_dir(&value);
            if !self.rules.is_ignored(&path, is_dir) {
                gone.push((path, is_dir));
            }
        }
        for (path, is_dir) in gone {
            self.remove_entry(&path, is_dir)?;
        }
        Ok(())
    }
}

/// Whether a stored local entry is a directory (an undecodable one counts as not).
fn value_is_dir(value: &[u8]) -> bool {
    crate::index::decode_local_kind(value) == Some(EntryKind::Dir)
}

/// A directory's entries, sorted by name, with their types (not following symlinks).
fn list_dir(dir: &Path) -> io::Result<Vec<(OsString, io::Result<fs::FileType>)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        out.push((entry.file_name(), entry.file_type()));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

impl<F: Fn(&[u8]) -> ChunkId> Scanner<F> {
    /// A scanner cutting with `chunker` and naming chunks with `chunk_id`.
    pub fn new(chunker: Chunker, chunk_id: F) -> Self {
        Self {
            chunker,
            chunk_id,
            buffer: Vec::new(),
            rules: None,
        }
    }

    /// The ignore rules the last scan used (`.doozignore` files as found by it), if any scan
    /// ran. Downloads should skip paths they ignore.
    pub fn ignore_rules(&self) -> Option<&IgnoreRules> {
        self.rules.as_ref()
    }

    /// Scans the vault's folder (its bound root) into its local-state tree.
    pub fn scan(&mut self, vault: &VaultIndex) -> Result<ScanReport, ScanError> {
        self.scan_with_progress(vault, &mut |_| {})
    }

    /// As [`Scanner::scan`], calling `progress` after each file and every few MiB hashed.
    pub fn scan_with_progress(
        &mut self,
        vault: &VaultIndex,
        progress: &mut dyn FnMut(&ScanProgress),
    ) -> Result<ScanReport, ScanError> {
        let root = vault.meta()?.root;
        let rules = IgnoreRules::new(root.clone()).with_index_dir(vault.index().path());
        let mut walk = Walk {
            vault,
            root,
            rules,
            started_ns: system_time_ns(SystemTime::now()),
            report: ScanReport::default(),
            progress,
        };
        // Depth first; `stack` holds the directories still to scan.
        let mut stack = Vec::new();
        walk.dir(self, None, &mut stack)?;
        while let Some(dir) = stack.pop() {
            walk.dir(self, Some(&dir), &mut stack)?;
        }
        vault.flush()?;
        self.rules = Some(walk.rules);
        Ok(walk.report)
    }

    /// Chunks and hashes `file` to its end: its chunks, content hash and length. Calls
    /// `on_bytes` with the bytes hashed since the last call, every few MiB and at the end.
    fn hash(
        &mut self,
        file: &File,
        mut on_bytes: impl FnMut(u64),
    ) -> Result<(Vec<ChunkRef>, ContentHash, u64), crate::chunking::ChunkError> {
        let buffer = std::mem::take(&mut self.buffer);
        let mut stream = StreamChunker::with_buffer(self.chunker.clone(), file, buffer);
        let mut hasher = blake3::Hasher::new();
        let mut chunks = Vec::new();
        let mut total = 0u64;
        let mut unreported = 0u64;
        let result = loop {
            match stream.next_chunk() {
                Ok(Some(chunk)) => {
                    let len = chunk.data.len() as u64;
                    hasher.update(chunk.data);
                    chunks.push(ChunkRef {
                        id: (self.chunk_id)(chunk.data),
                        // Chunks are at most 16 MiB (`ChunkerConfig` enforces it).
                        len: u32::try_from(len).unwrap_or(u32::MAX),
                    });
                    total += len;
                    unreported += len;
                    if unreported >= PROGRESS_EVERY_BYTES {
                        on_bytes(unreported);
                        unreported = 0;
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        on_bytes(unreported);
        let (_, buffer) = stream.into_parts();
        self.buffer = buffer;
        result.map(|()| (chunks, ContentHash(*hasher.finalize().as_bytes()), total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunking::ChunkerConfig;
    use crate::index::{Change, Index};
    use dooz_crypto::VaultId;
    use filetime::FileTime;
    use std::collections::BTreeMap;

    const PAST: i64 = 1_600_000_000;

    struct Folder {
        _dir: tempfile::TempDir,
        root: PathBuf,
        vault: VaultIndex,
    }

    impl Folder {
        /// A folder with its index outside it.
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("folder");
            fs::create_dir(&root).unwrap();
            let index = Index::open(dir.path().join("index")).unwrap();
            let vault = index.add_vault(VaultId([1; 16]), &root).unwrap();
            Self {
                _dir: dir,
                root,
                vault,
            }
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.root.join(rel)
        }

        /// Writes a file with an mtime far in the past (so it is not racily clean).
        fn write(&self, rel: &str, content: &[u8]) {
            let path = self.path(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, content).unwrap();
            set_mtime(&path, PAST);
        }

        fn scan(&self) -> ScanReport {
            scanner().scan(&self.vault).unwrap()
        }

        fn entries(&self) -> BTreeMap<String, LocalEntry> {
            self.vault
                .local_entries()
                .map(|r| r.map(|(p, e)| (p.to_string(), e)).unwrap())
                .collect()
        }

        fn entry(&self, rel: &str) -> LocalEntry {
            self.vault
                .local(&RelPath::new(rel).unwrap())
                .unwrap()
                .unwrap()
        }
    }

    fn set_mtime(path: &Path, secs: i64) {
        filetime::set_file_mtime(path, FileTime::from_unix_time(secs, 0)).unwrap();
    }

    fn chunk_id(data: &[u8]) -> ChunkId {
        ChunkId::from_bytes(*blake3::keyed_hash(&[5; 32], data).as_bytes())
    }

    fn scanner() -> Scanner<fn(&[u8]) -> ChunkId> {
        Scanner::new(
            Chunker::new(ChunkerConfig::DEFAULT, &[7; 32]),
            chunk_id as fn(&[u8]) -> ChunkId,
        )
    }

    fn noise(len: usize, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    /// A mixed tree: returns the total file bytes.
    fn populate(f: &Folder) -> u64 {
        f.write("a.txt", b"hello");
        f.write("big.bin", &noise(300_000, 1));
        f.write("empty", b"");
        f.write("dir/sub/nested.txt", b"nested");
        fs::create_dir_all(f.path("dir/empty-dir")).unwrap();
        5 + 300_000 + 6
    }

    #[test]
    fn first_scan_hashes_everything_second_nothing() {
        let f = Folder::new();
        let bytes = populate(&f);
        let r = f.scan();
        assert_eq!(r.hashed_files, 4);
        assert_eq!(r.hashed_bytes, bytes);
        // 4 files + dir, dir/sub, dir/empty-dir.
        assert_eq!((r.scanned, r.added, r.modified, r.deleted), (7, 7, 0, 0));
        assert!(r.skipped.is_empty() && r.unstable.is_empty());
        let entries = f.entries();
        let names: Vec<_> = entries.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "a.txt",
                "big.bin",
                "dir",
                "dir/empty-dir",
                "dir/sub",
                "dir/sub/nested.txt",
                "empty"
            ]
        );

        // Chunks tile the content, ids and hash are of the content.
        let big = noise(300_000, 1);
        let e = &entries["big.bin"];
        assert_eq!(e.state.kind, EntryKind::File);
        assert_eq!(e.state.size, 300_000);
        assert_eq!(e.state.content_hash, ContentHash::of(&big));
        assert_eq!(e.state.mtime_ns, PAST * 1_000_000_000);
        assert!(e.chunks.len() > 2, "{} chunks", e.chunks.len());
        let mut offset = 0usize;
        for c in &e.chunks {
            let end = offset + c.len as usize;
            assert_eq!(c.id, chunk_id(&big[offset..end]));
            offset = end;
        }
        assert_eq!(offset, big.len());
        assert!(!e.racy);
        assert_ne!(e.inode, 0);
        let empty = &entries["empty"];
        assert_eq!((empty.state.size, empty.chunks.len()), (0, 0));
        assert_eq!(empty.state.content_hash, ContentHash::empty());
        assert_eq!(entries["dir/empty-dir"].state.kind, EntryKind::Dir);

        // Everything is a local change against an empty base.
        let changes = f.vault.local_changes().unwrap();
        assert_eq!(changes.len(), 7);
        assert!(changes.iter().all(|c| matches!(c, Change::Added { .. })));

        let again = f.scan();
        assert_eq!(again.hashed_bytes, 0);
        assert_eq!(again.hashed_files, 0);
        assert_eq!(again.scanned, 7);
        assert!(!again.changed(), "{again:?}");
        assert_eq!(f.entries(), entries);
    }

    #[test]
    fn touching_one_file_rehashes_only_it() {
        let f = Folder::new();
        populate(&f);
        f.scan();
        set_mtime(&f.path("dir/sub/nested.txt"), PAST + 10);
        let r = f.scan();
        assert_eq!((r.hashed_files, r.hashed_bytes), (1, 6));
        assert_eq!((r.added, r.modified, r.deleted), (0, 1, 0));
        let e = f.entry("dir/sub/nested.txt");
        assert_eq!(e.state.mtime_ns, (PAST + 10) * 1_000_000_000);

        // Same size, new content: found through the mtime, content hash changes.
        let before = f.entry("a.txt");
        f.write("a.txt", b"HELLO");
        set_mtime(&f.path("a.txt"), PAST + 20);
        let r = f.scan();
        assert_eq!((r.hashed_files, r.hashed_bytes, r.modified), (1, 5, 1));
        let after = f.entry("a.txt");
        assert_ne!(after.state.content_hash, before.state.content_hash);
        assert_eq!(after.state.content_hash, ContentHash::of(b"HELLO"));

        // Replaced by a new file (new inode), same size and mtime: rehashed too.
        let tmp = f.path("replacement");
        fs::write(&tmp, b"HELLO").unwrap();
        set_mtime(&tmp, PAST + 20);
        fs::rename(&tmp, f.path("a.txt")).unwrap();
        let r = f.scan();
        assert_eq!((r.hashed_files, r.modified), (1, 0), "{r:?}");
        assert_ne!(f.entry("a.txt").inode, after.inode);
    }

    #[test]
    fn deletions_and_new_directories() {
        let f = Folder::new();
        populate(&f);
        f.scan();
        fs::remove_file(f.path("a.txt")).unwrap();
        fs::remove_dir_all(f.path("dir")).unwrap();
        f.write("new/deeper/file", b"new");
        let r = f.scan();
        // a.txt, dir, dir/sub, dir/sub/nested.txt, dir/empty-dir.
        assert_eq!(r.deleted, 5);
        // new, new/deeper, new/deeper/file.
        assert_eq!(r.added, 3);
        assert_eq!((r.hashed_files, r.hashed_bytes), (1, 3));
        let names: Vec<_> = f.entries().into_keys().collect();
        assert_eq!(
            names,
            ["big.bin", "empty", "new", "new/deeper", "new/deeper/file"]
        );
    }

    #[test]
    fn kind_changes_replace_subtrees() {
        let f = Folder::new();
        f.write("x/inner/file", b"1");
        f.write("y", b"2");
        f.scan();
        fs::remove_dir_all(f.path("x")).unwrap();
        f.write("x", b"now a file");
        fs::remove_file(f.path("y")).unwrap();
        f.write("y/child", b"3");
        let r = f.scan();
        let entries = f.entries();
        let names: Vec<_> = entries.keys().map(String::as_str).collect();
        assert_eq!(names, ["x", "y", "y/child"]);
        assert_eq!(entries["x"].state.kind, EntryKind::File);
        assert_eq!(entries["y"].state.kind, EntryKind::Dir);
        // x/inner and x/inner/file deleted; x and y changed kind; y/child added.
        assert_eq!((r.deleted, r.modified, r.added), (2, 2, 1), "{r:?}");
    }

    #[test]
    fn doozignore_is_respected() {
        let f = Folder::new();
        f.write(".doozignore", b"*.log\nbuild/\n");
        f.write("a.log", b"log");
        f.write("build/out.bin", b"out");
        f.write("keep.txt", b"keep");
        f.write("sub/.doozignore", b"secret.txt\n");
        f.write("sub/secret.txt", b"s");
        f.write("sub/ok.txt", b"ok");
        f.write("secret.txt", b"not ignored at the root");
        f.write(".dooz-tmp-123", b"partial download");
        let r = f.scan();
        let names: Vec<_> = f.entries().into_keys().collect();
        assert_eq!(
            names,
            [
                ".doozignore",
                "keep.txt",
                "secret.txt",
                "sub",
                "sub/.doozignore",
                "sub/ok.txt"
            ]
        );
        // a.log, build, .dooz-tmp-123, sub/secret.txt.
        assert_eq!(r.ignored, 4);
        assert!(f.scanner_rules_ignore("sub/secret.txt"));

        // Ignoring a path already synced freezes it: no deletion, even once it is gone.
        f.write(".doozignore", b"*.log\nbuild/\nkeep.txt\n");
        set_mtime(&f.path(".doozignore"), PAST + 1);
        fs::remove_file(f.path("keep.txt")).unwrap();
        let r = f.scan();
        assert_eq!(r.deleted, 0, "{r:?}");
        assert!(f.entries().contains_key("keep.txt"));
    }

    impl Folder {
        fn scanner_rules_ignore(&self, rel: &str) -> bool {
            let mut s = scanner();
            s.scan(&self.vault).unwrap();
            s.ignore_rules()
                .unwrap()
                .is_ignored(&RelPath::new(rel).unwrap(), false)
        }
    }

    #[test]
    fn index_inside_the_folder_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path().join(".dooz")).unwrap();
        let vault = index.add_vault(VaultId([2; 16]), dir.path()).unwrap();
        fs::write(dir.path().join("file"), b"x").unwrap();
        let r = scanner().scan(&vault).unwrap();
        assert_eq!((r.added, r.ignored), (1, 1));
    }

    #[cfg(unix)]
    #[test]
    fn mode_bits_are_recorded_without_rehashing() {
        use std::os::unix::fs::PermissionsExt;
        let f = Folder::new();
        f.write("run.sh", b"#!/bin/sh\n");
        fs::create_dir(f.path("private")).unwrap();
        fs::set_permissions(f.path("run.sh"), fs::Permissions::from_mode(0o750)).unwrap();
        fs::set_permissions(f.path("private"), fs::Permissions::from_mode(0o700)).unwrap();
        f.scan();
        assert_eq!(f.entry("run.sh").state.mode, 0o750);
        assert_eq!(f.entry("private").state.mode, 0o700);

        fs::set_permissions(f.path("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(f.path("private"), fs::Permissions::from_mode(0o711)).unwrap();
        let r = f.scan();
        assert_eq!((r.hashed_bytes, r.modified), (0, 2), "{r:?}");
        assert_eq!(f.entry("run.sh").state.mode, 0o755);
        assert_eq!(f.entry("private").state.mode, 0o711);
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_and_bad_names_are_skipped() {
        use std::os::unix::ffi::OsStrExt;
        let f = Folder::new();
        f.write("target", b"t");
        std::os::unix::fs::symlink("target", f.path("link")).unwrap();
        let bad = f.root.join(std::ffi::OsStr::from_bytes(b"bad\xffname"));
        fs::write(bad, b"x").unwrap();
        let r = f.scan();
        let names: Vec<_> = f.entries().into_keys().collect();
        assert_eq!(names, ["target"]);
        assert_eq!(r.skipped.len(), 2, "{r:?}");
        let link = r.skipped.iter().find(|s| s.path == "link").unwrap();
        assert_eq!(link.reason, SkipReason::Symlink);
        assert!(
            r.skipped
                .iter()
                .any(|s| matches!(s.reason, SkipReason::BadName(PathError::NotUtf8 { .. }))),
            "{r:?}"
        );

        // A synced file replaced by a symlink is gone from the local state.
        fs::remove_file(f.path("target")).unwrap();
        std::os::unix::fs::symlink("link", f.path("target")).unwrap();
        assert_eq!(f.scan().deleted, 1);
    }

    #[test]
    fn recently_modified_files_are_rehashed_next_time() {
        let f = Folder::new();
        fs::write(f.path("fresh"), b"just written").unwrap();
        f.scan();
        assert!(f.entry("fresh").racy);
        let r = f.scan();
        assert_eq!((r.hashed_files, r.modified), (1, 0), "{r:?}");
        // Once old enough it is trusted again.
        set_mtime(&f.path("fresh"), PAST);
        f.scan();
        assert!(!f.entry("fresh").racy);
        assert_eq!(f.scan().hashed_files, 0);
    }

    #[test]
    fn files_changing_while_read_are_left_for_later() {
        let f = Folder::new();
        f.write("growing", &noise(100_000, 2));
        let path = f.path("growing");
        let appended = std::cell::Cell::new(false);
        let chunk_id_and_append = |data: &[u8]| {
            if !appended.replace(true) {
                let mut file = fs::OpenOptions::new().append(true).open(&path).unwrap();
                io::Write::write_all(&mut file, b"more").unwrap();
            }
            chunk_id(data)
        };
        let mut s = Scanner::new(
            Chunker::new(ChunkerConfig::DEFAULT, &[7; 32]),
            chunk_id_and_append,
        );
        let r = s.scan(&f.vault).unwrap();
        assert_eq!(r.unstable, vec![RelPath::new("growing").unwrap()]);
        assert_eq!(r.added, 0);
        assert!(f.entries().is_empty());
        // Next scan (file now still): recorded.
        let r = f.scan();
        assert_eq!((r.added, r.hashed_bytes), (1, 100_004));
        assert!(r.unstable.is_empty());
    }

    #[test]
    fn progress_is_reported() {
        let f = Folder::new();
        populate(&f);
        let mut last = ScanProgress::default();
        let mut calls = 0;
        let r = scanner()
            .scan_with_progress(&f.vault, &mut |p| {
                calls += 1;
                assert!(p.hashed_bytes >= last.hashed_bytes);
                last = *p;
            })
            .unwrap();
        assert!(calls >= 7);
        assert_eq!(last.hashed_bytes, r.hashed_bytes);
        assert_eq!(last.scanned, r.scanned);
    }

    #[test]
    fn a_missing_root_is_an_error() {
        let f = Folder::new();
        fs::remove_dir(&f.root).unwrap();
        let err = scanner().scan(&f.vault).unwrap_err();
        assert!(matches!(err, ScanError::Root { .. }), "{err}");
    }

    #[test]
    fn a_bad_ignore_file_stops_the_scan_with_its_line() {
        let f = Folder::new();
        f.write("x", b"x");
        f.write(".doozignore", b"ok\n{unclosed\n");
        let err = scanner().scan(&f.vault).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }
}
