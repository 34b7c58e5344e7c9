//! Each SSH channel carried over one of offload's own WebSockets to wherever the container
//! runs: a session's command over the exec relay, the `sftp` subsystem and `direct-tcpip`
//! forwards as raw bytes over the container's `sftp` and `ports/{port}` sockets.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use offload_agent::client::Api;
use offload_core::api::{ExecControl, ExecRequest, exec_stream};
use offload_core::session::signal_of_exit;
use offload_runtime::relay::PORT_PING;
use russh::server::{ChannelOpenHandle, Handle, Msg};
use russh::{
    Channel, ChannelId, ChannelMsg, ChannelOpenFailure, ChannelReadHalf, ChannelWriteHalf, Sig,
};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;

use crate::shell::urlencode;

/// SSH's extended-data type for stderr.
const STDERR: u32 = 1;
/// What ssh exits with when the command could not run; OpenSSH's own code for that.
const FAILED: u32 = 255;

/// The container every channel of the connection reaches, through the caller's offload
/// credentials.
pub struct Target {
    pub api: Api,
    /// offload's id of the container (resolved once, from the name the user typed).
    pub id: String,
}

impl Target {
    fn path(&self, rest: &str) -> String {
        format!("/v1/containers/{}/{rest}", urlencode(&self.id))
    }
}

/// How a session channel's command ended.
enum Ending {
    Exit(i64),
    Failed(String),
    /// The SSH side went away first: nothing is left to tell.
    Gone,
}

/// A text frame on the sftp and ports sockets (`{"kind": ...}`). A receiver ignores the
/// kinds it does not know.
#[derive(Deserialize)]
struct SocketText {
    kind: String,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    text: Option<String>,
}

/// What a text frame on a byte socket says.
#[derive(Debug, PartialEq)]
enum Control {
    /// Ports: the connection inside the container is open.
    Connected,
    /// Ports: the server's direction ended (a TCP half-close).
    Eof,
    /// For the user to read (a move is about to end the connection).
    Notice(String),
    /// The socket could not do its job and closes next.
    Error(String),
    Other,
}

fn control_of(text: &str) -> Control {
    let Ok(frame) = serde_json::from_str::<SocketText>(text) else {
        return Control::Other;
    };
    match frame.kind.as_str() {
        "connected" => Control::Connected,
        "eof" => Control::Eof,
        "notice" => Control::Notice(truncate(&frame.text.unwrap_or_default())),
        "error" => {
            let error = truncate(&frame.error.unwrap_or_else(|| "failed".to_owned()));
            Control::Error(match frame.code {
                Some(code) if !code.is_empty() => format!("{error} ({})", truncate(&code)),
                _ => error,
            })
        }
        _ => Control::Other,
    }
}

/// The text of a `notice` on the exec socket (`{"type":"notice","text":...}`), which
/// servers that warn before a move send.
fn exec_notice(text: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    if value.get("type")?.as_str()? != "notice" {
        return None;
    }
    Some(truncate(value.get("text")?.as_str()?))
}

fn truncate(text: &str) -> String {
    text.chars().take(200).filter(|c| !c.is_control()).collect()
}

/// Ends a session channel with `message` on its stderr and `code` as its exit status.
async fn finish_session(writer: &ChannelWriteHalf<Msg>, message: Option<&str>, code: u32) {
    if let Some(message) = message {
        let line = format!("offload: {}\r\n", truncate(message));
        let _ = writer.extended_data_bytes(STDERR, line.into_bytes()).await;
    }
    let _ = writer.eof().await;
    let _ = writer.exit_status(code).await;
    let _ = writer.close().await;
}

/// A signal's name as SSH and the exec relay write it (`TERM`, without `SIG`).
fn signal_name(signal: &Sig) -> String {
    let name = match signal {
        Sig::ABRT => "ABRT",
        Sig::ALRM => "ALRM",
        Sig::FPE => "FPE",
        Sig::HUP => "HUP",
        Sig::ILL => "ILL",
        Sig::INT => "INT",
        Sig::KILL => "KILL",
        Sig::PIPE => "PIPE",
        Sig::QUIT => "QUIT",
        Sig::SEGV => "SEGV",
        Sig::TERM => "TERM",
        Sig::USR1 => "USR1",
        Sig::Custom(name) => name.as_str(),
    };
    name.to_owned()
}

/// The SSH signal of a name (RFC 4254's names are variants; others are custom).
fn ssh_signal(name: &str) -> Sig {
    match name {
        "ABRT" => Sig::ABRT,
        "ALRM" => Sig::ALRM,
        "FPE" => Sig::FPE,
        "HUP" => Sig::HUP,
        "ILL" => Sig::ILL,
        "INT" => Sig::INT,
        "KILL" => Sig::KILL,
        "PIPE" => Sig::PIPE,
        "QUIT" => Sig::QUIT,
        "SEGV" => Sig::SEGV,
        "TERM" => Sig::TERM,
        "USR1" => Sig::USR1,
        other => Sig::Custom(other.to_owned()),
    }
}

