//! `scan`: walk a workspace into a `Manifest`, honouring `.offloadignore` and reusing the
//! chunk lists of files that have not changed since the previous scan.

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rustix::fs::FileType;

use crate::chunk::{ChunkId, ChunkRef, for_each_chunk};
use crate::error::SyncError;
use crate::manifest::{Entry, EntryKind, Limits, LocalStat, Manifest, StatCache};
use crate::path::{RelPath, check_symlink_target};
use crate::rooted::RootDir;
use crate::walk::{Flow, Found, Meta, Visitor, open_regular, walk};

/// Name of the per-directory ignore file, in gitignore syntax.
pub const IGNORE_FILE: &str = ".offloadignore";

/// A file whose mtime is this close to (or after) the start of the scan that recorded it
/// is read again next time: it may have changed within the timestamp granularity. Whole
/// seconds (FAT, ext3, some network filesystems) get [`COARSE_RACY_WINDOW_NS`]; timestamps
/// with a sub-second part come from the kernel's coarse clock, a tick (at most 10 ms)
/// behind, so a window of a few ticks covers them without re-reading a workspace that was
/// written a moment before a move's pre-copy when its final delta is taken.
const RACY_WINDOW_NS: i64 = 50_000_000;
const COARSE_RACY_WINDOW_NS: i64 = 2_000_000_000;

fn racy_window_ns(mtime_ns: i64) -> i64 {
    if mtime_ns % 1_000_000_000 == 0 {
        COARSE_RACY_WINDOW_NS
    } else {
        RACY_WINDOW_NS
    }
}

/// How to scan.
#[derive(Clone, Debug, Default)]
pub struct ScanOptions {
    pub limits: Limits,
}

/// A path the scan left out, and why. Left-out paths are absent from the manifest, so the
/// other side deletes what it had there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// Counters of one scan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanStats {
    pub files: u64,
    /// Files whose chunk list came from the previous manifest without reading them.
    pub reused_files: u64,
    pub hashed_files: u64,
    pub hashed_bytes: u64,
}

/// The result of a scan.
#[derive(Clone, Debug)]
pub struct Scan {
    pub manifest: Manifest,
    pub skipped: Vec<Skipped>,
    /// Problems that did not stop the scan, such as a bad line in an ignore file.
    pub warnings: Vec<String>,
    pub stats: ScanStats,
}

