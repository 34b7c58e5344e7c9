//! `apply`: make a tree match a delta, atomically per file, never writing outside the root.
//!
//! The order of work is what makes it safe:
//!
//! 1. **Check** (read-only): the delta on its own ([`Delta::validate`]), then against the
//!    disk: every parent of an upsert must be a real directory, missing, or upserted as a
//!    directory by the delta (a symlink or file in the way is refused); a directory about
//!    to be replaced by a file or symlink may hold only paths the delta deletes; the
//!    mass-deletion guard. A refused delta changes nothing.
//! 2. **Stage**: every upserted file is assembled in a staging directory at the root
//!    (`.offload-tmp-stage-*`): each chunk fetched, its length and hash checked (the hash
//!    by the source, when it says it does: [`ChunkSource::verified`]), mode and mtime set,
//!    fsynced. All reads of the old tree (a [`TreeChunks`] over the receiver's
//!    own files) happen here, before anything is destroyed, and a missing or bad chunk
//!    stops the apply with the tree untouched.
//! 3. **Commit**: deletes deepest first, then upserts parents first: directories created,
//!    staged files renamed over their targets, symlinks created under a temp name and
//!    renamed over theirs. Every directory is opened one component at a time with
//!    `O_NOFOLLOW` from a handle on the root, so no symlink, even one swapped in after
//!    the check, leads a write outside.
//! 4. **Finish**: directory modes and mtimes set (after all changes inside them), touched
//!    directories fsynced, staging removed.
//!
//! A failure during commit (disk full, a race with another writer) can leave some changes
//! applied, but each file is either old or new, never partial, and applying the same
//! delta again converges.
//!
//! [`TreeChunks`]: crate::source::TreeChunks

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps, UTIME_OMIT};
use rustix::io::Errno;

use crate::delta::Delta;
use crate::error::SyncError;
use crate::manifest::{Entry, EntryKind, Limits};
use crate::path::{CONFLICTS_DIR, RelPath, TEMP_PREFIX};
use crate::rooted::{DiskKind, RootDir, is_not_there, kind_at, list_dir};
use crate::source::{ChunkSource, verify_chunk};

/// Up to this many upserts, each staged file is fsynced on its own; beyond, one `syncfs`
/// flushes them all.
const FSYNC_EACH_UP_TO: usize = 16;

/// How to apply.
#[derive(Clone, Debug)]
pub struct ApplyOptions {
    /// Apply below this directory instead of the root, e.g. `.offload-conflicts/<name>` to
    /// keep a fenced copy's late changes beside the main tree. Missing directories of the
    /// prefix are created.
    pub prefix: Option<RelPath>,
    /// Let a delta empty a non-empty tree (refused by default).
    pub allow_mass_delete: bool,
    /// fsync files and directories (on by default; off only for benchmarks and tests).
    pub fsync: bool,
    pub limits: Limits,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            prefix: None,
            allow_mass_delete: false,
            fsync: true,
            limits: Limits::default(),
        }
    }
}

/// What an apply did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub files_written: u64,
    pub bytes_written: u64,
    pub dirs_created: u64,
    pub symlinks_written: u64,
    pub deleted: u64,
    /// Directories the delta deletes that were kept because they still hold paths the
    /// delta did not know about (untracked or ignored files). Nothing unknown is removed.
    pub kept_dirs: Vec<RelPath>,
}

