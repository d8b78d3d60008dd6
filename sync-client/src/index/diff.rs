//! Diffs between the three trees: local vs base, remote vs base, and the conflicts between the
//! two.
//!
//! Each diff is one merge join over two trees in key order, so it holds only the changes in
//! memory, not the trees.

use std::cmp::Ordering;
use std::collections::{HashMap, VecDeque};
use std::iter::Peekable;

use super::entry::{ContentHash, EntryKind, EntryState};
use super::{IndexError, RelPath, VaultIndex};

/// A change of one side (local or remote) relative to the synced base.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A path the base does not have.
    Added {
        /// The path.
        path: RelPath,
        /// Its new state.
        state: EntryState,
    },
    /// A path whose state differs from the base (content, kind, mode or mtime; for the remote
    /// side: any new version).
    Modified {
        /// The path.
        path: RelPath,
        /// The base state.
        before: EntryState,
        /// The new state.
        after: EntryState,
    },
    /// A path the base has and this side no longer does.
    Deleted {
        /// The path.
        path: RelPath,
        /// The base state.
        before: EntryState,
    },
    /// A deleted and an added file with identical, non-empty content (same size and content
    /// hash), reported as a move.
    Renamed {
        /// The old path (deleted).
        from: RelPath,
        /// The new path (added).
        to: RelPath,
        /// The base state of `from`.
        before: EntryState,
        /// The state at `to` (same content; mode and mtime may differ).
        after: EntryState,
    },
}

impl Change {
    /// The path the change leaves an entry at (the new path of a rename, the removed path of a
    /// deletion).
    pub fn path(&self) -> &RelPath {
        match self {
            Change::Added { path, .. }
            | Change::Modified { path, .. }
            | Change::Deleted { path, .. } => path,
            Change::Renamed { to, .. } => to,
        }
    }

    /// Whether the content (or kind) changed, as opposed to only mode or mtime. Renames keep
    /// their content.
    pub fn content_changed(&self) -> bool {
        match self {
            Change::Added { .. } | Change::Deleted { .. } => true,
            Change::Modified { before, after, .. } => !before.same_content(after),
            Change::Renamed { .. } => false,
        }
    }
}

/// How the two sides of a [`Conflict`] differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConflictKind {
    /// Both sides changed an existing entry to different contents.
    BothModified,
    /// Both sides created the path with different contents.
    BothAdded,
    /// This device deleted the entry, the remote side modified it. Keeping the modification
    /// loses nothing.
    DeletedLocally,
    /// This device modified the entry, the remote side deleted it. Keeping the modification
    /// loses nothing.
    DeletedRemotely,
}

/// A path both sides changed since the base, to different contents.
///
/// Both deleting a path, or both arriving at the same content, is not a conflict. The policy
/// (DESIGN.md): the remote version keeps the name; the local one is kept as
/// `name (conflicted copy from <device> <date>).ext` and syncs too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The path.
    pub path: RelPath,
    /// How the sides differ.
    pub kind: ConflictKind,
    /// The base state (`None` if neither side had the path when they last agreed).
    pub base: Option<EntryState>,
    /// The local state (`None`: deleted locally).
    pub local: Option<EntryState>,
    /// The remote state (`None`: deleted remotely).
    pub remote: Option<EntryState>,
}

/// A per-path change before rename pairing: state in the base and on this side.
#[derive(Clone, Debug)]
struct RawChange {
    path: RelPath,
    before: Option<EntryState>,
    after: Option<EntryState>,
}

type Entries<T> = Box<dyn Iterator<Item = Result<(RelPath, T), IndexError>>>;

