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
/// when they do not hold it, so a [`Chain`] can try the next source. Callers verify the
/// bytes again; a source need not be trusted.
pub trait ChunkSource {
    fn get(&self, id: &ChunkId) -> Result<Vec<u8>, SyncError>;

    /// Whether `get` would find the chunk. May be answered without reading it.
    fn contains(&self, id: &ChunkId) -> bool;
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
}