/// Makes the tree at `root` (or below `opts.prefix`) match `delta`, taking file contents
/// from `source`. See the module documentation for the order of work and its guarantees.
pub fn apply(
    root: &Path,
    delta: &Delta,
    source: &dyn ChunkSource,
    opts: &ApplyOptions,
) -> Result<ApplyReport, SyncError> {
    delta.validate(&opts.limits)?;
    if let Some(prefix) = &opts.prefix
        && prefix.components().any(|c| c.starts_with(TEMP_PREFIX))
    {
        return Err(SyncError::refused(format!(
            "prefix {prefix} uses a reserved name"
        )));
    }
    let root_dir = RootDir::open(root)?;
    let full = |p: &RelPath| match &opts.prefix {
        Some(prefix) => prefix.join(p),
        None => Ok(p.clone()),
    };

    let mut upserts: Vec<(RelPath, &Entry)> = delta
        .upserts
        .iter()
        .map(|e| Ok((full(&e.path)?, e)))
        .collect::<Result<_, SyncError>>()?;
    upserts.sort_by(|a, b| a.0.cmp(&b.0));
    let mut deletes: Vec<RelPath> = delta.deletes.iter().map(full).collect::<Result<_, _>>()?;
    deletes.sort_by(|a, b| b.cmp(a));

    let plan = Plan {
        root: &root_dir,
        upserts: &upserts,
        upsert_dirs: upserts
            .iter()
            .filter(|(_, e)| e.is_dir())
            .map(|(p, _)| p.clone())
            .collect(),
        deleted: deletes.iter().cloned().collect(),
        opts,
    };
    plan.check_disk()?;
    if !opts.allow_mass_delete && delta.upserts.is_empty() && !deletes.is_empty() {
        plan.check_mass_delete()?;
    }

    let mut stage = Stage::create(&root_dir)?;
    let mut report = ApplyReport::default();
    let staged = plan.stage_files(&stage, source, &mut report)?;
    stage.committing = true;
    let mut dirty = BTreeSet::new();
    plan.commit(&stage, &staged, &deletes, &mut dirty, &mut report)?;
    plan.finish(&dirty)?;
    Ok(report)
}

struct Plan<'a> {
    root: &'a RootDir,
    /// Full paths (prefix joined), parents first.
    upserts: &'a [(RelPath, &'a Entry)],
    upsert_dirs: HashSet<RelPath>,
    deleted: HashSet<RelPath>,
    opts: &'a ApplyOptions,
}

fn disk_err(root: &RootDir, op: &'static str, rel: &RelPath, e: impl Into<io::Error>) -> SyncError {
    SyncError::io(op, root.display(rel.as_str()), e.into())
}

