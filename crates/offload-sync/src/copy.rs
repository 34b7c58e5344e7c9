//! A plain copy of a workspace tree, confined at both ends: how the server sets a lost
//! copy's workspace aside and keeps what that copy wrote late as a conflict set.
//!
//! Unlike a sync, it copies everything a container may have made: names that are not
//! UTF-8, absolute symlinks, paths `.offloadignore` excludes, earlier conflict sets. It
//! reads nothing twice and hashes nothing (the kernel copies the bytes, with
//! `copy_file_range` where the filesystem can), because the tree may be written while it
//! is copied: a file changed meanwhile is copied as it was read, never refused. Both trees
//! are walked through directory handles opened with `O_NOFOLLOW`, so no symlink, planted
//! whenever, leads a read or a write outside them.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, Timespec, Timestamps};
use rustix::io::Errno;

use crate::error::SyncError;
use crate::path::{RelPath, TEMP_PREFIX};
use crate::rooted::{DIR_FLAGS, RootDir};
use crate::walk::FILE_FLAGS;

/// Which entries a copy takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Select {
    /// Everything (directories too, empty ones included).
    All,
    /// Files and symlinks whose status changed at or after this instant (`st_ctime` in
    /// nanoseconds, on the source filesystem's clock), with the directories above them.
    /// No process can set a ctime, so a container cannot hide a write from it.
    ChangedSince { ctime_ns: i64 },
}

/// What a copy did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyReport {
    pub files: u64,
    pub bytes: u64,
    pub symlinks: u64,
    pub dirs: u64,
    /// Entries left out: FIFOs, sockets and devices (a container cannot make devices).
    pub skipped: Vec<PathBuf>,
}

impl CopyReport {
    /// Whether anything was copied.
    pub fn is_empty(&self) -> bool {
        self.files == 0 && self.symlinks == 0 && self.dirs == 0
    }
}

/// Copies the tree at `src` into the directory `dst` (which must exist), below `below`
/// when given (created as needed; a component that is not a real directory is an error),
/// keeping permission bits (without setuid, setgid and sticky, as a sync), owners (when
/// run as root) and modification times, then flushes the destination's filesystem. Names
/// starting with `.offload-tmp-` are apply's temporaries and are left out.
///
/// An entry that vanishes while it is copied is left out; any other error ends the copy
/// with that error (what was copied stays, under the caller's destination).
pub fn copy_tree(
    src: &Path,
    dst: &Path,
    below: Option<&RelPath>,
    select: Select,
) -> Result<CopyReport, SyncError> {
    let source = RootDir::open(src)?;
    let target = RootDir::open(dst)?;
    let root_src = source
        .open_dir(None)
        .map_err(|e| SyncError::io("open", src, e))?;
    let root_stat = stat_of(&root_src, src)?;
    let mut copy = Copy {
        target,
        below: below.cloned(),
        select,
        report: CopyReport::default(),
        stack: Vec::new(),
    };
    let names = list_names(&root_src).map_err(|e| SyncError::io("read directory", src, e))?;
    copy.stack.push(Frame {
        src: root_src,
        dst: None,
        name: OsString::new(),
        shown: src.to_owned(),
        stat: root_stat,
        names,
    });
    if select == Select::All {
        copy.materialize()?;
    }
    copy.run()?;
    Ok(copy.report)
}

struct Frame {
    src: OwnedFd,
    /// The copy of this directory, once something had to be written in it.
    dst: Option<OwnedFd>,
    /// The directory's name in its parent (empty for the root).
    name: OsString,
    /// Its source path, for messages.
    shown: PathBuf,
    stat: Stat,
    /// Names still to visit, in reverse order.
    names: Vec<OsString>,
}

struct Copy {
    target: RootDir,
    below: Option<RelPath>,
    select: Select,
    report: CopyReport,
    stack: Vec<Frame>,
}

