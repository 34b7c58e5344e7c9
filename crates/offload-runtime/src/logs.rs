//! The logs relay: a container's output, read from its engine, as the frames of the logs
//! protocol (`offload_core::logs` for the entries, `LogsControl` for the rest). The server
//! runs it against its own engine for a cloud container; the agent runs it on a dial-back
//! socket for an edge one, and the server follows the container from one to the other.

use futures::{Sink, SinkExt, Stream, StreamExt};
use offload_core::api::{ErrorCode, LogsControl};

use crate::relay::Frame;
use crate::{ContainerRuntime, LogStream, LogsSpec, RuntimeError};

/// How sending a container's entries ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PumpEnd {
    /// The log ended: everything was sent (or, following, the container stopped).
    Ended,
    /// Reading the log failed part way.
    Failed(String),
    /// The frame socket is gone.
    PeerGone,
}

/// Sends each entry of `entries` as a binary frame on `sink` until the log ends or fails
/// or the sink does; `last` keeps the time of the last entry sent.
pub async fn pump_entries<K>(
    entries: &mut LogStream,
    sink: &mut K,
    timestamps: bool,
    last: &mut Option<u64>,
) -> PumpEnd
where
    K: Sink<Frame> + Unpin,
{
    while let Some(entry) = entries.next().await {
        match entry {
            Ok(entry) => {
                if sink
                    .send(Frame::Binary(entry.to_frame(timestamps).into()))
                    .await
                    .is_err()
                {
                    return PumpEnd::PeerGone;
                }
                *last = Some(entry.timestamp_ns);
            }
            Err(e) => return PumpEnd::Failed(e.to_string()),
        }
    }
    PumpEnd::Ended
}

/// The code a failure to read a log gets on the wire.
pub fn failure_code(e: &RuntimeError) -> ErrorCode {
    match e {
        RuntimeError::NotFound { .. } => ErrorCode::NotFound,
        RuntimeError::Connect { .. } => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    }
}

/// Sends a control frame; `false` when the socket is gone.
pub async fn send_control<K: Sink<Frame> + Unpin>(sink: &mut K, control: &LogsControl) -> bool {
    sink.send(Frame::Text(control.to_text())).await.is_ok()
}

