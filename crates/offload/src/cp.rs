//! `offload cp SRC DST`: files between this machine and a container, wherever it runs,
//! as `docker cp` copies them (recursive, modes and mtimes kept, a directory copied into
//! an existing directory lands inside it, `SRC/.` copies a directory's contents).
//!
//! It is an SFTP client on the container's `/v1/containers/{id}/sftp` socket, with many
//! reads or writes of up to 255 KiB in flight. Nothing from the other side is trusted:
//! every name a listing sends is checked to be one plain name before it names anything
//! here, local entries are made relative to the handle of their parent directory without
//! following symlinks, and a file is written under a temporary name and renamed into
//! place only once it is complete, on either side.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures::stream::{FuturesOrdered, FuturesUnordered};
use futures::{SinkExt, StreamExt};
use offload_agent::client::Api;
use offload_core::WORKSPACE_MOUNT;
use offload_core::api::SftpControl;
use russh_sftp::client::RawSftpSession;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};
use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::shell::urlencode;

/// Bytes per read or write request: what the server's `limits@openssh.com` allows.
const CHUNK: usize = 255 * 1024;
/// Requests in flight per file: 4 MiB, enough to keep a link of 1 GB/s and 4 ms busy.
const IN_FLIGHT: usize = 16;
/// How long one request may take before the copy is given up.
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// One side of a copy, as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Side {
    Local(PathBuf),
    /// `ID:PATH`; the path as written (relative ones start at `/workspace`).
    Container {
        container: String,
        path: String,
    },
}

/// Parses `ID:PATH` or a local path, as `docker cp` does: a path that is absolute, or
/// has a `/` before its first `:`, is local.
pub fn parse_side(arg: &str) -> Side {
    if arg.starts_with('/') || arg.starts_with('.') {
        return Side::Local(PathBuf::from(arg));
    }
    match arg.split_once(':') {
        Some((container, path)) if !container.is_empty() && !container.contains('/') => {
            Side::Container {
                container: container.to_owned(),
                path: path.to_owned(),
            }
        }
        _ => Side::Local(PathBuf::from(arg)),
    }
}

/// A container path made absolute and free of `.` and `..` (lexically, as the check of
/// what the user typed; the server resolves the real path inside the container's root).
/// A path whose `..` would climb above the container's `/` is refused.
pub fn container_path(path: &str) -> anyhow::Result<String> {
    if path.contains('\0') {
        bail!("a container path cannot contain a NUL byte");
    }
    let mut parts: Vec<&str> = Vec::new();
    if !path.starts_with('/') {
        parts.extend(WORKSPACE_MOUNT.split('/').filter(|c| !c.is_empty()));
    }
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    bail!(
                        "the container path {path:?} leads out of the container's root: \
                         there is nothing above /"
                    );
                }
            }
            name => parts.push(name),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// Whether a path names a directory's contents (`dir/.`), as `docker cp` reads it.
fn names_contents(path: &str) -> bool {
    path == "." || path.ends_with("/.")
}

/// A name from the other side, checked to be one plain entry of its directory.
pub fn checked_name(name: &str) -> anyhow::Result<&str> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        bail!("the other side sent an unusable file name {name:?}; nothing was written for it");
    }
    Ok(name)
}

/// What a copy did.
#[derive(Debug, Default)]
struct Tally {
    files: u64,
    dirs: u64,
    links: u64,
    bytes: u64,
    skipped: u64,
}

