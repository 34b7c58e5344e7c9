//! `offload logs`: a container's output (stdout to stdout, stderr to stderr, in the order
//! it was written) over the server's logs WebSocket, wherever the container runs; with
//! `-f`, until it stops, following it across moves.

use std::io::Write;

use anyhow::bail;
use futures::{SinkExt, StreamExt};
use offload_core::api::LogsControl;
use offload_core::logs::{LogFrame, LogsQuery, OutputStream, unix_seconds_text};
use tokio_tungstenite::tungstenite::Message;

use offload_agent::client::Api;

use crate::shell::urlencode;

/// `--tail`: a number of lines, or `all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail(pub Option<u64>);

pub fn parse_tail(text: &str) -> Result<Tail, String> {
    offload_core::logs::parse_tail(text).map(Tail)
}

/// `--since`, as Unix nanoseconds.
pub fn parse_since(text: &str) -> Result<u64, String> {
    offload_core::logs::parse_since(text, std::time::SystemTime::now())
}

/// The endpoint's path and query for `query`.
fn path(id: &str, query: &LogsQuery) -> String {
    let mut path = format!(
        "/v1/containers/{}/logs?follow={}&timestamps={}",
        urlencode(id),
        query.follow,
        query.timestamps
    );
    if let Some(tail) = query.tail {
        path.push_str(&format!("&tail={tail}"));
    }
    if query.since_ns > 0 {
        path.push_str(&format!("&since={}", unix_seconds_text(query.since_ns)));
    }
    path
}

/// What writing an entry came to.
enum Written {
    Ok,
    /// The reader of stdout or stderr went away (`offload logs box | head -1`).
    Closed,
}

fn write_entry(entry: &LogFrame<'_>) -> anyhow::Result<Written> {
    let result = match entry.stream {
        OutputStream::Stdout => {
            let mut out = std::io::stdout().lock();
            out.write_all(entry.bytes).and_then(|()| out.flush())
        }
        OutputStream::Stderr => {
            let mut err = std::io::stderr().lock();
            err.write_all(entry.bytes).and_then(|()| err.flush())
        }
    };
    match result {
        Ok(()) => Ok(Written::Ok),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(Written::Closed),
        Err(e) => Err(anyhow::anyhow!("cannot write the output: {e}")),
    }
}

/// Prints the container's output as `query` asks; returns the exit code.
pub async fn run(api: &Api, id: &str, query: LogsQuery) -> anyhow::Result<i32> {
    let socket = api.websocket(&path(id, &query)).await?;
    let (mut sink, mut stream) = socket.split();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let message = tokio::select! {
            message = stream.next() => message,
            _ = &mut interrupted => {
                let _ = sink.send(Message::Close(None)).await;
                return Ok(130);
            }
        };
        match message {
            Some(Ok(Message::Binary(data))) => {
                let Some(entry) = LogFrame::parse(&data) else {
                    continue;
                };
                if let Written::Closed = write_entry(&entry)? {
                    let _ = sink.send(Message::Close(None)).await;
                    return Ok(0);
                }
            }
            Some(Ok(Message::Text(text))) => match serde_json::from_str::<LogsControl>(&text) {
                Ok(LogsControl::End) => {
                    let _ = sink.send(Message::Close(None)).await;
                    return Ok(0);
                }
                Ok(LogsControl::Error { error, .. }) => bail!("{error}"),
                Ok(LogsControl::Notice { text }) => {
                    let _ = writeln!(std::io::stderr(), "offload: {text}");
                }
                Err(_) => {}
            },
            Some(Ok(Message::Close(_))) | None => {
                bail!("the connection to the server closed before the output ended")
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => bail!("the connection to the server failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_names_only_what_was_asked() {
        let plain = LogsQuery::default();
        assert_eq!(
            path("my box", &plain),
            "/v1/containers/my%20box/logs?follow=false&timestamps=false"
        );
        let all = LogsQuery {
            follow: true,
            tail: Some(2),
            since_ns: 1_714_566_896_500_000_000,
            timestamps: true,
        };
        assert_eq!(
            path("box", &all),
            "/v1/containers/box/logs?follow=true&timestamps=true&tail=2&since=1714566896.500000000"
        );
    }
}
