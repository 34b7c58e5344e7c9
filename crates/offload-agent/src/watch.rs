//! Filesystem events as hints that a workspace changed. The periodic rescan is what
//! guarantees nothing is missed; events only make pushes prompt.

use std::path::Path;

use notify::{RecursiveMode, Watcher};

/// Watches `dir` recursively; each event is a nudge on `tx`. Returns `None` when
/// watching is not possible here (the rescan still runs).
pub fn watch(dir: &Path, tx: tokio::sync::mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| tracing::debug!(error = %e, "no file watcher; relying on rescans"))
    .ok()?;
    match watcher.watch(dir, RecursiveMode::Recursive) {
        Ok(()) => Some(watcher),
        Err(e) => {
            tracing::debug!(error = %e, dir = %dir.display(), "cannot watch; relying on rescans");
            None
        }
    }
}