impl Copy {
    fn run(&mut self) -> Result<(), SyncError> {
        loop {
            let name = match self.stack.last_mut().map(|f| f.names.pop()) {
                None => break,
                Some(Some(name)) => name,
                Some(None) => {
                    // A directory is done: its own attributes last, so a read-only mode
                    // does not stand in the way of its contents.
                    if let Some(done) = self.stack.pop()
                        && let Some(dst) = &done.dst
                    {
                        set_attributes(dst, &done.stat)
                            .map_err(|e| SyncError::io("set attributes of", done.shown, e))?;
                    }
                    continue;
                }
            };
            let Some(frame) = self.stack.last() else {
                break;
            };
            if name.as_bytes().starts_with(TEMP_PREFIX.as_bytes()) {
                continue;
            }
            let shown = frame.shown.join(&name);
            let stat =
                match rustix::fs::statat(&frame.src, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(stat) => stat,
                    Err(Errno::NOENT) => continue,
                    Err(e) => return Err(SyncError::io("stat", shown, e.into())),
                };
            match FileType::from_raw_mode(stat.st_mode as _) {
                FileType::Directory => self.enter(name, shown)?,
                FileType::RegularFile if self.selected(&stat) => self.file(&name, shown)?,
                FileType::Symlink if self.selected(&stat) => self.symlink(&name, shown, &stat)?,
                FileType::RegularFile | FileType::Symlink => {}
                _ => self.report.skipped.push(shown),
            }
        }
        if let Some(fd) = self.target_root_if_written()? {
            rustix::fs::syncfs(&fd)
                .map_err(|e| SyncError::io("flush", self.target.path(), e.into()))?;
        }
        Ok(())
    }

    fn selected(&self, stat: &Stat) -> bool {
        match self.select {
            Select::All => true,
            Select::ChangedSince { ctime_ns } => ctime_of(stat) >= ctime_ns,
        }
    }

    fn target_root_if_written(&self) -> Result<Option<OwnedFd>, SyncError> {
        if self.report.is_empty() {
            return Ok(None);
        }
        self.target
            .open_dir(None)
            .map(Some)
            .map_err(|e| SyncError::io("open", self.target.path(), e))
    }

    fn enter(&mut self, name: OsString, shown: PathBuf) -> Result<(), SyncError> {
        let Some(parent) = self.stack.last() else {
            return Ok(());
        };
        let src = match rustix::fs::openat(&parent.src, name.as_os_str(), DIR_FLAGS, Mode::empty())
        {
            Ok(fd) => fd,
            // Replaced or removed since the stat: nothing of it to copy now.
            Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => return Ok(()),
            Err(e) => return Err(SyncError::io("open", shown, e.into())),
        };
        let stat = stat_of(&src, &shown)?;
        let names =
            list_names(&src).map_err(|e| SyncError::io("read directory", shown.clone(), e))?;
        self.stack.push(Frame {
            src,
            dst: None,
            name,
            shown,
            stat,
            names,
        });
        if self.select == Select::All {
            self.materialize()?;
        }
        Ok(())
    }

    fn file(&mut self, name: &OsStr, shown: PathBuf) -> Result<(), SyncError> {
        let Some(frame) = self.stack.last() else {
            return Ok(());
        };
        let mut source = match rustix::fs::openat(&frame.src, name, FILE_FLAGS, Mode::empty()) {
            Ok(fd) => File::from(fd),
            Err(Errno::NOENT | Errno::LOOP) => return Ok(()),
            Err(e) => return Err(SyncError::io("open", shown, e.into())),
        };
        // What was opened is what counts: it may have become something else since the stat.
        let stat = rustix::fs::fstat(&source)
            .map_err(|e| SyncError::io("stat", shown.clone(), e.into()))?;
        if FileType::from_raw_mode(stat.st_mode as _) != FileType::RegularFile {
            return Ok(());
        }
        let dir = self.materialize()?;
        let created = rustix::fs::openat(
            &dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| SyncError::io("create", self.target_path(&shown), e.into()))?;
        let mut copy = File::from(created);
        let bytes = io::copy(&mut source, &mut copy)
            .map_err(|e| SyncError::io("copy", shown.clone(), e))?;
        set_attributes(&copy, &stat).map_err(|e| SyncError::io("set attributes of", shown, e))?;
        self.report.files += 1;
        self.report.bytes += bytes;
        Ok(())
    }

