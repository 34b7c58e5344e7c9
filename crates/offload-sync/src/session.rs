//! One sync between a sender and a receiver over a [`Transport`]: the pull and the push the
//! agent runs against the server, the same run in process by the benchmark and the tests,
//! and the server's side of both. The tuning (batch sizes, requests in flight, memory
//! caps) is defined here once, and every side uses it.
//!
//! A pull ([`pull`]): the receiver asks for the sender's manifest (naming the one it last
//! received, so it crosses as a delta) while it rescans its own tree, diffs, asks for the
//! chunks its tree lacks in batches ([`BATCHES_IN_FLIGHT`] in flight), and applies beside
//! the transfer. A push ([`push`]): the sender sends its delta, the receiver answers with
//! the chunk requests it needs served ([`plan_push`]), the sender serves them
//! ([`serve_fetch`]), the receiver verifies and keeps them ([`receive_batch`]) and applies
//! on the commit ([`apply_push`]).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::apply::{ApplyOptions, ApplyReport, apply};
use crate::chunk::ChunkId;
use crate::delta::{Delta, diff};
use crate::error::SyncError;
use crate::manifest::{EntryKind, Limits, Manifest};
use crate::path::RelPath;
use crate::protocol::{
    PushReport, Wanted, decode_plan, decode_reply, decode_update, encode_plan, encode_request,
    encode_update, fetch_batches, serve_request, wanted_chunks,
};
use crate::scan::{ScanOptions, ScanStats, scan};
use crate::source::{Chain, ChunkSource, Incoming, MemoryChunks, TreeChunks};

/// Most raw chunk bytes asked for in one request, by a pull and by a push's plan.
pub const BATCH_BYTES: u64 = 16 << 20;
/// Most chunks asked for in one request.
pub const BATCH_CHUNKS: usize = 4096;
/// Chunk requests a pull keeps in flight, so the sender reads and encodes the next batch
/// while the receiver decodes the last.
pub const BATCHES_IN_FLIGHT: usize = 2;
/// Old bytes of the receiver's tree read to patch wanted chunks against, at most, per sync.
pub const BASIS_BUDGET: usize = 64 << 20;
/// Received bytes held for the apply before the transfer waits for it to catch up.
pub const INCOMING_CAP: usize = 128 << 20;
/// Largest chunk batch either side accepts in one message.
pub const MAX_BATCH_BYTES: usize = 64 << 20;
/// How often a pull starts over when the sender's tree changed while it was read.
pub const PULL_ATTEMPTS: usize = 5;
/// Times in a row a chunk batch is asked for again after a transient failure, waiting
/// [`retry_wait`] before each: about half a minute of a cut link, after which the pull
/// fails. The batches already in stay applied; only the ones in flight cross again.
pub const FETCH_RETRIES: u32 = 8;

/// The limits every side of a session holds the other's messages to.
pub fn limits() -> Limits {
    Limits {
        max_batch_bytes: MAX_BATCH_BYTES,
        ..Limits::default()
    }
}

/// How a session reaches the other side: over HTTPS to the server (the agent), or in
/// process (the benchmark and the tests). Bodies are the messages of
/// [`protocol`](crate::protocol). Calls may come from several threads at once.
pub trait Transport: Sync {
    type Error: std::error::Error + Send + Sync + 'static;

    /// The sender's current manifest as an [`encode_update`] against `base`, the digest of
    /// a manifest the receiver holds.
    fn manifest(&self, base: Option<[u8; 32]>) -> Result<Vec<u8>, Self::Error>;
    /// Serves an [`encode_request`] with a [`serve_request`] batch.
    fn fetch(&self, request: Vec<u8>) -> Result<Vec<u8>, Self::Error>;
    /// Sends a push's binary [`Delta`]; answers an [`encode_plan`].
    fn plan(&self, delta: Vec<u8>) -> Result<Vec<u8>, Self::Error>;
    /// Sends the answer to request `batch` of plan `plan`.
    fn upload(&self, plan: u64, batch: usize, chunks: Vec<u8>) -> Result<(), Self::Error>;
    /// Commits plan `plan`; answers once the receiver's files are durably in place.
    fn push(&self, plan: u64) -> Result<PushReport, Self::Error>;
    /// Whether `error` says the sender's tree changed while it was read, so a pull may
    /// start over with a fresh manifest.
    fn is_conflict(_error: &Self::Error) -> bool {
        false
    }
    /// Whether `error` is the link's (a dropped connection, a timeout, a server that is
    /// briefly unavailable), so the same request may succeed again shortly.
    fn is_transient(_error: &Self::Error) -> bool {
        false
    }
    /// The wait before retry `n` (from 1) of a request that failed transiently.
    fn retry_wait(n: u32) -> Duration {
        retry_wait(n)
    }
}

