//! A container's output (`offload logs`): what a client asks for, the binary frame that
//! carries one log entry, and the times in it (Docker's format, `--since` values).
//!
//! A log entry crosses every socket (the user's `/v1/containers/{id}/logs`, an agent's
//! dial-back channel) as one binary frame: the stream ([`crate::api::exec_stream`]:
//! 1 stdout, 2 stderr), the entry's time as Unix nanoseconds in 8 big-endian bytes, then
//! its bytes, which start with the time as Docker prints it when timestamps were asked.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::api::exec_stream;

/// Bytes before an entry's own bytes in its frame: the stream tag and the time.
pub const HEADER: usize = 9;

/// What a client asks of a container's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogsQuery {
    /// Keep printing what the container writes, following it across moves.
    pub follow: bool,
    /// Only the last N entries; `None` for all of them.
    pub tail: Option<u64>,
    /// Only entries written at or after this Unix time, in nanoseconds (0: all).
    pub since_ns: u64,
    /// Each entry starts with its time, as `docker logs -t` prints it.
    pub timestamps: bool,
}

/// The stream a container wrote an entry to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

impl OutputStream {
    pub fn tag(self) -> u8 {
        match self {
            OutputStream::Stdout => exec_stream::STDOUT,
            OutputStream::Stderr => exec_stream::STDERR,
        }
    }

    pub fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            exec_stream::STDOUT => Some(OutputStream::Stdout),
            exec_stream::STDERR => Some(OutputStream::Stderr),
            _ => None,
        }
    }
}

/// One entry of a container's log: what one write of the container became in the
/// engine's log (a line, or a piece of a very long one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub stream: OutputStream,
    /// When the engine received it, Unix nanoseconds.
    pub timestamp_ns: u64,
    pub bytes: Vec<u8>,
}

impl LogEntry {
    /// The entry as a binary frame; with `timestamps` its bytes start with its time and a
    /// space, as Docker prints them.
    pub fn to_frame(&self, timestamps: bool) -> Vec<u8> {
        let stamp = timestamps.then(|| format_timestamp(self.timestamp_ns));
        let stamp_len = stamp.as_ref().map_or(0, |s| s.len() + 1);
        let mut frame = Vec::with_capacity(HEADER + stamp_len + self.bytes.len());
        frame.push(self.stream.tag());
        frame.extend_from_slice(&self.timestamp_ns.to_be_bytes());
        if let Some(stamp) = stamp {
            frame.extend_from_slice(stamp.as_bytes());
            frame.push(b' ');
        }
        frame.extend_from_slice(&self.bytes);
        frame
    }
}

/// A binary frame of the logs protocol, read: the stream, the time and the bytes to
/// print (with the time in front when the sender was asked for timestamps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogFrame<'a> {
    pub stream: OutputStream,
    pub timestamp_ns: u64,
    pub bytes: &'a [u8],
}

impl<'a> LogFrame<'a> {
    /// `None` for a frame too short to hold the header or with an unknown stream.
    pub fn parse(frame: &'a [u8]) -> Option<Self> {
        let stream = OutputStream::from_tag(*frame.first()?)?;
        let time: [u8; 8] = frame.get(1..HEADER)?.try_into().ok()?;
        Some(LogFrame {
            stream,
            timestamp_ns: u64::from_be_bytes(time),
            bytes: &frame[HEADER..],
        })
    }
}

/// Unix nanoseconds as Docker prints a log time: UTC, always nine fractional digits
/// (`2024-05-01T12:34:56.000000001Z`).
pub fn format_timestamp(ns: u64) -> String {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns)) else {
        return ns.to_string();
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond()
    )
}

/// An RFC 3339 time (what the engine puts before each entry with timestamps on) as Unix
/// nanoseconds; `None` when it is not one or lies before 1970.
pub fn parse_timestamp(text: &str) -> Option<u64> {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos()).ok()
}

/// Unix seconds with an optional fraction of up to nine digits (`1714566896`,
/// `1714566896.5`) as nanoseconds: the `since` of the logs endpoint.
pub fn parse_unix_seconds(text: &str) -> Option<u64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || whole.len() > 12 || !digits(whole) {
        return None;
    }
    if text.contains('.') && (fraction.is_empty() || fraction.len() > 9 || !digits(fraction)) {
        return None;
    }
    let seconds: u64 = whole.parse().ok()?;
    let nanos: u64 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<9}").parse().ok()?
    };
    seconds.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// Nanoseconds as the Unix seconds [`parse_unix_seconds`] reads.
pub fn unix_seconds_text(ns: u64) -> String {
    format!("{}.{:09}", ns / 1_000_000_000, ns % 1_000_000_000)
}

/// `--tail`: a number of entries, or `all`.
pub fn parse_tail(text: &str) -> Result<Option<u64>, String> {
    if text == "all" {
        return Ok(None);
    }
    let shown: String = text.chars().take(24).collect();
    if text.is_empty() || text.len() > 19 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "--tail takes a number of lines or `all`, not {shown:?}"
        ));
    }
    text.parse()
        .map(Some)
        .map_err(|_| format!("--tail takes a number of lines or `all`, not {shown:?}"))
}

/// `--since`: a duration before `now` (`90s`, `10m`, `1h30m`, `1.5h`, `250ms`), an RFC
/// 3339 time (`2024-05-01T12:00:00Z`) or Unix seconds, as Unix nanoseconds.
pub fn parse_since(text: &str, now: SystemTime) -> Result<u64, String> {
    let refuse = || {
        let shown: String = text.chars().take(40).collect();
        format!(
            "--since takes a duration (10m, 1h30m), an RFC 3339 time (2024-05-01T12:00:00Z) or Unix seconds, not {shown:?}"
        )
    };
    if let Some(ns) = parse_unix_seconds(text).or_else(|| parse_timestamp(text)) {
        return Ok(ns);
    }
    let ago = parse_duration(text).ok_or_else(refuse)?;
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let then = now.saturating_sub(ago);
    u64::try_from(then.as_nanos()).map_err(|_| refuse())
}