/// Runs `offload cp`; returns the exit code.
pub async fn run(api: &Api, src: &str, dst: &str, follow: bool) -> anyhow::Result<i32> {
    let (container, download, remote, local) = match (parse_side(src), parse_side(dst)) {
        (Side::Container { container, path }, Side::Local(local)) => (container, true, path, local),
        (Side::Local(local), Side::Container { container, path }) => {
            (container, false, path, local)
        }
        (Side::Container { .. }, Side::Container { .. }) => {
            eprintln!(
                "error: copy between two containers is not supported: one side must be local"
            );
            return Ok(2);
        }
        (Side::Local(_), Side::Local(_)) => {
            eprintln!(
                "error: one side must be a container path, ID:PATH (e.g. box:/workspace/file)"
            );
            return Ok(2);
        }
    };
    if src == "-" || dst == "-" {
        eprintln!(
            "error: tar streams on stdin or stdout (`-`) are not supported; name a file or directory"
        );
        return Ok(2);
    }
    let absolute = container_path(&remote)?;
    let contents = names_contents(if download { &remote } else { src });
    let started = Instant::now();
    let session = Remote::open(api, &container).await?;
    let result = if download {
        session.download(&absolute, contents, &local, follow).await
    } else {
        session.upload(&local, contents, &absolute, follow).await
    };
    let tally = match result {
        Ok(tally) => tally,
        Err(e) => return Err(session.explain(e)),
    };
    session.close().await;
    let mut what = format!(
        "{} file{} ({})",
        tally.files,
        if tally.files == 1 { "" } else { "s" },
        human_bytes(tally.bytes)
    );
    if tally.dirs > 0 {
        what.push_str(&format!(
            ", {} director{}",
            tally.dirs,
            if tally.dirs == 1 { "y" } else { "ies" }
        ));
    }
    if tally.links > 0 {
        what.push_str(&format!(
            ", {} symlink{}",
            tally.links,
            if tally.links == 1 { "" } else { "s" }
        ));
    }
    eprintln!("copied {what} in {:.1} s", started.elapsed().as_secs_f64());
    if tally.skipped > 0 {
        eprintln!(
            "skipped {} special file{} (devices, FIFOs, sockets)",
            tally.skipped,
            if tally.skipped == 1 { "" } else { "s" }
        );
    }
    Ok(0)
}

pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The kind of entry SFTP attributes describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

fn kind_of(attrs: &FileAttributes) -> Kind {
    match attrs.permissions.unwrap_or(0) & 0o170000 {
        0o100000 => Kind::File,
        0o040000 => Kind::Dir,
        0o120000 => Kind::Symlink,
        _ => Kind::Other,
    }
}

fn status_of(e: &SftpError) -> Option<StatusCode> {
    match e {
        SftpError::Status(status) => Some(status.status_code),
        _ => None,
    }
}

fn is_missing(e: &anyhow::Error) -> bool {
    e.downcast_ref::<SftpError>()
        .and_then(status_of)
        .is_some_and(|c| c == StatusCode::NoSuchFile)
}

/// Unique names for files being written, so a partial file never has its final name.
fn temp_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        ".offload-cp-{}-{}-{nanos:08x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn wire_time(t: Option<SystemTime>) -> u32 {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
        .unwrap_or(0)
}

/// The SFTP session on the container, and why its socket ended if it did.
struct Remote {
    sftp: RawSftpSession,
    container: String,
    ended: Arc<Mutex<Option<String>>>,
    pump: tokio::task::JoinHandle<()>,
}

