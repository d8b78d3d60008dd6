//! A durable local-directory blob store.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;

use crate::{BlobKey, BlobMeta, BlobStore, ObjectStoreBackend, Op, StorageError};

/// A blob store in a local directory, one file per blob, with crash-safe writes.
///
/// `object_store`'s [`LocalFileSystem`] writes a temporary file and renames it into place, so
/// its puts are atomic, but it never calls `fsync`: after a power loss a blob it reported as
/// stored may be missing, empty or partial. `LocalDir` therefore does its own writes and deletes
/// and uses `LocalFileSystem` only for reads and listings.
///
/// # Crash guarantee
///
/// - `put` writes `<key>#<digits>` next to the target, renames it over the target and returns
///   once the file's contents, the rename and any directory it created are durable. Once `put`
///   returns `Ok`, the blob survives a crash or power loss, whole. If the machine crashes during
///   `put`, the key holds the old blob or the new one, never a mix or a partial file.
/// - How that durability is reached depends on the platform:
///   - On Linux, puts are made durable **in groups**: a put that has renamed its file waits for
///     a `syncfs(2)` of the store's file system that *started after* its rename; one `syncfs`
///     covers every put waiting at that moment (the first waiter runs it, the others wait for
///     it). On a file system shared with heavy writers, a `syncfs` also flushes their data.
///     Linux reports writeback errors from `syncfs` since 5.8; a failed `syncfs` fails every
///     put it covered.
///   - Elsewhere, each put `fsync`s its file before the rename and its directory after it, and
///     each directory on the way is made durable once per process (created if needed, then its
///     parent `fsync`ed; see `DurableDirs`).
///
///   Why: sync uploads are many 16–22 KB chunks, and a separate `fsync` of file and directory
///   for each (six per blob at first, with every directory up to the root) made uploads wait on
///   the disk's journal: about 1,000 chunks/s, 20–28 MB/s (benches/RESULTS.md, end-to-end).
/// - `put_unsynced` writes and renames the same way but waits for nothing: after a crash the blob
///   may be missing or empty. `sync` then makes the named blobs durable (one `syncfs` on Linux;
///   elsewhere an `fsync` of each file and of the directories up to the root) and reports the
///   ones that are missing or not of the size given. The sync server writes chunks this way and
///   syncs them when a commit first references them (see `dooz-server`'s commit handler).
/// - `delete` removes the file and `fsync`s its directory; once it returns `Ok` the blob stays
///   deleted.
/// - A crash can leave `#<digits>` temporary files behind. No key can name them (`#` is not a
///   key character) and listings skip them.
///
/// (On non-Unix systems directories cannot be `fsync`ed; there only the file contents are.)
///
/// A key cannot be both a blob and a directory of blobs: with `a/b` stored, putting `a/b/c`
/// fails with [`StorageError::KeyConflict`], and the other way round. Empty directories are
/// left in place after deletes.
///
/// File I/O runs on tokio's blocking thread pool when called inside a tokio runtime, and inline
/// otherwise. Dropping a `put` future does not cancel a write already handed to the pool.
#[derive(Debug, Clone)]
pub struct LocalDir {
    root: Arc<PathBuf>,
    dirs: Arc<DurableDirs>,
    #[cfg(target_os = "linux")]
    group: Arc<GroupSync>,
    reader: ObjectStoreBackend,
}

/// Group commit of puts on Linux: one `syncfs` makes every put that finished its rename before
/// the `syncfs` started durable.
#[cfg(target_os = "linux")]
#[derive(Debug)]
struct GroupSync {
    /// An open handle on the store's root, to name its file system.
    root: File,
    state: std::sync::Mutex<SyncState>,
    done: std::sync::Condvar,
}

#[cfg(target_os = "linux")]
#[derive(Debug, Default)]
struct SyncState {
    /// Tickets handed out: one per put waiting for durability, numbered from 1.
    issued: u64,
    /// Every ticket up to this one is covered by a finished `syncfs`.
    covered: u64,
    /// A `syncfs` is running.
    running: bool,
    /// Results of the recent `syncfs` runs: the tickets each covered and its error, if any.
    results: std::collections::VecDeque<SyncRun>,
}

/// One finished `syncfs`: the first and last ticket it covered, and its error if it failed.
#[cfg(target_os = "linux")]
type SyncRun = (u64, u64, Option<(io::ErrorKind, String)>);

