//! `offload port-forward ID [LOCAL:]REMOTE...`: local ports forwarded to ports in a
//! container, wherever it runs, following it across moves, agent restarts and reconnects.
//!
//! Each local port listens on 127.0.0.1 for as long as the command runs and never
//! changes. Every accepted connection opens its own channel to the container: through
//! the agent's local socket when the container runs at the edge on this machine (the
//! bytes never leave it), else through the server's `/v1/containers/{id}/ports/{port}`.
//! While the container is moving, or its agent is away, a new connection waits (up to
//! `--wait`) and then reaches the container where it runs; bytes the local program sent
//! meanwhile wait in the socket, unread. A connection that a move cuts is closed.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Sink, SinkExt, Stream, StreamExt};
use offload_agent::client::{Api, CallError};
use offload_agent::tunnel::{LocalAgent, LocalChannel, LocalRequest, open_local, splice_both};
use offload_core::api::{ContainerView, ErrorCode};
use offload_core::{Location, State};
use offload_runtime::relay::{Frame, PortEnd, await_connected, pump_port};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::Message;

use crate::shell::urlencode;

/// One forward as the user wrote it: `REMOTE` or `LOCAL:REMOTE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSpec {
    /// 0 picks a free port.
    pub local: u16,
    pub remote: u16,
}

fn port_number(text: &str) -> Option<u16> {
    let digits = !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit());
    digits.then(|| text.parse::<u16>().ok()).flatten()
}

/// Parses `[LOCAL:]REMOTE`: REMOTE in 1–65535, LOCAL in 0–65535 (0 picks a free one).
pub fn parse_spec(text: &str) -> Result<PortSpec, String> {
    let (local, remote) = match text.split_once(':') {
        Some((local, remote)) => (Some(local), remote),
        None => (None, text),
    };
    let remote = port_number(remote).filter(|p| *p > 0).ok_or_else(|| {
        format!("the container's port must be a number in 1-65535, not {remote:?}")
    })?;
    let local = match local {
        None => remote,
        Some(local) => port_number(local).ok_or_else(|| {
            format!(
                "the local port must be a number in 0-65535 (0 picks a free one), not {local:?}"
            )
        })?,
    };
    Ok(PortSpec { local, remote })
}

/// How often the container's record is read while nothing happens.
const POLL: Duration = Duration::from_secs(1);
/// How long a waiting connection sleeps between attempts.
const RETRY: Duration = Duration::from_millis(200);
/// After a move, how long "nothing listens" is taken for a program still starting.
const STARTING_GRACE: Duration = Duration::from_secs(5);
/// How long a move counts as recent for that.
const RECENT_MOVE: Duration = Duration::from_secs(10);
/// How long the other end may take to report the connection open: the server waits up
/// to 15 s for an agent to dial back and 5 s for the connection inside the container.
const OPEN_TIMEOUT: Duration = Duration::from_secs(25);
/// The same sentence is printed at most this often.
const SAY_AGAIN: Duration = Duration::from_secs(5);

type FrameStream = Pin<Box<dyn Stream<Item = Frame> + Send>>;
type FrameSink = Pin<Box<dyn Sink<Frame, Error = tungstenite::Error> + Send>>;

/// An open channel to a port in the container, through the server.
struct Channel {
    stream: FrameStream,
    sink: FrameSink,
}

/// A channel that is open: framed through the server, or the container's connection
/// itself, handed over by this machine's agent.
enum Opened {
    Server(Channel),
    Local(LocalChannel),
}

fn to_frame(message: Message) -> Option<Frame> {
    match message {
        Message::Text(text) => Some(Frame::Text(text.to_string())),
        Message::Binary(data) => Some(Frame::Binary(data)),
        Message::Close(_) => Some(Frame::Close),
        _ => None,
    }
}

fn from_frame(frame: Frame) -> Message {
    match frame {
        Frame::Text(text) => Message::Text(text.into()),
        Frame::Binary(data) => Message::Binary(data),
        Frame::Ping => Message::Ping(Default::default()),
        Frame::Close => Message::Close(None),
    }
}