impl Plan<'_> {
    fn check_disk(&self) -> Result<(), SyncError> {
        let mut kinds: HashMap<RelPath, DiskKind> = HashMap::new();
        let mut kind = |p: &RelPath| -> Result<DiskKind, SyncError> {
            if let Some(k) = kinds.get(p) {
                return Ok(*k);
            }
            let k = self
                .root
                .kind_of(p)
                .map_err(|e| disk_err(self.root, "inspect", p, e))?;
            kinds.insert(p.clone(), k);
            Ok(k)
        };
        for (path, entry) in self.upserts {
            let mut fresh = false;
            for ancestor in path.ancestors() {
                match kind(&ancestor)? {
                    DiskKind::Dir => {}
                    DiskKind::Missing => fresh = true,
                    _ if self.upsert_dirs.contains(&ancestor) => fresh = true,
                    other => {
                        return Err(SyncError::refused(format!(
                            "{path} would be written through {ancestor}, which is a {} on disk",
                            kind_name(other)
                        )));
                    }
                }
                if fresh {
                    break;
                }
            }
            if !fresh && !entry.is_dir() && kind(path)? == DiskKind::Dir {
                self.check_all_deleted(path)?;
            }
        }
        Ok(())
    }

    /// Refuses to replace the directory `dir` unless the delta deletes all it holds.
    fn check_all_deleted(&self, dir: &RelPath) -> Result<(), SyncError> {
        let fd = self
            .root
            .open_dir(Some(dir))
            .map_err(|e| disk_err(self.root, "open directory", dir, e))?;
        let names = list_dir(&fd).map_err(|e| disk_err(self.root, "list directory", dir, e))?;
        for name in names {
            let child = match RelPath::new(format!("{dir}/{name}")) {
                Ok(child) if self.deleted.contains(&child) => child,
                _ => {
                    return Err(SyncError::refused(format!(
                        "{dir} would be replaced but holds {name:?}, which the delta does not delete"
                    )));
                }
            };
            if kind_at(&fd, &name).map_err(|e| disk_err(self.root, "inspect", &child, e))?
                == DiskKind::Dir
            {
                self.check_all_deleted(&child)?;
            }
        }
        Ok(())
    }

    /// Refuses a delta that only deletes and would leave a non-empty tree empty.
    fn check_mass_delete(&self) -> Result<(), SyncError> {
        let prefix = self.opts.prefix.as_ref();
        let base = match self.root.open_dir(prefix) {
            Ok(fd) => fd,
            Err(e) if is_not_there(&e) => return Ok(()),
            Err(e) => {
                return Err(SyncError::io(
                    "open directory",
                    self.root.display(prefix.map_or("", RelPath::as_str)),
                    e,
                ));
            }
        };
        let names = list_dir(&base).map_err(|e| {
            SyncError::io(
                "list directory",
                self.root.display(prefix.map_or("", RelPath::as_str)),
                e,
            )
        })?;
        let mut present = 0usize;
        for name in names {
            if name.starts_with(TEMP_PREFIX) || (prefix.is_none() && name == CONFLICTS_DIR) {
                continue;
            }
            present += 1;
            let path = match prefix {
                Some(p) => RelPath::new(format!("{p}/{name}")),
                None => RelPath::new(name),
            };
            if !path.is_ok_and(|p| self.deleted.contains(&p)) {
                return Ok(());
            }
        }
        if present > 0 {
            return Err(SyncError::refused(format!(
                "it deletes every entry of a non-empty tree ({} paths); set allow_mass_delete to permit this",
                self.deleted.len()
            )));
        }
        Ok(())
    }

    fn stage_files(
        &self,
        stage: &Stage,
        source: &dyn ChunkSource,
        report: &mut ApplyReport,
    ) -> Result<HashMap<RelPath, String>, SyncError> {
        let mut staged = HashMap::new();
        let many = self.opts.fsync && self.upserts.len() > FSYNC_EACH_UP_TO;
        // Started once there is enough to write back early.
        let mut flusher: Option<Flusher> = None;
        let mut unflushed = 0u64;
        let verified = source.verified();
        for (n, (path, entry)) in self.upserts.iter().enumerate() {
            let EntryKind::File { chunks, .. } = &entry.kind else {
                continue;
            };
            let name = format!("{n}");
            let disk = |e: io::Error| {
                SyncError::io("write staged copy of", self.root.display(path.as_str()), e)
            };
            let fd = rustix::fs::openat(
                &stage.fd,
                name.as_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(|e| disk(e.into()))?;
            let mut file = File::from(fd);
            for chunk in chunks {
                let bytes = source.get(&chunk.id)?;
                if bytes.len() != chunk.len as usize {
                    return Err(SyncError::ChunkCorrupt {
                        id: chunk.id,
                        reason: format!("{} bytes where {} were expected", bytes.len(), chunk.len),
                    });
                }
                if !verified {
                    verify_chunk(&chunk.id, &bytes)?;
                }
                file.write_all(&bytes).map_err(disk)?;
                report.bytes_written += bytes.len() as u64;
                unflushed += bytes.len() as u64;
            }
            rustix::fs::fchmod(&file, Mode::from_raw_mode((entry.mode & 0o777) as _))
                .map_err(|e| disk(e.into()))?;
            rustix::fs::futimens(&file, &mtime(entry.mtime_ns)).map_err(|e| disk(e.into()))?;
            if self.opts.fsync && !many {
                file.sync_all().map_err(disk)?;
            }
            // Between files only: a flush while a file is still being written made its
            // writes wait (measured: a 192 MB file took 2.2 s to apply instead of 0.8 s).
            if many && unflushed >= Flusher::EVERY {
                unflushed = 0;
                if flusher.is_none() {
                    flusher = Flusher::start(&stage.fd);
                }
                if let Some(flusher) = &flusher {
                    flusher.kick();
                }
            }
            staged.insert(path.clone(), name);
        }
        drop(flusher);
        // Many files: one flush of the filesystem instead of one journal commit per file,
        // which on a real disk is the difference between seconds and milliseconds. Either
        // way every staged file is durable before anything is renamed into place.
        if self.opts.fsync && self.upserts.len() > FSYNC_EACH_UP_TO && !staged.is_empty() {
            rustix::fs::syncfs(&stage.fd).map_err(|e| {
                SyncError::io("flush staged files", self.root.display(""), e.into())
            })?;
        }
        Ok(staged)
    }

    fn commit(
        &self,
        stage: &Stage,
        staged: &HashMap<RelPath, String>,
        deletes: &[RelPath],
        dirty: &mut BTreeSet<Option<RelPath>>,
        report: &mut ApplyReport,
    ) -> Result<(), SyncError> {
        let root = self.root;
        for path in deletes {
            let parent_rel = path.parent();
            let parent = match root.open_dir(parent_rel.as_ref()) {
                Ok(fd) => fd,
                Err(e) if is_not_there(&e) => continue,
                Err(e) => return Err(disk_err(root, "open parent of", path, e)),
            };
            let name = path.file_name();
            let result = match kind_at(&parent, name)
                .map_err(|e| disk_err(root, "inspect", path, e))?
            {
                DiskKind::Missing => continue,
                DiskKind::Dir => match rustix::fs::unlinkat(&parent, name, AtFlags::REMOVEDIR) {
                    Err(Errno::NOTEMPTY | Errno::EXIST) => {
                        report.kept_dirs.push(path.clone());
                        continue;
                    }
                    other => other,
                },
                _ => rustix::fs::unlinkat(&parent, name, AtFlags::empty()),
            };
            result.map_err(|e| disk_err(root, "delete", path, e))?;
            report.deleted += 1;
            dirty.insert(parent_rel);
        }

        let mut parent_cache: Option<(Option<RelPath>, OwnedFd)> = None;
        for (path, entry) in self.upserts {
            let parent_rel = path.parent();
            let parent = match parent_cache.take() {
                Some((p, fd)) if p == parent_rel => fd,
                _ => root
                    .ensure_dir(parent_rel.as_ref(), 0o755)
                    .map_err(|e| disk_err(root, "open parent of", path, e))?,
            };
            let name = path.file_name();
            let existing =
                kind_at(&parent, name).map_err(|e| disk_err(root, "inspect", path, e))?;
            let fail = |op: &'static str| move |e: Errno| disk_err(root, op, path, e);
            match &entry.kind {
                EntryKind::Dir => {
                    if existing != DiskKind::Dir {
                        if existing != DiskKind::Missing {
                            rustix::fs::unlinkat(&parent, name, AtFlags::empty())
                                .map_err(fail("replace"))?;
                        }
                        rustix::fs::mkdirat(
                            &parent,
                            name,
                            Mode::from_raw_mode((entry.mode | 0o700) as _),
                        )
                        .map_err(fail("create directory"))?;
                        report.dirs_created += 1;
                    }
                }
                EntryKind::File { .. } => {
                    if existing == DiskKind::Dir {
                        rustix::fs::unlinkat(&parent, name, AtFlags::REMOVEDIR)
                            .map_err(fail("replace directory"))?;
                    }
                    let Some(staged_name) = staged.get(path) else {
                        return Err(SyncError::refused(format!("{path} was not staged")));
                    };
                    match rustix::fs::renameat(&stage.fd, staged_name.as_str(), &parent, name) {
                        Ok(()) => {}
                        Err(Errno::XDEV) => {
                            copy_across(&stage.fd, staged_name, &parent, name, self.opts.fsync)
                                .map_err(|e| disk_err(root, "copy into place", path, e))?
                        }
                        Err(e) => return Err(disk_err(root, "rename into place", path, e)),
                    }
                    report.files_written += 1;
                }
                EntryKind::Symlink { target } => {
                    if existing == DiskKind::Dir {
                        rustix::fs::unlinkat(&parent, name, AtFlags::REMOVEDIR)
                            .map_err(fail("replace directory"))?;
                    }
                    let tmp = temp_name("link");
                    rustix::fs::symlinkat(target.as_str(), &parent, tmp.as_str())
                        .map_err(fail("create symlink"))?;
                    if let Err(e) = rustix::fs::renameat(&parent, tmp.as_str(), &parent, name) {
                        let _ = rustix::fs::unlinkat(&parent, tmp.as_str(), AtFlags::empty());
                        return Err(disk_err(root, "rename symlink into place", path, e));
                    }
                    rustix::fs::utimensat(
                        &parent,
                        name,
                        &mtime(entry.mtime_ns),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(fail("set mtime of"))?;
                    report.symlinks_written += 1;
                }
            }
            dirty.insert(parent_rel.clone());
            parent_cache = Some((parent_rel, parent));
        }
        Ok(())
    }

    fn finish(&self, dirty: &BTreeSet<Option<RelPath>>) -> Result<(), SyncError> {
        let root = self.root;
        // Deepest first; a directory's own mtime is unaffected by changes to its children's
        // metadata, so any order after all structural changes works.
        for (path, entry) in self.upserts.iter().rev() {
            if !entry.is_dir() {
                continue;
            }
            let fd = root
                .open_dir(Some(path))
                .map_err(|e| disk_err(root, "open directory", path, e))?;
            rustix::fs::fchmod(&fd, Mode::from_raw_mode((entry.mode & 0o777) as _))
                .map_err(|e| disk_err(root, "set mode of", path, e))?;
            rustix::fs::futimens(&fd, &mtime(entry.mtime_ns))
                .map_err(|e| disk_err(root, "set mtime of", path, e))?;
        }
        if self.opts.fsync {
            let dirs = dirty
                .iter()
                .cloned()
                .chain(self.upsert_dirs.iter().cloned().map(Some));
            for dir in dirs {
                let shown = dir.as_ref().map_or("", RelPath::as_str).to_owned();
                let fd = match root.open_dir(dir.as_ref()) {
                    Ok(fd) => fd,
                    // A directory deleted after being touched needs no fsync.
                    Err(e) if is_not_there(&e) => continue,
                    Err(e) => return Err(SyncError::io("open directory", root.display(&shown), e)),
                };
                rustix::fs::fsync(&fd).map_err(|e| {
                    SyncError::io("fsync directory", root.display(&shown), e.into())
                })?;
            }
        }
        Ok(())
    }
}

/// Starts writeback of staged files while later ones are still being written: after each
/// file that completes [`Flusher::EVERY`] bytes, a background thread runs `syncfs`. The final `syncfs` then
/// waits only for the rest, instead of for every byte at the end (the kernel otherwise
/// holds many seconds of writes in memory on a large machine). Durability does not depend
/// on it.
struct Flusher {
    kick: std::sync::mpsc::SyncSender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    const EVERY: u64 = 64 << 20;

    fn start(stage: &OwnedFd) -> Option<Flusher> {
        let fd = stage.try_clone().ok()?;
        let (kick, kicks) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("offload-flush".to_owned())
            .spawn(move || {
                for () in kicks {
                    let _ = rustix::fs::syncfs(&fd);
                }
            })
            .ok()?;
        Some(Flusher {
            kick,
            thread: Some(thread),
        })
    }

    fn kick(&self) {
        // A flush already queued covers this one too.
        let _ = self.kick.try_send(());
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        let (kick, _) = std::sync::mpsc::sync_channel(1);
        drop(std::mem::replace(&mut self.kick, kick));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn kind_name(kind: DiskKind) -> &'static str {
    match kind {
        DiskKind::Missing => "missing path",
        DiskKind::Dir => "directory",
        DiskKind::File => "file",
        DiskKind::Symlink => "symlink",
        DiskKind::Other => "special file",
    }
}

fn mtime(ns: i64) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: ns.div_euclid(1_000_000_000),
            tv_nsec: ns.rem_euclid(1_000_000_000) as _,
        },
    }
}