/// Merge-joins two path-ordered streams and calls `f` for each path in either.
fn merge_join<A, B>(
    a: Entries<A>,
    b: Entries<B>,
    mut f: impl FnMut(RelPath, Option<A>, Option<B>),
) -> Result<(), IndexError> {
    let mut a: Peekable<Entries<A>> = a.peekable();
    let mut b: Peekable<Entries<B>> = b.peekable();
    loop {
        // Surface errors before comparing.
        if let Some(Err(_)) = a.peek()
            && let Some(Err(e)) = a.next()
        {
            return Err(e);
        }
        if let Some(Err(_)) = b.peek()
            && let Some(Err(e)) = b.next()
        {
            return Err(e);
        }
        let order = match (a.peek(), b.peek()) {
            (None, None) => return Ok(()),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(Ok((pa, _))), Some(Ok((pb, _)))) => pa.cmp(pb),
            // Errors were taken above.
            (Some(Err(_)), _) | (_, Some(Err(_))) => continue,
        };
        match order {
            Ordering::Less => {
                if let Some(Ok((p, va))) = a.next() {
                    f(p, Some(va), None);
                }
            }
            Ordering::Greater => {
                if let Some(Ok((p, vb))) = b.next() {
                    f(p, None, Some(vb));
                }
            }
            Ordering::Equal => {
                if let (Some(Ok((p, va))), Some(Ok((_, vb)))) = (a.next(), b.next()) {
                    f(p, Some(va), Some(vb));
                }
            }
        }
    }
}

impl VaultIndex {
    fn raw_local_changes(&self) -> Result<Vec<RawChange>, IndexError> {
        let mut out = Vec::new();
        merge_join(
            Box::new(self.local_entries().map(|r| r.map(|(p, e)| (p, e.state)))),
            Box::new(self.base_entries().map(|r| r.map(|(p, e)| (p, e.state)))),
            |path, local, base| {
                let changed = match (&local, &base) {
                    (Some(l), Some(b)) => !l.same_state(b),
                    _ => true,
                };
                if changed {
                    out.push(RawChange {
                        path,
                        before: base,
                        after: local,
                    });
                }
            },
        )?;
        Ok(out)
    }

    fn raw_remote_changes(&self) -> Result<Vec<RawChange>, IndexError> {
        let mut out = Vec::new();
        merge_join(
            Box::new(self.remote_entries()),
            Box::new(self.base_entries()),
            |path, remote, base| match (remote, base) {
                (Some(r), None) => {
                    if r.state.is_some() {
                        out.push(RawChange {
                            path,
                            before: None,
                            after: r.state,
                        });
                    }
                }
                (Some(r), Some(b)) => {
                    if r.version != b.version {
                        out.push(RawChange {
                            path,
                            before: Some(b.state),
                            after: r.state,
                        });
                    }
                }
                // A base without a remote head: the remote tree is written together with the
                // base, so this only means the head is not known yet. No remote change.
                (None, _) => {}
            },
        )?;
        Ok(out)
    }

    /// What changed on this device since the synced base (local-state tree vs base), in path
    /// order, with renames paired up.
    pub fn local_changes(&self) -> Result<Vec<Change>, IndexError> {
        Ok(pair_renames(self.raw_local_changes()?))
    }

    /// What changed on the server since the synced base (remote-state tree vs base), in path
    /// order, with renames paired up. A remote entry differs from the base when its head
    /// version does.
    pub fn remote_changes(&self) -> Result<Vec<Change>, IndexError> {
        Ok(pair_renames(self.raw_remote_changes()?))
    }

    /// Paths both sides changed to different contents, in path order. Renames count as a
    /// deletion of the old path and an addition of the new one.
    pub fn conflicts(&self) -> Result<Vec<Conflict>, IndexError> {
        let local = self.raw_local_changes()?;
        let remote = self.raw_remote_changes()?;
        let mut out = Vec::new();
        merge_join(
            Box::new(local.into_iter().map(|c| Ok((c.path.clone(), c)))),
            Box::new(remote.into_iter().map(|c| Ok((c.path.clone(), c)))),
            |path, l, r| {
                let (Some(l), Some(r)) = (l, r) else {
                    return;
                };
                let kind = match (&l.after, &r.after) {
                    (None, None) => return,
                    (Some(a), Some(b)) if a.same_content(b) => return,
                    (None, Some(_)) => ConflictKind::DeletedLocally,
                    (Some(_), None) => ConflictKind::DeletedRemotely,
                    (Some(_), Some(_)) if l.before.is_none() => ConflictKind::BothAdded,
                    (Some(_), Some(_)) => ConflictKind::BothModified,
                };
                out.push(Conflict {
                    path,
                    kind,
                    base: l.before,
                    local: l.after,
                    remote: r.after,
                });
            },
        )?;
        Ok(out)
    }
}

