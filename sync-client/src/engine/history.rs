//! Version history of an entry and restoring an earlier version.
//!
//! The server keeps every committed version of an entry (within the plan's retention, once
//! retention is collected); `History` pages through them newest first. A restore writes the old
//! content into the folder (a temp file, checked against the record, fsynced and renamed, like
//! any download) and then syncs, so the old content becomes a *new* version whose parent is the
//! current head: history is never rewritten, and other devices receive the restore as an
//! ordinary change. Chunks the server still has are not uploaded again.

use dooz_crypto::VersionId;
use dooz_protocol::limits::MAX_HISTORY_PAGE;
use dooz_protocol::{DeviceId, Seq};

use super::download::remote_entry;
use super::{Engine, EngineError, SyncReport};
use crate::index::{EntryState, RelPath, RemoteEntry};

/// One version of an entry, as [`Engine::history`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntryVersion {
    /// The version's id (what [`Engine::restore`] takes).
    pub version: VersionId,
    /// The commit seq that made it the head.
    pub seq: Seq,
    /// The device that committed it.
    pub device: DeviceId,
    /// Its state; `None` when the version deletes the entry.
    pub state: Option<EntryState>,
}

impl EntryVersion {
    /// Whether this version deletes the entry.
    pub fn is_deletion(&self) -> bool {
        self.state.is_none()
    }
}

impl Engine {
    /// Every version of `path` the server keeps, newest first.
    pub async fn history(&self, path: &RelPath) -> Result<Vec<EntryVersion>, EngineError> {
        Ok(self
            .versions(path)
            .await?
            .into_iter()
            .map(|(v, _)| v)
            .collect())
    }

    /// Restores `version` of `path`: writes its content into the folder, then syncs, so that
    /// it becomes the newest version. Refused for a deletion, and for a file that changed
    /// locally since the last sync (sync first, so nothing local is lost).
    pub async fn restore(
        &mut self,
        path: &RelPath,
        version: &VersionId,
    ) -> Result<SyncReport, EngineError> {
        let versions = self.versions(path).await?;
        let Some((found, remote)) = versions.into_iter().find(|(v, _)| v.version == *version)
        else {
            return Err(EngineError::VersionNotFound {
                path: path.to_string(),
                version: version.to_string(),
            });
        };
        let Some(state) = found.state else {
            return Err(EngineError::RestoreDeletion {
                path: path.to_string(),
                version: version.to_string(),
            });
        };
        self.write_version(path, remote, state).await?;
        self.sync().await
    }

    /// Every version of `path` with what a download needs, newest first.
    async fn versions(
        &self,
        path: &RelPath,
    ) -> Result<Vec<(EntryVersion, RemoteEntry)>, EngineError> {
        let entry = self.keyring.identity().entry_key(path.as_bytes());
        let p_entry = dooz_protocol::EntryKey::from_bytes(*entry.as_bytes());
        let vault = self.protocol_vault();
        let mut out = Vec::new();
        let mut before = None;
        loop {
            let page = self
                .conn
                .history(vault, p_entry, MAX_HISTORY_PAGE, before)
                .await?;
            for c in page.versions {
                let (record_path, remote) = remote_entry(&self.keyring, &c)?;
                if record_path != *path {
                    return Err(EngineError::Integrity {
                        path: path.to_string(),
                        reason: format!("a version of it names another path, {record_path}"),
                    });
                }
                out.push((
                    EntryVersion {
                        version: remote.version,
                        seq: c.seq,
                        device: c.device,
                        state: remote.state,
                    },
                    remote,
                ));
            }
            match page.next {
                Some(next) if Some(next) != before => before = Some(next),
                _ => break,
            }
        }
        Ok(out)
    }
}
