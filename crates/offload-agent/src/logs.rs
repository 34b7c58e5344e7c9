//! A container's output at the edge: the `logs` channel the server asked for on a
//! dial-back socket, read from the local engine as the server reads a cloud container's.

use std::sync::Arc;

use futures::{Sink, SinkExt, Stream};
use offload_core::ContainerId;
use offload_core::api::{ErrorCode, LogsControl};
use offload_runtime::LogsSpec;
use offload_runtime::logs::{relay_logs, send_control};
use offload_runtime::relay::Frame;

use crate::edge::Edge;

/// Sends `container_id`'s output as `spec` asks until it ends or the server closes the
/// socket; a container this edge does not run is the user's 404.
pub async fn carry_logs<T, K>(
    edge: &Arc<Edge>,
    container_id: &ContainerId,
    spec: LogsSpec,
    timestamps: bool,
    stream: T,
    mut sink: K,
) where
    T: Stream<Item = Frame> + Unpin,
    K: Sink<Frame> + Unpin,
{
    let Some(runtime_id) = edge.runtime_id(container_id) else {
        let error = LogsControl::Error {
            code: ErrorCode::NotFound,
            error: format!("this edge does not run container {container_id}"),
        };
        send_control(&mut sink, &error).await;
        let _ = sink.send(Frame::Close).await;
        return;
    };
    relay_logs(
        stream,
        sink,
        edge.runtime.as_ref(),
        &runtime_id,
        spec,
        timestamps,
    )
    .await;
}