/// Whether a state can take part in rename detection: non-empty files only (all empty files
/// look alike).
fn rename_key(state: &EntryState) -> Option<(ContentHash, u64)> {
    (state.kind == EntryKind::File && state.size > 0).then_some((state.content_hash, state.size))
}

/// Turns raw per-path changes (in path order) into [`Change`]s, pairing each added file with a
/// deleted one of identical content (both in path order, first with first).
fn pair_renames(raw: Vec<RawChange>) -> Vec<Change> {
    let mut deleted: HashMap<(ContentHash, u64), VecDeque<usize>> = HashMap::new();
    for (i, c) in raw.iter().enumerate() {
        if let (Some(before), None) = (&c.before, &c.after)
            && let Some(key) = rename_key(before)
        {
            deleted.entry(key).or_default().push_back(i);
        }
    }
    // For each added file with a deleted twin: the twin's index.
    let mut renamed_from: HashMap<usize, usize> = HashMap::new();
    let mut consumed = vec![false; raw.len()];
    for (i, c) in raw.iter().enumerate() {
        if let (None, Some(after)) = (&c.before, &c.after) {
            let twin = rename_key(after)
                .and_then(|key| deleted.get_mut(&key))
                .and_then(VecDeque::pop_front);
            if let Some(from) = twin {
                renamed_from.insert(i, from);
                if let Some(slot) = consumed.get_mut(from) {
                    *slot = true;
                }
            }
        }
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut taken: Vec<Option<RawChange>> = raw.into_iter().map(Some).collect();
    for i in 0..taken.len() {
        if consumed.get(i).copied().unwrap_or(false) {
            continue;
        }
        let Some(c) = taken.get_mut(i).and_then(Option::take) else {
            continue;
        };
        let change = match (c.before, c.after) {
            (None, Some(after)) => match renamed_from
                .get(&i)
                .and_then(|&from| taken.get(from))
                .and_then(Option::as_ref)
            {
                Some(RawChange {
                    path: from,
                    before: Some(before),
                    ..
                }) => Change::Renamed {
                    from: from.clone(),
                    to: c.path,
                    before: *before,
                    after,
                },
                _ => Change::Added {
                    path: c.path,
                    state: after,
                },
            },
            (Some(before), Some(after)) => Change::Modified {
                path: c.path,
                before,
                after,
            },
            (Some(before), None) => Change::Deleted {
                path: c.path,
                before,
            },
            (None, None) => continue,
        };
        out.push(change);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{ChunkRef, Index, LocalEntry, RemoteEntry, SyncedEntry, VaultBatch};
    use dooz_crypto::{ChunkId, EntryKey, VaultId, VersionId};
    use dooz_protocol::Seq;

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    fn file(content: &[u8], mtime_ns: i64) -> EntryState {
        EntryState {
            kind: EntryKind::File,
            size: content.len() as u64,
            mode: 0o644,
            mtime_ns,
            content_hash: ContentHash::of(content),
        }
    }

    fn local(state: EntryState) -> LocalEntry {
        let chunks = if state.size == 0 {
            vec![]
        } else {
            vec![ChunkRef {
                id: ChunkId::from_bytes(state.content_hash.0),
                len: u32::try_from(state.size).unwrap(),
            }]
        };
        LocalEntry {
            state,
            inode: 1,
            chunks,
            racy: false,
        }
    }

    fn version(n: u8) -> VersionId {
        VersionId([n; 16])
    }

    fn remote(state: Option<EntryState>, v: u8) -> RemoteEntry {
        RemoteEntry {
            entry_key: EntryKey::from_bytes([v; 32]),
            version: version(v),
            parent: None,
            seq: Seq::new(u64::from(v)),
            state,
            chunks: vec![],
        }
    }

    /// A vault where `paths` are synced: local = remote = base.
    fn synced(paths: &[(&str, EntryState)]) -> (tempfile::TempDir, VaultIndex) {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path().join("index")).unwrap();
        let vault = index.add_vault(VaultId([1; 16]), dir.path()).unwrap();
        let mut batch = VaultBatch::new();
        for (path, state) in paths {
            let r = remote(Some(*state), 1);
            batch
                .put_local(&p(path), &local(*state))
                .put_remote(&p(path), &r)
                .put_base(&p(path), &SyncedEntry::from_remote(&r).unwrap());
        }
        vault.commit(batch).unwrap();
        (dir, vault)
    }

    #[test]
    fn no_changes_when_all_agree() {
        let (_d, v) = synced(&[("a", file(b"a", 1)), ("d", EntryState::dir(0o755, 5))]);
        assert_eq!(v.local_changes().unwrap(), vec![]);
        assert_eq!(v.remote_changes().unwrap(), vec![]);
        assert_eq!(v.conflicts().unwrap(), vec![]);
    }

    #[test]
    fn local_added_modified_deleted() {
        let (_d, v) = synced(&[
            ("keep", file(b"k", 1)),
            ("edit", file(b"old", 1)),
            ("gone", file(b"g", 1)),
            ("chmod", file(b"c", 1)),
            ("dir", EntryState::dir(0o755, 1)),
        ]);
        v.put_local(&p("new"), &local(file(b"n", 2))).unwrap();
        v.put_local(&p("edit"), &local(file(b"newer", 2))).unwrap();
        v.remove_local(&p("gone")).unwrap();
        let mut chmod = file(b"c", 1);
        chmod.mode = 0o755;
        v.put_local(&p("chmod"), &local(chmod)).unwrap();
        // A directory's mtime does not count as a change.
        v.put_local(&p("dir"), &local(EntryState::dir(0o755, 99)))
            .unwrap();

        let changes = v.local_changes().unwrap();
        assert_eq!(
            changes,
            vec![
                Change::Modified {
                    path: p("chmod"),
                    before: file(b"c", 1),
                    after: chmod,
                },
                Change::Modified {
                    path: p("edit"),
                    before: file(b"old", 1),
                    after: file(b"newer", 2),
                },
                Change::Deleted {
                    path: p("gone"),
                    before: file(b"g", 1),
                },
                Change::Added {
                    path: p("new"),
                    state: file(b"n", 2),
                },
            ]
        );
        assert!(!changes[0].content_changed());
        assert!(changes[1].content_changed());
        // Only local changes: no remote changes, no conflicts.
        assert_eq!(v.remote_changes().unwrap(), vec![]);
        assert_eq!(v.conflicts().unwrap(), vec![]);
    }

    #[test]
    fn renames_pair_identical_content() {
        let (_d, v) = synced(&[
            ("a/one", file(b"same content", 1)),
            ("b/two", file(b"other content", 1)),
            ("empty", file(b"", 1)),
        ]);
        // Move one, move-and-chmod two, and move the empty file (not paired: empties all match).
        v.remove_local(&p("a/one")).unwrap();
        v.put_local(&p("z/one"), &local(file(b"same content", 1)))
            .unwrap();
        v.remove_local(&p("b/two")).unwrap();
        let mut two = file(b"other content", 3);
        two.mode = 0o600;
        v.put_local(&p("c/two"), &local(two)).unwrap();
        v.remove_local(&p("empty")).unwrap();
        v.put_local(&p("empty2"), &local(file(b"", 1))).unwrap();

        assert_eq!(
            v.local_changes().unwrap(),
            vec![
                Change::Renamed {
                    from: p("b/two"),
                    to: p("c/two"),
                    before: file(b"other content", 1),
                    after: two,
                },
                Change::Deleted {
                    path: p("empty"),
                    before: file(b"", 1),
                },
                Change::Added {
                    path: p("empty2"),
                    state: file(b"", 1),
                },
                Change::Renamed {
                    from: p("a/one"),
                    to: p("z/one"),
                    before: file(b"same content", 1),
                    after: file(b"same content", 1),
                },
            ]
        );
    }

    #[test]
    fn two_copies_pair_with_two_deletions_in_order() {
        let (_d, v) = synced(&[("a1", file(b"dup", 1)), ("a2", file(b"dup", 1))]);
        v.remove_local(&p("a1")).unwrap();
        v.remove_local(&p("a2")).unwrap();
        for to in ["b1", "b2", "b3"] {
            v.put_local(&p(to), &local(file(b"dup", 1))).unwrap();
        }
        let changes = v.local_changes().unwrap();
        let renames: Vec<_> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Renamed { from, to, .. } => Some((from.as_str(), to.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(renames, [("a1", "b1"), ("a2", "b2")]);
        assert!(matches!(&changes[2], Change::Added { path, .. } if path.as_str() == "b3"));
        assert_eq!(changes.len(), 3);
    }

    #[test]
    fn remote_changes_follow_versions() {
        let (_d, v) = synced(&[
            ("same", file(b"s", 1)),
            ("edit", file(b"e", 1)),
            ("gone", file(b"g", 1)),
            ("moved", file(b"moving bytes", 1)),
        ]);
        let tomb = remote(None, 3);
        let edited = remote(Some(file(b"e2", 2)), 2);
        let added = remote(Some(file(b"fresh", 2)), 4);
        let moved_from = remote(None, 5);
        let moved_to = remote(Some(file(b"moving bytes", 1)), 6);
        // A tombstone for a path the base never had: nothing to do.
        let old_tomb = remote(None, 7);
        let (pe, pg, pn, pm, pt, po) = (
            p("edit"),
            p("gone"),
            p("new"),
            p("moved"),
            p("target"),
            p("old-tomb"),
        );
        v.apply_pull(
            [
                (&pe, &edited),
                (&pg, &tomb),
                (&pn, &added),
                (&pm, &moved_from),
                (&pt, &moved_to),
                (&po, &old_tomb),
            ],
            Seq::new(7),
        )
        .unwrap();
        assert_eq!(v.cursor().unwrap(), Seq::new(7));
        assert_eq!(
            v.remote_changes().unwrap(),
            vec![
                Change::Modified {
                    path: pe,
                    before: file(b"e", 1),
                    after: file(b"e2", 2),
                },
                Change::Deleted {
                    path: pg,
                    before: file(b"g", 1),
                },
                Change::Added {
                    path: pn,
                    state: file(b"fresh", 2),
                },
                Change::Renamed {
                    from: pm,
                    to: pt,
                    before: file(b"moving bytes", 1),
                    after: file(b"moving bytes", 1),
                },
            ]
        );
        assert_eq!(v.local_changes().unwrap().len(), 0);
        assert_eq!(v.conflicts().unwrap(), vec![]);
    }

    #[test]
    fn conflicts_need_different_content_on_both_sides() {
        let (_d, v) = synced(&[
            ("both-edit", file(b"base", 1)),
            ("same-edit", file(b"base", 1)),
            ("both-delete", file(b"x", 1)),
            ("del-local", file(b"y", 1)),
            ("del-remote", file(b"z", 1)),
            ("one-side", file(b"w", 1)),
        ]);
        let mut batch = VaultBatch::new();
        batch
            .put_local(&p("both-edit"), &local(file(b"mine", 2)))
            .put_local(&p("same-edit"), &local(file(b"agreed", 2)))
            .remove_local(&p("both-delete"))
            .remove_local(&p("del-local"))
            .put_local(&p("del-remote"), &local(file(b"z2", 2)))
            .put_local(&p("one-side"), &local(file(b"w2", 2)))
            .put_local(&p("both-add"), &local(file(b"mine too", 2)))
            .put_remote(&p("both-edit"), &remote(Some(file(b"theirs", 3)), 2))
            .put_remote(&p("same-edit"), &remote(Some(file(b"agreed", 9)), 2))
            .put_remote(&p("both-delete"), &remote(None, 2))
            .put_remote(&p("del-local"), &remote(Some(file(b"y2", 3)), 2))
            .put_remote(&p("del-remote"), &remote(None, 2))
            .put_remote(&p("both-add"), &remote(Some(file(b"theirs too", 3)), 2));
        v.commit(batch).unwrap();

        let conflicts = v.conflicts().unwrap();
        let summary: Vec<_> = conflicts
            .iter()
            .map(|c| (c.path.as_str(), c.kind))
            .collect();
        assert_eq!(
            summary,
            [
                ("both-add", ConflictKind::BothAdded),
                ("both-edit", ConflictKind::BothModified),
                ("del-local", ConflictKind::DeletedLocally),
                ("del-remote", ConflictKind::DeletedRemotely),
            ]
        );
        let both = &conflicts[1];
        assert_eq!(both.base, Some(file(b"base", 1)));
        assert_eq!(both.local, Some(file(b"mine", 2)));
        assert_eq!(both.remote, Some(file(b"theirs", 3)));
        assert_eq!(conflicts[0].base, None);
        assert_eq!(conflicts[2].local, None);
        assert_eq!(conflicts[3].remote, None);
    }
}