/// Walks `root` into a manifest.
///
/// Hidden files are included; only `.offloadignore` files (gitignore syntax, any depth)
/// exclude paths: no `.gitignore`, global or parent ignore files. `.offload-conflicts/` at
/// the top and `.offload-tmp-*` names are never included. Symlinks are recorded, never
/// followed. Device files, FIFOs, sockets, names that are not valid [`RelPath`]s and
/// symlinks with absolute or escaping targets are left out and listed in
/// [`Scan::skipped`]. A file whose size and mtime (and, when `previous` came from a scan
/// in this process, device, inode and ctime) equal those in `previous` keeps its chunk
/// list without being read. I/O errors (an unreadable directory or file) are fatal: a
/// path left out silently would be deleted on the other side.
///
/// Everything below `root` is reached through directory handles opened without following
/// symlinks (the walk, every stat, every read): a directory that is swapped for a symlink
/// while the scan runs is recorded as that symlink or read through the handle opened
/// before the swap, and nothing outside the root is looked at.
pub fn scan(
    root: &Path,
    opts: &ScanOptions,
    previous: Option<&Manifest>,
) -> Result<Scan, SyncError> {
    let scan_started_ns = now_ns();
    let prev_files: HashMap<&RelPath, (&Entry, u64, &[ChunkRef])> = previous
        .map(|m| {
            m.entries
                .iter()
                .filter_map(|e| match &e.kind {
                    EntryKind::File { size, chunks } => Some((&e.path, (e, *size, &chunks[..]))),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let root_dir = RootDir::open(root)?;
    let mut scanner = Scanner {
        root: &root_dir,
        max_entries: opts.limits.max_entries,
        prev_files,
        prev_cache: previous.and_then(|m| m.stat_cache.as_ref()),
        entries: Vec::new(),
        skipped: Vec::new(),
        warnings: Vec::new(),
        stats: ScanStats::default(),
        cache: StatCache {
            scan_started_ns,
            files: HashMap::new(),
        },
        pending: Vec::new(),
        pending_dirs: HashSet::new(),
    };
    walk(&root_dir, &mut scanner)?;
    scanner.read_pending()?;

    let mut manifest = Manifest::new(scanner.entries);
    manifest.stat_cache = Some(scanner.cache);
    Ok(Scan {
        manifest,
        skipped: scanner.skipped,
        warnings: scanner.warnings,
        stats: scanner.stats,
    })
}

/// Directory handles that files waiting to be read may keep open at once; beyond that
/// the files found so far are read first, so a wide tree cannot run out of descriptors.
const MAX_PENDING_DIRS: usize = 256;

struct Scanner<'a> {
    root: &'a RootDir,
    max_entries: usize,
    prev_files: HashMap<&'a RelPath, (&'a Entry, u64, &'a [ChunkRef])>,
    prev_cache: Option<&'a StatCache>,
    entries: Vec<Entry>,
    skipped: Vec<Skipped>,
    warnings: Vec<String>,
    stats: ScanStats,
    cache: StatCache,
    pending: Vec<Pending>,
    /// The directories `pending` holds handles of.
    pending_dirs: HashSet<*const OwnedFd>,
}

impl Scanner<'_> {
    /// Reads and chunks the files found changed so far.
    fn read_pending(&mut self) -> Result<(), SyncError> {
        #[cfg(test)]
        tests::run_hook(tests::Phase::BeforeRead);
        let pending = std::mem::take(&mut self.pending);
        self.pending_dirs.clear();
        for (job, result) in pending.iter().zip(chunk_files(self.root, &pending)) {
            let (chunks, read, unchanged) = result?;
            self.stats.hashed_files += 1;
            self.stats.hashed_bytes += read;
            let entry = &mut self.entries[job.index];
            if unchanged {
                self.cache
                    .files
                    .insert(entry.path.clone(), local_stat(&job.meta));
            }
            entry.kind = EntryKind::File { size: read, chunks };
        }
        Ok(())
    }
}

impl Visitor for Scanner<'_> {
    fn entry(&mut self, found: Found<'_>) -> Result<Flow, SyncError> {
        let Found {
            dir,
            name,
            rel,
            meta,
        } = found;
        let kind = match meta.kind {
            FileType::Directory => EntryKind::Dir,
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(&**dir, name, Vec::new()).map_err(|e| {
                    SyncError::io("read link", self.root.display(rel.as_str()), e.into())
                })?;
                let Ok(target) = target.into_string() else {
                    self.skipped.push(skip(&rel, "symlink target is not UTF-8"));
                    return Ok(Flow::Continue);
                };
                if let Err(reason) = check_symlink_target(&rel, &target) {
                    self.skipped.push(skip(&rel, reason));
                    return Ok(Flow::Continue);
                }
                self.entries.push(Entry {
                    path: rel,
                    kind: EntryKind::Symlink { target },
                    mode: 0o777,
                    mtime_ns: meta.mtime_ns,
                });
                return self.check_count();
            }
            FileType::RegularFile => {
                self.stats.files += 1;
                let local = local_stat(&meta);
                let reusable = self
                    .prev_files
                    .get(&rel)
                    .and_then(|(prev, prev_size, chunks)| {
                        let same = *prev_size == meta.size
                            && prev.mtime_ns == meta.mtime_ns
                            && match self.prev_cache {
                                Some(c) => {
                                    c.files.get(&rel) == Some(&local)
                                        && meta.mtime_ns
                                            < c.scan_started_ns - racy_window_ns(meta.mtime_ns)
                                }
                                None => true,
                            };
                        same.then(|| chunks.to_vec())
                    });
                match reusable {
                    Some(chunks) => {
                        self.stats.reused_files += 1;
                        self.cache.files.insert(rel.clone(), local);
                        EntryKind::File {
                            size: meta.size,
                            chunks,
                        }
                    }
                    None => {
                        if !self.pending_dirs.contains(&Arc::as_ptr(dir))
                            && self.pending_dirs.len() >= MAX_PENDING_DIRS
                        {
                            self.read_pending()?;
                        }
                        self.pending_dirs.insert(Arc::as_ptr(dir));
                        // Read after the walk (or a batch of it), several files at once.
                        self.pending.push(Pending {
                            index: self.entries.len(),
                            dir: dir.clone(),
                            name: name.to_owned(),
                            rel: rel.clone(),
                            meta,
                        });
                        EntryKind::File {
                            size: meta.size,
                            chunks: Vec::new(),
                        }
                    }
                }
            }
            _ => {
                self.skipped
                    .push(skip(&rel, "not a regular file, directory or symlink"));
                return Ok(Flow::Continue);
            }
        };
        self.entries.push(Entry {
            path: rel,
            kind,
            mode: meta.mode,
            mtime_ns: meta.mtime_ns,
        });
        self.check_count()
    }

    fn skipped(&mut self, path: PathBuf, reason: String) {
        self.skipped.push(Skipped { path, reason });
    }

    fn warning(&mut self, message: String) {
        self.warnings.push(message);
    }

    #[cfg(test)]
    fn listed(&mut self, dir: Option<&RelPath>) {
        tests::run_hook(tests::Phase::Listed(dir.map_or("", |d| d.as_str())));
    }
}

