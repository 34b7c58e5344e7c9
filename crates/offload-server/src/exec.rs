//! `offload shell`: a command in a container, relayed over a WebSocket.
//!
//! The first client message is an [`ExecRequest`] (text). Then binary frames carry data,
//! their first byte naming the stream ([`exec_stream`]); text frames carry
//! [`ExecControl`] messages. The server ends with `Exit { code }` and a close frame.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use offload_core::WORKSPACE_MOUNT;
use offload_core::api::{ExecControl, ExecRequest, exec_stream};
use offload_runtime::{ContainerRuntime, ExecOutput, ExecSpec};
use tokio::io::AsyncWriteExt;

use crate::error::{ActionError, error_response};
use crate::http::{AppState, Caller};

/// How long a client has to send its request after the upgrade.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request or control message.
const MAX_CONTROL: usize = 64 << 10;

pub async fn exec_socket(
    State(state): State<AppState>,
    caller: Result<Caller, ActionError>,
    Path(id): Path<String>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let who = match caller {
        Ok(Caller(who)) => who,
        Err(e) => return e.into_response(),
    };
    let (_, runtime_id) = match state.ctl.exec_target(&who, &id).await {
        Ok(found) => found,
        Err(e) => return e.into_response(),
    };
    let Ok(upgrade) = upgrade else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "websocket_required",
            "this endpoint speaks WebSocket; use `offload shell`",
        );
    };
    let runtime = state.ctl.runtime().clone();
    upgrade
        .max_message_size(4 << 20)
        .on_upgrade(move |socket| async move {
            if let Err(e) = relay(socket, runtime, runtime_id).await {
                tracing::debug!(error = %e, "exec session ended with an error");
            }
        })
}

async fn send_control(
    sink: &mut futures::stream::SplitSink<WebSocket, Message>,
    control: &ExecControl,
) -> Result<(), axum::Error> {
    let text = serde_json::to_string(control).unwrap_or_default();
    sink.send(Message::Text(text.into())).await
}

async fn relay(
    socket: WebSocket,
    runtime: Arc<dyn ContainerRuntime>,
    runtime_id: String,
) -> Result<(), axum::Error> {
    let (mut sink, mut stream) = socket.split();
    let request = match tokio::time::timeout(REQUEST_TIMEOUT, stream.next()).await {
        Ok(Some(Ok(Message::Text(text)))) if text.len() <= MAX_CONTROL => {
            serde_json::from_str::<ExecRequest>(&text).map_err(|e| e.to_string())
        }
        _ => Err("expected an exec request as the first message".to_owned()),
    };
    let request = match request {
        Ok(r) => r,
        Err(error) => {
            let control = ExecControl::Error {
                error: format!("invalid exec request: {error}"),
                code: "bad_request".into(),
            };
            send_control(&mut sink, &control).await?;
            return sink.close().await;
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
                code: "exec_failed".into(),
            };
            send_control(&mut sink, &control).await?;
            return sink.close().await;
        }
    };
    let exec_id = session.exec_id.clone();
    if let (true, Some((cols, rows))) = (request.tty, request.size) {
        let _ = runtime.exec_resize(&exec_id, cols, rows).await;
    }

    // Client input goes to the command on its own task, so a command that never reads
    // its stdin cannot stall its output.
    let mut input = session.input;
    let input_runtime = runtime.clone();
    let input_exec = exec_id.clone();
    let input_task = tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            match message {
                Message::Binary(data) => {
                    if data.first() == Some(&exec_stream::STDIN)
                        && input.write_all(&data[1..]).await.is_err()
                    {
                        break;
                    }
                    let _ = input.flush().await;
                }
                Message::Text(text) => match serde_json::from_str::<ExecControl>(&text) {
                    Ok(ExecControl::Resize { cols, rows }) => {
                        let _ = input_runtime.exec_resize(&input_exec, cols, rows).await;
                    }
                    Ok(ExecControl::CloseStdin) => {
                        let _ = input.shutdown().await;
                    }
                    _ => {}
                },
                Message::Close(_) => break,
                _ => {}
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
        if sink.send(Message::Binary(frame.into())).await.is_err() {
            input_task.abort();
            return Ok(());
        }
    }
    input_task.abort();
    let control = match failure {
        Some(error) => ExecControl::Error {
            error,
            code: "exec_failed".into(),
        },
        None => match exit_code(runtime.as_ref(), &exec_id).await {
            Some(code) => ExecControl::Exit { code },
            None => ExecControl::Error {
                error: "the engine did not report the command's exit code".into(),
                code: "exec_failed".into(),
            },
        },
    };
    send_control(&mut sink, &control).await?;
    sink.close().await
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
