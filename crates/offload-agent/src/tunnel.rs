//! The edge's side of port channels: a TCP connection to `127.0.0.1:PORT` inside one of
//! this agent's own containers, carried on a socket the server asked it to dial back, or
//! on the agent's local socket, which `offload port-forward` on the same machine uses so
//! that the traffic never leaves the machine.
//!
//! The local socket (`agent.sock` in the agent's 0700 data directory) takes one JSON line,
//! a [`LocalRequest`] (container, port, the generation the caller expects), and answers
//! with one `PortControl` line: `connected`, carrying the connected TCP socket itself
//! (`SCM_RIGHTS`), or `error`. The caller then moves the bytes between its own socket and
//! that one, so the agent is not even in the data path; the agent keeps the local
//! connection open to send `notice` lines (a move is about to cut the connection) until
//! the caller closes it. Only the agent's own user (and root) may connect: the directory's
//! mode says so and both ends check the other's credentials. The agent records where it
//! listens beside the client config it runs with ([`LocalAgent`]), so the CLI that uses
//! the same config finds it.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use futures::{Sink, Stream};
use offload_core::ContainerId;
use offload_core::agent::Channel;
use offload_core::api::{ErrorCode, PortControl};
use offload_runtime::RuntimeError;
use offload_runtime::relay::{Frame, port_error, relay_port};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpStream, UnixListener, UnixStream};

use crate::client::ClientConfig;
use crate::edge::Edge;

/// The local socket's name in the agent's data directory.
pub const LOCAL_SOCKET: &str = "agent.sock";

/// Longest line on the local socket.
const MAX_LINE: usize = 4 << 10;

/// Where the agent on this machine serves local channels, as it records it beside the
/// client config it runs with (`NAME.agent.json` next to `NAME.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalAgent {
    pub socket: PathBuf,
    /// The server and the user of the agent's config: a CLI with another config does not
    /// use this agent.
    pub server: String,
    pub user: String,
    pub pid: u32,
}

/// The record of the local agent that runs with the client config at `config`.
pub fn rendezvous_path(config: &Path) -> PathBuf {
    let stem = config
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config".to_owned());
    config.with_file_name(format!("{stem}.agent.json"))
}

impl LocalAgent {
    /// Records where this agent listens, readable by its user alone (0600, written
    /// atomically).
    pub fn write(&self, config: &Path) -> anyhow::Result<()> {
        use std::io::Write;
        let path = rendezvous_path(config);
        let dir = path.parent().context("the config path has no directory")?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("cannot write in {}", dir.display()))?;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))?;
        tmp.write_all(&serde_json::to_vec_pretty(self)?)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    /// The local agent of the client config at `config`, if one recorded itself for the
    /// same server and user and its socket is there. Whether it answers, and is the
    /// agent's own, is checked on connecting ([`connect_local`]).
    pub fn find(config: &Path, client: &ClientConfig) -> Option<LocalAgent> {
        let bytes = std::fs::read(rendezvous_path(config)).ok()?;
        if bytes.len() > 64 << 10 {
            return None;
        }
        let agent: LocalAgent = serde_json::from_slice(&bytes).ok()?;
        let same = agent.server == client.server && agent.user == client.user;
        (same && agent.socket.is_absolute() && agent.socket.exists()).then_some(agent)
    }
}

/// Whether the peer of a local socket is this process's user (or root).
fn same_user(stream: &UnixStream) -> io::Result<bool> {
    let peer = stream.peer_cred()?.uid();
    let me = rustix::process::getuid().as_raw();
    Ok(peer == me || peer == 0)
}

/// Connects to a local agent's socket, checking that the process listening there runs as
/// this user (or root), so another local user cannot stand in for the agent.
pub async fn connect_local(socket: &Path) -> io::Result<UnixStream> {
    let stream = UnixStream::connect(socket).await?;
    if !same_user(&stream)? {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is served by another user", socket.display()),
        ));
    }
    Ok(stream)
}

/// Creates the local socket in `data_dir` (0700), replacing a stale one.
pub fn bind_local(data_dir: &Path) -> anyhow::Result<(UnixListener, PathBuf)> {
    let path = data_dir.join(LOCAL_SOCKET);
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot replace {}", path.display()))?;
        }
        Ok(_) => bail!(
            "{} exists and is not a socket; remove it to let the agent listen there",
            path.display()
        ),
        Err(_) => {}
    }
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok((listener, path))
}