impl Scanner<'_> {
    fn check_count(&self) -> Result<Flow, SyncError> {
        if self.entries.len() > self.max_entries {
            return Err(SyncError::InvalidManifest {
                reason: format!("tree has more than {} entries", self.max_entries),
            });
        }
        Ok(Flow::Continue)
    }
}

fn skip(rel: &RelPath, reason: &str) -> Skipped {
    Skipped {
        path: PathBuf::from(rel.as_str()),
        reason: reason.to_owned(),
    }
}

fn local_stat(meta: &Meta) -> LocalStat {
    LocalStat {
        dev: meta.dev,
        ino: meta.ino,
        ctime_ns: meta.ctime_ns,
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A file the walk found changed (or new), to be read and chunked through the handle of
/// its directory.
struct Pending {
    index: usize,
    dir: Arc<OwnedFd>,
    name: String,
    rel: RelPath,
    meta: Meta,
}

/// Below this many bytes to read, one thread reads them all.
const PARALLEL_FROM: u64 = 16 << 20;
/// Most threads reading files at once.
const MAX_READERS: usize = 4;

/// Reads and chunks the pending files, several at once when there is much to read (hashing
/// is CPU-bound, so a fresh tree scans about as many times faster as there are cores).
/// Results are in the order of `pending`.
fn chunk_files(root: &RootDir, pending: &[Pending]) -> Vec<Result<Chunked, SyncError>> {
    let total: u64 = pending.iter().map(|p| p.meta.size).sum();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_READERS)
        .min(pending.len());
    if threads <= 1 || total < PARALLEL_FROM {
        return pending.iter().map(|p| chunk_file(root, p)).collect();
    }
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<_>>> = pending.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, AtomicOrdering::Relaxed);
                    let Some(job) = pending.get(i) else { break };
                    let result = chunk_file(root, job);
                    *results[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
                }
            });
        }
    });
    results
        .into_iter()
        .zip(pending)
        .map(|(slot, job)| {
            slot.into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .unwrap_or_else(|| {
                    Err(SyncError::io(
                        "read",
                        root.display(job.rel.as_str()),
                        std::io::Error::other("reader thread stopped"),
                    ))
                })
        })
        .collect()
}

/// A file's chunks, the bytes read and whether it looked unchanged across the read.
type Chunked = (Vec<ChunkRef>, u64, bool);

