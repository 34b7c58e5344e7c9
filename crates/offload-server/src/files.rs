//! File transfer: an SFTP session on a container's filesystem, wherever it runs, over a
//! WebSocket whose binary frames carry the raw SFTP byte stream (what an SSH `sftp`
//! subsystem channel carries), for `offload cp` and `offload ssh`'s sftp subsystem.
//!
//! In the cloud the server serves it from its own engine's container; at the edge the
//! owner's agent dials back and serves it, and the server splices the two sockets.

use axum::extract::ws::WebSocket;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use offload_core::Location;
use offload_core::agent::Channel;
use offload_core::api::{ApiError, ErrorCode};
use offload_runtime::relay::Frame;
use offload_runtime::sftp;

use crate::error::ActionError;
use crate::http::{AppState, Caller};
use crate::ws::{self, from_frame, to_frame};

/// Largest WebSocket message accepted: an SFTP packet is at most 256 KiB, and a client
/// may pack several into one frame.
const MAX_MESSAGE: usize = 4 << 20;

/// An SFTP v3 session on the container's filesystem (WebSocket). Binary frames carry the
/// SFTP byte stream both ways; the client sends `SSH_FXP_INIT` first. Paths resolve inside
/// the container's root (relative ones from `/workspace`); what the session creates
/// belongs to the container's user. A failure after the upgrade is a text frame
/// `SftpControl` (`{"kind":"error","code":...,"error":...}`), then the close.
#[utoipa::path(get, path = "/v1/containers/{id}/sftp", tag = "containers",
    params(("id" = String, Path, description = "container id or name")),
    responses((status = 101, description = "switching to the WebSocket protocol"),
        (status = 400, body = ApiError, description = "`websocket_required`"),
        (status = 404, body = ApiError, description = "no such container (also another user's)"),
        (status = 409, body = ApiError, description = "the container is not running"),
        (status = 503, body = ApiError, description = "its agent is not connected")))]
pub async fn sftp_socket(
    State(state): State<AppState>,
    caller: Result<Caller, ActionError>,
    Path(id): Path<String>,
    upgrade: ws::Upgrade,
) -> Response {
    let who = match caller {
        Ok(Caller(who)) => who,
        Err(e) => return e.into_response(),
    };
    let (record, runtime_id) = match state.ctl.files_target(&who, &id).await {
        Ok(found) => found,
        Err(e) => return e.into_response(),
    };
    let upgrade = match ws::websocket(upgrade, "offload cp` or `offload ssh") {
        Ok(upgrade) => upgrade.max_message_size(MAX_MESSAGE),
        Err(response) => return response,
    };
    if record.location == Location::Edge {
        if let Err(e) = ws::edge_agent(&state.ctl, &record) {
            return e.into_response();
        }
        return ws::splice_to_agent(upgrade, &state.ctl, record, Channel::Sftp, |error| {
            from_frame(sftp::error_frame(ErrorCode::Unavailable, error))
        });
    }
    upgrade.on_upgrade(move |socket| async move { serve_on(socket, &state, &runtime_id).await })
}

/// Serves SFTP on the user's socket against the server's own engine.
async fn serve_on(socket: WebSocket, state: &AppState, runtime_id: &str) {
    let (sink, stream) = socket.split();
    let stream = stream.filter_map(|m| async move { m.ok().and_then(to_frame) });
    let mut sink =
        Box::pin(sink.with(|f: Frame| async move { Ok::<_, axum::Error>(from_frame(f)) }));
    match state.ctl.runtime().filesystem(runtime_id).await {
        Ok(fs) => sftp::serve(Box::pin(stream), sink, fs).await,
        Err(e) => {
            let error = ActionError::from(e);
            if matches!(error, ActionError::Internal(_)) {
                tracing::error!(error = %error, "cannot open a container's filesystem");
            }
            let _ = sink
                .send(sftp::error_frame(error.code(), error.to_string()))
                .await;
            let _ = sink.send(Frame::Close).await;
        }
    }
}
