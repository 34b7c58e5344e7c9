//! `scan`: walk a workspace into a `Manifest`, honouring `.offloadignore` and reusing the
//! chunk lists of files that have not changed since the previous scan.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{Mode, OFlags};

use crate::chunk::{ChunkId, ChunkRef, for_each_chunk};
use crate::error::SyncError;
use crate::manifest::{Entry, EntryKind, Limits, LocalStat, Manifest, StatCache};
use crate::path::{CONFLICTS_DIR, RelPath, TEMP_PREFIX, check_symlink_target};

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
    let prev_cache = previous.and_then(|m| m.stat_cache.as_ref());

    let walker = ignore::WalkBuilder::new(root)
        .standard_filters(false)
        .add_custom_ignore_filename(IGNORE_FILE)
        .follow_links(false)
        .filter_entry(|e| {
            let name = e.file_name().to_string_lossy();
            !(name.starts_with(TEMP_PREFIX) || (e.depth() == 1 && name == CONFLICTS_DIR))
        })
        .build();

    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    let mut warnings = Vec::new();
    let mut stats = ScanStats::default();
    let mut cache = StatCache {
        scan_started_ns,
        files: HashMap::new(),
    };
    let mut pending: Vec<Pending> = Vec::new();

    for item in walker {
        let dent = match item {
            Ok(d) => d,
            Err(err) => {
                if let Some(io) = err.io_error() {
                    let io = std::io::Error::new(io.kind(), err.to_string());
                    return Err(SyncError::io("walk", root, io));
                }
                warnings.push(err.to_string());
                continue;
            }
        };
        if dent.depth() == 0 {
            continue;
        }
        let full = dent.path();
        let rel = match rel_path(root, full) {
            Ok(rel) => rel,
            Err(reason) => {
                skipped.push(Skipped {
                    path: full.strip_prefix(root).unwrap_or(full).to_owned(),
                    reason,
                });
                continue;
            }
        };
        let meta = full
            .symlink_metadata()
            .map_err(|e| SyncError::io("stat", full, e))?;
        let file_type = meta.file_type();
        let mtime_ns = mtime_ns(&meta);
        let mode = meta.permissions().mode() & 0o777;
        let kind = if file_type.is_dir() {
            EntryKind::Dir
        } else if file_type.is_symlink() {
            let target =
                std::fs::read_link(full).map_err(|e| SyncError::io("read link", full, e))?;
            let Some(target) = target.to_str().map(str::to_owned) else {
                skipped.push(skip(&rel, "symlink target is not UTF-8"));
                continue;
            };
            if let Err(reason) = check_symlink_target(&rel, &target) {
                skipped.push(skip(&rel, reason));
                continue;
            }
            entries.push(Entry {
                path: rel,
                kind: EntryKind::Symlink { target },
                mode: 0o777,
                mtime_ns,
            });
            continue;
        } else if file_type.is_file() {
            stats.files += 1;
            let local = local_stat(&meta);
            let size = meta.len();
            let reusable = prev_files.get(&rel).and_then(|(prev, prev_size, chunks)| {
                let same = *prev_size == size
                    && prev.mtime_ns == mtime_ns
                    && match prev_cache {
                        Some(c) => {
                            c.files.get(&rel) == Some(&local)
                                && mtime_ns < c.scan_started_ns - racy_window_ns(mtime_ns)
                        }
                        None => true,
                    };
                same.then(|| chunks.to_vec())
            });
            match reusable {
                Some(chunks) => {
                    stats.reused_files += 1;
                    cache.files.insert(rel.clone(), local);
                    EntryKind::File { size, chunks }
                }
                None => {
                    // Read after the walk, several files at once.
                    pending.push(Pending {
                        index: entries.len(),
                        full: full.to_owned(),
                        meta,
                    });
                    EntryKind::File {
                        size,
                        chunks: Vec::new(),
                    }
                }
            }
        } else {
            skipped.push(skip(&rel, "not a regular file, directory or symlink"));
            continue;
        };
        entries.push(Entry {
            path: rel,
            kind,
            mode,
            mtime_ns,
        });
        if entries.len() > opts.limits.max_entries {
            return Err(SyncError::InvalidManifest {
                reason: format!("tree has more than {} entries", opts.limits.max_entries),
            });
        }
    }

    for (job, result) in pending.iter().zip(chunk_files(&pending)) {
        let (chunks, read, unchanged) = result?;
        stats.hashed_files += 1;
        stats.hashed_bytes += read;
        let entry = &mut entries[job.index];
        if unchanged {
            cache
                .files
                .insert(entry.path.clone(), local_stat(&job.meta));
        }
        entry.kind = EntryKind::File { size: read, chunks };
    }

    let mut manifest = Manifest::new(entries);
    manifest.stat_cache = Some(cache);
    Ok(Scan {
        manifest,
        skipped,
        warnings,
        stats,
    })
}