fn channel_of<S>(socket: tokio_tungstenite::WebSocketStream<S>) -> Channel
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sink, stream) = socket.split();
    Channel {
        stream: Box::pin(stream.filter_map(|m| async move { m.ok().and_then(to_frame) })),
        sink: Box::pin(sink.with(|f: Frame| async move { Ok(from_frame(f)) })),
    }
}

/// Why a channel did not open.
enum Failure {
    /// The container cannot be reached now but may soon be (moving, agent away, server
    /// restarting): the connection waits.
    Wait(String),
    /// Nothing listens on the port: final, unless the container has just moved and its
    /// program may still be starting.
    NothingListens(String),
    /// Final: the connection is closed with this sentence.
    Fatal(String),
}

/// What the forward knows of the container.
#[derive(Debug, Clone)]
struct Snapshot {
    location: Location,
    state: State,
    generation: u64,
    /// When this process saw it arrive somewhere (a generation or location change).
    moved_at: Option<Instant>,
}

struct Forward {
    api: Api,
    config_path: PathBuf,
    id: String,
    name: String,
    wait: Duration,
    snapshot: Mutex<Snapshot>,
    /// The container was removed: the forward ends.
    gone: tokio::sync::watch::Sender<bool>,
    said: Mutex<HashMap<String, Instant>>,
    /// The generation whose copy this machine's agent was last seen to carry, so the user
    /// is told once per arrival that the bytes no longer pass through the server.
    local_generation: Mutex<Option<u64>>,
}