fn temp_name(what: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{TEMP_PREFIX}{what}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Copies a staged file into `dir` under a temp name and renames it over `name`; used
/// when the target directory is on another filesystem than the staging directory.
fn copy_across(
    stage: &OwnedFd,
    staged: &str,
    dir: &OwnedFd,
    name: &str,
    fsync: bool,
) -> io::Result<()> {
    let src = File::from(rustix::fs::openat(
        stage,
        staged,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?);
    let stat = rustix::fs::fstat(&src)?;
    let tmp = temp_name("copy");
    let mut dst = File::from(rustix::fs::openat(
        dir,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?);
    let result = (|| {
        io::copy(&mut &src, &mut dst)?;
        rustix::fs::fchmod(&dst, Mode::from_raw_mode(stat.st_mode & 0o777))?;
        let times = Timestamps {
            last_access: Timespec {
                tv_sec: 0,
                tv_nsec: UTIME_OMIT,
            },
            last_modification: Timespec {
                tv_sec: stat.st_mtime as _,
                tv_nsec: stat.st_mtime_nsec as _,
            },
        };
        rustix::fs::futimens(&dst, &times)?;
        if fsync {
            dst.sync_all()?;
        }
        rustix::fs::renameat(dir, tmp.as_str(), dir, name)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = rustix::fs::unlinkat(dir, tmp.as_str(), AtFlags::empty());
    }
    result
}

/// The staging directory; removed with whatever is left in it when dropped. If the apply
/// did not reach its commit, the root's mtime is put back as well, so a refused or failed
/// apply leaves no trace.
struct Stage<'a> {
    root: &'a RootDir,
    name: String,
    fd: OwnedFd,
    root_mtime: Option<Timestamps>,
    committing: bool,
}

impl<'a> Stage<'a> {
    fn create(root: &'a RootDir) -> Result<Self, SyncError> {
        let name = temp_name("stage");
        let root_mtime = rustix::fs::fstat(root.fd()).ok().map(|st| Timestamps {
            last_access: Timespec {
                tv_sec: 0,
                tv_nsec: UTIME_OMIT,
            },
            last_modification: Timespec {
                tv_sec: st.st_mtime as _,
                tv_nsec: st.st_mtime_nsec as _,
            },
        });
        rustix::fs::mkdirat(root.fd(), name.as_str(), Mode::from_raw_mode(0o700)).map_err(|e| {
            SyncError::io("create staging directory", root.display(&name), e.into())
        })?;
        let fd = rustix::fs::openat(
            root.fd(),
            name.as_str(),
            crate::rooted::DIR_FLAGS,
            Mode::empty(),
        )
        .map_err(|e| SyncError::io("open staging directory", root.display(&name), e.into()))?;
        Ok(Stage {
            root,
            name,
            fd,
            root_mtime,
            committing: false,
        })
    }
}

impl Drop for Stage<'_> {
    fn drop(&mut self) {
        if let Ok(names) = list_dir(&self.fd) {
            for name in names {
                let _ = rustix::fs::unlinkat(&self.fd, name.as_str(), AtFlags::empty());
            }
        }
        let _ = rustix::fs::unlinkat(self.root.fd(), self.name.as_str(), AtFlags::REMOVEDIR);
        if let (false, Some(times)) = (self.committing, &self.root_mtime) {
            let _ = rustix::fs::futimens(self.root.fd(), times);
        }
    }
}