/// Why a session failed. Whatever the cause, a failed pull leaves the receiver's tree as it
/// was (apply renames nothing into place until every file is staged).
#[derive(Debug, thiserror::Error)]
pub enum SessionError<E: std::error::Error + 'static> {
    /// The transport failed: the other side refused or could not be reached.
    #[error(transparent)]
    Transport(E),
    /// The other side sent something that does not check out.
    #[error("the other side sent {what} that does not check out: {source}")]
    Invalid {
        what: &'static str,
        source: SyncError,
    },
    /// Scanning, reading or applying on this side failed.
    #[error(transparent)]
    Sync(#[from] SyncError),
}

fn invalid<E: std::error::Error>(what: &'static str) -> impl FnOnce(SyncError) -> SessionError<E> {
    move |source| SessionError::Invalid { what, source }
}

fn joined<T>(handle: thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// What a pull starts from.
pub struct Pull<'a> {
    /// The receiver's tree.
    pub root: &'a Path,
    /// The receiver's previous scan of its tree, or the manifest it last pulled (which the
    /// tree matches): the rescan then reads only files whose size or mtime changed.
    pub previous: Option<&'a Manifest>,
    /// The sender's manifest this side last received, named so the new one crosses as a
    /// delta.
    pub base: Option<&'a Manifest>,
    /// Called with (bytes received, bytes wanted) after each batch.
    pub progress: Option<&'a (dyn Fn(u64, u64) + Sync)>,
}

/// Where a pull's bytes and time went.
#[derive(Clone, Debug, Default)]
pub struct PullStats {
    /// Bytes from the sender: the manifest update, then chunk batches.
    pub to_receiver: u64,
    /// Bytes to the sender: the base digest and the chunk requests.
    pub to_sender: u64,
    /// Of `to_receiver`, the manifest update alone.
    pub manifest_bytes: u64,
    /// Round trips (the manifest, then each chunk request).
    pub requests: u64,
    pub chunks_fetched: u64,
    /// Of the chunks fetched, those asked for with a basis to patch against.
    pub chunks_patched: u64,
    /// The receiver's rescan of its own tree.
    pub local_scan: ScanStats,
    pub local_scan_time: Duration,
    /// From the start until the manifest update arrived.
    pub manifest_at: Duration,
    /// From the start until the delta was computed.
    pub delta_at: Duration,
    /// From the start until the last chunk batch was decoded.
    pub chunks_at: Duration,
    /// From the start until the apply (beside the transfer) was durable.
    pub applied_at: Duration,
    pub wall: Duration,
    /// Attempts made (more than one when the sender's tree changed while read).
    pub attempts: usize,
    /// Chunk batches asked for again after a transient failure of the link.
    pub fetch_retries: u64,
}

/// The wait before retry `n` (from 1) of a chunk batch: 0.5 s doubling to 8 s.
pub fn retry_wait(n: u32) -> Duration {
    Duration::from_millis(500u64 << n.saturating_sub(1).min(4))
}

/// The outcome of a pull.
#[derive(Clone, Debug)]
pub struct Pulled {
    /// The sender's manifest, which the receiver's tree now matches.
    pub manifest: Manifest,
    pub stats: PullStats,
}

/// Makes the receiver's tree equal to the sender's, fetching only chunks it does not hold
/// and patching those that replace old bytes of the same file. The sender's copy is the
/// one to follow, so a pull may empty the receiver's tree. Starts over (up to
/// [`PULL_ATTEMPTS`] times) when the sender's tree changed while it was read.
pub fn pull<T: Transport>(
    transport: &T,
    pull: &Pull<'_>,
) -> Result<Pulled, SessionError<T::Error>> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match pull_once(transport, pull) {
            Ok(mut pulled) => {
                pulled.stats.attempts = attempt;
                return Ok(pulled);
            }
            Err(SessionError::Transport(e)) if attempt < PULL_ATTEMPTS && T::is_conflict(&e) => {
                continue;
            }
            Err(e) => return Err(e),
        }
    }
}

