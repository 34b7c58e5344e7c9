//! Where chunk bytes come from: the `ChunkSource` seam, the on-disk `ChunkStore` cache,
//! `TreeChunks` (chunks read out of a live tree) and `Chain` (try several in order).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::chunk::{ChunkId, MAX_CHUNK_SIZE};
use crate::error::SyncError;
use crate::manifest::{EntryKind, Manifest};
use crate::path::RelPath;
use crate::rooted::RootDir;

/// Gives the bytes of a chunk by id. Implementations return [`SyncError::ChunkNotFound`]
/// when they do not hold it, so a [`Chain`] can try the next source. A source need not be
/// trusted: callers verify what it gives, unless it says it verified it already.
pub trait ChunkSource {
    fn get(&self, id: &ChunkId) -> Result<Vec<u8>, SyncError>;

    /// Whether `get` would find the chunk. May be answered without reading it.
    fn contains(&self, id: &ChunkId) -> bool;

    /// Whether every chunk `get` gives has been checked against its id already, so
    /// [`apply`](crate::apply) need not hash it again. False unless a source makes sure.
    fn verified(&self) -> bool {
        false
    }
}

/// Checks that `bytes` are the chunk `id`.
pub fn verify_chunk(id: &ChunkId, bytes: &[u8]) -> Result<(), SyncError> {
    if bytes.len() > MAX_CHUNK_SIZE {
        return Err(SyncError::ChunkCorrupt {
            id: *id,
            reason: format!("{} bytes exceed the maximum chunk size", bytes.len()),
        });
    }
    if ChunkId::of(bytes) != *id {
        return Err(SyncError::ChunkCorrupt {
            id: *id,
            reason: "content does not match its hash".to_owned(),
        });
    }
    Ok(())
}

/// Chunks held in memory, e.g. a decoded wire batch.
#[derive(Clone, Debug, Default)]
pub struct MemoryChunks {
    chunks: HashMap<ChunkId, Vec<u8>>,
}

impl MemoryChunks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a chunk after checking its hash.
    pub fn insert(&mut self, id: ChunkId, bytes: Vec<u8>) -> Result<(), SyncError> {
        verify_chunk(&id, &bytes)?;
        self.chunks.insert(id, bytes);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
}

impl ChunkSource for MemoryChunks {
    fn get(&self, id: &ChunkId) -> Result<Vec<u8>, SyncError> {
        self.chunks
            .get(id)
            .cloned()
            .ok_or(SyncError::ChunkNotFound { id: *id })
    }

    fn contains(&self, id: &ChunkId) -> bool {
        self.chunks.contains_key(id)
    }

    /// Checked on insert.
    fn verified(&self) -> bool {
        true
    }
}

/// A content-addressed chunk cache on disk: `<dir>/<first 2 hex>/<64 hex>`.
///
/// `put` verifies the hash and writes atomically (temp file, fsync, rename), so a crash
/// leaves a chunk either whole or absent; `get` verifies again, so bit rot is an error,
/// not corrupt output.
#[derive(Clone, Debug)]
pub struct ChunkStore {
    dir: PathBuf,
    durable: bool,
}

impl ChunkStore {
    /// Opens (creating if needed) a store in `dir` whose chunks are fsynced.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, SyncError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| SyncError::io("create chunk store", &dir, e))?;
        Ok(ChunkStore { dir, durable: true })
    }

    /// Opens a store used as a cache or a staging area: chunks are renamed into place but
    /// not fsynced. A chunk damaged by a crash fails verification on `get`, which also
    /// removes it, so the next sync fetches it again; what must survive a crash is the
    /// applied tree, which `apply` fsyncs.
    pub fn open_cache(dir: impl Into<PathBuf>) -> Result<Self, SyncError> {
        let mut store = Self::open(dir)?;
        store.durable = false;
        Ok(store)
    }

    fn path_of(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.dir.join(&hex[..2]).join(hex)
    }

    /// Stores a chunk after checking its hash. Storing a chunk already present is a no-op.
    pub fn put(&self, id: &ChunkId, bytes: &[u8]) -> Result<(), SyncError> {
        verify_chunk(id, bytes)?;
        let path = self.path_of(id);
        if path.exists() {
            return Ok(());
        }
        let dir = path.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(dir).map_err(|e| SyncError::io("create chunk store", dir, e))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(dir)
            .map_err(|e| SyncError::io("create temp file in", dir, e))?;
        tmp.write_all(bytes)
            .and_then(|()| {
                if self.durable {
                    tmp.as_file().sync_all()
                } else {
                    Ok(())
                }
            })
            .map_err(|e| SyncError::io("write", tmp.path().to_owned(), e))?;
        tmp.persist(&path)
            .map_err(|e| SyncError::io("rename chunk into", &path, e.error))?;
        if self.durable { sync_dir(dir) } else { Ok(()) }
    }

    /// Removes a chunk; absent is fine.
    pub fn remove(&self, id: &ChunkId) -> Result<(), SyncError> {
        let path = self.path_of(id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(SyncError::io("remove chunk", path, e))
            }
            _ => Ok(()),
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), SyncError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| SyncError::io("fsync directory", dir, e))
}

