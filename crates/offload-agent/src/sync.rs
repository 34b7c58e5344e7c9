//! The edge side of workspace sync: pulling the cloud copy down (pre-copy and final
//! delta) and pushing edge changes up, against the manifest the server acknowledged.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use offload_core::agent::AgentMessage;
use offload_sync::protocol::{ChunkList, PushReport, PushRequest};
use offload_sync::{
    ApplyOptions, Chain, ChunkId, ChunkSource, ChunkStore, Delta, Entry, EntryKind, Limits,
    Manifest, MemoryChunks, ScanOptions, TreeChunks, decode_chunks, diff, encode_chunks,
};

use crate::client::{Api, CallError};

/// Largest chunk batch the agent asks for or sends at once.
const BATCH_BYTES: u64 = 16 << 20;
const BATCH_CHUNKS: usize = 4096;

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

fn chunk_lens(manifest: &Manifest) -> std::collections::HashMap<ChunkId, u32> {
    manifest
        .entries
        .iter()
        .filter_map(|e| match &e.kind {
            EntryKind::File { chunks, .. } => Some(chunks.iter().map(|c| (c.id, c.len))),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Splits chunk ids into batches of bounded count and bytes.
fn batches(ids: Vec<ChunkId>, lens: &std::collections::HashMap<ChunkId, u32>) -> Vec<Vec<ChunkId>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0u64;
    for id in ids {
        let len = u64::from(lens.get(&id).copied().unwrap_or(0));
        if !current.is_empty() && (bytes + len > BATCH_BYTES || current.len() >= BATCH_CHUNKS) {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += len;
        current.push(id);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Fetched chunks kept in memory until they are applied, up to [`HELD_IN_MEMORY`] bytes;
/// the rest spill to the chunk cache on disk. Writing every fetched chunk to the cache
/// first and then again into the workspace doubled the disk writes of a pre-copy.
#[derive(Default)]
struct Held {
    chunks: MemoryChunks,
    bytes: usize,
}

/// Fetched bytes a pull keeps in memory before spilling to the chunk cache.
const HELD_IN_MEMORY: usize = 256 << 20;

impl Held {
    fn keep(&mut self, cache: &Path, id: ChunkId, data: Vec<u8>) -> anyhow::Result<()> {
        if self.bytes + data.len() <= HELD_IN_MEMORY {
            self.bytes += data.len();
            self.chunks.insert(id, data)?;
        } else {
            ChunkStore::open_cache(cache)?.put(&id, &data)?;
        }
        Ok(())
    }
}

/// The outcome of a pull.
pub struct Pulled {
    /// The server's manifest, which the local tree now matches.
    pub manifest: Manifest,
    pub bytes: u64,
}

/// Makes `dir` equal to the cloud copy of `id`, fetching only chunks that neither the
/// local tree nor the chunk cache holds.
///
/// `previous` is what the local tree held after the last pull, if this process made it:
/// the local rescan then reads only files whose size or mtime changed since, so the final
/// delta, taken while the container is down, does not re-read the whole workspace.
pub async fn pull(
    api: &Api,
    id: &str,
    dir: &Path,
    cache: &Path,
    previous: Option<Arc<Manifest>>,
    progress: Option<(&ProgressSink, &str)>,
) -> anyhow::Result<Pulled> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match pull_once(api, id, dir, cache, previous.clone(), progress).await {
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
    cache: &Path,
    previous: Option<Arc<Manifest>>,
    progress: Option<(&ProgressSink, &str)>,
) -> anyhow::Result<Pulled> {
    let started = std::time::Instant::now();
    let remote: Manifest = api
        .get(&format!("/v1/containers/{id}/workspace/manifest"))
        .await?;
    let manifest_at = started.elapsed();
    remote
        .validate(&limits())
        .context("the server sent an invalid manifest")?;
    let local = scan(dir, previous).await?;
    let scanned_at = started.elapsed();
    let mut fetching = std::time::Duration::ZERO;
    let delta = diff(&local, &remote);
    let store = ChunkStore::open_cache(cache)?;
    let local_chunks: HashSet<ChunkId> = chunk_lens(&local).into_keys().collect();
    let needed = delta.needed_chunks(|c| local_chunks.contains(c) || store.contains(c));
    let lens = chunk_lens(&remote);
    let total: u64 = needed
        .iter()
        .map(|c| u64::from(lens.get(c).copied().unwrap_or(0)))
        .sum();
    let mut done = 0u64;
    let mut wire = 0u64;
    let mut memory = Held::default();
    for batch in batches(needed, &lens) {
        let asked = std::time::Instant::now();
        let bytes = api
            .post_for_bytes(
                &format!("/v1/containers/{id}/workspace/fetch"),
                &ChunkList { ids: batch },
            )
            .await?;
        fetching += asked.elapsed();
        wire += bytes.len() as u64;
        let cache = cache.to_owned();
        let mut held = std::mem::take(&mut memory);
        let (n, held) = tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, Held)> {
            let chunks = decode_chunks(&bytes, &limits())?;
            let mut n = 0;
            for (chunk, data) in chunks {
                n += data.len() as u64;
                held.keep(&cache, chunk, data)?;
            }
            Ok((n, held))
        })
        .await??;
        memory = held;
        done += n;
        if let Some((sink, container)) = progress {
            sink(AgentMessage::Progress {
                container_id: container.to_owned(),
                phase: "workspace".to_owned(),
                done,
                total,
            });
        }
    }
    let fetched_at = started.elapsed();
    if !delta.is_empty() {
        let dir = dir.to_owned();
        let cache = cache.to_owned();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let store = ChunkStore::open_cache(&cache)?;
            let tree = TreeChunks::new(&dir, &local)?;
            let source = Chain::new(vec![&tree as &dyn ChunkSource, &memory.chunks, &store]);
            // The cloud copy is the durable one: when pulling, the edge follows it even
            // when that empties the tree.
            let options = ApplyOptions {
                allow_mass_delete: true,
                ..ApplyOptions::default()
            };
            offload_sync::apply(&dir, &delta, &source, &options)?;
            Ok(())
        })
        .await??;
    }
    tracing::debug!(
        %id,
        manifest = ?manifest_at,
        local_scan = ?(scanned_at - manifest_at),
        fetch_wait = ?fetching,
        fetch_and_store = ?(fetched_at - scanned_at),
        apply = ?(started.elapsed() - fetched_at),
        bytes = wire,
        "pulled the workspace"
    );
    Ok(Pulled {
        manifest: remote,
        bytes: wire,
    })
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

/// Sends `delta` (between what the server acknowledged and `current`): the chunks the
/// server lacks first, then the delta itself, which the server applies durably.
pub async fn push(
    api: &Api,
    id: &str,
    dir: &Path,
    current: &Manifest,
    delta: Delta,
    generation: u64,
    conflict: bool,
) -> Result<(PushReport, u64), PushError> {
    let wanted = delta.needed_chunks(|_| false);
    let lens = chunk_lens(current);
    let mut missing = Vec::new();
    for batch in wanted.chunks(BATCH_CHUNKS) {
        let answer: ChunkList = api
            .post(
                &format!("/v1/containers/{id}/workspace/missing"),
                &ChunkList {
                    ids: batch.to_vec(),
                },
            )
            .await?;
        missing.extend(answer.ids);
    }
    let mut wire = 0u64;
    for batch in batches(missing, &lens) {
        let dir: PathBuf = dir.to_owned();
        let manifest = current.clone();
        let body = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<u8>> {
            let tree = TreeChunks::new(&dir, &manifest)?;
            let mut chunks = Vec::with_capacity(batch.len());
            for chunk in &batch {
                chunks.push((*chunk, tree.get(chunk)?));
            }
            Ok(encode_chunks(
                chunks.iter().map(|(c, b)| (*c, b.as_slice())),
            )?)
        })
        .await
        .map_err(anyhow::Error::from)??;
        wire += body.len() as u64;
        api.post_bytes(&format!("/v1/containers/{id}/workspace/chunks"), body)
            .await?;
    }
    let request = PushRequest {
        generation,
        delta,
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