impl Remote {
    async fn open(api: &Api, container: &str) -> anyhow::Result<Remote> {
        let socket = api
            .websocket(&format!("/v1/containers/{}/sftp", urlencode(container)))
            .await?;
        let (client_io, bridge) = tokio::io::duplex(4 << 20);
        let ended: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let reason = ended.clone();
        let pump = tokio::spawn(async move {
            let (mut sink, mut stream) = socket.split();
            let (mut bridge_rd, mut bridge_wr) = tokio::io::split(bridge);
            let mut buf = vec![0u8; 1 << 20];
            let why = loop {
                tokio::select! {
                    read = bridge_rd.read(&mut buf) => match read {
                        Ok(0) | Err(_) => {
                            let _ = sink.send(Message::Close(None)).await;
                            break None;
                        }
                        Ok(n) => {
                            if let Err(e) = sink.send(Message::Binary(buf[..n].to_vec().into())).await {
                                break Some(format!("sending to the server failed: {e}"));
                            }
                        }
                    },
                    message = stream.next() => match message {
                        Some(Ok(Message::Binary(data))) => {
                            if bridge_wr.write_all(&data).await.is_err() {
                                break None;
                            }
                        }
                        Some(Ok(Message::Text(text))) => {
                            if let Ok(SftpControl::Error { error, .. }) = serde_json::from_str(&text) {
                                break Some(error);
                            }
                        }
                        Some(Ok(Message::Close(_))) | None => {
                            break Some("the server closed the connection".to_owned());
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => break Some(format!("the connection to the server failed: {e}")),
                    },
                }
            };
            if let Some(why) = why {
                *reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
            }
            // Dropping the bridge ends the client's stream: its requests fail at once.
        });
        let config = russh_sftp::client::Config {
            request_timeout_secs: REQUEST_TIMEOUT_SECS,
            ..Default::default()
        };
        let remote = Remote {
            sftp: RawSftpSession::new_with_config(client_io, config),
            container: container.to_owned(),
            ended,
            pump,
        };
        if let Err(e) = remote.sftp.init().await {
            // Refused before the stream started (the server's error frame says why).
            let why = remote
                .ended
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            match why {
                Some(why) => bail!("{why}"),
                None => return Err(anyhow::Error::new(e).context("the SFTP session did not start")),
            }
        }
        Ok(remote)
    }

    /// The error as the user should read it: a broken link says so.
    fn explain(&self, e: anyhow::Error) -> anyhow::Error {
        let ended = self.ended.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match ended {
            Some(why) => anyhow::anyhow!(
                "the connection to container {} broke during the copy ({why}); \
                 files not completely copied were not put in place",
                self.container
            ),
            _ => e,
        }
    }

    async fn close(self) {
        let _ = self.sftp.close_session();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.pump).await;
    }

    async fn lstat_or_stat(&self, path: &str, follow: bool) -> anyhow::Result<FileAttributes> {
        let attrs = if follow {
            self.sftp.stat(path).await
        } else {
            self.sftp.lstat(path).await
        };
        Ok(attrs?.attrs)
    }

