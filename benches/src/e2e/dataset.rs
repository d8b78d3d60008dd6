//! The end-to-end dataset: a deterministic folder of random binaries, text-like logs and many
//! small text files in nested directories ([`DatasetSpec`], [`generate`]), and a deterministic
//! change of about 1% of its bytes made of in-place overwrites, mid-file inserts, small-file
//! rewrites, appends and new files ([`ChangeSpec`], [`apply_change`]) whose exact size in bytes
//! is known ([`ChangeSummary::bytes_changed`]).

use std::fs::{self, OpenOptions};
use std::io::{self, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{Rng, random_bytes, text_like};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// What a file of the dataset holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// Incompressible bytes (media, archives).
    Binary,
    /// A large text-like log.
    Log,
    /// A small text file (documents, source).
    Small,
}

/// One file of the dataset, before it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFile {
    /// Path relative to the dataset root.
    pub path: PathBuf,
    /// What it holds.
    pub kind: FileKind,
    /// Its length in bytes.
    pub len: u64,
    /// The seed of its contents.
    pub seed: u64,
    /// Its unix mode bits.
    pub mode: u32,
}

/// The shape of a dataset. [`DatasetSpec::for_total`] gives the issue's dataset; tests build
/// small ones by hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetSpec {
    /// Seed of everything (sizes, names, contents).
    pub seed: u64,
    /// Bytes of random binary files in total.
    pub binary_bytes: u64,
    /// Smallest and largest binary file.
    pub binary_size: (u64, u64),
    /// Bytes of text-like logs in total.
    pub log_bytes: u64,
    /// Smallest and largest log.
    pub log_size: (u64, u64),
    /// Number of small text files.
    pub small_files: usize,
    /// Smallest and largest small file.
    pub small_size: (u64, u64),
    /// Small files per directory.
    pub files_per_dir: usize,
}

impl DatasetSpec {
    /// The issue's dataset scaled to about `total` bytes: about 4,000 small text files of
    /// 4–100 KiB per GiB, a quarter of the bytes in text-like logs of 8–32 MiB, the rest in
    /// random binaries of 2–24 MiB.
    pub fn for_total(total: u64, seed: u64) -> Self {
        let small_size = (4 * KIB, 100 * KIB);
        let small_files = ((4000.0 * total as f64 / GIB as f64).round() as usize).max(1);
        let small_estimate = small_files as u64 * (small_size.0 + small_size.1) / 2;
        let log_bytes = total / 4;
        Self {
            seed,
            binary_bytes: total.saturating_sub(small_estimate + log_bytes),
            binary_size: (2 * MIB, 24 * MIB),
            log_bytes,
            log_size: (8 * MIB, 32 * MIB),
            small_files,
            small_size,
            files_per_dir: 25,
        }
    }

