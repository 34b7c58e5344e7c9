//! `offload shell`: a command in a container, relayed over a WebSocket.
//!
//! For a cloud container the server runs the relay against its own engine; for an edge
//! container it asks the owner's agent to dial back and splices the two sockets, so the
//! user's command is the same wherever the container runs.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::{FutureExt, SinkExt, StreamExt};
use offload_core::Location;
use offload_core::agent::Channel;
use offload_core::api::ApiError;
use offload_core::api::ExecControl;
use offload_runtime::channels::OpenChannel;
use offload_runtime::relay::{Frame, notice_frame, relay_exec_with_notices};

use crate::error::{ActionError, error_response};
use crate::http::{AppState, Caller};
use offload_core::api::ErrorCode;

pub fn to_frame(message: Message) -> Option<Frame> {
    match message {
        Message::Text(text) => Some(Frame::Text(text.to_string())),
        Message::Binary(data) => Some(Frame::Binary(data)),
        Message::Close(_) => Some(Frame::Close),
        _ => None,
    }
}

pub fn from_frame(frame: Frame) -> Message {
    match frame {
        Frame::Text(text) => Message::Text(text.into()),
        Frame::Binary(data) => Message::Binary(data),
        Frame::Ping => Message::Ping(Default::default()),
        Frame::Close => Message::Close(None),
    }
}

/// Runs the exec relay on an axum WebSocket, with the notices of `open` sent as they come.
pub async fn relay_on(
    socket: WebSocket,
    state: &AppState,
    runtime_id: String,
    open: &mut OpenChannel,
) {
    let (sink, stream) = socket.split();
    let stream = stream.filter_map(|m| async move { m.ok().and_then(to_frame) });
    let sink = sink.with(|f: Frame| async move { Ok::<_, axum::Error>(from_frame(f)) });
    relay_exec_with_notices(
        Box::pin(stream),
        Box::pin(sink),
        state.ctl.runtime().clone(),
        runtime_id,
        open.notice_stream(),
    )
    .await;
}

/// The next message of `rx`, flushing `tx` first when none is waiting already: a run of
/// messages goes out with one flush, not one per message.
async fn next_flushing<R, T>(rx: &mut R, tx: &mut T, unflushed: &mut bool) -> Option<Message>
where
    R: futures::Stream<Item = Result<Message, axum::Error>> + Unpin,
    T: futures::Sink<Message> + Unpin,
{
    if let Some(next) = rx.next().now_or_never() {
        return next.and_then(Result::ok);
    }
    if std::mem::take(unflushed) && tx.flush().await.is_err() {
        return None;
    }
    rx.next().await.and_then(Result::ok)
}

/// Forwards every message between two sockets until one side closes; the notices of
/// `open` go to the user as its channel's notice frames. Messages are fed without a flush
/// each; a socket is flushed when the other has nothing more waiting.
pub async fn splice(user: WebSocket, agent: WebSocket, open: &mut OpenChannel) {
    let channel = open.channel;
    let notices = &mut open.notices;
    let (mut user_tx, mut user_rx) = user.split();
    let (mut agent_tx, mut agent_rx) = agent.split();
    let up = async {
        let mut unflushed = false;
        while let Some(m) = next_flushing(&mut user_rx, &mut agent_tx, &mut unflushed).await {
            let close = matches!(m, Message::Close(_));
            if agent_tx.feed(m).await.is_err() || close {
                break;
            }
            unflushed = true;
        }
        let _ = agent_tx.close().await;
    };
    let down = async {
        let mut notices_open = true;
        let mut unflushed = false;
        loop {
            let m = tokio::select! {
                m = next_flushing(&mut agent_rx, &mut user_tx, &mut unflushed) => match m {
                    Some(m) => m,
                    None => break,
                },
                notice = notices.recv(), if notices_open => match notice {
                    Some(text) => from_frame(notice_frame(channel, &text)),
                    None => {
                        notices_open = false;
                        continue;
                    }
                },
            };
            let close = matches!(m, Message::Close(_));
            if user_tx.feed(m).await.is_err() || close {
                break;
            }
            unflushed = true;
        }
        let _ = user_tx.close().await;
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// A command or a shell in the container, wherever it runs (WebSocket). The first text
/// frame is an `ExecRequest`; binary frames carry data after a one-byte stream tag (0
/// stdin, 1 stdout, 2 stderr); text frames carry `ExecControl` (`resize`, `close_stdin`,
/// and at the end `exit` or `error`).
#[utoipa::path(get, path = "/v1/containers/{id}/exec", tag = "containers",
    params(("id" = String, Path, description = "container id or name")),
    responses((status = 101, description = "switching to the WebSocket protocol"),
        (status = 400, body = ApiError, description = "`websocket_required`"),
        (status = 404, body = ApiError), (status = 409, body = ApiError)))]
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
    let (record, runtime_id) = match state.ctl.exec_target(&who, &id).await {
        Ok(found) => found,
        Err(e) => return e.into_response(),
    };
    let Ok(upgrade) = upgrade else {
        return error_response(
            StatusCode::BAD_REQUEST,
            ErrorCode::WebsocketRequired,
            "this endpoint speaks WebSocket; use `offload shell`",
        );
    };
    if record.location == Location::Edge {
        let hub = state.ctl.hub.clone();
        let Some(_) = hub.agent(&record.owner) else {
            return ActionError::Unavailable(format!(
                "container {} runs at the edge and its agent is not connected",
                record.id
            ))
            .into_response();
        };
        return upgrade
            .max_message_size(4 << 20)
            .on_upgrade(move |mut socket| async move {
                let mut open = state.ctl.channels.open(&record.id, Channel::Exec);
                match hub
                    .open_channel(&record.owner, &record.id, Channel::Exec)
                    .await
                {
                    Ok(agent) => splice(socket, agent, &mut open).await,
                    Err(e) => {
                        let control = ExecControl::Error {
                            error: e.to_string(),
                            code: ErrorCode::Unavailable,
                        };
                        let text = serde_json::to_string(&control).unwrap_or_default();
                        let _ = socket.send(Message::Text(text.into())).await;
                        let _ = socket.close().await;
                    }
                }
            });
    }
    upgrade
        .max_message_size(4 << 20)
        .on_upgrade(move |socket| async move {
            let mut open = state.ctl.channels.open(&record.id, Channel::Exec);
            relay_on(socket, &state, runtime_id, &mut open).await
        })
}
