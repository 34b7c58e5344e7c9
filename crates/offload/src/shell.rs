//! `offload shell`: a command or an interactive shell in a container, over the server's
//! exec WebSocket, with a raw terminal when interactive.

use std::io::{IsTerminal, Read};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use offload_core::api::{ExecControl, ExecRequest, exec_stream};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;

use offload_agent::client::Api;

/// Puts the terminal in raw mode until dropped.
struct RawTerminal {
    saved: rustix::termios::Termios,
}

impl RawTerminal {
    fn enable() -> anyhow::Result<Self> {
        let stdin = std::io::stdin();
        let saved = rustix::termios::tcgetattr(&stdin).context("cannot read terminal settings")?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw)
            .context("cannot set the terminal to raw mode")?;
        Ok(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

fn terminal_size() -> Option<(u16, u16)> {
    let size = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
    (size.ws_col > 0 && size.ws_row > 0).then_some((size.ws_col, size.ws_row))
}

/// Reads stdin on its own thread: a blocking read must not hold up the runtime.
fn stdin_chunks() -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = vec![0u8; 16 << 10];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}

/// Runs `command` (or a shell) in the container and returns its exit code.
pub async fn run(
    api: &Api,
    id: &str,
    command: Vec<String>,
    force_tty: bool,
) -> anyhow::Result<i32> {
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let tty = interactive && (command.is_empty() || force_tty);
    let socket = api
        .websocket(&format!("/v1/containers/{}/exec", urlencode(id)))
        .await?;
    let (mut sink, mut stream) = socket.split();
    let request = ExecRequest {
        command,
        tty,
        size: if tty { terminal_size() } else { None },
        term: std::env::var("TERM").ok(),
        env: Vec::new(),
    };
    sink.send(Message::Text(serde_json::to_string(&request)?.into()))
        .await?;

    let _raw = if tty {
        Some(RawTerminal::enable()?)
    } else {
        None
    };
    let mut input = stdin_chunks();
    let mut input_open = true;
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        .context("cannot watch terminal resizes")?;
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    loop {
        tokio::select! {
            chunk = input.recv(), if input_open => match chunk {
                Some(data) => {
                    let mut frame = Vec::with_capacity(data.len() + 1);
                    frame.push(exec_stream::STDIN);
                    frame.extend_from_slice(&data);
                    sink.send(Message::Binary(frame.into())).await?;
                }
                None => {
                    input_open = false;
                    let close = serde_json::to_string(&ExecControl::CloseStdin)?;
                    sink.send(Message::Text(close.into())).await?;
                }
            },
            _ = winch.recv(), if tty => {
                if let Some((cols, rows)) = terminal_size() {
                    let resize = serde_json::to_string(&ExecControl::Resize { cols, rows })?;
                    sink.send(Message::Text(resize.into())).await?;
                }
            },
            message = stream.next() => match message {
                Some(Ok(Message::Binary(data))) => {
                    match data.first() {
                        Some(&exec_stream::STDOUT) => {
                            stdout.write_all(&data[1..]).await?;
                            stdout.flush().await?;
                        }
                        Some(&exec_stream::STDERR) => {
                            stderr.write_all(&data[1..]).await?;
                            stderr.flush().await?;
                        }
                        _ => {}
                    }
                }
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<ExecControl>(&text) {
                    Ok(ExecControl::Exit { code }) => {
                        return Ok(i32::try_from(code).unwrap_or(1));
                    }
                    Ok(ExecControl::Error { error, .. }) => bail!("{error}"),
                    Ok(ExecControl::Notice { text }) => {
                        // On a raw terminal a line needs its carriage return.
                        let line = if tty { format!("\r\noffload: {text}\r\n") } else { format!("offload: {text}\n") };
                        stderr.write_all(line.as_bytes()).await?;
                        stderr.flush().await?;
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None => {
                    bail!("the connection to the server closed before the command ended")
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("the connection to the server failed: {e}"),
            },
        }
    }
}

/// Percent-encodes a path segment.
pub fn urlencode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