/// Reads and chunks one file. Returns the chunks, the bytes read and whether the file
/// looked unchanged across the read (only then may the next scan trust its stat).
fn chunk_file(root: &RootDir, job: &Pending) -> Result<Chunked, SyncError> {
    let shown = || root.display(job.rel.as_str());
    let file = open_regular(&job.dir, &job.name).map_err(|e| SyncError::io("open", shown(), e))?;
    let mut chunks = Vec::new();
    let read = for_each_chunk(&file, job.meta.size, |bytes| {
        chunks.push(ChunkRef {
            id: ChunkId::of(bytes),
            len: bytes.len() as u32,
        });
        Ok::<(), std::io::Error>(())
    })
    .map_err(|e| SyncError::io("read", shown(), e))?;
    let after = rustix::fs::fstat(&file)
        .map(|s| Meta::of(&s))
        .map_err(|e| SyncError::io("stat", shown(), e.into()))?;
    let before = &job.meta;
    let unchanged = after.size == read
        && after.mtime_ns == before.mtime_ns
        && local_stat(&after) == local_stat(before);
    Ok((chunks, read, unchanged))
}

/// How much a [`disk_usage`] walk may do before it gives up.
#[derive(Clone, Copy, Debug)]
pub struct UsageBudget {
    /// The walk stops at this instant.
    pub deadline: Option<Instant>,
    /// The walk stops after this many entries.
    pub max_entries: u64,
}

impl Default for UsageBudget {
    fn default() -> Self {
        UsageBudget {
            deadline: None,
            max_entries: Limits::default().max_entries as u64,
        }
    }
}

/// What a workspace occupies on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// Bytes allocated to the regular files the walk saw (`st_blocks * 512`, each hard
    /// linked file once): what a sync would carry, give or take holes and compression.
    pub allocated_bytes: u64,
    /// Entries the walk saw.
    pub entries: u64,
    /// False when the budget ran out before the walk ended: the numbers are then a part.
    pub complete: bool,
}

/// The space the files below `root` take on disk, from their metadata alone (no file is
/// opened, so a sparse file costs what it holds, not its length). Walks as [`scan`] does,
/// through directory handles and honouring `.offloadignore`, within `budget`.
pub fn disk_usage(root: &Path, budget: &UsageBudget) -> Result<DiskUsage, SyncError> {
    let root_dir = RootDir::open(root)?;
    let mut counter = UsageCounter {
        budget: *budget,
        usage: DiskUsage {
            complete: true,
            ..DiskUsage::default()
        },
        linked: HashSet::new(),
    };
    walk(&root_dir, &mut counter)?;
    Ok(counter.usage)
}

struct UsageCounter {
    budget: UsageBudget,
    usage: DiskUsage,
    linked: HashSet<(u64, u64)>,
}

/// Entries between two looks at the clock.
const CLOCK_EVERY: u64 = 256;

impl Visitor for UsageCounter {
    fn entry(&mut self, found: Found<'_>) -> Result<Flow, SyncError> {
        let meta = found.meta;
        self.usage.entries += 1;
        if meta.kind == FileType::RegularFile
            && (meta.nlink <= 1 || self.linked.insert((meta.dev, meta.ino)))
        {
            self.usage.allocated_bytes = self.usage.allocated_bytes.saturating_add(meta.allocated);
        }
        let out_of_time = self.usage.entries.is_multiple_of(CLOCK_EVERY)
            && self.budget.deadline.is_some_and(|d| Instant::now() >= d);
        if self.usage.entries >= self.budget.max_entries || out_of_time {
            self.usage.complete = false;
            return Ok(Flow::Stop);
        }
        Ok(Flow::Continue)
    }

    fn skipped(&mut self, _path: PathBuf, _reason: String) {}

    fn warning(&mut self, _message: String) {}
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::cell::RefCell;

    /// Where a scan calls the test's hook.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(super) enum Phase<'a> {
        /// A directory (`""` for the root) was listed; its entries come next.
        Listed(&'a str),
        /// The files found changed are about to be read.
        BeforeRead,
    }