fn pull_once<T: Transport>(
    transport: &T,
    pull: &Pull<'_>,
) -> Result<Pulled, SessionError<T::Error>> {
    let start = Instant::now();
    let limits = limits();
    let mut stats = PullStats {
        requests: 1,
        ..PullStats::default()
    };
    let (remote, own) = compare(transport, pull, &mut stats, start)?;
    let delta = diff(&own, &remote);
    stats.delta_at = start.elapsed();
    if delta.is_empty() {
        stats.chunks_at = stats.delta_at;
        stats.applied_at = stats.delta_at;
        stats.wall = start.elapsed();
        return Ok(Pulled {
            manifest: remote,
            stats,
        });
    }

    let local = TreeChunks::new(pull.root, &own)?;
    let wanted = wanted_chunks(&delta, &own, |c| local.contains(c), &local, BASIS_BUDGET);
    stats.chunks_fetched = wanted.len() as u64;
    stats.chunks_patched = wanted.iter().filter(|w| w.basis.is_some()).count() as u64;
    let total: u64 = wanted.iter().map(|w| u64::from(w.len)).sum();
    let incoming = Incoming::new(&delta, wanted.iter().map(|w| w.id), INCOMING_CAP);
    let batches = fetch_batches(wanted, BATCH_BYTES, BATCH_CHUNKS);
    let options = ApplyOptions {
        allow_mass_delete: true,
        limits: limits.clone(),
        ..ApplyOptions::default()
    };

    thread::scope(|s| -> Result<(), SessionError<T::Error>> {
        // The apply writes each file as soon as its chunks are in.
        let applying = s.spawn(|| {
            let result = apply(
                pull.root,
                &delta,
                &Chain::new(vec![&local as &dyn ChunkSource, &incoming]),
                &options,
            );
            incoming.close(Some("the apply ended".to_owned()));
            result
        });
        let fetched = (|| -> Result<(), SessionError<T::Error>> {
            let mut next = batches.iter();
            let mut in_flight = VecDeque::new();
            let mut done = 0u64;
            let mut failures = 0u32;
            loop {
                while in_flight.len() < BATCHES_IN_FLIGHT {
                    let Some(batch) = next.next() else { break };
                    let request = encode_request(batch);
                    stats.to_sender += request.len() as u64;
                    stats.requests += 1;
                    in_flight.push_back((batch, s.spawn(move || transport.fetch(request))));
                }
                let Some((batch, reply)) = in_flight.pop_front() else {
                    return Ok(());
                };
                let body = match joined(reply) {
                    Ok(body) => body,
                    // The link dropped: this batch is asked for again, first, once the
                    // link may be back; what came before it stays.
                    Err(e) if T::is_transient(&e) && failures < FETCH_RETRIES => {
                        failures += 1;
                        stats.fetch_retries += 1;
                        thread::sleep(T::retry_wait(failures));
                        let request = encode_request(batch);
                        stats.to_sender += request.len() as u64;
                        stats.requests += 1;
                        in_flight.push_front((batch, s.spawn(move || transport.fetch(request))));
                        continue;
                    }
                    Err(e) => return Err(SessionError::Transport(e)),
                };
                failures = 0;
                if incoming.is_closed() {
                    // The apply failed; its error says why.
                    return Ok(());
                }
                stats.to_receiver += body.len() as u64;
                let chunks =
                    decode_reply(&body, batch, &limits).map_err(invalid("a chunk batch"))?;
                drop(body);
                for (id, bytes) in chunks {
                    done += bytes.len() as u64;
                    incoming.push(id, bytes);
                }
                if let Some(progress) = pull.progress {
                    progress(done, total);
                }
            }
        })();
        stats.chunks_at = start.elapsed();
        incoming.close(fetched.as_ref().err().map(|e| e.to_string()));
        let applied = joined(applying);
        fetched?;
        applied?;
        Ok(())
    })?;
    stats.applied_at = start.elapsed();
    stats.wall = stats.applied_at;
    Ok(Pulled {
        manifest: remote,
        stats,
    })
}