    /// Every entry of a remote directory but `.` and `..`, names checked.
    async fn list(&self, path: &str) -> anyhow::Result<Vec<(String, FileAttributes)>> {
        let handle = self
            .sftp
            .opendir(path)
            .await
            .with_context(|| format!("cannot list {}:{path}", self.container))?
            .handle;
        let mut out = Vec::new();
        let result = loop {
            match self.sftp.readdir(&handle).await {
                Ok(name) => {
                    let bad = name.files.iter().find(|f| {
                        f.filename != "."
                            && f.filename != ".."
                            && checked_name(&f.filename).is_err()
                    });
                    if let Some(bad) = bad {
                        break checked_name(&bad.filename).map(|_| ());
                    }
                    out.extend(
                        name.files
                            .into_iter()
                            .filter(|f| f.filename != "." && f.filename != "..")
                            .map(|f| (f.filename, f.attrs)),
                    );
                }
                Err(e) if status_of(&e) == Some(StatusCode::Eof) => break Ok(()),
                Err(e) => break Err(anyhow::Error::new(e)),
            }
        };
        let _ = self.sftp.close(&handle).await;
        result?;
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    // ----- container to here -----

    async fn download(
        &self,
        src: &str,
        contents: bool,
        dst: &Path,
        follow: bool,
    ) -> anyhow::Result<Tally> {
        let attrs = match self.lstat_or_stat(src, follow).await {
            Ok(attrs) => attrs,
            Err(e) if is_missing(&e) => {
                bail!(
                    "no such file or directory in container {}: {src}",
                    self.container
                )
            }
            Err(e) => return Err(e),
        };
        let kind = kind_of(&attrs);
        let dst_meta = std::fs::metadata(dst).ok();
        let base = src.rsplit('/').find(|c| !c.is_empty());
        let mut tally = Tally::default();
        let (parent, name) = match (kind, &dst_meta, base) {
            (Kind::Dir, Some(meta), _) if contents || base.is_none() => {
                if !meta.is_dir() {
                    bail!("cannot copy a directory onto the file {}", dst.display());
                }
                // Contents into an existing directory: entries go straight in.
                let dir = open_local_dir(dst)?;
                self.download_children(src, &dir, &mut tally).await?;
                return Ok(tally);
            }
            (Kind::Dir, None, _) => split_local(dst)?,
            (_, Some(meta), Some(base)) if meta.is_dir() => (open_local_dir(dst)?, base.to_owned()),
            (Kind::Dir, Some(_), _) => {
                bail!("cannot copy a directory onto the file {}", dst.display())
            }
            (_, None, _) if dst.as_os_str().as_bytes().ends_with(b"/") => {
                bail!("the directory {} does not exist", dst.display())
            }
            (_, _, _) => split_local(dst)?,
        };
        self.download_entry(src, &attrs, &parent, &name, &mut tally)
            .await?;
        Ok(tally)
    }

    async fn download_entry(
        &self,
        src: &str,
        attrs: &FileAttributes,
        parent: &OwnedFd,
        name: &str,
        tally: &mut Tally,
    ) -> anyhow::Result<()> {
        match kind_of(attrs) {
            Kind::File => {
                self.download_file(src, attrs, parent, name).await?;
                tally.files += 1;
                tally.bytes += attrs.size.unwrap_or(0);
            }
            Kind::Dir => {
                let dir = make_local_dir(parent, name)?;
                Box::pin(self.download_children(src, &dir, tally)).await?;
                let mode = attrs.permissions.unwrap_or(0o755) & 0o777;
                rustix::fs::fchmod(&dir, Mode::from_raw_mode(mode))
                    .with_context(|| format!("cannot set the mode of {name}"))?;
                set_local_times(&dir, attrs)?;
                tally.dirs += 1;
            }
            Kind::Symlink => {
                let target = self.sftp.readlink(src).await?;
                let target = target
                    .files
                    .into_iter()
                    .next()
                    .map(|f| f.filename)
                    .unwrap_or_default();
                if target.is_empty() || target.contains('\0') {
                    bail!("the container sent an unusable symlink target for {src}");
                }
                let temp = temp_name();
                rustix::fs::symlinkat(target.as_str(), parent, temp.as_str())
                    .with_context(|| format!("cannot create the symlink {name}"))?;
                if let Err(e) = rustix::fs::renameat(parent, temp.as_str(), parent, name) {
                    let _ = rustix::fs::unlinkat(parent, temp.as_str(), AtFlags::empty());
                    return Err(local_error(e, name, "cannot put the symlink in place"));
                }
                tally.links += 1;
            }
            Kind::Other => {
                eprintln!(
                    "skipping {}:{src}: not a file, directory or symlink",
                    self.container
                );
                tally.skipped += 1;
            }
        }
        Ok(())
    }

    async fn download_children(
        &self,
        src: &str,
        dir: &OwnedFd,
        tally: &mut Tally,
    ) -> anyhow::Result<()> {
        for (name, attrs) in self.list(src).await? {
            let path = join_remote(src, &name);
            // Attributes lacking a type (another server) are asked for.
            let attrs = if attrs.permissions.is_none() {
                self.sftp.lstat(&path).await?.attrs
            } else {
                attrs
            };
            self.download_entry(&path, &attrs, dir, &name, tally)
                .await?;
        }
        Ok(())
    }

    async fn download_file(
        &self,
        src: &str,
        attrs: &FileAttributes,
        parent: &OwnedFd,
        name: &str,
    ) -> anyhow::Result<()> {
        let handle = self
            .sftp
            .open(src, OpenFlags::READ, FileAttributes::default())
            .await
            .with_context(|| format!("cannot open {}:{src}", self.container))?
            .handle;
        let temp = temp_name();
        let fd = rustix::fs::openat(
            parent,
            temp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| local_error(e, name, "cannot create a file for"))?;
        let written = self.receive(&handle, std::fs::File::from(fd), attrs).await;
        let _ = self.sftp.close(&handle).await;
        let placed = written.and_then(|file| {
            rustix::fs::renameat(parent, temp.as_str(), parent, name)
                .map_err(|e| local_error(e, name, "cannot put in place"))?;
            drop(file);
            Ok(())
        });
        if placed.is_err() {
            let _ = rustix::fs::unlinkat(parent, temp.as_str(), AtFlags::empty());
        }
        placed
    }

    /// Reads the remote file into `file` with requests in flight, then sets its mode and
    /// times.
    async fn receive(
        &self,
        handle: &str,
        file: std::fs::File,
        attrs: &FileAttributes,
    ) -> anyhow::Result<std::fs::File> {
        let mut out = tokio::fs::File::from_std(file);
        let mut requested = 0u64;
        let mut written = 0u64;
        let mut eof = false;
        let mut inflight = FuturesOrdered::new();
        loop {
            while !eof && inflight.len() < IN_FLIGHT {
                let offset = requested;
                let read = self.sftp.read(handle, offset, CHUNK as u32);
                inflight.push_back(async move { (offset, read.await) });
                requested += CHUNK as u64;
            }
            let Some((offset, result)) = inflight.next().await else {
                break;
            };
            if eof {
                continue;
            }
            match result {
                Ok(data) if offset == written => {
                    out.write_all(&data.data).await.map_err(disk_error)?;
                    written += data.data.len() as u64;
                    // A short answer: the rest of this request's range, asked for again.
                    while written < offset + CHUNK as u64 {
                        let want = (offset + CHUNK as u64 - written) as u32;
                        match self.sftp.read(handle, written, want).await {
                            Ok(more) if !more.data.is_empty() => {
                                out.write_all(&more.data).await.map_err(disk_error)?;
                                written += more.data.len() as u64;
                            }
                            Ok(_) => {
                                eof = true;
                                break;
                            }
                            Err(e) if status_of(&e) == Some(StatusCode::Eof) => {
                                eof = true;
                                break;
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                Ok(_) => bail!("the container's answers to reads came out of order"),
                Err(e) if status_of(&e) == Some(StatusCode::Eof) => eof = true,
                Err(e) => return Err(e.into()),
            }
        }
        out.flush().await.map_err(disk_error)?;
        let file = out.into_std().await;
        let mode = attrs.permissions.unwrap_or(0o644) & 0o777;
        rustix::fs::fchmod(&file, Mode::from_raw_mode(mode)).context("cannot set a file's mode")?;
        set_local_times(&file, attrs)?;
        Ok(file)
    }

    // ----- here to the container -----

    async fn upload(
        &self,
        src: &Path,
        contents: bool,
        dst: &str,
        follow: bool,
    ) -> anyhow::Result<Tally> {
        let meta = if follow {
            std::fs::metadata(src)
        } else {
            std::fs::symlink_metadata(src)
        }
        .with_context(|| format!("cannot read {}", src.display()))?;
        let mut tally = Tally::default();
        let target = match self.sftp.stat(dst).await {
            Ok(attrs) if kind_of(&attrs.attrs) == Kind::Dir => {
                if meta.is_dir() && contents {
                    self.upload_children(src, dst, &mut tally).await?;
                    return Ok(tally);
                }
                let base = local_base(src)?;
                join_remote(dst, &base)
            }
            Ok(_) if meta.is_dir() => {
                bail!(
                    "cannot copy a directory onto the file {}:{dst}",
                    self.container
                )
            }
            Ok(_) => dst.to_owned(),
            Err(e) if status_of(&e) == Some(StatusCode::NoSuchFile) => {
                let parent = parent_remote(dst);
                let parent_is_dir = match self.sftp.stat(&parent).await {
                    Ok(attrs) => kind_of(&attrs.attrs) == Kind::Dir,
                    Err(_) => false,
                };
                if !parent_is_dir {
                    bail!("the directory {}:{parent} does not exist", self.container);
                }
                dst.to_owned()
            }
            Err(e) => return Err(e.into()),
        };
        self.upload_entry(src, &meta, &target, &mut tally).await?;
        Ok(tally)
    }

    async fn upload_entry(
        &self,
        src: &Path,
        meta: &std::fs::Metadata,
        dst: &str,
        tally: &mut Tally,
    ) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let file_type = meta.file_type();
        let times = (
            wire_time(meta.accessed().ok()),
            wire_time(meta.modified().ok()),
        );
        let mode = meta.permissions().mode() & 0o777;
        if file_type.is_file() {
            self.upload_file(src, dst, mode, times).await?;
            tally.files += 1;
            tally.bytes += meta.len();
        } else if file_type.is_dir() {
            match self.sftp.lstat(dst).await {
                Ok(attrs) if kind_of(&attrs.attrs) == Kind::Dir => {}
                Ok(_) => bail!("{}:{dst} exists and is not a directory", self.container),
                Err(_) => {
                    // Writable by its owner while its contents arrive; its mode is set after.
                    let attrs = FileAttributes {
                        permissions: Some(0o700),
                        ..Default::default()
                    };
                    self.sftp
                        .mkdir(dst, attrs)
                        .await
                        .with_context(|| format!("cannot create {}:{dst}", self.container))?;
                }
            }
            Box::pin(self.upload_children(src, dst, tally)).await?;
            let attrs = FileAttributes {
                permissions: Some(mode),
                atime: Some(times.0),
                mtime: Some(times.1),
                ..Default::default()
            };
            self.sftp.setstat(dst, attrs).await?;
            tally.dirs += 1;
        } else if file_type.is_symlink() {
            let target = std::fs::read_link(src)
                .with_context(|| format!("cannot read the symlink {}", src.display()))?;
            let target = target.to_str().with_context(|| {
                format!(
                    "the symlink {} points to a name that is not UTF-8",
                    src.display()
                )
            })?;
            if let Ok(existing) = self.sftp.lstat(dst).await {
                if kind_of(&existing.attrs) == Kind::Dir {
                    bail!("{}:{dst} is a directory", self.container);
                }
                self.sftp.remove(dst).await?;
            }
            // OpenSSH's order: the target first, then where the link goes.
            self.sftp
                .symlink(target, dst)
                .await
                .with_context(|| format!("cannot create the symlink {}:{dst}", self.container))?;
            tally.links += 1;
        } else {
            eprintln!(
                "skipping {}: not a file, directory or symlink",
                src.display()
            );
            tally.skipped += 1;
        }
        Ok(())
    }

    async fn upload_children(
        &self,
        src: &Path,
        dst: &str,
        tally: &mut Tally,
    ) -> anyhow::Result<()> {
        let mut entries = Vec::new();
        for entry in
            std::fs::read_dir(src).with_context(|| format!("cannot list {}", src.display()))?
        {
            let entry = entry.with_context(|| format!("cannot list {}", src.display()))?;
            entries.push(entry.file_name());
        }
        entries.sort();
        for name in entries {
            let path = src.join(&name);
            let Some(text) = name.to_str() else {
                bail!(
                    "{} has a name that is not UTF-8, which SFTP cannot carry",
                    path.display()
                );
            };
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                // Gone since the listing: nothing to copy.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
            };
            self.upload_entry(&path, &meta, &join_remote(dst, text), tally)
                .await?;
        }
        Ok(())
    }

    async fn upload_file(
        &self,
        src: &Path,
        dst: &str,
        mode: u32,
        times: (u32, u32),
    ) -> anyhow::Result<()> {
        let mut file = tokio::fs::File::open(src)
            .await
            .with_context(|| format!("cannot open {}", src.display()))?;
        let temp = join_remote(&parent_remote(dst), &temp_name());
        let attrs = FileAttributes {
            permissions: Some(0o600),
            ..Default::default()
        };
        let handle = self
            .sftp
            .open(
                &temp,
                OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::EXCLUDE,
                attrs,
            )
            .await
            .with_context(|| {
                format!(
                    "cannot create a file in {}:{}",
                    self.container,
                    parent_remote(dst)
                )
            })?
            .handle;
        let sent = self.send(&handle, &mut file, src, dst, mode, times).await;
        let closed = self.sftp.close(&handle).await;
        let placed = match (sent, closed) {
            (Ok(()), Ok(_)) => self.replace(&temp, dst).await,
            (Err(e), _) => Err(e),
            (Ok(()), Err(e)) => Err(e.into()),
        };
        if placed.is_err() {
            let _ = self.sftp.remove(&temp).await;
        }
        placed
    }

    /// Writes the local file with requests in flight, then its mode and times.
    async fn send(
        &self,
        handle: &str,
        file: &mut tokio::fs::File,
        src: &Path,
        dst: &str,
        mode: u32,
        times: (u32, u32),
    ) -> anyhow::Result<()> {
        let mut offset = 0u64;
        let mut inflight = FuturesUnordered::new();
        let mut done = false;
        while !done || !inflight.is_empty() {
            while !done && inflight.len() < IN_FLIGHT {
                let mut buf = vec![0u8; CHUNK];
                let mut filled = 0;
                while filled < CHUNK {
                    let n = file
                        .read(&mut buf[filled..])
                        .await
                        .with_context(|| format!("cannot read {}", src.display()))?;
                    if n == 0 {
                        done = true;
                        break;
                    }
                    filled += n;
                }
                if filled == 0 {
                    break;
                }
                buf.truncate(filled);
                inflight.push(self.sftp.write(handle, offset, buf));
                offset += filled as u64;
            }
            if let Some(result) = inflight.next().await {
                result.with_context(|| format!("cannot write {}:{dst}", self.container))?;
            }
        }
        let attrs = FileAttributes {
            permissions: Some(mode),
            atime: Some(times.0),
            mtime: Some(times.1),
            ..Default::default()
        };
        self.sftp.fsetstat(handle, attrs).await?;
        Ok(())
    }

    /// Renames the complete temporary file over `dst`.
    async fn replace(&self, temp: &str, dst: &str) -> anyhow::Result<()> {
        if let Ok(existing) = self.sftp.lstat(dst).await
            && kind_of(&existing.attrs) == Kind::Dir
        {
            bail!(
                "cannot overwrite the directory {}:{dst} with a file",
                self.container
            );
        }
        let mut body = Vec::new();
        for s in [temp, dst] {
            body.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
            body.extend_from_slice(s.as_bytes());
        }
        match self.sftp.extended("posix-rename@openssh.com", body).await? {
            russh_sftp::protocol::Packet::Status(status)
                if status.status_code == StatusCode::Ok =>
            {
                Ok(())
            }
            russh_sftp::protocol::Packet::Status(status)
                if status.status_code == StatusCode::OpUnsupported =>
            {
                // A server without the extension: SFTP v3's rename does not replace.
                let _ = self.sftp.remove(dst).await;
                self.sftp.rename(temp, dst).await?;
                Ok(())
            }
            russh_sftp::protocol::Packet::Status(status) => Err(SftpError::Status(status).into()),
            _ => bail!("the container answered a rename with something else"),
        }
    }
}

fn join_remote(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

fn parent_remote(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    match trimmed.rsplit_once('/') {
        Some(("", _)) | None => "/".to_owned(),
        Some((parent, _)) => parent.to_owned(),
    }
}

/// The final name of a local source, as the name it gets in the container.
fn local_base(src: &Path) -> anyhow::Result<String> {
    let canonical;
    let path = match src.file_name() {
        Some(_) => src,
        None => {
            canonical = std::fs::canonicalize(src)
                .with_context(|| format!("cannot resolve {}", src.display()))?;
            &canonical
        }
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} has no name to copy it under", src.display()))?;
    name.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{} has a name that is not UTF-8", src.display()))
}

fn open_local_dir(path: &Path) -> anyhow::Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("cannot open the directory {}", path.display()))
}

/// The local parent directory of `path` and its final name.
fn split_local(path: &Path) -> anyhow::Result<(OwnedFd, String)> {
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let name = name
        .to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))?
        .to_owned();
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = rustix::fs::open(
        parent,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::NOENT => anyhow::anyhow!("the directory {} does not exist", parent.display()),
        e => anyhow::Error::new(e).context(format!("cannot open {}", parent.display())),
    })?;
    Ok((dir, name))
}