impl ChunkSource for ChunkStore {
    fn get(&self, id: &ChunkId) -> Result<Vec<u8>, SyncError> {
        let path = self.path_of(id);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SyncError::ChunkNotFound { id: *id });
            }
            Err(e) => return Err(SyncError::io("read chunk", path, e)),
        };
        if let Err(e) = verify_chunk(id, &bytes) {
            if !self.durable {
                // A cache forgets what it cannot vouch for; the next sync fetches it again.
                let _ = std::fs::remove_file(&path);
            }
            return Err(e);
        }
        Ok(bytes)
    }

    fn contains(&self, id: &ChunkId) -> bool {
        self.path_of(id).is_file()
    }

    /// Every read is hashed (bit rot is an error).
    fn verified(&self) -> bool {
        true
    }
}

#[derive(Clone, Debug)]
struct Location {
    path: RelPath,
    offset: u64,
    len: u32,
}

/// Chunks read out of a live tree, located through a manifest of that tree.
///
/// This is how the sending side serves chunks without copying them, and how a receiver
/// reuses what its own tree already holds (after a rename, an earlier offload, a small
/// edit) instead of fetching it. Files are opened below the root without following
/// symlinks, and every chunk is hashed on the way out: a file that changed since the
/// scan gives [`SyncError::SourceChanged`], never wrong bytes.
#[derive(Debug)]
pub struct TreeChunks {
    root: RootDir,
    index: HashMap<ChunkId, Location>,
    open: Mutex<Option<(RelPath, File)>>,
}

impl TreeChunks {
    /// Indexes every chunk of `manifest`, which describes the tree at `root`.
    pub fn new(root: &Path, manifest: &Manifest) -> Result<Self, SyncError> {
        let mut index = HashMap::new();
        for entry in &manifest.entries {
            if let EntryKind::File { chunks, .. } = &entry.kind {
                let mut offset = 0u64;
                for chunk in chunks {
                    index.entry(chunk.id).or_insert_with(|| Location {
                        path: entry.path.clone(),
                        offset,
                        len: chunk.len,
                    });
                    offset += u64::from(chunk.len);
                }
            }
        }
        Ok(TreeChunks {
            root: RootDir::open(root)?,
            index,
            open: Mutex::new(None),
        })
    }

    /// Number of distinct chunks the tree holds.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn read(&self, loc: &Location) -> io::Result<Vec<u8>> {
        let mut guard = self
            .open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let reuse = matches!(&*guard, Some((p, _)) if *p == loc.path);
        if !reuse {
            *guard = Some((loc.path.clone(), self.root.open_file(&loc.path)?));
        }
        let Some((_, file)) = &*guard else {
            return Err(io::Error::other("no open file"));
        };
        let mut buf = vec![0u8; loc.len as usize];
        file.read_exact_at(&mut buf, loc.offset)?;
        Ok(buf)
    }
}

impl ChunkSource for TreeChunks {
    fn get(&self, id: &ChunkId) -> Result<Vec<u8>, SyncError> {
        let loc = self
            .index
            .get(id)
            .ok_or(SyncError::ChunkNotFound { id: *id })?;
        let changed = || SyncError::SourceChanged {
            path: loc.path.to_string(),
            id: *id,
        };
        let bytes = match self.read(loc) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(changed()),
            Err(e) => {
                return Err(SyncError::io(
                    "read chunk from",
                    self.root.display(loc.path.as_str()),
                    e,
                ));
            }
        };
        if ChunkId::of(&bytes) != *id {
            return Err(changed());
        }
        Ok(bytes)
    }

    fn contains(&self, id: &ChunkId) -> bool {
        self.index.contains_key(id)
    }

    /// Every read is hashed (that is how a changed file is noticed).
    fn verified(&self) -> bool {
        true
    }
}

/// Tries sources in order; the first that holds a chunk gives it.
///
/// A local tree first, then the chunk cache, then what came over the network. A source
/// that fails for another reason than not holding the chunk (e.g. a local file changed)
/// is skipped too; if no source succeeds, the first such error is returned (it says more
/// than "not found").
pub struct Chain<'a> {
    sources: Vec<&'a dyn ChunkSource>,
}