/// A duration as Go writes one: numbers with units `ms`, `s`, `m`, `h`, one after the
/// other (`1h30m`, `1.5h`).
fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
            return None;
        }
        let value: f64 = number.parse().ok()?;
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let seconds = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * seconds;
        rest = next;
    }
    // Beyond a century back is beyond any container's log.
    (total.is_finite() && total <= 3.2e9).then(|| Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_crosses_as_one_frame_with_its_stream_and_time() {
        let entry = LogEntry {
            stream: OutputStream::Stderr,
            timestamp_ns: 1_714_566_896_000_000_042,
            bytes: b"oops\n".to_vec(),
        };
        let plain = entry.to_frame(false);
        let read = LogFrame::parse(&plain).unwrap();
        assert_eq!(read.stream, OutputStream::Stderr);
        assert_eq!(read.timestamp_ns, entry.timestamp_ns);
        assert_eq!(read.bytes, b"oops\n");
        let stamped = entry.to_frame(true);
        let read = LogFrame::parse(&stamped).unwrap();
        assert_eq!(read.bytes, b"2024-05-01T12:34:56.000000042Z oops\n");
        assert_eq!(read.timestamp_ns, entry.timestamp_ns);
        // Too short for the header, or a stream that does not exist: not a log frame.
        assert!(LogFrame::parse(&plain[..8]).is_none());
        assert!(LogFrame::parse(&[0, 0, 0, 0, 0, 0, 0, 0, 0]).is_none());
        assert!(LogFrame::parse(&[]).is_none());
    }

    #[test]
    fn times_read_and_print_as_docker_writes_them() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            format_timestamp(1_714_566_896_123_456_789),
            "2024-05-01T12:34:56.123456789Z"
        );
        // The engine trims trailing zeros (RFC3339Nano) or keeps nine digits.
        for text in [
            "2024-05-01T12:34:56.1234Z",
            "2024-05-01T12:34:56.123400000Z",
            "2024-05-01T14:34:56.1234+02:00",
        ] {
            assert_eq!(
                parse_timestamp(text),
                Some(1_714_566_896_123_400_000),
                "{text}"
            );
        }
        assert_eq!(
            parse_timestamp("2024-05-01T12:34:56Z"),
            Some(1_714_566_896_000_000_000)
        );
        for bad in ["", "yesterday", "2024-05-01", "1969-12-31T23:59:59Z"] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn unix_seconds_round_trip_to_the_nanosecond() {
        for ns in [0, 1, 1_714_566_896_123_456_789, 999_999_999] {
            assert_eq!(parse_unix_seconds(&unix_seconds_text(ns)), Some(ns));
        }
        assert_eq!(
            parse_unix_seconds("1714566896"),
            Some(1_714_566_896_000_000_000)
        );
        assert_eq!(
            parse_unix_seconds("1714566896.5"),
            Some(1_714_566_896_500_000_000)
        );
        for bad in [
            "",
            ".5",
            "5.",
            "1.1234567890",
            "-1",
            "1e9",
            "12 ",
            "0x10",
            "1.2.3",
        ] {
            assert_eq!(parse_unix_seconds(bad), None, "{bad}");
        }
    }

    #[test]
    fn tail_is_a_count_or_all_and_nothing_else() {
        assert_eq!(parse_tail("all"), Ok(None));
        assert_eq!(parse_tail("0"), Ok(Some(0)));
        assert_eq!(parse_tail("2"), Ok(Some(2)));
        for bad in ["", "-1", "two", "2.5", " 2", "+2", "99999999999999999999"] {
            let err = parse_tail(bad).unwrap_err();
            assert!(
                err.contains("--tail takes a number of lines"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn since_is_a_duration_back_from_now_a_time_or_unix_seconds() {
        let now = UNIX_EPOCH + Duration::from_secs(1_714_566_896);
        let at = |secs: u64| secs * 1_000_000_000;
        assert_eq!(parse_since("10m", now), Ok(at(1_714_566_896 - 600)));
        assert_eq!(parse_since("1h30m", now), Ok(at(1_714_566_896 - 5400)));
        assert_eq!(parse_since("1.5h", now), Ok(at(1_714_566_896 - 5400)));
        assert_eq!(
            parse_since("250ms", now),
            Ok(at(1_714_566_896) - 250_000_000)
        );
        assert_eq!(
            parse_since("2024-05-01T12:00:00Z", now),
            Ok(at(1_714_564_800))
        );
        assert_eq!(parse_since("1714564800", now), Ok(at(1_714_564_800)));
        // Further back than 1970 is everything.
        assert_eq!(
            parse_since("100000h", UNIX_EPOCH + Duration::from_secs(60)),
            Ok(0)
        );
        for bad in [
            "",
            "10",
            "10x",
            "m",
            "1..5h",
            ".5h",
            "h10",
            "ten minutes",
            "-5m",
        ] {
            let got = parse_since(bad, now);
            // A bare number is Unix seconds, not a duration.
            if bad == "10" {
                assert_eq!(got, Ok(at(10)));
                continue;
            }
            let err = got.unwrap_err();
            assert!(err.starts_with("--since takes a duration"), "{bad}: {err}");
        }
    }
}
