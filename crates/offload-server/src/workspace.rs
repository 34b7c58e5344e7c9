//! The cloud side of workspace sync: manifests and chunks served from the cloud copy, and
//! pushes from the edge applied durably (temp file, hash check, fsync, rename, fsync of
//! the directory: `offload_sync::apply`) before they are acknowledged (I2).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use offload_core::ContainerId;
use offload_sync::protocol::{PushReport, Wanted, encode_plan};
use offload_sync::session::{self, RECENT_MANIFESTS};
use offload_sync::{ChunkStore, Delta, Manifest, RelPath, ScanOptions, SyncError, TreeChunks};

use crate::error::ActionError;

/// Largest chunk batch in one request or answer (the session's, so both sides agree).
pub const MAX_BATCH_BYTES: usize = session::MAX_BATCH_BYTES;

/// Cached manifests of the cloud copies, push plans and the staging stores of uploads.
pub struct Workspaces {
    root: PathBuf,
    staging: PathBuf,
    /// Newest first: what a pull may name as its base.
    manifests: Mutex<HashMap<ContainerId, VecDeque<Known>>>,
    plans: Mutex<HashMap<ContainerId, Plan>>,
    next_plan: AtomicU64,
    locks: Mutex<HashMap<ContainerId, Arc<tokio::sync::Mutex<()>>>>,
}

#[derive(Clone)]
struct Known {
    digest: [u8; 32],
    manifest: Arc<Manifest>,
}

/// A push between its delta and its commit.
struct Plan {
    id: u64,
    delta: Arc<Delta>,
    batches: Vec<Vec<Wanted>>,
}

fn sync_err(e: SyncError) -> ActionError {
    match e {
        SyncError::Io { .. } => ActionError::Internal(e.to_string()),
        other => ActionError::BadRequest(other.to_string()),
    }
}

impl Workspaces {
    pub fn new(root: PathBuf, staging: PathBuf) -> Self {
        Workspaces {
            root,
            staging,
            manifests: Mutex::new(HashMap::new()),
            plans: Mutex::new(HashMap::new()),
            next_plan: AtomicU64::new(1),
            locks: Mutex::new(HashMap::new()),
        }
    }

    pub fn dir(&self, id: &ContainerId) -> PathBuf {
        self.root.join(id.as_str())
    }

    fn staging_dir(&self, id: &ContainerId) -> PathBuf {
        self.staging.join(id.as_str())
    }

