//! The edge side of workspace sync: pulling the cloud copy down (pre-copy and final
//! delta) and pushing edge changes up, against the manifest the server acknowledged.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use anyhow::bail;
use offload_core::ContainerId;
use offload_core::agent::AgentMessage;
use offload_core::api::ErrorCode;
use offload_sync::protocol::{PushReport, PushRequest};
use offload_sync::session::{self, Pull, SessionError, Transport};
use offload_sync::{Delta, Entry, Manifest, ScanOptions, diff};

use crate::client::{Api, CallError};

/// Where progress reports go.
pub type ProgressSink = Arc<dyn Fn(AgentMessage) + Send + Sync>;

/// Scans a local tree on a blocking thread.
pub async fn scan(dir: &Path, previous: Option<Arc<Manifest>>) -> anyhow::Result<Manifest> {
    let dir = dir.to_owned();
    let scanned = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)?;
        offload_sync::scan(&dir, &ScanOptions::default(), previous.as_deref())
            .map_err(anyhow::Error::from)
    })
    .await??;
    Ok(scanned.manifest)
}

/// The sync endpoints of one container's workspace on the server, as the session's
/// transport. The session runs on a blocking thread; each call blocks on the async client.
pub struct ServerTransport {
    api: Api,
    id: ContainerId,
    runtime: tokio::runtime::Handle,
    /// For a push: the generation this copy runs at, and whether it was fenced.
    generation: u64,
    conflict: bool,
}

impl ServerTransport {
    /// A transport to container `id`'s workspace. Must be created inside the runtime.
    pub fn new(api: &Api, id: &ContainerId) -> Self {
        Self::with_runtime(api, id, tokio::runtime::Handle::current())
    }

    /// A transport to container `id`'s workspace whose calls run on `runtime`, for callers
    /// outside it.
    pub fn with_runtime(api: &Api, id: &ContainerId, runtime: tokio::runtime::Handle) -> Self {
        ServerTransport {
            api: api.clone(),
            id: id.to_owned(),
            runtime,
            generation: 0,
            conflict: false,
        }
    }

    fn path(&self, rest: &str) -> String {
        format!("/v1/containers/{}/workspace/{rest}", self.id)
    }
}

impl Transport for ServerTransport {
    type Error = CallError;

    fn manifest(&self, base: Option<[u8; 32]>) -> Result<Vec<u8>, CallError> {
        let path = match base {
            Some(digest) => self.path(&format!("manifest?base={}", hex::encode(digest))),
            None => self.path("manifest"),
        };
        self.runtime
            .block_on(self.api.get_bytes(&path))
            .map(Vec::from)
    }

    fn fetch(&self, request: Vec<u8>) -> Result<Vec<u8>, CallError> {
        self.runtime
            .block_on(self.api.exchange_bytes(&self.path("fetch"), request))
            .map(Vec::from)
    }

    fn plan(&self, delta: Vec<u8>) -> Result<Vec<u8>, CallError> {
        let path = self.path(&format!(
            "plan?generation={}&conflict={}",
            self.generation, self.conflict
        ));
        self.runtime
            .block_on(self.api.exchange_bytes(&path, delta))
            .map(Vec::from)
    }

    fn upload(&self, plan: u64, batch: usize, chunks: Vec<u8>) -> Result<(), CallError> {
        let path = self.path(&format!("chunks?plan={plan}&batch={batch}"));
        self.runtime.block_on(self.api.post_bytes(&path, chunks))
    }

    fn push(&self, plan: u64) -> Result<PushReport, CallError> {
        let request = PushRequest {
            generation: self.generation,
            plan,
            conflict: self.conflict,
        };
        self.runtime
            .block_on(self.api.post(&self.path("push"), &request))
    }

    /// The cloud copy changed while it was read (it runs during the pre-copy).
    fn is_conflict(error: &CallError) -> bool {
        error.code() == Some(ErrorCode::Conflict)
    }

    /// The link dropped or timed out, or the server is briefly unavailable.
    fn is_transient(error: &CallError) -> bool {
        match error {
            CallError::Unreachable { .. } => true,
            CallError::Api { status, body } => {
                body.code == ErrorCode::Unavailable || matches!(status, 502..=504)
            }
            CallError::Unexpected { status, .. } => matches!(status, 502..=504),
        }
    }
}

/// The outcome of a pull.
pub struct Pulled {
    /// The server's manifest, which the local tree now matches.
    pub manifest: Manifest,
    pub bytes: u64,
}

