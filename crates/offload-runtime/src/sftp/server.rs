//! The SFTP v3 requests, answered from a container's [`Root`]: russh-sftp parses and
//! frames the packets, this decides what each does. File work runs on tokio's blocking
//! pool, one request at a time in the order the client sent them (as OpenSSH's
//! sftp-server answers), while the client keeps several requests in flight.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use russh_sftp::extensions::{
    FSYNC, FsyncExtension, HARDLINK, HardlinkExtension, LIMITS, LimitsExtension, STATVFS, Statvfs,
    StatvfsExtension,
};
use russh_sftp::protocol::{
    Attrs, Data, ExtendedReply, File as NameEntry, FileAttributes, Handle, Name, OpenFlags, Packet,
    Status, StatusCode, Version,
};
use russh_sftp::server::StatusReply;

use super::root::{Change, Listing, Meta, OpenMode, Root};
use super::users::Users;
use super::{MAX_HANDLES, MAX_IO, MAX_PACKET, READDIR_BATCH};

/// OpenSSH's name for a rename that replaces its target.
const POSIX_RENAME: &str = "posix-rename@openssh.com";

enum Open {
    File(Arc<File>),
    Dir(Arc<Mutex<Listing>>),
}

/// One client's SFTP session.
pub struct Session {
    root: Arc<Root>,
    users: Arc<Users>,
    handles: HashMap<String, Open>,
    next_handle: u64,
    initialized: bool,
}

impl Session {
    pub fn new(root: Arc<Root>, users: Arc<Users>) -> Session {
        Session {
            root,
            users,
            handles: HashMap::new(),
            next_handle: 0,
            initialized: false,
        }
    }

    fn ready(&self) -> Result<(), StatusReply> {
        if self.initialized {
            Ok(())
        } else {
            Err(StatusCode::BadMessage.with_message("the session starts with SSH_FXP_INIT"))
        }
    }

    fn add(&mut self, open: Open) -> Result<String, StatusReply> {
        if self.handles.len() >= MAX_HANDLES {
            return Err(StatusCode::Failure
                .with_message(format!("too many open handles (at most {MAX_HANDLES})")));
        }
        self.next_handle += 1;
        let handle = self.next_handle.to_string();
        self.handles.insert(handle.clone(), open);
        Ok(handle)
    }

    fn file(&self, handle: &str) -> Result<Arc<File>, StatusReply> {
        match self.handles.get(handle) {
            Some(Open::File(file)) => Ok(file.clone()),
            Some(Open::Dir(_)) => {
                Err(StatusCode::Failure.with_message("the handle is a directory"))
            }
            None => Err(StatusCode::Failure.with_message("no such handle")),
        }
    }

    fn attrs(&self, meta: &Meta) -> FileAttributes {
        FileAttributes {
            size: Some(meta.size),
            uid: Some(meta.uid),
            user: self.users.user_name(meta.uid).map(str::to_owned),
            gid: Some(meta.gid),
            group: self.users.group_name(meta.gid).map(str::to_owned),
            permissions: Some(meta.mode),
            atime: Some(wire_time(meta.atime)),
            mtime: Some(wire_time(meta.mtime)),
        }
    }

    fn root(&self) -> Arc<Root> {
        self.root.clone()
    }
}

fn ok(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Ok".to_owned(),
        language_tag: "en-US".to_owned(),
    }
}

/// SFTP v3 carries times as unsigned 32-bit seconds.
fn wire_time(seconds: i64) -> u32 {
    u32::try_from(seconds.max(0)).unwrap_or(u32::MAX)
}

fn status(e: &io::Error) -> StatusReply {
    let code = match e.kind() {
        io::ErrorKind::NotFound => StatusCode::NoSuchFile,
        io::ErrorKind::PermissionDenied => StatusCode::PermissionDenied,
        _ => StatusCode::Failure,
    };
    StatusReply::new(code).with_message(e.to_string())
}