/// Makes (or opens, if it is already a directory) `name` in `parent`, never following
/// a symlink that stands there.
fn make_local_dir(parent: &OwnedFd, name: &str) -> anyhow::Result<OwnedFd> {
    match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(local_error(e, name, "cannot create the directory")),
    }
    rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::LOOP | Errno::NOTDIR => {
            anyhow::anyhow!("{name} exists here and is not a directory; nothing was copied into it")
        }
        e => local_error(e, name, "cannot open the directory"),
    })
}

fn set_local_times(fd: impl AsFd, attrs: &FileAttributes) -> anyhow::Result<()> {
    let Some(mtime) = attrs.mtime else {
        return Ok(());
    };
    let at = |t: u32| Timespec {
        tv_sec: i64::from(t),
        tv_nsec: 0,
    };
    let times = Timestamps {
        last_access: at(attrs.atime.unwrap_or(mtime)),
        last_modification: at(mtime),
    };
    rustix::fs::futimens(fd, &times).context("cannot set a modification time")
}

fn local_error(e: Errno, name: &str, what: &str) -> anyhow::Error {
    if e == Errno::NOSPC {
        return anyhow::anyhow!("the local disk is full: {what} {name}");
    }
    anyhow::Error::new(std::io::Error::from(e)).context(format!("{what} {name}"))
}

