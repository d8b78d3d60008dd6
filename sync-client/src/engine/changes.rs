//! What a download did, path by path, for embedders that report changes ([`AppliedChange`]),
//! and how conflicts are resolved ([`Resolution`], [`ConflictResolver`]).

use std::sync::Arc;

use dooz_crypto::VersionId;

use crate::index::{Conflict, EntryState, RelPath};

/// One remote change a download applied, or one conflict it resolved, recorded when
/// [`Engine::record_changes`](super::Engine::record_changes) is on.
///
/// A change is recorded once its index update is committed, so a change re-applied after a
/// crash (because its update was not committed) is recorded once by the run that commits it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AppliedChange {
    /// A remote version of `path` was written into the folder (a file, or a directory made).
    Written {
        /// The entry.
        path: RelPath,
        /// The version written.
        version: VersionId,
        /// Its state.
        state: EntryState,
    },
    /// A remote deletion removed `path` from the folder (a directory that still holds files
    /// this device added is kept).
    Deleted {
        /// The entry.
        path: RelPath,
        /// Whether it was a directory.
        dir: bool,
    },
    /// Both sides changed `path` since they last agreed.
    Conflict {
        /// The two sides and their common base.
        conflict: Conflict,
        /// The remote head's version (`None` if the index no longer has it).
        remote_version: Option<VersionId>,
        /// What was done: the resolver's choice for two modifications; for a modification
        /// against a deletion, the side that modified ([`Resolution::KeepLocal`] when the
        /// remote side deleted, [`Resolution::KeepRemote`] when this device deleted).
        resolution: Resolution,
        /// Where the local version was moved ([`Resolution::KeepBoth`] of two modifications).
        copy: Option<RelPath>,
    },
}

/// How a conflict between two modifications of a path is resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Resolution {
    /// Keep both: the remote version takes the path, the local one moves to a conflicted copy
    /// beside it (uploaded as a new entry). Nothing is lost. The default.
    KeepBoth,
    /// Keep the local version: it is uploaded as the next version after the remote one (which
    /// stays in the entry's history).
    KeepLocal,
    /// Keep the remote version: it replaces the local one, which was never uploaded and is
    /// discarded.
    KeepRemote,
}

/// Decides conflicts between two modifications (or two creations) of a path; see
/// [`Engine::set_conflict_resolver`](super::Engine::set_conflict_resolver). A modification
/// against a deletion always keeps the modification, which loses nothing.
pub type ConflictResolver = Arc<dyn Fn(&Conflict) -> Resolution + Send + Sync>;