    async fn lock(&self, id: &ContainerId) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.clone())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    fn cached(&self, id: &ContainerId) -> Option<Arc<Manifest>> {
        self.manifests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .and_then(|recent| recent.front())
            .map(|k| k.manifest.clone())
    }

    fn known(&self, id: &ContainerId, digest: &[u8; 32]) -> Option<Arc<Manifest>> {
        self.manifests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)?
            .iter()
            .find(|k| k.digest == *digest)
            .map(|k| k.manifest.clone())
    }

    /// Rescans the cloud copy (reading only files whose size or mtime changed).
    async fn rescan(&self, id: &ContainerId) -> Result<Arc<Manifest>, ActionError> {
        let dir = self.dir(id);
        let previous = self.cached(id);
        let (manifest, digest) = tokio::task::spawn_blocking(move || {
            offload_sync::scan(&dir, &ScanOptions::default(), previous.as_deref()).map(|s| {
                let digest = s.manifest.digest();
                (s.manifest, digest)
            })
        })
        .await?
        .map_err(|e| ActionError::Internal(format!("cannot scan the workspace: {e}")))?;
        let manifest = Arc::new(manifest);
        let mut all = self.manifests.lock().unwrap_or_else(|p| p.into_inner());
        let recent = all.entry(id.clone()).or_default();
        match recent.front_mut() {
            // Same tree: keep the newest scan (its stat side table is the freshest).
            Some(front) if front.digest == digest => front.manifest = manifest.clone(),
            _ => {
                recent.push_front(Known {
                    digest,
                    manifest: manifest.clone(),
                });
                recent.truncate(RECENT_MANIFESTS);
            }
        }
        Ok(manifest)
    }

    /// The manifest of the last scan, scanning first if there was none. The caller holds
    /// the workspace's lock.
    async fn last_scan(&self, id: &ContainerId) -> Result<Arc<Manifest>, ActionError> {
        match self.cached(id) {
            Some(m) => Ok(m),
            None => self.rescan(id).await,
        }
    }

    /// The current manifest of the cloud copy.
    pub async fn manifest(&self, id: &ContainerId) -> Result<Arc<Manifest>, ActionError> {
        let _guard = self.lock(id).await;
        self.rescan(id).await
    }

    /// The current manifest of the cloud copy as an update against `base`, a manifest
    /// the caller holds: a delta when the server still knows that base, else whole.
    pub async fn manifest_update(
        &self,
        id: &ContainerId,
        base: Option<[u8; 32]>,
    ) -> Result<Vec<u8>, ActionError> {
        let _guard = self.lock(id).await;
        let manifest = self.rescan(id).await?;
        let base = base.and_then(|d| self.known(id, &d));
        Ok(
            tokio::task::spawn_blocking(move || {
                session::serve_manifest(&manifest, base.as_deref())
            })
            .await?,
        )
    }

    /// Serves a chunk request out of the cloud copy. A file that changed since the last
    /// scan makes the answer a conflict: the caller fetches the manifest again.
    pub async fn fetch(&self, id: &ContainerId, request: Vec<u8>) -> Result<Vec<u8>, ActionError> {
        let _guard = self.lock(id).await;
        let manifest = self.last_scan(id).await?;
        let dir = self.dir(id);
        tokio::task::spawn_blocking(move || {
            let tree = TreeChunks::new(&dir, &manifest).map_err(sync_err)?;
            session::serve_fetch(&tree, &request).map_err(|e| match e {
                SyncError::SourceChanged { .. } | SyncError::ChunkNotFound { .. } => {
                    ActionError::Conflict(format!(
                        "the workspace changed while it was read ({e}); fetch the manifest again"
                    ))
                }
                other => sync_err(other),
            })
        })
        .await?
    }

    /// Takes a push's delta and answers the chunk requests the pusher must serve: the
    /// chunks neither the cloud copy nor earlier uploads hold, with the signatures of the
    /// cloud's old bytes to patch them against.
    pub async fn plan(&self, id: &ContainerId, delta: Vec<u8>) -> Result<Vec<u8>, ActionError> {
        let delta = Arc::new(session::decode_push(&delta).map_err(sync_err)?);
        let _guard = self.lock(id).await;
        let manifest = self.last_scan(id).await?;
        let dir = self.dir(id);
        let staging = self.staging_dir(id);
        let planned = delta.clone();
        let batches = tokio::task::spawn_blocking(move || {
            let store = ChunkStore::open_cache(staging).map_err(sync_err)?;
            session::plan_push(&dir, &manifest, &planned, &store).map_err(sync_err)
        })
        .await??;
        let plan = self.next_plan.fetch_add(1, Ordering::Relaxed);
        let body = encode_plan(plan, &batches);
        self.plans.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id.clone(),
            Plan {
                id: plan,
                delta,
                batches,
            },
        );
        Ok(body)
    }

    /// Reads the push plan `plan` of a workspace; a conflict when it is not the one in
    /// progress (the server restarted, or a newer push replaced it).
    fn with_plan<T>(
        &self,
        id: &ContainerId,
        plan: u64,
        read: impl FnOnce(&Plan) -> T,
    ) -> Result<T, ActionError> {
        let plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        plans
            .get(id)
            .filter(|p| p.id == plan)
            .map(read)
            .ok_or_else(|| {
                ActionError::Conflict(format!("no push plan {plan} in progress; plan again"))
            })
    }

    /// Verifies the answer to batch `batch` of plan `plan` and keeps its chunks until
    /// the push.
    pub async fn upload(
        &self,
        id: &ContainerId,
        plan: u64,
        batch: usize,
        body: Vec<u8>,
    ) -> Result<usize, ActionError> {
        let wanted = self
            .with_plan(id, plan, |p| p.batches.get(batch).cloned())?
            .ok_or_else(|| ActionError::BadRequest(format!("plan {plan} has no batch {batch}")))?;
        let staging = self.staging_dir(id);
        tokio::task::spawn_blocking(move || {
            let store = ChunkStore::open_cache(staging).map_err(sync_err)?;
            session::receive_batch(&body, &wanted, |chunk, bytes| store.put(&chunk, &bytes))
                .map_err(sync_err)
        })
        .await?
    }

    /// Applies a planned push to the cloud copy, or below `conflict_dir` for a fenced
    /// copy's late changes. Returns once everything is on disk.
    pub async fn apply(
        &self,
        id: &ContainerId,
        plan: u64,
        conflict_dir: Option<RelPath>,
    ) -> Result<PushReport, ActionError> {
        let _guard = self.lock(id).await;
        let delta = self.with_plan(id, plan, |p| p.delta.clone())?;
        let manifest = self.last_scan(id).await?;
        let dir = self.dir(id);
        let staging = self.staging_dir(id);
        let prefix = conflict_dir.clone();
        let report = tokio::task::spawn_blocking(move || {
            let store = ChunkStore::open_cache(&staging).map_err(sync_err)?;
            session::apply_push(&dir, &manifest, &delta, &store, prefix).map_err(|e| match e {
                SyncError::ChunkNotFound { .. } => {
                    ActionError::Conflict(format!("{e}; upload the chunks the server lacks first"))
                }
                other => sync_err(other),
            })
        })
        .await??;
        self.plans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.rescan(id).await?;
        clear_dir(&self.staging_dir(id));
        Ok(PushReport {
            files_written: report.files_written,
            bytes_written: report.bytes_written,
            deleted: report.deleted,
            conflict_dir: conflict_dir.map(|p| p.to_string()),
        })
    }

    /// Drops everything kept for a removed container.
    pub fn forget(&self, id: &ContainerId) {
        self.manifests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.plans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        let _ = std::fs::remove_dir_all(self.staging_dir(id));
    }

    /// Total bytes of a container's workspace files, from the last scan.
    pub fn cached_bytes(&self, id: &ContainerId) -> Option<u64> {
        self.cached(id).map(|m| m.total_file_bytes())
    }
}

fn clear_dir(path: &Path) {
    let _ = std::fs::remove_dir_all(path);
}
