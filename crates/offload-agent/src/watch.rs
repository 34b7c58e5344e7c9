//! Filesystem events as hints that a workspace changed: each makes a push prompt. A
//! periodic rescan guarantees nothing is missed: every 2 s without a watcher, as a slow
//! sweep with one. An error from the watcher (its queue overflowed) is a nudge too.

use std::path::Path;

use notify::{RecursiveMode, Watcher};

/// Watches `dir` recursively; each event is a nudge on `tx`. Returns `None` when
/// watching is not possible here (the rescan still runs).
pub fn watch(dir: &Path, tx: tokio::sync::mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    // An event or an error (a lost event) alike: the push rescans the whole tree.
    let mut watcher = notify::recommended_watcher(move |_: notify::Result<notify::Event>| {
        let _ = tx.try_send(());
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