    type Hook = Box<dyn FnMut(Phase<'_>)>;

    thread_local! {
        static HOOK: RefCell<Option<Hook>> = RefCell::new(None);
    }

    pub(super) fn run_hook(phase: Phase<'_>) {
        HOOK.with(|h| {
            if let Some(f) = h.borrow_mut().as_mut() {
                f(phase)
            }
        });
    }

    fn with_hook<T>(hook: impl FnMut(Phase<'_>) + 'static, f: impl FnOnce() -> T) -> T {
        HOOK.with(|h| *h.borrow_mut() = Some(Box::new(hook)));
        let out = f();
        HOOK.with(|h| *h.borrow_mut() = None);
        out
    }

    /// A container swaps a directory for a symlink to a host directory after the walk
    /// listed it and before its files are read: nothing of the host directory may reach
    /// the manifest, and serving the scanned chunks afterwards gives no host bytes.
    #[test]
    fn a_directory_swapped_for_a_symlink_mid_scan_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("ws");
        let outside = tmp.path().join("host");
        std::fs::create_dir_all(root.join("a/d")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("a/d/f"), b"inside bytes").unwrap();
        let secret = b"host secret, never to be read".to_vec();
        std::fs::write(outside.join("f"), &secret).unwrap();
        let secret_id = ChunkId::of(&secret);

        let swap_root = root.clone();
        let swap_outside = outside.clone();
        let scan = with_hook(
            move |phase| {
                if phase == Phase::BeforeRead {
                    std::fs::rename(swap_root.join("a/d"), swap_root.join("a/moved")).unwrap();
                    std::os::unix::fs::symlink(&swap_outside, swap_root.join("a/d")).unwrap();
                }
            },
            || scan(&root, &ScanOptions::default(), None),
        );
        let scan = scan.unwrap();
        assert_nothing_of(&scan.manifest, &secret);
        // The file was read through the handle of the directory the walk entered, which
        // is still inside the workspace.
        let f = scan.manifest.get(&RelPath::new("a/d/f").unwrap()).unwrap();
        assert!(
            matches!(&f.kind, EntryKind::File { size: 12, chunks } if chunks[0].id == ChunkId::of(b"inside bytes"))
        );
        // Whatever was recorded is served out of the workspace, never the host.
        let tree = crate::TreeChunks::new(&root, &scan.manifest).unwrap();
        for entry in &scan.manifest.entries {
            if let EntryKind::File { chunks, .. } = &entry.kind {
                for c in chunks {
                    if let Ok(bytes) = crate::ChunkSource::get(&tree, &c.id) {
                        assert_ne!(bytes, secret);
                    }
                }
            }
        }
        // The host file's bytes under the same name as the workspace's are not served
        // through the symlink either.
        let honest = Manifest::new(vec![
            Entry {
                path: RelPath::new("a").unwrap(),
                kind: EntryKind::Dir,
                mode: 0o755,
                mtime_ns: 0,
            },
            Entry {
                path: RelPath::new("a/d").unwrap(),
                kind: EntryKind::Dir,
                mode: 0o755,
                mtime_ns: 0,
            },
            Entry {
                path: RelPath::new("a/d/f").unwrap(),
                kind: EntryKind::File {
                    size: secret.len() as u64,
                    chunks: vec![ChunkRef {
                        id: secret_id,
                        len: secret.len() as u32,
                    }],
                },
                mode: 0o644,
                mtime_ns: 0,
            },
        ]);
        let tree = crate::TreeChunks::new(&root, &honest).unwrap();
        assert!(crate::ChunkSource::get(&tree, &secret_id).is_err());
    }

    /// No entry of `manifest` is named like, as large as or hashes like the host's file.
    fn assert_nothing_of(manifest: &Manifest, secret: &[u8]) {
        let secret_id = ChunkId::of(secret);
        for entry in &manifest.entries {
            assert!(!entry.path.as_str().contains("host-only"), "{}", entry.path);
            if let EntryKind::File { size, chunks } = &entry.kind {
                assert_ne!(*size, secret.len() as u64, "{}", entry.path);
                assert!(chunks.iter().all(|c| c.id != secret_id), "{}", entry.path);
            }
        }
    }

    fn atime_ns(path: &Path) -> i64 {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(path).unwrap();
        m.atime() * 1_000_000_000 + m.atime_nsec()
    }

    /// Sets a file's access time a day before its modification time, so that the next
    /// read updates it even on a `relatime` mount.
    fn age_atime(path: &Path) {
        let file = std::fs::File::open(path).unwrap();
        let now = SystemTime::now();
        let times = std::fs::FileTimes::new()
            .set_accessed(now - std::time::Duration::from_secs(86_400))
            .set_modified(now);
        file.set_times(times).unwrap();
    }

    /// Directories swapped for symlinks to a host directory right after their parent was
    /// listed, at the top and two levels down: the walk never enters them, nothing of the
    /// host directory is named, sized or hashed, and a sentinel there is never read.
    #[test]
    fn directories_swapped_after_listing_are_never_entered() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("ws");
        let outside = tmp.path().join("host");
        std::fs::create_dir_all(root.join("top")).unwrap();
        std::fs::create_dir_all(root.join("x/y/deep")).unwrap();
        std::fs::write(root.join("top/f"), b"workspace").unwrap();
        std::fs::write(root.join("x/y/deep/f"), b"workspace").unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let secret = b"host bytes the scan must never see".to_vec();
        std::fs::write(outside.join("f"), &secret).unwrap();
        std::fs::write(outside.join("host-only"), &secret).unwrap();
        let sentinel = outside.join("host-only");
        // Whether this filesystem records reads at all (it may be mounted noatime).
        let probe = tmp.path().join("probe");
        std::fs::write(&probe, b"probe").unwrap();
        age_atime(&probe);
        let before = atime_ns(&probe);
        std::fs::read(&probe).unwrap();
        let records_reads = atime_ns(&probe) != before;
        age_atime(&sentinel);
        let sentinel_atime = atime_ns(&sentinel);

        let (r, o) = (root.clone(), outside.clone());
        let scan = with_hook(
            move |phase| {
                let swap = |rel: &str, target: &Path| {
                    std::fs::remove_dir_all(r.join(rel)).unwrap();
                    std::os::unix::fs::symlink(target, r.join(rel)).unwrap();
                };
                match phase {
                    Phase::Listed("") => swap("top", &o),
                    // Relative, climbing out of the root.
                    Phase::Listed("x/y") => swap("x/y/deep", Path::new("../../../host")),
                    _ => {}
                }
            },
            || scan(&root, &ScanOptions::default(), None),
        )
        .unwrap();
        assert_nothing_of(&scan.manifest, &secret);
        let paths: Vec<&str> = scan
            .manifest
            .entries
            .iter()
            .map(|e| e.path.as_str())
            .collect();
        assert_eq!(paths, ["x", "x/y"]);
        let mut skipped: Vec<String> = scan
            .skipped
            .iter()
            .map(|s| s.path.to_string_lossy().into_owned())
            .collect();
        skipped.sort();
        assert_eq!(
            skipped,
            ["top", "x/y/deep"],
            "escaping symlinks are left out"
        );
        if records_reads {
            assert_eq!(atime_ns(&sentinel), sentinel_atime, "the sentinel was read");
        }
    }

    /// Symlinks to directories inside the workspace, at any depth, are recorded as
    /// symlinks: what they point at is listed once, under its own name.
    #[test]
    fn symlinked_directories_are_recorded_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("a/b/real")).unwrap();
        std::fs::write(root.join("a/b/real/f"), b"x").unwrap();
        std::os::unix::fs::symlink("real", root.join("a/b/link")).unwrap();
        std::os::unix::fs::symlink("../b", root.join("a/b/real/up")).unwrap();
        let scan = scan(root, &ScanOptions::default(), None).unwrap();
        let paths: Vec<&str> = scan
            .manifest
            .entries
            .iter()
            .map(|e| e.path.as_str())
            .collect();
        assert_eq!(
            paths,
            [
                "a",
                "a/b",
                "a/b/link",
                "a/b/real",
                "a/b/real/f",
                "a/b/real/up"
            ]
        );
    }
}