fn skip(rel: &RelPath, reason: &str) -> Skipped {
    Skipped {
        path: PathBuf::from(rel.as_str()),
        reason: reason.to_owned(),
    }
}

fn rel_path(root: &Path, full: &Path) -> Result<RelPath, String> {
    let rel = full
        .strip_prefix(root)
        .map_err(|_| "path is not below the root".to_owned())?;
    let mut parts = Vec::new();
    for component in rel.components() {
        match component {
            std::path::Component::Normal(c) => {
                parts.push(c.to_str().ok_or_else(|| "name is not UTF-8".to_owned())?)
            }
            _ => return Err("unexpected path component".to_owned()),
        }
    }
    RelPath::new(parts.join("/")).map_err(|e| e.to_string())
}

fn mtime_ns(meta: &Metadata) -> i64 {
    meta.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(meta.mtime_nsec())
}

fn local_stat(meta: &Metadata) -> LocalStat {
    LocalStat {
        dev: meta.dev(),
        ino: meta.ino(),
        ctime_ns: meta
            .ctime()
            .saturating_mul(1_000_000_000)
            .saturating_add(meta.ctime_nsec()),
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A file the walk found changed (or new), to be read and chunked.
struct Pending {
    index: usize,
    full: PathBuf,
    meta: Metadata,
}

/// Below this many bytes to read, one thread reads them all.
const PARALLEL_FROM: u64 = 16 << 20;
/// Most threads reading files at once.
const MAX_READERS: usize = 4;

/// Reads and chunks the pending files, several at once when there is much to read (hashing
/// is CPU-bound, so a fresh tree scans about as many times faster as there are cores).
/// Results are in the order of `pending`.
fn chunk_files(pending: &[Pending]) -> Vec<Result<Chunked, SyncError>> {
    let total: u64 = pending.iter().map(|p| p.meta.len()).sum();
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_READERS)
        .min(pending.len());
    if threads <= 1 || total < PARALLEL_FROM {
        return pending
            .iter()
            .map(|p| chunk_file(&p.full, &p.meta))
            .collect();
    }
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<_>>> = pending.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, AtomicOrdering::Relaxed);
                    let Some(job) = pending.get(i) else { break };
                    let result = chunk_file(&job.full, &job.meta);
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
                        &job.full,
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
fn chunk_file(path: &Path, before: &Metadata) -> Result<Chunked, SyncError> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| SyncError::io("open", path, e.into()))?;
    let file = File::from(fd);
    let mut chunks = Vec::new();
    let read = for_each_chunk(&file, before.len(), |bytes| {
        chunks.push(ChunkRef {
            id: ChunkId::of(bytes),
            len: bytes.len() as u32,
        });
        Ok::<(), std::io::Error>(())
    })
    .map_err(|e| SyncError::io("read", path, e))?;
    let after = file
        .metadata()
        .map_err(|e| SyncError::io("stat", path, e))?;
    let unchanged = after.len() == read
        && mtime_ns(&after) == mtime_ns(before)
        && local_stat(&after) == local_stat(before);
    Ok((chunks, read, unchanged))
}
