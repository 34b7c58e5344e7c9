//! File transfer at the edge: the SFTP session the server asked for on a dial-back
//! socket, served from the local engine's container as the server serves a cloud one.

use std::sync::Arc;

use futures::{Sink, SinkExt, Stream};
use offload_core::ContainerId;
use offload_core::api::ErrorCode;
use offload_runtime::RuntimeError;
use offload_runtime::relay::Frame;
use offload_runtime::sftp;

use crate::edge::Edge;

/// Serves SFTP on `container_id`'s filesystem until the user's client or the container
/// ends it; a container this edge does not run is the user's 404, a stopped one a 409.
pub async fn carry_sftp<T, K>(edge: &Arc<Edge>, container_id: &ContainerId, stream: T, mut sink: K)
where
    T: Stream<Item = Frame> + Unpin + Send + 'static,
    K: Sink<Frame> + Unpin,
{
    let Some(runtime_id) = edge.runtime_id(container_id) else {
        let error = format!("this edge does not run container {container_id}");
        let _ = sink
            .send(sftp::error_frame(ErrorCode::NotFound, error))
            .await;
        let _ = sink.send(Frame::Close).await;
        return;
    };
    match edge.runtime.filesystem(&runtime_id).await {
        Ok(fs) => sftp::serve(stream, sink, fs).await,
        Err(e) => {
            let code = match e {
                RuntimeError::NotFound { .. } => ErrorCode::NotFound,
                RuntimeError::NotRunning { .. } => ErrorCode::Conflict,
                RuntimeError::Connect { .. } => ErrorCode::Unavailable,
                _ => ErrorCode::Internal,
            };
            tracing::warn!(container = %container_id, error = %e, "cannot serve files");
            let _ = sink.send(sftp::error_frame(code, e.to_string())).await;
            let _ = sink.send(Frame::Close).await;
        }
    }
}