/// Runs file work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, StatusReply> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(status(&e)),
        Err(_) => Err(StatusCode::Failure.with_message("the file operation did not finish")),
    }
}

fn change(attrs: &FileAttributes) -> Change {
    Change {
        size: attrs.size,
        permissions: attrs.permissions,
        owner: match (attrs.uid, attrs.gid) {
            (Some(uid), Some(gid)) => Some((uid, gid)),
            _ => None,
        },
        times: match (attrs.atime, attrs.mtime) {
            (Some(atime), Some(mtime)) => Some((i64::from(atime), i64::from(mtime))),
            _ => None,
        },
    }
}

/// `ls -l` style, as OpenSSH's sftp shows it.
fn longname(name: &str, meta: &Meta, users: &Users) -> String {
    let kind = match meta.mode & 0o170000 {
        0o040000 => 'd',
        0o120000 => 'l',
        0o020000 => 'c',
        0o060000 => 'b',
        0o010000 => 'p',
        0o140000 => 's',
        _ => '-',
    };
    let mut perms = String::with_capacity(9);
    for (shift, special, set_char, unset_char) in [
        (6, 0o4000, 's', 'S'),
        (3, 0o2000, 's', 'S'),
        (0, 0o1000, 't', 'T'),
    ] {
        let bits = (meta.mode >> shift) & 0o7;
        perms.push(if bits & 4 != 0 { 'r' } else { '-' });
        perms.push(if bits & 2 != 0 { 'w' } else { '-' });
        perms.push(match (bits & 1 != 0, meta.mode & special != 0) {
            (true, true) => set_char,
            (false, true) => unset_char,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    let user = users
        .user_name(meta.uid)
        .map_or_else(|| meta.uid.to_string(), str::to_owned);
    let group = users
        .group_name(meta.gid)
        .map_or_else(|| meta.gid.to_string(), str::to_owned);
    format!(
        "{kind}{perms}    1 {user:<8} {group:<8} {:>8} {} {name}",
        meta.size,
        ls_date(meta.mtime)
    )
}

/// `Mon DD HH:MM` within half a year of now, `Mon DD  YYYY` otherwise (UTC).
fn ls_date(seconds: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let name = MONTHS[usize::try_from(month - 1).unwrap_or(0).min(11)];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    if (now - seconds).abs() < 182 * 86_400 {
        format!(
            "{name} {day:>2} {:02}:{:02}",
            of_day / 3600,
            of_day % 3600 / 60
        )
    } else {
        format!("{name} {day:>2}  {year}")
    }
}

/// Reads a string pair (two SSH strings), the body of the rename and link extensions.
#[derive(serde::Deserialize)]
struct PathPair {
    from: String,
    to: String,
}

impl russh_sftp::server::Handler for Session {
    type Error = StatusReply;

    fn unimplemented(&self) -> Self::Error {
        StatusCode::OpUnsupported.into()
    }

    async fn init(
        &mut self,
        version: u32,
        _extensions: HashMap<String, String>,
    ) -> Result<Version, Self::Error> {
        if self.initialized {
            return Err(StatusCode::BadMessage.with_message("the session is already initialised"));
        }
        if version < 3 {
            return Err(StatusCode::OpUnsupported
                .with_message(format!("SFTP version {version} is not supported; 3 is")));
        }
        self.initialized = true;
        let mut reply = Version::new();
        for (name, revision) in [
            (POSIX_RENAME, "1"),
            (STATVFS, "2"),
            (HARDLINK, "1"),
            (FSYNC, "1"),
            (LIMITS, "1"),
        ] {
            reply
                .extensions
                .insert(name.to_owned(), revision.to_owned());
        }
        Ok(reply)
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        attrs: FileAttributes,
    ) -> Result<Handle, Self::Error> {
        self.ready()?;
        let how = OpenMode {
            read: pflags.contains(OpenFlags::READ),
            write: pflags.contains(OpenFlags::WRITE),
            append: pflags.contains(OpenFlags::APPEND),
            create: pflags.contains(OpenFlags::CREATE),
            truncate: pflags.contains(OpenFlags::TRUNCATE),
            exclusive: pflags.contains(OpenFlags::EXCLUDE),
            permissions: attrs.permissions,
        };
        let root = self.root();
        let file = blocking(move || root.open_file(&filename, how)).await?;
        let handle = self.add(Open::File(Arc::new(file)))?;
        Ok(Handle { id, handle })
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        self.ready()?;
        match self.handles.remove(&handle) {
            Some(_) => Ok(ok(id)),
            None => Err(StatusCode::Failure.with_message("no such handle")),
        }
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, Self::Error> {
        self.ready()?;
        let file = self.file(&handle)?;
        let len = usize::try_from(len).unwrap_or(MAX_IO).min(MAX_IO);
        let data = blocking(move || {
            let mut buf = vec![0u8; len];
            let mut filled = 0;
            while filled < len {
                match file.read_at(&mut buf[filled..], offset + filled as u64) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            buf.truncate(filled);
            Ok(buf)
        })
        .await?;
        if data.is_empty() && len > 0 {
            return Err(StatusCode::Eof.into());
        }
        Ok(Data { id, data })
    }

    async fn write(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Status, Self::Error> {
        self.ready()?;
        let file = self.file(&handle)?;
        blocking(move || file.write_all_at(&data, offset)).await?;
        Ok(ok(id))
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        self.ready()?;
        let root = self.root();
        let meta = blocking(move || root.lstat(&path)).await?;
        Ok(Attrs {
            id,
            attrs: self.attrs(&meta),
        })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        self.ready()?;
        let root = self.root();
        let meta = blocking(move || root.stat(&path)).await?;
        Ok(Attrs {
            id,
            attrs: self.attrs(&meta),
        })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        self.ready()?;
        let file = self.file(&handle)?;
        let meta = blocking(move || super::root::file_meta(&file)).await?;
        Ok(Attrs {
            id,
            attrs: self.attrs(&meta),
        })
    }

    async fn setstat(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        self.ready()?;
        let root = self.root();
        let change = change(&attrs);
        blocking(move || root.setstat(&path, change)).await?;
        Ok(ok(id))
    }

    async fn fsetstat(
        &mut self,
        id: u32,
        handle: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        self.ready()?;
        let file = self.file(&handle)?;
        let root = self.root();
        let change = change(&attrs);
        blocking(move || root.fsetstat(&file, change)).await?;
        Ok(ok(id))
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, Self::Error> {
        self.ready()?;
        let root = self.root();
        let listing = blocking(move || root.opendir(&path)).await?;
        let handle = self.add(Open::Dir(Arc::new(Mutex::new(listing))))?;
        Ok(Handle { id, handle })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        self.ready()?;
        let listing = match self.handles.get(&handle) {
            Some(Open::Dir(listing)) => listing.clone(),
            Some(Open::File(_)) => {
                return Err(StatusCode::Failure.with_message("the handle is not a directory"));
            }
            None => return Err(StatusCode::Failure.with_message("no such handle")),
        };
        let root = self.root();
        let entries = blocking(move || {
            let mut listing = listing.lock().unwrap_or_else(|p| p.into_inner());
            root.readdir(&mut listing, READDIR_BATCH)
        })
        .await?;
        if entries.is_empty() {
            return Err(StatusCode::Eof.into());
        }
        let files = entries
            .iter()
            .map(|entry| NameEntry {
                filename: entry.name.clone(),
                longname: longname(&entry.name, &entry.meta, &self.users),
                attrs: self.attrs(&entry.meta),
            })
            .collect();
        Ok(Name { id, files })
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, Self::Error> {
        self.ready()?;
        let root = self.root();
        blocking(move || root.remove(&filename)).await?;
        Ok(ok(id))
    }

    async fn mkdir(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        self.ready()?;
        let root = self.root();
        blocking(move || root.mkdir(&path, attrs.permissions)).await?;
        Ok(ok(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        self.ready()?;
        let root = self.root();
        blocking(move || root.rmdir(&path)).await?;
        Ok(ok(id))
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        self.ready()?;
        let root = self.root();
        let path = blocking(move || root.realpath(&path)).await?;
        Ok(Name {
            id,
            files: vec![NameEntry::dummy(path)],
        })
    }

    async fn rename(
        &mut self,
        id: u32,
        oldpath: String,
        newpath: String,
    ) -> Result<Status, Self::Error> {
        self.ready()?;
        let root = self.root();
        blocking(move || root.rename(&oldpath, &newpath, false)).await?;
        Ok(ok(id))
    }

    async fn readlink(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        self.ready()?;
        let root = self.root();
        let target = blocking(move || root.readlink(&path)).await?;
        Ok(Name {
            id,
            files: vec![NameEntry::dummy(target)],
        })
    }

    /// OpenSSH sends the target first and the new link's path second (the reverse of the
    /// draft's field names, which russh-sftp keeps); every common client follows OpenSSH.
    async fn symlink(
        &mut self,
        id: u32,
        linkpath: String,
        targetpath: String,
    ) -> Result<Status, Self::Error> {
        self.ready()?;
        let (target, link) = (linkpath, targetpath);
        let root = self.root();
        blocking(move || root.symlink(&target, &link)).await?;
        Ok(ok(id))
    }

    async fn extended(
        &mut self,
        id: u32,
        request: String,
        data: Vec<u8>,
    ) -> Result<Packet, Self::Error> {
        self.ready()?;
        let mut body = Bytes::from(data);
        let bad = |_| StatusReply::from(StatusCode::BadMessage);
        let root = self.root();
        match request.as_str() {
            LIMITS => {
                let limits = LimitsExtension {
                    max_packet_len: MAX_PACKET as u64,
                    max_read_len: MAX_IO as u64,
                    max_write_len: MAX_IO as u64,
                    max_open_handles: MAX_HANDLES as u64,
                };
                let data = russh_sftp::ser::to_bytes(&limits).map_err(bad)?.to_vec();
                Ok(Packet::ExtendedReply(ExtendedReply { id, data }))
            }
            POSIX_RENAME => {
                let pair: PathPair = russh_sftp::de::from_bytes(&mut body).map_err(bad)?;
                blocking(move || root.rename(&pair.from, &pair.to, true)).await?;
                Ok(Packet::Status(ok(id)))
            }
            HARDLINK => {
                let pair: HardlinkExtension = russh_sftp::de::from_bytes(&mut body).map_err(bad)?;
                blocking(move || root.hardlink(&pair.oldpath, &pair.newpath)).await?;
                Ok(Packet::Status(ok(id)))
            }
            FSYNC => {
                let request: FsyncExtension = russh_sftp::de::from_bytes(&mut body).map_err(bad)?;
                let file = self.file(&request.handle)?;
                blocking(move || file.sync_all()).await?;
                Ok(Packet::Status(ok(id)))
            }
            STATVFS => {
                let request: StatvfsExtension =
                    russh_sftp::de::from_bytes(&mut body).map_err(bad)?;
                let vfs = blocking(move || root.statvfs(&request.path)).await?;
                let reply = Statvfs {
                    block_size: vfs.f_bsize,
                    fragment_size: vfs.f_frsize,
                    blocks: vfs.f_blocks,
                    blocks_free: vfs.f_bfree,
                    blocks_avail: vfs.f_bavail,
                    inodes: vfs.f_files,
                    inodes_free: vfs.f_ffree,
                    inodes_avail: vfs.f_favail,
                    fs_id: vfs.f_fsid,
                    flags: vfs.f_flag.bits(),
                    name_max: vfs.f_namemax,
                };
                let data = russh_sftp::ser::to_bytes(&reply).map_err(bad)?.to_vec();
                Ok(Packet::ExtendedReply(ExtendedReply { id, data }))
            }
            _ => Err(StatusCode::OpUnsupported
                .with_message(format!("the extension {request:?} is not supported"))),
        }
    }
}
