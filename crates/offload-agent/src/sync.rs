//! The edge side of workspace sync: pulling the cloud copy down (pre-copy and final
//! delta) and pushing edge changes up, against the manifest the server acknowledged.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use futures::StreamExt;
use offload_core::agent::AgentMessage;
use offload_sync::protocol::{
    PushReport, PushRequest, Wanted, decode_plan, decode_reply, decode_update, encode_request,
    fetch_batches, serve_request, wanted_chunks,
};
use offload_sync::{
    ApplyOptions, Chain, ChunkSource, Delta, Entry, Incoming, Limits, Manifest, ScanOptions,
    TreeChunks, diff,
};

use crate::client::{Api, CallError};

/// Fetched bytes held for the apply before the fetch waits for it to catch up.
const INCOMING_CAP: usize = 128 << 20;
/// Chunk requests a pull keeps in flight.
const BATCHES_IN_FLIGHT: usize = 2;
/// Largest chunk batch the agent asks for at once.
const BATCH_BYTES: u64 = 16 << 20;
const BATCH_CHUNKS: usize = 4096;
/// Old bytes of the local tree read to patch fetched chunks against, at most, per pull.
const BASIS_BUDGET: usize = 64 << 20;

/// Where progress reports go.
pub type ProgressSink = Arc<dyn Fn(AgentMessage) + Send + Sync>;

fn limits() -> Limits {
    Limits::default()
}

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
/// the local rescan then reads only files whose size or mtime changed since, so the final
/// delta, taken while the container is down, does not re-read the whole workspace.
pub async fn pull(
    api: &Api,
    id: &str,
    dir: &Path,
    previous: Option<Arc<Manifest>>,
    progress: Option<(&ProgressSink, &str)>,
) -> anyhow::Result<Pulled> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match pull_once(api, id, dir, previous.clone(), progress).await {
            Ok(pulled) => return Ok(pulled),
            // The cloud copy changed while we read it (it runs during the pre-copy).
            Err(e) if attempt < 5 && is_conflict(&e) => continue,
            Err(e) => return Err(e),
        }
    }
}

fn is_conflict(e: &anyhow::Error) -> bool {
    e.downcast_ref::<CallError>()
        .is_some_and(|c| c.code() == Some("conflict"))
}

