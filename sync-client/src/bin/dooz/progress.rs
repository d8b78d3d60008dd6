//! Progress bars driven by the engine's [`ProgressEvent`]s: a spinner while scanning and
//! pulling, a bytes bar (N/M, rate, ETA) while uploading and downloading, an entries bar while
//! committing. Only made on a terminal without `--json` ([`Out::progress`]); otherwise the
//! engine gets no sink at all and reporting costs it one branch.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dooz_client::{Progress, ProgressEvent, SyncPhase};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::output::Out;

const SPINNER: &str = "{spinner} {prefix}: {msg} {human_pos} [{elapsed}]";
const BYTES: &str = "{prefix}: {msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} \
                     {binary_bytes_per_sec}, ETA {eta}";
const ENTRIES: &str = "{prefix}: {msg} [{bar:30}] {human_pos}/{human_len} [{elapsed}]";

/// The progress sink for the vault called `name`, or `None` when bars are not shown.
pub(crate) fn sink(out: &Out, name: &str) -> Option<Arc<dyn Progress>> {
    out.progress().then(|| {
        Arc::new(Bars {
            name: name.to_owned(),
            current: Mutex::new(None),
        }) as Arc<dyn Progress>
    })
}

/// The bar of one engine's current phase (phases of one engine do not overlap).
struct Bars {
    name: String,
    current: Mutex<Option<(SyncPhase, ProgressBar)>>,
}

impl Bars {
    fn current(&self) -> std::sync::MutexGuard<'_, Option<(SyncPhase, ProgressBar)>> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn begin(&self, phase: SyncPhase, total: Option<u64>) -> ProgressBar {
        let (bar, template) = match total {
            None => (ProgressBar::new_spinner(), SPINNER),
            Some(total) if phase.counts_bytes() => (ProgressBar::new(total), BYTES),
            Some(total) => (ProgressBar::new(total), ENTRIES),
        };
        bar.set_draw_target(ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(self.name.clone());
        bar.set_message(phase.name());
        if total.is_none() {
            bar.enable_steady_tick(Duration::from_millis(120));
        }
        bar
    }
}

impl Progress for Bars {
    fn on_progress(&self, event: ProgressEvent) {
        match event {
            ProgressEvent::Begin { phase, total, .. } => {
                let bar = self.begin(phase, total);
                if let Some((_, old)) = self.current().replace((phase, bar)) {
                    old.finish_and_clear();
                }
            }
            ProgressEvent::Advance { phase, delta, .. } => {
                if let Some((p, bar)) = self.current().as_ref()
                    && *p == phase
                {
                    bar.inc(delta);
                }
            }
            ProgressEvent::Finish { phase, .. } => {
                let mut current = self.current();
                if current.as_ref().is_some_and(|(p, _)| *p == phase)
                    && let Some((_, bar)) = current.take()
                {
                    bar.finish_and_clear();
                }
            }
            _ => {}
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        if let Some((_, bar)) = self.current().take() {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_follow_the_phases() {
        let bars = Bars {
            name: "docs".to_owned(),
            current: Mutex::new(None),
        };
        let vault = dooz_crypto::VaultId([1; 16]);
        bars.on_progress(ProgressEvent::Begin {
            vault,
            phase: SyncPhase::Uploading,
            total: Some(100),
        });
        bars.on_progress(ProgressEvent::Advance {
            vault,
            phase: SyncPhase::Uploading,
            delta: 40,
        });
        // A late report of another phase is ignored.
        bars.on_progress(ProgressEvent::Advance {
            vault,
            phase: SyncPhase::Committing,
            delta: 7,
        });
        {
            let current = bars.current();
            let (phase, bar) = current.as_ref().unwrap();
            assert_eq!(
                (*phase, bar.position(), bar.length()),
                (SyncPhase::Uploading, 40, Some(100))
            );
        }
        bars.on_progress(ProgressEvent::Finish {
            vault,
            phase: SyncPhase::Uploading,
        });
        assert!(bars.current().is_none());
        // The templates parse.
        for t in [SPINNER, BYTES, ENTRIES] {
            ProgressStyle::with_template(t).unwrap();
        }
    }
}
