//! The SFTP server against a temp dir standing in for a container's root, through the fake
//! runtime and a real SFTP client (russh-sftp's) on the message socket.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use russh_sftp::client::RawSftpSession;
use russh_sftp::client::error::Error as ClientError;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::fake::FakeRuntime;
use crate::{ContainerRuntime, ContainerSpec, NetworkMode};

/// A container whose root is a temp dir, and a host directory beside it that nothing may
/// reach.
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
    fake: FakeRuntime,
    runtime_id: String,
}

impl Fixture {
    async fn new(user: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        for d in ["workspace", "etc", "tmp"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\ndev:x:1000:1001::/workspace:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\ndev:x:1001:\n").unwrap();
        std::fs::write(root.join("etc/hostname"), "container\n").unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), "host secret").unwrap();
        let fake = FakeRuntime::new();
        fake.add_image("img");
        let runtime_id = fake.run(&spec()).await.unwrap();
        fake.set_filesystem("c", &root, user);
        Fixture {
            _dir: dir,
            root,
            outside,
            fake,
            runtime_id,
        }
    }

    /// A client session on the server, through the frames a WebSocket would carry.
    async fn client(&self) -> RawSftpSession {
        let (session, _frames) = self.connect().await;
        session
    }

    async fn connect(&self) -> (RawSftpSession, tokio::task::JoinHandle<()>) {
        let fs = self.fake.filesystem(&self.runtime_id).await.unwrap();
        let (client_io, bridge_io) = tokio::io::duplex(1 << 20);
        let (to_server, server_in) = futures::channel::mpsc::unbounded::<Frame>();
        let (server_out, mut from_server) = futures::channel::mpsc::unbounded::<Frame>();
        let served = tokio::spawn(serve(server_in, server_out, fs));
        let (mut bridge_rd, mut bridge_wr) = tokio::io::split(bridge_io);
        tokio::spawn(async move {
            let mut to_server = to_server;
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match bridge_rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to_server
                            .send(Frame::Binary(bytes::Bytes::copy_from_slice(&buf[..n])))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
            let _ = to_server.send(Frame::Close).await;
        });
        tokio::spawn(async move {
            while let Some(frame) = from_server.next().await {
                match frame {
                    Frame::Binary(data) => {
                        if bridge_wr.write_all(&data).await.is_err() {
                            break;
                        }
                    }
                    Frame::Text(_) | Frame::Close => break,
                    Frame::Ping => {}
                }
            }
            let _ = bridge_wr.shutdown().await;
        });
        let session = RawSftpSession::new(client_io);
        session.init().await.unwrap();
        (session, served)
    }

    fn inside(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    fn outside_untouched(&self) {
        let entries: Vec<_> = std::fs::read_dir(&self.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(entries, vec![std::ffi::OsString::from("secret")]);
        assert_eq!(
            std::fs::read_to_string(self.outside.join("secret")).unwrap(),
            "host secret"
        );
    }
}

fn spec() -> ContainerSpec {
    ContainerSpec {
        name: "c".into(),
        image: "img".into(),
        command: vec![],
        env: vec![],
        cpus: 1.0,
        memory_bytes: 1 << 28,
        workspace: "/tmp".into(),
        workspace_target: "/workspace".into(),
        labels: Default::default(),
        network: NetworkMode::None,
        stop_grace_secs: 1,
        node: None,
    }
}

fn code(e: &ClientError) -> Option<StatusCode> {
    match e {
        ClientError::Status(status) => Some(status.status_code),
        _ => None,
    }
}

fn create() -> OpenFlags {
    OpenFlags::CREATE | OpenFlags::TRUNCATE | OpenFlags::WRITE
}

async fn put(sftp: &RawSftpSession, path: &str, data: &[u8]) {
    let handle = sftp
        .open(path, create(), FileAttributes::default())
        .await
        .unwrap()
        .handle;
    sftp.write(&handle, 0, data.to_vec()).await.unwrap();
    sftp.close(&handle).await.unwrap();
}

async fn get(sftp: &RawSftpSession, path: &str) -> Result<Vec<u8>, ClientError> {
    let handle = sftp
        .open(path, OpenFlags::READ, FileAttributes::default())
        .await?
        .handle;
    let mut out = Vec::new();
    loop {
        match sftp.read(&handle, out.len() as u64, 64 << 10).await {
            Ok(data) => out.extend_from_slice(&data.data),
            Err(e) if code(&e) == Some(StatusCode::Eof) => break,
            Err(e) => return Err(e),
        }
    }
    sftp.close(&handle).await?;
    Ok(out)
}

async fn realpath(sftp: &RawSftpSession, path: &str) -> String {
    sftp.realpath(path).await.unwrap().files[0].filename.clone()
}

#[tokio::test]
async fn files_are_written_read_and_listed_where_the_container_sees_them() {
    let fx = Fixture::new("").await;
    let sftp = fx.client().await;
    // Relative paths start at /workspace.
    assert_eq!(realpath(&sftp, ".").await, "/workspace");
    assert_eq!(realpath(&sftp, "notes.txt").await, "/workspace/notes.txt");
    put(&sftp, "notes.txt", b"hello").await;
    assert_eq!(
        std::fs::read(fx.inside("workspace/notes.txt")).unwrap(),
        b"hello"
    );
    assert_eq!(get(&sftp, "/workspace/notes.txt").await.unwrap(), b"hello");
    assert_eq!(get(&sftp, "/etc/hostname").await.unwrap(), b"container\n");

    // Writes at offsets, out of order, as a pipelining client sends them.
    let handle = sftp
        .open("/workspace/big.bin", create(), FileAttributes::default())
        .await
        .unwrap()
        .handle;
    let data: Vec<u8> = (0..600_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let chunks: Vec<(u64, Vec<u8>)> = data
        .chunks(MAX_IO)
        .enumerate()
        .map(|(i, c)| ((i * MAX_IO) as u64, c.to_vec()))
        .rev()
        .collect();
    let writes = chunks
        .into_iter()
        .map(|(offset, chunk)| sftp.write(&handle, offset, chunk));
    for result in futures::future::join_all(writes).await {
        result.unwrap();
    }
    let attrs = sftp.fstat(&handle).await.unwrap().attrs;
    assert_eq!(attrs.size, Some(data.len() as u64));
    sftp.close(&handle).await.unwrap();
    assert_eq!(get(&sftp, "big.bin").await.unwrap(), data);
    // A read asks for at most MAX_IO.
    let handle = sftp
        .open("big.bin", OpenFlags::READ, FileAttributes::default())
        .await
        .unwrap()
        .handle;
    let first = sftp.read(&handle, 0, 1 << 30).await;
    assert!(first.is_err() || first.unwrap().data.len() <= MAX_IO);

    // Directories: mkdir, readdir with attributes, rmdir.
    sftp.mkdir("/workspace/dir", FileAttributes::default())
        .await
        .unwrap();
    put(&sftp, "dir/a", b"a").await;
    sftp.symlink("a", "/workspace/dir/link").await.unwrap();
    let dir = sftp.opendir("dir").await.unwrap().handle;
    let mut names = Vec::new();
    loop {
        match sftp.readdir(&dir).await {
            Ok(name) => names.extend(name.files),
            Err(e) if code(&e) == Some(StatusCode::Eof) => break,
            Err(e) => panic!("readdir: {e}"),
        }
    }
    sftp.close(&dir).await.unwrap();
    let mut listed: Vec<String> = names.iter().map(|f| f.filename.clone()).collect();
    listed.sort();
    assert_eq!(listed, vec![".", "..", "a", "link"]);
    let link = names.iter().find(|f| f.filename == "link").unwrap();
    assert!(link.longname.starts_with('l'), "{}", link.longname);
    assert!(link.longname.contains("root"), "{}", link.longname);
    assert_eq!(link.attrs.permissions.unwrap() & 0o170000, 0o120000);
    let a = names.iter().find(|f| f.filename == "a").unwrap();
    assert_eq!(a.attrs.size, Some(1));

    // Symlinks: OpenSSH's argument order (target first), readlink, stat follows, lstat not.
    assert_eq!(
        sftp.readlink("dir/link").await.unwrap().files[0].filename,
        "a"
    );
    assert_eq!(
        std::fs::read_link(fx.inside("workspace/dir/link")).unwrap(),
        Path::new("a")
    );
    let followed = sftp.stat("dir/link").await.unwrap().attrs;
    assert_eq!(followed.permissions.unwrap() & 0o170000, 0o100000);
    let itself = sftp.lstat("dir/link").await.unwrap().attrs;
    assert_eq!(itself.permissions.unwrap() & 0o170000, 0o120000);

    // setstat: mode and times.
    let attrs = FileAttributes {
        permissions: Some(0o750),
        atime: Some(1_000_000),
        mtime: Some(1_600_000_000),
        ..Default::default()
    };
    sftp.setstat("dir/a", attrs).await.unwrap();
    let meta = std::fs::metadata(fx.inside("workspace/dir/a")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o750);
    assert_eq!(meta.mtime(), 1_600_000_000);
    assert_eq!(meta.atime(), 1_000_000);
    let stat = sftp.stat("dir/a").await.unwrap().attrs;
    assert_eq!(stat.mtime, Some(1_600_000_000));
    // Size through fsetstat.
    let handle = sftp
        .open("big.bin", OpenFlags::WRITE, FileAttributes::default())
        .await
        .unwrap()
        .handle;
    let size = FileAttributes {
        size: Some(10),
        ..Default::default()
    };
    sftp.fsetstat(&handle, size).await.unwrap();
    sftp.close(&handle).await.unwrap();
    assert_eq!(
        std::fs::metadata(fx.inside("workspace/big.bin"))
            .unwrap()
            .len(),
        10
    );

    // rename refuses to replace (SFTP v3), posix-rename replaces.
    put(&sftp, "b", b"b").await;
    let refused = sftp.rename("b", "notes.txt").await.unwrap_err();
    assert_eq!(code(&refused), Some(StatusCode::Failure));
    assert_eq!(get(&sftp, "notes.txt").await.unwrap(), b"hello");
    posix_rename(&sftp, "b", "notes.txt").await;
    assert_eq!(get(&sftp, "notes.txt").await.unwrap(), b"b");
    sftp.rename("notes.txt", "dir/moved.txt").await.unwrap();
    assert!(fx.inside("workspace/dir/moved.txt").exists());

    // remove and rmdir.
    let not_empty = sftp.rmdir("dir").await.unwrap_err();
    assert_eq!(code(&not_empty), Some(StatusCode::Failure));
    for name in ["dir/a", "dir/link", "dir/moved.txt"] {
        sftp.remove(name).await.unwrap();
    }
    assert!(fx.inside("workspace/dir/a").symlink_metadata().is_err());
    sftp.rmdir("dir").await.unwrap();
    assert!(!fx.inside("workspace/dir").exists());
    let missing = sftp.stat("dir").await.unwrap_err();
    assert_eq!(code(&missing), Some(StatusCode::NoSuchFile));
    let missing = get(&sftp, "nothing").await.unwrap_err();
    assert_eq!(code(&missing), Some(StatusCode::NoSuchFile));
    // Removing a directory as a file fails; so does opening one as a file.
    sftp.mkdir("d2", FileAttributes::default()).await.unwrap();
    assert!(sftp.remove("d2").await.is_err());
    assert!(get(&sftp, "d2").await.is_err());
    fx.outside_untouched();
}

async fn posix_rename(sftp: &RawSftpSession, from: &str, to: &str) {
    let mut body = Vec::new();
    for s in [from, to] {
        body.extend_from_slice(&(s.len() as u32).to_be_bytes());
        body.extend_from_slice(s.as_bytes());
    }
    match sftp
        .extended("posix-rename@openssh.com", body)
        .await
        .unwrap()
    {
        russh_sftp::protocol::Packet::Status(status) => {
            assert_eq!(status.status_code, StatusCode::Ok, "{status:?}")
        }
        other => panic!("unexpected answer {other:?}"),
    }
}

#[tokio::test]
async fn every_path_resolves_inside_the_container_root() {
    let fx = Fixture::new("").await;
    let sftp = fx.client().await;
    let outside = fx.outside.to_string_lossy().into_owned();

    // `..` stops at the container's `/`.
    assert_eq!(realpath(&sftp, "../../../..").await, "/");
    assert_eq!(
        get(&sftp, "/../../../etc/hostname").await.unwrap(),
        b"container\n"
    );
    put(&sftp, "../../../../tmp/escaped", b"x").await;
    assert!(fx.inside("tmp/escaped").exists());
    let relative_out = "../".repeat(20) + "outside/secret";
    assert!(get(&sftp, &relative_out).await.is_err());
    // The host's absolute path means the same path inside the container: not there.
    let host_path = format!("{outside}/secret");
    let missing = get(&sftp, &host_path).await.unwrap_err();
    assert_eq!(code(&missing), Some(StatusCode::NoSuchFile));

    // A symlink to /etc resolves to the container's /etc.
    sftp.symlink("/etc", "/workspace/etc-link").await.unwrap();
    assert_eq!(
        get(&sftp, "etc-link/hostname").await.unwrap(),
        b"container\n"
    );
    assert_eq!(realpath(&sftp, "etc-link/hostname").await, "/etc/hostname");
    // Symlinks made to lead out (absolute host paths, `..` chains) stay inside.
    std::os::unix::fs::symlink(&fx.outside, fx.inside("workspace/host-link")).unwrap();
    std::os::unix::fs::symlink(
        "../".repeat(20) + "outside",
        fx.inside("workspace/dotdot-link"),
    )
    .unwrap();
    for link in ["host-link", "dotdot-link"] {
        assert!(
            get(&sftp, &format!("{link}/secret")).await.is_err(),
            "{link}"
        );
        let attrs = FileAttributes::default();
        assert!(
            sftp.open(format!("{link}/planted"), create(), attrs)
                .await
                .is_err(),
            "{link}"
        );
        assert!(
            sftp.mkdir(format!("{link}/dir"), FileAttributes::default())
                .await
                .is_err()
        );
        assert!(sftp.remove(format!("{link}/secret")).await.is_err());
        assert!(
            sftp.rename("etc-link", format!("{link}/moved"))
                .await
                .is_err()
        );
    }
    assert_eq!(realpath(&sftp, "host-link").await, format!("{outside}"));
    // Removing a symlink removes the link, never its target.
    sftp.remove("etc-link").await.unwrap();
    assert!(fx.inside("etc/hostname").exists());
    // setstat follows the link inside the root, so the host file keeps its mode.
    let before = std::fs::metadata(fx.outside.join("secret")).unwrap().mode();
    let attrs = FileAttributes {
        permissions: Some(0o777),
        ..Default::default()
    };
    assert!(sftp.setstat("host-link/secret", attrs).await.is_err());
    assert_eq!(
        std::fs::metadata(fx.outside.join("secret")).unwrap().mode(),
        before
    );
    // NUL in a path is refused.
    assert!(sftp.stat("a\0b").await.is_err());
    fx.outside_untouched();
}

#[tokio::test]
async fn a_symlink_swapped_in_during_a_transfer_leads_nowhere_outside() {
    let fx = Fixture::new("").await;
    let sftp = fx.client().await;
    sftp.mkdir("dir", FileAttributes::default()).await.unwrap();
    let handle = sftp
        .open("dir/file", create(), FileAttributes::default())
        .await
        .unwrap()
        .handle;
    sftp.write(&handle, 0, b"first ".to_vec()).await.unwrap();
    // The container swaps the directory for a symlink to the host's directory.
    std::fs::rename(fx.inside("workspace/dir"), fx.inside("workspace/dir.old")).unwrap();
    std::os::unix::fs::symlink(&fx.outside, fx.inside("workspace/dir")).unwrap();
    // The open file is the one that was opened.
    sftp.write(&handle, 6, b"second".to_vec()).await.unwrap();
    sftp.close(&handle).await.unwrap();
    assert_eq!(
        std::fs::read(fx.inside("workspace/dir.old/file")).unwrap(),
        b"first second"
    );
    // New lookups through the swapped name stay inside the root.
    for path in ["dir/file", "dir/secret"] {
        assert!(
            sftp.open(path, create(), FileAttributes::default())
                .await
                .is_err(),
            "{path}"
        );
    }
    assert!(sftp.symlink("/", "dir/planted").await.is_err());
    fx.outside_untouched();
}

#[tokio::test]
async fn new_entries_belong_to_the_container_user() {
    let fx = Fixture::new("dev").await;
    let sftp = fx.client().await;
    put(&sftp, "mine.txt", b"x").await;
    sftp.mkdir("mydir", FileAttributes::default())
        .await
        .unwrap();
    sftp.symlink("mine.txt", "mylink").await.unwrap();
    for name in ["mine.txt", "mydir", "mylink"] {
        let meta = std::fs::symlink_metadata(fx.inside(&format!("workspace/{name}"))).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (1000, 1001), "{name}");
    }
    // A file that exists keeps its owner when it is overwritten.
    std::fs::write(fx.inside("workspace/theirs"), "old").unwrap();
    std::os::unix::fs::chown(fx.inside("workspace/theirs"), Some(4242), Some(4243)).unwrap();
    put(&sftp, "theirs", b"new").await;
    let meta = std::fs::metadata(fx.inside("workspace/theirs")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (4242, 4243));
    assert_eq!(
        std::fs::read(fx.inside("workspace/theirs")).unwrap(),
        b"new"
    );
    // Listings name the container's users.
    let dir = sftp.opendir(".").await.unwrap().handle;
    let names = sftp.readdir(&dir).await.unwrap().files;
    let mine = names.iter().find(|f| f.filename == "mine.txt").unwrap();
    assert!(mine.longname.contains(" dev "), "{}", mine.longname);
    let theirs = names.iter().find(|f| f.filename == "theirs").unwrap();
    assert!(theirs.longname.contains("4242"), "{}", theirs.longname);
}

#[tokio::test]
async fn a_numeric_user_owns_new_files_without_a_passwd_entry() {
    let fx = Fixture::new("4000:4001").await;
    let sftp = fx.client().await;
    put(&sftp, "n", b"x").await;
    let meta = std::fs::metadata(fx.inside("workspace/n")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (4000, 4001));
}

#[tokio::test]
async fn an_unknown_named_user_ends_the_session_with_an_error_frame() {
    let fx = Fixture::new("ghost").await;
    let fs = fx.fake.filesystem(&fx.runtime_id).await.unwrap();
    let (tx, rx) = futures::channel::mpsc::unbounded::<Frame>();
    serve(futures::stream::pending::<Frame>(), tx, fs).await;
    let frames: Vec<Frame> = rx.collect().await;
    let Frame::Text(text) = &frames[0] else {
        panic!("{frames:?}")
    };
    let control: SftpControl = serde_json::from_str(text).unwrap();
    let SftpControl::Error { code, error } = control else {
        panic!("{control:?}")
    };
    assert_eq!(code, ErrorCode::Internal);
    assert!(error.contains("ghost"), "{error}");
    assert_eq!(frames[1], Frame::Close);
}

#[tokio::test]
async fn the_session_ends_when_the_container_stops() {
    let fx = Fixture::new("").await;
    let fs = fx.fake.filesystem(&fx.runtime_id).await.unwrap();
    let (tx, rx) = futures::channel::mpsc::unbounded::<Frame>();
    let served = tokio::spawn(serve(futures::stream::pending::<Frame>(), tx, fs));
    fx.fake.stop(&fx.runtime_id, Duration::ZERO).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("the session ends")
        .unwrap();
    let frames: Vec<Frame> = rx.collect().await;
    assert!(
        matches!(&frames[0], Frame::Text(t) if t.contains("\"conflict\"")),
        "{frames:?}"
    );
    assert_eq!(frames.last(), Some(&Frame::Close));
    // A stopped container has no filesystem to serve.
    assert!(matches!(
        fx.fake.filesystem(&fx.runtime_id).await,
        Err(crate::RuntimeError::NotRunning { .. })
    ));
}

#[tokio::test]
async fn a_request_before_init_is_refused() {
    let fx = Fixture::new("").await;
    let fs = fx.fake.filesystem(&fx.runtime_id).await.unwrap();
    let (mut to_server, server_in) = futures::channel::mpsc::unbounded::<Frame>();
    let (server_out, mut from_server) = futures::channel::mpsc::unbounded::<Frame>();
    tokio::spawn(serve(server_in, server_out, fs));
    // SSH_FXP_STAT (17), id 7, path "/".
    let mut packet = vec![17u8];
    packet.extend_from_slice(&7u32.to_be_bytes());
    packet.extend_from_slice(&1u32.to_be_bytes());
    packet.push(b'/');
    let mut framed = (packet.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&packet);
    to_server.send(Frame::Binary(framed.into())).await.unwrap();
    let mut answer = Vec::new();
    while answer.len() < 13 {
        match from_server.next().await {
            Some(Frame::Binary(data)) => answer.extend_from_slice(&data),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(answer[4], 101, "SSH_FXP_STATUS");
    assert_eq!(&answer[5..9], &7u32.to_be_bytes());
    assert_eq!(&answer[9..13], &5u32.to_be_bytes(), "SSH_FX_BAD_MESSAGE");
}

#[tokio::test]
async fn the_kernels_filesystems_are_not_served() {
    // The host's own root stands in for a container's: /proc is procfs there too.
    let dir = rustix::fs::open(
        "/",
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    let root = Arc::new(Root::new(dir, "/", Owner::ROOT));
    let refused = root
        .open_file(
            "/proc/self/status",
            root::OpenMode {
                read: true,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::PermissionDenied);
    let change = root::Change {
        permissions: Some(0o600),
        ..Default::default()
    };
    assert!(root.setstat("/proc/self/oom_score_adj", change).is_err());
    // Listing and stat are fine.
    assert!(root.stat("/proc/self").is_ok());
}

#[tokio::test]
async fn the_extensions_openssh_asks_for_are_answered() {
    let fx = Fixture::new("").await;
    let sftp = fx.client().await;
    let limits = sftp.limits().await.unwrap();
    assert_eq!(limits.max_read_len, MAX_IO as u64);
    assert_eq!(limits.max_write_len, MAX_IO as u64);
    let vfs = sftp.statvfs("/workspace").await.unwrap();
    assert!(vfs.block_size > 0);
    put(&sftp, "f", b"data").await;
    sftp.hardlink("f", "g").await.unwrap();
    assert_eq!(std::fs::read(fx.inside("workspace/g")).unwrap(), b"data");
    let handle = sftp
        .open("f", OpenFlags::WRITE, FileAttributes::default())
        .await
        .unwrap()
        .handle;
    sftp.fsync(&handle).await.unwrap();
    let unknown = sftp.extended("nothing@example.org", Vec::new()).await;
    assert!(
        matches!(
            unknown,
            Ok(russh_sftp::protocol::Packet::Status(ref s)) if s.status_code == StatusCode::OpUnsupported
        ),
        "{unknown:?}"
    );
}