/// The port of a request, checked here whatever the other side checked: 1–65535.
pub fn check_port(port: u16) -> Result<u16, (ErrorCode, String)> {
    if port == 0 {
        return Err((
            ErrorCode::BadRequest,
            "port must be a number in 1-65535, not 0".to_owned(),
        ));
    }
    Ok(port)
}

/// What a caller on the local socket asks for: one JSON line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalRequest {
    pub container_id: ContainerId,
    pub port: u16,
    /// The generation the caller expects this agent to run.
    #[serde(default)]
    pub generation: Option<u64>,
}

/// Parses a request line; its port is checked as any other (1–65535).
pub fn parse_local_request(line: &[u8]) -> Result<LocalRequest, (ErrorCode, String)> {
    let request: LocalRequest = serde_json::from_slice(line)
        .map_err(|e| (ErrorCode::BadRequest, format!("invalid local request: {e}")))?;
    check_port(request.port)?;
    Ok(request)
}

/// Connects to `port` in the copy of `id` this agent runs, checked against what the
/// caller expects (`generation`); the reason it cannot otherwise.
async fn connect_own(
    edge: &Edge,
    id: &ContainerId,
    port: u16,
    generation: Option<u64>,
) -> Result<(tokio::net::TcpStream, String), (ErrorCode, String)> {
    let port = check_port(port)?;
    let Some(copy) = edge.serving(id) else {
        return Err((
            ErrorCode::NotFound,
            format!("this machine does not run container {id}"),
        ));
    };
    if let Some(expected) = generation
        && expected != copy.generation
    {
        return Err((
            ErrorCode::Conflict,
            format!(
                "this machine runs generation {} of {}, not {expected}",
                copy.generation, copy.name
            ),
        ));
    }
    let Some(runtime_id) = copy.runtime_id else {
        return Err((
            ErrorCode::Conflict,
            format!("{} is starting on this machine", copy.name),
        ));
    };
    match edge.runtime.connect(&runtime_id, port).await {
        Ok(tcp) => Ok((tcp, copy.name)),
        Err(RuntimeError::NothingListens { .. }) => Err((
            ErrorCode::NothingListens,
            format!("nothing listens on port {port} in {}", copy.name),
        )),
        Err(RuntimeError::NotRunning { .. } | RuntimeError::NotFound { .. }) => Err((
            ErrorCode::Conflict,
            format!("{} is not running on this machine", copy.name),
        )),
        Err(e) => Err((
            ErrorCode::Unavailable,
            format!("cannot connect to port {port} in {}: {e}", copy.name),
        )),
    }
}

/// Carries a port channel the server asked for, on the socket dialled back to it. The
/// server tells this channel of moves itself (it splices the socket), so nothing here
/// registers.
pub async fn carry_port<T, K>(edge: &Edge, id: &ContainerId, port: u16, stream: T, mut sink: K)
where
    T: Stream<Item = Frame> + Unpin,
    K: Sink<Frame> + Unpin,
{
    match connect_own(edge, id, port, None).await {
        Ok((tcp, name)) => {
            let what = format!("port {port} in {name}");
            relay_port(stream, sink, tcp, futures::stream::pending(), &what).await;
        }
        Err((code, error)) => port_error(&mut sink, code, error).await,
    }
}

