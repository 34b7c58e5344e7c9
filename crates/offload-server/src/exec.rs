//! `offload shell`: a command in a container, relayed over a WebSocket.
//!
//! For a cloud container the server runs the relay against its own engine; for an edge
//! container it asks the owner's agent to dial back and splices the two sockets, so the
//! user's command is the same wherever the container runs.

use axum::extract::ws::{Message, WebSocket};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use offload_core::Location;
use offload_core::agent::Channel;
use offload_core::api::ApiError;
use offload_core::api::ExecControl;
use offload_runtime::channels::OpenChannel;
use offload_runtime::relay::{Frame, relay_exec_with_notices};

use crate::error::ActionError;
use crate::http::{AppState, Caller};
use crate::ws::{self, from_frame, to_frame};
use offload_core::api::ErrorCode;

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
    upgrade: ws::Upgrade,
) -> Response {
    let who = match caller {
        Ok(Caller(who)) => who,
        Err(e) => return e.into_response(),
    };
    let (record, runtime_id) = match state.ctl.exec_target(&who, &id).await {
        Ok(found) => found,
        Err(e) => return e.into_response(),
    };
    let upgrade = match ws::websocket(upgrade, "offload shell") {
        Ok(upgrade) => upgrade.max_message_size(4 << 20),
        Err(response) => return response,
    };
    if record.location == Location::Edge {
        if let Err(e) = ws::edge_agent(&state.ctl, &record) {
            return e.into_response();
        }
        return ws::splice_to_agent(upgrade, &state.ctl, record, Channel::Exec, |error| {
            let control = ExecControl::Error {
                error,
                code: ErrorCode::Unavailable,
            };
            Message::Text(serde_json::to_string(&control).unwrap_or_default().into())
        });
    }
    upgrade.on_upgrade(move |socket| async move {
        let mut open = state.ctl.channels.open(&record.id, Channel::Exec);
        relay_on(socket, &state, runtime_id, &mut open).await
    })
}