/// The first half of a pull: the sender's manifest, fetched while the receiver rescans its
/// own tree. Returns (the sender's, the receiver's).
fn compare<T: Transport>(
    transport: &T,
    pull: &Pull<'_>,
    stats: &mut PullStats,
    start: Instant,
) -> Result<(Manifest, Manifest), SessionError<T::Error>> {
    let limits = limits();
    let base = pull.base.map(Manifest::digest);
    stats.to_sender += base.map_or(0, |d| d.len() as u64);
    // The receiver rescans its tree while the sender rescans its own.
    let (update, scanned) = thread::scope(|s| {
        let scanning = s.spawn(|| {
            let t = Instant::now();
            scan(pull.root, &ScanOptions::default(), pull.previous).map(|r| (r, t.elapsed()))
        });
        let update = transport.manifest(base);
        stats.manifest_at = start.elapsed();
        (update, joined(scanning))
    });
    let update = update.map_err(SessionError::Transport)?;
    let (scanned, scan_time) = scanned?;
    stats.local_scan = scanned.stats;
    stats.local_scan_time = scan_time;
    stats.manifest_bytes = update.len() as u64;
    stats.to_receiver += update.len() as u64;
    let remote = decode_update(&update, pull.base, &limits).map_err(invalid("a manifest"))?;
    drop(update);
    let own = scanned.manifest;
    Ok((remote, own))
}

/// What a pull would bring, found without bringing it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PullEstimate {
    /// Chunk bytes the receiver lacks (before patching, which may send fewer).
    pub bytes: u64,
    /// The manifest update, which crosses in any case.
    pub manifest_bytes: u64,
    /// Files that would be written.
    pub files: u64,
    /// Paths that would be removed.
    pub deletes: u64,
    /// Bytes of every file of the sender's tree.
    pub tree_bytes: u64,
}

/// What a [`pull`] would fetch: the sender's manifest and the receiver's rescan, diffed,
/// and the chunks the receiver's tree lacks summed. Nothing is written.
pub fn estimate_pull<T: Transport>(
    transport: &T,
    pull: &Pull<'_>,
) -> Result<PullEstimate, SessionError<T::Error>> {
    let mut stats = PullStats::default();
    let (remote, own, local): (_, _, Box<dyn ChunkSource>) = if pull.root.exists() {
        let (remote, own) = compare(transport, pull, &mut stats, Instant::now())?;
        let local = TreeChunks::new(pull.root, &own)?;
        (remote, own, Box::new(local))
    } else {
        // Nothing here yet: everything would cross.
        let update = transport.manifest(None).map_err(SessionError::Transport)?;
        stats.manifest_bytes = update.len() as u64;
        let remote = decode_update(&update, None, &limits()).map_err(invalid("a manifest"))?;
        (remote, Manifest::empty(), Box::new(MemoryChunks::new()))
    };
    let delta = diff(&own, &remote);
    let wanted = wanted_chunks(&delta, &own, |c| local.contains(c), local.as_ref(), 0);
    Ok(PullEstimate {
        bytes: wanted.iter().map(|w| u64::from(w.len)).sum(),
        manifest_bytes: stats.manifest_bytes,
        files: delta
            .upserts
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::File { .. }))
            .count() as u64,
        deletes: delta.deletes.len() as u64,
        tree_bytes: remote.total_file_bytes(),
    })
}

/// The outcome of a push.
#[derive(Clone, Debug)]
pub struct Pushed {
    pub report: PushReport,
    /// Bytes to the receiver: the delta and the chunk batches.
    pub to_receiver: u64,
    /// Bytes from the receiver: the plan.
    pub to_sender: u64,
    /// Chunk requests of the plan served.
    pub batches: usize,
}

/// Sends `delta` (from what the receiver holds to `current`, the sender's scan of `root`):
/// the delta, then the chunks the receiver asks for (patched against its old bytes where it
/// has them, the next batch read while the last one is on its way), then the commit, which
/// the receiver answers once its files are durably in place.
pub fn push<T: Transport>(
    transport: &T,
    root: &Path,
    current: &Manifest,
    delta: &Delta,
) -> Result<Pushed, SessionError<T::Error>> {
    let limits = limits();
    let body = delta.to_bytes();
    let mut to_receiver = body.len() as u64;
    let answer = transport.plan(body).map_err(SessionError::Transport)?;
    let to_sender = answer.len() as u64;
    let (plan, requests) = decode_plan(&answer).map_err(invalid("a push plan"))?;
    drop(answer);
    let batches = requests.len();
    if batches > 0 {
        let tree = TreeChunks::new(root, current)?;
        thread::scope(|s| -> Result<(), SessionError<T::Error>> {
            let mut uploading: Option<thread::ScopedJoinHandle<'_, Result<(), T::Error>>> = None;
            for (k, request) in requests.into_iter().enumerate() {
                let reply = serve_request(&request, &tree, &limits)?;
                to_receiver += reply.len() as u64;
                if let Some(previous) = uploading.take() {
                    joined(previous).map_err(SessionError::Transport)?;
                }
                uploading = Some(s.spawn(move || transport.upload(plan, k, reply)));
            }
            if let Some(last) = uploading {
                joined(last).map_err(SessionError::Transport)?;
            }
            Ok(())
        })?;
    }
    let report = transport.push(plan).map_err(SessionError::Transport)?;
    Ok(Pushed {
        report,
        to_receiver,
        to_sender,
        batches,
    })
}

