//! A container's root filesystem, reached through one directory handle: every path is
//! resolved by the kernel inside that root (`openat2` with `RESOLVE_IN_ROOT`), so a
//! symlink resolves as it would in the container, `..` stops at its `/`, and no path is
//! ever opened by name on the host.
//!
//! Operations on a final name (mkdir, remove, rename, symlink) work on the handle of its
//! parent directory, so swapping a directory for a symlink after it was resolved cannot
//! redirect them. The kernel's own filesystems (`/proc`, `/sys`, cgroups) are refused
//! for contents and changes: the server acts with the host's privileges, which the
//! container's processes do not have there.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::fs::{
    AtFlags, CWD, Dir, Gid, Mode, OFlags, RenameFlags, ResolveFlags, Stat, Timespec, Timestamps,
    Uid,
};
use rustix::io::Errno;

use super::users::Owner;

/// Symlinks resolve inside the root; magic links (`/proc/PID/root` inside the container)
/// are refused, since they would lead out of it.
const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

/// How many symlinks a `realpath` follows before it gives up, as the kernel's `ELOOP`.
const MAX_LINKS: usize = 40;

/// Filesystems whose contents are the kernel's, not the container's files.
const PSEUDO_FILESYSTEMS: &[i64] = &[
    0x9fa0,      // proc
    0x6265_6572, // sysfs
    0x0027_e0eb, // cgroup
    0x6367_7270, // cgroup2
    0x1cd1,      // devpts
    0x7363_6673, // securityfs
    0x6462_6720, // debugfs
    0x7472_6163, // tracefs
    0xcafe_4a11, // bpf
    0x6165_676c, // pstore
    0xde5e_81e4, // efivarfs
    0x6265_6570, // configfs
    0x4249_4e4d, // binfmt_misc
    0x6573_5543, // fusectl
];

fn errno(e: Errno) -> io::Error {
    e.into()
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message.to_owned())
}

/// A file's metadata as SFTP needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Type and permission bits (`st_mode`).
    pub mode: u32,
    pub size: u64,
    pub uid: u32,
    pub gid: u32,
    pub atime: i64,
    pub mtime: i64,
}

impl Meta {
    fn of(st: &Stat) -> Meta {
        Meta {
            mode: st.st_mode,
            size: u64::try_from(st.st_size).unwrap_or(0),
            uid: st.st_uid,
            gid: st.st_gid,
            // `i64` on 64-bit targets, `c_long` may be narrower elsewhere.
            #[allow(clippy::useless_conversion)]
            atime: i64::from(st.st_atime),
            #[allow(clippy::useless_conversion)]
            mtime: i64::from(st.st_mtime),
        }
    }

    pub fn is_dir(&self) -> bool {
        self.mode & 0o170000 == 0o040000
    }

    pub fn is_regular(&self) -> bool {
        self.mode & 0o170000 == 0o100000
    }

    pub fn is_symlink(&self) -> bool {
        self.mode & 0o170000 == 0o120000
    }
}

/// What a setstat changes; `None` leaves it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Change {
    pub size: Option<u64>,
    pub permissions: Option<u32>,
    pub owner: Option<(u32, u32)>,
    /// (atime, mtime), Unix seconds.
    pub times: Option<(i64, i64)>,
}

/// How a file is opened, as SFTP's `pflags` say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenMode {
    pub read: bool,
    pub write: bool,
    pub append: bool,
    pub create: bool,
    pub truncate: bool,
    pub exclusive: bool,
    /// Permission bits for a file this open creates.
    pub permissions: Option<u32>,
}

/// A directory being listed.
pub struct Listing {
    dir: Dir,
    done: bool,
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The name as the directory holds it, lossily UTF-8 (SFTP v3 names are strings).
    pub name: String,
    pub meta: Meta,
}

/// A container's root directory and the owner of what is created in it.
#[derive(Debug)]
pub struct Root {
    dir: OwnedFd,
    /// Where relative paths start (`/workspace`).
    home: String,
    owner: Owner,
}

impl Root {
    /// A root from a handle on the container's `/` (any handle that names the directory,
    /// `O_PATH` is enough).
    pub fn new(dir: OwnedFd, home: &str, owner: Owner) -> Root {
        Root {
            dir,
            home: home.trim_end_matches('/').to_owned(),
            owner,
        }
    }

    pub fn set_owner(&mut self, owner: Owner) {
        self.owner = owner;
    }

    pub fn home(&self) -> &str {
        if self.home.is_empty() {
            "/"
        } else {
            &self.home
        }
    }

