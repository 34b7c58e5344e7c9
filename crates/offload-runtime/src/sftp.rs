//! An SFTP server over a container's own filesystem, wherever the container runs, with
//! nothing installed in the image and no sshd.
//!
//! The side that runs the container (the server in the cloud, the agent at the edge) asks
//! its runtime for the container's root ([`ContainerFs`]: a handle on `/proc/PID/root` of
//! the container's init) and serves SFTP v3, as OpenSSH speaks it, over a socket whose
//! binary frames carry the raw byte stream of an SSH `sftp` subsystem channel. Every path
//! is resolved inside that root ([`root`]); files and directories it creates belong to the
//! container's user ([`users`]); relative paths start at `/workspace`. The session ends
//! when the client closes the stream or the container's init exits.

mod root;
mod server;
mod users;

#[cfg(test)]
mod tests;

use std::os::fd::OwnedFd;

use futures::future::BoxFuture;
use futures::{Sink, SinkExt, Stream, StreamExt};
use offload_core::WORKSPACE_MOUNT;
use offload_core::api::{ErrorCode, SftpControl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::relay::Frame;

pub use root::Root;
pub use users::{Owner, UserError, Users};

/// Largest read or write a request may ask for: what `limits@openssh.com` announces.
pub const MAX_IO: usize = 255 * 1024;
/// Largest packet the server accepts from a client.
pub const MAX_PACKET: usize = 256 * 1024;
/// Open files and directories per session.
pub const MAX_HANDLES: usize = 256;
/// Entries per `SSH_FXP_NAME` answer to a readdir (as OpenSSH's sftp-server sends).
pub const READDIR_BATCH: usize = 100;

/// A running container's filesystem, as a runtime hands it out.
pub struct ContainerFs {
    /// A handle on the container's `/`.
    pub root: OwnedFd,
    /// The engine's `User` setting for the container (`""` for root).
    pub user: String,
    /// Completes when the container's init process has exited: the session ends then,
    /// so nothing is written to a copy that stopped (a move's cloud copy).
    pub stopped: BoxFuture<'static, ()>,
}

/// The text frame that ends a file-transfer socket with an error.
pub fn error_frame(code: ErrorCode, error: impl Into<String>) -> Frame {
    let control = SftpControl::Error {
        code,
        error: error.into(),
    };
    Frame::Text(serde_json::to_string(&control).unwrap_or_default())
}

/// Serves SFTP on a message socket until the client closes it or the container stops.
/// Binary frames carry the SFTP byte stream both ways (frame boundaries mean nothing);
/// text frames from the client are ignored. A failure before the session starts, or the
/// container stopping, is told in an [`error_frame`] before the close.
pub async fn serve<T, K>(stream: T, mut sink: K, fs: ContainerFs)
where
    T: Stream<Item = Frame> + Unpin + Send + 'static,
    K: Sink<Frame> + Unpin,
{
    let ContainerFs {
        root,
        user,
        stopped,
    } = fs;
    let prepared = tokio::task::spawn_blocking(move || {
        let mut root = Root::new(root, WORKSPACE_MOUNT, Owner::ROOT);
        let users = Users::load(&root);
        let owner = users.owner(&user)?;
        root.set_owner(owner);
        Ok::<_, UserError>((root, users))
    })
    .await;
    let (root, users) = match prepared {
        Ok(Ok(prepared)) => prepared,
        Ok(Err(e)) => {
            let _ = sink
                .send(error_frame(ErrorCode::Internal, e.to_string()))
                .await;
            let _ = sink.send(Frame::Close).await;
            return;
        }
        Err(_) => {
            let _ = sink
                .send(error_frame(
                    ErrorCode::Internal,
                    "the SFTP session did not start",
                ))
                .await;
            let _ = sink.send(Frame::Close).await;
            return;
        }
    };
    let session = server::Session::new(std::sync::Arc::new(root), std::sync::Arc::new(users));
    let (ours, theirs) = tokio::io::duplex(4 * MAX_PACKET);
    russh_sftp::server::run_with_config(
        theirs,
        session,
        russh_sftp::server::Config {
            max_client_packet_len: MAX_PACKET as u32,
        },
    )
    .await;
    let (mut reader, mut writer) = tokio::io::split(ours);
    let upstream = tokio::spawn(async move {
        let mut stream = stream;
        while let Some(frame) = stream.next().await {
            match frame {
                Frame::Binary(data) => {
                    if writer.write_all(&data).await.is_err() {
                        break;
                    }
                }
                Frame::Text(_) | Frame::Ping => {}
                Frame::Close => break,
            }
        }
        // The SFTP server reads the end of its input and stops.
        let _ = writer.shutdown().await;
    });
    let downstream = async {
        let mut buf = vec![0u8; MAX_PACKET];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink
                        .send(Frame::Binary(bytes::Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    };
    let container_stopped = tokio::select! {
        _ = downstream => false,
        _ = stopped => true,
    };
    upstream.abort();
    if container_stopped {
        let _ = sink
            .send(error_frame(
                ErrorCode::Conflict,
                "the container stopped; the file transfer ended",
            ))
            .await;
    }
    let _ = sink.send(Frame::Close).await;
}