/// The sender's answer to a manifest request: `current` as a delta from `base` when the
/// sender still holds the manifest the receiver named, else whole.
pub fn serve_manifest(current: &Manifest, base: Option<&Manifest>) -> Vec<u8> {
    encode_update(current, base)
}

/// The sender's answer to a chunk request, read out of its tree. A file that changed since
/// the scan gives [`SyncError::SourceChanged`] (or `ChunkNotFound`): the receiver fetches
/// the manifest again.
pub fn serve_fetch(tree: &TreeChunks, request: &[u8]) -> Result<Vec<u8>, SyncError> {
    serve_request(request, tree, &limits())
}

/// The receiver's side of a push: decodes the pushed delta (validated against the limits).
pub fn decode_push(delta: &[u8]) -> Result<Delta, SyncError> {
    Delta::from_bytes(delta, &limits())
}

/// The receiver's plan for a pushed `delta` against its tree at `root` (scanned as `own`):
/// the chunks neither the tree nor `staged` (earlier uploads) holds, in batches, with the
/// old bytes to patch them against.
pub fn plan_push(
    root: &Path,
    own: &Manifest,
    delta: &Delta,
    staged: &dyn ChunkSource,
) -> Result<Vec<Vec<Wanted>>, SyncError> {
    let tree = TreeChunks::new(root, own)?;
    let wanted = wanted_chunks(
        delta,
        own,
        |c| tree.contains(c) || staged.contains(c),
        &tree,
        BASIS_BUDGET,
    );
    Ok(fetch_batches(wanted, BATCH_BYTES, BATCH_CHUNKS))
}

/// Verifies the answer to one request of a push's plan and hands each chunk to `keep`.
/// Returns how many chunks it held.
pub fn receive_batch(
    body: &[u8],
    batch: &[Wanted],
    mut keep: impl FnMut(ChunkId, Vec<u8>) -> Result<(), SyncError>,
) -> Result<usize, SyncError> {
    let chunks = decode_reply(body, batch, &limits())?;
    let n = chunks.len();
    for (id, bytes) in chunks {
        keep(id, bytes)?;
    }
    Ok(n)
}

/// Applies a pushed delta to the receiver's tree (below `prefix`, for a fenced copy's late
/// changes), from the staged chunks and what the tree already holds, with fsync.
pub fn apply_push(
    root: &Path,
    own: &Manifest,
    delta: &Delta,
    staged: &dyn ChunkSource,
    prefix: Option<RelPath>,
) -> Result<ApplyReport, SyncError> {
    let tree = TreeChunks::new(root, own)?;
    let source = Chain::new(vec![staged, &tree]);
    let options = ApplyOptions {
        prefix,
        limits: limits(),
        ..ApplyOptions::default()
    };
    apply(root, delta, &source, &options)
}

/// Manifests a sender keeps as bases a receiver may name.
pub const RECENT_MANIFESTS: usize = 4;

/// A transport to a tree in this process, with the server's behaviour: it rescans its
/// tree for every manifest request (reading only changed files), keeps the last
/// [`RECENT_MANIFESTS`] manifests as bases, serves chunks from its tree and takes pushes
/// into it. It counts the bytes of every answer. Used by the benchmark and the tests.
pub struct InProcess {
    root: PathBuf,
    state: Mutex<InProcessState>,
    answered: AtomicU64,
}

#[derive(Default)]
struct InProcessState {
    /// Newest first.
    recent: VecDeque<Arc<Manifest>>,
    tree: Option<Arc<TreeChunks>>,
    last_scan: Option<(ScanStats, Duration)>,
    plan: Option<InProcessPlan>,
    next_plan: u64,
}

struct InProcessPlan {
    id: u64,
    delta: Delta,
    batches: Vec<Vec<Wanted>>,
    staged: MemoryChunks,
}