#[cfg(target_os = "linux")]
impl GroupSync {
    /// Results kept for waiters that wake up late.
    const KEEP: usize = 4096;

    fn new(root: &Path) -> io::Result<Self> {
        Ok(Self {
            root: File::open(root)?,
            state: std::sync::Mutex::default(),
            done: std::sync::Condvar::new(),
        })
    }

    /// Returns once a `syncfs` that started after this call has finished; its error if it
    /// failed.
    fn wait_durable(&self) -> io::Result<()> {
        let poisoned = || io::Error::other("the group-sync lock was poisoned by a panic");
        let mut st = self.state.lock().map_err(|_| poisoned())?;
        st.issued += 1;
        let ticket = st.issued;
        loop {
            if st.covered >= ticket {
                return match st
                    .results
                    .iter()
                    .find(|(lo, hi, _)| (*lo..=*hi).contains(&ticket))
                {
                    Some((_, _, None)) => Ok(()),
                    Some((_, _, Some((kind, msg)))) => Err(io::Error::new(
                        *kind,
                        format!("syncing the blob store's file system failed: {msg}"),
                    )),
                    None => Err(io::Error::other(
                        "lost track of whether the blob was synced (too many syncs since)",
                    )),
                };
            }
            if st.running {
                st = self.done.wait(st).map_err(|_| poisoned())?;
                continue;
            }
            // Lead: every ticket issued so far is covered by a syncfs starting now.
            st.running = true;
            let upto = st.issued;
            let from = st.covered + 1;
            drop(st);
            let result = rustix::fs::syncfs(&self.root);
            st = self.state.lock().map_err(|_| poisoned())?;
            st.running = false;
            st.covered = upto;
            let error = result.err().map(|e| {
                let e = io::Error::from(e);
                (e.kind(), e.to_string())
            });
            if st.results.len() >= Self::KEEP {
                st.results.pop_front();
            }
            st.results.push_back((from, upto, error));
            self.done.notify_all();
        }
    }
}

/// The directories under a [`LocalDir`] known to exist durably: each was created (or found)
/// and then its parent was `fsync`ed by this process, so its entry survives a crash.
///
/// Bounded: past [`DurableDirs::MAX`] entries the set is cleared, which costs one more parent
/// `fsync` per directory the next time a put goes through it.
#[derive(Debug, Default)]
struct DurableDirs {
    known: std::sync::Mutex<std::collections::HashSet<PathBuf>>,
}

impl DurableDirs {
    const MAX: usize = 100_000;

    fn contains(&self, dir: &Path) -> bool {
        self.known
            .lock()
            .map(|known| known.contains(dir))
            .unwrap_or(false)
    }

    fn insert(&self, dir: PathBuf) {
        if let Ok(mut known) = self.known.lock() {
            if known.len() >= Self::MAX {
                known.clear();
            }
            known.insert(dir);
        }
    }
}

impl LocalDir {
    /// Opens the store rooted at `path`, creating the directory (and its parents) if needed.
    ///
    /// # Errors
    ///
    /// [`StorageError::Open`] if the directory cannot be created or is not a directory.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        let path = path.as_ref();
        let open_err = |source| StorageError::Open {
            path: path.to_owned(),
            source,
        };
        fs::create_dir_all(path).map_err(open_err)?;
        let root = fs::canonicalize(path).map_err(open_err)?;
        if !root.is_dir() {
            return Err(open_err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "the path exists and is not a directory",
            )));
        }
        if let Some(parent) = root.parent() {
            sync_dir(parent).map_err(open_err)?;
        }
        let files =
            LocalFileSystem::new_with_prefix(&root).map_err(|e| open_err(io::Error::other(e)))?;
        #[cfg(target_os = "linux")]
        let group = Arc::new(GroupSync::new(&root).map_err(open_err)?);
        Ok(Self {
            root: Arc::new(root),
            dirs: Arc::default(),
            #[cfg(target_os = "linux")]
            group,
            reader: ObjectStoreBackend::new(Arc::new(files)),
        })
    }

    /// The store's root directory, canonicalised.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[async_trait]
