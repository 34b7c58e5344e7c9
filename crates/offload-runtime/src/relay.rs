//! The relays of user channels over a message socket: the exec relay (one command in a
//! container) and the port relay (one TCP connection into it).
//!
//! The server runs them for cloud containers (on the user's WebSocket) and the agent for
//! edge containers (on a WebSocket it dials back to the server, which splices the two, or
//! on its local socket). The protocols are in `offload_core::api`. Exec: the first text
//! frame is an `ExecRequest`, binary frames carry data tagged by stream, text frames carry
//! `ExecControl` messages, and the relay ends with `Exit { code }`. Port: binary frames
//! carry the TCP bytes both ways, text frames carry `PortControl` messages.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use offload_core::WORKSPACE_MOUNT;
use offload_core::agent::Channel;
use offload_core::api::{ErrorCode, ExecControl, ExecRequest, PortControl, exec_stream};
use offload_core::session::{check_session_env, signal_number};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{ContainerRuntime, ExecOutput, ExecSpec};

/// A WebSocket message, whichever WebSocket library carries it. Binary payloads are
/// `Bytes`, as both libraries' are, so a frame crosses from one socket to the other
/// without a copy.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Text(String),
    Binary(Bytes),
    /// A keepalive (a WebSocket ping; the library answers it). Receivers ignore it.
    Ping,
    Close,
}

/// How long a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request or control message.
const MAX_CONTROL: usize = 64 << 10;

async fn send_control<K: Sink<Frame> + Unpin>(sink: &mut K, control: &ExecControl) -> bool {
    let text = serde_json::to_string(control).unwrap_or_default();
    sink.send(Frame::Text(text)).await.is_ok()
}

/// Runs the exec protocol on `socket` against `runtime_id`, until the command ends or
/// the peer goes away.
pub async fn relay_exec<T, K>(
    mut stream: T,
    mut sink: K,
    runtime: Arc<dyn ContainerRuntime>,
    runtime_id: String,
) where
    T: Stream<Item = Frame> + Unpin + Send + 'static,
    K: Sink<Frame> + Unpin,
{
    let request = match tokio::time::timeout(REQUEST_TIMEOUT, stream.next()).await {
        Ok(Some(Frame::Text(text))) if text.len() <= MAX_CONTROL => {
            serde_json::from_str::<ExecRequest>(&text).map_err(|e| e.to_string())
        }
        _ => Err("expected an exec request as the first message".to_owned()),
    };
    let request = request.and_then(|r| {
        check_session_env(&r.env)?;
        Ok(r)
    });
    let request = match request {
        Ok(r) => r,
        Err(error) => {
            let control = ExecControl::Error {
                error: format!("invalid exec request: {error}"),
                code: offload_core::api::ErrorCode::BadRequest,
            };
            send_control(&mut sink, &control).await;
            let _ = sink.send(Frame::Close).await;
            return;
        }
    };
    let command = if request.command.is_empty() {
        vec!["/bin/sh".to_owned()]
    } else {
        request.command.clone()
    };
    let mut env = match (&request.term, request.tty) {
        (Some(term), true) if term.len() < 64 && term.bytes().all(|b| b.is_ascii_graphic()) => {
            vec![format!("TERM={term}")]
        }
        (_, true) => vec!["TERM=xterm".to_owned()],
        _ => Vec::new(),
    };
    env.extend(request.env.iter().cloned());
    let spec = ExecSpec {
        command,
        tty: request.tty,
        env,
        working_dir: Some(WORKSPACE_MOUNT.to_owned()),
    };
    let session = match runtime.exec(&runtime_id, &spec).await {
        Ok(s) => s,
        Err(e) => {
            let control = ExecControl::Error {
                error: e.to_string(),
                code: offload_core::api::ErrorCode::ExecFailed,
            };
            send_control(&mut sink, &control).await;
            let _ = sink.send(Frame::Close).await;
            return;
        }
    };
    let exec_id = session.exec_id.clone();
    if let (true, Some((cols, rows))) = (request.tty, request.size) {
        let _ = runtime.exec_resize(&exec_id, cols, rows).await;
    }

    // Input goes to the command on its own task, so a command that never reads its stdin
    // cannot stall its output.
    let mut input = session.input;
    let input_runtime = runtime.clone();
    let input_exec = exec_id.clone();
    let input_task = tokio::spawn(async move {
        while let Some(frame) = stream.next().await {
            match frame {
                Frame::Binary(data) => {
                    if data.first() == Some(&exec_stream::STDIN)
                        && input.write_all(&data[1..]).await.is_err()
                    {
                        break;
                    }
                    let _ = input.flush().await;
                }
                Frame::Text(text) => match serde_json::from_str::<ExecControl>(&text) {
                    Ok(ExecControl::Resize { cols, rows }) => {
                        let _ = input_runtime.exec_resize(&input_exec, cols, rows).await;
                    }
                    Ok(ExecControl::CloseStdin) => {
                        let _ = input.shutdown().await;
                    }
                    Ok(ExecControl::Signal { signal }) => {
                        if let Some(number) = signal_number(&signal)
                            && let Err(e) = input_runtime.exec_signal(&input_exec, number).await
                        {
                            tracing::warn!(error = %e, "cannot signal the command");
                        }
                    }
                    _ => {}
                },
                Frame::Ping => {}
                Frame::Close => break,
            }
        }
    });

    let mut output = session.output;
    let mut failure = None;
    while let Some(item) = output.next().await {
        let frame = match item {
            Ok(ExecOutput::Stdout(data)) => tagged(exec_stream::STDOUT, &data),
            Ok(ExecOutput::Stderr(data)) => tagged(exec_stream::STDERR, &data),
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        };
        if sink.send(Frame::Binary(frame)).await.is_err() {
            input_task.abort();
            return;
        }
    }
    input_task.abort();
    let control = match failure {
        Some(error) => ExecControl::Error {
            error,
            code: offload_core::api::ErrorCode::ExecFailed,
        },
        None => match exit_code(runtime.as_ref(), &exec_id).await {
            Some(code) => ExecControl::Exit { code },
            None => ExecControl::Error {
                error: "the engine did not report the command's exit code".into(),
                code: offload_core::api::ErrorCode::ExecFailed,
            },
        },
    };
    send_control(&mut sink, &control).await;
    let _ = sink.send(Frame::Close).await;
}

