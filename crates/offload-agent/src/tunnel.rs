//! The edge's side of port channels: a TCP connection to `127.0.0.1:PORT` inside one of
//! this agent's own containers, carried on a socket the server asked it to dial back, or
//! on the agent's local socket, which `offload port-forward` on the same machine uses so
//! that the traffic never leaves the machine.
//!
//! The local socket (`agent.sock` in the agent's 0700 data directory) speaks the server's
//! port protocol: a WebSocket upgrade of `GET /v1/containers/{id}/ports/{port}` (with
//! `?generation=G`, the copy the caller expects), then `PortControl` text frames and
//! binary frames with the bytes. Only the agent's own user (and root) may connect: the
//! directory's mode says so and the peer's credentials are checked. The agent records
//! where it listens beside the client config it runs with ([`LocalAgent`]), so the CLI
//! that uses the same config finds it.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use futures::{Sink, SinkExt, Stream, StreamExt};
use offload_core::ContainerId;
use offload_core::agent::Channel;
use offload_core::api::{ErrorCode, PortControl};
use offload_runtime::RuntimeError;
use offload_runtime::channels::OpenChannel;
use offload_runtime::relay::{Frame, port_error, relay_port};
use serde::{Deserialize, Serialize};
use tokio::net::{UnixListener, UnixStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::client::ClientConfig;
use crate::edge::Edge;

/// The local socket's name in the agent's data directory.
pub const LOCAL_SOCKET: &str = "agent.sock";

/// Largest message on the local socket: binary frames carry at most 64 KiB.
const MAX_LOCAL_MESSAGE: usize = 4 << 20;

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

/// What a local request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRequest {
    pub container_id: ContainerId,
    pub port: u16,
    /// The generation the caller expects this agent to run.
    pub generation: Option<u64>,
}

/// Parses `/v1/containers/{id}/ports/{port}[?generation=G]`; anything else is refused.
pub fn parse_local_request(path_and_query: &str) -> Result<LocalRequest, (ErrorCode, String)> {
    let bad = |what: &str| (ErrorCode::BadRequest, what.to_owned());
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    let rest = path
        .strip_prefix("/v1/containers/")
        .ok_or_else(|| bad("this socket serves /v1/containers/{id}/ports/{port} only"))?;
    let (id, port) = rest
        .split_once("/ports/")
        .ok_or_else(|| bad("this socket serves /v1/containers/{id}/ports/{port} only"))?;
    let container_id =
        ContainerId::parse(id).map_err(|e| (ErrorCode::BadRequest, e.to_string()))?;
    let digits = !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
    let port = match port.parse::<u16>() {
        Ok(port) if digits => check_port(port)?,
        _ => return Err(bad("port must be a number in 1-65535")),
    };
    let generation = match query {
        None => None,
        Some(query) => match query.strip_prefix("generation=") {
            Some(g) => Some(g.parse::<u64>().map_err(|_| bad("invalid generation"))?),
            None => return Err(bad("the only query is generation=G")),
        },
    };
    Ok(LocalRequest {
        container_id,
        port,
        generation,
    })
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
    let Some(copy) = edge.serving(id.as_str()) else {
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
pub async fn serve_local(edge: Arc<Edge>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let edge = edge.clone();
                tokio::spawn(async move {
                    if let Err(e) = local_connection(&edge, stream).await {
                        tracing::debug!(error = %e, "local channel ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "the local socket failed to accept");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
    }
}

fn to_frame(message: Message) -> Option<Frame> {
    match message {
        Message::Text(text) => Some(Frame::Text(text.to_string())),
        Message::Binary(data) => Some(Frame::Binary(data.into())),
        Message::Close(_) => Some(Frame::Close),
        _ => None,
    }
}

fn from_frame(frame: Frame) -> Message {
    match frame {
        Frame::Text(text) => Message::Text(text.into()),
        Frame::Binary(data) => Message::Binary(data.into()),
        Frame::Close => Message::Close(None),
    }
}

/// One connection on the local socket.
async fn local_connection(edge: &Edge, stream: UnixStream) -> anyhow::Result<()> {
    if !same_user(&stream)? {
        bail!("refusing a local connection from another user");
    }
    let asked = Arc::new(Mutex::new(String::new()));
    let record = asked.clone();
    let callback = move |request: &Request, response: Response| {
        let path = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        *record.lock().unwrap_or_else(|p| p.into_inner()) = path;
        Ok(response)
    };
    let config = WebSocketConfig::default().max_message_size(Some(MAX_LOCAL_MESSAGE));
    let socket = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)),
    )
    .await
    .context("no WebSocket handshake within 10 s")??;
    let path = asked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let (sink, stream) = socket.split();
    let stream = stream.filter_map(|m| async move { m.ok().and_then(to_frame) });
    let mut sink = Box::pin(sink.with(|f: Frame| async move {
        Ok::<_, tokio_tungstenite::tungstenite::Error>(from_frame(f))
    }));
    let request = match parse_local_request(&path) {
        Ok(request) => request,
        Err((code, error)) => {
            port_error(&mut sink, code, error).await;
            return Ok(());
        }
    };
    // Registered before the connection, so a move that starts now tells it too.
    let mut open: OpenChannel = edge
        .local_channels
        .open(&request.container_id, Channel::Port { port: request.port });
    match connect_own(
        edge,
        &request.container_id,
        request.port,
        request.generation,
    )
    .await
    {
        Ok((tcp, name)) => {
            let what = format!("port {} in {name}", request.port);
            relay_port(Box::pin(stream), sink, tcp, open.notice_stream(), &what).await;
        }
        Err((code, error)) => port_error(&mut sink, code, error).await,
    }
    Ok(())
}

/// Says what a local port channel answered before its bytes, for the CLI: `Ok` once the
/// connection inside the container is open.
pub async fn await_connected<T>(stream: &mut T) -> Result<(), (ErrorCode, String)>
where
    T: Stream<Item = Frame> + Unpin,
{
    loop {
        match stream.next().await {
            Some(Frame::Text(text)) => match serde_json::from_str::<PortControl>(&text) {
                Ok(PortControl::Connected) => return Ok(()),
                Ok(PortControl::Error { code, error }) => return Err((code, error)),
                Ok(_) | Err(_) => {}
            },
            Some(Frame::Binary(_)) => {
                return Err((
                    ErrorCode::Unknown,
                    "the other side sent bytes before the connection was open".to_owned(),
                ));
            }
            Some(Frame::Close) | None => {
                return Err((
                    ErrorCode::Unavailable,
                    "the channel closed before the connection was open".to_owned(),
                ));
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
            parse_local_request("/v1/containers/0123456789ab/ports/8080?generation=4").unwrap();
        assert_eq!(ok.container_id.as_str(), "0123456789ab");
        assert_eq!((ok.port, ok.generation), (8080, Some(4)));
        let plain = parse_local_request("/v1/containers/0123456789ab/ports/1").unwrap();
        assert_eq!((plain.port, plain.generation), (1, None));
        for bad in [
            "/v1/containers/0123456789ab/ports/0",
            "/v1/containers/0123456789ab/ports/70000",
            "/v1/containers/0123456789ab/ports/+80",
            "/v1/containers/0123456789ab/ports/",
            "/v1/containers/../ports/80",
            "/v1/containers/0123456789ab/exec",
            "/v1/containers/0123456789ab/ports/80?generation=x",
            "/v1/containers/0123456789ab/ports/80?host=10.0.0.1",
            "/etc/passwd",
        ] {
            let (code, _) = parse_local_request(bad).unwrap_err();
            assert_eq!(code, ErrorCode::BadRequest, "{bad}");
        }
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