impl BlobStore for LocalDir {
    async fn put(&self, key: &BlobKey, data: Bytes) -> Result<(), StorageError> {
        let root = Arc::clone(&self.root);
        let dirs = Arc::clone(&self.dirs);
        #[cfg(target_os = "linux")]
        let sync = Durability::Group(Arc::clone(&self.group));
        #[cfg(not(target_os = "linux"))]
        let sync = Durability::EachFile;
        let owned = key.clone();
        run_blocking(Op::Put, key, move || {
            write_durably(&root, &dirs, &sync, &owned, &data)
        })
        .await
    }

    async fn put_unsynced(&self, key: &BlobKey, data: Bytes) -> Result<(), StorageError> {
        let root = Arc::clone(&self.root);
        let dirs = Arc::clone(&self.dirs);
        let owned = key.clone();
        run_blocking(Op::Put, key, move || {
            write_durably(&root, &dirs, &Durability::Later, &owned, &data)
        })
        .await
    }

    async fn sync(&self, blobs: &[BlobMeta]) -> Result<Vec<BlobKey>, StorageError> {
        let Some(first) = blobs.first() else {
            return Ok(Vec::new());
        };
        let op_key = first.key.clone();
        let first = first.key.clone();
        let root = Arc::clone(&self.root);
        #[cfg(target_os = "linux")]
        let group = Arc::clone(&self.group);
        let blobs = blobs.to_vec();
        run_blocking(Op::Put, &op_key, move || {
            #[cfg(target_os = "linux")]
            group
                .wait_durable()
                .map_err(|e| StorageError::from_io(Op::Put, first.as_str(), e))?;
            let mut lost = Vec::new();
            let mut dirs = std::collections::BTreeSet::new();
            for blob in blobs {
                let path = fs_path(&root, &blob.key);
                let io_err = |e| StorageError::from_io(Op::Put, blob.key.as_str(), e);
                let file = match File::open(&path) {
                    Ok(file) => file,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        lost.push(blob.key);
                        continue;
                    }
                    Err(e) => return Err(io_err(e)),
                };
                if file.metadata().map_err(io_err)?.len() != blob.size {
                    lost.push(blob.key);
                    continue;
                }
                if cfg!(not(target_os = "linux")) {
                    file.sync_all().map_err(io_err)?;
                    let mut dir = path.clone();
                    while dir.pop() && dir.starts_with(&*root) {
                        dirs.insert(dir.clone());
                    }
                }
            }
            for dir in dirs {
                sync_dir(&dir).map_err(|e| StorageError::from_io(Op::Put, first.as_str(), e))?;
            }
            Ok(lost)
        })
        .await
    }

    async fn get(&self, key: &BlobKey) -> Result<Bytes, StorageError> {
        self.reader.get(key).await
    }

    async fn get_range(&self, key: &BlobKey, range: Range<u64>) -> Result<Bytes, StorageError> {
        self.reader.get_range(key, range).await
    }

    async fn head(&self, key: &BlobKey) -> Result<BlobMeta, StorageError> {
        self.reader.head(key).await
    }

    async fn delete(&self, key: &BlobKey) -> Result<(), StorageError> {
        let root = Arc::clone(&self.root);
        let owned = key.clone();
        run_blocking(Op::Delete, key, move || delete_durably(&root, &owned)).await
    }

    fn list_stream(
        &self,
        prefix: Option<&BlobKey>,
    ) -> BoxStream<'_, Result<BlobMeta, StorageError>> {
        self.reader.list_stream(prefix)
    }
}

/// Runs blocking file I/O on tokio's blocking pool if there is a runtime, else inline.
async fn run_blocking<T, F>(op: Op, key: &BlobKey, f: F) -> Result<T, StorageError>
where
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle
            .spawn_blocking(f)
            .await
            .map_err(|e| StorageError::Backend {
                op,
                key: key.to_string(),
                source: Box::new(e),
            })?,
        Err(_) => f(),
    }
}

fn fs_path(root: &Path, key: &BlobKey) -> PathBuf {
    let mut path = root.to_path_buf();
    path.extend(key.segments());
    path
}

