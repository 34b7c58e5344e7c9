//! `offload events`: the server's event stream, printed as it comes. With `--follow` a
//! dropped connection is resumed after the last event printed, so nothing is missed or
//! printed twice.

use std::io::Write;
use std::time::{Duration, SystemTime};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use offload_agent::client::{Api, CallError};
use offload_core::events::Event;

use crate::cli::Output;

/// Longest wait between two reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(15);

pub async fn run(
    api: Api,
    follow: bool,
    tail: usize,
    after: Option<u64>,
    output: Output,
) -> anyhow::Result<i32> {
    let mut last = after;
    let mut backoff = Duration::from_millis(500);
    loop {
        let path = match last {
            Some(id) => format!("/v1/events?follow={follow}&after={id}"),
            None => format!("/v1/events?follow={follow}&tail={tail}"),
        };
        let response = match api.get_stream(&path).await {
            Ok(response) => response,
            // The server refused: reconnecting would not change its answer.
            Err(e @ CallError::Api { .. }) => return Err(e.into()),
            Err(e) if follow => {
                eprintln!("offload: {e}; reconnecting in {} s", backoff.as_secs_f32());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        backoff = Duration::from_millis(500);
        let mut stream = response.bytes_stream().eventsource();
        while let Some(item) = stream.next().await {
            let sse = match item {
                Ok(sse) => sse,
                Err(e) if follow => {
                    eprintln!("offload: the event stream broke ({e}); resuming");
                    break;
                }
                Err(e) => anyhow::bail!("the event stream broke: {e}"),
            };
            let event: Event = match serde_json::from_str(&sse.data) {
                Ok(event) => event,
                Err(e) => {
                    eprintln!("offload: skipping an event this offload cannot read: {e}");
                    continue;
                }
            };
            last = Some(event.id);
            if !print(&event, output)? {
                return Ok(0);
            }
        }
        if !follow {
            return Ok(0);
        }
    }
}

/// Prints one event; `false` once stdout is closed (`offload events | head`).
fn print(event: &Event, output: Output) -> anyhow::Result<bool> {
    let line = match output {
        Output::Json => serde_json::to_string(event)?,
        Output::Table => format!(
            "{}  {:<17}  {}",
            timestamp(event.at_ms),
            event.body.kind(),
            event.summary()
        ),
    };
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// RFC 3339 in UTC, to the second.
fn timestamp(at_ms: i64) -> String {
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(at_ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_in_utc_to_the_second() {
        assert_eq!(timestamp(1_796_205_601_999), "2026-12-02T10:00:01Z");
        assert_eq!(timestamp(-5), "1970-01-01T00:00:00Z");
    }
}
