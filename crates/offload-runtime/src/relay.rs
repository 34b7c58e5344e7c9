//! The exec relay: one command in a container, driven over a message socket.
//!
//! The server runs it for cloud containers (on the user's WebSocket) and the agent for edge
//! containers (on a WebSocket it dials back to the server, which splices the two). The
//! protocol is in `offload_core::api`: the first text frame is an `ExecRequest`, binary
//! frames carry data tagged by stream, text frames carry `ExecControl` messages, and the
//! relay ends with `Exit { code }`.

use std::sync::Arc;
use std::time::Duration;

use futures::{Sink, SinkExt, Stream, StreamExt};
use offload_core::WORKSPACE_MOUNT;
use offload_core::api::{ExecControl, ExecRequest, exec_stream};
use tokio::io::AsyncWriteExt;

use crate::{ContainerRuntime, ExecOutput, ExecSpec};

/// A WebSocket message, whichever WebSocket library carries it.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
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
    let env = match (&request.term, request.tty) {
        (Some(term), true) if term.len() < 64 && term.bytes().all(|b| b.is_ascii_graphic()) => {
            vec![format!("TERM={term}")]
        }
        (_, true) => vec!["TERM=xterm".to_owned()],
        _ => Vec::new(),
    };
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
                    _ => {}
                },
                Frame::Close => break,
            }
        }
    });

    let mut output = session.output;
    let mut failure = None;
    while let Some(item) = output.next().await {
        let frame = match item {
            Ok(ExecOutput::Stdout(data)) => tagged(exec_stream::STDOUT, data),
            Ok(ExecOutput::Stderr(data)) => tagged(exec_stream::STDERR, data),
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

fn tagged(stream: u8, data: Vec<u8>) -> Vec<u8> {
    let mut frame = Vec::with_capacity(data.len() + 1);
    frame.push(stream);
    frame.extend_from_slice(&data);
    frame
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
        })
        .unwrap();
        let input =
            futures::stream::iter(vec![Frame::Text(request)]).chain(futures::stream::pending());
        let (tx, rx) = futures::channel::mpsc::unbounded::<Frame>();
        relay_exec(Box::pin(input), tx, Arc::new(fake), id).await;
        let frames: Vec<Frame> = rx.collect().await;
        assert_eq!(frames[0], Frame::Binary(b"\x01echo hi".to_vec()));
        assert_eq!(frames[1], Frame::Text(r#"{"type":"exit","code":0}"#.into()));
        assert_eq!(frames[2], Frame::Close);
    }
}