    /// Every file of the dataset, in a fixed order: binaries, logs, small files.
    pub fn plan(&self) -> Vec<PlannedFile> {
        let mut rng = Rng::new(self.seed);
        let mut files = Vec::new();
        let mut fill = |kind, budget: u64, range: (u64, u64), name: &dyn Fn(usize) -> String| {
            let mut left = budget;
            let mut i = 0;
            while left > 0 {
                let mut len = between(&mut rng, range);
                if len >= left {
                    len = left.max(range.0);
                }
                files.push(PlannedFile {
                    path: PathBuf::from(name(i)),
                    kind,
                    len,
                    seed: rng.next_u64(),
                    mode: 0o644,
                });
                left = left.saturating_sub(len);
                i += 1;
            }
        };
        fill(
            FileKind::Binary,
            self.binary_bytes,
            self.binary_size,
            &|i| format!("media/set-{:02}/blob-{i:04}.bin", i / 16),
        );
        fill(FileKind::Log, self.log_bytes, self.log_size, &|i| {
            format!("logs/service-{i:03}.log")
        });
        let per_dir = self.files_per_dir.max(1);
        for i in 0..self.small_files {
            let dir = i / per_dir;
            files.push(PlannedFile {
                path: PathBuf::from(format!("projects/p{:02}/m{dir:03}/doc-{i:05}.txt", dir / 8)),
                kind: FileKind::Small,
                len: between(&mut rng, self.small_size),
                seed: rng.next_u64(),
                // A few executables, so mode bits are part of what must arrive.
                mode: if i % 37 == 5 { 0o755 } else { 0o644 },
            });
        }
        files
    }
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DatasetSummary {
    /// Files written.
    pub files: usize,
    /// Bytes written.
    pub bytes: u64,
    /// Random binary files.
    pub binaries: usize,
    /// Text-like logs.
    pub logs: usize,
    /// Small text files.
    pub small: usize,
}

/// A number in `range` (inclusive).
fn between(rng: &mut Rng, (lo, hi): (u64, u64)) -> u64 {
    lo + rng.next_u64() % (hi.saturating_sub(lo) + 1)
}

/// The contents of a file of `kind`.
fn contents(kind: FileKind, len: u64, seed: u64) -> Vec<u8> {
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    match kind {
        FileKind::Binary => random_bytes(len, seed),
        FileKind::Log | FileKind::Small => text_like(len, seed),
    }
}

fn write_new(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(path, data)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// Writes the dataset of `spec` under `root` (made if missing) on `threads` threads.
pub fn generate(root: &Path, spec: &DatasetSpec, threads: usize) -> io::Result<DatasetSummary> {
    let plan = spec.plan();
    let next = AtomicUsize::new(0);
    let failure: Mutex<Option<io::Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                while let Some(file) = plan.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let data = contents(file.kind, file.len, file.seed);
                    if let Err(e) = write_new(&root.join(&file.path), &data, file.mode) {
                        if let Ok(mut slot) = failure.lock() {
                            slot.get_or_insert(e);
                        }
                        // Stop every thread.
                        next.store(plan.len(), Ordering::Relaxed);
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(e);
    }
    let count = |kind| plan.iter().filter(|f| f.kind == kind).count();
    Ok(DatasetSummary {
        files: plan.len(),
        bytes: plan.iter().map(|f| f.len).sum(),
        binaries: count(FileKind::Binary),
        logs: count(FileKind::Log),
        small: count(FileKind::Small),
    })
}

/// The shape of the change [`apply_change`] makes.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeSpec {
    /// Seed of the change (which files, where, what bytes).
    pub seed: u64,
    /// Fraction of the dataset's bytes to change (0.01 for 1%).
    pub fraction: f64,
    /// Smallest and largest in-place overwrite of a binary.
    pub overwrite_size: (u64, u64),
    /// Smallest and largest mid-file insert.
    pub insert_size: (u64, u64),
    /// Smallest and largest append to a log.
    pub append_size: (u64, u64),
}

impl ChangeSpec {
    /// The issue's change: `fraction` of the bytes; overwrites of 64 KiB–1 MiB, inserts of
    /// 16–256 KiB, appends of 128 KiB–1 MiB.
    pub fn new(fraction: f64, seed: u64) -> Self {
        Self {
            seed,
            fraction,
            overwrite_size: (64 * KIB, MIB),
            insert_size: (16 * KIB, 256 * KIB),
            append_size: (128 * KIB, MIB),
        }
    }
}

/// The kind of one edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditKind {
    /// Bytes overwritten in place (the file keeps its length).
    Overwrite,
    /// Bytes inserted in the middle of the file.
    Insert,
    /// A small file replaced by new text of `len` bytes.
    Rewrite,
    /// Bytes appended at the end.
    Append,
    /// A new file of `len` bytes.
    New,
}

/// One edit of [`apply_change`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    /// Path relative to the dataset root.
    pub path: PathBuf,
    /// What was done.
    pub kind: EditKind,
    /// Where in the file (0 for rewrites and new files; the old length for appends).
    pub offset: u64,
    /// Bytes changed: overwritten, inserted, appended, or the new length.
    pub len: u64,
}

/// What [`apply_change`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSummary {
    /// Every edit, in the order made.
    pub edits: Vec<Edit>,
}

impl ChangeSummary {
    /// Bytes changed in total: overwritten + inserted + rewritten + appended + new.
    pub fn bytes_changed(&self) -> u64 {
        self.edits.iter().map(|e| e.len).sum()
    }

