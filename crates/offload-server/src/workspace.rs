//! The cloud side of workspace sync: manifests and chunks served from the cloud copy, and
//! pushes from the edge applied durably (temp file, hash check, fsync, rename, fsync of
//! the directory: `offload_sync::apply`) before they are acknowledged (I2).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use offload_core::ContainerId;
use offload_sync::protocol::{ChunkList, PushReport};
use offload_sync::{
    ApplyOptions, Chain, ChunkId, ChunkSource, ChunkStore, Delta, Limits, Manifest, RelPath,
    ScanOptions, SyncError, TreeChunks, decode_chunks, encode_chunks,
};

use crate::error::ActionError;

/// Largest chunk batch in one request or answer.
pub const MAX_BATCH_BYTES: usize = 64 << 20;

/// Cached manifests of the cloud copies and the staging stores of uploads.
pub struct Workspaces {
    root: PathBuf,
    staging: PathBuf,
    manifests: Mutex<HashMap<ContainerId, Arc<Manifest>>>,
    locks: Mutex<HashMap<ContainerId, Arc<tokio::sync::Mutex<()>>>>,
}

fn sync_err(e: SyncError) -> ActionError {
    match e {
        SyncError::Io { .. } => ActionError::Internal(e.to_string()),
        other => ActionError::BadRequest(other.to_string()),
    }
}

fn limits() -> Limits {
    Limits {
        max_batch_bytes: MAX_BATCH_BYTES,
        ..Limits::default()
    }
}

impl Workspaces {
    pub fn new(root: PathBuf, staging: PathBuf) -> Self {
        Workspaces {
            root,
            staging,
            manifests: Mutex::new(HashMap::new()),
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
            .cloned()
    }

    /// Rescans the cloud copy (reading only files whose size or mtime changed).
    async fn rescan(&self, id: &ContainerId) -> Result<Arc<Manifest>, ActionError> {
        let dir = self.dir(id);
        let previous = self.cached(id);
        let scanned = tokio::task::spawn_blocking(move || {
            offload_sync::scan(&dir, &ScanOptions::default(), previous.as_deref())
        })
        .await?
        .map_err(|e| ActionError::Internal(format!("cannot scan the workspace: {e}")))?;
        let manifest = Arc::new(scanned.manifest);
        self.manifests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), manifest.clone());
        Ok(manifest)
    }

    /// The current manifest of the cloud copy.
    pub async fn manifest(&self, id: &ContainerId) -> Result<Arc<Manifest>, ActionError> {
        let _guard = self.lock(id).await;
        self.rescan(id).await
    }

    /// Reads chunks out of the cloud copy. A file that changed since the last scan makes
    /// the answer a conflict: the caller fetches the manifest again.
    pub async fn fetch(&self, id: &ContainerId, list: ChunkList) -> Result<Vec<u8>, ActionError> {
        if list.ids.len() > limits().max_batch_chunks {
            return Err(ActionError::BadRequest(format!(
                "at most {} chunks per request",
                limits().max_batch_chunks
            )));
        }
        let _guard = self.lock(id).await;
        let manifest = match self.cached(id) {
            Some(m) => m,
            None => self.rescan(id).await?,
        };
        let dir = self.dir(id);
        tokio::task::spawn_blocking(move || {
            let tree = TreeChunks::new(&dir, &manifest).map_err(sync_err)?;
            let mut chunks = Vec::with_capacity(list.ids.len());
            let mut total = 0usize;
            for chunk in &list.ids {
                let bytes = tree.get(chunk).map_err(|e| match e {
                    SyncError::SourceChanged { .. } | SyncError::ChunkNotFound { .. } => {
                        ActionError::Conflict(format!(
                            "the workspace changed while it was read ({e}); fetch the manifest again"
                        ))
                    }
                    other => sync_err(other),
                })?;
                total += bytes.len();
                if total > MAX_BATCH_BYTES {
                    return Err(ActionError::BadRequest(format!(
                        "the chunks asked for exceed {MAX_BATCH_BYTES} bytes"
                    )));
                }
                chunks.push((*chunk, bytes));
            }
            encode_chunks(chunks.iter().map(|(id, b)| (*id, b.as_slice()))).map_err(sync_err)
        })
        .await?
    }

    /// Which of `list` the cloud side lacks.
    pub async fn missing(
        &self,
        id: &ContainerId,
        list: ChunkList,
    ) -> Result<ChunkList, ActionError> {
        let _guard = self.lock(id).await;
        let manifest = match self.cached(id) {
            Some(m) => m,
            None => self.rescan(id).await?,
        };
        let staging = ChunkStore::open_cache(self.staging_dir(id)).map_err(sync_err)?;
        let have: HashSet<ChunkId> = manifest
            .entries
            .iter()
            .filter_map(|e| match &e.kind {
                offload_sync::EntryKind::File { chunks, .. } => Some(chunks.iter().map(|c| c.id)),
                _ => None,
            })
            .flatten()
            .collect();
        let ids = list
            .ids
            .into_iter()
            .filter(|c| !have.contains(c) && !staging.contains(c))
            .collect();
        Ok(ChunkList { ids })
    }

    /// Verifies and stores uploaded chunks until a push uses them.
    pub async fn upload(&self, id: &ContainerId, body: Vec<u8>) -> Result<usize, ActionError> {
        let staging = self.staging_dir(id);
        tokio::task::spawn_blocking(move || {
            let chunks = decode_chunks(&body, &limits()).map_err(sync_err)?;
            let store = ChunkStore::open_cache(staging).map_err(sync_err)?;
            for (chunk, bytes) in &chunks {
                store.put(chunk, bytes).map_err(sync_err)?;
            }
            Ok(chunks.len())
        })
        .await?
    }

    /// Applies a pushed delta to the cloud copy, or below `conflict_dir` for a fenced
    /// copy's late changes. Returns once everything is on disk.
    pub async fn apply(
        &self,
        id: &ContainerId,
        delta: Delta,
        conflict_dir: Option<RelPath>,
    ) -> Result<PushReport, ActionError> {
        let _guard = self.lock(id).await;
        let manifest = match self.cached(id) {
            Some(m) => m,
            None => self.rescan(id).await?,
        };
        let dir = self.dir(id);
        let staging = self.staging_dir(id);
        let prefix = conflict_dir.clone();
        let report = tokio::task::spawn_blocking(move || {
            let store = ChunkStore::open_cache(&staging).map_err(sync_err)?;
            let tree = TreeChunks::new(&dir, &manifest).map_err(sync_err)?;
            let source = Chain::new(vec![&store as &dyn ChunkSource, &tree]);
            let options = ApplyOptions {
                prefix,
                limits: limits(),
                ..ApplyOptions::default()
            };
            offload_sync::apply(&dir, &delta, &source, &options).map_err(|e| match e {
                SyncError::ChunkNotFound { .. } => {
                    ActionError::Conflict(format!("{e}; upload the chunks the server lacks first"))
                }
                other => sync_err(other),
            })
        })
        .await??;
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
