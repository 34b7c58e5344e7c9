//! The agent's WebSocket (`/v1/agent`) and the channels agents dial back
//! (`/v1/agent/channel/{session}`).

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use offload_core::agent::{AgentErrorCode, AgentMessage, EdgeCapacity, EdgeContainer};
use offload_core::api::ApiError;
use offload_core::api::Progress;
use offload_core::events::EventBody;

use crate::error::{ActionError, error_response};
use crate::http::{AppState, Caller};
use crate::hub::{Hello, MAX_AGENT_TEXT_CHARS, clean_agent_text};
use offload_core::api::ErrorCode;

/// Largest control message from an agent.
const MAX_MESSAGE: usize = 1 << 20;

type Upgrade = Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>;

fn need_websocket() -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        ErrorCode::WebsocketRequired,
        "this endpoint speaks WebSocket; it is for `offload agent`",
    )
}

/// How often the server pings an agent.
const PING_INTERVAL: Duration = Duration::from_secs(15);
/// An agent that sends nothing, not even a pong, for this long is gone: its link is
/// dropped, so its requests fail instead of waiting on a dead connection.
const SILENCE_LIMIT: Duration = Duration::from_secs(45);

/// What an agent reports of its containers, as the server keeps it: an engine id that is
/// not plain ASCII of engine length is not kept (it ends up in records and terminals).
/// Container ids are validated as the message is read.
fn clean_containers(containers: Vec<EdgeContainer>) -> Vec<EdgeContainer> {
    containers
        .into_iter()
        .map(|c| EdgeContainer {
            runtime_id: c.runtime_id.filter(|r| {
                !r.is_empty() && r.len() <= 128 && r.bytes().all(|b| b.is_ascii_alphanumeric())
            }),
            ..c
        })
        .collect()
}

/// The agent's control link (WebSocket). Text frames carry JSON: the agent opens with
/// `AgentMessage` `hello` and later sends `reply`, `progress` and `status`; the server sends
/// `ServerMessage`s (`request` with a `Command`, `open_channel`, `notice`, `query`,
/// `query_closed`). Both sides ping; a link silent past its deadline is dropped.
#[utoipa::path(get, path = "/v1/agent", tag = "agent",
    responses((status = 101, description = "switching to the WebSocket protocol"),
        (status = 400, body = ApiError, description = "`websocket_required`"),
        (status = 401, body = ApiError)))]
pub async fn agent_socket(
    State(state): State<AppState>,
    caller: Result<Caller, ActionError>,
    upgrade: Upgrade,
) -> Response {
    let who = match caller {
        Ok(Caller(who)) => who,
        Err(e) => return e.into_response(),
    };
    let Ok(upgrade) = upgrade else {
        return need_websocket();
    };
    upgrade
        .max_message_size(MAX_MESSAGE)
        .on_upgrade(move |socket| serve_agent(socket, state, who.user))
}

