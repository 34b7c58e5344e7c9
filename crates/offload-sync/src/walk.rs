//! A walk of a workspace through directory handles only: each directory is opened with
//! `openat(parent, name, O_NOFOLLOW | O_DIRECTORY)` from the root's handle, every entry is
//! stat'ed relative to its directory's handle without following it, and `.offloadignore`
//! files are read the same way. A directory that a container swaps for a symlink while the
//! walk runs is therefore never entered, and nothing outside the root is ever looked at.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ignore::Match;
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use crate::error::SyncError;
use crate::path::{CONFLICTS_DIR, RelPath, TEMP_PREFIX};
use crate::rooted::{DIR_FLAGS, RootDir};
use crate::scan::IGNORE_FILE;

/// Flags for reading a regular file below the root: never through a symlink, and without
/// blocking or taking a terminal should the name have become a FIFO or a device meanwhile
/// (`fstat` after the open tells; nothing is read from such a thing).
pub(crate) const FILE_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NONBLOCK)
    .union(OFlags::NOCTTY)
    .union(OFlags::CLOEXEC);

/// An `.offloadignore` larger than this is refused (its rules are not applied and a
/// warning says so): the file is the container's, the memory the host's.
const MAX_IGNORE_FILE: u64 = 1 << 20;

/// What the walk reads of an entry's stat, in fixed types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    pub kind: FileType,
    /// Permission bits, `mode & 0o777`.
    pub mode: u32,
    pub size: u64,
    /// Bytes allocated on disk (`st_blocks * 512`): less than `size` for a sparse file.
    pub allocated: u64,
    pub nlink: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub dev: u64,
    pub ino: u64,
}

impl Meta {
    // The field types of `struct stat` differ between architectures, so some of these
    // casts are identities on one and conversions on another.
    #[allow(clippy::unnecessary_cast)]
    pub fn of(stat: &Stat) -> Meta {
        let ns = |s: i64, ns: i64| s.saturating_mul(1_000_000_000).saturating_add(ns);
        Meta {
            kind: FileType::from_raw_mode(stat.st_mode as _),
            mode: (stat.st_mode as u32) & 0o777,
            size: (stat.st_size as i64).max(0) as u64,
            allocated: ((stat.st_blocks as i64).max(0) as u64).saturating_mul(512),
            nlink: stat.st_nlink as u64,
            mtime_ns: ns(stat.st_mtime as i64, stat.st_mtime_nsec as i64),
            ctime_ns: ns(stat.st_ctime as i64, stat.st_ctime_nsec as i64),
            dev: stat.st_dev as u64,
            ino: stat.st_ino as u64,
        }
    }
}

/// What a visitor tells the walk after an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    /// End the walk now (a budget ran out).
    Stop,
}

/// An entry the walk found and did not exclude.
pub(crate) struct Found<'a> {
    /// The handle of the directory holding the entry; open the entry relative to it.
    pub dir: &'a Arc<OwnedFd>,
    pub name: &'a str,
    pub rel: RelPath,
    /// For a directory, the stat of the handle the walk opened (and will descend into).
    pub meta: Meta,
}

