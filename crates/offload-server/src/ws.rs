//! The opening every user WebSocket shares (`exec`, `sftp`, `ports`, `logs`): the 400
//! that names the command speaking the protocol, the check that an edge container's agent
//! is connected, and the splice of the user's socket to the agent's dial-back.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::Response;
use futures::{FutureExt, SinkExt, StreamExt};
use offload_core::ContainerRecord;
use offload_core::agent::Channel;
use offload_core::api::ErrorCode;
use offload_runtime::channels::OpenChannel;
use offload_runtime::relay::{Frame, notice_frame};

use crate::controller::Controller;
use crate::error::{ActionError, error_response};

/// What axum hands a handler that takes the upgrade as optional.
pub type Upgrade = Result<WebSocketUpgrade, WebSocketUpgradeRejection>;

/// The upgrade, or the `websocket_required` 400 that names `command`, the client that
/// speaks this endpoint.
// The response is handed straight back to axum, once per request.
#[allow(clippy::result_large_err)]
pub fn websocket(upgrade: Upgrade, command: &str) -> Result<WebSocketUpgrade, Response> {
    upgrade.map_err(|_| {
        error_response(
            StatusCode::BAD_REQUEST,
            ErrorCode::WebsocketRequired,
            format!("this endpoint speaks WebSocket; use `{command}`"),
        )
    })
}

/// Refuses, before the upgrade, a channel to an edge container whose agent is away.
pub fn edge_agent(ctl: &Controller, record: &ContainerRecord) -> Result<(), ActionError> {
    match ctl.hub.agent(&record.owner, record.device.as_deref()) {
        Some(_) => Ok(()),
        None => Err(ActionError::Unavailable(format!(
            "container {} runs at the edge and {} is not connected",
            record.name,
            crate::hub::agent_name(&record.owner, record.device.as_deref())
        ))),
    }
}

/// Upgrades to a socket spliced to the agent's dial-back for `channel`. The channel is
/// registered first, so a move tells it before it stops the copy; when the agent cannot
/// be reached the user gets `failure`'s frame for the error, then the close.
pub fn splice_to_agent(
    upgrade: WebSocketUpgrade,
    ctl: &Controller,
    record: ContainerRecord,
    channel: Channel,
    failure: impl FnOnce(String) -> Message + Send + 'static,
) -> Response {
    let hub = ctl.hub.clone();
    let channels = ctl.channels.clone();
    upgrade.on_upgrade(move |mut socket| async move {
        let mut open = channels.open(&record.id, channel);
        let device = record.device.as_deref();
        match hub
            .open_channel(&record.owner, device, &record.id, channel)
            .await
        {
            Ok(agent) => splice(socket, agent, &mut open).await,
            Err(e) => {
                let _ = socket.send(failure(e.to_string())).await;
                let _ = socket.close().await;
            }
        }
    })
}

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