    /// The path as the container sees it: absolute, relative ones taken from the home.
    fn absolute(&self, path: &str) -> io::Result<String> {
        if path.contains('\0') {
            return Err(invalid("a path cannot contain a NUL byte"));
        }
        Ok(if path.is_empty() || path == "." {
            self.home().to_owned()
        } else if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("{}/{path}", self.home)
        })
    }

    /// Opens `path` inside the root. `openat2` answers `EAGAIN` when a rename raced
    /// with a `..` it resolved; it is tried again.
    pub fn open(&self, path: &str, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let path = self.absolute(path)?;
        let mut tries = 0;
        loop {
            match rustix::fs::openat2(
                &self.dir,
                path.as_str(),
                flags | OFlags::CLOEXEC,
                mode,
                RESOLVE,
            ) {
                Err(Errno::AGAIN) if tries < 8 => tries += 1,
                result => return result.map_err(errno),
            }
        }
    }

    /// The handle of `path`'s parent directory and its final name, which is a real name
    /// (not empty, `.` or `..`).
    fn entry(&self, path: &str) -> io::Result<(OwnedFd, String)> {
        let path = self.absolute(path)?;
        let trimmed = path.trim_end_matches('/');
        let (parent, name) = match trimmed.rsplit_once('/') {
            Some(("", name)) => ("/", name),
            Some((parent, name)) => (parent, name),
            None => ("/", trimmed),
        };
        if name.is_empty() || name == "." || name == ".." {
            return Err(invalid("the path names no entry of a directory"));
        }
        let parent = self.open(parent, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())?;
        Ok((parent, name.to_owned()))
    }

    /// Refuses a handle on one of the kernel's filesystems.
    pub fn check_ordinary(&self, fd: impl AsFd) -> io::Result<()> {
        let fs = rustix::fs::fstatfs(fd).map_err(errno)?;
        #[allow(clippy::unnecessary_cast)]
        let magic = fs.f_type as i64;
        if PSEUDO_FILESYSTEMS.contains(&magic) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the kernel's filesystems (/proc, /sys, cgroups) are not served",
            ));
        }
        Ok(())
    }

    /// Refuses anything but a regular file on an ordinary filesystem.
    pub fn check_regular(&self, fd: impl AsFd) -> io::Result<Meta> {
        let meta = Meta::of(&rustix::fs::fstat(fd.as_fd()).map_err(errno)?);
        if !meta.is_regular() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        self.check_ordinary(fd)?;
        Ok(meta)
    }

    /// The metadata of `path`, following a final symlink.
    pub fn stat(&self, path: &str) -> io::Result<Meta> {
        let fd = self.open(path, OFlags::PATH, Mode::empty())?;
        fstat(&fd)
    }

    /// The metadata of `path` itself, a symlink included.
    pub fn lstat(&self, path: &str) -> io::Result<Meta> {
        let fd = self.open(path, OFlags::PATH | OFlags::NOFOLLOW, Mode::empty())?;
        fstat(&fd)
    }

    /// Where the symlink at `path` points.
    pub fn readlink(&self, path: &str) -> io::Result<String> {
        let fd = self.open(path, OFlags::PATH | OFlags::NOFOLLOW, Mode::empty())?;
        let target = rustix::fs::readlinkat(&fd, "", Vec::new()).map_err(errno)?;
        Ok(String::from_utf8_lossy(target.as_bytes()).into_owned())
    }

    /// Opens a regular file. A file this creates belongs to the container's user.
    pub fn open_file(&self, path: &str, how: OpenMode) -> io::Result<File> {
        let access = match (how.read, how.write || how.append) {
            (true, true) => OFlags::RDWR,
            (false, true) => OFlags::WRONLY,
            _ => OFlags::RDONLY,
        };
        // Non-blocking, so a FIFO put in place of the file cannot hang the open.
        let mut flags = access | OFlags::NONBLOCK | OFlags::NOCTTY;
        if how.append {
            flags |= OFlags::APPEND;
        }
        let mode = Mode::from_raw_mode(how.permissions.unwrap_or(0o666) & 0o7777);
        let mut tries = 0;
        let (fd, created) = loop {
            tries += 1;
            if how.create && how.exclusive {
                break (
                    self.open(path, flags | OFlags::CREATE | OFlags::EXCL, mode)?,
                    true,
                );
            }
            match self.open(path, flags, Mode::empty()) {
                Ok(fd) => break (fd, false),
                Err(e) if how.create && e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {
                    match self.open(path, flags | OFlags::CREATE | OFlags::EXCL, mode) {
                        Ok(fd) => break (fd, true),
                        // Created by someone else in between: open that one.
                        Err(e)
                            if e.raw_os_error() == Some(Errno::EXIST.raw_os_error())
                                && tries < 4 => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        };
        self.check_regular(&fd)?;
        if created {
            rustix::fs::fchown(
                &fd,
                Some(Uid::from_raw(self.owner.uid)),
                Some(Gid::from_raw(self.owner.gid)),
            )
            .map_err(errno)?;
        } else if how.truncate && (how.write || how.append) {
            // After the checks, so nothing but a regular file is ever truncated.
            rustix::fs::ftruncate(&fd, 0).map_err(errno)?;
        }
        Ok(File::from(fd))
    }

    /// Creates a directory owned by the container's user.
    pub fn mkdir(&self, path: &str, permissions: Option<u32>) -> io::Result<()> {
        let (parent, name) = self.entry(path)?;
        self.check_ordinary(&parent)?;
        let mode = Mode::from_raw_mode(permissions.unwrap_or(0o777) & 0o7777);
        rustix::fs::mkdirat(&parent, name.as_str(), mode).map_err(errno)?;
        self.chown_new(&parent, &name)
    }

    fn chown_new(&self, parent: &OwnedFd, name: &str) -> io::Result<()> {
        // Without following: if the new entry was swapped for a symlink meanwhile, only
        // that symlink changes owner.
        rustix::fs::chownat(
            parent,
            name,
            Some(Uid::from_raw(self.owner.uid)),
            Some(Gid::from_raw(self.owner.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(errno)
    }

    pub fn rmdir(&self, path: &str) -> io::Result<()> {
        let (parent, name) = self.entry(path)?;
        self.check_ordinary(&parent)?;
        rustix::fs::unlinkat(&parent, name.as_str(), AtFlags::REMOVEDIR).map_err(errno)
    }

    /// Removes a file or a symlink (never what it points to).
    pub fn remove(&self, path: &str) -> io::Result<()> {
        let (parent, name) = self.entry(path)?;
        self.check_ordinary(&parent)?;
        rustix::fs::unlinkat(&parent, name.as_str(), AtFlags::empty()).map_err(errno)
    }

    /// Renames `from` to `to`; `replace` says whether an existing `to` may be replaced
    /// (`posix-rename@openssh.com`) or makes it fail (SFTP v3's rename).
    pub fn rename(&self, from: &str, to: &str, replace: bool) -> io::Result<()> {
        let (from_dir, from_name) = self.entry(from)?;
        let (to_dir, to_name) = self.entry(to)?;
        self.check_ordinary(&from_dir)?;
        self.check_ordinary(&to_dir)?;
        let flags = if replace {
            RenameFlags::empty()
        } else {
            RenameFlags::NOREPLACE
        };
        rustix::fs::renameat_with(
            &from_dir,
            from_name.as_str(),
            &to_dir,
            to_name.as_str(),
            flags,
        )
        .map_err(errno)
    }

    /// A hard link at `to` to the file at `from`.
    pub fn hardlink(&self, from: &str, to: &str) -> io::Result<()> {
        let (from_dir, from_name) = self.entry(from)?;
        let (to_dir, to_name) = self.entry(to)?;
        self.check_ordinary(&to_dir)?;
        rustix::fs::linkat(
            &from_dir,
            from_name.as_str(),
            &to_dir,
            to_name.as_str(),
            AtFlags::empty(),
        )
        .map_err(errno)
    }

    /// A symlink at `link` pointing to `target`. The target is stored as given: it is
    /// resolved inside the root whenever it is followed, here and in the container.
    pub fn symlink(&self, target: &str, link: &str) -> io::Result<()> {
        if target.contains('\0') || target.is_empty() {
            return Err(invalid(
                "a symlink target must be a non-empty path without NUL",
            ));
        }
        let (parent, name) = self.entry(link)?;
        self.check_ordinary(&parent)?;
        rustix::fs::symlinkat(target, &parent, name.as_str()).map_err(errno)?;
        self.chown_new(&parent, &name)
    }

    /// Applies `change` to `path` (following a final symlink).
    pub fn setstat(&self, path: &str, change: Change) -> io::Result<()> {
        let fd = self.open(path, OFlags::PATH, Mode::empty())?;
        self.apply(fd.as_fd(), change)
    }

    /// Applies `change` to an open file.
    pub fn fsetstat(&self, file: &File, change: Change) -> io::Result<()> {
        self.apply(file.as_fd(), change)
    }

    fn apply(&self, fd: BorrowedFd<'_>, change: Change) -> io::Result<()> {
        self.check_ordinary(fd)?;
        // An `O_PATH` handle takes no chmod, truncate or utimes of its own; the
        // process's own `/proc/self/fd` link to it does, without any lookup in the root.
        let own = format!("/proc/self/fd/{}", fd.as_raw_fd());
        if let Some(size) = change.size {
            let meta = fstat(fd)?;
            if !meta.is_regular() {
                return Err(invalid("only a regular file has a size to set"));
            }
            let writable = rustix::fs::openat(
                CWD,
                own.as_str(),
                OFlags::WRONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(errno)?;
            rustix::fs::ftruncate(&writable, size).map_err(errno)?;
        }
        if let Some((uid, gid)) = change.owner {
            rustix::fs::chownat(
                fd,
                "",
                Some(Uid::from_raw(uid)),
                Some(Gid::from_raw(gid)),
                AtFlags::EMPTY_PATH,
            )
            .map_err(errno)?;
        }
        if let Some(permissions) = change.permissions {
            rustix::fs::chmod(own.as_str(), Mode::from_raw_mode(permissions & 0o7777))
                .map_err(errno)?;
        }
        if let Some((atime, mtime)) = change.times {
            let times = Timestamps {
                last_access: Timespec {
                    tv_sec: atime,
                    tv_nsec: 0,
                },
                last_modification: Timespec {
                    tv_sec: mtime,
                    tv_nsec: 0,
                },
            };
            rustix::fs::utimensat(CWD, own.as_str(), &times, AtFlags::empty()).map_err(errno)?;
        }
        Ok(())
    }

    /// Starts listing the directory at `path`.
    pub fn opendir(&self, path: &str) -> io::Result<Listing> {
        let fd = self.open(path, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
        Ok(Listing {
            dir: Dir::new(fd).map_err(errno)?,
            done: false,
        })
    }

    /// Up to `max` more entries of a listing; empty at its end. An entry that vanishes
    /// before it is looked at is left out.
    pub fn readdir(&self, listing: &mut Listing, max: usize) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        while out.len() < max && !listing.done {
            let Some(entry) = listing.dir.read() else {
                listing.done = true;
                break;
            };
            let entry = entry.map_err(errno)?;
            let name_c: &std::ffi::CStr = entry.file_name();
            let name = String::from_utf8_lossy(name_c.to_bytes()).into_owned();
            let name_c: CString = name_c.to_owned();
            let dir_fd = listing.dir.fd().map_err(errno)?;
            match rustix::fs::statat(dir_fd, name_c.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => out.push(Entry {
                    name,
                    meta: Meta::of(&st),
                }),
                Err(Errno::NOENT) => {}
                Err(e) => return Err(errno(e)),
            }
        }
        Ok(out)
    }

    /// The canonical absolute path of `path` in the container: symlinks resolved inside
    /// the root, `.` and `..` gone. Components that do not exist (yet) are kept as they
    /// are, so a client may ask for the path of a file it is about to create.
    pub fn realpath(&self, path: &str) -> io::Result<String> {
        let path = self.absolute(path)?;
        let mut resolved: Vec<String> = Vec::new();
        let mut pending: Vec<String> = components(&path).rev().map(str::to_owned).collect();
        let mut links = 0;
        let mut missing = false;
        while let Some(part) = pending.pop() {
            match part.as_str() {
                "." => continue,
                ".." => {
                    resolved.pop();
                    continue;
                }
                _ => {}
            }
            resolved.push(part);
            if missing {
                continue;
            }
            let here = format!("/{}", resolved.join("/"));
            match self.lstat(&here) {
                Ok(meta) if meta.is_symlink() => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(errno(Errno::LOOP));
                    }
                    let target = self.readlink(&here)?;
                    resolved.pop();
                    if target.starts_with('/') {
                        resolved.clear();
                    }
                    pending.extend(components(&target).rev().map(str::to_owned));
                }
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => missing = true,
                Err(e) => return Err(e),
            }
        }
        Ok(format!("/{}", resolved.join("/")))
    }

    /// Space on the filesystem holding `path`.
    pub fn statvfs(&self, path: &str) -> io::Result<rustix::fs::StatVfs> {
        let fd = self.open(path, OFlags::PATH, Mode::empty())?;
        rustix::fs::fstatvfs(&fd).map_err(errno)
    }
}

fn components(path: &str) -> impl DoubleEndedIterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty())
}

/// The metadata of an open file.
pub fn file_meta(file: &File) -> io::Result<Meta> {
    fstat(file)
}

fn fstat(fd: impl AsFd) -> io::Result<Meta> {
    Ok(Meta::of(&rustix::fs::fstat(fd).map_err(errno)?))
}