async fn serve_agent(socket: WebSocket, state: AppState, user: offload_core::UserName) {
    let (mut sink, mut stream) = socket.split();
    let hello = match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str::<AgentMessage>(&text).ok(),
        _ => None,
    };
    let Some(AgentMessage::Hello {
        device,
        capacity,
        images,
        containers,
        auto_accept,
        auto_return,
    }) = hello
    else {
        let _ = sink.close().await;
        return;
    };
    let capacity = EdgeCapacity {
        architecture: clean_agent_text(&capacity.architecture, 32),
        hostname: clean_agent_text(&capacity.hostname, 255),
        ..capacity
    };
    // An agent that names no device (an older one) is its host name; a name that is not
    // one is refused before anything is registered.
    let device = if device.is_empty() {
        capacity.hostname.clone()
    } else {
        device
    };
    let Ok(device) = offload_core::Name::parse(&device) else {
        tracing::warn!(%user, "refusing an agent whose device name is not a name");
        let _ = sink
            .send(Message::Close(Some(axum::extract::ws::CloseFrame {
                code: 1008,
                reason: "the device name must be letters, digits, '.', '_' and '-' (at most 63)"
                    .into(),
            })))
            .await;
        return;
    };
    let images = images
        .into_iter()
        .map(|i| clean_agent_text(&i, 512))
        .collect();
    let containers = clean_containers(containers);
    let (link, mut outbox) = state.ctl.hub.register(
        user.clone(),
        Hello {
            device: device.to_string(),
            capacity,
            images,
            containers: containers.clone(),
            auto_accept,
            auto_return,
        },
    );
    tracing::info!(%user, device = %link.device, edge = %link.capacity.hostname, "agent connected");
    state
        .ctl
        .events
        .publish(
            Some(&user),
            EventBody::AgentConnected {
                hostname: link.capacity.hostname.clone(),
                device: link.device.clone(),
            },
        )
        .await;

    let writer = tokio::spawn(async move {
        let mut ping = tokio::time::interval(PING_INTERVAL);
        loop {
            tokio::select! {
                message = outbox.recv() => {
                    let Some(message) = message else { break };
                    let Ok(text) = serde_json::to_string(&message) else { continue };
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                _ = ping.tick() => {
                    if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                        break;
                    }
                }
            }
        }
    });

    let ctl = state.ctl.clone();
    let report_link = link.clone();
    tokio::spawn(async move { ctl.on_agent_report(report_link, containers).await });

    // Any frame (pongs too) shows the agent is there.
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(SILENCE_LIMIT, stream.next()) => next,
            () = link.cut.cancelled() => {
                tracing::info!(%user, "the operator cut the agent off");
                break;
            }
        };
        let Ok(Some(Ok(message))) = next else { break };
        let Message::Text(text) = message else {
            continue;
        };
        match serde_json::from_str::<AgentMessage>(&text) {
            Ok(AgentMessage::Reply { request, result }) => {
                // The error becomes a move's reason, shown in terminals: keep it clean.
                let result = result.map_err(|e| {
                    let message = clean_agent_text(&e.message, MAX_AGENT_TEXT_CHARS);
                    match e.code {
                        AgentErrorCode::Refused => format!("the agent refused: {message}"),
                        AgentErrorCode::Failed | AgentErrorCode::Unknown => message,
                    }
                });
                link.complete(request, result);
            }
            Ok(AgentMessage::Progress {
                container_id,
                phase,
                done,
                total,
            }) => {
                // Only for a move this agent is the edge side of; the hub drops the rest.
                state
                    .ctl
                    .hub
                    .set_progress(&link, &container_id, Progress { phase, done, total });
            }
            Ok(AgentMessage::Status { containers }) => {
                let containers = clean_containers(containers);
                link.set_containers(containers.clone());
                let ctl = state.ctl.clone();
                let report_link = link.clone();
                tokio::spawn(async move { ctl.on_agent_report(report_link, containers).await });
            }
            Ok(AgentMessage::Hello { .. }) => {}
            Err(e) => tracing::warn!(%user, error = %e, "ignoring a malformed agent message"),
        }
    }
    writer.abort();
    if state.ctl.hub.unregister(&link) {
        tracing::info!(%user, device = %link.device, "agent disconnected");
        let gone = EventBody::AgentGone {
            device: link.device.clone(),
        };
        state.ctl.events.publish(Some(&user), gone).await;
        state.ctl.on_agent_gone(&link).await;
    }
}

/// The agent dials back here to carry a channel the server asked it to open
/// (`open_channel`); the frames are then those of the user's endpoint for that channel
/// (`exec`: `/v1/containers/{id}/exec`).
#[utoipa::path(get, path = "/v1/agent/channel/{session}", tag = "agent",
    params(("session" = String, Path, description = "the session named in `open_channel`")),
    responses((status = 101, description = "switching to the WebSocket protocol"),
        (status = 404, body = ApiError, description = "not a session this agent was asked to open")))]
pub async fn agent_channel_socket(
    State(state): State<AppState>,
    caller: Result<Caller, ActionError>,
    Path(session): Path<String>,
    upgrade: Upgrade,
) -> Response {
    let who = match caller {
        Ok(Caller(who)) => who,
        Err(e) => return e.into_response(),
    };
    if !state.ctl.hub.channel_session_of(&session, &who.user) {
        return ActionError::NotFound(format!("channel session {session}")).into_response();
    }
    let Ok(upgrade) = upgrade else {
        return need_websocket();
    };
    upgrade
        .max_message_size(4 << 20)
        .on_upgrade(move |socket| async move { state.ctl.hub.deliver_channel(&session, socket) })
}