/// Receives what a walk finds.
pub(crate) trait Visitor {
    fn entry(&mut self, found: Found<'_>) -> Result<Flow, SyncError>;
    /// A name the walk left out because it cannot be synced, and why.
    fn skipped(&mut self, path: PathBuf, reason: String);
    /// A problem that did not stop the walk, such as a bad line in an ignore file.
    fn warning(&mut self, message: String);
    /// A directory was listed and its entries are about to be looked at (a seam for
    /// tests that change the tree at that moment).
    fn listed(&mut self, _dir: Option<&RelPath>) {}
}

struct Frame {
    fd: Arc<OwnedFd>,
    rel: Option<RelPath>,
    /// Names still to visit, in reverse order (popped from the end).
    names: Vec<OsString>,
    ignore: Option<Gitignore>,
}

/// Walks everything below `root`, depth first, names in byte order.
///
/// Left out silently: `.offload-conflicts` at the top, `.offload-tmp-*` names anywhere and
/// whatever `.offloadignore` files exclude (gitignore syntax, each file applying below its
/// directory, deeper files first; an excluded directory is not entered). Left out and
/// reported: names that are not valid [`RelPath`]s. Symlinks are reported, never
/// followed. An I/O error (an unreadable directory) ends the walk with that error.
pub(crate) fn walk(root: &RootDir, visitor: &mut dyn Visitor) -> Result<(), SyncError> {
    let root_fd = root
        .open_dir(None)
        .map_err(|e| SyncError::io("open", root.path(), e))?;
    let mut stack = vec![open_frame(root, Arc::new(root_fd), None, visitor)?];
    loop {
        let Some(frame) = stack.last_mut() else {
            return Ok(());
        };
        let Some(name) = frame.names.pop() else {
            stack.pop();
            continue;
        };
        let depth = stack.len();
        let Some(name_str) = name.to_str() else {
            let path = match &stack[depth - 1].rel {
                Some(rel) => Path::new(rel.as_str()).join(&name),
                None => PathBuf::from(&name),
            };
            visitor.skipped(path, "name is not UTF-8".to_owned());
            continue;
        };
        if name_str.starts_with(TEMP_PREFIX) || (depth == 1 && name_str == CONFLICTS_DIR) {
            continue;
        }
        let parent = &stack[depth - 1];
        let rel = match &parent.rel {
            Some(p) => RelPath::new(format!("{p}/{name_str}")),
            None => RelPath::new(name_str),
        };
        let rel = match rel {
            Ok(rel) => rel,
            Err(e) => {
                let path = match &parent.rel {
                    Some(p) => Path::new(p.as_str()).join(name_str),
                    None => PathBuf::from(name_str),
                };
                visitor.skipped(path, e.to_string());
                continue;
            }
        };
        let dir_fd = parent.fd.clone();
        let mut meta = match stat_at(&dir_fd, name_str) {
            Ok(Some(meta)) => meta,
            // Gone since the listing: as if the listing had not shown it.
            Ok(None) => continue,
            Err(e) => return Err(SyncError::io("stat", root.display(rel.as_str()), e)),
        };
        if ignored(&stack, root, &rel, meta.kind == FileType::Directory) {
            continue;
        }
        let mut child = None;
        if meta.kind == FileType::Directory {
            match rustix::fs::openat(&*dir_fd, name_str, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => {
                    meta = rustix::fs::fstat(&fd)
                        .map(|s| Meta::of(&s))
                        .map_err(|e| SyncError::io("stat", root.display(rel.as_str()), e.into()))?;
                    child = Some(fd);
                }
                // Replaced by a symlink or a file since the stat: take it as what it is
                // now, once (the symlink is recorded, not followed).
                Err(Errno::LOOP | Errno::NOTDIR) => match stat_at(&dir_fd, name_str) {
                    Ok(Some(now)) if now.kind != FileType::Directory => meta = now,
                    Ok(None) => continue,
                    Ok(Some(_)) => {
                        return Err(SyncError::io(
                            "open",
                            root.display(rel.as_str()),
                            io::Error::other("directory keeps changing while it is scanned"),
                        ));
                    }
                    Err(e) => return Err(SyncError::io("stat", root.display(rel.as_str()), e)),
                },
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(SyncError::io("open", root.display(rel.as_str()), e.into())),
            }
            if child.is_none() && ignored(&stack, root, &rel, false) {
                continue;
            }
        }
        let flow = visitor.entry(Found {
            dir: &dir_fd,
            name: name_str,
            rel: rel.clone(),
            meta,
        })?;
        if flow == Flow::Stop {
            return Ok(());
        }
        if let Some(fd) = child {
            let frame = open_frame(root, Arc::new(fd), Some(rel), visitor)?;
            stack.push(frame);
        }
    }
}

/// `statat` without following; `None` when the name is gone.
pub(crate) fn stat_at(dir: &OwnedFd, name: &str) -> io::Result<Option<Meta>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(Meta::of(&stat))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether the deepest `.offloadignore` that has a say excludes `rel`.
fn ignored(stack: &[Frame], root: &RootDir, rel: &RelPath, is_dir: bool) -> bool {
    let full = root.display(rel.as_str());
    for frame in stack.iter().rev() {
        if let Some(gi) = &frame.ignore {
            match gi.matched(&full, is_dir) {
                Match::None => continue,
                Match::Ignore(_) => return true,
                Match::Whitelist(_) => return false,
            }
        }
    }
    false
}

fn open_frame(
    root: &RootDir,
    fd: Arc<OwnedFd>,
    rel: Option<RelPath>,
    visitor: &mut dyn Visitor,
) -> Result<Frame, SyncError> {
    let shown = match &rel {
        Some(rel) => root.display(rel.as_str()),
        None => root.path().to_owned(),
    };
    let mut names =
        list_names(&fd).map_err(|e| SyncError::io("read directory", shown.clone(), e))?;
    names.sort_by(|a, b| b.as_bytes().cmp(a.as_bytes()));
    let ignore = if names.iter().any(|n| n == IGNORE_FILE) {
        read_ignore(&fd, &shown, visitor)
    } else {
        None
    };
    visitor.listed(rel.as_ref());
    Ok(Frame {
        fd,
        rel,
        names,
        ignore,
    })
}

/// The names in a directory, without `.` and `..`.
fn list_names(dir: &OwnedFd) -> io::Result<Vec<OsString>> {
    let mut out = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        out.push(OsString::from_vec(name.to_vec()));
    }
    Ok(out)
}