/// Ends a session channel whose command exited with `code`. A code of 128 + N is how the
/// engine reports a command killed by signal N: that goes to the client as `exit-signal`
/// (which SSH libraries read) and, since OpenSSH's client ignores `exit-signal` and would
/// exit 255, also as `exit-status` 128 + N, what a shell reports for a killed command.
async fn finish_exit(writer: &ChannelWriteHalf<Msg>, handle: &Handle, id: ChannelId, code: i64) {
    let Some(name) = signal_of_exit(code) else {
        return finish_session(writer, None, u32::try_from(code).unwrap_or(FAILED)).await;
    };
    let _ = writer.eof().await;
    let _ = handle
        .exit_signal_request(
            id,
            ssh_signal(name),
            false,
            format!("killed by signal {name}"),
            String::new(),
        )
        .await;
    let _ = writer
        .exit_status(u32::try_from(code).unwrap_or(FAILED))
        .await;
    let _ = writer.close().await;
}

fn stdin_frame(data: &[u8]) -> Message {
    let mut frame = Vec::with_capacity(data.len() + 1);
    frame.push(exec_stream::STDIN);
    frame.extend_from_slice(data);
    Message::Binary(frame.into())
}

fn control(message: &ExecControl) -> Message {
    Message::Text(serde_json::to_string(message).unwrap_or_default().into())
}

/// Runs a session channel's `exec` or `shell` over the exec relay, until the command ends
/// (its exit status goes back to ssh) or the SSH side closes the channel.
pub async fn exec(
    target: Arc<Target>,
    channel: Channel<Msg>,
    handle: Handle,
    request: ExecRequest,
) {
    let id = channel.id();
    let (mut reader, writer) = channel.split();
    let socket = match target.api.websocket(&target.path("exec")).await {
        Ok(socket) => socket,
        Err(e) => return finish_session(&writer, Some(&format!("{e:#}")), FAILED).await,
    };
    let tty = request.tty;
    let (mut sink, mut stream) = socket.split();
    let first = Message::Text(serde_json::to_string(&request).unwrap_or_default().into());
    if sink.send(first).await.is_err() {
        let message = "the connection to the offload server closed before the command started";
        return finish_session(&writer, Some(message), FAILED).await;
    }

    let input = async move {
        while let Some(message) = reader.wait().await {
            let frame = match message {
                ChannelMsg::Data { data } => stdin_frame(&data),
                // A terminal has no end of input (sshd does not pass one on either);
                // closing a tty exec's stdin can make the engine drop its last output.
                ChannelMsg::Eof if !tty => control(&ExecControl::CloseStdin),
                ChannelMsg::WindowChange {
                    col_width,
                    row_height,
                    ..
                } if tty => control(&ExecControl::Resize {
                    cols: u16::try_from(col_width).unwrap_or(u16::MAX),
                    rows: u16::try_from(row_height).unwrap_or(u16::MAX),
                }),
                // As sshd does, the signal goes to the command's process, terminal or not.
                ChannelMsg::Signal { signal } => control(&ExecControl::Signal {
                    signal: signal_name(&signal),
                }),
                ChannelMsg::Close => break,
                _ => continue,
            };
            if sink.send(frame).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    };
    let output = async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Binary(data))) => {
                    let sent = match data.first() {
                        Some(&exec_stream::STDOUT) => writer.data_bytes(data.slice(1..)).await,
                        Some(&exec_stream::STDERR) => {
                            writer.extended_data_bytes(STDERR, data.slice(1..)).await
                        }
                        _ => Ok(()),
                    };
                    if sent.is_err() {
                        return Ending::Gone;
                    }
                }
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<ExecControl>(&text) {
                    Ok(ExecControl::Exit { code }) => return Ending::Exit(code),
                    Ok(ExecControl::Error { error, .. }) => return Ending::Failed(error),
                    _ => {
                        if let Some(notice) = exec_notice(&text) {
                            let line = format!("offload: {notice}\r\n");
                            let _ = writer.extended_data_bytes(STDERR, line.into_bytes()).await;
                        }
                    }
                },
                Some(Ok(Message::Close(_))) | None => {
                    return Ending::Failed(
                        "the connection to the offload server closed before the command ended"
                            .into(),
                    );
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    return Ending::Failed(format!(
                        "the connection to the offload server failed: {e}"
                    ));
                }
            }
        }
    };
    tokio::pin!(input, output);
    let ending = tokio::select! {
        () = &mut input => Ending::Gone,
        ending = &mut output => ending,
    };
    match ending {
        Ending::Exit(code) => finish_exit(&writer, &handle, id, code).await,
        Ending::Failed(message) => finish_session(&writer, Some(&message), FAILED).await,
        Ending::Gone => {}
    }
}