impl Forward {
    fn snapshot(&self) -> Snapshot {
        self.snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Prints a sentence on stderr, once per [`SAY_AGAIN`] however many connections say it.
    fn say(&self, text: &str) {
        let mut said = self.said.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        said.retain(|_, at| now.duration_since(*at) < SAY_AGAIN);
        if said.insert(text.to_owned(), now).is_none() {
            eprintln!("offload port-forward: {text}");
        }
    }

    /// Says once per generation that the container runs on this machine, once a
    /// connection went through the local agent.
    fn arrived_here(&self, generation: u64) {
        let mut seen = self
            .local_generation
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if seen.replace(generation) != Some(generation) {
            eprintln!(
                "offload port-forward: {} runs on this machine now; its connections stay on this machine",
                self.name
            );
        }
    }

    /// Reads the container's record again. A server that cannot be reached leaves the
    /// last snapshot in place.
    async fn refresh(&self) {
        let path = format!("/v1/containers/{}", urlencode(&self.id));
        let view = match tokio::time::timeout(
            Duration::from_secs(5),
            self.api.get::<ContainerView>(&path),
        )
        .await
        {
            Ok(Ok(view)) => view,
            Ok(Err(e)) if e.code() == Some(ErrorCode::NotFound) => {
                let _ = self.gone.send(true);
                return;
            }
            Ok(Err(_)) | Err(_) => return,
        };
        let mut snapshot = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        let arrived = view.generation != snapshot.generation || view.location != snapshot.location;
        *snapshot = Snapshot {
            location: view.location,
            state: view.state,
            generation: view.generation,
            moved_at: if arrived {
                Some(Instant::now())
            } else {
                snapshot.moved_at
            },
        };
    }

    /// What a refusal (its code, if the other side gave one, and its sentence) means for
    /// a waiting connection.
    async fn judge(&self, code: Option<ErrorCode>, error: String) -> Failure {
        match code {
            Some(ErrorCode::NothingListens) => Failure::NothingListens(error),
            Some(ErrorCode::Conflict) => {
                // Moving (wait) or stopped (give up): the record says which.
                self.refresh().await;
                match self.snapshot().state {
                    State::Stopped | State::Failed | State::Missing => Failure::Fatal(error),
                    _ => Failure::Wait(error),
                }
            }
            None | Some(ErrorCode::Unavailable) => Failure::Wait(error),
            Some(_) => Failure::Fatal(error),
        }
    }

    /// Opens a channel through the agent's local socket, when the container runs at the
    /// edge of this machine's agent.
    async fn open_local(
        &self,
        agent: &LocalAgent,
        port: u16,
        generation: u64,
    ) -> Result<LocalChannel, (Option<ErrorCode>, String)> {
        let container_id = offload_core::ContainerId::parse(&self.id)
            .map_err(|e| (None, format!("the container's id: {e}")))?;
        let request = LocalRequest {
            container_id,
            port,
            generation: Some(generation),
        };
        match tokio::time::timeout(OPEN_TIMEOUT, open_local(&agent.socket, &request)).await {
            Ok(result) => result,
            Err(_) => Err((None, "the local agent did not answer".to_owned())),
        }
    }

    /// Opens a channel through the server.
    async fn open_server(&self, port: u16) -> Result<Channel, (Option<ErrorCode>, String)> {
        let path = format!("/v1/containers/{}/ports/{port}", urlencode(&self.id));
        let socket = match self.api.websocket_call(&path).await {
            Ok(socket) => socket,
            Err(e @ CallError::Api { .. }) => return Err((e.code(), e.to_string())),
            Err(e) => return Err((None, e.to_string())),
        };
        let mut channel = channel_of(socket);
        match tokio::time::timeout(OPEN_TIMEOUT, await_connected(&mut channel.stream)).await {
            Ok(Ok(())) => Ok(channel),
            Ok(Err((code, error))) => Err((Some(code), error)),
            Err(_) => Err((
                None,
                format!(
                    "the connection to port {port} in {} did not open within {} s",
                    self.name,
                    OPEN_TIMEOUT.as_secs()
                ),
            )),
        }
    }

    async fn open(&self, port: u16, snapshot: &Snapshot) -> Result<Opened, Failure> {
        if snapshot.location == Location::Edge
            && let Some(agent) = LocalAgent::find(&self.config_path, &self.api.config)
        {
            match self.open_local(&agent, port, snapshot.generation).await {
                Ok(channel) => {
                    self.arrived_here(snapshot.generation);
                    return Ok(Opened::Local(channel));
                }
                Err((Some(ErrorCode::NothingListens), error)) => {
                    return Err(Failure::NothingListens(error));
                }
                // This machine's agent does not run that copy (now): the server knows
                // where it runs.
                Err((code, error)) => {
                    tracing::debug!(?code, %error, "the local agent cannot carry it");
                }
            }
        }
        match self.open_server(port).await {
            Ok(channel) => Ok(Opened::Server(channel)),
            Err((code, error)) => Err(self.judge(code, error).await),
        }
    }

    /// Serves one accepted connection to `port` in the container.
    async fn connection(self: Arc<Self>, local: TcpStream, port: u16) {
        let deadline = Instant::now() + self.wait;
        let mut waited = false;
        let mut nothing_since: Option<Instant> = None;
        let channel = loop {
            let snapshot = self.snapshot();
            let why = match self.open(port, &snapshot).await {
                Ok(channel) => break channel,
                Err(Failure::Fatal(why)) => {
                    self.say(&why);
                    return;
                }
                Err(Failure::Wait(why)) => {
                    if !waited {
                        self.say(&format!(
                            "{why}; new connections to port {port} wait up to {} s",
                            self.wait.as_secs()
                        ));
                    }
                    waited = true;
                    why
                }
                Err(Failure::NothingListens(why)) => {
                    let moved = waited
                        || snapshot
                            .moved_at
                            .is_some_and(|at| at.elapsed() < RECENT_MOVE);
                    let first = *nothing_since.get_or_insert_with(Instant::now);
                    if !moved || first.elapsed() >= STARTING_GRACE {
                        self.say(&why);
                        return;
                    }
                    why
                }
            };
            if Instant::now() >= deadline {
                self.say(&format!(
                    "gave up on a connection to port {port} after {} s: {why}",
                    self.wait.as_secs()
                ));
                return;
            }
            tokio::time::sleep(RETRY).await;
            self.refresh().await;
        };
        self.pipe(channel, local).await;
    }

    /// Carries the bytes of an open channel until either side ends it.
    async fn pipe(&self, opened: Opened, local: TcpStream) {
        let mut channel = match opened {
            Opened::Server(channel) => channel,
            Opened::Local(LocalChannel { tcp, mut notices }) => {
                // Two sockets of this machine: the bytes go from one to the other in the
                // kernel, and an end or a reset on either side ends both.
                let copy = splice_both(&local, &tcp);
                let told = async {
                    while let Some(text) = notices.next().await {
                        self.say(&text);
                    }
                    std::future::pending::<()>().await
                };
                tokio::select! {
                    _ = copy => {}
                    _ = told => {}
                }
                return;
            }
        };
        let end = pump_port(
            &mut channel.stream,
            &mut channel.sink,
            local,
            futures::stream::pending(),
            |text| self.say(&text),
        )
        .await;
        match end {
            PortEnd::Done | PortEnd::TcpFailed(_) => {
                let _ = channel.sink.send(Frame::Close).await;
            }
            PortEnd::PeerError { error, .. } => self.say(&error),
            PortEnd::PeerClosed => {}
        }
    }
}

/// Runs the forwards until interrupted, or until the container is removed (exit 1).
pub async fn run(
    api: Api,
    config_path: PathBuf,
    id: &str,
    specs: &[PortSpec],
    wait: Duration,
) -> anyhow::Result<i32> {
    let view: ContainerView = api
        .get(&format!("/v1/containers/{}", urlencode(id)))
        .await?;
    // Every port listens before any is announced: a port that cannot listen fails the
    // whole command, and nothing is left half set up.
    let mut listeners = Vec::with_capacity(specs.len());
    for spec in specs {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, spec.local));
        let listener = TcpListener::bind(address)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {address}: {e}"))?;
        let bound = listener.local_addr()?;
        listeners.push((listener, bound, spec.remote));
    }
    for (_, bound, remote) in &listeners {
        println!("forwarding {bound} -> {}:{remote}", view.name);
    }
    let (gone, mut gone_rx) = tokio::sync::watch::channel(false);
    let forward = Arc::new(Forward {
        api,
        config_path,
        id: view.id.clone(),
        name: view.name.clone(),
        wait,
        snapshot: Mutex::new(Snapshot {
            location: view.location,
            state: view.state,
            generation: view.generation,
            moved_at: None,
        }),
        gone,
        said: Mutex::new(HashMap::new()),
        local_generation: Mutex::new(None),
    });
    for (listener, _, remote) in listeners {
        let forward = forward.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(forward.clone().connection(stream, remote));
                    }
                    Err(e) => {
                        // Out of descriptors, typically: the port stays, and so do we.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
    }
    let poller = forward.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(POLL).await;
            poller.refresh().await;
        }
    });
    tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(0),
        _ = gone_rx.wait_for(|gone| *gone) => {
            eprintln!("error: container {} no longer exists", view.name);
            Ok(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forward_is_remote_or_local_colon_remote() {
        assert_eq!(
            parse_spec("8080"),
            Ok(PortSpec {
                local: 8080,
                remote: 8080
            })
        );
        assert_eq!(
            parse_spec("9000:80"),
            Ok(PortSpec {
                local: 9000,
                remote: 80
            })
        );
        assert_eq!(
            parse_spec("0:65535"),
            Ok(PortSpec {
                local: 0,
                remote: 65535
            })
        );
        for bad in [
            "0", "70000", "65536", "-1", "", ":80", "80:", "1:2:3", "x", "0x50", "8080:0",
        ] {
            let err = parse_spec(bad).unwrap_err();
            assert!(err.contains("must be a number"), "{bad}: {err}");
        }
        assert!(parse_spec("70000").unwrap_err().contains("1-65535"));
        assert!(parse_spec("70000:80").unwrap_err().contains("0-65535"));
    }
}
