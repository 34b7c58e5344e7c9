//! Workspace sizes for the monitor's move-cost estimate, measured off its loop.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use offload_core::ContainerId;
use offload_sync::{DiskUsage, UsageBudget};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How often a container's workspace size is measured for the move-cost estimate.
const SIZE_REFRESH: Duration = Duration::from_secs(30);
/// Longest one workspace's measurement may take; one that takes longer keeps its last
/// size (and is logged), so one huge tree cannot hold a blocking thread for long.
const SIZE_DEADLINE: Duration = Duration::from_secs(5);
/// Most entries one workspace's measurement walks.
const SIZE_MAX_ENTRIES: u64 = 1_000_000;

/// Measures a workspace on disk: the seam the monitor's sizing runs behind. Called on a
/// blocking thread, never on the monitor's loop.
pub trait WorkspaceSizer: Send + Sync + 'static {
    fn size(&self, dir: &Path) -> Result<DiskUsage, String>;
}

/// Sizes a workspace from its files' allocated blocks (metadata only, no file is read),
/// within a deadline and an entry budget.
pub struct DiskSizer {
    pub deadline: Duration,
    pub max_entries: u64,
}

impl Default for DiskSizer {
    fn default() -> Self {
        DiskSizer {
            deadline: SIZE_DEADLINE,
            max_entries: SIZE_MAX_ENTRIES,
        }
    }
}

impl WorkspaceSizer for DiskSizer {
    fn size(&self, dir: &Path) -> Result<DiskUsage, String> {
        let budget = UsageBudget {
            deadline: Some(Instant::now() + self.deadline),
            max_entries: self.max_entries,
        };
        offload_sync::disk_usage(dir, &budget).map_err(|e| e.to_string())
    }
}

#[derive(Default)]
struct SizeState {
    /// The last complete measurement.
    bytes: Option<u64>,
    /// When the last measurement (complete or not) ended.
    measured: Option<Instant>,
    running: bool,
}

/// Workspace sizes for the move-cost estimate, measured in the background and cached:
/// the monitor reads the last one and never waits for a measurement.
pub struct WorkspaceSizes {
    sizer: Arc<dyn WorkspaceSizer>,
    state: Arc<Mutex<HashMap<ContainerId, SizeState>>>,
}

impl WorkspaceSizes {
    pub fn new(sizer: Arc<dyn WorkspaceSizer>) -> Self {
        WorkspaceSizes {
            sizer,
            state: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The last size measured for `id`, if any.
    pub fn last(&self, id: &ContainerId) -> Option<u64> {
        lock(&self.state).get(id).and_then(|s| s.bytes)
    }

    /// The last size of `id` (0 before the first measurement), starting a measurement of
    /// `dir` on a blocking thread when the last is older than [`SIZE_REFRESH`] and none
    /// runs. Must be called within a tokio runtime.
    pub fn get(&self, id: &ContainerId, dir: PathBuf) -> u64 {
        let mut all = lock(&self.state);
        let state = all.entry(id.clone()).or_default();
        let stale = state.measured.is_none_or(|at| at.elapsed() > SIZE_REFRESH);
        if stale && !state.running {
            state.running = true;
            let (sizer, shared, id) = (self.sizer.clone(), self.state.clone(), id.clone());
            tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                let result = sizer.size(&dir);
                let mut all = lock(&shared);
                // Forgotten meanwhile (the container is gone): nothing to record.
                let Some(state) = all.get_mut(&id) else {
                    return;
                };
                state.running = false;
                state.measured = Some(Instant::now());
                match result {
                    Ok(usage) if usage.complete => state.bytes = Some(usage.allocated_bytes),
                    Ok(usage) => {
                        tracing::warn!(
                            %id,
                            entries = usage.entries,
                            secs = started.elapsed().as_secs_f64(),
                            "workspace too large to size within the budget; keeping its last size"
                        );
                        // What was seen is a lower bound, better than nothing at all.
                        if state.bytes.is_none() {
                            state.bytes = Some(usage.allocated_bytes);
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%id, %error, "cannot size the workspace; keeping its last size");
                    }
                }
            });
        }
        state.bytes.unwrap_or(0)
    }

    /// Forgets every workspace but those of `live`.
    pub(crate) fn retain(&self, live: &HashSet<&ContainerId>) {
        lock(&self.state).retain(|id, _| live.contains(id));
    }

    /// Makes `id`'s size due for a new measurement.
    #[cfg(test)]
    pub(crate) fn make_due(&self, id: &ContainerId) {
        if let Some(state) = lock(&self.state).get_mut(id) {
            state.measured = None;
        }
    }

    /// Whether a measurement of `id` has ended since it was made due.
    #[cfg(test)]
    pub(crate) fn measured(&self, id: &ContainerId) -> bool {
        lock(&self.state)
            .get(id)
            .is_some_and(|s| s.measured.is_some())
    }
}
