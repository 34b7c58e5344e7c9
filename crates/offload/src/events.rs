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
pub fn timestamp(at_ms: i64) -> String {
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(at_ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

/// `--since`: a time (RFC 3339, `2026-12-01T09:00:00Z` or `2026-12-01 09:00:00`, UTC) or
/// an age (`90s`, `2h`, `7d`) before `now`; Unix milliseconds.
pub fn parse_since(value: &str, now: SystemTime) -> anyhow::Result<i64> {
    let at = match humantime::parse_duration(value) {
        Ok(age) => now.checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH),
        Err(_) => humantime::parse_rfc3339_weak(value).map_err(|_| {
            anyhow::anyhow!(
                "--since {value:?} is neither a time (2026-12-01T09:00:00Z) nor an age (2h, 30m, 7d)"
            )
        })?,
    };
    let ms = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    Ok(i64::try_from(ms).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_in_utc_to_the_second() {
        assert_eq!(timestamp(1_796_205_601_999), "2026-12-02T10:00:01Z");
        assert_eq!(timestamp(-5), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn since_is_a_time_or_an_age() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_205_601);
        assert_eq!(
            parse_since("2026-12-02T10:00:00Z", now).expect("time"),
            1_796_205_600_000
        );
        assert_eq!(parse_since("1h", now).expect("age"), 1_796_202_001_000);
        assert_eq!(parse_since("100000d", now).expect("age"), 0);
        let e = parse_since("yesterday", now).expect_err("refused");
        assert!(e.to_string().contains("neither a time"), "{e}");
    }
}
