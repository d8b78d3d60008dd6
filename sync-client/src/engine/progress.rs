//! Progress reporting: an optional sink the engine tells what it is doing, for progress bars.
//!
//! Without a sink ([`Engine::set_progress`](super::Engine::set_progress) never called) every
//! report is one branch on a `None`.

use std::sync::Arc;

use dooz_crypto::VaultId;

/// A phase of a sync round. Each phase counts in its own unit, given here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SyncPhase {
    /// Scanning the folder into the local-state tree. Unit: files and directories looked at;
    /// the total is not known in advance.
    Scanning,
    /// Pulling the vault's commit log since the cursor. Unit: log entries pulled; the total
    /// is not known in advance.
    Pulling,
    /// Writing remote changes into the folder. Unit: plaintext bytes of the files written,
    /// whether their chunks were downloaded or reused from disk.
    Downloading,
    /// Sending the chunks the server lacks. Unit: plaintext bytes of those chunks.
    Uploading,
    /// Committing new versions. Unit: entries.
    Committing,
}

impl SyncPhase {
    /// A short lower-case name (`"scanning"`, `"uploading"`, ...), for display.
    pub fn name(self) -> &'static str {
        match self {
            Self::Scanning => "scanning",
            Self::Pulling => "pulling",
            Self::Downloading => "downloading",
            Self::Uploading => "uploading",
            Self::Committing => "committing",
        }
    }

    /// Whether the phase counts bytes (so a display can format its figures as sizes).
    pub fn counts_bytes(self) -> bool {
        matches!(self, Self::Downloading | Self::Uploading)
    }
}

impl std::fmt::Display for SyncPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One progress report of an [`Engine`](super::Engine).
///
/// Each phase is bracketed by `Begin` and `Finish` (also when it fails); `Advance`s fall in
/// between. Scanning and pulling are reported on every round; downloading, uploading and
/// committing only when they have work. Phases do not overlap within one engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProgressEvent {
    /// A phase began.
    Begin {
        /// The vault being synced.
        vault: VaultId,
        /// The phase.
        phase: SyncPhase,
        /// Its size in the phase's unit, when known.
        total: Option<u64>,
    },
    /// More of the current phase is done.
    Advance {
        /// The vault being synced.
        vault: VaultId,
        /// The phase.
        phase: SyncPhase,
        /// Units done since the last report (add them up; reports may come from several
        /// tasks, so increments, not positions).
        delta: u64,
    },
    /// A phase ended, done or failed.
    Finish {
        /// The vault being synced.
        vault: VaultId,
        /// The phase.
        phase: SyncPhase,
    },
}

/// Receives an engine's [`ProgressEvent`]s. Called from the engine's tasks, possibly from
/// several threads at once: keep it quick (update a counter or a progress bar).
///
/// Any `Fn(ProgressEvent) + Send + Sync` closure is a `Progress`.
pub trait Progress: Send + Sync {
    /// Handles one report.
    fn on_progress(&self, event: ProgressEvent);
}

impl<F: Fn(ProgressEvent) + Send + Sync> Progress for F {
    fn on_progress(&self, event: ProgressEvent) {
        self(event);
    }
}

/// The engine's handle on its optional sink; cheap to clone into tasks.
#[derive(Clone)]
pub(crate) struct Reporter {
    vault: VaultId,
    sink: Option<Arc<dyn Progress>>,
}

impl Reporter {
    pub(crate) fn new(vault: VaultId, sink: Option<Arc<dyn Progress>>) -> Self {
        Self { vault, sink }
    }

    /// Reports `phase` begun; it finishes when the guard drops.
    pub(crate) fn begin(&self, phase: SyncPhase, total: Option<u64>) -> PhaseGuard {
        if let Some(sink) = &self.sink {
            sink.on_progress(ProgressEvent::Begin {
                vault: self.vault,
                phase,
                total,
            });
        }
        PhaseGuard {
            reporter: self.clone(),
            phase,
        }
    }

    /// Reports `delta` more units of `phase` done.
    pub(crate) fn advance(&self, phase: SyncPhase, delta: u64) {
        if let Some(sink) = &self.sink
            && delta > 0
        {
            sink.on_progress(ProgressEvent::Advance {
                vault: self.vault,
                phase,
                delta,
            });
        }
    }
}

/// Reports its phase finished when dropped.
pub(crate) struct PhaseGuard {
    reporter: Reporter,
    phase: SyncPhase,
}

impl PhaseGuard {
    /// Reports `delta` more units of this phase done.
    pub(crate) fn advance(&self, delta: u64) {
        self.reporter.advance(self.phase, delta);
    }
}

impl Drop for PhaseGuard {
    fn drop(&mut self) {
        if let Some(sink) = &self.reporter.sink {
            sink.on_progress(ProgressEvent::Finish {
                vault: self.reporter.vault,
                phase: self.phase,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn phases_are_bracketed_and_silent_without_a_sink() {
        let vault = VaultId([1; 16]);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let reporter = Reporter::new(
            vault,
            Some(Arc::new(move |e: ProgressEvent| {
                sink.lock().unwrap().push(e)
            })),
        );
        {
            let guard = reporter.begin(SyncPhase::Uploading, Some(10));
            guard.advance(4);
            guard.advance(0);
            reporter.advance(SyncPhase::Uploading, 6);
        }
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![
                ProgressEvent::Begin {
                    vault,
                    phase: SyncPhase::Uploading,
                    total: Some(10)
                },
                ProgressEvent::Advance {
                    vault,
                    phase: SyncPhase::Uploading,
                    delta: 4
                },
                ProgressEvent::Advance {
                    vault,
                    phase: SyncPhase::Uploading,
                    delta: 6
                },
                ProgressEvent::Finish {
                    vault,
                    phase: SyncPhase::Uploading
                },
            ]
        );
        // No sink: nothing to call, nothing fails.
        let quiet = Reporter::new(vault, None);
        quiet.begin(SyncPhase::Scanning, None).advance(3);
        assert_eq!(SyncPhase::Uploading.to_string(), "uploading");
        assert!(SyncPhase::Downloading.counts_bytes() && !SyncPhase::Committing.counts_bytes());
    }
}