async fn pull_once(
    api: &Api,
    id: &str,
    dir: &Path,
    previous: Option<Arc<Manifest>>,
    progress: Option<(&ProgressSink, &str)>,
) -> anyhow::Result<Pulled> {
    let started = std::time::Instant::now();
    let remote = fetch_manifest(api, id, previous.clone()).await?;
    let manifest_at = started.elapsed();
    let local = Arc::new(scan(dir, previous).await?);
    let scanned_at = started.elapsed();
    let delta = Arc::new(diff(&local, &remote));
    if delta.is_empty() {
        return Ok(Pulled {
            manifest: remote,
            bytes: 0,
        });
    }
    let wanted = {
        let (dir, delta, local) = (dir.to_owned(), delta.clone(), local.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Wanted>> {
            let tree = TreeChunks::new(&dir, &local)?;
            Ok(wanted_chunks(
                &delta,
                &local,
                |c| tree.contains(c),
                &tree,
                BASIS_BUDGET,
            ))
        })
        .await??
    };
    let total: u64 = wanted.iter().map(|w| u64::from(w.len)).sum();
    let incoming = Arc::new(Incoming::new(
        &delta,
        wanted.iter().map(|w| w.id),
        INCOMING_CAP,
    ));

    // The apply runs beside the transfer, writing each file once its chunks are in.
    let applying = {
        let (dir, delta, local, incoming) = (
            dir.to_owned(),
            delta.clone(),
            local.clone(),
            incoming.clone(),
        );
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let result = TreeChunks::new(&dir, &local).and_then(|tree| {
                let source = Chain::new(vec![&tree as &dyn ChunkSource, &*incoming]);
                // The cloud copy is the durable one: when pulling, the edge follows it
                // even when that empties the tree.
                let options = ApplyOptions {
                    allow_mass_delete: true,
                    ..ApplyOptions::default()
                };
                offload_sync::apply(&dir, &delta, &source, &options)
            });
            incoming.close(Some("the apply ended".to_owned()));
            result?;
            Ok(())
        })
    };
    let mut wire = 0u64;
    let fetched: anyhow::Result<()> = async {
        let mut done = 0u64;
        // Requests in flight: the server reads and encodes the next batch while this side
        // decodes the last.
        let mut replies = futures::stream::iter(fetch_batches(wanted, BATCH_BYTES, BATCH_CHUNKS))
            .map(|batch| async move {
                let bytes = api
                    .exchange_bytes(
                        &format!("/v1/containers/{id}/workspace/fetch"),
                        encode_request(&batch),
                    )
                    .await?;
                Ok::<_, anyhow::Error>((batch, bytes))
            })
            .buffered(BATCHES_IN_FLIGHT);
        while let Some(reply) = replies.next().await {
            let (batch, bytes) = reply?;
            if incoming.is_closed() {
                // The apply failed; its error says why.
                break;
            }
            wire += bytes.len() as u64;
            let incoming = incoming.clone();
            done += tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
                let chunks = decode_reply(&bytes, &batch, &limits())
                    .context("the server sent a bad chunk batch")?;
                let mut n = 0;
                for (chunk, data) in chunks {
                    n += data.len() as u64;
                    incoming.push(chunk, data);
                }
                Ok(n)
            })
            .await??;
            if let Some((sink, container)) = progress {
                sink(AgentMessage::Progress {
                    container_id: container.to_owned(),
                    phase: "workspace".to_owned(),
                    done,
                    total,
                });
            }
        }
        Ok(())
    }
    .await;
    let fetched_at = started.elapsed();
    incoming.close(fetched.as_ref().err().map(|e| format!("{e:#}")));
    let applied = applying.await?;
    fetched?;
    applied?;
    tracing::debug!(
        %id,
        manifest = ?manifest_at,
        local_scan = ?(scanned_at - manifest_at),
        fetched = ?(fetched_at - scanned_at),
        applied_after = ?(started.elapsed() - fetched_at),
        bytes = wire,
        "pulled the workspace"
    );
    Ok(Pulled {
        manifest: remote,
        bytes: wire,
    })
}

/// The server's manifest, sent as a delta from `base` (the manifest of the last pull)
/// when the server still holds that one.
async fn fetch_manifest(
    api: &Api,
    id: &str,
    base: Option<Arc<Manifest>>,
) -> anyhow::Result<Manifest> {
    let path = match &base {
        Some(base) => format!(
            "/v1/containers/{id}/workspace/manifest?base={}",
            hex::encode(base.digest())
        ),
        None => format!("/v1/containers/{id}/workspace/manifest"),
    };
    let body = api.get_bytes(&path).await?;
    tokio::task::spawn_blocking(move || decode_update(&body, base.as_deref(), &limits()))
        .await?
        .context("the server sent an invalid manifest")
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
        if e.code() == Some("stale_generation") {
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
    id: &str,
    dir: &Path,
    current: &Manifest,
    delta: Delta,
    generation: u64,
    conflict: bool,
) -> Result<(PushReport, u64), PushError> {
    let mut wire = 0u64;
    let body = delta.to_bytes();
    wire += body.len() as u64;
    let answer = api
        .exchange_bytes(
            &format!(
                "/v1/containers/{id}/workspace/plan?generation={generation}&conflict={conflict}"
            ),
            body,
        )
        .await?;
    let (plan, requests) = decode_plan(&answer)
        .map_err(|e| anyhow::anyhow!("the server sent a bad push plan: {e}"))?;
    for (k, request) in requests.into_iter().enumerate() {
        let dir: PathBuf = dir.to_owned();
        let manifest = current.clone();
        let body = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<u8>> {
            let tree = TreeChunks::new(&dir, &manifest)?;
            Ok(serve_request(&request, &tree, &limits())?)
        })
        .await
        .map_err(anyhow::Error::from)??;
        wire += body.len() as u64;
        api.post_bytes(
            &format!("/v1/containers/{id}/workspace/chunks?plan={plan}&batch={k}"),
            body,
        )
        .await?;
    }
    let request = PushRequest {
        generation,
        plan,
        conflict,
    };
    let report: PushReport = api
        .post(&format!("/v1/containers/{id}/workspace/push"), &request)
        .await?;
    Ok((report, wire))
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