    fn symlink(&mut self, name: &OsStr, shown: PathBuf, stat: &Stat) -> Result<(), SyncError> {
        let Some(frame) = self.stack.last() else {
            return Ok(());
        };
        let target = match rustix::fs::readlinkat(&frame.src, name, Vec::new()) {
            Ok(target) => target,
            Err(Errno::NOENT | Errno::INVAL) => return Ok(()),
            Err(e) => return Err(SyncError::io("read link", shown, e.into())),
        };
        let dir = self.materialize()?;
        rustix::fs::symlinkat(target.as_c_str(), &dir, name)
            .map_err(|e| SyncError::io("create link", self.target_path(&shown), e.into()))?;
        // Owner and times of the link itself; a failure to set them loses nothing.
        let _ = rustix::fs::chownat(
            &dir,
            name,
            Some(rustix::fs::Uid::from_raw(stat.st_uid)),
            Some(rustix::fs::Gid::from_raw(stat.st_gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        );
        let _ = rustix::fs::utimensat(&dir, name, &times(stat), AtFlags::SYMLINK_NOFOLLOW);
        self.report.symlinks += 1;
        Ok(())
    }

    /// The copy of the directory on top of the stack, made (with the ones above it) if
    /// it is not there yet.
    fn materialize(&mut self) -> Result<OwnedFd, SyncError> {
        let first_missing = self
            .stack
            .iter()
            .position(|f| f.dst.is_none())
            .unwrap_or(self.stack.len());
        for i in first_missing..self.stack.len() {
            let fd = if i == 0 {
                self.target
                    .ensure_dir(self.below.as_ref(), 0o755)
                    .map_err(|e| SyncError::io("create", self.target.path(), e))?
            } else {
                let Some(parent) = self.stack[i - 1].dst.as_ref() else {
                    return Err(SyncError::io(
                        "create",
                        self.target.path(),
                        io::Error::other("a parent directory was not made"),
                    ));
                };
                let name = self.stack[i].name.clone();
                let shown = self.target_path(&self.stack[i].shown);
                match rustix::fs::mkdirat(parent, name.as_os_str(), Mode::from_raw_mode(0o700)) {
                    Ok(()) => {}
                    Err(e) => return Err(SyncError::io("create", shown, e.into())),
                }
                self.report.dirs += 1;
                rustix::fs::openat(parent, name.as_os_str(), DIR_FLAGS, Mode::empty())
                    .map_err(|e| SyncError::io("open", shown, e.into()))?
            };
            self.stack[i].dst = Some(fd);
        }
        match self.stack.last().and_then(|f| f.dst.as_ref()) {
            Some(top) => top
                .try_clone()
                .map_err(|e| SyncError::io("open", self.target.path(), e)),
            None => Err(SyncError::io(
                "create",
                self.target.path(),
                io::Error::other("nothing to copy into"),
            )),
        }
    }

    /// Where the copy of the source path `shown` goes, for messages.
    fn target_path(&self, shown: &Path) -> PathBuf {
        let root = self.stack.first().map(|f| f.shown.as_path());
        let rel = root
            .and_then(|r| shown.strip_prefix(r).ok())
            .unwrap_or(shown);
        let mut out = self.target.path().to_owned();
        if let Some(below) = &self.below {
            out.push(below.as_str());
        }
        out.join(rel)
    }
}

fn stat_of(fd: &OwnedFd, shown: &Path) -> Result<Stat, SyncError> {
    rustix::fs::fstat(fd).map_err(|e| SyncError::io("stat", shown, e.into()))
}

// The field types of `struct stat` differ between architectures.
#[allow(clippy::unnecessary_cast)]
fn ctime_of(stat: &Stat) -> i64 {
    (stat.st_ctime as i64)
        .saturating_mul(1_000_000_000)
        .saturating_add(stat.st_ctime_nsec as i64)
}

#[allow(clippy::unnecessary_cast)]
fn times(stat: &Stat) -> Timestamps {
    let mtime = Timespec {
        tv_sec: stat.st_mtime as _,
        tv_nsec: stat.st_mtime_nsec as _,
    };
    Timestamps {
        last_access: mtime,
        last_modification: mtime,
    }
}

/// Permission bits (without setuid, setgid and sticky), owner (where allowed) and times.
// `st_mode`'s type differs between architectures.
#[allow(clippy::unnecessary_cast)]
fn set_attributes(fd: impl AsFd, stat: &Stat) -> io::Result<()> {
    let fd = fd.as_fd();
    match rustix::fs::fchown(
        fd,
        Some(rustix::fs::Uid::from_raw(stat.st_uid)),
        Some(rustix::fs::Gid::from_raw(stat.st_gid)),
    ) {
        // Not root: the copy belongs to whoever copies.
        Ok(()) | Err(Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    rustix::fs::fchmod(fd, Mode::from_raw_mode((stat.st_mode as u32 & 0o777) as _))?;
    rustix::fs::futimens(fd, &times(stat))?;
    Ok(())
}

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
    out.sort_by(|a, b| b.as_bytes().cmp(a.as_bytes()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    fn ctime_now(dir: &Path) -> i64 {
        let marker = dir.join("marker");
        std::fs::write(&marker, b"").unwrap();
        let meta = std::fs::metadata(&marker).unwrap();
        std::fs::remove_file(&marker).unwrap();
        meta.ctime() * 1_000_000_000 + meta.ctime_nsec()
    }

    #[test]
    fn everything_is_copied_with_modes_times_and_links() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let s = src.path();
        std::fs::create_dir_all(s.join("a/b")).unwrap();
        std::fs::create_dir(s.join("empty")).unwrap();
        std::fs::write(s.join("a/b/f"), b"hello").unwrap();
        std::fs::write(s.join(".offloadignore"), b"a/\n").unwrap();
        std::fs::write(s.join(OsStr::from_bytes(b"caf\xe9")), b"latin-1").unwrap();
        std::fs::set_permissions(s.join("a/b/f"), std::fs::Permissions::from_mode(0o4751)).unwrap();
        symlink("/etc/passwd", s.join("abs")).unwrap();
        symlink("b/f", s.join("a/rel")).unwrap();
        std::fs::write(s.join(".offload-tmp-x"), b"staging").unwrap();
        let mtime = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        File::options()
            .write(true)
            .open(s.join("a/b/f"))
            .unwrap()
            .set_modified(mtime)
            .unwrap();

        let report = copy_tree(s, dst.path(), None, Select::All).unwrap();
        let d = dst.path();
        assert_eq!(std::fs::read(d.join("a/b/f")).unwrap(), b"hello");
        assert_eq!(std::fs::read(d.join(".offloadignore")).unwrap(), b"a/\n");
        assert_eq!(
            std::fs::read(d.join(OsStr::from_bytes(b"caf\xe9"))).unwrap(),
            b"latin-1"
        );
        assert!(d.join("empty").is_dir());
        assert_eq!(
            std::fs::read_link(d.join("abs")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(
            std::fs::read_link(d.join("a/rel")).unwrap(),
            Path::new("b/f")
        );
        assert!(!d.join(".offload-tmp-x").exists());
        let meta = std::fs::metadata(d.join("a/b/f")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o751, "no setuid bit");
        assert_eq!(meta.modified().unwrap(), mtime);
        assert_eq!(report.files, 3);
        assert_eq!(report.symlinks, 2);
        assert_eq!(report.dirs, 3);
    }

    #[test]
    fn a_changed_since_copy_takes_only_later_changes_below_its_prefix() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let s = src.path();
        std::fs::create_dir_all(s.join("old/deep")).unwrap();
        std::fs::create_dir_all(s.join("new")).unwrap();
        std::fs::write(s.join("old/deep/kept"), b"before").unwrap();
        std::fs::write(s.join("old/changed"), b"before").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let since = ctime_now(s);
        std::fs::write(s.join("old/changed"), b"after").unwrap();
        std::fs::write(s.join("new/made"), b"late").unwrap();
        // A backdated mtime does not hide a late write.
        let file = File::options()
            .write(true)
            .open(s.join("new/made"))
            .unwrap();
        file.set_modified(std::time::SystemTime::UNIX_EPOCH)
            .unwrap();

        let below = RelPath::new(".offload-conflicts/set").unwrap();
        let report = copy_tree(
            s,
            dst.path(),
            Some(&below),
            Select::ChangedSince { ctime_ns: since },
        )
        .unwrap();
        let set = dst.path().join(".offload-conflicts/set");
        assert_eq!(std::fs::read(set.join("old/changed")).unwrap(), b"after");
        assert_eq!(std::fs::read(set.join("new/made")).unwrap(), b"late");
        assert!(
            !set.join("old/deep").exists(),
            "unchanged trees are not copied"
        );
        assert_eq!(report.files, 2);

        // Nothing changed: nothing is made, not even the prefix.
        let empty = tempfile::tempdir().unwrap();
        let later = ctime_now(s);
        let report = copy_tree(
            s,
            empty.path(),
            Some(&below),
            Select::ChangedSince {
                ctime_ns: later + 1_000_000_000,
            },
        )
        .unwrap();
        assert!(report.is_empty());
        assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_symlink_at_the_destination_prefix_is_never_followed() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("f"), b"x").unwrap();
        symlink(outside.path(), dst.path().join(".offload-conflicts")).unwrap();
        let below = RelPath::new(".offload-conflicts/set").unwrap();
        let err = copy_tree(src.path(), dst.path(), Some(&below), Select::All).unwrap_err();
        assert!(err.to_string().contains("create"), "{err}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn fifos_are_skipped_and_reported() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            src.path().join("pipe"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let report = copy_tree(src.path(), dst.path(), None, Select::All).unwrap();
        assert_eq!(report.skipped, vec![src.path().join("pipe")]);
        assert!(!dst.path().join("pipe").exists());
    }
}