fn disk_error(e: std::io::Error) -> anyhow::Error {
    if e.raw_os_error() == Some(Errno::NOSPC.raw_os_error()) {
        anyhow::anyhow!("the local disk is full; the partial file was removed")
    } else {
        anyhow::Error::new(e).context("cannot write a local file")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sides_parse_as_docker_cp_reads_them() {
        assert_eq!(
            parse_side("box:/workspace/a"),
            Side::Container {
                container: "box".into(),
                path: "/workspace/a".into()
            }
        );
        assert_eq!(
            parse_side("c0123:notes.txt"),
            Side::Container {
                container: "c0123".into(),
                path: "notes.txt".into()
            }
        );
        assert_eq!(parse_side("/tmp/a:b"), Side::Local("/tmp/a:b".into()));
        assert_eq!(parse_side("./a:b"), Side::Local("./a:b".into()));
        assert_eq!(parse_side("dir/a:b"), Side::Local("dir/a:b".into()));
        assert_eq!(parse_side("plain"), Side::Local("plain".into()));
        assert_eq!(parse_side(":x"), Side::Local(":x".into()));
    }

    #[test]
    fn container_paths_stay_inside_the_root() {
        assert_eq!(container_path("").unwrap(), "/workspace");
        assert_eq!(container_path("a/b").unwrap(), "/workspace/a/b");
        assert_eq!(container_path("../etc/hosts").unwrap(), "/etc/hosts");
        assert_eq!(container_path("/a/./b/../c/").unwrap(), "/a/c");
        assert_eq!(container_path("/").unwrap(), "/");
        for bad in ["../../etc", "/..", "/a/../../b", "a/../../../x"] {
            let e = container_path(bad).unwrap_err().to_string();
            assert!(
                e.contains("leads out of the container's root"),
                "{bad}: {e}"
            );
        }
        assert!(container_path("a\0b").is_err());
    }

    #[test]
    fn names_from_the_other_side_must_be_plain() {
        assert_eq!(checked_name("file.txt").unwrap(), "file.txt");
        assert_eq!(checked_name(".hidden").unwrap(), ".hidden");
        for bad in ["", ".", "..", "a/b", "/etc", "../x", "a\0b"] {
            assert!(checked_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn remote_paths_join_and_split() {
        assert_eq!(join_remote("/", "a"), "/a");
        assert_eq!(join_remote("/w", "a"), "/w/a");
        assert_eq!(parent_remote("/w/a"), "/w");
        assert_eq!(parent_remote("/a"), "/");
        assert_eq!(parent_remote("/w/a/"), "/w");
        assert!(names_contents("/w/."));
        assert!(names_contents("."));
        assert!(!names_contents("/w/.x"));
    }
}