/// Makes `dir` equal to the cloud copy of `id`, fetching only chunks the local tree does
/// not hold, and patching those that replace old bytes of the same file.
///
/// `previous` is what the local tree held after the last pull, if this process made it:
/// the local rescan then reads only files whose size or mtime changed since, and the
/// server's manifest crosses as a delta from it, so the final delta, taken while the
/// container is down, re-reads nothing that the pre-copy brought.
pub async fn pull(
    api: &Api,
    id: &ContainerId,
    dir: &Path,
    previous: Option<Arc<Manifest>>,
    progress: Option<(&ProgressSink, &ContainerId)>,
) -> anyhow::Result<Pulled> {
    let transport = ServerTransport::new(api, id);
    let dir = dir.to_owned();
    let progress = progress.map(|(sink, container)| (sink.clone(), container.to_owned()));
    let pulled = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)?;
        let report = progress.as_ref().map(|(sink, container)| {
            move |done, total| {
                sink(AgentMessage::Progress {
                    container_id: container.clone(),
                    phase: "workspace".to_owned(),
                    done,
                    total,
                })
            }
        });
        session::pull(
            &transport,
            &Pull {
                root: &dir,
                previous: previous.as_deref(),
                base: previous.as_deref(),
                progress: report.as_ref().map(|f| f as &(dyn Fn(u64, u64) + Sync)),
            },
        )
        .map_err(anyhow::Error::from)
    })
    .await??;
    let s = &pulled.stats;
    tracing::info!(
        %id,
        manifest = ?s.manifest_at,
        local_scan = ?s.local_scan_time,
        local_read_bytes = s.local_scan.hashed_bytes,
        delta = ?s.delta_at,
        chunks = ?s.chunks_at,
        applied = ?s.applied_at,
        fetched_chunks = s.chunks_fetched,
        bytes = s.to_receiver,
        attempts = s.attempts,
        "pulled the workspace"
    );
    Ok(Pulled {
        bytes: s.to_receiver,
        manifest: pulled.manifest,
    })
}

/// What a [`pull`] of `id` into `dir` would fetch now, writing nothing.
pub async fn estimate(
    api: &Api,
    id: &ContainerId,
    dir: &Path,
    previous: Option<Arc<Manifest>>,
) -> anyhow::Result<session::PullEstimate> {
    let transport = ServerTransport::new(api, id);
    let dir = dir.to_owned();
    let estimate = tokio::task::spawn_blocking(move || {
        session::estimate_pull(
            &transport,
            &Pull {
                root: &dir,
                previous: previous.as_deref(),
                base: previous.as_deref(),
                progress: None,
            },
        )
        .map_err(anyhow::Error::from)
    })
    .await??;
    Ok(estimate)
}

/// Why a push did not land.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The server runs a newer generation: this copy is fenced.
    #[error("this copy is stale: the server is at a newer generation")]
    Stale,
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl From<CallError> for PushError {
    fn from(e: CallError) -> Self {
        if e.code() == Some(ErrorCode::StaleGeneration) {
            PushError::Stale
        } else {
            PushError::Other(e.into())
        }
    }
}

/// Sends `delta` (between what the server acknowledged and `current`): the delta first,
/// then the chunks the server asks for (patched against its old bytes where it has them),
/// then the commit, which the server answers once the files are durably in place.
pub async fn push(
    api: &Api,
    id: &ContainerId,
    dir: &Path,
    current: &Manifest,
    delta: Delta,
    generation: u64,
    conflict: bool,
) -> Result<(PushReport, u64), PushError> {
    let transport = ServerTransport {
        generation,
        conflict,
        ..ServerTransport::new(api, id)
    };
    let (dir, current) = (dir.to_owned(), current.clone());
    let pushed =
        tokio::task::spawn_blocking(move || session::push(&transport, &dir, &current, &delta))
            .await
            .map_err(anyhow::Error::from)?
            .map_err(|e| match e {
                SessionError::Transport(e) => PushError::from(e),
                other => PushError::Other(other.into()),
            })?;
    Ok((pushed.report, pushed.to_receiver))
}

/// The late changes of a fenced copy: what it added or changed since the server's last
/// acknowledgement (with the directories above them), never its deletions.
pub fn conflict_delta(acked: &Manifest, current: &Manifest) -> Delta {
    let delta = diff(acked, current);
    let mut paths: HashSet<String> = HashSet::new();
    let mut upserts: Vec<Entry> = Vec::new();
    for entry in delta.upserts.iter().filter(|e| !e.is_dir()) {
        for ancestor in entry.path.ancestors() {
            if paths.insert(ancestor.to_string())
                && let Some(dir) = current.get(&ancestor)
            {
                upserts.push(dir.clone());
            }
        }
        if paths.insert(entry.path.to_string()) {
            upserts.push(entry.clone());
        }
    }
    upserts.sort_by(|a, b| a.path.cmp(&b.path));
    Delta {
        upserts,
        deletes: Vec::new(),
    }
}

/// Fails unless a delta is empty: used to confirm a final push left nothing behind.
pub fn ensure_empty(delta: &Delta) -> anyhow::Result<()> {
    if delta.is_empty() {
        Ok(())
    } else {
        bail!("changes remain after the final push")
    }
}