    /// Bytes changed by edits of `kind`.
    pub fn bytes(&self, kind: EditKind) -> u64 {
        self.edits
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.len)
            .sum()
    }

    /// Number of edits of `kind`.
    pub fn count(&self, kind: EditKind) -> usize {
        self.edits.iter().filter(|e| e.kind == kind).count()
    }

    /// Files touched (edited or new).
    pub fn files_touched(&self) -> usize {
        let mut paths: Vec<_> = self.edits.iter().map(|e| &e.path).collect();
        paths.sort();
        paths.dedup();
        paths.len()
    }
}

/// Share of the change budget per kind: overwrites, inserts, rewrites, appends, new files.
const SHARES: [(EditKind, f64); 5] = [
    (EditKind::Overwrite, 0.20),
    (EditKind::Insert, 0.15),
    (EditKind::Rewrite, 0.15),
    (EditKind::Append, 0.25),
    (EditKind::New, 0.25),
];

/// The byte budget of each kind of edit for a dataset of `total` bytes; they add up to
/// `round(total × fraction)`.
pub fn change_budgets(total: u64, fraction: f64) -> [(EditKind, u64); 5] {
    let budget = (total as f64 * fraction).round() as u64;
    let mut out = SHARES.map(|(kind, share)| (kind, (budget as f64 * share).round() as u64));
    let assigned: u64 = out.iter().take(4).map(|(_, b)| b).sum();
    if let Some(last) = out.last_mut() {
        last.1 = budget.saturating_sub(assigned);
    }
    out
}

/// Draws without replacement from a shuffled list, cycling when it runs out.
struct Pool {
    items: Vec<usize>,
    next: usize,
}

impl Pool {
    fn new(mut items: Vec<usize>, rng: &mut Rng) -> Self {
        for i in (1..items.len()).rev() {
            items.swap(i, rng.below(i + 1));
        }
        Self { items, next: 0 }
    }

    fn take(&mut self) -> Option<usize> {
        let item = self.items.get(self.next % self.items.len().max(1)).copied();
        self.next += 1;
        item
    }
}

