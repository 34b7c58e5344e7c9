//! The agent's WebSocket (`/v1/agent`) and the exec relays agents dial back
//! (`/v1/agent/exec/{session}`).

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use offload_core::ContainerId;
use offload_core::agent::AgentMessage;
use offload_core::api::Progress;

use crate::error::{ActionError, error_response};
use crate::http::{AppState, Caller};
use crate::hub::Hello;

/// Largest control message from an agent.
const MAX_MESSAGE: usize = 1 << 20;

type Upgrade = Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>;

fn need_websocket() -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        "websocket_required",
        "this endpoint speaks WebSocket; it is for `offload agent`",
    )
}

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
    let (link, mut outbox) = state.ctl.hub.register(
        user.clone(),
        Hello {
            capacity,
            images,
            containers: containers.clone(),
            auto_accept,
            auto_return,
        },
    );
    tracing::info!(%user, edge = %link.capacity.hostname, "agent connected");

    let writer = tokio::spawn(async move {
        let mut ping = tokio::time::interval(Duration::from_secs(15));
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

    // An agent that stays silent for this long (it answers pings) is gone.
    let idle = Duration::from_secs(60);
    while let Ok(Some(Ok(message))) = tokio::time::timeout(idle, stream.next()).await {
        let Message::Text(text) = message else {
            continue;
        };
        match serde_json::from_str::<AgentMessage>(&text) {
            Ok(AgentMessage::Reply { request, ok, error }) => {
                let result = match (ok, error) {
                    (Some(reply), _) => Ok(reply),
                    (None, Some(error)) => Err(error),
                    (None, None) => Err("empty reply".to_owned()),
                };
                link.complete(request, result);
            }
            Ok(AgentMessage::Progress {
                container_id,
                phase,
                done,
                total,
            }) => {
                if let Ok(id) = ContainerId::parse(&container_id) {
                    state
                        .ctl
                        .hub
                        .set_progress(id, Progress { phase, done, total });
                }
            }
            Ok(AgentMessage::Status { containers }) => {
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
        tracing::info!(%user, "agent disconnected");
        state.ctl.on_agent_gone(&link).await;
    }
}

pub async fn agent_exec_socket(
    State(state): State<AppState>,
    caller: Result<Caller, ActionError>,
    Path(session): Path<String>,
    upgrade: Upgrade,
) -> Response {
    let who = match caller {
        Ok(Caller(who)) => who,
        Err(e) => return e.into_response(),
    };
    if !state.ctl.hub.exec_session_of(&session, &who.user) {
        return ActionError::NotFound(format!("exec session {session}")).into_response();
    }
    let Ok(upgrade) = upgrade else {
        return need_websocket();
    };
    upgrade
        .max_message_size(4 << 20)
        .on_upgrade(move |socket| async move { state.ctl.hub.deliver_exec(&session, socket) })
}