/// Runs the `sftp` subsystem of a session channel: the channel's bytes are the SFTP
/// protocol, which the container's `sftp` socket serves.
pub async fn sftp(target: Arc<Target>, channel: Channel<Msg>) {
    let (reader, writer) = channel.split();
    let socket = match target.api.websocket(&target.path("sftp")).await {
        Ok(socket) => socket,
        Err(e) => return finish_session(&writer, Some(&format!("{e:#}")), 1).await,
    };
    match pipe(socket, reader, &writer).await {
        Piped::Done => finish_session(&writer, None, 0).await,
        Piped::Failed(message) => finish_session(&writer, Some(&message), 1).await,
        Piped::Gone => {}
    }
}

/// How long the server has to say that the container's port answered.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Opens a `direct-tcpip` channel to `port` on the container's loopback. The channel is
/// confirmed only once the server says the connection inside the container is open
/// (`connected`), so a port with nothing listening reaches ssh as a failed open with the
/// server's reason, and nothing is left waiting.
pub async fn forward(
    target: Arc<Target>,
    channel: Channel<Msg>,
    reply: ChannelOpenHandle,
    port: u16,
) {
    let socket = match target
        .api
        .websocket(&target.path(&format!("ports/{port}")))
        .await
    {
        Ok(socket) => socket,
        Err(e) => return refuse(reply, port, format!("{e:#}")).await,
    };
    let (mut sink, mut stream) = socket.split();
    let deadline = tokio::time::Instant::now() + OPEN_TIMEOUT;
    let opened: Result<Option<bytes::Bytes>, String> = loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => break Err(format!("no answer within {} s", OPEN_TIMEOUT.as_secs())),
            Ok(Some(Ok(Message::Text(text)))) => match control_of(&text) {
                Control::Connected => break Ok(None),
                Control::Error(error) => break Err(error),
                Control::Notice(notice) => eprintln!("offload: port {port}: {notice}"),
                Control::Eof | Control::Other => {}
            },
            // A server that does not announce the connection simply starts with bytes.
            Ok(Some(Ok(Message::Binary(data)))) => break Ok(Some(data)),
            Ok(Some(Ok(Message::Close(_))) | None) => {
                break Err("the offload server closed the connection".to_owned());
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => {
                break Err(format!("the connection to the offload server failed: {e}"));
            }
        }
    };
    let first = match opened {
        Ok(first) => first,
        Err(reason) => return refuse(reply, port, reason).await,
    };
    reply.accept().await;
    let (mut reader, writer) = channel.split();
    if let Some(data) = first
        && writer.data_bytes(data).await.is_err()
    {
        return;
    }

    // Each direction ends on its own: the SSH side's EOF becomes an `eof` frame, the
    // server's `eof` the channel's EOF, and the server closes once both ended (with or
    // without a close handshake).
    let ended = AtomicBool::new(false);
    let input = async {
        let mut open = true;
        // Pings keep an idle forward's socket alive through proxies' idle timeouts.
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PORT_PING, PORT_PING);
        loop {
            let message = tokio::select! {
                message = reader.wait() => match message {
                    Some(message) => message,
                    None => break,
                },
                _ = ping.tick(), if open => {
                    open = sink.send(Message::Ping(Default::default())).await.is_ok();
                    continue;
                }
            };
            match message {
                ChannelMsg::Data { data } if open => {
                    open = sink.send(Message::Binary(data)).await.is_ok();
                }
                ChannelMsg::Eof if open => {
                    let eof = Message::Text(r#"{"kind":"eof"}"#.into());
                    ended.store(true, Ordering::Relaxed);
                    open = sink.send(eof).await.is_ok();
                }
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        let _ = sink.close().await;
    };
    let output = async {
        let mut eof_sent = false;
        let failure = loop {
            match stream.next().await {
                Some(Ok(Message::Binary(data))) => {
                    if eof_sent || writer.data_bytes(data).await.is_err() {
                        break None;
                    }
                }
                Some(Ok(Message::Text(text))) => match control_of(&text) {
                    Control::Eof if !eof_sent => {
                        eof_sent = true;
                        let _ = writer.eof().await;
                    }
                    Control::Error(error) => break Some(error),
                    Control::Notice(notice) => eprintln!("offload: port {port}: {notice}"),
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None => break None,
                Some(Ok(_)) => {}
                Some(Err(_)) if eof_sent && ended.load(Ordering::Relaxed) => break None,
                Some(Err(e)) => {
                    break Some(format!("the connection to the offload server failed: {e}"));
                }
            }
        };
        if let Some(error) = failure {
            // A forwarded connection has no stderr of its own; ssh shows the ProxyCommand's.
            eprintln!("offload: port {port}: {error}");
        }
        if !eof_sent {
            let _ = writer.eof().await;
        }
    };
    tokio::pin!(input, output);
    tokio::select! {
        () = &mut input => {}
        () = &mut output => {}
    }
    let _ = writer.close().await;
}

/// Fails a `direct-tcpip` open with offload's reason, which ssh prints.
async fn refuse(reply: ChannelOpenHandle, port: u16, reason: String) {
    reply
        .reject(ChannelOpenFailure::Other {
            code: ChannelOpenFailure::ConnectFailed.code(),
            reason: format!("offload: port {port}: {reason}"),
        })
        .await;
}

enum Piped {
    /// The server closed the socket: every byte it sent was delivered.
    Done,
    Failed(String),
    /// The SSH side closed the channel.
    Gone,
}

/// Copies the SFTP byte stream both ways between a channel and the sftp socket. The SSH
/// side's EOF ends the session (the socket closes); what the server still sends before its
/// close frame is delivered.
async fn pipe(
    socket: super::Socket,
    mut reader: ChannelReadHalf,
    writer: &ChannelWriteHalf<Msg>,
) -> Piped {
    let (mut sink, mut stream) = socket.split();
    // Once the SSH side ended the session, the server may drop the connection without a
    // close handshake: that is the end, not a failure.
    let ended = AtomicBool::new(false);
    let input = async {
        let mut open = true;
        while let Some(message) = reader.wait().await {
            match message {
                ChannelMsg::Data { data } if open => {
                    open = sink.send(Message::Binary(data)).await.is_ok();
                }
                ChannelMsg::Eof if open => {
                    open = false;
                    ended.store(true, Ordering::Relaxed);
                    let _ = sink.close().await;
                }
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        if open {
            let _ = sink.close().await;
        }
    };
    let output = async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Binary(data))) => {
                    if writer.data_bytes(data).await.is_err() {
                        return Piped::Gone;
                    }
                }
                Some(Ok(Message::Text(text))) => match control_of(&text) {
                    Control::Error(error) => return Piped::Failed(error),
                    Control::Notice(notice) => {
                        let line = format!("offload: {notice}\r\n");
                        let _ = writer.extended_data_bytes(STDERR, line.into_bytes()).await;
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None => return Piped::Done,
                Some(Ok(_)) => {}
                Some(Err(_)) if ended.load(Ordering::Relaxed) => return Piped::Done,
                Some(Err(e)) => {
                    return Piped::Failed(format!(
                        "the connection to the offload server failed: {e}"
                    ));
                }
            }
        }
    };
    tokio::pin!(input, output);
    tokio::select! {
        () = &mut input => Piped::Gone,
        piped = &mut output => piped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_frames_on_byte_sockets_read_as_what_they_say() {
        let error = r#"{"kind":"error","code":"connect_failed","error":"nothing listens on port 8080 in box"}"#;
        assert_eq!(
            control_of(error),
            Control::Error("nothing listens on port 8080 in box (connect_failed)".into())
        );
        assert_eq!(control_of(r#"{"kind":"connected"}"#), Control::Connected);
        assert_eq!(control_of(r#"{"kind":"eof"}"#), Control::Eof);
        assert_eq!(
            control_of(r#"{"kind":"notice","text":"box moves \u001b[2J"}"#),
            Control::Notice("box moves [2J".into())
        );
        // Kinds a newer server may add, and what is not JSON, are ignored.
        assert_eq!(
            control_of(r#"{"kind":"progress","bytes":3}"#),
            Control::Other
        );
        assert_eq!(control_of("hello"), Control::Other);
    }

    #[test]
    fn exec_notices_are_found_and_other_controls_are_not() {
        assert_eq!(
            exec_notice(r#"{"type":"notice","text":"box moves to your machine"}"#).as_deref(),
            Some("box moves to your machine")
        );
        assert_eq!(exec_notice(r#"{"type":"exit","code":0}"#), None);
        assert_eq!(exec_notice("nonsense"), None);
    }

    #[test]
    fn signals_keep_their_names_both_ways() {
        for name in ["TERM", "INT", "KILL", "HUP", "USR1", "USR2", "WINCH"] {
            assert_eq!(signal_name(&ssh_signal(name)), name);
        }
        assert_eq!(signal_name(&Sig::QUIT), "QUIT");
        assert!(matches!(ssh_signal("TERM"), Sig::TERM));
        assert!(matches!(ssh_signal("USR2"), Sig::Custom(n) if n == "USR2"));
    }
}