/// Applies the change of `change` to the dataset of `spec` under `root` (as [`generate`]
/// wrote it) and returns the edits. Deterministic: the same inputs make the same tree.
///
/// The budget of each kind is spent exactly (see [`change_budgets`]); files are drawn without
/// replacement per kind (overwrites from binaries, inserts from binaries and logs alternately,
/// appends from logs, rewrites from small files), so no edit undoes another while the dataset
/// has enough files.
pub fn apply_change(
    root: &Path,
    spec: &DatasetSpec,
    change: &ChangeSpec,
) -> io::Result<ChangeSummary> {
    let plan = spec.plan();
    let total: u64 = plan.iter().map(|f| f.len).sum();
    let mut rng = Rng::new(change.seed ^ 0x6368_616e_6765);
    let of_kind = |kind| -> Vec<usize> {
        plan.iter()
            .enumerate()
            .filter(|(_, f)| f.kind == kind)
            .map(|(i, _)| i)
            .collect()
    };
    let mut binaries = Pool::new(of_kind(FileKind::Binary), &mut rng);
    let mut logs = Pool::new(of_kind(FileKind::Log), &mut rng);
    let mut small = Pool::new(of_kind(FileKind::Small), &mut rng);
    let mut summary = ChangeSummary::default();
    for (kind, budget) in change_budgets(total, change.fraction) {
        let mut spent = 0u64;
        let mut n = 0usize;
        while spent < budget {
            let left = budget - spent;
            let seed = rng.next_u64();
            let edit = match kind {
                EditKind::Overwrite => {
                    let Some(file) = binaries.take().and_then(|i| plan.get(i)) else {
                        break;
                    };
                    let path = root.join(&file.path);
                    let file_len = fs::metadata(&path)?.len();
                    let len = between(&mut rng, change.overwrite_size)
                        .min(left)
                        .min(file_len);
                    if len == 0 {
                        break;
                    }
                    let offset = between(&mut rng, (0, file_len - len));
                    let mut f = OpenOptions::new().write(true).open(&path)?;
                    f.seek(SeekFrom::Start(offset))?;
                    f.write_all(&contents(FileKind::Binary, len, seed))?;
                    Edit {
                        path: file.path.clone(),
                        kind,
                        offset,
                        len,
                    }
                }
                EditKind::Insert => {
                    let pick = if n.is_multiple_of(2) {
                        binaries.take().or_else(|| logs.take())
                    } else {
                        logs.take().or_else(|| binaries.take())
                    };
                    let Some(file) = pick.and_then(|i| plan.get(i)) else {
                        break;
                    };
                    let path = root.join(&file.path);
                    let mut data = fs::read(&path)?;
                    let old = data.len() as u64;
                    let offset = between(&mut rng, (old / 4, old * 3 / 4));
                    let len = between(&mut rng, change.insert_size).min(left);
                    let at = usize::try_from(offset)
                        .unwrap_or(data.len())
                        .min(data.len());
                    let insert = contents(file.kind, len, seed);
                    data.splice(at..at, insert);
                    fs::write(&path, &data)?;
                    Edit {
                        path: file.path.clone(),
                        kind,
                        offset,
                        len,
                    }
                }
                EditKind::Rewrite => {
                    let Some(file) = small.take().and_then(|i| plan.get(i)) else {
                        break;
                    };
                    let len = between(&mut rng, spec.small_size).min(left).max(1);
                    fs::write(root.join(&file.path), contents(FileKind::Small, len, seed))?;
                    Edit {
                        path: file.path.clone(),
                        kind,
                        offset: 0,
                        len,
                    }
                }
                EditKind::Append => {
                    let Some(file) = logs
                        .take()
                        .or_else(|| binaries.take())
                        .and_then(|i| plan.get(i))
                    else {
                        break;
                    };
                    let path = root.join(&file.path);
                    let offset = fs::metadata(&path)?.len();
                    let len = between(&mut rng, change.append_size).min(left);
                    let mut f = OpenOptions::new().append(true).open(&path)?;
                    f.write_all(&contents(file.kind, len, seed))?;
                    Edit {
                        path: file.path.clone(),
                        kind,
                        offset,
                        len,
                    }
                }
                EditKind::New => {
                    // Half the budget as new small files in a new directory, then new binaries.
                    let (file_kind, path, len) = if spent < budget / 2 {
                        let len = between(&mut rng, spec.small_size).min(left);
                        let path = format!("projects/new/m{:03}/added-{n:04}.txt", n / 25);
                        (FileKind::Small, path, len)
                    } else {
                        let len = between(&mut rng, spec.binary_size).min(left);
                        (FileKind::Binary, format!("media/new/added-{n:04}.bin"), len)
                    };
                    let path = PathBuf::from(path);
                    write_new(&root.join(&path), &contents(file_kind, len, seed), 0o644)?;
                    Edit {
                        path,
                        kind,
                        offset: 0,
                        len,
                    }
                }
            };
            spent += edit.len;
            n += 1;
            summary.edits.push(edit);
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2e::tree::{compare_trees, copy_tree, tree_stats};

    fn tiny() -> DatasetSpec {
        DatasetSpec {
            seed: 7,
            binary_bytes: 600 * KIB,
            binary_size: (20 * KIB, 60 * KIB),
            log_bytes: 300 * KIB,
            log_size: (10 * KIB, 30 * KIB),
            small_files: 40,
            small_size: (KIB, 4 * KIB),
            files_per_dir: 7,
        }
    }

    fn tiny_change() -> ChangeSpec {
        ChangeSpec {
            seed: 9,
            fraction: 0.05,
            overwrite_size: (KIB, 4 * KIB),
            insert_size: (512, 2 * KIB),
            append_size: (KIB, 4 * KIB),
        }
    }

    #[test]
    fn issue_spec_is_about_the_size_asked() {
        let spec = DatasetSpec::for_total(GIB, 1);
        let plan = spec.plan();
        let total: u64 = plan.iter().map(|f| f.len).sum();
        assert!(total > GIB * 95 / 100 && total < GIB * 105 / 100, "{total}");
        let small: Vec<_> = plan.iter().filter(|f| f.kind == FileKind::Small).collect();
        assert_eq!(small.len(), 4000);
        assert!(small.iter().all(|f| (4 * KIB..=100 * KIB).contains(&f.len)));
        for (kind, (lo, hi)) in [
            (FileKind::Binary, spec.binary_size),
            (FileKind::Log, spec.log_size),
        ] {
            let files: Vec<_> = plan.iter().filter(|f| f.kind == kind).collect();
            assert!(files.len() > 5, "{kind:?}");
            // Every file within range, except that the last may be cut to the budget.
            assert!(files.iter().all(|f| f.len >= lo && f.len <= hi), "{kind:?}");
        }
        assert_eq!(plan, DatasetSpec::for_total(GIB, 1).plan());
        assert_ne!(plan, DatasetSpec::for_total(GIB, 2).plan());
    }

    #[test]
    fn generate_writes_the_plan_deterministically() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let spec = tiny();
        let summary = generate(&a, &spec, 2).unwrap();
        assert_eq!(generate(&b, &spec, 1).unwrap(), summary);
        assert!(compare_trees(&a, &b).unwrap().is_identical());
        let stats = tree_stats(&a).unwrap();
        assert_eq!((stats.files, stats.bytes), (summary.files, summary.bytes));
        assert_eq!(summary.small, 40);
        assert!(summary.binaries >= 10 && summary.logs >= 5, "{summary:?}");
        for file in spec.plan() {
            let meta = fs::metadata(a.join(&file.path)).unwrap();
            assert_eq!(meta.len(), file.len);
            assert_eq!(meta.permissions().mode() & 0o777, file.mode);
        }
        // Nested directories for the small files.
        assert!(a.join("projects/p00/m001/doc-00007.txt").is_file());
    }

    #[test]
    fn change_is_exact_and_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let (orig, a, b) = (
            dir.path().join("orig"),
            dir.path().join("a"),
            dir.path().join("b"),
        );
        let spec = tiny();
        let summary = generate(&orig, &spec, 2).unwrap();
        copy_tree(&orig, &a).unwrap();
        copy_tree(&orig, &b).unwrap();
        let change = tiny_change();
        let edits = apply_change(&a, &spec, &change).unwrap();
        assert_eq!(apply_change(&b, &spec, &change).unwrap(), edits);
        assert!(compare_trees(&a, &b).unwrap().is_identical());

        // The budget is spent exactly, on every kind.
        let budgets = change_budgets(summary.bytes, change.fraction);
        for (kind, budget) in budgets {
            assert_eq!(edits.bytes(kind), budget, "{kind:?}");
            assert!(edits.count(kind) > 0, "{kind:?}");
        }
        let expected = (summary.bytes as f64 * change.fraction).round() as u64;
        assert_eq!(edits.bytes_changed(), expected);
        assert_eq!(
            edits.files_touched(),
            edits.edits.len(),
            "one edit per file"
        );

        // Each edit did what it says, and nothing else changed.
        for edit in &edits.edits {
            let new = fs::read(a.join(&edit.path)).unwrap();
            let (off, len) = (edit.offset as usize, edit.len as usize);
            match edit.kind {
                EditKind::New => {
                    assert!(!orig.join(&edit.path).exists());
                    assert_eq!(new.len(), len);
                }
                EditKind::Rewrite => {
                    let old = fs::read(orig.join(&edit.path)).unwrap();
                    assert_eq!(new.len(), len);
                    assert_ne!(new, old);
                }
                EditKind::Overwrite => {
                    let old = fs::read(orig.join(&edit.path)).unwrap();
                    assert_eq!(new.len(), old.len());
                    assert_eq!(new[..off], old[..off]);
                    assert_eq!(new[off + len..], old[off + len..]);
                    let same = (off..off + len).filter(|&i| new[i] == old[i]).count();
                    assert!(same * 50 < len + 50, "{same} of {len} bytes unchanged");
                }
                EditKind::Insert => {
                    let old = fs::read(orig.join(&edit.path)).unwrap();
                    assert_eq!(new.len(), old.len() + len);
                    assert_eq!(new[..off], old[..off]);
                    assert_eq!(new[off + len..], old[off..]);
                }
                EditKind::Append => {
                    let old = fs::read(orig.join(&edit.path)).unwrap();
                    assert_eq!(off, old.len());
                    assert_eq!(new.len(), old.len() + len);
                    assert_eq!(new[..off], old[..]);
                }
            }
        }
        let diff = compare_trees(&orig, &a).unwrap();
        let new_files = edits.count(EditKind::New);
        let added = diff.only_right.iter().filter(|p| a.join(p).is_file());
        assert_eq!(added.count(), new_files);
        assert_eq!(diff.content.len(), edits.edits.len() - new_files);
        assert!(diff.only_left.is_empty());
    }
}