/// Reads the `.offloadignore` of a directory through its handle. One that is not a
/// regular file (a symlink is not followed), is too large or cannot be read applies no
/// rules, and a warning says so; a bad line is skipped with a warning.
fn read_ignore(dir: &OwnedFd, shown: &Path, visitor: &mut dyn Visitor) -> Option<Gitignore> {
    let path = shown.join(IGNORE_FILE);
    let text = match read_small_file(dir, IGNORE_FILE, MAX_IGNORE_FILE) {
        Ok(text) => text,
        Err(e) => {
            visitor.warning(format!("{} not applied: {e}", path.display()));
            return None;
        }
    };
    let mut builder = GitignoreBuilder::new(shown);
    for line in String::from_utf8_lossy(&text).lines() {
        if let Err(e) = builder.add_line(Some(path.clone()), line) {
            visitor.warning(format!("{}: {e}", path.display()));
        }
    }
    match builder.build() {
        Ok(gi) => Some(gi),
        Err(e) => {
            visitor.warning(format!("{} not applied: {e}", path.display()));
            None
        }
    }
}

fn read_small_file(dir: &OwnedFd, name: &str, max: u64) -> io::Result<Vec<u8>> {
    let file = open_regular(dir, name)?;
    let meta = Meta::of(&rustix::fs::fstat(&file)?);
    if meta.size > max {
        return Err(io::Error::other(format!(
            "larger than {max} bytes ({} bytes)",
            meta.size
        )));
    }
    let mut out = Vec::new();
    (&file).take(max).read_to_end(&mut out)?;
    Ok(out)
}

/// Opens the regular file `name` in `dir`, never following a symlink and never reading
/// anything that is not a regular file.
pub(crate) fn open_regular(dir: &OwnedFd, name: &str) -> io::Result<File> {
    let fd = rustix::fs::openat(dir, name, FILE_FLAGS, Mode::empty())?;
    let file = File::from(fd);
    let stat = rustix::fs::fstat(&file)?;
    if FileType::from_raw_mode(stat.st_mode as _) != FileType::RegularFile {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(file)
}
