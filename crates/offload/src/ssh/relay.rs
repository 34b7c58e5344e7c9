//! Each SSH channel carried over one of offload's own WebSockets to wherever the container
//! runs: a session's command over the exec relay, the `sftp` subsystem and `direct-tcpip`
//! forwards as raw bytes over the container's `sftp` and `ports/{port}` sockets.

use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use offload_agent::client::Api;
use offload_core::api::{ExecControl, ExecRequest, exec_stream};
use russh::server::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelMsg, ChannelOpenFailure, ChannelReadHalf, ChannelWriteHalf, Sig};
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

/// A failure that the sftp and ports sockets report before they close.
#[derive(Deserialize)]
struct StreamError {
    kind: String,
    #[serde(default)]
    code: Option<String>,
    error: String,
}

/// A text frame on a byte socket, as the sentence it carries.
fn stream_error(text: &str) -> String {
    match serde_json::from_str::<StreamError>(text) {
        Ok(e) if e.kind == "error" => match e.code {
            Some(code) if !code.is_empty() => format!("{} ({code})", e.error),
            _ => e.error,
        },
        _ => format!(
            "unexpected message from the offload server: {}",
            truncate(text)
        ),
    }
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

/// The byte a terminal turns a signal's key into: what a signal means to a command that
/// has a pty. The exec relay has no way to signal a process by itself.
fn terminal_byte(signal: &Sig) -> Option<u8> {
    match signal {
        Sig::INT => Some(0x03),
        Sig::QUIT => Some(0x1c),
        _ => None,
    }
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
pub async fn exec(target: Arc<Target>, channel: Channel<Msg>, request: ExecRequest) {
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
                ChannelMsg::Signal { signal } if tty => match terminal_byte(&signal) {
                    Some(byte) => stdin_frame(&[byte]),
                    None => continue,
                },
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
                    _ => {}
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
        Ending::Exit(code) => {
            finish_session(&writer, None, u32::try_from(code).unwrap_or(FAILED)).await;
        }
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

/// Opens a `direct-tcpip` channel to `port` on the container's loopback. The channel is
/// confirmed only once the container's port socket is open, so a refusal reaches ssh as a
/// failed open with the server's reason.
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
        Err(e) => {
            let reason = format!("offload: port {port}: {e:#}");
            reply
                .reject(ChannelOpenFailure::Other {
                    code: ChannelOpenFailure::ConnectFailed.code(),
                    reason,
                })
                .await;
            return;
        }
    };
    reply.accept().await;
    let (reader, writer) = channel.split();
    if let Piped::Failed(message) = pipe(socket, reader, &writer).await {
        // A forwarded connection has no stderr of its own; ssh shows the ProxyCommand's.
        eprintln!("offload: port {port}: {}", truncate(&message));
    }
    let _ = writer.eof().await;
    let _ = writer.close().await;
}

enum Piped {
    /// The server closed the socket: every byte it sent was delivered.
    Done,
    Failed(String),
    /// The SSH side closed the channel.
    Gone,
}

/// Copies bytes both ways between a channel and a byte socket. The SSH side's EOF closes
/// the socket for sending (a WebSocket has no half-close); what the server still sends
/// before its close frame is delivered.
async fn pipe(
    socket: super::Socket,
    mut reader: ChannelReadHalf,
    writer: &ChannelWriteHalf<Msg>,
) -> Piped {
    let (mut sink, mut stream) = socket.split();
    let input = async move {
        let mut open = true;
        while let Some(message) = reader.wait().await {
            match message {
                ChannelMsg::Data { data } if open => {
                    open = sink.send(Message::Binary(data)).await.is_ok();
                }
                ChannelMsg::Eof if open => {
                    open = false;
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
                Some(Ok(Message::Text(text))) => return Piped::Failed(stream_error(&text)),
                Some(Ok(Message::Close(_))) | None => return Piped::Done,
                Some(Ok(_)) => {}
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
    fn server_errors_on_byte_sockets_read_as_their_sentence() {
        let text = r#"{"kind":"error","code":"connect_failed","error":"nothing listens on port 8080 in box"}"#;
        assert_eq!(
            stream_error(text),
            "nothing listens on port 8080 in box (connect_failed)"
        );
        assert!(stream_error("{\"kind\":\"hello\"}").starts_with("unexpected message"));
        assert!(!stream_error("\u{1b}[31mred").contains('\u{1b}'));
    }

    #[test]
    fn only_terminal_signals_have_a_key() {
        assert_eq!(terminal_byte(&Sig::INT), Some(3));
        assert_eq!(terminal_byte(&Sig::QUIT), Some(0x1c));
        assert_eq!(terminal_byte(&Sig::KILL), None);
    }
}
