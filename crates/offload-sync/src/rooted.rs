//! Filesystem access confined to one root directory: every path is walked one component
//! at a time from a directory handle with `O_NOFOLLOW`, so no symlink, whoever planted it
//! and whenever, can lead a read or a write outside the root.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::error::SyncError;
use crate::path::RelPath;

/// What is at a path, without following a final symlink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DiskKind {
    Missing,
    Dir,
    File,
    Symlink,
    Other,
}

pub(crate) const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// A directory handle that all access below it goes through.
#[derive(Debug)]
pub(crate) struct RootDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl RootDir {
    /// Opens `path` as the root. The root itself may be reached through symlinks: it is
    /// the caller's choice; only what lies below it is confined.
    pub fn open(path: &Path) -> Result<Self, SyncError> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| SyncError::io("open root directory", path, e.into()))?;
        Ok(RootDir {
            fd,
            path: path.to_owned(),
        })
    }

    /// The path of `rel` below the root, for messages.
    pub fn display(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// The root's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Opens the directory at `rel` (the root for `None`), never following a symlink.
    pub fn open_dir(&self, rel: Option<&RelPath>) -> io::Result<OwnedFd> {
        let mut cur = rustix::fs::openat(&self.fd, ".", DIR_FLAGS, Mode::empty())?;
        if let Some(rel) = rel {
            for component in rel.components() {
                cur = rustix::fs::openat(&cur, component, DIR_FLAGS, Mode::empty())?;
            }
        }
        Ok(cur)
    }

    /// Opens the parent directory of `rel`, creating missing directories on the way with
    /// `mode`; a component that exists but is not a real directory is an error.
    pub fn ensure_dir(&self, rel: Option<&RelPath>, mode: u32) -> io::Result<OwnedFd> {
        let mut cur = rustix::fs::openat(&self.fd, ".", DIR_FLAGS, Mode::empty())?;
        if let Some(rel) = rel {
            for component in rel.components() {
                cur = match rustix::fs::openat(&cur, component, DIR_FLAGS, Mode::empty()) {
                    Ok(fd) => fd,
                    Err(Errno::NOENT) => {
                        match rustix::fs::mkdirat(&cur, component, Mode::from_raw_mode(mode as _)) {
                            Ok(()) | Err(Errno::EXIST) => {}
                            Err(e) => return Err(e.into()),
                        }
                        rustix::fs::openat(&cur, component, DIR_FLAGS, Mode::empty())?
                    }
                    Err(e) => return Err(e.into()),
                };
            }
        }
        Ok(cur)
    }

    /// What is at `rel`; `Missing` also when a parent is missing, is not a directory or
    /// is a symlink (then nothing of ours is there).
    pub fn kind_of(&self, rel: &RelPath) -> io::Result<DiskKind> {
        let parent = match self.open_dir(rel.parent().as_ref()) {
            Ok(fd) => fd,
            Err(e) if is_not_there(&e) => return Ok(DiskKind::Missing),
            Err(e) => return Err(e),
        };
        kind_at(&parent, rel.file_name())
    }

    /// Opens the regular file at `rel` read-only, never following a symlink.
    pub fn open_file(&self, rel: &RelPath) -> io::Result<File> {
        let parent = self.open_dir(rel.parent().as_ref())?;
        crate::walk::open_regular(&parent, rel.file_name())
    }
}

/// Errors that mean "no such thing below the root".
pub(crate) fn is_not_there(e: &io::Error) -> bool {
    matches!(
        Errno::from_io_error(e),
        Some(Errno::NOENT | Errno::NOTDIR | Errno::LOOP)
    )
}

/// What `name` in `dir` is, without following it.
pub(crate) fn kind_at(dir: impl AsFd, name: &str) -> io::Result<DiskKind> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(match FileType::from_raw_mode(stat.st_mode) {
            FileType::Directory => DiskKind::Dir,
            FileType::RegularFile => DiskKind::File,
            FileType::Symlink => DiskKind::Symlink,
            _ => DiskKind::Other,
        }),
        Err(Errno::NOENT) => Ok(DiskKind::Missing),
        Err(e) => Err(e.into()),
    }
}

/// Names in the directory `dir` (without `.` and `..`). A non-UTF-8 name comes back as
/// `"\0"`, which no `RelPath` can hold, so it always counts as untracked.
pub(crate) fn list_dir(dir: impl AsFd) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        out.push(String::from_utf8(name.to_vec()).unwrap_or_else(|_| "\0".to_owned()));
    }
    Ok(out)
}