/// Write-to-temp, fsync, rename, fsync the directory (and, the first time through, the parents
/// of the directories on the way). See [`LocalDir`]'s crash guarantee.
fn write_durably(
    root: &Path,
    dirs: &DurableDirs,
    sync: &Durability,
    key: &BlobKey,
    data: &[u8],
) -> Result<(), StorageError> {
    let each_file = matches!(sync, Durability::EachFile);
    let later = matches!(sync, Durability::Later);
    let io_err = |e| StorageError::from_io(Op::Put, key.as_str(), e);
    let segments: Vec<&str> = key.segments().collect();
    let Some((file_name, parents)) = segments.split_last() else {
        return Err(StorageError::invalid_key(key.as_str(), "the key is empty"));
    };

    // Make every directory on the way exist durably before the blob goes in: create it if
    // needed, then fsync its parent. A directory found existing is synced the same way (another
    // writer may have created it and not synced yet), but only once per process.
    let mut dir = root.to_path_buf();
    for (depth, segment) in parents.iter().enumerate() {
        let parent = dir.clone();
        dir.push(segment);
        if dirs.contains(&dir) {
            continue;
        }
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if !dir.is_dir() {
                    return Err(StorageError::KeyConflict {
                        op: Op::Put,
                        key: key.to_string(),
                        conflicting: segments.get(..=depth).unwrap_or_default().join("/"),
                    });
                }
            }
            Err(e) => return Err(io_err(e)),
        }
        if each_file {
            sync_dir(&parent).map_err(io_err)?;
        }
        if !later {
            dirs.insert(dir.clone());
        }
    }

    let dest = dir.join(file_name);
    if dest.is_dir() {
        return Err(StorageError::KeyConflict {
            op: Op::Put,
            key: key.to_string(),
            conflicting: format!("{key}/..."),
        });
    }

    let (temp_path, mut file) = create_temp(&dir, file_name).map_err(io_err)?;
    let written = file
        .write_all(data)
        .and_then(|()| if each_file { file.sync_all() } else { Ok(()) })
        .and_then(|()| {
            drop(file);
            fs::rename(&temp_path, &dest)
        });
    if let Err(e) = written {
        if let Err(cleanup) = fs::remove_file(&temp_path) {
            tracing::warn!(path = %temp_path.display(), error = %cleanup, "could not remove a temporary blob file");
        }
        return Err(io_err(e));
    }

    match sync {
        Durability::EachFile => sync_dir(&dir).map_err(io_err),
        #[cfg(target_os = "linux")]
        Durability::Group(group) => group.wait_durable().map_err(io_err),
        Durability::Later => Ok(()),
    }
}

/// How a put reaches durability (see [`LocalDir`]'s crash guarantee).
enum Durability {
    /// `fsync` the file and its directory.
    #[cfg_attr(target_os = "linux", allow(dead_code))]
    EachFile,
    /// Wait for a group `syncfs`.
    #[cfg(target_os = "linux")]
    Group(Arc<GroupSync>),
    /// Nothing now: a later [`BlobStore::sync`] makes it durable (`put_unsynced`).
    Later,
}

/// Creates `<dir>/<name>#<digits>`, a name no key can take and listings skip.
fn create_temp(dir: &Path, name: &str) -> io::Result<(PathBuf, File)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let pid = std::process::id();
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{name}#{pid}{n:06}"));
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

fn delete_durably(root: &Path, key: &BlobKey) -> Result<(), StorageError> {
    let path = fs_path(root, key);
    match fs::remove_file(&path) {
        Ok(()) => match path.parent() {
            Some(parent) => {
                sync_dir(parent).map_err(|e| StorageError::from_io(Op::Delete, key.as_str(), e))
            }
            None => Ok(()),
        },
        // No blob: nothing there, a file where a parent directory would be, or a directory of
        // other blobs.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(())
        }
        Err(_) if path.is_dir() => Ok(()),
        Err(e) => Err(StorageError::from_io(Op::Delete, key.as_str(), e)),
    }
}