impl<'a> Chain<'a> {
    pub fn new(sources: Vec<&'a dyn ChunkSource>) -> Self {
        Chain { sources }
    }
}

impl ChunkSource for Chain<'_> {
    fn get(&self, id: &ChunkId) -> Result<Vec<u8>, SyncError> {
        let mut last = SyncError::ChunkNotFound { id: *id };
        for source in &self.sources {
            match source.get(id) {
                Ok(bytes) => return Ok(bytes),
                Err(e) => {
                    if matches!(last, SyncError::ChunkNotFound { .. }) {
                        last = e;
                    }
                }
            }
        }
        Err(last)
    }

    fn contains(&self, id: &ChunkId) -> bool {
        self.sources.iter().any(|s| s.contains(id))
    }

    fn verified(&self) -> bool {
        self.sources.iter().all(|s| s.verified())
    }
}

/// Chunks arriving from the other side while an [`apply`](crate::apply) runs beside the
/// transfer: `get` waits for a chunk that is expected but has not arrived yet, so files
/// are written while later chunks are still on their way.
///
/// The receiver [`push`](Incoming::push)es verified chunks in the order apply needs them
/// (the order of [`wanted_chunks`](crate::protocol::wanted_chunks)), then
/// [`close`](Incoming::close)s. Each chunk is dropped after its last use by the delta, and
/// `push` waits while more than `cap` bytes are held and apply is busy, so memory stays
/// bounded however large the transfer. If the transfer fails, `close` with the reason
/// makes a waiting `get` fail instead of waiting forever.
pub struct Incoming {
    state: Mutex<IncomingState>,
    changed: std::sync::Condvar,
    cap: usize,
}

struct IncomingState {
    /// Uses left of each expected chunk.
    uses: HashMap<ChunkId, usize>,
    held: HashMap<ChunkId, Vec<u8>>,
    bytes: usize,
    closed: Option<String>,
    /// The chunk apply waits for, if it waits.
    awaited: Option<ChunkId>,
}

impl IncomingState {
    /// Apply waits for a chunk that has not arrived: holding more cannot be avoided.
    fn starving(&self) -> bool {
        self.awaited.is_some_and(|id| !self.held.contains_key(&id))
    }
}