/// Serves local channels on `listener` until the agent stops.
pub async fn serve_local(edge: std::sync::Arc<Edge>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let edge = edge.clone();
                tokio::spawn(async move {
                    if let Err(e) = local_connection(&edge, stream).await {
                        tracing::debug!(error = %format!("{e:#}"), "local channel ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "the local socket failed to accept");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Reads one line (without its newline), at most [`MAX_LINE`] bytes. The caller sends
/// nothing after its request until it has the answer, so nothing is read past it.
async fn read_line(stream: &mut UnixStream) -> anyhow::Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if stream.read(&mut byte).await? == 0 {
            bail!("the caller closed before its request ended");
        }
        if byte[0] == b'\n' {
            return Ok(line);
        }
        if line.len() == MAX_LINE {
            bail!("a request longer than {MAX_LINE} bytes");
        }
        line.push(byte[0]);
    }
}

async fn send_line(stream: &mut UnixStream, control: &PortControl) -> io::Result<()> {
    let mut line = control.to_text().into_bytes();
    line.push(b'\n');
    stream.write_all(&line).await
}

/// Sends the `connected` line with `tcp` attached to it.
async fn send_connected(stream: &mut UnixStream, tcp: &TcpStream) -> io::Result<()> {
    let mut line = PortControl::Connected.to_text().into_bytes();
    line.push(b'\n');
    let fds = [tcp.as_fd()];
    let sent = loop {
        stream.writable().await?;
        let attempt = stream.try_io(Interest::WRITABLE, || {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
                return Err(io::Error::other("no room for the descriptor"));
            }
            rustix::net::sendmsg(
                stream.as_fd(),
                &[io::IoSlice::new(&line)],
                &mut control,
                SendFlags::NOSIGNAL,
            )
            .map_err(io::Error::from)
        });
        match attempt {
            Ok(sent) => break sent,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    };
    // The descriptor went with the first byte; the rest of the line is plain bytes.
    stream.write_all(&line[sent..]).await
}

/// One connection on the local socket.
async fn local_connection(edge: &Edge, mut stream: UnixStream) -> anyhow::Result<()> {
    if !same_user(&stream)? {
        bail!("refusing a local connection from another user");
    }
    let line = tokio::time::timeout(Duration::from_secs(10), read_line(&mut stream))
        .await
        .context("no request within 10 s")??;
    let request = match parse_local_request(&line) {
        Ok(request) => request,
        Err((code, error)) => {
            send_line(&mut stream, &PortControl::Error { code, error }).await?;
            return Ok(());
        }
    };
    // Registered before the connection, so a move that starts now tells it too.
    let mut open = edge
        .local_channels
        .open(&request.container_id, Channel::Port { port: request.port });
    let tcp = match connect_own(
        edge,
        &request.container_id,
        request.port,
        request.generation,
    )
    .await
    {
        Ok((tcp, _)) => tcp,
        Err((code, error)) => {
            send_line(&mut stream, &PortControl::Error { code, error }).await?;
            return Ok(());
        }
    };
    send_connected(&mut stream, &tcp).await?;
    // The caller holds the connection now; ours closes, theirs stays.
    drop(tcp);
    let mut rest = [0u8; 64];
    loop {
        tokio::select! {
            notice = open.notices.recv() => match notice {
                Some(text) => send_line(&mut stream, &PortControl::Notice { text }).await?,
                None => return Ok(()),
            },
            // The caller sends nothing more: anything, or the end, closes the channel.
            _ = stream.read(&mut rest) => return Ok(()),
        }
    }
}

/// A port channel opened through the local agent: the TCP connection inside the
/// container, and the agent's connection that carries notices while it lives.
pub struct LocalChannel {
    pub tcp: TcpStream,
    pub notices: LocalNotices,
}

/// The notices the local agent sends on a channel; dropping it closes the channel's
/// registration at the agent.
pub struct LocalNotices {
    control: UnixStream,
    /// Bytes read from `control` past the answer line.
    pending: Vec<u8>,
}

/// Receives bytes and at most one descriptor from the agent.
async fn receive(stream: &UnixStream, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    loop {
        stream.readable().await?;
        let attempt = stream.try_io(Interest::READABLE, || {
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let received = rustix::net::recvmsg(
                stream.as_fd(),
                &mut [io::IoSliceMut::new(buf)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )
            .map_err(io::Error::from)?;
            let mut fd = None;
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(fds) = message {
                    // One is expected; any others are closed as they drop.
                    for received in fds {
                        fd.get_or_insert(received);
                    }
                }
            }
            Ok((received.bytes, fd))
        });
        match attempt {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

/// Asks the local agent at `socket` for a connection and reads its answer: the channel,
/// or the agent's error code and sentence (`None` for a code when the agent could not be
/// asked at all).
pub async fn open_local(
    socket: &Path,
    request: &LocalRequest,
) -> Result<LocalChannel, (Option<ErrorCode>, String)> {
    let failed = |e: &dyn std::fmt::Display| (None, format!("the local agent: {e}"));
    let mut control = connect_local(socket).await.map_err(|e| failed(&e))?;
    let mut line = serde_json::to_vec(request).map_err(|e| failed(&e))?;
    line.push(b'\n');
    control.write_all(&line).await.map_err(|e| failed(&e))?;
    let mut answer = Vec::new();
    let mut fd = None;
    let mut buf = [0u8; 512];
    let end = loop {
        let (n, received) = receive(&control, &mut buf).await.map_err(|e| failed(&e))?;
        if n == 0 {
            return Err(failed(&"closed without an answer"));
        }
        if fd.is_none() {
            fd = received;
        }
        answer.extend_from_slice(&buf[..n]);
        if let Some(end) = answer.iter().position(|b| *b == b'\n') {
            break end;
        }
        if answer.len() > MAX_LINE {
            return Err(failed(&"an answer that does not end"));
        }
    };
    let pending = answer.split_off(end + 1);
    match serde_json::from_slice::<PortControl>(&answer[..end]) {
        Ok(PortControl::Connected) => {
            let fd = fd.ok_or_else(|| failed(&"connected without a connection"))?;
            let tcp = std::net::TcpStream::from(fd);
            tcp.set_nonblocking(true).map_err(|e| failed(&e))?;
            let tcp = TcpStream::from_std(tcp).map_err(|e| failed(&e))?;
            Ok(LocalChannel {
                tcp,
                notices: LocalNotices { control, pending },
            })
        }
        Ok(PortControl::Error { code, error }) => Err((Some(code), error)),
        Ok(other) => Err(failed(&format!("unexpected answer {other:?}"))),
        Err(e) => Err(failed(&e)),
    }
}

/// How much a splice moves at most (the pipe between the sockets is made this large
/// when the system allows).
const SPLICE_PIPE: usize = 1 << 20;

/// Moves the bytes of one direction, `from` to `to`, through a pipe with `splice(2)`, so
/// they never enter this process; at `from`'s end, ends `to`'s writing side.
async fn splice_one(from: &TcpStream, to: &TcpStream) -> io::Result<()> {
    use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_getpipe_size, fcntl_setpipe_size, splice};
    let (pipe_out, pipe_in) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    let _ = fcntl_setpipe_size(&pipe_in, SPLICE_PIPE);
    let chunk = fcntl_getpipe_size(&pipe_in).unwrap_or(64 << 10);
    let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
    loop {
        let filled = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                splice(from, None, &pipe_in, None, chunk, flags).map_err(io::Error::from)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if filled == 0 {
            return match rustix::net::shutdown(to, rustix::net::Shutdown::Write) {
                Ok(()) => Ok(()),
                // The other side is gone already: nothing is left to end.
                Err(rustix::io::Errno::NOTCONN) => Ok(()),
                Err(e) => Err(e.into()),
            };
        }
        let mut left = filled;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                splice(&pipe_out, None, to, None, left, flags).map_err(io::Error::from)
            }) {
                Ok(n) => left -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Moves bytes both ways between two TCP connections of this machine until both
/// directions ended (each end passed on as a half-close) or either failed, without
/// copying them through this process.
pub async fn splice_both(a: &TcpStream, b: &TcpStream) -> io::Result<()> {
    tokio::try_join!(splice_one(a, b), splice_one(b, a)).map(|_| ())
}

impl LocalNotices {
    /// The next notice the agent sends; `None` once the agent closed.
    pub async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                if let Ok(PortControl::Notice { text }) =
                    serde_json::from_slice::<PortControl>(&line[..end])
                {
                    return Some(text);
                }
                continue;
            }
            if self.pending.len() > MAX_LINE {
                return None;
            }
            let mut buf = [0u8; 512];
            match self.control.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_request_names_a_valid_container_and_port() {
        let ok =
            parse_local_request(br#"{"container_id":"0123456789ab","port":8080,"generation":4}"#)
                .unwrap();
        assert_eq!(ok.container_id.as_str(), "0123456789ab");
        assert_eq!((ok.port, ok.generation), (8080, Some(4)));
        let plain = parse_local_request(br#"{"container_id":"0123456789ab","port":1}"#).unwrap();
        assert_eq!((plain.port, plain.generation), (1, None));
        for bad in [
            r#"{"container_id":"0123456789ab","port":0}"#,
            r#"{"container_id":"0123456789ab","port":70000}"#,
            r#"{"container_id":"0123456789ab","port":-1}"#,
            r#"{"container_id":"../../etc","port":80}"#,
            r#"{"container_id":"0123456789ab","port":80,"host":"10.0.0.1"}"#,
            r#"{"container_id":"0123456789ab"}"#,
            "GET / HTTP/1.1",
        ] {
            let (code, _) = parse_local_request(bad.as_bytes()).unwrap_err();
            assert_eq!(code, ErrorCode::BadRequest, "{bad}");
        }
    }

    /// The agent's half of a local exchange over a real socket pair: the answer carries
    /// the connection itself, which the caller then uses, and notices follow as lines.
    #[tokio::test]
    async fn the_connected_answer_hands_over_the_connection_and_notices_follow() {
        let dir = tempfile::tempdir().unwrap();
        let (listener, socket) = bind_local(dir.path()).unwrap();
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let program = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = program.local_addr().unwrap();
        let agent = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let line = read_line(&mut stream).await.unwrap();
            let request = parse_local_request(&line).unwrap();
            assert_eq!(request.port, 8080);
            let tcp = TcpStream::connect(address).await.unwrap();
            send_connected(&mut stream, &tcp).await.unwrap();
            drop(tcp);
            let notice = PortControl::Notice {
                text: "box moves".into(),
            };
            send_line(&mut stream, &notice).await.unwrap();
            stream
        });
        let request = LocalRequest {
            container_id: ContainerId::parse("0123456789ab").unwrap(),
            port: 8080,
            generation: Some(2),
        };
        let mut channel = open_local(&socket, &request).await.unwrap();
        let (mut accepted, _) = program.accept().await.unwrap();
        channel.tcp.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        accepted.read_exact(&mut got).await.unwrap();
        assert_eq!(
            &got, b"ping",
            "the handed-over connection reaches the program"
        );
        assert_eq!(channel.notices.next().await.as_deref(), Some("box moves"));
        drop(agent.await.unwrap());
        assert_eq!(channel.notices.next().await, None, "the agent closed");
    }

    #[tokio::test]
    async fn spliced_connections_carry_both_directions_and_their_ends() {
        use tokio::net::TcpListener;
        async fn pair() -> (TcpStream, TcpStream) {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let client = TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let (server, _) = listener.accept().await.unwrap();
            (client, server)
        }
        // user <-> (a  splice  b) <-> program
        let (mut user, a) = pair().await;
        let (b, mut program) = pair().await;
        let spliced = tokio::spawn(async move { splice_both(&a, &b).await });
        let big: Vec<u8> = (0..5_000_000u32).map(|i| (i % 253) as u8).collect();
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            user.write_all(&sent).await.unwrap();
            user.shutdown().await.unwrap();
            let mut answer = Vec::new();
            user.read_to_end(&mut answer).await.unwrap();
            answer
        });
        let mut request = Vec::new();
        program.read_to_end(&mut request).await.unwrap();
        assert!(request == big, "every byte crossed, in order");
        program.write_all(b"done").await.unwrap();
        program.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"done");
        spliced.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn an_error_answer_keeps_its_code() {
        let dir = tempfile::tempdir().unwrap();
        let (listener, socket) = bind_local(dir.path()).unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let _ = read_line(&mut stream).await.unwrap();
            let error = PortControl::Error {
                code: ErrorCode::NothingListens,
                error: "nothing listens on port 8080 in box".into(),
            };
            send_line(&mut stream, &error).await.unwrap();
        });
        let request = LocalRequest {
            container_id: ContainerId::parse("0123456789ab").unwrap(),
            port: 8080,
            generation: None,
        };
        let Err((code, error)) = open_local(&socket, &request).await else {
            panic!("an error answer opened a channel");
        };
        assert_eq!(code, Some(ErrorCode::NothingListens));
        assert_eq!(error, "nothing listens on port 8080 in box");
    }

    #[test]
    fn the_record_of_the_local_agent_sits_beside_its_config() {
        assert_eq!(
            rendezvous_path(Path::new("/home/a/.config/offload/config.toml")),
            PathBuf::from("/home/a/.config/offload/config.agent.json")
        );
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("alice.toml");
        let client = ClientConfig {
            server: "https://127.0.0.1:7443".to_owned(),
            user: "alice".to_owned(),
            admin: false,
            token: "t".to_owned(),
            ca_pem: String::new(),
        };
        let socket = dir.path().join("agent.sock");
        std::fs::write(&socket, b"").unwrap();
        let agent = LocalAgent {
            socket: socket.clone(),
            server: client.server.clone(),
            user: "alice".to_owned(),
            pid: 1,
        };
        agent.write(&config).unwrap();
        let mode = std::fs::metadata(rendezvous_path(&config))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(LocalAgent::find(&config, &client), Some(agent.clone()));
        // Another user's or another server's config does not use it.
        let bob = ClientConfig {
            user: "bob".to_owned(),
            ..client.clone()
        };
        assert_eq!(LocalAgent::find(&config, &bob), None);
        let elsewhere = ClientConfig {
            server: "https://other:7443".to_owned(),
            ..client.clone()
        };
        assert_eq!(LocalAgent::find(&config, &elsewhere), None);
        // Nor does a record whose socket is gone.
        std::fs::remove_file(&socket).unwrap();
        assert_eq!(LocalAgent::find(&config, &client), None);
    }
}