/// Makes a directory's entries durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Directories cannot be opened for fsync here; only file contents are made durable.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn group_sync_covers_every_waiter_with_fewer_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let group = Arc::new(GroupSync::new(dir.path()).unwrap());
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let group = Arc::clone(&group);
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        group.wait_durable().unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let st = group.state.lock().unwrap();
        assert_eq!(st.issued, 16 * 50);
        assert_eq!(st.covered, st.issued);
        assert!(!st.running);
        // The recorded runs cover tickets 1..=issued without gaps or overlaps.
        let mut next = 1;
        for (lo, hi, err) in &st.results {
            assert_eq!(*lo, next);
            assert!(hi >= lo && err.is_none());
            next = hi + 1;
        }
        assert_eq!(next, st.issued + 1);
        assert!(st.results.len() as u64 <= st.issued);
    }

    fn key(s: &str) -> BlobKey {
        BlobKey::new(s).unwrap()
    }

    #[tokio::test]
    async fn unsynced_puts_are_synced_and_lost_ones_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDir::open(dir.path()).unwrap();
        let (a, b) = (key("t/v/chunks/aa/a1"), key("t/v/chunks/bb/b1"));
        store
            .put_unsynced(&a, Bytes::from_static(b"hello"))
            .await
            .unwrap();
        store
            .put_unsynced(&b, Bytes::from_static(b"world!"))
            .await
            .unwrap();
        assert_eq!(store.get(&a).await.unwrap(), Bytes::from_static(b"hello"));
        let meta = |k: &BlobKey, size| BlobMeta {
            key: k.clone(),
            size,
        };
        assert!(store.sync(&[]).await.unwrap().is_empty());
        assert!(
            store
                .sync(&[meta(&a, 5), meta(&b, 6)])
                .await
                .unwrap()
                .is_empty()
        );
        // A blob of the wrong size (a crash truncated it) and a missing one are reported.
        let gone = key("t/v/chunks/cc/c1");
        let lost = store
            .sync(&[meta(&a, 4), meta(&b, 6), meta(&gone, 1)])
            .await
            .unwrap();
        assert_eq!(lost, vec![a.clone(), gone]);
        // Synced blobs read back; a durable put into a directory made unsynced works.
        store
            .put(&key("t/v/chunks/aa/a2"), Bytes::from_static(b"x"))
            .await
            .unwrap();
        assert_eq!(store.list(None).await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn blob_and_nested_key_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDir::open(dir.path()).unwrap();
        store
            .put(&key("a/b"), Bytes::from_static(b"1"))
            .await
            .unwrap();
        let err = store
            .put(&key("a/b/c"), Bytes::from_static(b"2"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StorageError::KeyConflict { conflicting, .. } if conflicting == "a/b"),
            "{err:?}"
        );
        store
            .put(&key("x/y/z"), Bytes::from_static(b"3"))
            .await
            .unwrap();
        let err = store
            .put(&key("x/y"), Bytes::from_static(b"4"))
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::KeyConflict { .. }), "{err:?}");
        // Reads through a file or of a directory are just missing blobs.
        assert!(store.get(&key("a/b/c")).await.unwrap_err().is_not_found());
        assert!(store.head(&key("x/y")).await.unwrap_err().is_not_found());
        store.delete(&key("a/b/c")).await.unwrap();
        store.delete(&key("x/y")).await.unwrap();
        assert_eq!(store.get(&key("x/y/z")).await.unwrap(), &b"3"[..]);
    }

    #[tokio::test]
    async fn temp_files_are_invisible_and_blobs_persist() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = LocalDir::open(dir.path().join("store")).unwrap();
            store
                .put(&key("t/v/c1"), Bytes::from_static(b"one"))
                .await
                .unwrap();
        }
        // A leftover from a crash mid-put.
        fs::write(dir.path().join("store/t/v/c2#1234"), b"partial").unwrap();

        let store = LocalDir::open(dir.path().join("store")).unwrap();
        let listed = store.list(None).await.unwrap();
        assert_eq!(
            listed,
            [BlobMeta {
                key: key("t/v/c1"),
                size: 3
            }]
        );
        assert!(store.get(&key("t/v/c2")).await.unwrap_err().is_not_found());
        // Our own puts leave no temporary file behind.
        let names: Vec<_> = fs::read_dir(dir.path().join("store/t/v"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn works_without_a_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDir::open(dir.path()).unwrap();
        let k = key("k");
        let mut put = store.put(&k, Bytes::from_static(b"v"));
        // No tokio runtime: the I/O runs inline and the future is ready on its first poll.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match put.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(result) => result.unwrap(),
            std::task::Poll::Pending => panic!("inline I/O should finish on the first poll"),
        }
        assert_eq!(fs::read(dir.path().join("k")).unwrap(), b"v");
    }

    #[test]
    fn open_rejects_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"").unwrap();
        let err = LocalDir::open(&file).unwrap_err();
        assert!(matches!(err, StorageError::Open { .. }), "{err:?}");
    }
}