/// One channel of the logs protocol against this side's engine: the entries of `spec`,
/// then `end` (or `error`) and the close. It stops as soon as the peer closes `stream`,
/// so a follow on a silent container does not outlive its reader.
pub async fn relay_logs<T, K>(
    mut stream: T,
    mut sink: K,
    runtime: &dyn ContainerRuntime,
    runtime_id: &str,
    spec: LogsSpec,
    timestamps: bool,
) where
    T: Stream<Item = Frame> + Unpin,
    K: Sink<Frame> + Unpin,
{
    let mut entries = match runtime.logs(runtime_id, &spec).await {
        Ok(entries) => entries,
        Err(e) => {
            let error = LogsControl::Error {
                code: failure_code(&e),
                error: e.to_string(),
            };
            send_control(&mut sink, &error).await;
            let _ = sink.send(Frame::Close).await;
            return;
        }
    };
    let mut last = None;
    let peer_left = async {
        while let Some(frame) = stream.next().await {
            if frame == Frame::Close {
                break;
            }
        }
    };
    let end = tokio::select! {
        end = pump_entries(&mut entries, &mut sink, timestamps, &mut last) => end,
        () = peer_left => PumpEnd::PeerGone,
    };
    let control = match end {
        PumpEnd::PeerGone => return,
        PumpEnd::Ended => LogsControl::End,
        PumpEnd::Failed(error) => LogsControl::Error {
            code: ErrorCode::Unavailable,
            error: format!("reading the container's output failed: {error}"),
        },
    };
    if send_control(&mut sink, &control).await {
        let _ = sink.send(Frame::Close).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OutputStream;
    use crate::fake::FakeRuntime;
    use offload_core::logs::LogFrame;

    fn spec() -> crate::ContainerSpec {
        crate::ContainerSpec {
            name: "c".into(),
            image: "img".into(),
            command: vec![],
            env: vec![],
            cpus: 1.0,
            memory_bytes: 1 << 20,
            workspace: "/tmp".into(),
            workspace_target: "/workspace".into(),
            labels: Default::default(),
            network: crate::NetworkMode::None,
            stop_grace_secs: 1,
            node: None,
        }
    }

    fn entries(frames: &[Frame]) -> Vec<(OutputStream, String)> {
        frames
            .iter()
            .filter_map(|f| match f {
                Frame::Binary(data) => LogFrame::parse(data)
                    .map(|e| (e.stream, String::from_utf8_lossy(e.bytes).into_owned())),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn a_log_crosses_in_order_with_its_streams_then_ends() {
        let fake = FakeRuntime::new();
        fake.add_image("img");
        let id = fake.run(&spec()).await.unwrap();
        fake.write_log(&id, OutputStream::Stdout, b"one\n");
        fake.write_log(&id, OutputStream::Stderr, b"two\n");
        fake.write_log(&id, OutputStream::Stdout, b"three\n");
        let (tx, rx) = futures::channel::mpsc::unbounded::<Frame>();
        let tail = LogsSpec {
            tail: Some(2),
            ..Default::default()
        };
        relay_logs(futures::stream::pending(), tx, &fake, &id, tail, false).await;
        let frames: Vec<Frame> = rx.collect().await;
        assert_eq!(
            entries(&frames),
            vec![
                (OutputStream::Stderr, "two\n".to_owned()),
                (OutputStream::Stdout, "three\n".to_owned())
            ]
        );
        assert_eq!(frames[2], Frame::Text(r#"{"kind":"end"}"#.into()));
        assert_eq!(frames[3], Frame::Close);
    }

    #[tokio::test]
    async fn a_missing_container_is_an_error_frame_and_a_close() {
        let fake = FakeRuntime::new();
        let (tx, rx) = futures::channel::mpsc::unbounded::<Frame>();
        relay_logs(
            futures::stream::pending(),
            tx,
            &fake,
            "gone",
            LogsSpec::default(),
            false,
        )
        .await;
        let frames: Vec<Frame> = rx.collect().await;
        let Frame::Text(text) = &frames[0] else {
            panic!("{frames:?}");
        };
        let control: LogsControl = serde_json::from_str(text).unwrap();
        assert!(
            matches!(
                control,
                LogsControl::Error {
                    code: ErrorCode::NotFound,
                    ..
                }
            ),
            "{control:?}"
        );
        assert_eq!(frames[1], Frame::Close);
    }

    #[tokio::test]
    async fn following_goes_on_until_the_container_stops_or_the_reader_leaves() {
        let fake = FakeRuntime::new();
        fake.add_image("img");
        let id = fake.run(&spec()).await.unwrap();
        fake.write_log(&id, OutputStream::Stdout, b"before\n");
        let (tx, mut rx) = futures::channel::mpsc::unbounded::<Frame>();
        let follow = LogsSpec {
            follow: true,
            ..Default::default()
        };
        let relay = {
            let fake = fake.clone();
            let id = id.clone();
            tokio::spawn(async move {
                relay_logs(futures::stream::pending(), tx, &fake, &id, follow, true).await
            })
        };
        let first = rx.next().await.unwrap();
        let Frame::Binary(data) = first else {
            panic!("{first:?}")
        };
        assert!(
            LogFrame::parse(&data)
                .unwrap()
                .bytes
                .ends_with(b"Z before\n")
        );
        fake.write_log(&id, OutputStream::Stdout, b"after\n");
        let second = rx.next().await.unwrap();
        assert_eq!(
            entries(&[second])[0].1.split_once(' ').unwrap().1,
            "after\n"
        );
        fake.kill(&id);
        assert_eq!(
            rx.next().await.unwrap(),
            Frame::Text(r#"{"kind":"end"}"#.into())
        );
        relay.await.unwrap();

        // A reader that leaves ends a follow of a silent container at once.
        fake.start(&id).await.unwrap();
        let (tx, _rx) = futures::channel::mpsc::unbounded::<Frame>();
        let leaving = futures::stream::iter([Frame::Close]);
        let ended = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            relay_logs(leaving, tx, &fake, &id, follow, false),
        )
        .await;
        assert!(ended.is_ok(), "the relay outlived its reader");
    }
}
