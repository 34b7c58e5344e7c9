//! Helpers shared by the integration tests: deterministic data, tree building, an
//! independent tree snapshot to compare against, a counting chunk source, and a chunk
//! fetch through the wire protocol.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use offload_sync::protocol::{
    Wanted, decode_reply, encode_request, fetch_batches, serve_request, wanted_chunks,
};
use offload_sync::{ChunkId, ChunkSource, Delta, Limits, Manifest, MemoryChunks, SyncError};

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    seed |= 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        out.extend_from_slice(&seed.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn set_mtime(path: &Path, ns: i64) {
    let time = UNIX_EPOCH + Duration::from_nanos(ns as u64);
    let file = fs::File::options()
        .read(true)
        .open(path)
        .or_else(|_| fs::File::open(path))
        .expect("open for set_modified");
    file.set_modified(time).expect("set mtime");
}

/// What a test compares: every path below a root, its kind, content, permission bits and
/// mtime, read with std only (not with the crate under test).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir {
        mode: u32,
        mtime_ns: i64,
    },
    File {
        mode: u32,
        mtime_ns: i64,
        content: Vec<u8>,
    },
    Symlink {
        target: String,
        mtime_ns: i64,
    },
    Other,
}

pub fn snapshot(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    walk(root, "", &mut out);
    out
}

fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, Node>) {
    let mut names: Vec<_> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .into_string()
                .expect("utf-8 name")
        })
        .collect();
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let meta = fs::symlink_metadata(&path).expect("lstat");
        let mtime_ns = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
        let mode = meta.permissions().mode() & 0o7777;
        let node = if meta.is_dir() {
            walk(&path, &rel, out);
            Node::Dir { mode, mtime_ns }
        } else if meta.file_type().is_symlink() {
            Node::Symlink {
                target: fs::read_link(&path)
                    .expect("readlink")
                    .into_os_string()
                    .into_string()
                    .expect("utf-8 target"),
                mtime_ns,
            }
        } else if meta.is_file() {
            Node::File {
                mode,
                mtime_ns,
                content: fs::read(&path).expect("read"),
            }
        } else {
            Node::Other
        };
        out.insert(rel, node);
    }
}

/// Asserts two snapshots are equal, with a readable first difference.
pub fn assert_same_tree(a: &BTreeMap<String, Node>, b: &BTreeMap<String, Node>) {
    let keys_a: Vec<_> = a.keys().collect();
    let keys_b: Vec<_> = b.keys().collect();
    assert_eq!(keys_a, keys_b, "different paths");
    for (k, va) in a {
        let vb = &b[k];
        if va != vb {
            let brief = |n: &Node| match n {
                Node::File {
                    mode,
                    mtime_ns,
                    content,
                } => format!(
                    "file mode {mode:o} mtime {mtime_ns} len {} id {}",
                    content.len(),
                    ChunkId::of(content)
                ),
                other => format!("{other:?}"),
            };
            panic!("{k} differs:\n  {}\n  {}", brief(va), brief(vb));
        }
    }
}

/// Creates a file with content, mode and mtime.
pub fn write_file(path: &Path, content: &[u8], mode: u32, mtime_ns: i64) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("mkdir -p");
    }
    fs::write(path, content).expect("write");
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    set_mtime(path, mtime_ns);
}

pub fn make_symlink(target: &str, path: &Path) {
    symlink(target, path).expect("symlink");
}

/// A chunk source that counts what it serves.
pub struct Counting<'a> {
    pub inner: &'a dyn ChunkSource,
    pub served: AtomicUsize,
}

impl<'a> Counting<'a> {
    pub fn new(inner: &'a dyn ChunkSource) -> Self {
        Counting {
            inner,
            served: AtomicUsize::new(0),
        }
    }

    pub fn served(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }
}

impl ChunkSource for Counting<'_> {
    fn get(&self, id: &ChunkId) -> Result<Vec<u8>, SyncError> {
        let bytes = self.inner.get(id)?;
        self.served.fetch_add(1, Ordering::Relaxed);
        Ok(bytes)
    }

    fn contains(&self, id: &ChunkId) -> bool {
        self.inner.contains(id)
    }
}

/// Test-speed apply options: no fsync.
pub fn fast_opts() -> offload_sync::ApplyOptions {
    offload_sync::ApplyOptions {
        fsync: false,
        ..Default::default()
    }
}

/// Old bytes a receiver may describe as bases, as the agent allows.
pub const BASIS_BUDGET: usize = 64 << 20;
/// Bounds of one fetch, smaller than the agent's so that tests cross several batches.
pub const BATCH_BYTES: u64 = 1 << 20;
pub const BATCH_CHUNKS: usize = 8;

/// What one fetch moved.
pub struct Fetched {
    /// The chunks asked for, in order.
    pub wanted: Vec<Wanted>,
    /// The chunks received, verified.
    pub chunks: MemoryChunks,
    pub batches: usize,
    /// Bytes of all requests (ids and signatures of bases).
    pub request_bytes: usize,
    /// Bytes of all replies (chunks, raw, compressed or patched).
    pub reply_bytes: usize,
}

/// Fetches the chunks `delta` needs from `sender` the way the agent does: the receiver
/// works out what it lacks with [`wanted_chunks`] against its own manifest and tree
/// (`local`), and each batch crosses as `encode_request` → `serve_request` →
/// `decode_reply`. Asserts that the sender read each wanted chunk once and nothing else.
pub fn fetch(
    delta: &Delta,
    own: &Manifest,
    local: &dyn ChunkSource,
    sender: &dyn ChunkSource,
) -> Fetched {
    let limits = Limits::default();
    let wanted = wanted_chunks(delta, own, |id| local.contains(id), local, BASIS_BUDGET);
    let sender = Counting::new(sender);
    let mut fetched = Fetched {
        wanted: wanted.clone(),
        chunks: MemoryChunks::new(),
        batches: 0,
        request_bytes: 0,
        reply_bytes: 0,
    };
    for batch in fetch_batches(wanted, BATCH_BYTES, BATCH_CHUNKS) {
        let request = encode_request(&batch);
        let reply = serve_request(&request, &sender, &limits).expect("serve request");
        let chunks = decode_reply(&reply, &batch, &limits).expect("decode reply");
        assert_eq!(chunks.len(), batch.len());
        for (id, bytes) in chunks {
            fetched.chunks.insert(id, bytes).expect("verified chunk");
        }
        fetched.batches += 1;
        fetched.request_bytes += request.len();
        fetched.reply_bytes += reply.len();
    }
    assert_eq!(
        sender.served(),
        fetched.wanted.len(),
        "the sender read each wanted chunk once"
    );
    assert_eq!(fetched.chunks.len(), fetched.wanted.len());
    fetched
}

/// The ids of `wanted`, in order.
pub fn ids(wanted: &[Wanted]) -> Vec<ChunkId> {
    wanted.iter().map(|w| w.id).collect()
}