/// [`relay_exec`] with `notices` sent to the user as they come, as exec notice frames.
pub async fn relay_exec_with_notices<T, K, N>(
    stream: T,
    mut sink: K,
    runtime: Arc<dyn ContainerRuntime>,
    runtime_id: String,
    mut notices: N,
) where
    T: Stream<Item = Frame> + Unpin + Send + 'static,
    K: Sink<Frame> + Unpin,
    N: Stream<Item = String> + Unpin,
{
    let (tx, mut rx) = futures::channel::mpsc::unbounded::<Frame>();
    let relay = relay_exec(stream, tx, runtime, runtime_id);
    let forward = async {
        let mut notices_open = true;
        loop {
            tokio::select! {
                frame = rx.next() => match frame {
                    Some(frame) => {
                        if sink.send(frame).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
                notice = notices.next(), if notices_open => match notice {
                    Some(text) => {
                        if sink.send(notice_frame(Channel::Exec, &text)).await.is_err() {
                            break;
                        }
                    }
                    None => notices_open = false,
                },
            }
        }
    };
    // The relay ends by dropping its sender, which ends the forwarding after the last
    // frame; a user who went away ends the forwarding, and the relay sees its input end.
    tokio::join!(relay, forward);
}

/// A notice for the user, as the text frame of `channel`'s protocol.
pub fn notice_frame(channel: Channel, text: &str) -> Frame {
    let text = text.to_owned();
    Frame::Text(match channel {
        Channel::Exec => serde_json::to_string(&ExecControl::Notice { text }).unwrap_or_default(),
        Channel::Port { .. } => PortControl::Notice { text }.to_text(),
        Channel::Sftp => serde_json::to_string(&offload_core::api::SftpControl::Notice { text })
            .unwrap_or_default(),
        Channel::Logs { .. } => offload_core::api::LogsControl::Notice { text }.to_text(),
    })
}

/// How much a port relay reads from its TCP side at once: one binary frame at most.
pub const PORT_CHUNK: usize = 256 << 10;

/// How often a port relay pings its socket, so that a forwarded connection that carries
/// nothing for a while is not taken for a dead one by a proxy's or a load balancer's idle
/// timeout (nginx closes a silent proxied WebSocket after 60 s by default).
pub const PORT_PING: Duration = Duration::from_secs(20);

/// How a port relay ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortEnd {
    /// Both directions ended, each with an `eof`.
    Done,
    /// The frame socket closed or failed before both directions ended.
    PeerClosed,
    /// The other side reported an error.
    PeerError { code: ErrorCode, error: String },
    /// The TCP side failed (a reset: the container stopped, the local program crashed).
    TcpFailed(String),
}

enum Up {
    Eof,
    End(PortEnd),
}

/// Carries bytes between a frame socket (`stream`, `sink`) and a TCP connection `tcp`
/// until both directions ended or either side failed; `notices` are sent as notice frames
/// while bytes flow, and notices received go to `on_notice`. Does not close the socket:
/// the caller sends what the end calls for.
pub async fn pump_port<T, K, S, N>(
    stream: &mut T,
    sink: &mut K,
    tcp: S,
    mut notices: N,
    mut on_notice: impl FnMut(String),
) -> PortEnd
where
    T: Stream<Item = Frame> + Unpin,
    K: Sink<Frame> + Unpin,
    S: AsyncRead + AsyncWrite,
    N: Stream<Item = String> + Unpin,
{
    let (mut from_tcp, mut to_tcp) = tokio::io::split(tcp);
    // Frames to TCP.
    let up = async {
        loop {
            match stream.next().await {
                Some(Frame::Binary(data)) => {
                    if let Err(e) = to_tcp.write_all(&data).await {
                        return Up::End(PortEnd::TcpFailed(e.to_string()));
                    }
                }
                Some(Frame::Text(text)) => match serde_json::from_str::<PortControl>(&text) {
                    Ok(PortControl::Eof) => {
                        let _ = to_tcp.shutdown().await;
                        return Up::Eof;
                    }
                    Ok(PortControl::Notice { text }) => on_notice(text),
                    Ok(PortControl::Error { code, error }) => {
                        return Up::End(PortEnd::PeerError { code, error });
                    }
                    // A repeated `connected`, or a control of a newer peer.
                    Ok(PortControl::Connected) | Err(_) => {}
                },
                Some(Frame::Ping) => {}
                Some(Frame::Close) | None => return Up::End(PortEnd::PeerClosed),
            }
        }
    };
    // TCP to frames, and the notices. One buffer serves the direction: each read's bytes
    // are split off it as a frame, which the socket copies into its own buffer when it
    // takes the frame, so the next read reuses the same memory. The socket is flushed
    // only when no more bytes are waiting, not after every frame.
    let down = async {
        let mut notices_open = true;
        let mut buf = BytesMut::with_capacity(PORT_CHUNK);
        let mut unflushed = false;
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PORT_PING, PORT_PING);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // A notice goes out as soon as it comes, even while bytes keep flowing.
            if notices_open && let Some(notice) = notices.next().now_or_never() {
                match notice {
                    Some(text) => {
                        let frame = Frame::Text(PortControl::Notice { text }.to_text());
                        if sink.feed(frame).await.is_err() {
                            return Some(PortEnd::PeerClosed);
                        }
                        unflushed = true;
                    }
                    None => notices_open = false,
                }
            }
            buf.reserve(PORT_CHUNK);
            let read = match from_tcp.read_buf(&mut buf).now_or_never() {
                Some(read) => read,
                None => {
                    if unflushed {
                        if sink.flush().await.is_err() {
                            return Some(PortEnd::PeerClosed);
                        }
                        unflushed = false;
                    }
                    tokio::select! {
                        read = from_tcp.read_buf(&mut buf) => read,
                        notice = notices.next(), if notices_open => {
                            match notice {
                                Some(text) => {
                                    let frame = Frame::Text(PortControl::Notice { text }.to_text());
                                    if sink.send(frame).await.is_err() {
                                        return Some(PortEnd::PeerClosed);
                                    }
                                }
                                None => notices_open = false,
                            }
                            continue;
                        }
                        _ = ping.tick() => {
                            if sink.send(Frame::Ping).await.is_err() {
                                return Some(PortEnd::PeerClosed);
                            }
                            continue;
                        }
                    }
                }
            };
            match read {
                Ok(0) => {
                    let eof = Frame::Text(PortControl::Eof.to_text());
                    if sink.send(eof).await.is_err() {
                        return Some(PortEnd::PeerClosed);
                    }
                    return None;
                }
                Ok(_) => {
                    let frame = Frame::Binary(buf.split().freeze());
                    if sink.feed(frame).await.is_err() {
                        return Some(PortEnd::PeerClosed);
                    }
                    unflushed = true;
                }
                Err(e) => return Some(PortEnd::TcpFailed(e.to_string())),
            }
        }
    };
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    loop {
        tokio::select! {
            end = &mut up, if !up_done => match end {
                Up::Eof => up_done = true,
                Up::End(end) => return end,
            },
            end = &mut down, if !down_done => match end {
                None => down_done = true,
                Some(end) => return end,
            },
        }
        if up_done && down_done {
            return PortEnd::Done;
        }
    }
}