impl Incoming {
    /// Expects `wanted`, each used as many times as `delta`'s files refer to it; holds at
    /// most about `cap` bytes that apply has not used yet.
    pub fn new(
        delta: &crate::Delta,
        wanted: impl IntoIterator<Item = ChunkId>,
        cap: usize,
    ) -> Self {
        let mut uses: HashMap<ChunkId, usize> = wanted.into_iter().map(|id| (id, 0)).collect();
        for entry in &delta.upserts {
            if let EntryKind::File { chunks, .. } = &entry.kind {
                for chunk in chunks {
                    if let Some(n) = uses.get_mut(&chunk.id) {
                        *n += 1;
                    }
                }
            }
        }
        Incoming {
            state: Mutex::new(IncomingState {
                uses,
                held: HashMap::new(),
                bytes: 0,
                closed: None,
                awaited: None,
            }),
            changed: std::sync::Condvar::new(),
            cap,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IncomingState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands over a chunk the caller has verified against its id (apply trusts it). Waits while too much
    /// is held, unless apply is waiting for a chunk (then holding more cannot be avoided).
    pub fn push(&self, id: ChunkId, bytes: Vec<u8>) {
        let mut state = self.lock();
        while state.bytes > self.cap && !state.starving() && state.closed.is_none() {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        if state.uses.get(&id).is_some_and(|n| *n > 0) && !state.held.contains_key(&id) {
            state.bytes += bytes.len();
            state.held.insert(id, bytes);
        }
        self.changed.notify_all();
    }

    /// No more chunks will come, or nobody will take them: called by the receiver when
    /// the transfer ends (with the reason if it failed) and after the apply returns, so
    /// neither side waits for the other in vain.
    pub fn close(&self, error: Option<String>) {
        let mut state = self.lock();
        state.closed = Some(error.unwrap_or_else(|| "the transfer ended".to_owned()));
        self.changed.notify_all();
    }
}

impl Incoming {
    /// Whether [`close`](Incoming::close) was called: a fetch loop stops early when the
    /// apply has already ended (it failed).
    pub fn is_closed(&self) -> bool {
        self.lock().closed.is_some()
    }
}

impl ChunkSource for Incoming {
    fn get(&self, id: &ChunkId) -> Result<Vec<u8>, SyncError> {
        let mut state = self.lock();
        if !state.uses.contains_key(id) {
            return Err(SyncError::ChunkNotFound { id: *id });
        }
        loop {
            if state.held.contains_key(id) {
                state.awaited = None;
                let left = state.uses.get_mut(id).map(|n| {
                    *n = n.saturating_sub(1);
                    *n
                });
                let bytes = if left == Some(0) {
                    let bytes = state.held.remove(id).unwrap_or_default();
                    state.bytes -= bytes.len();
                    bytes
                } else {
                    state.held.get(id).cloned().unwrap_or_default()
                };
                self.changed.notify_all();
                return Ok(bytes);
            }
            if let Some(reason) = &state.closed {
                return Err(SyncError::InvalidBatch {
                    reason: format!("chunk {id} never arrived: {reason}"),
                });
            }
            state.awaited = Some(*id);
            self.changed.notify_all();
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn contains(&self, id: &ChunkId) -> bool {
        self.lock().uses.contains_key(id)
    }

    /// [`push`](Incoming::push) takes only chunks its caller verified
    /// ([`decode_reply`](crate::protocol::decode_reply) does).
    fn verified(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::ChunkRef;
    use crate::delta::Delta;
    use crate::manifest::Entry;

    fn file(path: &str, chunks: &[(ChunkId, usize)]) -> Entry {
        Entry {
            path: RelPath::new(path).expect("valid path"),
            kind: EntryKind::File {
                size: chunks.iter().map(|(_, n)| *n as u64).sum(),
                chunks: chunks
                    .iter()
                    .map(|(id, n)| ChunkRef {
                        id: *id,
                        len: *n as u32,
                    })
                    .collect(),
            },
            mode: 0o644,
            mtime_ns: 0,
        }
    }

    /// Apply's reads wait for chunks that are still on their way, a chunk used twice is
    /// kept until its second use, and the holder never grows far beyond its cap while
    /// apply keeps up.
    #[test]
    fn incoming_hands_chunks_over_in_order_within_its_cap() {
        let chunks: Vec<(ChunkId, Vec<u8>)> = (0..50u8)
            .map(|i| {
                let bytes = vec![i; 1000];
                (ChunkId::of(&bytes), bytes)
            })
            .collect();
        let shared = chunks[0].0;
        let mut entries = vec![file("a", &[(shared, 1000)])];
        for (n, (id, _)) in chunks.iter().enumerate().skip(1) {
            entries.push(file(&format!("f{n:02}"), &[(*id, 1000)]));
        }
        entries.push(file("z", &[(shared, 1000)]));
        let delta = Delta {
            upserts: entries,
            deletes: Vec::new(),
        };
        let incoming = Incoming::new(&delta, chunks.iter().map(|(id, _)| *id), 5_000);
        let most_held = std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut got = Vec::new();
                for entry in &delta.upserts {
                    let EntryKind::File { chunks, .. } = &entry.kind else {
                        continue;
                    };
                    for c in chunks {
                        got.push(incoming.get(&c.id).expect("chunk arrives"));
                    }
                }
                got
            });
            let mut most = 0;
            for (id, bytes) in &chunks {
                incoming.push(*id, bytes.clone());
                most = most.max(incoming.lock().bytes);
            }
            incoming.close(None);
            let got = reader.join().expect("reader");
            assert_eq!(got.len(), 51);
            assert_eq!(got[0], chunks[0].1);
            assert_eq!(got[50], chunks[0].1, "the shared chunk is still there");
            most
        });
        assert!(most_held <= 7_000, "held {most_held} bytes");
        assert_eq!(incoming.lock().bytes, 0, "everything was handed over");
    }

    /// A transfer that fails makes a waiting apply fail with the reason instead of
    /// waiting forever; unexpected chunks are not found at once.
    #[test]
    fn incoming_closed_with_an_error_fails_the_waiting_reader() {
        let id = ChunkId::of(b"never");
        let delta = Delta {
            upserts: vec![file("f", &[(id, 5)])],
            deletes: Vec::new(),
        };
        let incoming = Incoming::new(&delta, [id], 1 << 20);
        assert!(matches!(
            incoming.get(&ChunkId::of(b"other")),
            Err(SyncError::ChunkNotFound { .. })
        ));
        let err = std::thread::scope(|s| {
            let reader = s.spawn(|| incoming.get(&id));
            std::thread::sleep(std::time::Duration::from_millis(50));
            incoming.close(Some("the server hung up".to_owned()));
            reader.join().expect("reader")
        })
        .expect_err("no chunk");
        assert!(err.to_string().contains("the server hung up"), "{err}");
        assert!(incoming.is_closed());
    }
}