impl InProcess {
    /// A transport to the tree at `root`; `previous` is an earlier scan of it, if any (the
    /// next rescan trusts it for unchanged files, and a receiver may name it as its base).
    pub fn new(root: impl Into<PathBuf>, previous: Option<Manifest>) -> Self {
        InProcess {
            root: root.into(),
            state: Mutex::new(InProcessState {
                recent: previous.map(Arc::new).into_iter().collect(),
                next_plan: 1,
                ..InProcessState::default()
            }),
            answered: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InProcessState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes of every answer so far.
    pub fn answered_bytes(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// The stats and duration of the last rescan of the tree.
    pub fn last_scan(&self) -> Option<(ScanStats, Duration)> {
        self.lock().last_scan
    }

    /// The manifest of the last rescan.
    pub fn current_manifest(&self) -> Option<Arc<Manifest>> {
        self.lock().recent.front().cloned()
    }

    fn answer(&self, body: Vec<u8>) -> Vec<u8> {
        self.answered
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        body
    }

    fn rescan(&self) -> Result<Arc<Manifest>, SyncError> {
        let previous = self.current_manifest();
        let started = Instant::now();
        let scanned = scan(&self.root, &ScanOptions::default(), previous.as_deref())?;
        let elapsed = started.elapsed();
        let manifest = Arc::new(scanned.manifest);
        let tree = Arc::new(TreeChunks::new(&self.root, &manifest)?);
        let mut state = self.lock();
        state.last_scan = Some((scanned.stats, elapsed));
        state.tree = Some(tree);
        state.recent.push_front(manifest.clone());
        state.recent.truncate(RECENT_MANIFESTS);
        Ok(manifest)
    }

    fn current(&self) -> Result<Arc<Manifest>, SyncError> {
        match self.current_manifest() {
            Some(m) => Ok(m),
            None => self.rescan(),
        }
    }
}

impl Transport for InProcess {
    type Error = SyncError;

    fn manifest(&self, base: Option<[u8; 32]>) -> Result<Vec<u8>, SyncError> {
        let current = self.rescan()?;
        let base = base.and_then(|d| self.lock().recent.iter().find(|m| m.digest() == d).cloned());
        Ok(self.answer(serve_manifest(&current, base.as_deref())))
    }

    fn fetch(&self, request: Vec<u8>) -> Result<Vec<u8>, SyncError> {
        let tree = match self.lock().tree.clone() {
            Some(tree) => tree,
            None => {
                return Err(SyncError::refused("chunks asked for before the manifest"));
            }
        };
        serve_fetch(&tree, &request).map(|b| self.answer(b))
    }

    fn plan(&self, delta: Vec<u8>) -> Result<Vec<u8>, SyncError> {
        let delta = decode_push(&delta)?;
        let own = self.current()?;
        let staged = MemoryChunks::new();
        let batches = plan_push(&self.root, &own, &delta, &staged)?;
        let mut state = self.lock();
        let id = state.next_plan;
        state.next_plan += 1;
        let body = encode_plan(id, &batches);
        state.plan = Some(InProcessPlan {
            id,
            delta,
            batches,
            staged,
        });
        drop(state);
        Ok(self.answer(body))
    }

    fn upload(&self, plan: u64, batch: usize, chunks: Vec<u8>) -> Result<(), SyncError> {
        let mut state = self.lock();
        let Some(p) = state.plan.as_mut().filter(|p| p.id == plan) else {
            return Err(SyncError::refused(format!(
                "no push plan {plan} in progress"
            )));
        };
        let Some(wanted) = p.batches.get(batch) else {
            return Err(SyncError::refused(format!(
                "plan {plan} has no batch {batch}"
            )));
        };
        let staged = &mut p.staged;
        receive_batch(&chunks, wanted, |id, bytes| staged.insert(id, bytes))?;
        Ok(())
    }

    fn push(&self, plan: u64) -> Result<PushReport, SyncError> {
        let own = self.current()?;
        let p = {
            let mut state = self.lock();
            match state.plan.take() {
                Some(p) if p.id == plan => p,
                other => {
                    state.plan = other;
                    return Err(SyncError::refused(format!(
                        "no push plan {plan} in progress"
                    )));
                }
            }
        };
        let report = apply_push(&self.root, &own, &p.delta, &p.staged, None)?;
        self.rescan()?;
        Ok(PushReport {
            files_written: report.files_written,
            bytes_written: report.bytes_written,
            deleted: report.deleted,
            conflict_dir: None,
        })
    }

    fn is_conflict(error: &SyncError) -> bool {
        matches!(
            error,
            SyncError::SourceChanged { .. } | SyncError::ChunkNotFound { .. }
        )
    }
}