/// The client's side of a port channel before its bytes: `Ok` once the other end says
/// the connection inside the container is open, else its error (or why it ended).
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
            Some(Frame::Ping) => {}
            Some(Frame::Binary(_)) => {
                return Err((
                    ErrorCode::Unknown,
                    "the other end sent bytes before the connection was open".to_owned(),
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

/// Sends an error on a port socket and closes it.
pub async fn port_error<K: Sink<Frame> + Unpin>(sink: &mut K, code: ErrorCode, error: String) {
    let _ = sink
        .send(Frame::Text(PortControl::Error { code, error }.to_text()))
        .await;
    let _ = sink.send(Frame::Close).await;
}

/// The server's (or agent's) side of a port channel whose TCP connection inside the
/// container is open: `connected`, then the bytes both ways with `notices` sent as they
/// come, then the close. `what` names the connection in an error (`port 8080 in box`).
pub async fn relay_port<T, K, N>(
    mut stream: T,
    mut sink: K,
    tcp: tokio::net::TcpStream,
    notices: N,
    what: &str,
) where
    T: Stream<Item = Frame> + Unpin,
    K: Sink<Frame> + Unpin,
    N: Stream<Item = String> + Unpin,
{
    if sink
        .send(Frame::Text(PortControl::Connected.to_text()))
        .await
        .is_err()
    {
        return;
    }
    match pump_port(&mut stream, &mut sink, tcp, notices, |_| {}).await {
        PortEnd::TcpFailed(e) => {
            let error = format!("the connection to {what} failed: {e}");
            port_error(&mut sink, ErrorCode::Unavailable, error).await;
        }
        PortEnd::Done | PortEnd::PeerClosed | PortEnd::PeerError { .. } => {
            let _ = sink.send(Frame::Close).await;
        }
    }
}

fn tagged(stream: u8, data: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(data.len() + 1);
    frame.push(stream);
    frame.extend_from_slice(data);
    frame.into()
}

/// The engine may report an exec as running for a moment after its output closed.
async fn exit_code(runtime: &dyn ContainerRuntime, exec_id: &str) -> Option<i64> {
    for _ in 0..50 {
        match runtime.exec_exit_code(exec_id).await {
            Ok(Some(code)) => return Some(code),
            Ok(None) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(_) => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeRuntime;

    #[tokio::test]
    async fn relays_output_and_exit_code() {
        let fake = FakeRuntime::new();
        fake.add_image("img");
        let spec = crate::ContainerSpec {
            name: "c".into(),
            image: "img".into(),
            command: vec![],
            env: vec![],
            cpus: 1.0,
            memory_bytes: 1 << 20,
            workspace: "/tmp".into(),
            workspace_target: "/workspace".into(),
            labels: Default::default(),
            network: crate::NetworkMode::None,
            stop_grace_secs: 1,
            node: None,
        };
        let id = crate::ContainerRuntime::run(&fake, &spec).await.unwrap();
        let request = serde_json::to_string(&ExecRequest {
            command: vec!["echo".into(), "hi".into()],
            tty: false,
            size: None,
            term: None,
            env: vec![],
        })
        .unwrap();
        let input =
            futures::stream::iter(vec![Frame::Text(request)]).chain(futures::stream::pending());
        let (tx, rx) = futures::channel::mpsc::unbounded::<Frame>();
        relay_exec(Box::pin(input), tx, Arc::new(fake), id).await;
        let frames: Vec<Frame> = rx.collect().await;
        assert_eq!(frames[0], Frame::Binary(Bytes::from_static(b"\x01echo hi")));
        assert_eq!(frames[1], Frame::Text(r#"{"type":"exit","code":0}"#.into()));
        assert_eq!(frames[2], Frame::Close);
    }

    fn fake_with_container() -> (FakeRuntime, String) {
        let fake = FakeRuntime::new();
        fake.add_image("img");
        let spec = crate::ContainerSpec {
            name: "c".into(),
            image: "img".into(),
            command: vec![],
            env: vec![],
            cpus: 1.0,
            memory_bytes: 1 << 20,
            workspace: "/tmp".into(),
            workspace_target: "/workspace".into(),
            labels: Default::default(),
            network: crate::NetworkMode::None,
            stop_grace_secs: 1,
            node: None,
        };
        let id = futures::executor::block_on(crate::ContainerRuntime::run(&fake, &spec)).unwrap();
        (fake, id)
    }

    fn request(command: &[&str], env: &[&str]) -> Frame {
        Frame::Text(
            serde_json::to_string(&ExecRequest {
                command: command.iter().map(|s| (*s).to_owned()).collect(),
                tty: false,
                size: None,
                term: None,
                env: env.iter().map(|s| (*s).to_owned()).collect(),
            })
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn a_signal_reaches_the_commands_process_and_its_exit_code_comes_back() {
        let (fake, id) = fake_with_container();
        let fake = Arc::new(fake);
        let (to_relay, relay_in) = futures::channel::mpsc::unbounded::<Frame>();
        let (tx, mut rx) = futures::channel::mpsc::unbounded::<Frame>();
        to_relay
            .unbounded_send(request(&[crate::fake::WAIT_FOR_SIGNAL], &[]))
            .unwrap();
        let relay = tokio::spawn(relay_exec(relay_in, tx, fake.clone(), id));
        // The command runs (its echo came) and goes on until it is signalled.
        assert!(matches!(rx.next().await, Some(Frame::Binary(_))));
        for (name, signal) in [("BOGUS", None), ("TERM", Some(15))] {
            let control = ExecControl::Signal {
                signal: name.into(),
            };
            to_relay
                .unbounded_send(Frame::Text(serde_json::to_string(&control).unwrap()))
                .unwrap();
            if signal.is_none() {
                // An unknown name signals nothing; the command still runs.
                tokio::time::sleep(Duration::from_millis(50)).await;
                assert!(rx.try_recv().is_err(), "the command still runs");
            }
        }
        let exit = rx.next().await.unwrap();
        assert_eq!(exit, Frame::Text(r#"{"type":"exit","code":143}"#.into()));
        relay.await.unwrap();
        let signals: Vec<_> = fake
            .calls()
            .into_iter()
            .filter(|c| matches!(c, crate::fake::Call::Signal(..)))
            .collect();
        assert_eq!(signals.len(), 1, "{signals:?}");
        assert!(matches!(&signals[0], crate::fake::Call::Signal(_, 15)));
    }

    #[tokio::test]
    async fn session_variables_reach_the_command_and_others_fail_the_request() {
        let (fake, id) = fake_with_container();
        let fake = Arc::new(fake);
        let input = futures::stream::iter(vec![request(&["env"], &["LANG=C.UTF-8", "LC_ALL=C"])])
            .chain(futures::stream::pending());
        let (tx, rx) = futures::channel::mpsc::unbounded::<Frame>();
        relay_exec(Box::pin(input), tx, fake.clone(), id.clone()).await;
        let frames: Vec<Frame> = rx.collect().await;
        assert!(frames[1].clone() == Frame::Text(r#"{"type":"exit","code":0}"#.into()));
        let spec = fake.exec_specs().pop().unwrap();
        assert_eq!(
            spec.env,
            vec!["LANG=C.UTF-8".to_owned(), "LC_ALL=C".to_owned()]
        );

        let before = fake.exec_specs().len();
        let input = futures::stream::iter(vec![request(&["env"], &["LD_PRELOAD=/tmp/x.so"])])
            .chain(futures::stream::pending());
        let (tx, rx) = futures::channel::mpsc::unbounded::<Frame>();
        relay_exec(Box::pin(input), tx, fake.clone(), id).await;
        let frames: Vec<Frame> = rx.collect().await;
        let Frame::Text(text) = &frames[0] else {
            panic!("{frames:?}");
        };
        assert!(
            text.contains("bad_request") && text.contains("LD_PRELOAD"),
            "{text}"
        );
        assert_eq!(fake.exec_specs().len(), before, "nothing ran");
    }

    /// A frame socket end: what the relay reads (`to_relay`) and what it wrote (`from_relay`).
    fn frames() -> (
        futures::channel::mpsc::UnboundedSender<Frame>,
        futures::channel::mpsc::UnboundedReceiver<Frame>,
        futures::channel::mpsc::UnboundedReceiver<Frame>,
        futures::channel::mpsc::UnboundedSender<Frame>,
    ) {
        let (to_relay, relay_in) = futures::channel::mpsc::unbounded();
        let (relay_out, from_relay) = futures::channel::mpsc::unbounded();
        (to_relay, relay_in, from_relay, relay_out)
    }

    fn text(control: PortControl) -> Frame {
        Frame::Text(control.to_text())
    }

    #[tokio::test]
    async fn the_port_pump_carries_both_directions_and_their_ends() {
        use tokio::io::AsyncReadExt;
        let (tcp, mut program) = tokio::io::duplex(1 << 16);
        let (to_relay, mut relay_in, mut from_relay, mut relay_out) = frames();
        let (notify, notices) = futures::channel::mpsc::unbounded::<String>();
        let mut heard = Vec::new();
        let pump = async {
            pump_port(&mut relay_in, &mut relay_out, tcp, notices, |n| {
                heard.push(n)
            })
            .await
        };
        let peer = async {
            to_relay
                .unbounded_send(Frame::Binary(Bytes::from_static(b"GET /")))
                .unwrap();
            to_relay
                .unbounded_send(text(PortControl::Notice {
                    text: "hello".into(),
                }))
                .unwrap();
            to_relay.unbounded_send(text(PortControl::Eof)).unwrap();
            // The program reads the request to its end, then answers and ends its side.
            let mut request = Vec::new();
            program.read_to_end(&mut request).await.unwrap();
            assert_eq!(request, b"GET /");
            notify.unbounded_send("moving".into()).unwrap();
            program.write_all(b"200 OK").await.unwrap();
            program.shutdown().await.unwrap();
            let mut got = Vec::new();
            while let Some(frame) = from_relay.next().await {
                let end = frame == text(PortControl::Eof);
                got.push(frame);
                if end {
                    break;
                }
            }
            got
        };
        let (end, got) = tokio::join!(pump, peer);
        assert_eq!(end, PortEnd::Done);
        // The notice and the answer race each other; the end comes after both.
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(
            got.contains(&Frame::Binary(Bytes::from_static(b"200 OK"))),
            "{got:?}"
        );
        assert!(
            got.contains(&text(PortControl::Notice {
                text: "moving".into()
            })),
            "{got:?}"
        );
        assert_eq!(got[2], text(PortControl::Eof));
        assert_eq!(heard, vec!["hello".to_owned()]);
    }

    #[tokio::test]
    async fn the_port_pump_ends_when_the_peer_goes_or_reports_an_error() {
        let (tcp, _program) = tokio::io::duplex(1 << 16);
        let (to_relay, mut relay_in, _from_relay, mut relay_out) = frames();
        drop(to_relay);
        let end = pump_port(
            &mut relay_in,
            &mut relay_out,
            tcp,
            futures::stream::pending(),
            |_| {},
        )
        .await;
        assert_eq!(end, PortEnd::PeerClosed);

        let (tcp, _program) = tokio::io::duplex(1 << 16);
        let (to_relay, mut relay_in, _from_relay, mut relay_out) = frames();
        to_relay
            .unbounded_send(text(PortControl::Error {
                code: ErrorCode::NothingListens,
                error: "nothing listens on port 1 in box".into(),
            }))
            .unwrap();
        let end = pump_port(
            &mut relay_in,
            &mut relay_out,
            tcp,
            futures::stream::pending(),
            |_| {},
        )
        .await;
        assert_eq!(
            end,
            PortEnd::PeerError {
                code: ErrorCode::NothingListens,
                error: "nothing listens on port 1 in box".into()
            }
        );
    }
}
